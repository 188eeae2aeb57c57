"""fvgraph's own layer graph (the IR): nodes in topological order, initializers, inputs and outputs.

The importer normalizes every opset difference into this one form, so kernels and rules see a single
version of each op: operands that older opsets passed as attributes (Clip min/max, Pad pads, Squeeze axes,
Split sizes, Slice starts/ends, Reduce axes, Resize scales) are node *inputs* here, as in the newest opset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]          # "" marks an omitted optional input
    outputs: list[str]         # "" marks an omitted optional output
    attrs: dict[str, Any] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class ValueInfo:
    name: str
    shape: tuple | None        # ints for fixed dims, str (or None) for symbolic ones; None if rank unknown
    dtype: np.dtype | None

    def describe(self) -> str:
        if self.shape is None:
            return "?"
        return "(" + ", ".join(str(d) if d is not None else "?" for d in self.shape) + ")"


@dataclass
class Layer:
    """What a user points at: one node output, addressable by index, node name or value name."""
    index: int
    name: str
    op_type: str
    output: str
    shape: tuple | None
    params: int


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    opset: int = 0
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    value_info: dict[str, ValueInfo] = field(default_factory=dict)
    weight_files: dict = field(default_factory=dict)  # initializer name -> FileRef: weights left in their file

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]


def unique_name(base: str, taken: set) -> str:
    """base, or base_1, base_2, ...: the first not in `taken` (which then holds it)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def topological_order(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's algorithm keeping the file's order among ready nodes; raises ValueError on a cycle or a
    dangling input (the importer turns that into a readable error)."""
    produced = {o: n for n in nodes for o in n.outputs if o}
    missing = sorted({i for n in nodes for i in n.inputs if i and i not in produced and i not in available})
    if missing:
        users = [n.name for n in nodes if any(i in missing for i in n.inputs)]
        raise ValueError(f"value(s) {missing[:5]} are used by node(s) {users[:5]} but never defined")
    indegree = {id(n): sum(1 for i in n.inputs if i and i in produced) for n in nodes}
    users: dict[str, list[Node]] = {}
    for n in nodes:
        for i in n.inputs:
            if i and i in produced:
                users.setdefault(i, []).append(n)
    position = {id(n): k for k, n in enumerate(nodes)}
    import heapq
    ready = [(position[id(n)], id(n), n) for n in nodes if indegree[id(n)] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, n = heapq.heappop(ready)
        order.append(n)
        for o in n.outputs:
            for u in users.get(o, []):
                indegree[id(u)] -= 1
                if indegree[id(u)] == 0:
                    heapq.heappush(ready, (position[id(u)], id(u), u))
    if len(order) != len(nodes):
        stuck = [n.name for n in nodes if indegree[id(n)] > 0]
        raise ValueError(f"the graph has a cycle through node(s) {stuck[:5]}")
    return order
