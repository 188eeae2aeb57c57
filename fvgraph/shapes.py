"""Shapes and dtypes of every value of a graph for one input signature, as the lowering needs them.

The lowered reverse pass is built once per input signature *without its batch size*, so that one graph (and
one onnxruntime session) serves every batch: dims that follow the batch are symbolic ("N"), all others
concrete. Two ways to learn them:

- `infer`: ONNX shape inference with data propagation on the graph's skeleton (no weights are read);
- `measure`: when inference leaves a dim the lowering needs unknown (shapes computed at run time in ways
  it cannot follow), fvgraph's executor runs the graph on zeros at batch 1 and 2 and dims that differ are
  the batch's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .errors import UnsupportedModelError

BATCH = "N"


class ShapeUnknown(UnsupportedModelError):
    """A dim the lowering needs is not known statically (raised inside fvgraph, answered by `measure`). Where
    even the measured shapes leave it open (a reduction over the batch axis), it reaches the caller: an
    UnsupportedModelError naming the value, never a traceback."""

    def __str__(self):
        value = self.args[0] if self.args else "?"
        return (f"the reverse pass needs the shape of {value!r} fixed, and it depends on the batch size (an op "
                "that reduces or reshapes across the batch axis); explaining this model is not supported")


@dataclass
class ShapeTable:
    dims: dict = field(default_factory=dict)      # value name -> tuple of int | str (symbolic) | None
    dtypes: dict = field(default_factory=dict)    # value name -> np.dtype
    constants: dict = field(default_factory=dict)  # values of shape-only nodes that do not follow the batch
    measured: bool = False

    def set(self, name, dims, dtype):
        self.dims[name] = None if dims is None else tuple(dims)
        if dtype is not None:
            self.dtypes[name] = np.dtype(dtype)


def complete(table: ShapeTable, graph, static: set[int]) -> bool:
    """Whether every value computed from the inputs has a known rank."""
    return all(table.dims.get(o) is not None for i, n in enumerate(graph.nodes) if i not in static
               for o in n.outputs if o)


def signature_dims(shape) -> tuple:
    """An input's dims with the batch axis symbolic."""
    return (BATCH,) + tuple(int(d) for d in shape[1:]) if len(shape) else ()


def infer(graph, input_dims: dict, constants: dict | None = None) -> ShapeTable:
    """constants: values of shape-only nodes already known (they make Pad sizes, Reshape targets computed
    from the input's shape concrete for the inference)."""
    table = ShapeTable()
    for k, a in graph.initializers.items():
        table.set(k, a.shape, a.dtype)
    for v in graph.inputs:
        table.set(v.name, input_dims.get(v.name, v.shape), v.dtype)
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(graph, input_dims, constants or {}), data_prop=True)
    except Exception:
        return table  # everything the lowering asks for will be measured
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = tuple((d.dim_value if d.dim_value >= 0 else None) if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tt.shape.dim)  # -1: a free dim (see onnx_import._dim)
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        except Exception:
            dtype = None
        table.set(vi.name, dims, dtype)
    return table


def _skeleton(graph, input_dims, constants) -> onnx.ModelProto:
    """The graph with its float weights declared as inputs (shapes only) and its small integer constants kept
    (shape inference follows them through Reshape, Slice, ...)."""
    from .graph import Graph, ValueInfo
    from .onnx_export import to_onnx
    small = {k: a for k, a in graph.initializers.items() if a.dtype.kind in "iub" and a.size <= 64}
    small.update({k: a for k, a in constants.items() if a.size <= 64})
    big = [ValueInfo(k, a.shape, a.dtype) for k, a in graph.initializers.items() if k not in small]
    nodes = [n for n in graph.nodes if not all(not o or o in small for o in n.outputs)]
    skeleton = Graph(nodes, small, list(graph.inputs) + big, graph.outputs, graph.opset)
    model, _ = to_onnx(skeleton, outputs=[], input_shapes=input_dims)
    return model


def _zeros(inputs, input_dims: dict, batch: int) -> dict:
    """Host zeros for each input at its signature's dims with the batch set to `batch`."""
    return {v.name: np.zeros([batch if d == BATCH else d for d in input_dims[v.name]], v.dtype or np.float32)
            for v in inputs}


def _batches(inputs) -> tuple:
    """The batch sizes shapes are measured at: 1 and 2 (what differs is the batch axis), or 1 alone for a
    model whose first input fixes its batch."""
    shape = inputs[0].shape if inputs else None
    return (1,) if shape and isinstance(shape[0], (int, np.integer)) else (1, 2)


def _recorded(executor, feeds: dict) -> dict:
    """(shape, dtype) of every value the executor computes from these feeds."""
    record = {}
    used = {v for n in executor.graph.nodes for v in n.inputs}
    sinks = [o for n in executor.graph.nodes for o in n.outputs if o and o not in used]
    executor.run(feeds, sinks, record=record)
    return record


def static_constants(executor, inputs, input_dims: dict) -> dict:
    """Values of the shape-only nodes (pad sizes computed from the input's shape, ...) that are the same at
    batch 1 and 2: for the lowering they are constants."""
    runs = [executor.static_values(_zeros(inputs, input_dims, batch)) for batch in _batches(inputs)]
    g = executor.graph
    missing = [o for i in sorted(executor.static) for o in g.nodes[i].outputs if o and o not in runs[0]]
    if missing:  # shapes of activations (TF-"same" pads computed layer by layer): run the model on zeros
        to_device = executor.backend.to_device
        runs = [{**r, **{k: executor.backend.to_host(v) for k, v in executor.run(
            {k: to_device(a) for k, a in _zeros(inputs, input_dims, batch).items()}, missing).values.items()
            if k in missing}} for r, batch in zip(runs, _batches(inputs))]
    runs = [{k: np.asarray(executor.backend.to_host(v)) for k, v in r.items()} for r in runs]  # CuPy: on the host
    runs = runs * (3 - len(runs))
    return {k: v for k, v in runs[0].items()
            if k in runs[1] and np.shape(v) == np.shape(runs[1][k]) and np.array_equal(v, runs[1][k])}


def concrete(executor, feeds: dict) -> ShapeTable:
    """Every value's dims in one run of these feeds, all concrete (no batch axis: single-op tests, graphs
    whose inputs share no batch)."""
    record = _recorded(executor, feeds)
    table = ShapeTable(measured=True)
    for k, a in list(executor.graph.initializers.items()) + list(feeds.items()):
        table.set(k, np.shape(a), np.asarray(a).dtype)
    for name, (shape, dtype) in record.items():
        table.set(name, shape, dtype)
    return table


def measure(executor, inputs, input_dims: dict) -> ShapeTable:
    """Run the executor on zeros at batch 1 and 2 and record every value's shape."""
    to_device = executor.backend.to_device
    runs = [_recorded(executor, {k: to_device(a) for k, a in _zeros(inputs, input_dims, batch).items()})
            for batch in _batches(inputs)]
    table = ShapeTable(measured=True)
    for k, a in executor.graph.initializers.items():
        table.set(k, a.shape, a.dtype)
    for v in inputs:
        table.set(v.name, input_dims[v.name], v.dtype)
    for name, (shape1, dtype) in runs[0].items():
        shape2 = runs[-1].get(name, (shape1, dtype))[0]
        dims = shape1 if len(shape1) != len(shape2) else \
            tuple(a if a == b else BATCH for a, b in zip(shape1, shape2))
        table.set(name, dims, dtype)
    return table
