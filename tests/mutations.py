"""Seeded mutations of valid models, the kinds a broken exporter or a damaged file produce: attribute values,
initializer dims and dtypes, renamed inputs, swapped op types, input shapes, dropped nodes, byte flips; and the
kinds a CLI fuzz found crashes with (#26): metadata values of the wrong type for the keys fvgraph reads, input
dims written as -1 / 0 / symbols / no shape, odd output names, optional inputs given as "" (onnxruntime's
optimizer segfaulted on a LayerNormalization so), attributes of another type, missing or absurd opsets, tiny
graphs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SWAPS = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "Reshape", "Transpose", "MaxPool",
         "AveragePool", "GlobalAveragePool", "Flatten", "Softmax", "BatchNormalization", "Sigmoid", "Split", "Pad"]
DTYPES = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.INT8,
          TensorProto.BOOL, TensorProto.UINT8]


def _attribute(m, rng):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return _dims(m, rng)
    n = nodes[rng.integers(len(nodes))]
    a = n.attribute[rng.integers(len(n.attribute))]
    if a.type == onnx.AttributeProto.INTS:
        vals = list(a.ints)
        if vals and rng.random() < 0.5:
            vals[rng.integers(len(vals))] = int(rng.choice([-3, -1, 0, 2, 5, 1000]))
        else:
            vals = vals + [int(rng.integers(-2, 6))] if rng.random() < 0.5 else vals[:-1]
        del a.ints[:]
        a.ints.extend(vals)
    elif a.type == onnx.AttributeProto.INT:
        a.i = int(rng.choice([-5, -1, 0, 2, 7, 99]))
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = float(rng.choice([-1.0, 0.0, 1e30, float("nan")]))
    elif a.type == onnx.AttributeProto.STRING:
        a.s = rng.choice([b"", b"bogus", b"SAME_UPPER", b"VALID"])
    return m


def _dims(m, rng):
    inits = [t for t in m.graph.initializer if len(t.dims)]
    if not inits:
        return m
    t = inits[rng.integers(len(inits))]
    a = numpy_helper.to_array(t)
    kind = rng.integers(3)
    if kind == 0 and a.ndim:      # another shape with the same count (a reshape), or a cut
        new = a.reshape(-1)[: max(1, a.size - int(rng.integers(1, 4)))] if rng.random() < 0.5 else a.reshape(-1)
        shape = [new.size] if rng.random() < 0.5 else [1, new.size]
        t.CopyFrom(numpy_helper.from_array(new.reshape(shape), t.name))
    elif kind == 1:               # a transposed or padded weight
        new = np.concatenate([a, a[:1]], axis=0) if a.ndim and a.shape[0] else a
        t.CopyFrom(numpy_helper.from_array(new, t.name))
    else:                         # declared dims that do not match the data
        t.dims[rng.integers(len(t.dims))] += int(rng.choice([-1, 1, 3]))
    return m


def _dtype(m, rng):
    inits = list(m.graph.initializer)
    if not inits:
        return m
    t = inits[rng.integers(len(inits))]
    a = numpy_helper.to_array(t)
    to = int(rng.choice(DTYPES))
    t.CopyFrom(numpy_helper.from_array(a.astype(helper.tensor_dtype_to_np_dtype(to)), t.name))
    return m


def _rename(m, rng):
    n = m.graph.node[rng.integers(len(m.graph.node))]
    if n.input:
        k = rng.integers(len(n.input))
        n.input[k] = rng.choice(["", "nowhere", n.output[0] if n.output else "x", m.graph.input[0].name])
    return m


def _swap(m, rng):
    n = m.graph.node[rng.integers(len(m.graph.node))]
    n.op_type = str(rng.choice(SWAPS))
    return m


def _input_shape(m, rng):
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if len(dims) and rng.random() < 0.5:
        d = dims[rng.integers(len(dims))]
        d.dim_value = int(rng.choice([0, 1, 2, 5, 1000]))
    else:
        new = helper.make_tensor_value_info(m.graph.input[0].name, TensorProto.FLOAT,
                                            [int(v) for v in rng.integers(1, 9, rng.integers(1, 6))])
        m.graph.input[0].CopyFrom(new)
    return m


def _drop(m, rng):
    if len(m.graph.node) > 1:
        del m.graph.node[rng.integers(len(m.graph.node))]
    return m


META_KEYS = ["fvgraph.preprocess", "fvgraph.classes", "names", "imgsz", "character", "classes", "labels",
             "class_names"]
META_VALUES = ["5", "-1", "0", '"x"', "", " ", "null", "true", "[]", "{}", "[[1, 2]]", "[1, 2, 3]", '{"a": {"b": 1}}',
               '{"0": ["a"]}', '{"0": null, "1": 2}', "[" * 3000, "[1e400]", "NaN", "1e400", "[1e30, 1e30]",
               "(640, 640)", "(640, 'a')", "[640, [1]]", "{0: 'a', 'b': 1}", "{0: 'a', 5: 'b'}", "['a', None]",
               '{"size": [[1]]}', '{"size": -1}', '{"size": 1e308}', '{"mean": "abc"}', '{"std": [0, 0, 0]}',
               '{"resize": 7}', '{"layout": [1]}', '{"channels": null}', '{"scale": "1/0"}', '{"border": [1, 2, 3]}',
               '{"size": true}', '{"interpolation": {}}', '{"pad_value": "x"}', "\ufffd\x00\x01", "a\nb\n\n",
               "x" * 200000, "[" + "1," * 50000 + "1]", '"' + "\\u12" + '"', "{'a': 1}", "lambda: 0"]


def _metadata(m, rng):
    """A value of the wrong type (or garbage, huge, nested, empty) under a key fvgraph reads."""
    key = str(rng.choice(META_KEYS))
    value = str(rng.choice(META_VALUES))
    if key == "fvgraph.preprocess" and rng.random() < 0.3:  # a valid object with one bad item
        value = '{"size": ' + str(rng.choice(["[16, 16]", "0", "-3", '"16x"', "[16]", "[16, 16, 16]", "null",
                                               '{"h": 1}', "16.5", "9999999"])) + "}"
    kept = [p for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    m.metadata_props.add(key=key, value=value)
    return m


def _symbolic_dims(m, rng):
    """Input dims as exporters write unknown ones: -1, 0, a symbol, an empty symbol, or no shape at all."""
    tt = m.graph.input[0].type.tensor_type
    kind = rng.integers(5)
    if kind == 0:
        tt.ClearField("shape")
        return m
    dims = tt.shape.dim
    if not len(dims):
        return m
    picks = range(len(dims)) if kind == 1 else [int(rng.integers(len(dims)))]
    for k in picks:
        d = dims[k]
        choice = int(rng.integers(4))
        if choice == 0:
            d.dim_value = -1
        elif choice == 1:
            d.dim_value = int(rng.choice([0, -7]))
        elif choice == 2:
            d.dim_param = str(rng.choice(["N", "height", "-1", "?", "1"]))
        else:
            d.Clear()
    if kind == 4 and len(dims) == 4:  # PaddleOCR style: [-1, 3, -1, -1] or [-1, 3, 48, -1]
        dims[0].dim_value, dims[3].dim_value = -1, -1
        if rng.random() < 0.5:
            dims[2].dim_value = -1
    return m


def _output_names(m, rng):
    """Graph outputs duplicated, named as a node, empty, or not produced by any node."""
    g = m.graph
    kind = rng.integers(4)
    if kind == 0:
        g.output.add().CopyFrom(g.output[0])
    elif kind == 1 and g.node:
        n = g.node[rng.integers(len(g.node))]
        n.name = g.output[0].name
    elif kind == 2:
        g.output[0].name = ""
    else:
        g.output.add().CopyFrom(helper.make_tensor_value_info(str(rng.choice(["ghost", g.node[0].name or "n"])),
                                                              TensorProto.FLOAT, [1]))
    return m


def _value_dims(m, name):
    """Dims of a value from ONNX shape inference, or None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:
        return None
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return None


def _optional_empty(m, rng):
    """An op with an optional input given as "" (the ONNX way of leaving it out), appended after the output:
    LayerNormalization's bias, Conv's bias, Resize's roi/scales, Clip's min/max."""
    g = m.graph
    out = g.output[0].name
    dims = _value_dims(m, out)
    last = dims[-1] if dims and dims[-1] else 1
    kind = int(rng.integers(5))
    new = f"{out}__opt"
    if kind == 0:
        g.initializer.append(numpy_helper.from_array(np.ones(last, np.float32), "opt_scale"))
        node = helper.make_node("LayerNormalization", [out, "opt_scale", ""], [new], axis=-1)
        if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in m.opset_import):
            for o in m.opset_import:
                if o.domain in ("", "ai.onnx"):
                    o.version = 17
    elif kind == 1:
        c = dims[1] if dims and len(dims) == 4 and dims[1] else 1
        g.initializer.append(numpy_helper.from_array(np.ones((c, 1, 1, 1), np.float32), "opt_w"))
        node = helper.make_node("Conv", [out, "opt_w", ""], [new], group=c)
    elif kind == 2:
        g.initializer.append(numpy_helper.from_array(np.ones(len(dims) if dims else 4, np.float32), "opt_scales"))
        node = helper.make_node("Resize", [out, "", "opt_scales"] if rng.random() < 0.5 else [out, "", "", ""],
                                [new], mode="nearest")
    elif kind == 3:
        g.initializer.append(numpy_helper.from_array(np.float32(1.0), "opt_max"))
        node = helper.make_node("Clip", [out, "", "opt_max"] if rng.random() < 0.5 else [out, "", ""], [new])
    else:  # an existing node's optional trailing input left empty, or an empty one in the middle
        n = g.node[rng.integers(len(g.node))]
        n.input.extend([""] * int(rng.integers(1, 3)))
        return m
    g.node.append(node)
    g.output[0].name = new
    g.output[0].type.tensor_type.ClearField("shape")
    return m


def _attribute_type(m, rng):
    """An attribute written with another type: an int for ints, a string for a float, ints for an int."""
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return _opset(m, rng)
    n = nodes[rng.integers(len(nodes))]
    k = int(rng.integers(len(n.attribute)))
    a = n.attribute[k]
    name = a.name
    if a.type == onnx.AttributeProto.INTS:
        new = helper.make_attribute(name, int(a.ints[0]) if len(a.ints) else 1) if rng.random() < 0.5 else             helper.make_attribute(name, "1,1")
    elif a.type == onnx.AttributeProto.INT:
        new = helper.make_attribute(name, [a.i, a.i]) if rng.random() < 0.5 else helper.make_attribute(name, 1.5)
    elif a.type == onnx.AttributeProto.FLOAT:
        new = helper.make_attribute(name, "0.1") if rng.random() < 0.5 else helper.make_attribute(name, [a.f])
    else:
        new = helper.make_attribute(name, 3)
    n.attribute[k].CopyFrom(new)
    return m


def _opset(m, rng):
    """No default-domain opset, a huge or negative one, or a second one of a junk domain."""
    kind = rng.integers(4)
    if kind == 0:
        del m.opset_import[:]
    elif kind == 1:
        m.opset_import[0].version = int(rng.choice([10 ** 6, 2 ** 62, 99]))
    elif kind == 2:
        m.opset_import[0].version = int(rng.choice([-1, 0]))
    else:
        m.opset_import.add(domain="com.junk", version=1)
        m.graph.node[rng.integers(len(m.graph.node))].domain = "com.junk"
    return m


def _tiny(m, rng):
    """A graph cut down to nothing: no nodes with its output the input, one Identity, or no outputs."""
    g = m.graph
    kind = rng.integers(3)
    x = g.input[0].name
    del g.node[:]
    if kind == 0:
        g.output[0].name = x
    elif kind == 1:
        g.node.append(helper.make_node("Identity", [x], [g.output[0].name]))
    else:
        g.node.append(helper.make_node("Identity", [x], ["y"]))
        del g.output[:]
    return m


MUTATIONS = [_attribute, _dims, _dtype, _rename, _swap, _input_shape, _drop]
NEW_KINDS = [_metadata, _symbolic_dims, _output_names, _optional_empty, _attribute_type, _opset, _tiny]
ALL_MUTATIONS = MUTATIONS + NEW_KINDS


def mutate(model: onnx.ModelProto, rng, kinds=None) -> bytes:
    """Serialized bytes of a mutated copy (one to three mutations of `kinds`, default the first seven, or a
    few flipped bytes)."""
    kinds = kinds or MUTATIONS
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if rng.random() < 0.12:
        data = bytearray(m.SerializeToString())
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        return bytes(data)
    for _ in range(int(rng.integers(1, 4))):
        before = onnx.ModelProto()
        before.CopyFrom(m)
        try:
            m = kinds[rng.integers(len(kinds))](m, rng)
        except (IndexError, ValueError):  # nothing left to mutate this way (a graph without nodes or inputs)
            m = before
    return m.SerializeToString()
