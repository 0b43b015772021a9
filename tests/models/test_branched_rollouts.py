"""Tests for models.policy.rollouts: branched rollouts through a hand-written two-member ensemble
whose dynamics are known, the model buffer, and the rollout-length schedule.

Shapes: N start states, M produced transitions, S = 2 observation, A = 1 action, E = 2 members.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.ensemble import EnsembleConfig
from models.policy.rollouts import (
    ModelBuffer,
    Rollouts,
    RolloutSchedule,
    branched_rollouts,
    initial_states,
)
from models.transitions import Transitions

S, A = 2, 1
REWARD_OF_MEMBER = (10.0, 20.0)


class LinearMembers(nn.Module):
    """Member e: next_obs = scale[e] * obs + offset[e] + act, log-variance -60 (std ~1e-13, so
    the Gaussian sample is the mean); reward mean REWARD_OF_MEMBER[e]; done_prob constant."""

    def __init__(
        self,
        scale: tuple[float, float],
        offset: tuple[tuple[float, float], tuple[float, float]],
        *,
        predict_reward: bool = False,
        done_prob: float | None = None,
    ) -> None:
        super().__init__()
        self.config = EnsembleConfig(
            obs_dim=S,
            act_dim=A,
            members=2,
            predict_reward=predict_reward,
            predict_done=done_prob is not None,
        )
        self.scale = torch.tensor(scale).view(2, 1, 1)
        self.offset = torch.tensor(offset).view(2, 1, S)
        self.done_prob = done_prob
        self.modes_seen: list[bool] = []

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, ...]:
        self.modes_seen.append(self.training)
        b = len(obs)
        mean = self.scale * obs + self.offset + act
        out: tuple[Tensor, ...] = (mean, torch.full((2, b, S), -60.0))
        if self.config.predict_reward:
            reward = torch.tensor(REWARD_OF_MEMBER).view(2, 1, 1).expand(2, b, 1)
            out += (reward, torch.full((2, b, 1), -60.0))
        if self.done_prob is not None:
            out += (torch.full((2, b, 1), self.done_prob),)
        return out

    def member_outputs(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Every member's next state [E, M, S], computed apart from the rollout code."""
        return self.scale.numpy() * obs[None] + self.offset.numpy() + act[None]


def _policy(obs: Tensor) -> Tensor:
    return -0.1 * obs[:, :1]


def _start(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, S, generator=torch.Generator().manual_seed(seed))


def _members_drawn(model: LinearMembers, r: Rollouts) -> np.ndarray:
    """[M] the member whose dynamics each produced row follows; asserts exactly one fits."""
    err = np.abs(model.member_outputs(r.obs, r.act) - r.next_obs[None]).max(axis=2)
    fits = err < 1e-5
    assert (fits.sum(axis=0) == 1).all(), "every row must follow exactly one member"
    return np.argmax(fits, axis=0)


def _sum_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs.sum(dim=1) - act[:, 0] ** 2 + 0.5 * obs[:, 0]


# --- branched_rollouts -----------------------------------------------------------------------


def test_rollouts_follow_the_dynamics_of_the_member_drawn_per_row_and_step() -> None:
    # The members' next states differ by 0.5 * obs + 2.5 > 0, so a row fits one member only.
    model = LinearMembers((1.0, 0.5), ((1.0, 1.0), (-1.0, -1.5)))
    model.train()
    n, k = 200, 3
    r = branched_rollouts(
        model, _start(n), _policy, k, torch.Generator().manual_seed(1), _sum_reward
    )

    assert len(r) == n * k and not r.done.any()
    members = _members_drawn(model, r)
    for t in range(k):
        share = members[r.step == t].mean()
        assert 0.35 < share < 0.65, f"step {t}: member 1 drawn for {share:.2f} of the rows"
    # A row's member changes between steps: not one draw per row for the whole rollout.
    by_row = members.reshape(k, n)
    assert (by_row[0] != by_row[1]).any()
    # The rows chain: each step starts where the same row's previous step ended.
    for t in range(1, k):
        prev, cur = r[r.step == t - 1], r[r.step == t]
        np.testing.assert_array_equal(prev.start, cur.start)
        np.testing.assert_array_equal(prev.next_obs, cur.obs)
    np.testing.assert_allclose(r.obs[:n], _start(n).numpy())
    np.testing.assert_allclose(r.act, _policy(torch.from_numpy(r.obs)).numpy())
    # Eval mode inside, the caller's mode restored after; the same seed gives the same rows.
    assert model.modes_seen == [False] * k and model.training
    again = branched_rollouts(
        model, _start(n), _policy, k, torch.Generator().manual_seed(1), _sum_reward
    )
    np.testing.assert_array_equal(again.next_obs, r.next_obs)


def test_the_sampled_next_state_has_the_members_spread() -> None:
    class Noisy(LinearMembers):
        def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, ...]:
            mean, _ = super().forward(obs, act)
            return mean, torch.full_like(mean, float(np.log(0.25)))  # std 0.5

    model = Noisy((1.0, 1.0), ((0.0, 0.0), (0.0, 0.0)))
    r = branched_rollouts(
        model, torch.zeros(4000, S), _policy, 1, torch.Generator().manual_seed(0), _sum_reward
    )
    assert abs(r.next_obs.mean()) < 0.03
    assert abs(r.next_obs.std() - 0.5) < 0.02


def test_rollouts_stop_at_the_first_terminal_transition() -> None:
    # Both members add 1 to x (they differ only in the second coordinate), so each row's
    # length is known without the draws: the first step whose x exceeds the threshold.
    model = LinearMembers((1.0, 1.0), ((1.0, 0.0), (1.0, 5.0)))
    threshold, k = 4.5, 6
    x0 = np.array([0.0, 0.2, 1.4, 2.6, 3.6, 4.0, 4.9, -3.0, -0.9], dtype=np.float32)
    start = torch.from_numpy(np.stack([x0, np.zeros_like(x0)], axis=1))

    def zero_policy(obs: Tensor) -> Tensor:
        return torch.zeros(len(obs), A)

    def done_fn(next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] > threshold

    r = branched_rollouts(
        model, start, zero_policy, k, torch.Generator().manual_seed(0), _sum_reward, done_fn
    )

    def expected_length(x: float) -> int:
        for t in range(k):
            x += 1.0
            if x > threshold:
                return t + 1
        return k

    lengths = [expected_length(float(x)) for x in x0]
    assert len(r) == sum(lengths)
    for i, length in enumerate(lengths):
        row = r[r.start == i]
        np.testing.assert_array_equal(row.step, np.arange(length))
        ended = row.next_obs[:, 0] > threshold
        np.testing.assert_array_equal(row.done, ended)
        assert not row.done[:-1].any(), f"row {i} continues after its terminal transition"
        assert row.done[-1] == (length < k or ended[-1])


@pytest.mark.parametrize(("prob", "per_row"), [(1.0, 1), (0.0, 5)])
def test_the_learned_done_probability_ends_rows(prob: float, per_row: int) -> None:
    model = LinearMembers((1.0, 0.5), ((1.0, 1.0), (-1.0, -1.5)), done_prob=prob)
    n = 50
    r = branched_rollouts(
        model, _start(n), _policy, 5, torch.Generator().manual_seed(0), _sum_reward
    )
    assert len(r) == n * per_row
    assert r.done.all() if prob == 1.0 else not r.done.any()
    np.testing.assert_array_equal(np.bincount(r.start, minlength=n), np.full(n, per_row))


def test_a_half_done_probability_ends_about_half_the_rows_each_step() -> None:
    model = LinearMembers((1.0, 0.5), ((1.0, 1.0), (-1.0, -1.5)), done_prob=0.5)
    n = 2000
    r = branched_rollouts(
        model, _start(n), _policy, 2, torch.Generator().manual_seed(0), _sum_reward
    )
    first = r[r.step == 0]
    assert abs(first.done.mean() - 0.5) < 0.05
    np.testing.assert_array_equal(np.sort(r[r.step == 1].start), np.flatnonzero(~first.done))


def test_the_reward_comes_from_the_reward_fn_or_the_drawn_members_mean() -> None:
    model = LinearMembers((1.0, 0.5), ((1.0, 1.0), (-1.0, -1.5)), predict_reward=True)
    n, k = 100, 3
    given = branched_rollouts(
        model, _start(n), _policy, k, torch.Generator().manual_seed(0), _sum_reward
    )
    expected = _sum_reward(*(torch.from_numpy(a) for a in (given.obs, given.act, given.next_obs)))
    np.testing.assert_allclose(given.reward, expected.numpy(), rtol=1e-6)

    learned = branched_rollouts(model, _start(n), _policy, k, torch.Generator().manual_seed(0))
    members = _members_drawn(model, learned)
    assert set(members) == {0, 1}
    np.testing.assert_array_equal(learned.reward, np.array(REWARD_OF_MEMBER)[members])


def test_a_reward_is_required_and_k_checked() -> None:
    model = LinearMembers((1.0, 0.5), ((1.0, 1.0), (-1.0, -1.5)))
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="reward"):
        branched_rollouts(model, _start(3), _policy, 2, gen)
    with pytest.raises(ValueError, match="k must be"):
        branched_rollouts(model, _start(3), _policy, 0, gen, _sum_reward)
    with pytest.raises(ValueError, match="start_obs"):
        branched_rollouts(model, torch.zeros(3, S + 1), _policy, 2, gen, _sum_reward)


def test_initial_states_are_the_rows_that_open_an_episode() -> None:
    steps = [0, 1, 2, 0, 1, 0]
    obs = np.arange(12, dtype=np.float32).reshape(6, 2)
    t = Transitions.from_lists(
        obs=obs,
        act=np.zeros((6, 1)),
        next_obs=obs + 1,
        reward=np.zeros(6),
        terminated=[False] * 6,
        truncated=[False] * 6,
        episode=[0, 0, 0, 1, 1, 2],
        step=steps,
        wall_time=np.zeros(6),
        robot=["r"] * 6,
    )
    np.testing.assert_array_equal(initial_states(t), obs[[0, 3, 5]])


# --- ModelBuffer -----------------------------------------------------------------------------


def _rows(n: int, version: int) -> Rollouts:
    obs = np.arange(n * S, dtype=np.float32).reshape(n, S) + 1000 * version
    return Rollouts(
        obs=obs,
        act=np.zeros((n, A), np.float32),
        reward=np.full(n, version, np.float32),
        next_obs=obs + 1,
        done=np.zeros(n, bool),
        start=np.arange(n),
        step=np.zeros(n, np.int64),
    )


def test_the_model_buffer_drops_the_oldest_versions_rows() -> None:
    buf = ModelBuffer(capacity_versions=2)
    buf.add(0, _rows(5, 0))
    buf.add(1, _rows(7, 1))
    buf.add(1, _rows(3, 1))  # more rows of the newest version join it
    assert len(buf) == 15 and buf.versions == [0, 1]
    buf.add(2, _rows(4, 2))
    assert len(buf) == 14 and buf.versions == [1, 2]
    batch = buf.sample(500, torch.Generator().manual_seed(0))
    assert set(batch.reward.tolist()) == {1.0, 2.0}
    np.testing.assert_array_equal(batch.obs // 1000, np.repeat(batch.reward[:, None], S, axis=1))
    with pytest.raises(ValueError, match="older"):
        buf.add(1, _rows(2, 1))


def test_model_buffer_sampling_is_seeded() -> None:
    buf = ModelBuffer(capacity_versions=3)
    for v in range(3):
        buf.add(v, _rows(50, v))
    a = buf.sample(64, torch.Generator().manual_seed(7))
    b = buf.sample(64, torch.Generator().manual_seed(7))
    c = buf.sample(64, torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.array_equal(a.obs, c.obs)
    with pytest.raises(ValueError, match="empty"):
        ModelBuffer(1).sample(1, torch.Generator())
    with pytest.raises(ValueError, match="capacity_versions"):
        ModelBuffer(0)


# --- RolloutSchedule -------------------------------------------------------------------------


def test_the_schedule_rises_linearly_and_is_clamped() -> None:
    s = RolloutSchedule(k_min=1, k_max=15, epoch_start=20, epoch_end=100)
    assert [s.length(e) for e in (0, 10, 20)] == [1, 1, 1]
    assert [s.length(e) for e in (100, 101, 10_000)] == [15, 15, 15]
    for e in range(20, 101):
        assert s.length(e) == int(1 + (e - 20) * 14 / 80 + 1e-9)
    assert s.length(60) == 8
    lengths = [s.length(e) for e in range(0, 120)]
    assert lengths == sorted(lengths)
    assert (
        RolloutSchedule.constant(1000).length(0) == RolloutSchedule.constant(1000).length(7) == 1000
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k_min": 0, "k_max": 5, "epoch_start": 0, "epoch_end": 10},
        {"k_min": 5, "k_max": 4, "epoch_start": 0, "epoch_end": 10},
        {"k_min": 1, "k_max": 5, "epoch_start": 10, "epoch_end": 9},
        {"k_min": 1, "k_max": 5, "epoch_start": -1, "epoch_end": 10},
        {"k_min": True, "k_max": 5, "epoch_start": 0, "epoch_end": 10},
        {"k_min": 1.0, "k_max": 5, "epoch_start": 0, "epoch_end": 10},
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RolloutSchedule(**kwargs)  # type: ignore[arg-type]


def test_the_schedule_refuses_a_negative_epoch() -> None:
    with pytest.raises(ValueError, match="epoch"):
        RolloutSchedule.constant(3).length(-1)


def test_a_gaussian_ensemble_runs_each_member_on_its_own_rows_only() -> None:
    """drawn_outputs gives each row its member's outputs, as running every member on every row
    and picking does (the grouped path must not mix rows or members up)."""
    from models.ensemble import EnsembleConfig, GaussianEnsemble
    from models.policy.rollouts import drawn_outputs

    torch.manual_seed(0)
    model = GaussianEnsemble(EnsembleConfig(obs_dim=3, act_dim=2, members=4, hidden_units=16,
                                            predict_reward=True, predict_done=True))  # fmt: skip
    obs, act = torch.randn(37, 3), torch.randn(37, 2)
    member = torch.randint(4, (37,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        grouped = drawn_outputs(model, obs, act, member)
        every = [o[member, torch.arange(37)] for o in model(obs, act)]
    assert len(grouped) == len(every) == 5
    for got, want in zip(grouped, every, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
