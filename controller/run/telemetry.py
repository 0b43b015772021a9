"""The run's record of its service's telemetry: every record, as it arrives, one line of
``metrics/ticks.jsonl``."""

from __future__ import annotations

import threading

import zmq

from controller.run.rundir import RunDir
from sim_bridge import protocol as p


class TelemetryLog:
    """Subscribes to the service's telemetry at ``address`` and appends every record to
    ``run.ticks``, in a thread, from :meth:`start` to :meth:`stop`."""

    def __init__(self, run: RunDir, address: str) -> None:
        self.run, self.address = run, address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._record, name="telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _record(self) -> None:
        # Line-buffered: a killed run leaves every record it received, whole.
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        with context.socket(zmq.SUB) as sub, open(self.run.ticks, "a", buffering=1) as out:
            sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
            sub.connect(self.address)
            while not self._stop.is_set():
                if sub.poll(200):
                    out.write(sub.recv_multipart()[1].decode() + "\n")
