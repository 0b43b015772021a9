"""The MPC service end to end: real ZeroMQ sockets on loopback, real MuJoCo bridges, real ONNX
Runtime sessions over a known cartpole model, a real transition store, and the real CLI in
subprocesses where the product runs it that way."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from controller.service import MPCService, ServiceConfig
from controller.service.control import parse_assignments, request
from models.registry import ModelDirectory
from models.store import TransitionReader
from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink, RobotSpec, describe
from sim_bridge.mujoco_bridge import MujocoBridge
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    LOOPBACK,
    SPEC,
    TICKMPC,
    Running,
    publish_cartpole,
    reply_to,
    send_state,
    start_service,
    stop_service,
    wait_for,
)


def test_lockstep_episode_swings_up_the_cartpole_and_records_every_transition(
    served: Running,
) -> None:
    bridge = MujocoBridge("cartpole-swingup", "cart-a", seed=1)
    stats = bridge.run(served.endpoint, mode="lockstep", episodes=1)
    # Measured: CEM (H 15, N 100, 2 iterations) over the exact model scores ~173 of at most
    # 200 here; uniformly random actions score ~0.1.
    assert stats.returns[0] > 120.0
    assert stats.actions == 200 and stats.safe_actions == 0 and stats.late_actions == 0
    # The bridge is done once it sent the last STATE; the service reads it a moment later.
    wait_for(lambda: served.service.status()["robots"]["cart-a"]["episodes"] == 1, 10)
    robot = served.service.status()["robots"]["cart-a"]
    assert robot["ticks"] == 200 and robot["model_version"] == 1 and robot["errors"] == 0
    assert robot["transitions"] == 200 and robot["fallbacks"] == 0 and robot["nonfinite"] == 0
    status = served.service.status()
    assert tuple(status) == p.STATUS_FIELDS and tuple(robot) == p.ROBOT_STATUS_FIELDS
    assert status["store_errors"] == 0
    data = TransitionReader(served.root / "store").read_all()  # written: no flush needed
    assert len(data.obs) == 200 and set(data.robot) == {"cart-a"}
    np.testing.assert_array_equal(data.next_obs[:-1], data.obs[1:])  # one chain, no gaps
    assert data.truncated[-1] and not data.truncated[:-1].any()
    assert np.abs(data.act).max() <= 1.0
    assert abs(float(data.reward.sum()) - stats.returns[0]) < 1e-3


def test_live_tune_changes_the_horizon_of_the_following_actions(served: Running) -> None:
    link = BridgeLink(served.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    obs = np.array([0.0, 0.1, 0.0, 0.0])
    send_state(link, 0, obs)
    assert reply_to(link)["horizon"] == 15
    reply = request(served.control, "set", changes=parse_assignments(
        ["horizon=30", "planner=icem", "weight.ctrl=0.05"]))  # fmt: skip
    assert reply["ok"] and reply["settings"]["horizon"] == 30
    send_state(link, 1, obs, 0.0)
    action = reply_to(link)
    assert (action["horizon"], action["planner"]) == (30, "icem")
    with pytest.raises(p.ProtocolError, match=r"bad_setting: horizon must be an integer"):
        request(served.control, "set", changes={"horizon": 0})
    with pytest.raises(p.ProtocolError, match=r"bad_setting: .*no reward term 'nope'"):
        request(served.control, "set", changes={"weights": {"nope": 1.0}})
    settings = request(served.control, "get")["settings"]
    assert settings["horizon"] == 30 and settings["weights"] == {"ctrl": 0.05}
    send_state(link, 2, obs, 0.0)
    assert reply_to(link)["horizon"] == 30
    link.close()


def test_a_bridge_learns_the_served_spec_from_describe_and_welcome(served: Running) -> None:
    spec = describe(served.endpoint, "asker", 10.0)  # no HELLO needed
    assert (spec["task"], spec["obs_dim"], spec["act_dim"]) == ("cartpole-swingup", 4, 1)
    assert spec["control_period"] == CARTPOLE.control_period
    assert spec["episode_steps"] == CARTPOLE.episode_steps
    assert list(spec["action_low"]) == [-1.0] and list(spec["action_high"]) == [1.0]
    link = BridgeLink(served.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    assert link.served_spec is not None and link.served_spec["obs_dim"] == 4
    assert served.service.status()["robots"].keys() == {"probe"}  # DESCRIBE made no session
    link.close()


def test_telemetry_reports_each_tick_with_its_reward_terms(served: Running) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
    sub.connect(served.service.endpoints["telemetry"])
    time.sleep(0.3)  # the subscription reaches the publisher
    link = BridgeLink(served.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    rng = np.random.default_rng(0)
    send_state(link, 0, rng.standard_normal(4))
    for step in (1, 2):
        send_state(link, step, rng.standard_normal(4), float(reply_to(link)["action"][0]))
    reply_to(link)
    records: list[dict[str, Any]] = []
    while sub.poll(2000) and len(records) < 3:
        records.append(p.parse_telemetry(sub.recv_multipart()))
    sub.close()
    link.close()
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[0]["reward"] is None and records[0]["reward_terms"] is None
    for r in records[1:]:  # the robot sent no reward: the task's terms give it
        terms = r["reward_terms"]
        assert set(terms) == set(CARTPOLE.weights)
        weighted = sum(CARTPOLE.weights[k] * v for k, v in terms.items())
        assert r["reward"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)
        assert r["fallback"] is False and r["nonfinite"] == 0 and r["v"] == p.PROTOCOL_VERSION


def test_a_seed_setting_reseeds_every_robot_even_to_the_same_seed(tmp_path: Path) -> None:
    running = start_service(tmp_path)  # no model: the actions are the exploration stream
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    actions = []
    for step in range(3):
        if step:
            request(running.control, "set", changes={"seed": 5})
        send_state(link, step, np.zeros(4), None if step == 0 else 0.0)
        actions.append(float(reply_to(link)["action"][0]))
    assert actions[1] == actions[2] != actions[0]  # both drawn first from a fresh seed-5 stream
    with pytest.raises(p.ProtocolError, match=r"bad_field: robot 'nobody' is not connected"):
        request(running.control, "set", changes={"horizon": 5}, robot="nobody")
    link.close()
    stop_service(running)


def test_tune_and_status_commands_talk_to_the_control_socket(served: Running) -> None:
    link = BridgeLink(served.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    send_state(link, 0, np.zeros(4))
    reply_to(link)
    env = {**os.environ, "COLUMNS": "200"}
    tune = subprocess.run([*TICKMPC, "tune", "population=50", "--control", served.control],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert tune.returncode == 0, tune.stderr
    assert json.loads(tune.stdout)["population"] == 50
    bad = subprocess.run([*TICKMPC, "tune", "planner=pid", "--control", served.control],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert bad.returncode == 1 and "planner must be one of" in bad.stderr
    status = subprocess.run([*TICKMPC, "status", "--json", "--control", served.control],
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert status.returncode == 0, status.stderr
    robot = json.loads(status.stdout)["robots"]["probe"]
    assert robot["ticks"] == 1 and robot["model_version"] == 1
    link.close()


def test_two_bridges_are_served_independently(served: Running) -> None:
    bridges = [MujocoBridge("cartpole-swingup", f"cart-{i}", seed=10 + i) for i in range(2)]
    results: dict[str, object] = {}
    threads = [
        threading.Thread(
            target=lambda b=b: results.update(
                {b.spec.robot: b.run(served.endpoint, mode="lockstep", episodes=1)}
            )
        )
        for b in bridges
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    def recorded() -> bool:  # the last STATEs may still be in flight when a bridge returns
        robots = served.service.status()["robots"]
        return all(robots[b.spec.robot]["transitions"] == 200 for b in bridges)

    wait_for(recorded, 5)
    robots = served.service.status()["robots"]
    for b in bridges:
        assert b.stats.actions == 200 and b.stats.late_actions == 0
        assert robots[b.spec.robot]["ticks"] == 200
        assert robots[b.spec.robot]["transitions"] == 200
    assert robots["cart-0"]["episode"] != robots["cart-1"]["episode"]


def test_bad_messages_get_errors_while_another_robot_keeps_being_served(
    served: Running,
) -> None:
    good = MujocoBridge("cartpole-swingup", "good", seed=3)
    thread = threading.Thread(target=good.run, args=(served.endpoint,),
                              kwargs={"mode": "lockstep", "episodes": 1})  # fmt: skip
    thread.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    rogue = context.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(served.endpoint)
    valid_hello = p.encode(SPEC.hello("lockstep"))
    header = json.loads(valid_hello[0])
    cases = {
        "bad_frame": [b"\xff not json"],
        "bad_version": [json.dumps({**header, "version": 99}).encode(), *valid_hello[1:]],
        "mismatch": p.encode(
            RobotSpec("rogue", "cartpole-swingup", 5, 1, (-1.0,), (1.0,), 0.04).hello("lockstep")
        ),
        "unknown_robot": p.encode(p.make(p.HEARTBEAT, "rogue")),
        "nonfinite": [valid_hello[0], np.array([np.nan]).tobytes(), valid_hello[2]],
    }
    for code, frames in cases.items():
        rogue.send_multipart(frames)
        assert rogue.poll(10_000), f"no reply to the {code} case"
        reply = p.decode(rogue.recv_multipart())
        assert reply.type == p.ERROR and reply["code"] == code, reply
    rogue.close()
    thread.join(timeout=120)
    assert good.stats.actions == 200 and not good.stats.link.errors
    assert served.service.status()["refused_messages"] == len(cases)


def test_the_newest_state_is_planned_and_stale_ones_are_counted(tmp_path: Path) -> None:
    publish_cartpole(tmp_path / "models")
    service = MPCService(
        CARTPOLE,
        ServiceConfig(endpoint=LOOPBACK, control=LOOPBACK, telemetry=LOOPBACK,
                        models=tmp_path / "models", store=tmp_path / "store"),
        FAST,
    )  # fmt: skip
    service.start()
    link = BridgeLink(service.endpoints["endpoint"], SPEC, "realtime")
    while not link.welcomed:  # the service is stepped by hand: no thread
        link.say_hello()
        service.step(50)
        link.receive(0.05)
    seqs = [send_state(link, k, np.full(4, 0.1 * k), None if k == 0 else 0.5) for k in range(3)]
    time.sleep(0.2)  # all three are queued before the service looks
    service.step(50)
    reply = reply_to(link)
    assert reply["answers"] == seqs[-1]
    robot = service.status()["robots"]["probe"]
    assert robot["dropped_stale"] == 2 and robot["ticks"] == 1 and robot["transitions"] == 2
    link.close()
    service.close()


def test_a_new_model_version_is_swapped_in_between_ticks(tmp_path: Path) -> None:
    running = start_service(tmp_path)  # no model yet: random actions within the bounds
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    send_state(link, 0, np.zeros(4))
    first = reply_to(link)
    assert (first["model_version"], first["planner"]) == (0, "explore")
    assert -1.0 <= first["action"][0] <= 1.0
    publish_cartpole(tmp_path / "models", 1)
    (tmp_path / "models" / "v000002.onnx").write_bytes(b"corrupted model file")
    version, step = 0, 1
    end = time.monotonic() + 60
    while version != 1 and time.monotonic() < end:
        send_state(link, step, np.zeros(4), 0.0)
        version, step = reply_to(link)["model_version"], step + 1
        time.sleep(0.05)
    assert version == 1
    ModelDirectory(tmp_path / "models").mark_latest(2)
    time.sleep(0.5)
    send_state(link, step, np.zeros(4), 0.0)
    kept = reply_to(link)
    assert (kept["model_version"], kept["planner"]) == (1, "cem")
    assert "2" in running.service.status()["rejected_models"]
    link.close()
    stop_service(running)


def test_an_announced_version_is_loaded_without_waiting_for_the_poll(tmp_path: Path) -> None:
    running = start_service(tmp_path, model_poll_s=600.0)  # the poll alone would take ten minutes
    reply = request(running.control, "model")
    assert reply["ok"] and reply["model_version"] == 0
    publish_cartpole(tmp_path / "models", 1)
    request(running.control, "model")  # what `tickmpc learn --announce` sends
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    version, step, end = 0, 0, time.monotonic() + 30
    while version != 1 and time.monotonic() < end:
        send_state(link, step, np.zeros(4), 0.0 if step else None)
        version, step = reply_to(link)["model_version"], step + 1
    assert version == 1
    link.close()
    stop_service(running)


def test_a_silent_robot_is_forgotten_and_must_say_hello_again(tmp_path: Path) -> None:
    running = start_service(tmp_path, stale_after_s=0.3)
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    time.sleep(1.0)
    status = running.service.status()
    assert status["robots"] == {} and status["forgotten_robots"] == 1
    send_state(link, 0, np.zeros(4))
    error = reply_to(link)
    assert error.type == p.ERROR and error["code"] == "unknown_robot"
    link.close()
    stop_service(running)


def test_a_forgotten_robot_that_comes_back_goes_on_counting_its_episodes(tmp_path: Path) -> None:
    """A robot busy between episodes (silent past stale_after_s) is forgotten, but what it did
    is not: back with HELLO, its episode count, ticks and history go on from where they were."""
    running = start_service(tmp_path, stale_after_s=0.3)
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)

    def episode(bridge_episode: int) -> None:
        for step in range(3):
            extra = {} if step == 0 else {"applied": np.array([0.0])}
            link.send(link.message(p.STATE, bridge_episode, step=step, reward=None,
                                   terminated=False, truncated=False, obs=np.zeros(4),
                                   **extra))  # fmt: skip
            assert reply_to(link).type == p.ACTION
        link.send(link.message(p.EPISODE, bridge_episode, event="end", steps=3, **{"return": None}))

    episode(1)
    wait_for(lambda: running.service.status()["robots"].get("probe", {}).get("episodes"), 10)
    time.sleep(1.0)  # busy between episodes: forgotten
    assert running.service.status()["robots"] == {}
    link.say_hello()
    wait_for(lambda: "probe" in running.service.status()["robots"], 10)
    episode(2)
    wait_for(lambda: running.service.status()["robots"]["probe"]["episodes"] == 2, 10)
    robot = running.service.status()["robots"]["probe"]
    assert (robot["episodes"], robot["ticks"], robot["episode"]) == (2, 6, 2)
    history = request(running.control, "history")
    assert [(e["robot"], e["episode"], e["steps"]) for e in history["episodes"]] == [
        ("probe", 1, 3),
        ("probe", 2, 3),
    ]
    link.close()
    stop_service(running)


def test_binding_beyond_loopback_needs_an_explicit_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        ServiceConfig(endpoint="tcp://0.0.0.0:5555")
    ServiceConfig(endpoint="tcp://0.0.0.0:5555", allow_remote=True, keys=tmp_path / "k",
                    clients=tmp_path)  # fmt: skip  # and CurveZMQ: tests/controller/test_curve.py
