"""Several robot bridges in one process: one thread per robot, each with its own connection,
robot id, seed and realtime pacing (``tickmpc bridge --robots N``).

A simulated fleet on a small machine needs no process per robot: a bridge spends its tick
waiting on the controller's ACTION or sleeping to its next tick, and the simulation step of
a small robot takes tens of microseconds, so threads share one interpreter without slowing
one another measurably at the rates robots run at.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

from sim_bridge.hardware import BridgeStats, HardwareBridge

log = logging.getLogger(__name__)


def fleet_ids(first: str, count: int) -> list[str]:
    """``count`` robot ids counted up from ``first``: "sim-0" -> sim-0, sim-1, ...; an id that
    does not end in a number gets "-0", "-1", ... appended (one robot keeps ``first``)."""
    if count < 1:
        raise ValueError(f"a fleet needs at least one robot, got {count}")
    if count == 1:
        return [first]
    match = re.fullmatch(r"(.*?)(\d+)", first)
    if match is None:
        return [f"{first}-{i}" for i in range(count)]
    stem, start = match.group(1), int(match.group(2))
    return [f"{stem}{start + i}" for i in range(count)]


class Fleet:
    """Runs bridges side by side until each is done or ``stop_event`` is set."""

    def __init__(self, bridges: Sequence[HardwareBridge]) -> None:
        ids = [b.spec.robot for b in bridges]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the robots of a fleet need distinct ids, got {ids}")
        self.bridges = list(bridges)
        self.stop_event = threading.Event()
        self.errors: dict[str, BaseException] = {}
        """Robot id -> what ended its run early (a refusal, no controller)."""
        self.running: list[HardwareBridge] = []
        """After ``run``: the bridges whose thread had not ended (stopped by Ctrl-C and
        still stopping); do not close their robots."""

    def run(
        self, endpoint: str, *, mode: str = "realtime", episodes: int | None = None
    ) -> list[BridgeStats]:
        """Run every bridge's ``run(endpoint, mode=..., episodes=...)`` in its own thread; returns
        their stats in order. A bridge that fails is logged and recorded in ``errors``; the
        others go on. Setting ``stop_event`` stops them all after their current tick."""
        threads = [
            threading.Thread(target=self._one, args=(b, endpoint, mode, episodes), daemon=True)
            for b in self.bridges
        ]
        relay = threading.Thread(target=self._relay_stop, daemon=True)
        relay.start()
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            self.stop_event.set()  # also ends the relay
            for thread in threads:  # on Ctrl-C: let each robot stop safely
                thread.join(2.0)
            self.running = [b for b, t in zip(self.bridges, threads, strict=True) if t.is_alive()]
        return [b.stats for b in self.bridges]

    def _one(self, bridge: HardwareBridge, endpoint: str, mode: str, episodes: int | None) -> None:
        try:
            bridge.run(endpoint, mode=mode, episodes=episodes)
        except Exception as exc:  # one robot's refusal must not end the others
            log.error("robot %s stopped: %s", bridge.spec.robot, exc)
            self.errors[bridge.spec.robot] = exc

    def _relay_stop(self) -> None:
        self.stop_event.wait()
        for bridge in self.bridges:
            bridge.stop_event.set()
