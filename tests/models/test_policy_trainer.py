"""Tests for models.policy.trainer: the policy trainer's debt of updates, its chunks, its
publishing and resuming, for SAC and BPTT, through the exact 1-D integrator of
test_policy_learner (x' = x + 0.1 a, reward -x'^2).

Shapes: N rows, S = 1 observation, A = 1 action.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.policy.bptt import BPTTConfig
from models.policy.export import PolicyDirectory, PolicyRuntime, read_policy
from models.policy.learner import PolicyLearnerConfig
from models.policy.sac import SACConfig
from models.policy.trainer import PolicyTrainer, PolicyTrainerConfig
from tests.models.test_policy_learner import HIGH, LOW, Integrator, _real, _reward

SMALL = PolicyTrainerConfig(
    optimizer="sac", updates_per_step=3, rollout_every=10, chunk_updates=25,
    publish_every_s=3600.0,
    mbpo=PolicyLearnerConfig(rollout_batch=40, sac=SACConfig(hidden_units=32, batch_size=16,
                                                             seed=1), seed=1),
    bptt=BPTTConfig(hidden_units=32, batch=16, seed=1),
)  # fmt: skip


def _trainer(root: Path, config: PolicyTrainerConfig = SMALL) -> PolicyTrainer:
    return PolicyTrainer(root, config, 1, 1, LOW, HIGH, reward_fn=_reward,
                         metrics=root / "policy.jsonl")  # fmt: skip


def _drain(trainer: PolicyTrainer, rows: int) -> int:
    """Work until nothing is left; returns the chunks of work done."""
    chunks = 0
    while trainer.work(_real(rows, reward=None)):
        chunks += 1
        assert chunks < 1000
    return chunks


def test_the_trainer_pays_g_updates_per_row_in_chunks_and_publishes_when_caught_up(
    tmp_path: Path,
) -> None:
    trainer = _trainer(tmp_path)
    assert not trainer.work(_real(30, reward=None))  # no model yet: nothing to do
    trainer.set_model(Integrator(), 1)
    chunks = _drain(trainer, 30)
    assert trainer.updates == 90 and chunks == 4  # 3 x 30 updates in chunks of 25, then done
    assert PolicyDirectory(tmp_path).latest().version == 1  # one publish, once caught up
    (line,) = [json.loads(x) for x in (tmp_path / "policy.jsonl").read_text().splitlines()]
    assert line["real_rows"] == 30 and line["owed"] == 0 and line["utd"] == pytest.approx(3.0)
    _, meta = read_policy(tmp_path / "p000001.onnx")
    assert (meta.optimizer, meta.model_version, meta.updates, meta.real_rows) == ("sac", 1, 90, 30)

    features = trainer.algorithm.agent.actor.features
    assert float(features.mean[0]) == pytest.approx(float(_real(30).obs.mean()), abs=1e-6)
    trainer.set_model(Integrator(), 2)  # more rows and a new model: it owes 3 x 10 more
    _drain(trainer, 40)
    assert trainer.updates == 120 and PolicyDirectory(tmp_path).latest().version == 2
    # The observation normalization follows the rows, refitted at the new model version.
    assert float(features.mean[0]) == pytest.approx(float(_real(40).obs.mean()), abs=1e-6)
    assert read_policy(tmp_path / "p000002.onnx")[1].model_version == 2


def test_a_restarted_trainer_resumes_the_published_policy(tmp_path: Path) -> None:
    first = _trainer(tmp_path)
    first.set_model(Integrator(), 1)
    _drain(first, 20)
    obs = np.linspace(-1, 1, 7, dtype=np.float32)[:, None]
    before = PolicyRuntime(tmp_path / "p000001.onnx").act(obs)

    again = _trainer(tmp_path)
    assert (again.updates, again.version) == (60, 1)  # it owes nothing for the same rows
    again.set_model(Integrator(), 1)
    assert not again.work(_real(20, reward=None))
    np.testing.assert_allclose(again.algorithm.agent.act(obs, True), before, atol=1e-5)


def test_a_trainer_of_another_optimizer_starts_fresh(tmp_path: Path) -> None:
    sac = _trainer(tmp_path)
    sac.set_model(Integrator(), 1)
    _drain(sac, 10)
    bptt = _trainer(tmp_path, replace(SMALL, optimizer="bptt"))
    assert bptt.updates == 0 and bptt.version == 0


def test_bptt_trains_through_the_model_and_exports_a_zero_value(tmp_path: Path) -> None:
    config = PolicyTrainerConfig(optimizer="bptt", updates_per_step=2, chunk_updates=50,
                                 publish_every_s=3600.0,
                                 bptt=BPTTConfig(horizon=5, lr=1e-2, hidden_units=32, batch=32,
                                                 seed=2))  # fmt: skip
    trainer = _trainer(tmp_path, config)
    trainer.set_model(Integrator(), 3)
    _drain(trainer, 100)  # 200 updates
    runtime = PolicyRuntime(tmp_path / "p000001.onnx")
    assert runtime.metadata.optimizer == "bptt" and runtime.metadata.model_version == 3
    obs = np.array([[-0.8], [0.8]], np.float32)
    action, _, value = runtime.predict(obs)
    # Reward -x'^2 with x' = x + 0.1 a: it learned to push toward 0 (measured: a = +0.98, -0.98).
    assert action[0, 0] > 0.5 and action[1, 0] < -0.5
    np.testing.assert_array_equal(value, 0.0)
    line = json.loads((tmp_path / "policy.jsonl").read_text().splitlines()[-1])
    assert line["updates_total"] == 200 and np.isfinite(line["grad_norm"])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        PolicyTrainerConfig(optimizer="ppo")
    with pytest.raises(ValueError, match="rollout_every"):
        PolicyTrainerConfig(rollout_every=0)
    with pytest.raises(ValueError, match=r"updates_per_step must be an integer in \[1, "):
        PolicyTrainerConfig(updates_per_step=0)
    with pytest.raises(ValueError, match=r"real_ratio must be a number in \[0.0, 1.0\]"):
        PolicyTrainerConfig(mbpo=PolicyLearnerConfig(real_ratio=1.5))
    with pytest.raises(ValueError, match="horizon"):
        PolicyTrainerConfig(bptt=BPTTConfig(horizon=0))
    with pytest.raises(ValueError, match="no policy to train"):
        PolicyTrainer(Path("."), PolicyTrainerConfig(), 1, 1, LOW, HIGH)
