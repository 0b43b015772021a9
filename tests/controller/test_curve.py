"""CurveZMQ: a service reached beyond loopback serves only the clients whose keys its operator
accepted. Real TCP sockets (the service bound on every interface with --allow-remote), real
key files made by ``tickmpc keys``."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from controller.service import MPCService
from controller.service.control import request
from controller.service.settings import ServiceConfig
from sim_bridge import protocol as p
from sim_bridge.curve import CurveClient, make_key_pair
from sim_bridge.handshake import served_mechanism
from sim_bridge.link import BridgeLink, Refused, describe
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    SPEC,
    TICKMPC,
    free_port,
    publish_cartpole,
    reply_to,
    send_state,
)


@dataclass
class Secured:
    service: MPCService
    keys: Path
    """Where every key pair of the test lives (the service's: service.key_secret)."""
    clients: Path
    endpoint: str
    control: str
    telemetry: str

    def client(self, name: str, accepted: bool = True) -> CurveClient:
        """A new client key pair, its public key placed in the clients directory if
        ``accepted``."""
        public, secret = make_key_pair(self.keys, name)
        if accepted:
            (self.clients / public.name).write_bytes(public.read_bytes())
        return CurveClient.load(secret, self.keys / "service.key")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    yield from _secured(tmp_path, model=True)


@pytest.fixture
def secured_bare(tmp_path: Path) -> Iterator[Secured]:
    """As ``secured``, without a model (it explores): for handshakes, 20 s less to set up."""
    yield from _secured(tmp_path, model=False)


def _secured(tmp_path: Path, model: bool) -> Iterator[Secured]:
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    clients.mkdir()
    make_key_pair(keys, "service")
    if model:
        publish_cartpole(tmp_path / "models")
    ports = [free_port() for _ in range(3)]
    settings = ServiceConfig(
        endpoint=f"tcp://0.0.0.0:{ports[0]}", control=f"tcp://0.0.0.0:{ports[1]}",
        telemetry=f"tcp://0.0.0.0:{ports[2]}", allow_remote=True,
        keys=keys / "service.key_secret", clients=clients, models=tmp_path / "models",
        store=tmp_path / "store", model_poll_s=0.1, stale_after_s=60.0,
    )  # fmt: skip
    service = MPCService(CARTPOLE, settings, FAST)
    service.start()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    local = [f"tcp://127.0.0.1:{port}" for port in ports]
    yield Secured(service, keys, clients, *local)
    service.stop_event.set()
    thread.join(10)
    service.close()


def _tick(link: BridgeLink, step: int) -> p.Message:
    send_state(link, step, np.array([0.0, 3.0, 0.0, 0.0]), None if step == 0 else 0.0)
    return reply_to(link)


def test_only_accepted_keys_are_served_and_the_service_keeps_serving(secured: Secured) -> None:
    good = BridgeLink(secured.endpoint, SPEC, "lockstep", secured.client("robot-1"))
    good.connect(10.0)
    assert _tick(good, 0).type == p.ACTION
    stranger = BridgeLink(secured.endpoint, SPEC, "lockstep", secured.client("x", False))
    with pytest.raises(Refused, match="does not accept this bridge's CurveZMQ key"):
        stranger.connect(5.0)
    plain = BridgeLink(secured.endpoint, SPEC, "lockstep")
    with pytest.raises(Refused, match="requires CurveZMQ"):
        plain.connect(5.0)
    mine = secured.client("robot-2")
    misled = BridgeLink(secured.endpoint, SPEC, "lockstep",
                        CurveClient(mine.public, mine.secret, zmq.curve_keypair()[0]))  # fmt: skip
    with pytest.raises(Refused, match=r"is the controller.s public key .* the right one"):
        misled.connect(5.0)
    for link in (stranger, plain, misled):
        link.close()
    assert _tick(good, 1)["answers"] > 0  # still served
    # The control socket: nothing for a client without an accepted key.
    with pytest.raises(TimeoutError):
        request(secured.control, "status", timeout_s=1.0)
    with pytest.raises(TimeoutError, match="are they accepted"):
        request(secured.control, "status", timeout_s=1.0, curve=secured.client("y", False))
    operator = CurveClient.load(secured.keys / "service.key_secret")  # the service's own pair
    status = request(secured.control, "status", curve=operator)
    assert status["refused_clients"] >= 2 and status["robots"]["probe"]["ticks"] == 2
    good.close()


def test_a_refused_handshake_is_explained_every_time_on_a_busy_machine(
    secured_bare: Secured,
) -> None:
    secured = secured_bare
    # On a loaded machine the service often closes a keyless client's handshake before its own
    # greeting left, so the client's socket sees only HANDSHAKE_FAILED_NO_DETAIL (measured:
    # 100 of 100 under two busy processes on 2 cores); the bridge must still say why.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(5):
            plain = BridgeLink(secured.endpoint, SPEC, "lockstep")
            with pytest.raises(Refused, match="requires CurveZMQ"):
                plain.connect(5.0)
            plain.close()
        with pytest.raises(Refused, match="requires CurveZMQ"):
            describe(secured.endpoint, "probe", timeout_s=5.0)
        stranger = secured.client("z", False)
        wrong = CurveClient(stranger.public, stranger.secret, zmq.curve_keypair()[0])
        for _ in range(3):
            misled = BridgeLink(secured.endpoint, SPEC, "lockstep", wrong)
            with pytest.raises(Refused, match="--server-key"):
                misled.connect(5.0)
            misled.close()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_the_greeting_says_which_mechanism_a_peer_speaks() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    public, secret = zmq.curve_keypair()
    curve, plain = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
    curve.curve_secretkey, curve.curve_publickey, curve.curve_server = secret, public, True
    ports = []
    for sock in (curve, plain):
        sock.setsockopt(zmq.LINGER, 0)
        ports.append(sock.bind_to_random_port("tcp://127.0.0.1"))
    assert served_mechanism(f"tcp://127.0.0.1:{ports[0]}") == "CURVE"
    assert served_mechanism(f"tcp://127.0.0.1:{ports[1]}") == "NULL"
    # A client with keys for a service that uses none is told so, not asked for keys.
    keys = CurveClient(*zmq.curve_keypair(), server=public)
    keyed = BridgeLink(f"tcp://127.0.0.1:{ports[1]}", SPEC, "lockstep", keys)
    with pytest.raises(Refused, match="does not use CurveZMQ"):
        keyed.connect(5.0)
    keyed.close()
    for sock in (curve, plain):
        sock.close()
    assert served_mechanism(f"tcp://127.0.0.1:{free_port()}") is None  # nothing listening
    assert served_mechanism("inproc://nowhere") is None


def test_telemetry_goes_only_to_accepted_subscribers(secured: Secured) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    subs = []
    for curve in (secured.client("watcher"), None):
        sub = context.socket(zmq.SUB)
        if curve is not None:
            curve.apply(sub)
        sub.setsockopt(zmq.LINGER, 0)
        sub.subscribe(p.TELEMETRY_TOPIC)
        sub.connect(secured.telemetry)
        subs.append(sub)
    link = BridgeLink(secured.endpoint, SPEC, "lockstep", secured.client("robot-1"))
    link.connect(10.0)
    got = [0, 0]
    for step in range(20):
        _tick(link, step)
        for i, sub in enumerate(subs):
            while sub.poll(50 if step == 19 else 0):
                sub.recv_multipart()
                got[i] += 1
    assert got[0] >= 10 and got[1] == 0
    for sub in subs:
        sub.close()
    link.close()


def test_a_key_added_while_serving_is_accepted(secured: Secured) -> None:
    late = secured.client("late", accepted=False)
    link = BridgeLink(secured.endpoint, SPEC, "lockstep", late)
    with pytest.raises(Refused, match="does not accept"):
        link.connect(5.0)
    link.close()
    public = secured.keys / "late.key"
    (secured.clients / public.name).write_bytes(public.read_bytes())
    link = BridgeLink(secured.endpoint, SPEC, "lockstep", late)
    link.connect(10.0)
    assert _tick(link, 0).type == p.ACTION
    link.close()


def test_beyond_loopback_needs_keys_and_keys_need_clients(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="endpoint: binding beyond loopback needs CurveZMQ"):
        ServiceConfig(endpoint="tcp://0.0.0.0:5555", allow_remote=True)
    with pytest.raises(ValueError, match="keys and clients go together"):
        ServiceConfig(keys=tmp_path / "service.key_secret")
    with pytest.raises(ValueError, match="not a CurveZMQ key pair file"):
        MPCService(CARTPOLE, ServiceConfig(keys=tmp_path / "nope", clients=tmp_path))


def test_tickmpc_keys_makes_a_pair_and_keeps_the_secret_private(tmp_path: Path) -> None:
    out = subprocess.run([*TICKMPC, "keys", "robot-7", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    secret = tmp_path / "robot-7.key_secret"
    assert (tmp_path / "robot-7.key").exists() and secret.stat().st_mode & 0o077 == 0
    client = CurveClient.load(secret)
    assert len(client.public) == len(client.secret) == 40 and client.server == client.public
    again = subprocess.run([*TICKMPC, "keys", "robot-7", "--dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "exists already" in again.stderr


def test_an_unreadable_clients_directory_keeps_the_keys_read_last(secured: Secured) -> None:
    good = secured.client("robot-1")
    first = BridgeLink(secured.endpoint, SPEC, "lockstep", good)
    first.connect(10.0)  # its key read and accepted
    first.close()
    secured.clients.rename(secured.clients.with_name("moved"))  # the check cannot read it now
    link = BridgeLink(secured.endpoint, SPEC, "lockstep", good)
    link.connect(10.0)  # ZAP still answers, with the keys it had
    assert _tick(link, 0).type == p.ACTION
    link.close()
