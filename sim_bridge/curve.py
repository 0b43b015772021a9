"""CurveZMQ credentials for the clients of a controller that listens beyond loopback.

A controller started with ``--allow-remote`` encrypts its sockets with CurveZMQ and accepts only
clients whose public key the operator placed in its clients directory. Key pairs are the files
``tickmpc keys NAME`` writes (pyzmq's certificate format, the same as czmq's ``zcert``):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys. A client (a bridge, ``tickmpc
tune`` or ``status``, a dashboard) needs its own secret file and the controller's public file;
the controller's operator copies the client's ``.key`` file into the clients directory.

Another language needs only its ZeroMQ binding's CURVE options: ``ZMQ_CURVE_SERVERKEY`` (the
controller's public key), ``ZMQ_CURVE_PUBLICKEY`` and ``ZMQ_CURVE_SECRETKEY`` (the client's),
each the 40-character Z85 text in the files' ``public-key`` / ``secret-key`` lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


def make_key_pair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` (created if missing; the
    secret file readable by its owner only); returns their paths. Refuses to overwrite."""
    where = Path(directory)
    public, secret = where / f"{name}{PUBLIC_SUFFIX}", where / f"{name}{SECRET_SUFFIX}"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a key name is a plain file name, got {name!r}")
    if public.exists() or secret.exists():
        raise ValueError(f"{public} or {secret} exists already: pick another name")
    where.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        made_public, made_secret = zmq.auth.create_certificates(where, name)
    finally:
        os.umask(umask)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def _load(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a CurveZMQ {what} file ({exc})") from None


def read_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file; ValueError naming the file when it
    is missing, unreadable or holds no secret key."""
    public, secret = _load(path, "key pair")
    if not secret:
        raise ValueError(f"{path}: holds no secret key (give the {SECRET_SUFFIX} file)")
    return public, secret


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) file; ValueError naming it."""
    public, _ = _load(path, "key")
    if not public:
        raise ValueError(f"{path}: holds no public key")
    return public


@dataclass(frozen=True)
class CurveClient:
    """A client's side of CurveZMQ: its key pair and the controller's public key."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(
        cls,
        secret_file: str | os.PathLike[str],
        server_key: str | os.PathLike[str] | None = None,
    ) -> CurveClient:
        """The client of ``secret_file`` (its ``.key_secret``) to the controller whose public
        key is in ``server_key`` (None: ``secret_file`` is the controller's own pair, as for
        the learner or an operator on the controller's machine)."""
        public, secret = read_key_pair(secret_file)
        server = public if server_key is None else read_public_key(server_key)
        return cls(public, secret, server)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CurveZMQ client (before it connects)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server
