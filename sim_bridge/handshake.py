"""Why a client's security handshake with the controller fails, when retrying cannot help.

A client without CurveZMQ keys, with keys for a controller that uses none, with the wrong
controller key, or with a key the controller does not accept gets no message at all: the
handshake fails and libzmq retries it every 100 ms. :class:`HandshakeWatch` reads the socket's
handshake events and says why.

Only a refused key is reported the same way every time (``ZMQ_EVENT_HANDSHAKE_FAILED_AUTH``:
the controller answers with a ZMTP ERROR before closing). The others race: the side that sees
the mechanism mismatch first closes the connection, and a busy controller often sees it before
its own greeting has left, so the client sees only a connection closed mid-handshake
(``_NO_DETAIL``), as it does when a controller restarts. So on ``_NO_DETAIL`` the watch asks
the controller which mechanism it speaks: :func:`served_mechanism` opens a second plain
connection and reads the controller's ZMTP 3 greeting (RFC 23: 10 bytes of signature, the
version, then the mechanism name), which it sends before it has seen the client's mechanism.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)
WRONG_KEY_FAILURES = 3
"""Handshakes in a row that a CurveZMQ controller closes, with no reason given, before a
client with keys concludes that it cannot read them (the controller's public key is not the
one given): a controller restarting closes one handshake, not three."""
PROBE_TIMEOUT_S = 1.0
_GREETING_START = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03"
"""A ZMTP 3 greeting's signature and major version: enough for a peer to send its own."""
_MECHANISM = slice(12, 32)
"""Where a ZMTP 3 greeting names its security mechanism (NUL-padded ASCII)."""

NEEDS_KEYS = ("the controller requires CurveZMQ keys (see docs/protocol.md, "
              "Authentication)")  # fmt: skip
UNWANTED_KEYS = ("the controller does not use CurveZMQ, and this client was given keys: "
                 "connect without them, or start the controller with its keys")  # fmt: skip
REFUSED_KEY = "the controller does not accept this bridge's CurveZMQ key"
WRONG_SERVER_KEY = ("the controller closes every CurveZMQ handshake without a reason: is the "
                    "controller's public key (--server-key) the right one?")  # fmt: skip


class HandshakeWatch:
    """Watches the security handshakes of ``sock`` (a client socket, not connected yet) to
    ``endpoint``; ``keys`` says whether the client has CurveZMQ keys. Set up before it
    connects: a refused handshake is over within milliseconds."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, keys: bool) -> None:
        self.endpoint, self.keys = endpoint, keys
        self._socket = sock
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(EVENTS)
        """Readable when a handshake event arrived; poll it beside the socket."""
        self._unexplained = 0
        """Handshakes closed without a reason since the last one that succeeded."""

    def failure(self) -> str | None:
        """Why the controller refuses this client, if the events so far say so for certain
        (reads every event waiting; never blocks but for a probe of the greeting)."""
        why = None
        while why is None and self.monitor.poll(0):
            why = self._explain(recv_monitor_message(self.monitor))
        return why

    def close(self) -> None:
        """Stop watching (before the socket closes)."""
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self.monitor.close(linger=0)

    def _explain(self, event: Mapping[str, Any]) -> str | None:
        kind, value = event["event"], event["value"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._unexplained = 0
            return None
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return REFUSED_KEY
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return UNWANTED_KEYS if self.keys else NEEDS_KEYS
            why = WRONG_SERVER_KEY if self.keys else NEEDS_KEYS
            return f"the security handshake failed (ZMTP protocol error {int(value):#x}): {why}"
        self._unexplained += 1  # closed mid-handshake: ask what the controller speaks
        served = served_mechanism(self.endpoint)
        if served == "CURVE" and not self.keys:
            return NEEDS_KEYS
        if served == "NULL" and self.keys:
            return UNWANTED_KEYS
        if served == "CURVE" and self._unexplained >= WRONG_KEY_FAILURES:
            return WRONG_SERVER_KEY
        return None  # a controller restarting, or one not there yet: retried


def served_mechanism(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """The security mechanism (``"NULL"``, ``"CURVE"``, ...) the ZeroMQ peer bound at
    ``endpoint`` (``tcp://`` or ``ipc://``) names in its greeting; None when it cannot be read
    (nothing listening, another transport, not ZMTP 3)."""
    try:
        with _connect(endpoint, timeout_s) as sock:
            sock.sendall(_GREETING_START)
            greeting = b""
            while len(greeting) < _MECHANISM.stop:
                chunk = sock.recv(_MECHANISM.stop - len(greeting))
                if not chunk:
                    return None
                greeting += chunk
    except (OSError, ValueError):
        return None
    if greeting[0] != 0xFF or not greeting[9] & 1 or greeting[10] < 3:
        return None
    return greeting[_MECHANISM].rstrip(b"\0").decode("ascii", "replace")


def _connect(endpoint: str, timeout_s: float) -> socket.socket:
    """A plain stream socket connected to a ZeroMQ ``tcp://`` or ``ipc://`` endpoint;
    ValueError for any other."""
    transport, _, address = endpoint.partition("://")
    if transport == "tcp":
        host, _, port = address.rpartition(":")
        host = host.rpartition(";")[2].strip("[]")  # "tcp://source;host:port" connects from source
        return socket.create_connection((host, int(port)), timeout_s)
    if transport == "ipc":
        path = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock
    raise ValueError(f"no greeting probe for {transport}:// endpoints")
