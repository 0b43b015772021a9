"""Build the rollout graph: a whole horizon of ensemble propagation and reward in one ONNX run.

The graph is composed by graph surgery from two exported graphs: the dynamics model file (as the
learner publishes it) and the task's reward graph (:mod:`controller.tasks.export`). The
model's nodes are copied, with prefixed names, into the body of an ONNX ``Loop`` whose trip count
is the horizon of the ``actions`` input, and the reward's after it. So:

- the horizon is a run-time property of the input, not of the graph: a live horizon change
  needs no new graph (measured against graphs unrolled per horizon in
  ``benchmarks/plan_latency.py``);
- a new model version needs no torch: composing and loading takes milliseconds, off the hot
  path, and the model file stays the single source of the weights.

Shapes: N candidates, H horizon, A action, S observation, E members, M particle rows (N x P,
padded to a multiple of E in routed mode), T reward terms.

Inputs (both modes): ``obs [N, S]`` the state each candidate starts from (the robot's current
state; candidates of several robots planned together start from their own robot's);
``actions [N, H, A]``; ``particle_candidate [M]`` int64, which candidate each particle row
follows; ``noise [H, M, S]`` standard normal
draws for sampling the next state (zeros for mean propagation; the draws are i.i.d., so which
row takes which draw does not matter and routed mode takes them in member order);
``weights [T]`` when the task has reward terms; ``discount []``.

- ``routed`` mode (TS1 and TS-infinity): each particle row goes through exactly one member, so
  a step costs M member-rows. ``gather_idx [H, M]`` int64 orders the particle rows at each step
  so that consecutive blocks of M / E rows go to members 0..E-1; ``scatter_idx [H, M]`` is its
  inverse permutation. TS1 draws a new permutation per step, TS-infinity repeats one. The loop
  keeps the state in member order: each step takes one Gather (step t-1's order to step t's,
  composed outside the loop), and the whole trajectory goes back to particle order once.
- ``mixed`` mode (expectation, any propagation with a disagreement penalty, or pessimism about
  a learned reward): every member sees every particle row (E x M member-rows per step).
  ``member_weight [H, E, M]`` mixes the members' Gaussians (1/E each for expectation, one-hot
  for TS1/TS-infinity). The ensemble disagreement, the variance of the members' means divided
  by ``inv_scale2 [S]``-weighted state scales and averaged over S, is subtracted from the
  reward times ``penalty []``. With a learned reward, ``pessimism []`` (k) too.

Reward and termination: what the task computes itself (its graph's ``reward`` and ``done``)
comes first; the model stands in for the rest. A learned step reward is the model's
``reward_mean`` of the particle row's own member (routed), or the ``member_weight`` mix of the
members' reward means less k times their std over the members (mixed: the pessimistic mean).
A learned termination is the model's ``done_prob`` mixed the same way, the probability that
the step ends the episode. The reward of step t counts times the probability that the episode
is still running, alive_t = prod_{tau<t} (1 - done_tau): the terminal step's own reward counts
and later ones do not (exactly so for the task's 0/1 ``done``). Neither: no termination.

The loop body holds only the model step and the sampling; it stacks the next states (and the
disagreement, and the model's reward and done outputs where they are used) as scan outputs,
and the reward of all H x M steps is computed after the loop in one batch. Measured on 2 cores
(E=5, 4x200, 200 candidates, H=15): this halved the body's node count (88 to 52) without
changing the run time, which the small batched MatMuls dominate; with 7,000 particle rows per
step the run went from 256 to 203 ms.

Output: ``returns [M]``, the discounted sum of rewards per particle row, each step's weighted
by its alive_t.

With a policy (:class:`PolicyParts`, an exported policy file), the graph plans with it:

- the particle rows ``policy_particle [Mp]`` are policy proposals: at each step the body reads
  their predicted states (in routed mode through ``policy_pos [H, Mp]``, where step t's member
  order put each of them), runs the policy's actor on them, adds ``policy_noise [] x half
  range x policy_eps [H, Mp, A]``, clips to the bounds and writes the result over their
  actions (``ScatterND``) before the model step. Output ``policy_actions [H, Mp, A]``: what
  they took, which the reward after the loop also sees;
- each particle's return gains ``value_weight [] x discount^H x alive_H x value(s_H)``, the
  policy's critic at the last state (0 once a step ended the episode; 0 when the weight is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from controller.rollout.builder import Builder
from controller.tasks.export import INPUTS as REWARD_INPUTS

Mode = Literal["routed", "mixed"]
MODES: tuple[Mode, ...] = ("routed", "mixed")
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL


@dataclass(frozen=True)
class ModelGraph:
    """The parts of a dynamics model file the rollout needs."""

    proto: onnx.ModelProto
    members: int
    obs_dim: int
    act_dim: int
    member_batched: bool
    """Inputs are [E, B, ...] (each member its own rows) rather than [B, ...] shared."""
    predicts_reward: bool = False
    """The graph has ``reward_mean [E, B, 1]``: the step reward where the task has none."""
    predicts_done: bool = False
    """The graph has ``done_prob [E, B, 1]`` and the rollout takes it as the termination where
    the task has no termination function (False: the model's is not used, e.g. for a task
    whose episodes never end)."""


@dataclass(frozen=True)
class PolicyParts:
    """The parts of an exported policy file (:mod:`models.policy.export`) the rollout needs:
    its graph (``obs [B, S]`` -> ``action [B, A]`` within the bounds, ``value [B]``) and the
    action bounds its proposals are clipped to."""

    proto: onnx.ModelProto
    low: np.ndarray
    high: np.ndarray


def _policy_step(
    b: Builder,
    policy: PolicyParts,
    t: str,
    states: str,
    actions: str,
    seed: float | None,
    prefix: str,
) -> tuple[str, str]:
    """Nodes that let the policy act for the policy particles at step t: at the rows
    ``policy_pos[t]`` of ``states [M, S]`` its action plus noise, clipped to the bounds,
    replaces the row of ``actions [M, A]``. Returns (the new actions [M, A], the policy
    particles' actions [Mp, A] in policy-particle order)."""
    pos = b.op("Gather", ["policy_pos", t], "pos", axis=0)  # [Mp]
    seen = b.op("Gather", [states, pos], "seen", axis=0)  # [Mp, S]
    out = b.inline(policy.proto.graph, prefix + "policy/", {"obs": seen}, "policy/", ["action"])
    if seed is None:
        eps = b.op("Gather", ["policy_eps", t], "eps", axis=0)  # [Mp, A]
    else:
        eps = b.op("RandomNormalLike", [out["action"]], "eps", seed=seed + 2.0)
    moved = b.op("Add", [out["action"], b.op("Mul", [eps, "policy_scale"])])
    low, high = b.const(policy.low.astype(np.float32)), b.const(policy.high.astype(np.float32))
    taken = b.op("Max", [b.op("Min", [moved, high]), low], "taken")
    rows = b.op("Unsqueeze", [pos, b.ints(1)])
    return b.op("ScatterND", [actions, rows, taken], "acts"), taken


def _model_step(
    b: Builder,
    model: ModelGraph,
    mode: Mode,
    t: str,
    state: str,
    prefix: str,
    seed: float | None,
    reads: Sequence[str],
    policy: PolicyParts | None,
) -> dict[str, str]:
    """Nodes of one horizon step; returns the names of its outputs: ``next_state [M, S]``,
    in mixed mode ``disagreement [M]``, each model output of ``reads`` (``reward_mean``,
    ``done_prob``): ``[M]`` in routed mode, ``[E, M]`` in mixed mode; with a ``policy``,
    ``policy_action [Mp, A]``, what the policy particles did.

    Routed: ``state`` is in step t-1's member order and is reordered to step t's; the step's
    outputs come out in step t's order. Mixed: particle order throughout. ``seed``: the graph
    draws the noise itself (device-random), else it reads the ``noise`` input.
    """
    e, s, a = model.members, model.obs_dim, model.act_dim
    if seed is None:
        noise_t = b.op("Gather", ["noise", t], "noise_t", axis=0)  # [M, S]
    else:
        draw = b.op("RandomNormalLike", [state], "draw", seed=seed + 1.0)
        noise_t = b.op("Mul", [draw, "noise_scale"], "noise_t")
    extras: dict[str, str] = {}
    if mode == "routed":
        order = b.op("Gather", ["reorder", t], "order", axis=0)  # [M]
        x_rows = b.op("Gather", [state, order], axis=0)  # [M, S], step t's member order
        u_rows = b.op("Gather", ["act_routed", t], axis=0)
        if policy is not None:
            u_rows, extras["policy_action"] = _policy_step(
                b, policy, t, x_rows, u_rows, seed, prefix
            )
        x = b.op("Reshape", [x_rows, b.ints(e, -1, s)])
        u = b.op("Reshape", [u_rows, b.ints(e, -1, a)])
        out = b.inline(model.proto.graph, prefix + "model/", {"obs": x, "act": u}, "model/")
        flat = b.ints(-1, s)
        mean = b.op("Reshape", [out["next_obs_mean"], flat])
        logvar = b.op("Reshape", [out["next_obs_logvar"], flat])
        std = b.op("Exp", [b.op("Mul", [logvar, b.const(np.float32(0.5))])], "std")
        for name in reads:  # [E, M / E, 1]: each particle row's own member
            extras[name] = b.op("Reshape", [out[name], b.ints(-1)], name)
    else:
        act_t = b.op("Gather", ["act_steps", t], "act_t", axis=0)  # [M, A]
        if policy is not None:
            act_t, extras["policy_action"] = _policy_step(b, policy, t, state, act_t, seed, prefix)
        if model.member_batched:
            reps = b.ints(e, 1, 1)
            x = b.op("Tile", [b.op("Unsqueeze", [state, b.ints(0)]), reps])
            u = b.op("Tile", [b.op("Unsqueeze", [act_t, b.ints(0)]), reps])
        else:
            x, u = state, act_t
        out = b.inline(model.proto.graph, prefix + "model/", {"obs": x, "act": u}, "model/")
        means, logvars = out["next_obs_mean"], out["next_obs_logvar"]  # [E, M, S]
        w = b.op("Unsqueeze", [b.op("Gather", ["member_weight", t], axis=0), b.ints(2)])
        axis0 = b.ints(0)
        mean = b.op("ReduceSum", [b.op("Mul", [w, means]), axis0], keepdims=0)
        var = b.op("ReduceSum", [b.op("Mul", [w, b.op("Exp", [logvars])]), axis0], keepdims=0)
        std = b.op("Sqrt", [var], "std")
        centre = b.op("ReduceMean", [means, axis0], keepdims=1)
        dev = b.op("Sub", [means, centre])
        spread = b.op("ReduceMean", [b.op("Mul", [dev, dev]), axis0], keepdims=0)  # [M, S]
        scaled = b.op("Mul", [spread, "inv_scale2"])
        extras["disagreement"] = b.op("ReduceMean", [scaled, b.ints(1)], "dis", keepdims=0)
        for name in reads:  # every member's, mixed after the loop
            extras[name] = b.op("Squeeze", [out[name], b.ints(2)], name)
    nxt = b.op("Add", [mean, b.op("Mul", [std, noise_t])], "next_state")
    return {"next_state": nxt, **extras}


def _inputs(
    model: ModelGraph,
    mode: Mode,
    reward: onnx.ModelProto | None,
    device_random: bool,
    pessimism: bool,
    policy: bool,
) -> list[onnx.ValueInfoProto]:
    e, s, a = model.members, model.obs_dim, model.act_dim
    info = helper.make_tensor_value_info
    inputs = [
        info("obs", FLOAT, ["N", s]),
        info("actions", FLOAT, ["N", "H", a]),
        info("particle_candidate", INT64, ["M"]),
    ]
    for given in reward.graph.input if reward is not None else ():
        if given.name == "weights":
            inputs.append(info("weights", FLOAT, [given.type.tensor_type.shape.dim[0].dim_value]))
    inputs.append(info("discount", FLOAT, []))
    if device_random:
        inputs.append(info("noise_scale", FLOAT, []))
    else:
        inputs.append(info("noise", FLOAT, ["H", "M", s]))
    if mode == "routed" and device_random:
        inputs.append(info("redraw", FLOAT, []))
    elif mode == "routed":
        inputs += [info("gather_idx", INT64, ["H", "M"]), info("scatter_idx", INT64, ["H", "M"])]
    else:
        inputs += [
            info("member_weight", FLOAT, ["H", e, "M"]),
            info("penalty", FLOAT, []),
            info("inv_scale2", FLOAT, [s]),
        ]
        if pessimism:
            inputs.append(info("pessimism", FLOAT, []))
    if policy:
        inputs += [
            info("policy_particle", INT64, ["Mp"]),
            info("policy_noise", FLOAT, []),
            info("value_weight", FLOAT, []),
        ]
        if not device_random:
            inputs.append(info("policy_eps", FLOAT, ["H", "Mp", a]))
    return inputs


def _draw_orders(b: Builder, hm: str, m: str, seed: float) -> None:
    """Outer nodes that draw ``gather_idx`` and ``scatter_idx`` [H, M] in the graph: a random
    permutation per step (``redraw`` 1, TS1) or one for every step (``redraw`` 0, TS-inf),
    as the indices of sorted uniform draws; the inverse sorts those indices back."""
    u = b.op("RandomUniformLike", [b.op("ConstantOfShape", [hm])], "u", seed=seed)
    first = b.op("Expand", [b.op("Slice", [u, b.ints(0), b.ints(1)]), hm])
    keep = b.op("Sub", [b.const(np.float32(1.0)), "redraw"])
    keys = b.op("Add", [b.op("Mul", [u, "redraw"]), b.op("Mul", [first, keep])])
    k = b.op("Unsqueeze", [m, b.ints(0)])
    b.nodes.append(helper.make_node("TopK", [keys, k], [b.name("sorted"), "gather_idx"], axis=1))
    order = b.op("Cast", ["gather_idx"], to=FLOAT)  # exact below 2^24 rows
    b.nodes.append(
        helper.make_node("TopK", [order, k], [b.name("sorted"), "scatter_idx"], axis=1, largest=0)
    )


def _routing(b: Builder, a: int, h: str, m: str) -> str:
    """Outer nodes that turn the per-step member orders into what the loop body reads:
    ``act_routed [H, M, A]`` (each step's actions in its member order) and ``reorder [H, M]``
    (which row of the previous step's output each row of this step takes). Returns the name
    of ``offsets [H, 1]`` (t x M), which maps step-t indices to rows of [H x M, ...]."""
    steps = b.op("Range", [b.const(np.int64(0)), h, b.const(np.int64(1))])
    offsets = b.op("Unsqueeze", [b.op("Mul", [steps, m]), b.ints(1)])
    flat_act = b.op("Reshape", ["act_steps", b.ints(-1, a)])
    rows = b.op("Add", ["gather_idx", offsets])
    b.nodes.append(helper.make_node("Gather", [flat_act, rows], ["act_routed"], axis=0))
    # Step t-1 leaves particle p in row scatter_idx[t-1][p], so step t takes rows
    # scatter_idx[t-1][gather_idx[t]]. Step 0 takes them from state0, in particle order (the
    # rows differ where candidates start from different robots' states).
    identity = b.op("Range", [b.const(np.int64(0)), m, b.const(np.int64(1))])
    first = b.op("Unsqueeze", [identity, b.ints(0)])
    before = b.op("Concat", [first, b.op("Slice", ["scatter_idx", b.ints(0), b.ints(-1)])], axis=0)
    b.nodes.append(helper.make_node("GatherElements", [before, "gather_idx"], ["reorder"], axis=1))
    return offsets


def _loop(
    b: Builder,
    model: ModelGraph,
    mode: Mode,
    h: str,
    state0: str,
    seed: float | None,
    reads: Sequence[str],
    policy: PolicyParts | None,
) -> dict[str, str]:
    """The ``Loop`` over the horizon; returns the names of the step outputs of
    :func:`_model_step` stacked by the loop as scan outputs, under the same keys, with a
    leading H (``next_state [H, M, S]``, ``disagreement [H, M]``, ...)."""
    body = Builder("step/")
    step = _model_step(body, model, mode, "iter", "state_in", "", seed, reads, policy)
    scans = dict(step, next_state=body.op("Identity", [step["next_state"]], "next_out"))
    info = helper.make_tensor_value_info
    body_graph = helper.make_graph(
        [*body.nodes, helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "rollout_step",
        [info("iter", INT64, []), info("cond_in", BOOL, []), info("state_in", FLOAT, None)],
        [
            info("cond_out", BOOL, []),
            info(step["next_state"], FLOAT, None),
            *(info(n, FLOAT, None) for n in scans.values()),
        ],
        initializer=body.initializers,
    )
    stacked = {name: b.name(name) for name in scans}
    outs = [b.name("final_state"), *stacked.values()]
    b.nodes.append(helper.make_node("Loop", [h, "", state0], outs, body=body_graph))
    return stacked


def _unrolled(
    b: Builder,
    model: ModelGraph,
    mode: Mode,
    horizon: int,
    state0: str,
    seed: float | None,
    reads: Sequence[str],
    policy: PolicyParts | None,
) -> dict[str, str]:
    """The same steps as :func:`_loop`, written out for a fixed horizon."""
    steps: dict[str, list[str]] = {}
    state = state0
    for i in range(horizon):
        t = b.const(np.int64(i), "t")
        step = _model_step(b, model, mode, t, state, f"s{i}/", seed, reads, policy)
        state = step["next_state"]
        for name, value in step.items():
            steps.setdefault(name, []).append(b.op("Unsqueeze", [value, b.ints(0)]))
    return {name: b.op("Concat", values, axis=0) for name, values in steps.items()}


def _over_members(b: Builder, mode: Mode, values: str, pessimism: bool) -> str:
    """A model output per step and particle row [H, M]: routed, ``values`` is that already
    (each row's own member); mixed, ``values [H, E, M]`` are mixed by ``member_weight``, less
    ``pessimism`` times their std over the members (population std) where asked."""
    if mode == "routed":
        return values
    axis1 = b.ints(1)
    mixed = b.op("ReduceSum", [b.op("Mul", ["member_weight", values]), axis1], keepdims=0)
    if not pessimism:
        return mixed
    dev = b.op("Sub", [values, b.op("ReduceMean", [values, axis1], keepdims=1)])
    spread = b.op("Sqrt", [b.op("ReduceMean", [b.op("Mul", [dev, dev]), axis1], keepdims=0)])
    return b.op("Sub", [mixed, b.op("Mul", ["pessimism", spread])], "pessimistic")


def _returns(
    b: Builder,
    reward: onnx.ModelProto | None,
    mode: Mode,
    s: int,
    a: int,
    state0: str,
    stacked: Mapping[str, str],
    acts: str,
    hm: str,
    h: str,
    policy: PolicyParts | None,
) -> None:
    """Outer nodes from the particle-order trajectory (``acts [H, M, A]``, the actions taken)
    to ``returns``: the task's reward and termination on all H x M steps in one batch (what
    the task computes itself), else the model's; the disagreement penalty; survival and
    discount; with a ``policy``, its critic's discounted value at the last state."""
    task: dict[str, str] = {}
    if reward is not None:
        earlier = b.op("Slice", [stacked["next_state"], b.ints(0), b.ints(-1)])
        states = b.op("Concat", [b.op("Unsqueeze", [state0, b.ints(0)]), earlier], axis=0)
        values = (
            b.op("Reshape", [states, b.ints(-1, s)]),
            b.op("Reshape", [acts, b.ints(-1, a)]),
            b.op("Reshape", [stacked["next_state"], b.ints(-1, s)]),
            "weights",
        )
        given = dict(zip(REWARD_INPUTS, values, strict=True))
        bind = {i.name: given[i.name] for i in reward.graph.input}
        outputs = b.inline(reward.graph, "reward/", bind, "reward/")
        task = {name: b.op("Reshape", [value, hm], name) for name, value in outputs.items()}
    if "reward" in task:
        step_reward = task["reward"]  # [H, M]
    else:
        step_reward = _over_members(b, mode, stacked["reward_mean"], pessimism=True)
    if "disagreement" in stacked:
        step_reward = b.op("Sub", [step_reward, b.op("Mul", ["penalty", stacked["disagreement"]])])
    h_float = b.op("Cast", [h], to=FLOAT)
    powers = b.op("Range", [b.const(np.float32(0.0)), h_float, b.const(np.float32(1.0))])
    disc = b.op("Unsqueeze", [b.op("Pow", ["discount", powers]), b.ints(1)])  # [H, 1]
    gains = b.op("Mul", [step_reward, disc])
    if "done" in task:
        done = task["done"]
    elif "done_prob" in stacked:
        done = _over_members(b, mode, stacked["done_prob"], pessimism=False)
    else:
        done = None
    survive = None
    zero = b.const(np.float32(0.0))
    if done is not None:
        # A step's reward counts times the probability that no earlier step ended the episode:
        # alive_t = prod_{tau<t} (1 - done_tau), as a sum of logs (exact for 0/1: log 0 = -inf).
        survive = b.op("Log", [b.op("Sub", [b.const(np.float32(1.0)), done])], "log_survive")
        alive = b.op("Exp", [b.op("CumSum", [survive, b.const(np.int64(0))], exclusive=1)])
        # After the end nothing counts, not even a NaN the model predicts past it.
        ended = b.op("Equal", [alive, b.const(np.float32(0.0))])
        gains = b.op("Where", [ended, zero, b.op("Mul", [gains, alive])], "gains")
    total = b.op("ReduceSum", [gains, b.ints(0)], "total", keepdims=0)
    if policy is None:
        b.nodes.append(helper.make_node("Identity", [total], ["returns"]))
        return
    # The terminal value: discount^H x the critic's value at the last state, counted while
    # the episode is still running after the last step (alive_H, 0 past a terminal step).
    last = b.op("Sub", [h, b.const(np.int64(1))])
    final = b.op("Gather", [stacked["next_state"], last], "final", axis=0)  # [M, S]
    value = b.inline(policy.proto.graph, "value/", {"obs": final}, "value/", ["value"])["value"]
    scale = b.op("Mul", ["value_weight", b.op("Pow", ["discount", h_float])])
    term = b.op("Mul", [value, scale], "terminal")
    off = b.op("Equal", ["value_weight", zero])  # no NaN x 0 when off
    if survive is not None:
        alive_h = b.op("Exp", [b.op("ReduceSum", [survive, b.ints(0)], keepdims=0)])
        term = b.op("Mul", [term, alive_h], "terminal")
        off = b.op("Or", [off, b.op("Equal", [alive_h, zero])])  # nor past the end
    term = b.op("Where", [off, zero, term], "terminal")
    b.nodes.append(helper.make_node("Add", [total, term], ["returns"]))


def build_rollout_graph(
    model: ModelGraph,
    reward: onnx.ModelProto | None,
    mode: Mode,
    *,
    policy: PolicyParts | None = None,
    unroll: int | None = None,
    device_random: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Compose the rollout graph for ``mode`` (see the module docstring).

    ``reward`` is the task's graph (:func:`controller.tasks.export.export_reward`):
    what it computes (``reward``, ``done``) is used, and the model's ``reward_mean`` and
    ``done_prob`` stand in for what it does not (None: it computes neither). Raises ValueError
    when neither gives a reward.

    ``device_random=True`` makes the graph draw its own sampling noise and (routed) member
    orders with ONNX random ops seeded from ``seed``, so that on a GPU they never cross the
    bus: the ``noise``, ``gather_idx`` and ``scatter_idx`` inputs give way to ``noise_scale
    []`` (1.0 to sample, 0.0 to follow the means) and ``redraw []`` (1.0: a new order every
    step, TS1; 0.0: one order for the horizon, TS-infinity).

    ``policy`` (see the module docstring) adds the policy particles and the terminal value:
    the inputs ``policy_particle [Mp]``, ``policy_noise []``, ``value_weight []`` and
    ``policy_eps [H, Mp, A]`` (standard normal draws; none with ``device_random``), and the
    output ``policy_actions [H, Mp, A]``.

    ``unroll=H`` builds a straight-line graph for exactly horizon H instead of the ``Loop``;
    it exists only so the benchmark can measure what the loop costs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "routed" and not model.member_batched:
        raise ValueError("routed mode needs a member-batched model ([E, B, ...] inputs)")
    reads = _model_reads(model, reward)
    s, a = model.obs_dim, model.act_dim
    b = Builder("outer/")
    act_particles = b.op("Gather", ["actions", "particle_candidate"], axis=0)  # [M, H, A]
    if policy is not None:
        half = ((policy.high - policy.low) / 2.0).astype(np.float32)
        b.nodes.append(helper.make_node("Mul", ["policy_noise", b.const(half)], ["policy_scale"]))
    b.nodes.append(helper.make_node("Transpose", [act_particles], ["act_steps"], perm=[1, 0, 2]))
    m_1d = b.op("Shape", ["particle_candidate"], "m")  # [1]
    h_1d = b.op("Slice", [b.op("Shape", ["actions"]), b.ints(1), b.ints(2)], "h")  # [1]
    m, h = b.op("Reshape", [m_1d, b.ints()], "m"), b.op("Reshape", [h_1d, b.ints()], "h")
    state0 = b.op("Gather", ["obs", "particle_candidate"], "state0", axis=0)  # [M, S]
    hm = b.op("Concat", [h_1d, m_1d], axis=0)
    graph_seed = float(seed) if device_random else None
    if graph_seed is not None and mode == "routed":
        _draw_orders(b, hm, m, graph_seed)
    offsets = _routing(b, a, h, m) if mode == "routed" else None
    if policy is not None:  # where each policy particle is at each step
        if mode == "routed":  # step t's member order put particle p in row scatter_idx[t][p]
            pos = ["scatter_idx", "policy_particle"]
            b.nodes.append(helper.make_node("Gather", pos, ["policy_pos"], axis=1))
        else:
            shape = b.op("Concat", [h_1d, b.op("Shape", ["policy_particle"])], axis=0)
            b.nodes.append(helper.make_node("Expand", ["policy_particle", shape], ["policy_pos"]))
    if unroll is None:
        stacked = _loop(b, model, mode, h, state0, graph_seed, reads, policy)
    else:
        stacked = _unrolled(b, model, mode, unroll, state0, graph_seed, reads, policy)
    if offsets is not None:  # back to particle order: step t left particle p in scatter_idx[t][p]
        rows = b.op("Add", ["scatter_idx", offsets])
        for name, value in stacked.items():
            if name == "policy_action":  # in policy-particle order already
                continue
            flat = b.op("Reshape", [value, b.ints(-1, s) if name == "next_state" else b.ints(-1)])
            stacked[name] = b.op("Gather", [flat, rows], name, axis=0)
    acts = "act_steps"
    outputs = [helper.make_tensor_value_info("returns", FLOAT, ["M"])]
    if policy is not None:  # the actions the policy particles took, for the reward and caller
        b.nodes.append(helper.make_node("Identity", [stacked["policy_action"]], ["policy_actions"]))
        outputs.append(helper.make_tensor_value_info("policy_actions", FLOAT, ["H", "Mp", a]))
        taken = b.op("Transpose", ["policy_actions"], perm=[1, 0, 2])  # [Mp, H, A]
        rows = b.op("Unsqueeze", ["policy_particle", b.ints(1)])
        used = b.op("ScatterND", [act_particles, rows, taken])  # [M, H, A]
        acts = b.op("Transpose", [used], "acts", perm=[1, 0, 2])
    _returns(b, reward, mode, s, a, state0, stacked, acts, hm, h, policy)

    pessimism = mode == "mixed" and "reward_mean" in reads
    graph = helper.make_graph(
        b.nodes,
        f"tickmpc_rollout_{mode}",
        _inputs(model, mode, reward, device_random, pessimism, policy is not None),
        outputs,
        initializer=b.initializers,
    )
    parts = [model.proto]
    parts += [reward] if reward is not None else []
    parts += [policy.proto] if policy is not None else []
    opset = max(
        (o.version for p in parts for o in p.opset_import if o.domain == ""),
        default=20,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tickmpc"
    )
    proto.ir_version = max(p.ir_version for p in parts)
    return proto


def _model_reads(model: ModelGraph, reward: onnx.ModelProto | None) -> tuple[str, ...]:
    """The model outputs beyond the next state that the rollout uses with the task graph
    ``reward``: ``reward_mean`` where the task computes no reward, ``done_prob`` where it
    computes no termination and the model's is to be used (``model.predicts_done``)."""
    task = set() if reward is None else {o.name for o in reward.graph.output}
    reads: tuple[str, ...] = ()
    if "reward" not in task:
        if not model.predicts_reward:
            raise ValueError("no reward to plan on: the task's graph has none (the reward is "
                             "learned) and the model does not predict one")  # fmt: skip
        reads += ("reward_mean",)
    if "done" not in task and model.predicts_done:
        reads += ("done_prob",)
    missing = [n for n in reads if n not in {o.name for o in model.proto.graph.output}]
    if missing:
        raise ValueError(f"the model graph has no {' or '.join(missing)} output")
    return reads
