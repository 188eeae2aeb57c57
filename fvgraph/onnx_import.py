"""ONNX ModelProto -> fvgraph Graph.

Reads a path, bytes or a ModelProto; checks what a corrupt file can break (initializer sizes against their
shapes, dangling values, cycles); turns Constant nodes into initializers; and rewrites every op whose form
changed across opsets 7..latest into its newest form, so kernels implement one version:

- operands that used to be attributes become inputs: Clip min/max (< 11), Pad pads/value (< 11),
  Slice starts/ends/axes (< 10), Squeeze/Unsqueeze axes and Split sizes (< 13), ReduceSum axes (< 13),
  the other Reduce* axes (< 18);
- Upsample and Resize-10 become Resize with the asymmetric coordinate mode they used;
- Softmax/LogSoftmax/Hardmax before 13 (normalize over a flattened block) get `_flatten=True`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .errors import FvGraphError, ModelLoadError, UnsupportedModelError
from .graph import Graph, Node, ValueInfo, topological_order, unique_name
from .onnx_file import read_model
from .onnx_types import numpy_dtype
from .contract import check_metadata

MIN_OPSET = 1
MAX_ELEMENTS = 1 << 31  # refuse absurd declared sizes before allocating anything

ATTR_TO_INPUTS = {  # op -> (opset from which the attributes are inputs, [(attr, input position, dtype)])
    "Clip": (11, [("min", 1, None), ("max", 2, None)]),
    "Pad": (11, [("pads", 1, np.int64), ("value", 2, None)]),
    "Slice": (10, [("starts", 1, np.int64), ("ends", 2, np.int64), ("axes", 3, np.int64)]),
    "Squeeze": (13, [("axes", 1, np.int64)]),
    "Unsqueeze": (13, [("axes", 1, np.int64)]),
    "Split": (13, [("split", 1, np.int64)]),
    "ReduceSum": (13, [("axes", 1, np.int64)]),
}
for _r in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
           "ReduceLogSum", "ReduceLogSumExp"):
    ATTR_TO_INPUTS[_r] = (18, [("axes", 1, np.int64)])


def read_proto(source: Any) -> tuple[onnx.ModelProto, str, dict, dict]:
    """A ModelProto, a display name, and the weights left in files ({name: array view}, {name: FileRef};
    empty unless the source is a path) from a path, bytes or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return source, "<ModelProto>", {}, {}
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_model_from_string(bytes(source))
        except Exception as e:
            raise ModelLoadError(f"the bytes are not a readable ONNX model ({type(e).__name__}: {e})") from None
        return _nonempty(proto, "<bytes>"), "<bytes>", {}, {}
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        proto, arrays, refs = read_model(path)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {msg[:300]}). "
                             "Is the file complete, and are its external data files beside it?") from None
    return _nonempty(proto, path), path, arrays, refs


def _nonempty(proto, where):
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph: empty, truncated or another file type)")
    return proto


def tensor_to_array(t: TensorProto, where: str) -> np.ndarray:
    """Convert a TensorProto, checking the declared shape against the stored data first."""
    if t.data_location == TensorProto.EXTERNAL:
        raise ModelLoadError(f"{where}: external data of tensor {t.name!r} was not loaded; load the model from "
                             "its file path with the data files beside it")
    dtype = numpy_dtype(t.data_type, where)
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: tensor {t.name!r} has negative dimensions {dims}")
    count = int(np.prod(dims, dtype=np.float64)) if dims else 1
    if count > MAX_ELEMENTS:
        raise ModelLoadError(f"{where}: tensor {t.name!r} declares {count} elements, more than fvgraph accepts")
    raw = t.raw_data  # one copy out of the protobuf (each attribute access makes another)
    if raw:
        stored = len(raw) / dtype.itemsize
    else:
        field = helper.tensor_dtype_to_field(t.data_type)
        stored = len(getattr(t, field))
    if stored != count:
        raise ModelLoadError(f"{where}: tensor {t.name!r} declares shape {dims} ({count} values) but stores "
                             f"{stored:g}: the file is corrupt")
    try:
        if raw and dtype.kind != "b" and sys.byteorder == "little":
            a = np.frombuffer(raw, dtype=dtype).reshape(dims)  # read-only view of the bytes: no copy
        else:
            a = numpy_helper.to_array(t).astype(dtype, copy=False)
        return a.reshape(dims)
    except Exception as e:
        raise ModelLoadError(f"{where}: tensor {t.name!r} could not be read ({e})") from None


def _text(s) -> str:
    """Names as str even where a corrupt file holds invalid UTF-8 (protobuf then hands back bytes)."""
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else s


def _attr_value(a: AttributeProto, where: str):
    if a.type == AttributeProto.TENSOR:
        return tensor_to_array(a.t, where)
    if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise UnsupportedModelError(f"{where}: attribute {a.name!r} holds a subgraph (control flow is not supported)")
    if a.type == AttributeProto.SPARSE_TENSOR:
        raise UnsupportedModelError(f"{where}: sparse tensor attribute {a.name!r} is not supported")
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode("utf-8", "replace") for s in v]
    return list(v) if isinstance(v, (list, tuple)) else v


def _value_info(vi, where, strict=True) -> ValueInfo:
    """strict: a graph input/output of a type fvgraph cannot compute with is refused at load."""
    tt = vi.type.tensor_type
    dtype = None
    if strict and not vi.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"{where}: graph input/output {vi.name!r} is not a tensor "
                                    "(sequences, maps and optionals are not supported)")
    if vi.type.HasField("tensor_type") and tt.elem_type:
        try:
            dtype = numpy_dtype(tt.elem_type, f"{where}: value {vi.name!r}")
        except UnsupportedModelError:
            if strict:
                raise
            dtype = None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(_dim(d) for d in tt.shape.dim)
    return ValueInfo(vi.name, shape, dtype)


def _dim(d):
    """A declared dim: its value, its symbol, or None (unknown). A negative value is how PaddlePaddle and some
    converters write a dim they leave free (-1): unknown, like a symbol, never a size."""
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 else None
    return d.dim_param or None


def _check_inputs(node, opset: int, where: str):
    """A default-domain node's inputs against its ONNX schema: a required input left out or given as "" (the
    ONNX way of omitting an optional one) is refused here, with the node's name, rather than reaching a
    kernel or onnxruntime as a missing value."""
    if node.op_type in ("Constant", "Upsample") or "." in node.op_type:
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
        newest = onnx.defs.get_schema(node.op_type)
        latest = newest.inputs
    except Exception:
        return  # an op ONNX does not know: the executor's registry names it
    formal = list(schema.inputs)
    if not formal:
        return
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for k, v in enumerate(node.inputs):
        if k >= len(formal):
            break  # more inputs than the schema has (or a variadic tail): the kernels' own checks name it
        param = formal[k]
        # required then and still (Resize-11's roi, required at 11, was often written as "" and is optional now)
        if not v and param.option == single and k < len(latest) and latest[k].option == single:
            raise ModelLoadError(f"{where}: node {node.name!r} ({node.op_type}): its required input {k} "
                                 f"({param.name!r}) is empty")
    present, needed = len(node.inputs), min(schema.min_input, newest.min_input)
    if present < needed:
        missing = formal[min(present, len(formal) - 1)].name
        raise ModelLoadError(f"{where}: node {node.name!r} ({node.op_type}) has {present} input(s), fewer than "
                             f"the {needed} it needs (missing {missing!r})")


class _Importer:
    def __init__(self, proto: onnx.ModelProto, where: str, owned: bool = False, mapped=None, refs=None):
        self.proto, self.where, self.owned = proto, where, owned
        self.mapped, self.refs = mapped or {}, refs or {}
        self.initializers: dict[str, np.ndarray] = {}
        self.used_names: set[str] = set()

    def const(self, base: str, value) -> str:
        name = unique_name(base, self.used_names)
        self.initializers[name] = np.asarray(value)
        return name

    def run(self) -> Graph:
        g = self.proto.graph
        opset = next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset == 0:
            raise ModelLoadError(f"{self.where}: the model declares no default-domain opset")
        if opset < MIN_OPSET:
            raise UnsupportedModelError(f"{self.where}: opset {opset} is older than fvgraph supports "
                                        f"({MIN_OPSET}+); re-export or convert it with onnx.version_converter")
        newest = onnx.defs.onnx_opset_version()
        if opset > newest:
            raise UnsupportedModelError(f"{self.where}: opset {opset} is newer than the onnx package here knows "
                                        f"(up to {newest}); upgrade onnx, or re-export the model at opset "
                                        f"{newest} or older")
        if not g.output:
            raise ModelLoadError(f"{self.where}: the graph declares no outputs (nothing to run or explain)")
        if any(not _text(o.name) for o in g.output):
            raise ModelLoadError(f"{self.where}: a graph output has an empty name")
        if g.sparse_initializer:
            raise UnsupportedModelError(f"{self.where}: sparse initializers are not supported")
        self.used_names = {v for n in g.node for v in list(n.input) + list(n.output)}
        self.used_names |= {t.name for t in g.initializer} | {v.name for v in g.input}
        for t in g.initializer:
            if t.name in self.mapped:
                self.initializers[t.name] = self.mapped[t.name]
                continue
            self.initializers[t.name] = tensor_to_array(t, f"{self.where}: initializer {t.name!r}")
            if self.owned:  # a proto we read ourselves: free each tensor's bytes once converted
                t.ClearField("raw_data")
        inputs = [_value_info(v, self.where) for v in g.input if v.name not in self.initializers]
        outputs = [_value_info(v, self.where) for v in g.output]
        nodes = []
        for k, n in enumerate(g.node):
            op_type, domain = _text(n.op_type), _text(n.domain)
            name = _text(n.name) or f"{(op_type or 'node').lower()}_{k}"
            n_in, n_out = [_text(v) for v in n.input], [_text(v) for v in n.output]
            attrs = {_text(a.name): _attr_value(a, f"node {name!r} ({op_type})") for a in n.attribute}
            if domain not in ("", "ai.onnx"):
                op_type = f"{domain}.{op_type}"
            node = Node(name, op_type, n_in, n_out, attrs)
            _check_inputs(node, opset, self.where)
            if node.op_type == "Constant":
                self.initializers[node.outputs[0]] = self.constant_value(node)
                continue
            nodes.append(self.normalize(node, opset))
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):  # layers are addressed by node name: make names unique
            seen: dict[str, int] = {}
            for n in nodes:
                c = seen.get(n.name, 0)
                seen[n.name] = c + 1
                if c:
                    n.name = f"{n.name}_{c}"
        try:
            nodes = topological_order(nodes, set(self.initializers) | {v.name for v in inputs})
        except ValueError as e:
            raise ModelLoadError(f"{self.where}: malformed graph: {e}") from None
        produced = {o for n in nodes for o in n.outputs} | set(self.initializers) | {v.name for v in inputs}
        missing = [o.name for o in outputs if o.name not in produced]
        if missing:
            raise ModelLoadError(f"{self.where}: graph output(s) {missing} are never computed")
        meta = {_text(p.key): _text(p.value) for p in self.proto.metadata_props}
        check_metadata(meta, self.where)
        graph = Graph(nodes, self.initializers, inputs, outputs, opset,
                      f"{self.proto.producer_name} {self.proto.producer_version}".strip(), meta)
        graph.value_info = self.inferred_shapes()
        graph.weight_files = {k: r for k, r in self.refs.items() if k in self.initializers}
        return graph

    def constant_value(self, node: Node) -> np.ndarray:
        for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in node.attrs:
                return np.asarray(node.attrs[key], dtype=dtype)
        raise UnsupportedModelError(f"node {node.name!r} (Constant): only numeric tensor values are supported "
                                    f"(got attributes {sorted(node.attrs)})")

    def normalize(self, node: Node, opset: int) -> Node:
        op = node.op_type
        if op in ATTR_TO_INPUTS and opset < ATTR_TO_INPUTS[op][0]:
            inputs = list(node.inputs)
            for attr, pos, dtype in ATTR_TO_INPUTS[op][1]:
                if attr in node.attrs:
                    while len(inputs) <= pos:
                        inputs.append("")
                    value = node.attrs.pop(attr)
                    if dtype is None:  # float operand (Clip bounds, Pad value): keep float32 like the data
                        dtype = np.float32
                    inputs[pos] = self.const(f"{node.name}::{attr}", np.asarray(value, dtype=dtype))
            node.inputs = inputs
        if op == "GroupNormalization" and opset < 21:  # scale and bias per group, not per channel
            node.attrs["_per_group"] = True
        if op in ("Softmax", "LogSoftmax", "Hardmax") and opset < 13:
            node.attrs["_flatten"] = True
        if op == "Upsample" or (op == "Resize" and opset < 11):
            scales = node.inputs[1] if len(node.inputs) > 1 else ""
            if "scales" in node.attrs:
                scales = self.const(f"{node.name}::scales", np.asarray(node.attrs.pop("scales"), np.float32))
            mode = node.attrs.get("mode", "nearest")
            node.op_type = "Resize"
            node.inputs = [node.inputs[0], "", scales]
            node.attrs = {"mode": "linear" if mode in ("linear", "bilinear") else mode,
                          "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        return node

    def skeleton(self) -> onnx.ModelProto:
        """The model without its large weights (declared as inputs of the same shape instead): shape
        inference needs their shapes only, and copying gigabytes of weights for it would double memory."""
        g = self.proto.graph
        s = onnx.ModelProto(ir_version=self.proto.ir_version)
        s.opset_import.extend(self.proto.opset_import)
        s.graph.node.extend(g.node)
        s.graph.input.extend(g.input)
        s.graph.output.extend(g.output)
        s.graph.value_info.extend(g.value_info)
        declared = {v.name for v in g.input}
        for name, a in self.initializers.items():
            if a.size <= 64 and a.dtype.kind in "iub":
                s.graph.initializer.append(numpy_helper.from_array(a, name))
            elif name not in declared:
                s.graph.input.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
        return s

    def inferred_shapes(self) -> dict[str, ValueInfo]:
        """Shapes of intermediate values from ONNX shape inference, for `info` and the layer table."""
        out = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.skeleton(), strict_mode=False)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
                out[vi.name] = _value_info(vi, self.where, strict=False)
        except Exception:
            pass  # shapes are informative only; a model shape inference cannot handle still runs
        return out


def import_model(source: Any) -> Graph:
    proto, where, mapped, refs = read_proto(source)
    try:
        return _Importer(proto, where, owned=not isinstance(source, onnx.ModelProto), mapped=mapped,
                         refs=refs).run()
    except FvGraphError:
        raise
    except Exception as e:  # anything a corrupt protobuf can still trigger
        raise ModelLoadError(f"{where}: malformed model ({type(e).__name__}: {e})") from None
