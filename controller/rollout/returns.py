"""The returns of the rollout graph: from the particle-order trajectory to each particle row's
discounted return (the task's reward and termination or the model's, the disagreement penalty,
survival, discount, the policy's terminal value). See docs/planning.md, "The rollout graph".

Shapes: H horizon, M particle rows, E members, S observation, A action.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from controller.rollout.builder import Builder
from controller.rollout.parts import Mode, PolicyParts
from controller.tasks.export import INPUTS as REWARD_INPUTS

FLOAT = TensorProto.FLOAT


def over_members(b: Builder, mode: Mode, values: str, pessimism: bool) -> str:
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


def returns(
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
        step_reward = over_members(b, mode, stacked["reward_mean"], pessimism=True)
    if "disagreement" in stacked:
        step_reward = b.op("Sub", [step_reward, b.op("Mul", ["penalty", stacked["disagreement"]])])
    h_float = b.op("Cast", [h], to=FLOAT)
    powers = b.op("Range", [b.const(np.float32(0.0)), h_float, b.const(np.float32(1.0))])
    disc = b.op("Unsqueeze", [b.op("Pow", ["discount", powers]), b.ints(1)])  # [H, 1]
    gains = b.op("Mul", [step_reward, disc])
    if "done" in task:
        done = task["done"]
    elif "done_prob" in stacked:
        done = over_members(b, mode, stacked["done_prob"], pessimism=False)
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
