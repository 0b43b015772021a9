"""Policy proposals and the terminal value in the rollout graph (controller.rollout), through
real ONNX Runtime sessions over exact dynamics models, against torch references built from the
exported SAC agent itself.

Shapes: N candidates, H horizon, S state, A action, P particles.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from controller.planners import Planner, PlannerSettings
from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.graph import ModelGraph, PolicyParts, build_rollout_graph
from controller.rollout.settings import RolloutSettings
from controller.tasks.export import task_reward_graph
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.export import ModelFileError, export_ensemble, write_with_metadata
from models.policy.export import read_policy
from models.runtime import RuntimeConfig
from tests.controller.policy_models import (
    INVERTED,
    OBS,
    PENDULUM,
    WEIGHTS,
    LinearInvertedPendulum,
    PolicyFiles,
    closed_loop,
    critic_value,
    open_loop,
    step_pendulum,
)

# --- 1. proposals reproduce the policy's own rollout -----------------------------------------


@pytest.mark.parametrize(
    ("propagation", "slices", "device_random", "value_weight"),
    [
        ("ts1", 1, False, 0.0),  # routed: the policy rows move with the member routing
        ("tsinf", 3, False, 0.0),  # three slices, each with its share of the policy rows
        ("expectation", 1, False, 0.0),  # mixed
        ("expectation", 3, False, 2.5),  # mixed, sliced, with a terminal value
        ("ts1", 1, True, 2.5),  # graph-drawn randomness (the CUDA path), on the CPU
    ],
)
def test_policy_candidates_reproduce_the_policys_closed_loop_return(
    policy_files: PolicyFiles,
    propagation: str,
    slices: int,
    device_random: bool,
    value_weight: float,
) -> None:
    """All candidates proposals, no noise, no sampling: each candidate's return is the
    policy's return through the exact model step by step (reward of the actions it took,
    plus the terminal value when weighted), and its row of actions becomes the policy's."""
    evaluator = RolloutEvaluator(
        policy_files.pendulum,
        PENDULUM,
        policy_path=policy_files.policy,
        options=RuntimeConfig(rollout_slices=slices),
        device_random=device_random,
    )
    n, h, p, discount = 12, 15, 4, 0.95  # 48 particle rows: 3 slices of 16
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, (n, h, 1)).astype(np.float32)  # ignored, then overwritten
    settings = RolloutSettings(
        particles=p,
        propagation=propagation,
        sample=False,
        discount=discount,
        policy_share=1.0,
        policy_noise=0.0,
        value_weight=value_weight,
    )
    got = evaluator.evaluate(OBS, actions, settings, rng, WEIGHTS, proposals=n)

    want_actions, want_return, final = closed_loop(policy_files.agent, OBS, h, discount)
    want_return += (
        value_weight * discount**h * float(critic_value(policy_files.agent, final[None])[0])
    )
    np.testing.assert_allclose(actions, np.broadcast_to(want_actions, actions.shape), atol=2e-5)
    np.testing.assert_allclose(got, want_return, rtol=1e-4, atol=1e-4)
    # Scoring the rows passed in instead would be far off: the comparison tells them apart.
    assert abs(open_loop(OBS, rng.uniform(-2, 2, (1, h, 1)), discount)[0][0] - want_return) > 1
    assert np.ptp(want_actions) > 0.5, "the policy must act differently along the way"


def test_proposals_take_the_first_candidates_and_leave_the_others_alone(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles
) -> None:
    """5 of 9 candidates are proposals (x 3 particles: the routed layout pads 27 rows to 30):
    the other 4 score and keep exactly what they were given."""
    n, k, h, discount = 9, 5, 10, 1.0
    rng = np.random.default_rng(1)
    actions = rng.uniform(-2, 2, (n, h, 1)).astype(np.float32)
    given = actions.copy()
    settings = RolloutSettings(particles=3, sample=False, policy_share=0.5, policy_noise=0.0)
    got = policy_evaluator.evaluate(OBS, actions, settings, rng, WEIGHTS, proposals=k)

    want_actions, want_return, _ = closed_loop(policy_files.agent, OBS, h, discount)
    np.testing.assert_allclose(actions[:k], np.broadcast_to(want_actions, (k, h, 1)), atol=2e-5)
    np.testing.assert_array_equal(actions[k:], given[k:])
    np.testing.assert_allclose(got[:k], want_return, rtol=1e-4, atol=1e-4)
    want_rest, _ = open_loop(OBS, given[k:], discount)
    np.testing.assert_allclose(got[k:], want_rest, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("propagation", "device_random"),
    [("ts1", False), ("expectation", False), ("ts1", True), ("expectation", True)],
)
def test_noisy_proposals_take_clipped_policy_actions_plus_noise(
    policy_evaluator: RolloutEvaluator,
    policy_files: PolicyFiles,
    propagation: str,
    device_random: bool,
) -> None:
    """With noise, each proposal (one particle) took mean_action(state) + noise x half range
    at the states its own actions led to, within the bounds; the reward saw those actions.
    The draws differ from step to step and from candidate to candidate, whether the host
    draws them or the graph (device_random, the CUDA path, run here on the CPU)."""
    if device_random:
        policy_evaluator = RolloutEvaluator(
            policy_files.pendulum, PENDULUM, policy_path=policy_files.policy, device_random=True
        )
    n, h, noise = 16, 12, 0.05
    settings = RolloutSettings(
        propagation=propagation, sample=False, policy_share=1.0, policy_noise=noise
    )
    actions = np.zeros((n, h, 1), np.float32)
    got = policy_evaluator.evaluate(OBS, actions, settings, np.random.default_rng(2), WEIGHTS, n)

    want, states = open_loop(OBS, actions, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    mean = policy_files.agent.actor.mean_action(torch.from_numpy(states[:, :-1].reshape(-1, 3)))
    eps = (actions.reshape(-1) - mean.detach().numpy().reshape(-1)) / (noise * 2.0)
    inside = np.abs(actions.reshape(-1)) < 2.0 - 1e-6
    assert inside.mean() > 0.5
    assert abs(eps[inside].mean()) < 0.25 and 0.75 < eps[inside].std() < 1.25
    assert np.all(np.abs(actions) <= 2.0)
    draws = np.where(inside, eps, np.nan).reshape(n, h)
    assert np.nanstd(draws, axis=0).min() > 0.3, "candidates drew alike at some step"
    assert np.nanstd(draws, axis=1).min() > 0.3, "a candidate drew alike at every step"

    wide = RolloutSettings(propagation=propagation, policy_share=1.0, policy_noise=2.0)
    actions[:] = 0.0
    policy_evaluator.evaluate(OBS, actions, wide, np.random.default_rng(3), WEIGHTS, n)
    assert np.all(np.abs(actions) <= 2.0) and (np.abs(actions) == 2.0).mean() > 0.2


@torch.no_grad()
def test_a_proposals_row_is_the_mean_of_its_particles_actions(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles
) -> None:
    """3 of 5 candidates are proposals, 4 noisy particles each. Mixed mode without sampling
    draws nothing from the generator but the proposals' noise, ``policy_eps [H, Np x P, A]``
    (particle rows candidate by candidate), so each particle's rollout can be replayed here:
    a candidate's score is the mean of its particles' returns and its row the mean of their
    actions."""
    n, k, p, h, noise, seed = 5, 3, 4, 8, 0.3, 10
    settings = RolloutSettings(
        particles=p, propagation="expectation", sample=False, policy_share=0.6,
        policy_noise=noise,
    )  # fmt: skip
    actions = np.random.default_rng(11).uniform(-2, 2, (n, h, 1)).astype(np.float32)
    given = actions.copy()
    got = policy_evaluator.evaluate(OBS, actions, settings, np.random.default_rng(seed), WEIGHTS, k)

    eps = np.random.default_rng(seed).standard_normal((h, k * p, 1), dtype=np.float32)
    x = torch.from_numpy(OBS).expand(k * p, -1)
    taken, ret = [], torch.zeros(k * p)
    for t in range(h):
        a = policy_files.agent.actor.mean_action(x) + noise * 2.0 * torch.from_numpy(eps[t])
        a = a.clamp(-2.0, 2.0)
        nxt = step_pendulum(x, a)
        ret += PENDULUM.reward(x, a, nxt, torch.from_numpy(WEIGHTS))
        taken.append(a.numpy())
        x = nxt
    per_particle = np.stack(taken, 1).reshape(k, p, h, 1)
    assert np.ptp(per_particle, axis=1).min() > 0.05, "the particles must act differently"
    np.testing.assert_allclose(actions[:k], per_particle.mean(axis=1), atol=2e-5)
    np.testing.assert_allclose(got[:k], ret.numpy().reshape(k, p).mean(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(actions[k:], given[k:])


def test_policy_rollout_is_the_policy_through_the_mean_model(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles
) -> None:
    settings = RolloutSettings(particles=7, policy_noise=1.0, policy_share=0.3)  # all ignored
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    got = policy_evaluator.policy_rollout(OBS, 20, settings, WEIGHTS)
    assert rng.bit_generator.state == state
    want, _, _ = closed_loop(policy_files.agent, OBS, 20, 1.0)
    assert got.shape == (20, 1)
    np.testing.assert_allclose(got, want, atol=2e-5)


# --- 2. the terminal value ---------------------------------------------------------------


@pytest.mark.parametrize("propagation", ["tsinf", "expectation"])
def test_terminal_value_is_the_discounted_critic_at_the_final_state(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles, propagation: str
) -> None:
    n, h, w, discount = 8, 11, 3.0, 0.9
    rng = np.random.default_rng(5)
    actions = rng.uniform(-2, 2, (n, h, 1)).astype(np.float32)
    given = actions.copy()

    def score(value_weight: float) -> np.ndarray:
        settings = RolloutSettings(
            particles=2,
            propagation=propagation,
            sample=False,
            discount=discount,
            value_weight=value_weight,
        )
        return policy_evaluator.evaluate(OBS, actions, settings, np.random.default_rng(6), WEIGHTS)

    base, valued = score(0.0), score(w)
    np.testing.assert_array_equal(actions, given)  # no proposals: nothing written back
    want_base, states = open_loop(OBS, given, discount)
    np.testing.assert_allclose(base, want_base, rtol=1e-4, atol=1e-4)
    want = w * discount**h * critic_value(policy_files.agent, states[:, -1])
    assert np.abs(want).min() > 0.05 and np.ptp(want) > 0.1, "the value must show"
    np.testing.assert_allclose(valued - base, want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def _ip_reference(
    obs: np.ndarray, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Through the exact linear model: survival returns [N], whether each candidate is still
    running after the last step [N], final states [N, S]."""
    n, h, _ = actions.shape
    model = LinearInvertedPendulum(1)
    x = torch.from_numpy(obs).expand(n, -1)
    alive, ret = torch.ones(n, dtype=torch.bool), torch.zeros(n)
    for t in range(h):
        x = model(x[None], torch.from_numpy(actions[:, t])[None])[0][0]
        assert INVERTED.terminated is not None
        alive = alive & ~INVERTED.terminated(x)
        ret += alive.float()
    return ret.numpy(), alive.numpy(), x.numpy()


@pytest.mark.parametrize("propagation", ["ts1", "expectation"])
def test_an_ended_episode_gets_no_terminal_value(
    policy_files: PolicyFiles, propagation: str
) -> None:
    """Inverted pendulum, pole at 0.1 rad: holding it (u = 1) or pushing it back gently
    survives the horizon, pushing too little or too much ends the episode (|theta| > 0.2)."""
    evaluator = RolloutEvaluator(
        policy_files.ip_model, INVERTED, policy_path=policy_files.ip_policy
    )
    obs = np.array([0.0, 0.1, 0.0, 0.0], np.float32)
    h, w, discount = 15, 4.0, 0.97
    actions = np.repeat(np.linspace(-3, 3, 13, dtype=np.float32), h).reshape(13, h, 1)
    ret, alive, final = _ip_reference(obs, actions)
    assert alive.any() and not alive.all()

    def score(value_weight: float) -> np.ndarray:
        settings = RolloutSettings(
            propagation=propagation, sample=False, discount=discount, value_weight=value_weight
        )
        return evaluator.evaluate(obs, actions, settings, np.random.default_rng(7))

    base, valued = score(0.0), score(w)
    np.testing.assert_allclose(base, [sum(discount**t for t in range(int(r))) for r in ret],
                               rtol=1e-5)  # fmt: skip
    value = w * discount**h * critic_value(policy_files.ip_agent, final)
    assert np.abs(value[~alive]).min() > 0.05, "an ended candidate's value would show"
    np.testing.assert_allclose(valued - base, np.where(alive, value, 0.0), rtol=1e-4, atol=1e-5)


# --- 4. what is refused ------------------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("policy_share", -0.1),
        ("policy_share", 1.5),
        ("policy_share", NAN),
        ("policy_share", True),
        ("policy_noise", -1.0),
        ("policy_noise", 3.0),
        ("policy_noise", NAN),
        ("value_weight", -1.0),
        ("value_weight", 1e9),
        ("value_weight", NAN),
        ("value_weight", math.inf),
    ],
)
def test_policy_settings_outside_their_range_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be a number in \["):
        RolloutSettings(**{name: value})  # type: ignore[arg-type]
    current = PlannerSettings()
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        current.changed({name: value})
    edges = {"policy_share": (0, 1.0), "policy_noise": (0.0, 2), "value_weight": (0.0, 100.0)}
    for edge in edges[name]:
        assert getattr(current.changed({name: edge}).rollout, name) == edge


def test_proposals_need_a_policy_and_room(
    policy_files: PolicyFiles, policy_evaluator: RolloutEvaluator
) -> None:
    plain = RolloutEvaluator(policy_files.pendulum, PENDULUM)
    settings = RolloutSettings(policy_share=1.0, value_weight=1.0)
    actions = np.zeros((3, 4, 1), np.float32)
    rng = np.random.default_rng(0)
    assert not plain.has_policy and not plain.uses_policy(settings)
    assert plain.proposals(10, settings) == 0
    with pytest.raises(ValueError, match="need a policy"):
        plain.evaluate(OBS, actions, settings, rng, proposals=1)
    with pytest.raises(ValueError, match="needs a policy"):
        plain.policy_rollout(OBS, 4, settings)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=r"proposals must be in \[0, 3\]"):
            policy_evaluator.evaluate(OBS, actions, settings, rng, proposals=bad)
    assert policy_evaluator.proposals(10, settings.__class__(policy_share=0.26)) == 3
    # Without a policy, settings asking for one plan as plain settings do.
    a = plain.evaluate(OBS, actions, settings, np.random.default_rng(1))
    b = plain.evaluate(OBS, actions, RolloutSettings(), np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


def test_policy_files_that_do_not_fit_the_task_are_refused(policy_files: PolicyFiles) -> None:
    with pytest.raises(ModelFileError, match=r"policy dims \(obs 4, act 1\)"):
        RolloutEvaluator(policy_files.pendulum, PENDULUM, policy_path=policy_files.ip_policy)
    # The pendulum policy's graph under metadata that says it acts within [-1, 1].
    data, meta = read_policy(policy_files.policy)
    path = policy_files.root / "narrow.onnx"
    narrow = dataclasses.replace(meta, low=(-1.0,), high=(1.0,))
    write_with_metadata(onnx.load_from_string(data), narrow.to_props(), path)
    assert read_policy(path)[1].high == (1.0,)
    with pytest.raises(ModelFileError, match="bounds"):
        RolloutEvaluator(policy_files.pendulum, PENDULUM, policy_path=path)
    with pytest.raises(ModelFileError, match="not a tickmpc policy"):
        RolloutEvaluator(policy_files.pendulum, PENDULUM, policy_path=policy_files.pendulum)


# --- 5. the plain path is unchanged by a loaded policy -----------------------------------


@pytest.fixture(scope="module")
def learned(policy_files: PolicyFiles) -> Path:
    """A random (not exact) pendulum ensemble, so sampling and routing matter."""
    torch.manual_seed(0)
    cfg = EnsembleConfig(obs_dim=3, act_dim=1, members=5, hidden_layers=2, hidden_units=32)
    model = GaussianEnsemble(cfg).eval()
    with torch.no_grad():
        model.out_std.mul_(0.05)
    path = policy_files.root / "learned.onnx"
    export_ensemble(model, path, member_batched=True)
    return path


@pytest.mark.parametrize("propagation", ["ts1", "tsinf", "expectation"])
def test_the_plain_path_is_unchanged_by_a_loaded_policy(
    policy_files: PolicyFiles, learned: Path, propagation: str
) -> None:
    options = RuntimeConfig(rollout_slices=2)
    plain = RolloutEvaluator(learned, PENDULUM, options=options)
    loaded = RolloutEvaluator(learned, PENDULUM, options=options, policy_path=policy_files.policy)
    settings = RolloutSettings(particles=4, propagation=propagation, policy_noise=0.7)
    actions = np.random.default_rng(8).uniform(-2, 2, (10, 9, 1)).astype(np.float32)
    a = plain.evaluate(OBS, actions, settings, np.random.default_rng(9))
    b = loaded.evaluate(OBS, actions, settings, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a) > 0.1

    planning = PlannerSettings(horizon=9, population=20, iterations=2).changed(
        propagation=propagation, particles=2, policy_noise=0.7
    )
    first, second = Planner(plain, planning), Planner(loaded, planning)
    for _ in range(2):
        np.testing.assert_array_equal(first.plan(OBS).actions, second.plan(OBS).actions)


@pytest.mark.parametrize("mode", ["routed", "mixed"])
def test_the_unrolled_graph_with_a_policy_equals_the_loop(
    policy_files: PolicyFiles, mode: str
) -> None:
    """The straight-line graph (the benchmark's) inlines the policy once per step: valid, and
    the same returns and actions as the Loop for the same draws."""
    model = onnx.load(policy_files.pendulum)
    graph = ModelGraph(model, 5, 3, 1, member_batched=True)
    data, _ = read_policy(policy_files.policy)
    bounds = np.array(PENDULUM.action_low), np.array(PENDULUM.action_high)
    policy = PolicyParts(onnx.load_from_string(data), *bounds)
    reward = task_reward_graph(PENDULUM)
    n, h, rng = 10, 4, np.random.default_rng(0)
    feeds = {
        "obs": np.tile(OBS, (n, 1)),
        "actions": rng.uniform(-2, 2, (n, h, 1)).astype(np.float32),
        "particle_candidate": np.arange(n, dtype=np.int64),
        "weights": WEIGHTS,
        "discount": np.array(0.9, np.float32),
        "noise": rng.standard_normal((h, n, 3)).astype(np.float32) * 0.1,
        "policy_particle": np.arange(4, dtype=np.int64),
        "policy_noise": np.array(0.2, np.float32),
        "value_weight": np.array(2.0, np.float32),
        "policy_eps": rng.standard_normal((h, 4, 1)).astype(np.float32),
    }
    if mode == "routed":
        gather = np.stack([rng.permutation(n) for _ in range(h)])
        feeds |= {"gather_idx": gather, "scatter_idx": np.argsort(gather, axis=1)}
    else:
        weight = np.zeros((h, 5, n), np.float32)
        np.put_along_axis(weight, rng.integers(0, 5, (h, 1, n)), 1.0, axis=1)
        feeds |= {"member_weight": weight, "penalty": np.array(0.0, np.float32),
                  "inv_scale2": np.ones(3, np.float32)}  # fmt: skip
    outputs = []
    for unroll in (None, h):
        proto = build_rollout_graph(graph, reward, mode, policy=policy, unroll=unroll)
        onnx.checker.check_model(proto)
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        wanted = {i.name for i in session.get_inputs()}
        outputs.append(session.run(None, {k: v for k, v in feeds.items() if k in wanted}))
    for loop, unrolled in zip(*outputs, strict=True):
        np.testing.assert_allclose(unrolled, loop, rtol=1e-5, atol=1e-5)
