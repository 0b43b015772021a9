"""The ``history`` control command end to end: a real service on loopback ZeroMQ sockets, real
MuJoCo bridges, model and policy files exported through the real ONNX path into the model
directory, the learner's refusal files as it writes them, and the reply read over the control
socket and checked against the protocol's HISTORY_FIELDS."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import zmq

from controller.service import MPCService, ServiceConfig
from controller.service.control import request
from controller.service.history import REJECTIONS_KEPT, VERSIONS_KEPT, History
from controller.service.model_watch import ModelWatcher, PolicyWatcher
from controller.tasks import TASKS, check_task, get_task
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.export import ModelMetadata, export_ensemble, write_with_metadata
from models.policy.export import PolicyDirectory
from models.policy.sac import SAC, SACConfig
from models.registry import ModelDirectory
from models.runtime import RuntimeConfig, read_model
from sim_bridge import protocol as p
from sim_bridge.hardware import BridgeSettings
from sim_bridge.link import BridgeLink
from sim_bridge.mujoco_bridge import MujocoBridge
from tests.controller.known_models import export_pendulum
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    LOOPBACK,
    SPEC,
    Running,
    publish_cartpole,
    reply_to,
    send_state,
    start_service,
    stop_service,
    wait_for,
)


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` after checking it has exactly the keys and kinds of HISTORY_FIELDS."""
    assert list(reply) == ["v", "ok", *p.HISTORY_FIELDS]
    for name, kind in p.HISTORY_FIELDS.items():
        if not isinstance(kind, dict):
            p._check_value(name, kind, reply[name])
            continue
        for entry in reply[name]:
            assert list(entry) == list(kind), name
            for key, k in kind.items():
                p._check_value(f"{name}.{key}", k, entry[key])
        times = [e["time"] for e in reply[name] if e["time"] is not None]
        assert times == sorted(times), f"{name} is not oldest first"
    return reply


def history(running: Running) -> dict[str, Any]:
    return checked(request(running.control, "history"))


def publish_with_holdout(models: Path, holdout: dict[str, float], train_rows: int) -> int:
    """Publish the newest version's graph again as the next version, its metadata carrying
    ``holdout`` and ``train_rows`` as a learner's export does (the graph's hash leaves the
    metadata out, so the file is as valid; exporting the exact cartpole again takes seconds);
    returns the version."""
    directory = ModelDirectory(models)
    latest = directory.latest()
    assert latest is not None
    metadata = read_model(latest.path)[1]
    written = replace(metadata, holdout=holdout, train_rows=train_rows)
    version = latest.version + 1
    write_with_metadata(onnx.load(latest.path), written.to_props(), directory.path_of(version))
    directory.mark_latest(version)
    return version


def test_episodes_appear_with_their_returns_once_a_bridge_ends_them(tmp_path: Path) -> None:
    running = start_service(tmp_path)  # no model: exploring actions, so the episodes are quick
    first = history(running)
    assert (first["task"], first["reference_return"]) == ("cartpole-swingup", 170.0)
    assert first["task_weights"] == dict(get_task("cartpole-swingup").weights)
    assert first["episodes"] == first["models"] == first["policies"] == first["rejected"] == []
    before = time.time()
    bridge = MujocoBridge("cartpole-swingup", "cart-h", seed=2,
                          settings=BridgeSettings(episode_steps=25))  # fmt: skip
    stats = bridge.run(running.endpoint, mode="lockstep", episodes=3)
    wait_for(lambda: len(history(running)["episodes"]) == 3, 10)
    episodes = history(running)["episodes"]
    assert [e["robot"] for e in episodes] == ["cart-h"] * 3
    assert [e["steps"] for e in episodes] == [25] * 3
    numbers = [e["episode"] for e in episodes]
    assert numbers == sorted(set(numbers))  # the service-wide numbers, as in the store
    assert running.service.status()["robots"]["cart-h"]["episode"] == numbers[-1]
    for episode, bridge_return in zip(episodes, stats.returns, strict=True):
        assert episode["return"] == pytest.approx(bridge_return, rel=1e-9, abs=1e-9)
        assert before <= episode["time"] <= time.time()
    stop_service(running)


def test_model_and_policy_versions_appear_as_they_go_live_with_the_model_holdout(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    publish_cartpole(models, 1)  # exported without training metrics
    running = start_service(tmp_path)
    published = time.time()
    # A NaN in the metadata (a diverged holdout) is read as not known: JSON has no NaN.
    v2 = publish_with_holdout(models, {"holdout_mse": 0.0125, "holdout_nll": math.nan}, 640)
    request(running.control, "model")  # what `tickmpc learn --announce` sends
    wait_for(lambda: len(history(running)["models"]) == 2, 30)
    PolicyDirectory(models).publish(SAC(4, 1, np.array([-1.0]), np.array([1.0]),
                                        SACConfig(seed=0)), model_version=v2, updates=0,
                                    real_rows=0, rollout_length=0)  # fmt: skip
    request(running.control, "model")
    wait_for(lambda: len(history(running)["policies"]) == 1, 30)
    # The policy is composed into model v2's rollouts: the same version again, not a new entry.
    wait_for(lambda: running.service.status()["rollout_policy_version"] == 1, 30)
    reply = history(running)
    assert [m["version"] for m in reply["models"]] == [1, v2] == [1, 2]
    old, trained = reply["models"]
    assert (old["holdout_mse"], old["holdout_nll"], old["train_rows"]) == (None, None, None)
    assert (trained["holdout_mse"], trained["holdout_nll"]) == (0.0125, None)
    assert trained["train_rows"] == 640 and trained["time"] >= published
    assert [q["version"] for q in reply["policies"]] == [1]
    assert reply["policies"][0]["time"] >= trained["time"] and reply["rejected"] == []
    stop_service(running)


def test_refusals_of_the_learner_and_of_the_service_are_listed_and_foreign_files_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    publish_cartpole(models, 1)
    running = start_service(tmp_path)
    rejected = models / "rejected"
    rejected.mkdir()
    # As the learner sets a candidate aside: the .onnx, and beside it why.
    (rejected / "rows00000600-1700000000.onnx").write_bytes(b"a rejected candidate")
    refusal = {"rows": 600, "reason": "one-step nmse 0.9 > 0.1 x 1.5", "time": 1700000000.5}
    (rejected / "rows00000600-1700000000.json").write_text(json.dumps(refusal))
    (rejected / "rows00000800-1700000100.json").write_text('{"rows": 800, "reas')  # cut short
    (rejected / "notes.json").write_text('{"hello": "world"}')  # someone else's
    (rejected / "list.json").write_text("[1, 2]")
    (models / "v000002.onnx").write_bytes(b"corrupted model file")
    ModelDirectory(models).mark_latest(2)
    wait_for(lambda: "2" in running.service.status()["rejected_models"], 10)
    PolicyDirectory(models).path_of(1).write_bytes(b"corrupted policy file")
    PolicyDirectory(models).mark_latest(1)
    wait_for(lambda: "1" in running.service.status()["rejected_policies"], 10)
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        reply = history(running)
        assert history(running)["rejected"] == reply["rejected"]  # and no file read again
    candidate, model, policy = reply["rejected"]  # by time: the candidate's is years ago
    assert candidate == {"what": "candidate", "version": None, "reason": refusal["reason"],
                         "time": refusal["time"]}  # fmt: skip
    status = running.service.status()
    assert (model["what"], model["version"]) == ("model", 2)
    assert model["reason"] == status["rejected_models"]["2"][:300]
    assert (policy["what"], policy["version"]) == ("policy", 1)
    assert policy["reason"] == status["rejected_policies"]["1"][:300]
    assert model["time"] is not None and model["time"] <= policy["time"] <= time.time()
    skipped = [r.getMessage() for r in caplog.records if "not a refusal" in r.getMessage()]
    assert len(skipped) == 3 and all(".json" in m for m in skipped)  # each once
    assert [m["version"] for m in reply["models"]] == [1] and reply["policies"] == []
    stop_service(running)


def test_status_gives_each_robots_period_and_the_budget_a_realtime_tick_gets(
    served: Running,
) -> None:
    realtime = BridgeLink(served.endpoint, SPEC, "realtime")
    realtime.connect(10.0)
    lockstep = BridgeLink(served.endpoint, replace(SPEC, robot="slow"), "lockstep")
    lockstep.connect(10.0)
    robots = request(served.control, "status")["robots"]
    assert robots["probe"]["mode"] == "realtime" and robots["slow"]["mode"] == "lockstep"
    assert robots["probe"]["period_ms"] == robots["slow"]["period_ms"] == 40.0
    assert robots["probe"]["budget_ms"] == 40.0 - FAST.margin_ms == 35.0
    assert robots["slow"]["budget_ms"] is None
    request(served.control, "set", changes={"margin_ms": 12.5}, robot="probe")
    assert request(served.control, "status")["robots"]["probe"]["budget_ms"] == 27.5
    request(served.control, "set", changes={"budget_ms": 20.0})  # fixed: the margin aside
    robots = request(served.control, "status")["robots"]
    assert (robots["probe"]["budget_ms"], robots["slow"]["budget_ms"]) == (20.0, None)
    send_state(realtime, 0, np.zeros(4))  # and the robot is served with it
    assert reply_to(realtime).type == p.ACTION
    realtime.close()
    lockstep.close()


def test_history_refuses_a_field_it_does_not_take(served: Running) -> None:
    with pytest.raises(p.ProtocolError, match="bad_field"):
        p.control_request("history", robot="probe")  # the client refuses it first
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(served.control)
        for extra in ({"robot": "probe"}, {"since": 0}):
            sock.send(json.dumps({"v": p.PROTOCOL_VERSION, "cmd": "history", **extra}).encode())
            assert sock.poll(10_000)
            with pytest.raises(p.ProtocolError) as refused:
                p.parse_control_reply(sock.recv())
            assert refused.value.code == "bad_field" and "unknown" in refused.value.reason
    assert history(served)["task"] == "cartpole-swingup"  # and it goes on answering


def test_a_service_without_a_task_yet_answers_history(tmp_path: Path) -> None:
    service = MPCService(None, ServiceConfig(endpoint=LOOPBACK, control=LOOPBACK,
                                               telemetry=LOOPBACK, models=tmp_path / "models"),
                         FAST)  # fmt: skip
    service.start()
    reply = service.commands.answer(p.control_request("history"))
    service.close()
    answered = checked(p.parse_control_reply(reply))
    assert (answered["task"], answered["reference_return"]) == ("auto (no robot yet)", None)


def test_the_reference_return_is_the_tasks() -> None:
    assert get_task("cartpole-swingup").reference_return == 170.0
    assert [t.name for t in TASKS.values() if t.reference_return is not None] == [
        "cartpole-swingup"
    ]
    assert get_task("Hopper-v5").reference_return is None  # a gymnasium task: none known
    task = get_task("pendulum")
    bads: tuple[Any, ...] = (math.nan, math.inf, "170", True)
    for bad in bads:
        with pytest.raises(ValueError, match="reference_return must be a finite number"):
            check_task(replace(task, reference_return=bad), "task")


def test_the_most_a_reply_holds_stays_well_under_a_megabyte(tmp_path: Path) -> None:
    """The worst case: the longest robot ids and reasons of characters JSON escapes to twelve
    bytes each, every list full."""
    rejected = tmp_path / "models" / "rejected"
    rejected.mkdir(parents=True)
    wide = "\U0001f600"  # four bytes of UTF-8, "\ud83d\ude00" in JSON
    for k in range(REJECTIONS_KEPT + 20):
        refusal = {"rows": k, "reason": wide * 2000, "time": 1.7e9 + k}
        (rejected / f"rows{k:08d}-{k}.json").write_text(json.dumps(refusal))
    kept = History(tmp_path / "models")
    longest = -1.2345678901234567e-300
    metadata = ModelMetadata(format_version=1, config=EnsembleConfig(obs_dim=4, act_dim=1),
                             member_batched=True, train_rows=2**62, created_unix=0.0,
                             holdout={"holdout_mse": longest, "holdout_nll": longest},
                             code_sha256="", graph_sha256="", extra={})  # fmt: skip
    for k in range(3000):
        kept.episode_ended(wide * (p.MAX_ROBOT_ID_BYTES // 4), 2**40 + k, -1234.56789 / 7, 10**6)
    for k in range(VERSIONS_KEPT + 500):
        kept.model_live(10**6 + k, metadata)
        kept.policy_live(10**6 + k)
    reply = p.control_reply(**kept.reply("x" * 64, longest, {}, {}))
    assert len(reply) < 800_000, len(reply)
    answered = checked(json.loads(reply))
    assert len(answered["episodes"]) == 1000 and answered["episodes"][-1]["episode"] == 2**40 + 2999
    assert len(answered["models"]) == len(answered["policies"]) == VERSIONS_KEPT
    assert len(answered["rejected"]) == REJECTIONS_KEPT
    assert answered["rejected"][-1]["time"] == 1.7e9 + REJECTIONS_KEPT + 19


def test_a_reply_is_encoded_again_only_when_something_was_added(tmp_path: Path) -> None:
    kept = History(tmp_path / "models")
    first = kept.encoded("cartpole-swingup", 170.0, {"tip": 1.0}, {})
    assert kept.encoded("cartpole-swingup", 170.0, {"tip": 1.0}, {}) is first  # the same bytes
    kept.episode_ended("sim-0", 1, 12.5, 200)
    second = kept.encoded("cartpole-swingup", 170.0, {"tip": 1.0}, {})
    assert second is not first and json.loads(second)["episodes"][0]["return"] == 12.5
    rejected = tmp_path / "models" / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "rows00000400-1.json").write_text('{"rows": 400, "reason": "worse", "time": 1.0}')
    third = json.loads(kept.encoded("cartpole-swingup", 170.0, {"tip": 1.0}, {}))
    assert third["rejected"] == [{"what": "candidate", "version": None, "reason": "worse",
                                  "time": 1.0}]  # fmt: skip


def test_a_holdout_that_is_not_an_object_is_shown_as_none() -> None:
    kept = History(None)
    metadata = ModelMetadata(format_version=1, config=EnsembleConfig(obs_dim=4, act_dim=1),
                             member_batched=True, train_rows=10, created_unix=0.0,
                             holdout=[1, 2],  # type: ignore[arg-type]
                             code_sha256="", graph_sha256="", extra={})  # fmt: skip
    kept.model_live(3, metadata)
    assert kept.models[-1]["holdout_mse"] is None and kept.models[-1]["train_rows"] == 10


def test_a_model_refused_alone_and_with_the_policy_is_refused_for_its_own_fault(
    tmp_path: Path,
) -> None:
    """The watcher tries a new model with the policy, then alone to see whose fault it was; a
    model that fails both ways is refused with its own reason (and the other where it differs),
    the policy is not blamed, and the history lists the reason."""
    models = tmp_path / "models"
    publish_cartpole(models, 1)
    PolicyDirectory(models).publish(
        SAC(4, 1, np.array([-1.0]), np.array([1.0]), SACConfig(seed=0)),
        model_version=1, updates=0, real_rows=0, rollout_length=0,
    )  # fmt: skip
    policies = PolicyWatcher(models, CARTPOLE)
    policies.load_now()
    watcher = ModelWatcher(models, CARTPOLE, RuntimeConfig(), policies=policies)
    watcher.load_now()
    taken = watcher.take()
    assert taken is not None and taken[0] == 1 and taken[1].policy_version == 1
    export_pendulum(ModelDirectory(models).path_of(2))  # 3 observations: not the cartpole's 4
    ModelDirectory(models).mark_latest(2)
    watcher.load_now()
    assert watcher.take() is None
    reason = watcher.rejected[2]
    assert reason.endswith("model dims (obs 3, act 1) do not match task cartpole-swingup "
                           "(obs 4, act 1)"), reason  # fmt: skip
    assert "with policy" not in reason  # the same fault both ways is said once
    assert watcher.policy_errors == {}
    entries = History(models)._reply("cartpole-swingup", None, {}, {"model": watcher}, [])
    assert entries["rejected"][0]["reason"] == reason[:300]


def test_a_model_that_fails_alone_is_not_refused_for_the_policys_fault(tmp_path: Path) -> None:
    """The bug this guards: the policy file went bad after it was accepted, and the new model
    predicts non-finite returns. Tried with the policy, the model fails on the policy's file;
    alone, on its own outputs. The reason kept both, the model's own first (it used to keep
    only the first, which blamed the policy)."""
    models = tmp_path / "models"
    policies = PolicyDirectory(models)
    policies.publish(SAC(4, 1, np.array([-1.0]), np.array([1.0]), SACConfig(seed=0)),
                     model_version=1, updates=0, real_rows=0, rollout_length=0)  # fmt: skip
    policy_watcher = PolicyWatcher(models, CARTPOLE)
    policy_watcher.load_now()
    assert policy_watcher.accepted is not None
    policies.path_of(1).write_bytes(b"overwritten after it was accepted")
    broken = GaussianEnsemble(EnsembleConfig(obs_dim=4, act_dim=1, members=2, hidden_layers=1,
                                             hidden_units=8))  # fmt: skip
    with torch.no_grad():
        for parameter in broken.parameters():
            parameter.fill_(math.nan)
    directory = ModelDirectory(models)
    export_ensemble(broken, directory.path_of(1), member_batched=True)
    directory.mark_latest(1)
    watcher = ModelWatcher(models, CARTPOLE, RuntimeConfig(), policies=policy_watcher)
    watcher.load_now()
    assert watcher.take() is None
    own, sep, composed = watcher.rejected[1].partition("; with policy p1: ")
    assert own == "it predicts non-finite returns from the zero state"
    assert sep and "p000001.onnx: not a valid ONNX file" in composed
    assert watcher.policy_errors == {}  # the policy is not blamed for the model's fault
