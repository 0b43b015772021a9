"""Who listens on the service's telemetry socket (an XPUB, which hears subscriptions), so that
records nobody would receive are not built: a tick's reward terms cost ~35 us of torch, which a
loop with no dashboard and no run recording it need not pay."""

from __future__ import annotations

import zmq

from sim_bridge import protocol as p


class Subscriptions:
    """The topic prefixes subscribed to on one XPUB socket."""

    def __init__(self) -> None:
        self._prefixes: set[bytes] = set()

    def hear(self, telemetry: zmq.Socket[bytes]) -> None:
        """Read the (un)subscriptions queued on ``telemetry``: b"\\x01" or b"\\x00" and the
        topic prefix (ZeroMQ passes on the first and the last of each)."""
        while True:
            try:
                event = telemetry.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self._prefixes.add(event[1:])
            elif event[:1] == b"\x00":
                self._prefixes.discard(event[1:])

    @property
    def listening(self) -> bool:
        """Whether a subscriber would receive a telemetry record."""
        return any(p.TELEMETRY_TOPIC.startswith(prefix) for prefix in self._prefixes)
