"""The service acting with a learned policy: ``planner=policy`` set live, the policy standing in
for a plan that had no time to run, new policy versions swapped in, a corrupt one refused.

Real parts throughout: SAC policies exported through the real ONNX path into the model
directory, real ONNX Runtime sessions, the service on real ZeroMQ loopback sockets, the real
CLI in a subprocess for ``tickmpc tune``, the real config loader.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from controller.config import Config
from controller.planners import (
    OPTIMIZERS,
    OPTIONS,
    PLANNERS,
    Planner,
    PlannerSettings,
    PolicyActor,
    PolicySettings,
)
from controller.planners.optimizers.cem import CEMSettings
from controller.rollout.evaluator import RolloutEvaluator
from controller.service.control import request
from models.policy.export import PolicyDirectory, PolicyRuntime
from models.policy.sac import SAC, SACConfig
from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink
from tests.controller.known_models import export_cartpole
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    SPEC,
    TICKMPC,
    publish_cartpole,
    reply_to,
    send_state,
    start_service,
    stop_service,
    wait_for,
)

LOW, HIGH = np.array([-1.0]), np.array([1.0])
MEAN = FAST.changed(planner="policy", explore=False)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two SAC policies for cartpole, seeds 0 and 1, exported once: version -> file."""
    root = tmp_path_factory.mktemp("policies")
    directory = PolicyDirectory(root)
    for seed in (0, 1):
        directory.publish(SAC(4, 1, LOW, HIGH, SACConfig(seed=seed)), model_version=0,
                          updates=0, real_rows=0, rollout_length=0)  # fmt: skip
    return {v: directory.path_of(v) for v in (1, 2)}


def place(models: Path, data: bytes, version: int) -> None:
    """Publish ``data`` as policy ``version`` of ``models`` the way the learner does: the file
    complete under its name before the marker names it."""
    directory = PolicyDirectory(models)
    models.mkdir(parents=True, exist_ok=True)
    staged = models / f".p{version}.tmp"
    staged.write_bytes(data)
    os.replace(staged, directory.path_of(version))
    directory.mark_latest(version)


def runtime(path: Path) -> PolicyRuntime:
    return PolicyRuntime(path, obs_dim=4, act_dim=1)


def ticks(link: BridgeLink, observations: np.ndarray, first: int = 0) -> list[p.Message]:
    """Send one STATE per row of ``observations`` (steps from ``first``), each after the
    previous one's ACTION; the ACTIONs."""
    replies = []
    for k, obs in enumerate(observations):
        send_state(link, first + k, obs, None if first + k == 0 else 0.0)
        replies.append(reply_to(link))
        assert replies[-1].type == p.ACTION, replies[-1]
    return replies


def test_tune_planner_policy_acts_with_the_policy_without_a_dynamics_model(
    tmp_path: Path, policies: dict[int, Path]
) -> None:
    place(tmp_path / "models", policies[1].read_bytes(), 1)  # a policy, and no dynamics model
    running = start_service(tmp_path)
    policy = runtime(policies[1])
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
    sub.connect(running.service.endpoints["telemetry"])
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    rng = np.random.default_rng(0)
    assert ticks(link, rng.standard_normal((1, 4)))[0]["planner"] == "explore"  # cem, no model
    tune = subprocess.run([*TICKMPC, "tune", "planner=policy", "explore=false", "--control",
                           running.control], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert tune.returncode == 0, tune.stderr
    settings = json.loads(tune.stdout)
    assert (settings["planner"], settings["explore"]) == ("policy", False)
    observations = rng.standard_normal((5, 4))
    for obs, reply in zip(observations, ticks(link, observations, 1), strict=True):
        assert (reply["planner"], reply["horizon"], reply["iterations"]) == ("policy", 0, 0)
        assert not reply["fallback"] and not reply["deadline_miss"]
        assert reply["model_version"] == 0
        np.testing.assert_allclose(reply["action"], policy.act(obs), atol=1e-5)
        value = float(policy.predict(obs)[2])
        assert reply["predicted_return"] == pytest.approx(value, rel=1e-5, abs=1e-5)
    # The setting the CLI sends as the control request it is: explore again.
    assert request(running.control, "set", changes={"explore": True})["settings"]["explore"]
    same = np.tile(observations[:1], (5, 1))
    drawn = np.array([r["action"][0] for r in ticks(link, same, 6)])
    assert ((drawn >= -1.0) & (drawn <= 1.0)).all()
    assert (np.abs(drawn - policy.act(same[0])[0]) > 1e-4).all() and len(set(drawn)) == 5
    records: list[dict[str, Any]] = []
    while sub.poll(2000) and len(records) < 11:
        records.append(p.parse_telemetry(sub.recv_multipart()))
    assert [r["planner"] for r in records[-10:]] == ["policy"] * 10
    assert {r["policy_version"] for r in records} == {1}
    status = running.service.status()
    assert (status["policy_version"], status["rejected_policies"]) == (1, {})
    shown = subprocess.run([*TICKMPC, "status", "--control", running.control],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert "model v0, policy p1, planner policy" in shown.stdout, shown.stdout + shown.stderr
    assert tuple(status) == p.STATUS_FIELDS
    back = request(running.control, "set", changes={"planner": "cem"})["settings"]
    assert back["planner"] == "cem" and "explore" not in back
    assert ticks(link, observations[:1], 11)[0]["planner"] == "explore"  # still no model
    sub.close()
    link.close()
    stop_service(running)


def test_the_policy_stands_in_for_a_plan_that_had_no_time(
    tmp_path: Path, policies: dict[int, Path]
) -> None:
    publish_cartpole(tmp_path / "models")
    place(tmp_path / "models", policies[1].read_bytes(), 1)
    # 1 us: only a plan without a cost estimate (the first) runs an iteration.
    running = start_service(tmp_path, FAST.changed(budget_ms=0.001))
    policy = runtime(policies[1])
    link = BridgeLink(running.endpoint, SPEC, "realtime")
    link.connect(10.0)
    observations = np.random.default_rng(1).standard_normal((8, 4))
    replies = ticks(link, observations)
    fell_back = [(obs, r) for obs, r in zip(observations, replies, strict=True) if r["fallback"]]
    assert len(fell_back) >= 5
    for obs, reply in fell_back:
        assert reply["planner"] == "policy" and reply["deadline_miss"]
        assert (reply["horizon"], reply["iterations"], reply["model_version"]) == (0, 0, 1)
        np.testing.assert_allclose(reply["action"], policy.act(obs), atol=1e-5)
    planned = [r for r in replies if not r["fallback"]]
    assert all(r["planner"] == "cem" and r["iterations"] >= 1 for r in planned)
    assert running.service.status()["robots"]["probe"]["fallbacks"] == len(fell_back)
    link.close()
    stop_service(running)


def test_a_new_policy_version_is_swapped_in_when_announced(
    tmp_path: Path, policies: dict[int, Path]
) -> None:
    place(tmp_path / "models", policies[1].read_bytes(), 1)
    running = start_service(tmp_path, MEAN, model_poll_s=600.0)  # only the announcement looks
    first, second = runtime(policies[1]), runtime(policies[2])
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    obs = np.array([0.1, 0.2, -0.3, 0.4])
    assert np.abs(first.act(obs) - second.act(obs)).max() > 1e-3  # seeds tell them apart
    np.testing.assert_allclose(ticks(link, obs[None])[0]["action"], first.act(obs), atol=1e-5)
    assert running.service.status()["policy_version"] == 1
    place(tmp_path / "models", policies[2].read_bytes(), 2)
    request(running.control, "model")  # what a learner's announcement sends
    wait_for(lambda: running.service.status()["policy_version"] == 2, 10)
    assert running.service.status()["policy_version"] == 2
    for reply in ticks(link, np.tile(obs, (3, 1)), 1):
        np.testing.assert_allclose(reply["action"], second.act(obs), atol=1e-5)
    link.close()
    stop_service(running)


def test_a_new_policy_is_composed_into_the_planners_rollouts_between_ticks(
    tmp_path: Path, policies: dict[int, Path]
) -> None:
    """Random shooting whose candidates are all noiseless policy proposals plans the served
    policy's own action: the rollouts hold p1 from the first tick, then p2 once announced."""
    publish_cartpole(tmp_path / "models")
    place(tmp_path / "models", policies[1].read_bytes(), 1)
    proposals = PlannerSettings().changed(
        planner="random", horizon=5, population=8, iterations=1, policy_share=1.0,
        policy_noise=0.0,
    )  # fmt: skip
    running = start_service(tmp_path, proposals, model_poll_s=600.0)
    first, second = runtime(policies[1]), runtime(policies[2])
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    obs = np.array([0.1, 0.2, -0.3, 0.4])
    status = running.service.status()
    assert (status["model_version"], status["rollout_policy_version"]) == (1, 1)
    for reply in ticks(link, np.tile(obs, (2, 1))):
        assert (reply["planner"], reply["iterations"], reply["fallback"]) == ("random", 1, False)
        np.testing.assert_allclose(reply["action"], first.act(obs), atol=1e-5)
    place(tmp_path / "models", policies[2].read_bytes(), 2)
    request(running.control, "model")
    wait_for(lambda: running.service.status()["rollout_policy_version"] == 2, 10)
    for reply in ticks(link, np.tile(obs, (2, 1)), 2):
        assert reply["model_version"] == 1 and not reply["fallback"]
        np.testing.assert_allclose(reply["action"], second.act(obs), atol=1e-5)
    assert running.service.status()["rejected_policies"] == {}
    link.close()
    stop_service(running)


def test_a_corrupt_policy_is_refused_and_the_previous_one_keeps_serving(
    tmp_path: Path, policies: dict[int, Path]
) -> None:
    place(tmp_path / "models", policies[1].read_bytes(), 1)
    running = start_service(tmp_path, MEAN)
    policy = runtime(policies[1])
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    obs = np.array([0.3, -0.1, 0.2, 0.0])
    np.testing.assert_allclose(ticks(link, obs[None])[0]["action"], policy.act(obs), atol=1e-5)
    data = bytearray(policies[2].read_bytes())
    middle = len(data) // 2  # inside the weights, which the stamped hash covers
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    place(tmp_path / "models", bytes(data), 2)
    request(running.control, "model")
    wait_for(lambda: "2" in running.service.status()["rejected_policies"], 10)
    status = running.service.status()
    assert "corrupt policy: graph hash" in status["rejected_policies"]["2"]
    assert status["policy_version"] == 1
    for reply in ticks(link, np.tile(obs, (3, 1)), 1):
        assert reply["planner"] == "policy"
        np.testing.assert_allclose(reply["action"], policy.act(obs), atol=1e-5)
    link.close()
    stop_service(running)


def test_the_drawn_action_is_tanh_of_the_policys_gaussian_within_the_bounds(
    policies: dict[int, Path],
) -> None:
    policy = runtime(policies[1])
    low, high = np.array([-2.0]), np.array([1.0])  # off-center bounds, to check the scaling
    actor = PolicyActor(policy, low, high)
    obs = np.array([0.5, -1.0, 0.25, 2.0])
    mean, std, value = policy.predict(obs)
    draw, got_value = actor.act(obs, np.random.default_rng(7))
    unit = np.clip((mean.astype(np.float64) + 0.5) / 1.5, -1 + 1e-6, 1 - 1e-6)
    u = np.arctanh(unit) + std * np.random.default_rng(7).standard_normal(1)
    np.testing.assert_allclose(draw, np.clip(-0.5 + 1.5 * np.tanh(u), low, high), rtol=1e-12)
    assert draw.dtype == np.float64 and got_value == pytest.approx(float(value))
    action, _ = actor.act(obs)
    np.testing.assert_allclose(action, mean, atol=1e-7)


def test_policy_options_and_settings_refuse_what_would_not_act() -> None:
    assert list(OPTIMIZERS) == ["random", "cem", "icem", "mppi"]
    assert PLANNERS == ("random", "cem", "icem", "mppi", "policy")
    assert OPTIONS["policy"] is PolicySettings and OPTIONS["cem"] is CEMSettings
    for bad in (1, "false", None):
        with pytest.raises(ValueError, match="explore must be true or false"):
            PolicySettings(explore=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="explore must be true or false"):
        PlannerSettings().changed(planner="policy", explore="yes")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['noise_beta'\] for planner"):
        PlannerSettings().changed(planner="policy", noise_beta=2.0)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['explore'\] for planner 'cem'"):
        PlannerSettings(planner="policy").changed(planner="cem", explore=False)
    with pytest.raises(ValueError, match="planner 'policy' takes PolicySettings, got CEMSettings"):
        PlannerSettings(planner="policy", options=CEMSettings())
    with pytest.raises(ValueError, match="planner must be one of"):
        PlannerSettings().changed(planner="pid")
    policy = PlannerSettings().changed(planner="policy", horizon=30)
    assert policy.options == PolicySettings() and policy.to_dict()["explore"] is True
    back = policy.changed(planner="cem")
    assert back.options == CEMSettings() and back.horizon == 30


def test_a_config_file_switches_to_the_policy_and_back(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    Config().save(path)  # every CEM option, which a switch to the policy leaves behind
    to_policy = Config.load(path, {"planner": {"planner": "policy", "explore": False}})
    assert to_policy.planner.options == PolicySettings(explore=False)
    to_policy.save(path)
    back = Config.load(path, {"planner": {"planner": "icem"}})  # and drops explore
    assert back.planner.planner == "icem" and "explore" not in back.planner.to_dict()


def test_a_planner_does_not_plan_for_the_policy_and_starts_afresh_after_it(
    tmp_path: Path,
) -> None:
    evaluator = RolloutEvaluator(export_cartpole(tmp_path / "cartpole.onnx"), CARTPOLE)
    planner = Planner(evaluator, FAST)
    obs = np.array([0.0, 3.0, 0.0, 0.0])
    before = planner.plan(obs).actions
    planner.configure(planner="policy")
    with pytest.raises(RuntimeError, match='planner "policy" does not plan'):
        planner.plan(obs)
    planner.configure(planner="cem")
    planner._seed(FAST.seed)
    again = planner.plan(obs).actions  # from no warm start, as the first plan was
    np.testing.assert_array_equal(again, before)
