"""Writing ONNX graphs by hand: a builder that names nodes and constants uniquely and inlines
other graphs (an exported model or reward) under a prefix. The rollout graph
(:mod:`controller.rollout.graph`) is composed with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Builder:
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
        self,
        graph: onnx.GraphProto,
        prefix: str,
        inputs: Mapping[str, str],
        weights: str,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, str]:
        """Copy ``graph``'s nodes in under ``prefix``, its inputs bound to ``inputs``.

        Its initializers are named ``weights`` + their name, so inlining one graph several times
        (the unrolled graph) shares one copy. Returns the new names of the graph's outputs.
        ``outputs``: only those outputs are needed; the nodes and initializers nothing of them
        depends on are left out (and so are those outputs from the returned names).
        """
        nodes = list(graph.node) if outputs is None else _needed(graph, outputs)
        used = {x for node in nodes for x in node.input}
        rename = dict(inputs)
        for init in graph.initializer:
            if init.name not in used:
                continue
            shared = weights + init.name
            rename[init.name] = shared
            if shared not in self._shared:
                copy = onnx.TensorProto()
                copy.CopyFrom(init)
                copy.name = shared
                self.initializers.append(copy)
                self._shared.add(shared)
        for node in nodes:
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
        kept = [o.name for o in graph.output if outputs is None or o.name in outputs]
        return {name: rename.get(name, prefix + name) for name in kept}


def _needed(graph: onnx.GraphProto, outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` that ``outputs`` depend on, in graph order."""
    missing = set(outputs) - {o.name for o in graph.output}
    if missing:
        raise ValueError(f"the graph has no output {sorted(missing)}")
    wanted, keep = set(outputs), []
    for node in reversed(graph.node):
        if wanted.intersection(node.output):
            keep.append(node)
            wanted.update(x for x in node.input if x)
    return keep[::-1]
