"""Build the rollout graph: a whole horizon of ensemble propagation and reward in one ONNX run,
composed by graph surgery from the dynamics model file and the task's reward graph
(:mod:`controller.tasks.export`), with an optional policy. Its inputs, modes and outputs are
specified in docs/planning.md, "The rollout graph"; the per-step body is in
:mod:`controller.rollout.step`, the returns in :mod:`controller.rollout.returns`.

Shapes: N candidates, H horizon, A action, S observation, E members, M particle rows (N x P,
padded to a multiple of E in routed mode), T reward terms.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from controller.rollout.builder import Builder
from controller.rollout.parts import MODES, Mode, ModelGraph, PolicyParts
from controller.rollout.returns import returns
from controller.rollout.step import loop
from controller.rollout.unrolled import unrolled

__all__ = ["MODES", "Mode", "ModelGraph", "PolicyParts", "build_rollout_graph"]

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


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
    """Compose the rollout graph for ``mode`` (see docs/planning.md, "The rollout graph").

    ``reward`` is the task's graph (:func:`controller.tasks.export.export_reward`):
    what it computes (``reward``, ``done``) is used, and the model's ``reward_mean`` and
    ``done_prob`` stand in for what it does not (None: it computes neither). Raises ValueError
    when neither gives a reward.

    ``device_random=True`` makes the graph draw its own sampling noise and (routed) member
    orders with ONNX random ops seeded from ``seed``, so that on a GPU they never cross the
    bus: the ``noise``, ``gather_idx`` and ``scatter_idx`` inputs give way to ``noise_scale
    []`` (1.0 to sample, 0.0 to follow the means) and ``redraw []`` (1.0: a new order every
    step, TS1; 0.0: one order for the horizon, TS-infinity).

    ``policy`` adds the policy particles and the terminal value:
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
        stacked = loop(b, model, mode, h, state0, graph_seed, reads, policy)
    else:
        stacked = unrolled(b, model, mode, unroll, state0, graph_seed, reads, policy)
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
    returns(b, reward, mode, s, a, state0, stacked, acts, hm, h, policy)

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
