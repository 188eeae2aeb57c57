"""Runs a Graph forward and records what the reverse pass needs.

- Kernels are built once per node at load; every unsupported op type (with its nodes) and every unsupported
  attribute is reported in one UnsupportedModelError before anything runs.
- Shape-computing subgraphs (Shape -> Gather -> Concat -> Reshape, TF-style pad sizes) depend only on the
  input shapes: they are computed on the first run for a given input signature and then reused as constants.
- Only the nodes needed for the requested values run. Without `keep`, a value is dropped after its last use,
  so peak memory stays near the largest few activations; with `keep`, the Tape holds every value.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .backend import Backend
from .errors import ExecutionError, FvGraphError, ModelLoadError, UnsupportedModelError
from .graph import Graph
from .ops import REGISTRY, build_kernel

SHAPE_OPS = {"Shape", "Size"}


@dataclass
class Tape:
    """Values of one forward run (name -> array) and the nodes that ran, in order."""
    values: dict
    nodes: list = field(default_factory=list)  # indices into graph.nodes


def shape_only_nodes(graph: Graph) -> set[int]:
    """Indices of nodes whose outputs depend on constants and input *shapes* only (not on input values)."""
    static_vals = set(graph.initializers)
    static = set()
    for i, n in enumerate(graph.nodes):
        if n.op_type in SHAPE_OPS or all(not v or v in static_vals for v in n.inputs):
            static.add(i)
            static_vals.update(o for o in n.outputs if o)
    return static


class Executor:
    def __init__(self, graph: Graph, backend: Backend):
        self.graph, self.backend = graph, backend
        self.kernels = self._build_kernels()
        self.constants = {k: backend.to_device(v) for k, v in graph.initializers.items()}
        self.static = shape_only_nodes(graph)
        self._static_cache: OrderedDict = OrderedDict()
        self._plans: dict = {}
        self.producer_index = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}

    def _build_kernels(self):
        missing: dict[str, list[str]] = {}
        problems: list[str] = []
        kernels = []
        for n in self.graph.nodes:
            if n.op_type not in REGISTRY:
                missing.setdefault(n.op_type, []).append(n.name)
                kernels.append(None)
                continue
            try:
                kernels.append(build_kernel(n))
            except UnsupportedModelError as e:
                problems.append(str(e))
                kernels.append(None)
            except Exception as e:  # attributes of the wrong type or value: a malformed model
                raise ModelLoadError(f"node {n.name!r} ({n.op_type}) has malformed attributes "
                                     f"({type(e).__name__}: {e})") from None
        if missing or problems:
            lines = [f"  {op}: {len(names)} node(s): {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                     for op, names in sorted(missing.items())]
            msg = []
            if missing:
                msg.append(f"unsupported op type(s) {', '.join(sorted(missing))}:\n" + "\n".join(lines))
            if problems:
                msg.append("unsupported attribute(s):\n" + "\n".join("  " + p for p in problems))
            raise UnsupportedModelError("this model uses what fvgraph does not support: " + "\n".join(msg)
                                        + "\n(run `fvgraph info MODEL` for the full layer table)")
        return kernels

    def plan(self, wanted: tuple[str, ...]):
        """Node indices needed for `wanted`, and for each value the index of its last use."""
        if wanted not in self._plans:
            need = set(wanted)
            order = []
            for i in range(len(self.graph.nodes) - 1, -1, -1):
                n = self.graph.nodes[i]
                if any(o in need for o in n.outputs):
                    order.append(i)
                    need.update(v for v in n.inputs if v)
            order.reverse()
            last_use = {}
            for step, i in enumerate(order):
                for v in self.graph.nodes[i].inputs:
                    if v:
                        last_use[v] = step
            self._plans[wanted] = (order, last_use)
        return self._plans[wanted]

    def run(self, feeds: dict, wanted: list[str], keep: bool = False) -> Tape:
        with np.errstate(all="ignore"):  # NaN/inf propagate silently, as in onnxruntime
            return self._run(feeds, wanted, keep)

    def _run(self, feeds: dict, wanted: list[str], keep: bool) -> Tape:
        signature = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(feeds.items()))
        cached = self._static_cache.get(signature)
        fresh = cached is None
        if fresh:
            cached = {}
        values = dict(self.constants)
        values.update(feeds)
        order, last_use = self.plan(tuple(wanted))
        keep_names = set(wanted)
        ran = []
        for step, i in enumerate(order):
            node = self.graph.nodes[i]
            if i in self.static and not fresh and all(o in cached for o in node.outputs if o):
                for o in node.outputs:
                    if o:
                        values[o] = cached[o]
                continue
            args = [values[v] if v else None for v in node.inputs]
            try:
                outs = self.kernels[i].forward(*args)
            except FvGraphError:
                raise
            except Exception as e:
                shapes = ", ".join(str(tuple(a.shape)) if a is not None else "-" for a in args)
                raise ExecutionError(f"node {node.name!r} ({node.op_type}) failed on inputs of shape [{shapes}]: "
                                     f"{type(e).__name__}: {e}") from None
            ran.append(i)
            for o, v in zip(node.outputs, outs):
                if o:
                    values[o] = v
                    if i in self.static:
                        cached[o] = v
            if not keep:
                for v in node.inputs:
                    if v and last_use.get(v) == step and v not in keep_names and v not in self.constants:
                        values.pop(v, None)
        if fresh:
            self._static_cache[signature] = cached
            while len(self._static_cache) > 8:
                self._static_cache.popitem(last=False)
        if not keep:
            values = {k: values[k] for k in wanted}
        return Tape(values, ran)
