"""The graph fvgraph explains, beside the model as written: a twin where onnxruntime's fused and quantized
operators are standard ops (fvgraph.decompose) and half precision is widened to float32.

onnxruntime's CPU provider lacks float16 kernels for ops the reverse pass needs (ScatterElements with
reduction="add" for max pooling, ConvTranspose, ...), and half-precision gradients underflow. So a float16 model
gets a twin with every float16 weight, value, Cast and attribute widened to float32 (each float16 number is
exactly a float32 one): every method runs on the twin, so its maps equal the float32 model's with the weights
rounded to half. `Model.run` keeps running the model as written, equal to onnxruntime's own float16 forward.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .graph import Graph, Node, ValueInfo

HALF = np.dtype(np.float16)


def _widen(dtype):
    return np.dtype(np.float32) if dtype is not None and np.dtype(dtype) == HALF else dtype


def _attr(v):
    if isinstance(v, np.ndarray) and v.dtype == HALF:
        return v.astype(np.float32)
    return v


def explainable_twin(graph: Graph) -> Graph | None:
    """The graph with its fused/quantized operators decomposed and its float16 widened to float32, or None
    when it has neither (then the model is its own twin)."""
    from .decompose import decompose_nodes
    halves = [k for k, a in graph.initializers.items() if a.dtype == HALF]
    io = [v for v in graph.inputs + graph.outputs if v.dtype is not None and np.dtype(v.dtype) == HALF]
    casts = [n for n in graph.nodes if n.op_type == "Cast" and int(n.attr("to", 0)) == TensorProto.FLOAT16]
    inits = dict(graph.initializers)
    decomposed = decompose_nodes(graph, inits)
    if not (halves or io or casts) and decomposed is None:
        return None
    inits = {k: (a.astype(np.float32) if a.dtype == HALF else a) for k, a in inits.items()}
    nodes = []
    for n in decomposed or graph.nodes:
        attrs = {k: _attr(v) for k, v in n.attrs.items()}
        for key in ("to", "output_dtype"):
            if int(attrs.get(key, 0) or 0) == TensorProto.FLOAT16:
                attrs[key] = TensorProto.FLOAT
        nodes.append(Node(n.name, n.op_type, list(n.inputs), list(n.outputs), attrs))

    def values(vs):
        return [ValueInfo(v.name, v.shape, _widen(v.dtype)) for v in vs]
    twin = Graph(nodes, inits, values(graph.inputs), values(graph.outputs), graph.opset, graph.producer,
                 dict(graph.metadata))
    twin.value_info = {k: ValueInfo(v.name, v.shape, _widen(v.dtype)) for k, v in graph.value_info.items()}
    twin.weight_files = {k: r for k, r in graph.weight_files.items() if k not in halves}
    return twin
