"""The service's side of CurveZMQ: its key pair on every socket it binds, and a ZAP handler
that accepts only the client keys in the operator's clients directory.

Every client key is checked at its connection's handshake against the ``*.key`` files the
directory holds at that moment (read again when the directory changes), so an operator admits
a new robot by copying its public key there, and removes one by deleting it (its open
connection stays until it reconnects). The service's own public key is accepted too: a process
holding the service's secret file (the learner beside it, an operator on its machine) is the
service's own. A refused key is logged once a minute per key and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from sim_bridge.curve import PUBLIC_SUFFIX, read_key_pair, read_public_key

log = logging.getLogger(__name__)
LOG_EVERY_S = 60.0


class ClientKeys:
    """The accepted client keys: the files of a directory, re-read when it changes."""

    def __init__(self, directory: Path, own: bytes) -> None:
        if not directory.is_dir():
            raise ValueError(f"clients directory {directory} does not exist")
        self.directory, self.own = directory, own
        self.refused = 0
        self._lock = threading.Lock()
        self._stamp: frozenset[tuple[str, int, int]] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._logged: dict[bytes, float] = {}
        self._stamp = self._files()  # a broken directory fails now, not at the first robot
        self._keys = self._read()

    def keys(self) -> frozenset[bytes]:
        """The accepted public keys (Z85), read again when a key file was added, removed or
        rewritten. Never raises (it runs in ZAP's thread): while the directory cannot be read,
        the keys read last stay accepted, and it is logged."""
        with self._lock:
            try:
                stamp = self._files()
                if stamp != self._stamp:
                    self._keys, self._stamp = self._read(), stamp
            except OSError as exc:
                log.warning("cannot read the clients directory (%s); the keys read last stay "
                            "accepted", exc)  # fmt: skip
            return self._keys | {self.own}

    def _files(self) -> frozenset[tuple[str, int, int]]:
        """(name, mtime_ns, size) of every key file: what a change would change. OSError when
        the directory is gone (a glob would just find nothing, and refuse everyone)."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory} is not a directory any more")
        return frozenset(
            (path.name, (st := path.stat()).st_mtime_ns, st.st_size)
            for path in self.directory.glob(f"*{PUBLIC_SUFFIX}")
        )

    def _read(self) -> frozenset[bytes]:
        keys = set()
        for path in self.directory.glob(f"*{PUBLIC_SUFFIX}"):
            try:
                keys.add(read_public_key(path))
            except ValueError as exc:
                log.warning("ignoring a client key file: %s", exc)
        return frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for one handshake: is ``key`` (Z85) accepted? Never raises: an
        exception would end the handler's thread, and every later handshake would stall."""
        try:
            if key in self.keys():
                return True
        except Exception:  # a bug must refuse one client, not stop authenticating
            log.exception("checking a client key failed; refused")
        self.refused += 1
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[key] = now
            log.warning("refused a client with an unknown CurveZMQ key %s... (not in %s)",
                        key[:8].decode(), self.directory)  # fmt: skip
        return False


class CurveServer:
    """The service's key pair and the ZAP handler of its context."""

    def __init__(self, secret_file: Path, clients: Path) -> None:
        self.public, self.secret = read_key_pair(secret_file)
        self.clients = ClientKeys(clients, self.public)
        self._auth: ThreadAuthenticator | None = None

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Answer ZAP requests of ``context``'s server sockets (one handler per context)."""
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self.clients)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CurveZMQ server (before it binds)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
