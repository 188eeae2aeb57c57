"""fvgraph's IR -> ONNX ModelProto: how onnxruntime runs fvgraph's graphs (a model, or a model with its reverse
pass lowered into it), and how explainers are exported.

The IR holds every op in the newest form the importer normalizes to (operands as inputs, Resize for Upsample),
so the graph is written at opset max(18, the model's); what the newest opsets dropped is mended here: legacy
attributes (BatchNormalization spatial/is_test, Dropout ratio, consumed_inputs) are left out, Split gets
num_outputs, and a pre-13 Softmax over a flattened block (`_flatten`) becomes Flatten -> Softmax -> Reshape.

Weights that still lie in the model's file (see fvgraph.onnx_file) are written as external-data references
into that file, unless `embed` asks for a self-contained model; everything else is embedded.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MEMORY_BYTES = 1 << 16  # in-memory weights from this size on reach onnxruntime without serialization
MIN_OPSET = 18  # ReduceMean axes as an input, ScatterElements reduction="add", Split num_outputs
LEGACY_ATTRS = {"consumed_inputs", "is_test"}
DROPPED = {"BatchNormalization": {"spatial"}, "Dropout": {"ratio", "seed"}, "Gemm": {"broadcast"}}


NEWER = {"Gelu": 20}  # ops fvgraph may emit into an older model (decomposed com.microsoft ops): their opset


def export_opset(graph) -> int:
    return max([MIN_OPSET, graph.opset] + [NEWER[n.op_type] for n in graph.nodes if n.op_type in NEWER])


def to_onnx(graph, outputs=None, *, embed: bool = False, types: dict | None = None, name: str = "fvgraph",
            input_shapes: dict | None = None, memory: dict | None = None) -> tuple[onnx.ModelProto, str | None]:
    """(ModelProto, folder the external weights are relative to, or None when all is embedded).

    `outputs`: value names (default: the graph's outputs); `types`: name -> (dims, dtype) to declare for them
    (values without one are declared untyped, which onnxruntime accepts); `input_shapes`: name -> dims to
    declare instead of the graph's own; `memory`: a dict to receive the large in-memory weights (derived
    weights, models read from bytes), which are then declared as external placeholders for onnxruntime's
    add_external_initializers instead of being serialized (serializing VGG-16's z+ weights took 13 s)."""
    outputs = list(outputs) if outputs is not None else graph.output_names()
    types = types or {}
    nodes = []
    for n in graph.nodes:
        nodes.extend(_node_protos(n))
    used = {v for n in graph.nodes for v in n.inputs if v} | set(outputs)
    inits, base = [], None
    refs = {k: r for k, r in graph.weight_files.items() if k in used and not embed}
    if refs:
        base = os.path.commonpath([os.path.dirname(r.path) for r in refs.values()])
    for k, a in graph.initializers.items():
        if k not in used:
            continue
        if k in refs:
            inits.append(_reference(k, a, refs[k], base))
        elif memory is not None and a.nbytes >= MEMORY_BYTES and a.dtype.kind in "fiu":
            memory[k] = a if a.flags.c_contiguous else np.ascontiguousarray(a)
            inits.append(_reference(k, a, None, None))
        else:
            inits.append(numpy_helper.from_array(a if a.flags.c_contiguous else a.copy(), k))
    ins = []
    for v in graph.inputs:
        dims = (input_shapes or {}).get(v.name, v.shape)
        ins.append(_value_info(v.name, dims, v.dtype))
    outs = []
    for o in outputs:
        if o in types:
            outs.append(_value_info(o, *types[o]))
        else:
            outs.append(onnx.ValueInfoProto(name=o))
    g = helper.make_graph(nodes, name, ins, outs, inits)
    opset = export_opset(graph)
    domains = sorted({n.op_type.rsplit(".", 1)[0] for n in graph.nodes if "." in n.op_type})
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)] +
                              [helper.make_opsetid(d, 1) for d in domains], producer_name="fvgraph")
    model.ir_version = min(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]), onnx.IR_VERSION)
    for k, v in graph.metadata.items():
        model.metadata_props.add(key=k, value=v)
    return model, base


def _value_info(name, dims, dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if dtype is not None else TensorProto.FLOAT
    shape = None if dims is None else [d if isinstance(d, (int, np.integer)) and d >= 0 else
                                       (d if isinstance(d, str) else None) for d in dims]
    return helper.make_tensor_value_info(name, elem, shape)


def _reference(name, array, ref, base) -> TensorProto:
    """An external-data reference into a file, or (ref None) a placeholder for a weight given from memory."""
    from .onnx_file import set_external
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    t.dims.extend(array.shape)
    if ref is not None:
        set_external(t, os.path.relpath(ref.path, base), ref.offset, ref.length)
    else:
        set_external(t, f"fvgraph-memory/{name}", 0, array.nbytes)
    return t


def _attrs(node) -> dict:
    drop = LEGACY_ATTRS | DROPPED.get(node.op_type, set())
    out = {}
    for k, v in node.attrs.items():
        if k in drop or k.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            v = numpy_helper.from_array(v)
        out[k] = v
    return out


def _node_protos(node) -> list:
    attrs = _attrs(node)
    if node.op_type == "Split" and (len(node.inputs) < 2 or not node.inputs[1]):
        attrs["num_outputs"] = len(node.outputs)
    if node.attrs.get("_flatten"):  # pre-13 Softmax family: normalize over the block flattened at `axis`
        axis = int(node.attrs.get("axis", 1))
        flat, shape, y = f"{node.name}::flat", f"{node.name}::shape", f"{node.name}::y"
        return [helper.make_node("Flatten", [node.inputs[0]], [flat], name=f"{node.name}::flatten", axis=axis),
                helper.make_node(node.op_type, [flat], [y], name=node.name, axis=1),
                helper.make_node("Shape", [node.inputs[0]], [shape], name=f"{node.name}::shape"),
                helper.make_node("Reshape", [y, shape], [node.outputs[0]], name=f"{node.name}::reshape")]
    domain, _, op_type = node.op_type.rpartition(".")  # another domain's op (com.microsoft.FusedConv)
    return [helper.make_node(op_type, list(node.inputs), list(node.outputs), name=node.name, domain=domain or None,
                             **attrs)]
