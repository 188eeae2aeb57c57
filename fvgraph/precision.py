"""The graph fvgraph explains, beside the model as written: a twin where onnxruntime's fused and quantized
operators are standard ops (fvgraph.decompose) and half precision is widened to float32.

onnxruntime's CPU provider lacks float16 kernels for ops the reverse pass needs (ScatterElements with
reduction="add" for max pooling, ConvTranspose, ...), and half-precision gradients underflow. So a float16 model
gets a twin with every float16 weight, value, Cast and attribute widened to float32 (each float16 number is
exactly a float32 one): every method runs on the twin, so its maps equal the float32 model's with the weights
rounded to half. `Model.run` keeps running the model as written, equal to onnxruntime's own float16 forward.

Quantizers that are activations: onnxruntime's quantize_static folds a ReLU (ReLU6) after a linear op into the
QuantizeLinear that follows it, whose range then starts at the real value 0 (zero point = the integer type's
minimum) and may end at 6. The twin writes that activation out again, a Relu (or Clip 0..hi where the range ends
at 6) right before the quantizer: exact in the forward (the quantizer clamps to the same range), and every rule
(guided, deconvnet, LRP) sees the ReLU it acts on.
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
    exposed = expose_folded_activations(graph, decomposed or graph.nodes, inits)
    if exposed is not None:
        decomposed = exposed
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


FOLDS_INTO_QUANTIZER = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}  # the ops quantize_static fuses a ReLU to
RELU6_WITHIN = 1.0  # quantization steps: a range ending this close to 6 is a ReLU6's


def _constant(inits, nodes_by_output, v):
    """An initializer, or a Constant node's value, by name; None when computed."""
    if v in inits:
        return np.asarray(inits[v])
    node = nodes_by_output.get(v)
    if node is not None and node.op_type == "Constant" and "value" in node.attrs:
        return np.asarray(node.attrs["value"])
    return None


def folded_activation(node, producer, inits, nodes_by_output):
    """(low, high) of the activation a QuantizeLinear after a linear op stands for: (0, None) a ReLU, (0, hi) a
    ReLU6; None when its range does not start at 0 (or its parameters are not per-tensor constants)."""
    from .ops.quant import RANGES
    from .onnx_types import numpy_dtype
    if node.op_type != "QuantizeLinear" or producer is None or producer.op_type not in FOLDS_INTO_QUANTIZER:
        return None
    scale = _constant(inits, nodes_by_output, node.inputs[1]) if len(node.inputs) > 1 else None
    zv = node.inputs[2] if len(node.inputs) > 2 else ""
    zp = _constant(inits, nodes_by_output, zv) if zv else None
    if scale is None or scale.size != 1 or float(scale.reshape(-1)[0]) <= 0 or (zv and (zp is None or zp.size != 1)):
        return None
    out = int(node.attr("output_dtype", 0) or 0)
    dtype = zp.dtype if zp is not None else numpy_dtype(out, node.name) if out else np.dtype(np.uint8)
    if np.dtype(dtype) not in RANGES:
        return None
    lo, hi = RANGES[np.dtype(dtype)]
    z = int(zp.reshape(-1)[0]) if zp is not None else 0
    if z != lo:
        return None
    s = float(scale.reshape(-1)[0])
    top = (hi - z) * s
    return (0.0, float(np.float32(top))) if abs(top - 6.0) <= RELU6_WITHIN * s else (0.0, None)


def expose_folded_activations(graph: Graph, nodes: list, inits: dict) -> list | None:
    """The nodes with a Relu (or Clip 0..hi) before each QuantizeLinear that folds one (see folded_activation);
    new constants go into inits. None when there is none."""
    from .graph import unique_name
    by_output = {o: n for n in nodes for o in n.outputs if o}
    taken = set(by_output) | set(inits) | {v.name for v in graph.inputs} | {n.name for n in nodes}
    out, changed = [], False
    for n in nodes:
        bounds = folded_activation(n, by_output.get(n.inputs[0]), inits, by_output) if n.inputs else None
        if bounds is None:
            out.append(n)
            continue
        x = n.inputs[0]
        y = unique_name(f"{x}::folded_relu", taken)
        if bounds[1] is None:
            out.append(Node(unique_name(f"{n.name}::Relu", taken), "Relu", [x], [y], {}))
        else:
            lo, hi = (unique_name(f"{n.name}::clip_{k}", taken) for k in ("min", "max"))
            inits[lo], inits[hi] = np.array(bounds[0], np.float32), np.array(bounds[1], np.float32)
            out.append(Node(unique_name(f"{n.name}::Clip", taken), "Clip", [x, lo, hi], [y], {}))
        out.append(Node(n.name, n.op_type, [y] + list(n.inputs[1:]), list(n.outputs), dict(n.attrs)))
        changed = True
    return out if changed else None
