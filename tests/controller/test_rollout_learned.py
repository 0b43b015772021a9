"""A learned reward and a learned termination in the rollout graph, against a torch reference
that walks each candidate one step at a time through a known model whose members differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.graph import ModelGraph, build_rollout_graph
from controller.rollout.settings import RolloutSettings
from controller.tasks import TASKS, get_task
from controller.tasks.base import Task
from controller.tasks.export import export_reward, reward_graph, task_reward_graph
from models.ensemble import EnsembleConfig
from models.export import ModelFileError, export_ensemble
from tests.controller.known_models import EXACT_LOGVAR, export_pendulum, rotating_routing

E, S = 5, 4
MemberOf = Callable[[int, int], int | None]
"""(candidate i, step t) -> the member it follows, or None: the members' mean (expectation)."""


class DistinctMembers(nn.Module):
    """An exact "ensemble" of E different linear systems with S=4, A=1, and per member a
    reward and a state-dependent probability that the step ends the episode.

    obs [E, B, 4], act [E, B, 1] -> next_obs_mean, next_obs_logvar [E, B, 4], reward_mean,
    reward_logvar, done_prob [E, B, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = EnsembleConfig(
            obs_dim=S, act_dim=1, members=E, predict_reward=True, predict_done=True
        )
        self.k: torch.Tensor
        self.register_buffer("k", torch.arange(E, dtype=torch.float32).view(E, 1, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = self.k
        mean = obs * (0.95 - 0.03 * k) + act * (0.1 + 0.04 * k) + 0.01 * k
        reward = -(obs**2).sum(-1, keepdim=True) * (1.0 + 0.3 * k) + 0.2 * k * act
        done = torch.sigmoid(6.0 * (obs[..., :1] - 0.25 + 0.05 * k))
        return mean, torch.full_like(mean, EXACT_LOGVAR), reward, torch.zeros_like(reward), done


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("learned") / "members.onnx"
    export_ensemble(DistinctMembers(), path, member_batched=True)
    return path


def _reference(
    task: Task,
    obs: np.ndarray,
    actions: np.ndarray,
    member_of: MemberOf,
    discount: float = 1.0,
    pessimism: float = 0.0,
) -> np.ndarray:
    """Each candidate's return without sampling, one torch step at a time: the task's reward
    and termination where it has them, else the followed member's prediction (the members'
    mean for expectation, less ``pessimism`` times the std of their reward means)."""
    model = DistinctMembers()
    n, h, _ = actions.shape
    returns = np.zeros(n)
    with torch.no_grad():
        for i in range(n):
            x = torch.from_numpy(obs).float()
            alive = 1.0
            for t in range(h):
                a = torch.from_numpy(actions[i, t]).float()
                means, _, rewards, _, dones = (v[:, 0] for v in model(x.expand(E, 1, S), a))
                e = member_of(i, t)

                def follow(v: torch.Tensor, e: int | None = e) -> torch.Tensor:
                    return v.mean(0) if e is None else v[e]

                nxt = follow(means)
                if task.reward_learned:
                    r = float(follow(rewards)) - pessimism * float(rewards.std(unbiased=False))
                else:
                    r = float(task.reward(x, a, nxt))
                returns[i] += discount**t * alive * r
                if task.terminated is not None:
                    alive *= 1.0 - float(task.terminated(nxt))
                elif task.termination_learned:
                    alive *= 1.0 - float(follow(dones))
                x = nxt
    return returns


def _following(member: int | None) -> MemberOf:
    return lambda i, t: member


def _candidates(n: int, h: int, seed: int, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-high, high, (n, h, 1)).astype(np.float32)


def _evaluate(
    evaluator: RolloutEvaluator, obs: np.ndarray, actions: np.ndarray, **settings: object
) -> np.ndarray:
    rollout = RolloutSettings(sample=False, **settings)  # type: ignore[arg-type]
    return evaluator.evaluate(obs, actions, rollout, np.random.default_rng(0))


def _assert_one_member_each(got: np.ndarray, per_member: list[np.ndarray]) -> None:
    """TS-infinity: each candidate's return is that of one member's whole rollout (its own
    candidate's, which tells a reward read in the wrong row order), and the members vary."""
    table = np.stack(per_member, axis=1)  # [N, E]
    closest = np.abs(table - got[:, None]).argmin(axis=1)
    np.testing.assert_allclose(got, table[np.arange(len(got)), closest], rtol=1e-4, atol=1e-4)
    assert len(set(closest)) >= 3, "the candidates must follow different members"
    assert np.ptp(table, axis=1).min() > 1e-2, "members must differ for the check to mean much"


@pytest.mark.parametrize("learn_termination", [False, True])
def test_routed_learned_reward_is_the_rows_own_members(
    model_file: Path, learn_termination: bool
) -> None:
    """Direct session run with a routing that changes every step (as TS1 does): at step t
    particle i runs through member (i + t) % E, and its reward (and done_prob) is that
    member's. Without a learned termination the model's done_prob is not used."""
    task = get_task("cartpole-swingup").learned(reward=True, termination=learn_termination)
    evaluator = RolloutEvaluator(model_file, task)
    n, h = 10, 6
    obs = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
    actions = _candidates(n, h, seed=1)

    member, gather, scatter = rotating_routing(n, h, E)
    feeds = {
        "obs": np.tile(obs, (n, 1)),
        "actions": actions,
        "particle_candidate": np.arange(n, dtype=np.int64),
        "noise": np.zeros((h, n, S), np.float32),
        "discount": np.array(0.9, np.float32),
        "gather_idx": gather,
        "scatter_idx": scatter,
    }
    session = evaluator.sessions["routed", False][0]
    assert "weights" not in {i.name for i in session.get_inputs()}
    (got,) = session.run(["returns"], feeds)
    want = _reference(task, obs, actions, member, discount=0.9)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if learn_termination:
        endless = get_task("cartpole-swingup").learned(reward=True)
        never_ends = _reference(endless, obs, actions, member, discount=0.9)
        assert np.abs(want - never_ends).min() > 1e-2, "done_prob must change every return"


@pytest.mark.parametrize("device_random", [False, True])
def test_tsinf_learned_reward_follows_one_member(model_file: Path, device_random: bool) -> None:
    task = get_task("cartpole-swingup").learned(reward=True)
    evaluator = RolloutEvaluator(model_file, task, device_random=device_random)
    obs = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
    actions = _candidates(23, 8, seed=2)  # padded to 25 rows in routed mode
    got = _evaluate(evaluator, obs, actions, propagation="tsinf", discount=0.95)
    assert evaluator.mode(RolloutSettings(propagation="tsinf")) == "routed"
    per_member = [_reference(task, obs, actions, _following(e), discount=0.95) for e in range(E)]
    _assert_one_member_each(got, per_member)


@pytest.mark.parametrize(("pessimism", "device_random"), [(0.0, False), (1.5, False), (1.5, True)])
def test_reward_pessimism_subtracts_the_members_spread(
    model_file: Path, pessimism: float, device_random: bool
) -> None:
    """Expectation: each step's reward is the mean of the members' reward means less k times
    their std."""
    task = get_task("cartpole-swingup").learned(reward=True)
    evaluator = RolloutEvaluator(model_file, task, device_random=device_random)
    obs = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
    actions = _candidates(9, 7, seed=3)
    settings = {"propagation": "expectation", "discount": 0.9, "reward_pessimism": pessimism}
    got = _evaluate(evaluator, obs, actions, **settings)
    want = _reference(task, obs, actions, _following(None), discount=0.9, pessimism=pessimism)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if pessimism:
        neutral = _reference(task, obs, actions, _following(None), discount=0.9)
        assert (want < neutral - 0.1).all()


def test_reward_pessimism_mixes_only_a_learned_reward(model_file: Path) -> None:
    """k > 0 needs every member on every row (mixed mode, E x the rows) for a learned reward;
    a task that computes its reward ignores both k and the model's reward."""
    learned = RolloutEvaluator(model_file, get_task("cartpole-swingup").learned(reward=True))
    pessimistic = RolloutSettings(propagation="ts1", reward_pessimism=1.0)
    assert learned.mode(pessimistic) == "mixed"
    assert learned.rows(10, 4, pessimistic) == E * learned.rows(10, 4, RolloutSettings())
    own = RolloutEvaluator(model_file, get_task("cartpole-swingup"))
    assert own.mode(pessimistic) == "routed"
    obs = np.array([0.0, 3.0, 0.0, 0.0], np.float32)
    actions = _candidates(6, 5, seed=4)
    task = own.task
    for settings in ({"propagation": "tsinf"}, {"propagation": "expectation"}):
        plain = _evaluate(own, obs, actions, **settings)
        np.testing.assert_allclose(
            _evaluate(own, obs, actions, reward_pessimism=5.0, **settings), plain
        )
    want = _reference(task, obs, actions, _following(None))
    np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-4)


def test_learned_termination_weights_each_reward_by_survival(model_file: Path) -> None:
    """The task's reward, the model's done_prob: reward t counts times prod_{tau<t}
    (1 - p_tau), with p the members' mean (expectation) or the followed member's."""
    task = get_task("cartpole-swingup").learned(termination=True)
    evaluator = RolloutEvaluator(model_file, task)
    obs = np.array([0.2, 3.0, 0.1, 0.0], np.float32)
    actions = _candidates(12, 8, seed=5)
    got = _evaluate(evaluator, obs, actions, propagation="expectation")
    want = _reference(task, obs, actions, _following(None))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    never_ends = _reference(get_task("cartpole-swingup"), obs, actions, _following(None))
    assert (np.abs(want - never_ends) > 0.05).all(), "survival must weigh on every return"
    tsinf = _evaluate(evaluator, obs, actions, propagation="tsinf")
    per_member = [_reference(task, obs, actions, _following(e)) for e in range(E)]
    _assert_one_member_each(tsinf, per_member)


def test_task_termination_with_a_learned_reward(model_file: Path) -> None:
    """inverted-pendulum ends where |theta| > 0.2: its own termination, not the model's
    done_prob, stops the learned reward from counting."""
    task = get_task("inverted-pendulum").learned(reward=True)
    assert task.terminated is not None and not task.termination_learned
    evaluator = RolloutEvaluator(model_file, task)
    obs = np.array([0.0, 0.15, 0.0, 0.0], np.float32)
    actions = _candidates(16, 10, seed=6, high=0.6)
    got = _evaluate(evaluator, obs, actions, propagation="expectation", discount=0.95)
    want = _reference(task, obs, actions, _following(None), discount=0.95)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    never = replace(task, terminated=None)
    endless = _reference(never, obs, actions, _following(None), discount=0.95)
    ended = np.abs(want - endless) > 1e-3
    assert 0 < ended.sum() < len(ended), "some, not all, rollouts must end"
    tsinf = _evaluate(evaluator, obs, actions, propagation="tsinf", discount=0.95)
    per_member = [_reference(task, obs, actions, _following(e), discount=0.95) for e in range(E)]
    _assert_one_member_each(tsinf, per_member)


def test_models_that_cannot_serve_the_task_are_refused(tmp_path: Path) -> None:
    path = export_pendulum(tmp_path / "p.onnx")  # predicts neither reward nor done
    pendulum = get_task("pendulum")
    with pytest.raises(ModelFileError, match=r"p\.onnx: task pendulum has a learned reward, "
                       "but this model does not predict the reward"):  # fmt: skip
        RolloutEvaluator(path, pendulum.learned(reward=True))
    with pytest.raises(ModelFileError, match=r"p\.onnx: task pendulum has a learned "
                       "termination, but this model does not predict done_prob"):  # fmt: skip
        RolloutEvaluator(path, pendulum.learned(termination=True))
    for bad in (-0.1, 100.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"reward_pessimism must be a number in \[0.0, 100"):
            RolloutSettings(reward_pessimism=bad)
    graph = onnx.load(str(path))
    model = ModelGraph(graph, E, 3, 1, True)
    with pytest.raises(ValueError, match="no reward to plan on"):
        build_rollout_graph(model, None, "routed")
    claims = ModelGraph(graph, E, 3, 1, True, predicts_reward=True)
    with pytest.raises(ValueError, match="the model graph has no reward_mean output"):
        build_rollout_graph(claims, None, "mixed")


def test_reward_graph_holds_what_the_task_computes() -> None:
    """Inputs and outputs follow the task; each Task object is exported once."""
    cases = {
        ("cartpole-swingup", False, False): (4, ["reward"]),
        ("inverted-pendulum", False, False): (4, ["reward", "done"]),
        ("inverted-pendulum", True, False): (3, ["done"]),
        ("inverted-pendulum", False, True): (4, ["reward"]),
    }
    for (name, reward, termination), (inputs, outputs) in cases.items():
        graph = export_reward(get_task(name).learned(reward, termination))
        assert graph is not None
        assert len(graph.graph.input) == inputs
        assert [o.name for o in graph.graph.output] == outputs
    assert export_reward(get_task("cartpole-swingup").learned(reward=True)) is None
    registered = TASKS["pendulum"]
    assert task_reward_graph(registered) is reward_graph("pendulum")
    copy = registered.learned(termination=True)  # a new object equal in content
    first = task_reward_graph(copy)
    assert first is not None and task_reward_graph(copy) is first
    assert task_reward_graph(registered.learned(termination=True)) is not first
