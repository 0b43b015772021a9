"""Build the rollout graph: a whole horizon of ensemble propagation and task reward in one ONNX run.

The graph is composed by graph surgery from two exported graphs: the dynamics model file (as the
learner publishes it) and the task's reward graph (:mod:`controller.rollout.reward_graph`). Their
nodes are copied, with prefixed names, into the body of an ONNX ``Loop`` whose trip count is the
horizon of the ``actions`` input. So:

- the horizon is a run-time property of the input, not of the graph: a live horizon change
  needs no new graph (measured against graphs unrolled per horizon in
  ``benchmarks/plan_latency.py``);
- a new model version needs no torch: composing and loading takes milliseconds, off the hot
  path, and the model file stays the single source of the weights.

Shapes: N candidates, H horizon, A action, S observation, E members, M particle rows (N x P,
padded to a multiple of E in routed mode), T reward terms.

Inputs (both modes): ``obs [S]`` the current state; ``actions [N, H, A]``; ``particle_candidate
[M]`` int64, which candidate each particle row follows; ``noise [H, M, S]`` standard normal
draws for sampling the next state (zeros for mean propagation); ``weights [T]``; ``discount []``.

- ``routed`` mode (TS1 and TS-infinity): each particle row goes through exactly one member, so
  a step costs M member-rows. ``gather_idx [H, M]`` int64 orders the particle rows at each step
  so that consecutive blocks of M / E rows go to members 0..E-1; ``scatter_idx [H, M]`` is its
  inverse permutation. TS1 draws a new permutation per step, TS-infinity repeats one.
- ``mixed`` mode (expectation, or any propagation with a disagreement penalty): every member
  sees every particle row (E x M member-rows per step). ``member_weight [H, E, M]`` mixes the
  members' Gaussians (1/E each for expectation, one-hot for TS1/TS-infinity). The ensemble
  disagreement, the variance of the members' means divided by ``inv_scale2 [S]``-weighted
  state scales and averaged over S, is subtracted from the reward times ``penalty []``.

Output: ``returns [M]``, the discounted sum of rewards per particle row; rewards after a
terminal state count zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from controller.rollout.reward_graph import INPUTS as REWARD_INPUTS

Mode = Literal["routed", "mixed"]
MODES: tuple[Mode, ...] = ("routed", "mixed")
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


@dataclass(frozen=True)
class ModelGraph:
    """The parts of a dynamics model file the rollout needs."""

    proto: onnx.ModelProto
    members: int
    obs_dim: int
    act_dim: int
    member_batched: bool
    """Inputs are [E, B, ...] (each member its own rows) rather than [B, ...] shared."""


class _Builder:
    """Collects nodes and constants under unique names."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._shared: set[str] = set()

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}{hint}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value: np.ndarray | np.generic, hint: str = "c") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def inline(
        self, graph: onnx.GraphProto, prefix: str, inputs: Mapping[str, str], weights: str
    ) -> dict[str, str]:
        """Copy ``graph``'s nodes in under ``prefix``, its inputs bound to ``inputs``.

        Its initializers are named ``weights`` + their name, so inlining one graph several times
        (the unrolled graph) shares one copy. Returns the new names of the graph's outputs.
        """
        rename = dict(inputs)
        for init in graph.initializer:
            shared = weights + init.name
            rename[init.name] = shared
            if shared not in self._shared:
                copy = onnx.TensorProto()
                copy.CopyFrom(init)
                copy.name = shared
                self.initializers.append(copy)
                self._shared.add(shared)
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):  # fmt: skip
                raise ValueError(f"cannot inline {node.op_type}: nested graphs are not supported")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            del copy.output[:]
            copy.input.extend(rename.get(x, prefix + x) if x else "" for x in node.input)
            copy.output.extend(prefix + x if x else "" for x in node.output)
            copy.name = prefix + node.name
            self.nodes.append(copy)
        return {o.name: rename.get(o.name, prefix + o.name) for o in graph.output}


def _step(
    b: _Builder,
    model: ModelGraph,
    reward: onnx.ModelProto,
    mode: Mode,
    t: str,
    state: str,
    ret: str,
    alive: str,
    disc: str,
    prefix: str,
) -> tuple[str, str, str, str]:
    """Nodes of one horizon step; returns the names of (state, ret, alive, disc) after it."""
    e, s, a = model.members, model.obs_dim, model.act_dim
    act_t = b.op("Gather", ["act_particles", t], "act_t", axis=1)  # [M, A]
    noise_t = b.op("Gather", ["noise", t], "noise_t", axis=0)  # [M, S]
    if mode == "routed":
        order = b.op("Gather", ["gather_idx", t], "order", axis=0)  # [M]
        back = b.op("Gather", ["scatter_idx", t], "back", axis=0)
        x = b.op("Reshape", [b.op("Gather", [state, order], axis=0), b.ints(e, -1, s)])
        u = b.op("Reshape", [b.op("Gather", [act_t, order], axis=0), b.ints(e, -1, a)])
        out = b.inline(model.proto.graph, prefix + "model/", {"obs": x, "act": u}, "model/")
        flat = b.ints(-1, s)
        mean = b.op("Gather", [b.op("Reshape", [out["next_obs_mean"], flat]), back], axis=0)
        logvar = b.op("Gather", [b.op("Reshape", [out["next_obs_logvar"], flat]), back], axis=0)
        std = b.op("Exp", [b.op("Mul", [logvar, b.const(np.float32(0.5))])], "std")
        disagreement = None
    else:
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
        disagreement = b.op("ReduceMean", [scaled, b.ints(1)], "disagreement", keepdims=0)
    nxt = b.op("Add", [mean, b.op("Mul", [std, noise_t])], "next_state")
    bind = dict(zip(REWARD_INPUTS, (state, act_t, nxt, "weights"), strict=True))
    r = b.inline(reward.graph, prefix + "reward/", bind, "reward/")
    step_reward = r["reward"]
    if disagreement is not None:
        step_reward = b.op("Sub", [step_reward, b.op("Mul", ["penalty", disagreement])])
    gain = b.op("Mul", [b.op("Mul", [step_reward, alive]), disc])
    new_ret = b.op("Add", [ret, gain], "ret")
    new_alive = b.op("Mul", [alive, b.op("Sub", [b.const(np.float32(1.0)), r["done"]])], "alive")
    new_disc = b.op("Mul", [disc, "discount"], "disc")
    return nxt, new_ret, new_alive, new_disc


def _inputs(model: ModelGraph, mode: Mode, terms: int) -> list[onnx.ValueInfoProto]:
    e, s, a = model.members, model.obs_dim, model.act_dim
    info = helper.make_tensor_value_info
    inputs = [
        info("obs", FLOAT, [s]),
        info("actions", FLOAT, ["N", "H", a]),
        info("particle_candidate", INT64, ["M"]),
        info("noise", FLOAT, ["H", "M", s]),
        info("weights", FLOAT, [terms]),
        info("discount", FLOAT, []),
    ]
    if mode == "routed":
        inputs += [info("gather_idx", INT64, ["H", "M"]), info("scatter_idx", INT64, ["H", "M"])]
    else:
        inputs += [
            info("member_weight", FLOAT, ["H", e, "M"]),
            info("penalty", FLOAT, []),
            info("inv_scale2", FLOAT, [s]),
        ]
    return inputs


def build_rollout_graph(
    model: ModelGraph, reward: onnx.ModelProto, mode: Mode, *, unroll: int | None = None
) -> onnx.ModelProto:
    """Compose the rollout graph for ``mode`` (see the module docstring).

    ``unroll=H`` builds a straight-line graph for exactly horizon H instead of the ``Loop``;
    it exists only so the benchmark can measure what the loop costs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "routed" and not model.member_batched:
        raise ValueError("routed mode needs a member-batched model ([E, B, ...] inputs)")
    terms = next(i for i in reward.graph.input if i.name == "weights")
    n_terms = terms.type.tensor_type.shape.dim[0].dim_value
    outer = _Builder("outer/")
    outer.nodes.append(
        helper.make_node("Gather", ["actions", "particle_candidate"], ["act_particles"], axis=0)
    )
    m_shape = outer.op("Shape", ["particle_candidate"])
    state_shape = outer.op("Concat", [m_shape, outer.ints(model.obs_dim)], axis=0)
    state0 = outer.op("Expand", [outer.op("Unsqueeze", ["obs", outer.ints(0)]), state_shape])
    zero = numpy_helper.from_array(np.zeros(1, np.float32))
    one = numpy_helper.from_array(np.ones(1, np.float32))
    ret0 = outer.op("ConstantOfShape", [m_shape], "ret0", value=zero)
    alive0 = outer.op("ConstantOfShape", [m_shape], "alive0", value=one)
    disc0 = outer.const(np.float32(1.0), "disc0")

    if unroll is None:
        body = _Builder("step/")
        loop_vars = ("state_in", "ret_in", "alive_in", "disc_in")
        outs = _step(body, model, reward, mode, "iter", *loop_vars, prefix="")
        cond_out = body.op("Identity", ["cond_in"], "cond_out")
        info = helper.make_tensor_value_info
        body_graph = helper.make_graph(
            body.nodes,
            "rollout_step",
            [info("iter", INT64, []), info("cond_in", TensorProto.BOOL, [])]
            + [info(n, FLOAT, None) for n in loop_vars],
            [info(cond_out, TensorProto.BOOL, [])] + [info(n, FLOAT, None) for n in outs],
            initializer=body.initializers,
        )
        horizon = outer.op(
            "Gather", [outer.op("Shape", ["actions"]), outer.const(np.int64(1))], "horizon"
        )
        loop = helper.make_node(
            "Loop",
            [horizon, "", state0, ret0, alive0, disc0],
            ["final_state", "returns", "final_alive", "final_disc"],
            body=body_graph,
        )
        outer.nodes.append(loop)
    else:
        state, ret, alive, disc = state0, ret0, alive0, disc0
        for step in range(unroll):
            t = outer.const(np.int64(step), "t")
            state, ret, alive, disc = _step(
                outer, model, reward, mode, t, state, ret, alive, disc, prefix=f"s{step}/"
            )
        outer.nodes.append(helper.make_node("Identity", [ret], ["returns"]))

    graph = helper.make_graph(
        outer.nodes,
        f"tickmpc_rollout_{mode}",
        _inputs(model, mode, n_terms),
        [helper.make_tensor_value_info("returns", FLOAT, ["M"])],
        initializer=outer.initializers,
    )
    opset = max(
        (o.version for p in (model.proto, reward) for o in p.opset_import if o.domain == ""),
        default=20,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tickmpc"
    )
    proto.ir_version = model.proto.ir_version
    return proto
