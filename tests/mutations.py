"""Seeded mutations of valid models, the kinds a broken exporter or a damaged file produce: attribute values,
initializer dims and dtypes, renamed inputs, swapped op types, input shapes, dropped nodes, byte flips."""
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


MUTATIONS = [_attribute, _dims, _dtype, _rename, _swap, _input_shape, _drop]


def mutate(model: onnx.ModelProto, rng) -> bytes:
    """Serialized bytes of a mutated copy (one to three mutations, or a few flipped bytes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if rng.random() < 0.12:
        data = bytearray(m.SerializeToString())
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        return bytes(data)
    for _ in range(int(rng.integers(1, 4))):
        m = MUTATIONS[rng.integers(len(MUTATIONS))](m, rng)
    return m.SerializeToString()
