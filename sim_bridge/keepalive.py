"""The session kept alive while the bridge's thread is in the robot's own code.

A controller forgets a robot that sent nothing for its ``stale_after_s`` (5 s by default), and
a bridge's hooks may take longer than that: homing a robot in ``begin_episode``, waiting for a
learner in ``end_episode``. A robot busy between episodes is not gone, so while a hook runs a
thread of :class:`KeepAlive` holds the link: it sends HEARTBEAT once nothing was sent for
``every_s`` (HELLO again if the controller forgot the robot anyway), and keeps what arrives for
the bridge's next ``receive``.

ZeroMQ sockets are not thread-safe, but one may move between threads with a full memory
barrier between the two users. The link is handed over with a lock: the bridge's thread holds
it whenever it is not in a hook, and the keeper uses the link only while it holds it. When
nothing is due (a hook of microseconds, the usual tick) the keeper never takes it, so the
control loop pays one uncontended lock release and acquire per hook.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim_bridge.link import BridgeLink

log = logging.getLogger(__name__)


class KeepAlive:
    """Keeps ``link``'s session alive (HEARTBEAT after ``every_s`` without a send) while the
    thread that made it is inside :meth:`away`. Use it as a context manager around the run."""

    def __init__(self, link: BridgeLink, every_s: float) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.link, self.every_s = link, every_s
        self._holder = threading.Lock()
        """Whoever holds it may use the link: the bridge's thread, but while it is away."""
        self._holder.acquire()
        self._held = True
        """Whether the bridge's thread holds ``_holder`` (a signal may interrupt a hand-over:
        ``close`` must not release what it does not hold)."""
        self._closed = threading.Event()
        self._failure: BaseException | None = None
        """What the keeper's use of the link raised (a Refused WELCOME), for the bridge."""
        self._last_try = time.perf_counter()
        self._away = _Away(self)
        self._thread = threading.Thread(
            target=self._keep, name=f"keepalive-{link.spec.robot}", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def away(self) -> _Away:
        """``with keeper.away(): hook()`` lends the link to the keeper while the hook runs;
        what the keeper's use of it raised is raised when the block ends."""
        return self._away

    def _lend(self) -> None:
        self._held = False
        self._holder.release()

    def _take_back(self, raising: bool) -> None:
        """Hold the link again; raise what the keeper's use of it raised, unless the hook is
        raising already (its own error is the one to see; the keeper's is logged)."""
        self._holder.acquire()
        self._held = True
        if self._failure is not None:
            failure, self._failure = self._failure, None
            if raising:
                log.warning("keeping %s's session alive failed too: %r", self.link.spec.robot,
                            failure)  # fmt: skip
                return
            raise failure

    def close(self) -> None:
        """Stop the keeper; the link is the calling thread's alone afterwards."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._held:  # a keeper waiting for the link sees it closed and leaves
            self._held = False
            self._holder.release()
        self._thread.join()
        self._holder.acquire()
        self._held = True
        if self._failure is not None:  # from the last hook, not raised by a take back
            log.warning("keeping %s's session alive failed: %r", self.link.spec.robot,
                        self._failure)  # fmt: skip
            self._failure = None

    def _keep(self) -> None:
        while not self._closed.is_set():
            due = max(self.link.last_sent, self._last_try) + self.every_s - time.perf_counter()
            if due > 0:
                self._closed.wait(due)
                continue
            if not self._holder.acquire(timeout=self.every_s):
                continue  # the bridge's thread is using the link: it is not idle
            try:
                if self._closed.is_set():
                    return
                self.link.take_in()  # an unknown_robot among it says HELLO again: a send
                self._last_try = time.perf_counter()
                if self._last_try - self.link.last_sent >= self.every_s:
                    self.link.keep_alive()
            except BaseException as exc:  # for the bridge's thread: a keeper must not die mute
                self._failure = exc
                return
            finally:
                self._holder.release()


class _Away:
    """The context of :meth:`KeepAlive.away`: one object for every call (it runs twice a tick,
    where a generator-based context manager would cost microseconds)."""

    __slots__ = ("_keeper",)

    def __init__(self, keeper: KeepAlive) -> None:
        self._keeper = keeper

    def __enter__(self) -> None:
        self._keeper._lend()

    def __exit__(self, kind: object, *exc: object) -> None:
        self._keeper._take_back(raising=kind is not None)
