"""fvgraph's own engine: runs any Graph (a model, or a model with its reverse pass lowered into it) on NumPy or
CuPy. It is the reference onnxruntime is tested against, and the engine of incremental occlusion.

- Kernels are built once per node at load; every unsupported op type (with its nodes) and every unsupported
  attribute is reported in one UnsupportedModelError before anything runs.
- Shape-computing subgraphs (Shape -> Gather -> Concat -> Reshape, TF-style pad sizes) depend only on the
  input shapes: they are computed on the first run for a given input signature and then reused as constants.
- Only the nodes needed for the requested values run. Without `keep`, a value is dropped after its last use,
  so peak memory stays near the largest few activations; with `keep`, the Tape holds every value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import Backend, xp_of
from .errors import ExecutionError, FvGraphError, ModelLoadError, UnsupportedModelError
from .graph import Graph
from .lru import LRU
from .ops import REGISTRY, build_kernel
from .ops.norm import conv_parameters

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


class _Unsupported:
    """The kernel of a node fvgraph cannot run (a model that onnxruntime runs and fvgraph's executor does not):
    whatever uses it (a run on the executor, a reverse pass through it) gets the load's UnsupportedModelError."""

    def __init__(self, message: str):
        self.message = message

    def __getattr__(self, name):
        raise UnsupportedModelError(self.message)


class Executor:
    def __init__(self, graph: Graph, backend: Backend, shared: dict | None = None, strict: bool = True):
        """shared: device copies of constants another executor already holds (a lowered graph shares the
        model's weights). strict: unsupported ops are an error now; else `unsupported` says which (or is
        None) and their nodes fail only when something runs or differentiates them."""
        self.graph, self.backend = graph, backend
        self.unsupported = None
        self.kernels = self._build_kernels(strict)
        shared = shared or {}
        self.constants = {k: shared[k] if k in shared else backend.to_device(v) for k, v in graph.initializers.items()}
        self._aligned = False
        self.static = shape_only_nodes(graph)
        self._static_cache = LRU(8)  # input signature -> the shape-only values
        self._plans: dict = {}
        self._conv_weights: dict = {}
        self.producer_index = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        self.node_index = {id(n): i for i, n in enumerate(graph.nodes)}

    def _build_kernels(self, strict=True):
        missing: dict[str, list[str]] = {}
        problems: list[str] = []
        kernels = []
        for n in self.graph.nodes:
            if n.op_type not in REGISTRY:
                missing.setdefault(n.op_type, []).append(n.name)
                kernels.append(None)
                continue
            try:
                kernel = build_kernel(n)
            except UnsupportedModelError as e:
                problems.append(str(e))
                kernels.append(None)
                continue
            except Exception as e:  # attributes of the wrong type or value: a malformed model
                raise ModelLoadError(f"node {n.name!r} ({n.op_type}) has malformed attributes "
                                     f"({type(e).__name__}: {e})") from None
            try:
                kernel.check(self.graph.initializers)
            except FvGraphError:
                raise
            except Exception as e:  # weights that do not fit their op: a malformed model
                raise ModelLoadError(f"node {n.name!r} ({n.op_type}) is inconsistent: {e}") from None
            kernels.append(kernel)
        if missing or problems:
            lines = [f"  {op}: {len(names)} node(s): {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                     for op, names in sorted(missing.items())]
            msg = []
            if missing:
                msg.append(f"unsupported op type(s) {', '.join(sorted(missing))}:\n" + "\n".join(lines))
            if problems:
                msg.append("unsupported attribute(s):\n" + "\n".join("  " + p for p in problems))
            message = ("this model uses what fvgraph does not support: " + "\n".join(msg)
                       + "\n(run `fvgraph info MODEL` for the full layer table)")
            if strict:
                raise UnsupportedModelError(message)
            self.unsupported = message
            self.unsupported_summary = "; ".join(
                [f"{op} ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''})" for op, names in sorted(missing.items())]
                + [p.splitlines()[0] for p in problems])
            kernels = [k if k is not None else _Unsupported(message) for k in kernels]
        return kernels

    def plan(self, wanted: tuple[str, ...], fuse: bool = False):
        """Steps needed for `wanted` (node index, Fusion or None) and each value's last step of use."""
        key = (wanted, fuse)
        if key not in self._plans:
            need = set(wanted)
            order = []
            for i in range(len(self.graph.nodes) - 1, -1, -1):
                n = self.graph.nodes[i]
                if any(o in need for o in n.outputs):
                    order.append(i)
                    need.update(v for v in n.inputs if v)
            order.reverse()
            fusions = self._fusions(order, set(wanted)) if fuse else {}
            absorbed = {j for f in fusions.values() for j in f.absorbed}
            steps = [(i, fusions.get(i)) for i in order if i not in absorbed]
            last_use = {}
            for step, (i, f) in enumerate(steps):
                for v in (f.inputs if f else self.graph.nodes[i].inputs):
                    if v:
                        last_use[v] = step
            self._plans[key] = (steps, last_use)
        return self._plans[key]

    def _fusions(self, order, wanted) -> dict:
        """Forward-only fusion: Conv -> BatchNormalization (folded into the weights) -> Relu/Clip (applied in
        place). Only where the intermediate values are not asked for and have no other consumer."""
        consumers = self.graph.consumers()
        outputs = set(self.graph.output_names()) | wanted
        in_plan = set(order)
        nodes = self.graph.nodes

        def sole_consumer(value):
            users = consumers.get(value, [])
            if value in outputs or len(users) != 1:
                return None
            j = self.node_index[id(users[0])]
            return j if j in in_plan and j not in self.static else None

        fusions = {}
        for i in order:
            n = nodes[i]
            if n.op_type != "Conv" or i in self.static or not all(v in self.constants for v in n.inputs[1:] if v):
                continue
            f = Fusion(i, n)
            j = sole_consumer(n.outputs[0])
            if j is not None and nodes[j].op_type == "BatchNormalization" and len(nodes[j].outputs) == 1 \
                    and all(v in self.constants for v in nodes[j].inputs[1:]):
                f.bn = j
                j = sole_consumer(nodes[j].outputs[0])
            if j is not None and (nodes[j].op_type == "Relu" or nodes[j].op_type == "Clip" and
                                  all(not v or v in self.constants for v in nodes[j].inputs[1:])):
                f.act = j
            if f.bn is not None or f.act is not None:
                f.finish(nodes)
                fusions[i] = f
        return fusions

    def aligned_constants(self) -> dict:
        """The constants, each misaligned weight copied once to aligned memory. Weights are views of the
        mapped .onnx file, where raw_data lies at any byte offset, and NumPy's matmul leaves BLAS for a slow
        loop on misaligned arrays (VGG-16's forward: 4x slower). Done at this executor's first run, so a model
        that only onnxruntime runs keeps its weights zero-copy."""
        if not self._aligned:
            self.constants = {k: np.require(v, requirements="A") if isinstance(v, np.ndarray) else v
                              for k, v in self.constants.items()}
            self._aligned = True
        return self.constants

    def run(self, feeds: dict, wanted: list[str], keep: bool = False, record: dict | None = None) -> Tape:
        """Compute `wanted` from `feeds`. keep: hold every value in the Tape; record: a dict to fill with
        (shape, dtype) of every value computed."""
        with np.errstate(all="ignore"):  # NaN/inf propagate silently, as in onnxruntime
            return self._run(feeds, wanted, keep, record)

    def _run(self, feeds: dict, wanted: list[str], keep: bool, record: dict | None) -> Tape:
        signature = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(feeds.items()))
        cached = self._static_cache.get(signature)
        fresh = cached is None
        if fresh:
            cached = {}
        values = dict(self.aligned_constants())
        values.update(feeds)
        steps, last_use = self.plan(tuple(wanted), fuse=not keep and record is None)
        keep_names = set(wanted)
        ran = []
        for step, (i, fusion) in enumerate(steps):
            node = self.graph.nodes[i]
            if fusion is not None:
                try:
                    values[fusion.output] = fusion.run(self, values)
                except FvGraphError:
                    raise
                except Exception as e:  # the fused Conv (+ BatchNormalization + activation) of a malformed model
                    x = values.get(node.inputs[0])
                    raise ExecutionError(f"node {node.name!r} ({node.op_type}) failed on an input of shape "
                                         f"{tuple(np.shape(x))}: {type(e).__name__}: {e}") from None
                ran.append(i)
                self._release(fusion.inputs, step, last_use, keep_names, values)
                continue
            if i in self.static and not fresh and all(o in cached for o in node.outputs if o):
                for o in node.outputs:
                    if o:
                        values[o] = cached[o]
                        if record is not None:
                            record[o] = (tuple(np.shape(cached[o])), cached[o].dtype)
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
                    if record is not None:
                        record[o] = (tuple(v.shape), v.dtype)
            if not keep:
                self._release(node.inputs, step, last_use, keep_names, values)
        if fresh:
            self._static_cache.put(signature, cached)
        if not keep:
            values = {k: values[k] for k in wanted}
        return Tape(values, ran)

    def static_values(self, feeds: dict) -> dict:
        """The values of the shape-only nodes (they read their inputs' shapes, never their values, so the
        feeds may be zero-strided dummies of the right shape)."""
        values = dict(self.constants)
        values.update(feeds)
        out = {}
        for i in sorted(self.static):
            node = self.graph.nodes[i]
            if not all(not v or v in values for v in node.inputs):
                continue
            try:
                outs = self.kernels[i].forward(*[values[v] if v else None for v in node.inputs])
            except Exception:
                continue
            for o, v in zip(node.outputs, outs):
                if o:
                    values[o] = out[o] = v
        return out

    def conv_weights(self, conv: int, bn: int | None = None):
        """A Conv's constant weight and bias, with a following BatchNormalization folded in when given;
        computed once (the fused Conv+BN+activation steps of every run)."""
        key = (conv, bn)
        if key not in self._conv_weights:
            nodes = self.graph.nodes
            self._conv_weights[key] = conv_parameters(nodes[conv], self.constants, None if bn is None else nodes[bn],
                                                      None if bn is None else self.kernels[bn])
        return self._conv_weights[key]

    def _release(self, names, step, last_use, keep_names, values):
        for v in names:
            if v and last_use.get(v) == step and v not in keep_names and v not in self.constants:
                values.pop(v, None)


class Fusion:
    """Conv [-> BatchNormalization] [-> Relu | Clip] run as one step: BN folded into the conv's weights
    (computed once), the activation applied in place on the fresh conv output."""

    def __init__(self, conv: int, node):
        self.conv, self.node = conv, node
        self.bn = self.act = None

    def finish(self, nodes):
        self.absorbed = [j for j in (self.bn, self.act) if j is not None]
        last = nodes[self.absorbed[-1]]
        self.output = last.outputs[0]
        self.inputs = list(self.node.inputs) + [v for j in self.absorbed for v in nodes[j].inputs[1:]]
        self.act_node = nodes[self.act] if self.act is not None else None

    def run(self, ex, values):
        w, b = ex.conv_weights(self.conv, self.bn)
        y = ex.kernels[self.conv].forward(values[self.node.inputs[0]], w, b)[0]
        if self.act_node is not None:
            xp = xp_of(y)
            if self.act_node.op_type == "Relu":
                xp.maximum(y, y.dtype.type(0), out=y)
            else:
                lo, hi = (values[v] if v else None for v in (self.act_node.inputs + ["", ""])[1:3])
                ex.kernels[self.act].forward_inplace(y, lo, hi)
        return y
