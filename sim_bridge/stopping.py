"""A stop request that a socket poll can wait on.

``threading.Event`` cannot wake a thread blocked in ``zmq_poll``: a bridge waiting for an
ACTION with a long poll timeout (lockstep waits ``watchdog_s`` per poll, a user may set minutes)
would notice a stop, e.g. set from a SIGTERM handler, only when that poll times out.
:class:`StopEvent` is an Event that also makes a file descriptor readable while it is set, so
the poll that waits for the controller wakes the moment it is set, from any thread or a signal
handler.
"""

from __future__ import annotations

import socket
import threading


class StopEvent(threading.Event):
    """A ``threading.Event`` whose ``fileno()`` is readable exactly while it is set."""

    def __init__(self) -> None:
        super().__init__()
        # A socket pair, not a pipe: zmq_poll takes sockets on every platform, pipes on POSIX.
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # Reentrant: a signal handler that sets it may interrupt this thread's own clear().
        self._lock = threading.RLock()

    def fileno(self) -> int:
        """The descriptor to poll for reading (``zmq.Poller.register(event.fileno())``)."""
        return self._reader.fileno()

    def set(self) -> None:
        with self._lock:
            if not self.is_set():
                try:
                    self._writer.send(b"\0")
                except BlockingIOError:  # a byte is already there: it is readable anyway
                    pass
            super().set()

    def clear(self) -> None:
        with self._lock:
            super().clear()
            try:
                while self._reader.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def __del__(self) -> None:
        self._reader.close()
        self._writer.close()
