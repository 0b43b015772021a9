"""The per-step body of the rollout graph: one horizon step of the model (and the policy's
action for its particles), and the ``Loop`` that runs it over the horizon. See docs/planning.md,
"The rollout graph".

Shapes: M particle rows, Mp the policy's, S observation, A action, E members.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, helper

from controller.rollout.builder import Builder
from controller.rollout.parts import Mode, ModelGraph, PolicyParts

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL


def policy_step(
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


def model_step(
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
            u_rows, extras["policy_action"] = policy_step(
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
            act_t, extras["policy_action"] = policy_step(b, policy, t, state, act_t, seed, prefix)
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


def loop(
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
    :func:`model_step` stacked by the loop as scan outputs, under the same keys, with a
    leading H (``next_state [H, M, S]``, ``disagreement [H, M]``, ...)."""
    body = Builder("step/")
    step = model_step(body, model, mode, "iter", "state_in", "", seed, reads, policy)
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
