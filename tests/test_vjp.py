"""Every op's VJP builder, lowered into a graph: against float64 central finite differences on fvgraph's
executor (relative error under 1e-6), and onnxruntime running the same lowered graph against the executor."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

import fvgraph as fv
from fvgraph.ops import REGISTRY
from fvgraph.reverse import RELEVANCE, Target, lower
from fvgraph.rules import Rules
from fvgraph.shapes import concrete
from tests.conftest import rel_l2

R = np.random.default_rng(42)


def f64(*shape, positive=False, away=0.0):
    a = R.standard_normal(shape)
    if away:  # keep values away from kinks (ReLU at 0, Clip bounds, ties)
        a = np.where(np.abs(a) < away, a + np.sign(a + 1e-12) * away, a)
    return np.abs(a) + 0.5 if positive else a


def distinct(*shape):
    """Values with no ties (max pooling, Max/Min), spaced well beyond the finite-difference step."""
    return R.permutation(np.prod(shape)).reshape(shape) * 0.1 + R.random(shape) * 0.01


I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731

# (op, attrs, inputs, indices of inputs to differentiate); the others become constants
CASES = [
    ("Abs", {}, [f64(3, 4, away=0.1)], [0]), ("Neg", {}, [f64(3, 4)], [0]), ("Exp", {}, [f64(3, 4)], [0]),
    ("Log", {}, [f64(3, 4, positive=True)], [0]), ("Sqrt", {}, [f64(3, 4, positive=True)], [0]),
    ("Reciprocal", {}, [f64(3, 4, positive=True)], [0]), ("Tanh", {}, [f64(3, 4)], [0]),
    ("Sin", {}, [f64(3, 4)], [0]), ("Cos", {}, [f64(3, 4)], [0]), ("Erf", {}, [f64(3, 4)], [0]),
    ("Relu", {}, [f64(3, 4, away=0.1)], [0]), ("Sigmoid", {}, [f64(3, 4)], [0]),
    ("Softplus", {}, [f64(3, 4)], [0]), ("Softsign", {}, [f64(3, 4)], [0]),
    ("LeakyRelu", {"alpha": 0.1}, [f64(3, 4, away=0.1)], [0]), ("Elu", {"alpha": 0.7}, [f64(3, 4, away=0.1)], [0]),
    ("Selu", {}, [f64(3, 4, away=0.1)], [0]), ("Celu", {"alpha": 1.3}, [f64(3, 4, away=0.1)], [0]),
    ("ThresholdedRelu", {"alpha": 0.5}, [f64(3, 4) + 0.05], [0]),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [f64(3, 4) * 2 + 0.013], [0]),
    ("HardSwish", {}, [f64(3, 4) * 4 + 0.013], [0]), ("Gelu", {}, [f64(3, 4)], [0]),
    ("Gelu", {"approximate": "tanh"}, [f64(3, 4)], [0]),
    ("Clip", {}, [f64(3, 4) * 3 + 0.013, np.array(0.0), np.array(2.0)], [0]),
    ("PRelu", {}, [f64(2, 3, 4, away=0.1), f64(3, 1)], [0, 1]),
    ("Softmax", {"axis": 1}, [f64(2, 3, 4)], [0]), ("LogSoftmax", {"axis": -1}, [f64(2, 3, 4)], [0]),
    ("Softmax", {"axis": 1, "_flatten": True}, [f64(2, 3, 4)], [0]),
    ("Add", {}, [f64(2, 3, 4), f64(3, 1)], [0, 1]), ("Sub", {}, [f64(2, 3, 4), f64(4)], [0, 1]),
    ("Mul", {}, [f64(2, 3, 4), f64(1, 3, 1)], [0, 1]), ("Div", {}, [f64(2, 3, 4), f64(3, 4, positive=True)], [0, 1]),
    ("Pow", {}, [f64(2, 3, positive=True), f64(2, 3)], [0, 1]),
    ("Sum", {}, [f64(2, 3), f64(3), f64(2, 1)], [0, 1, 2]), ("Mean", {}, [f64(2, 3), f64(2, 3)], [0, 1]),
    ("Max", {}, [distinct(2, 3), distinct(2, 3) + 0.05], [0, 1]),
    ("Min", {}, [distinct(2, 3), distinct(2, 3) + 0.05], [0, 1]),
    ("Where", {}, [R.random((2, 3)) > 0.5, f64(2, 3), f64(3)], [1, 2]),
    ("Gemm", {"alpha": 0.7, "beta": 1.3, "transB": 1}, [f64(3, 4), f64(5, 4), f64(5)], [0, 1, 2]),
    ("Gemm", {"transA": 1}, [f64(4, 3), f64(4, 5)], [0, 1]),
    ("Gemm", {"transA": 1, "transB": 1, "alpha": 2.0}, [f64(4, 3), f64(5, 4)], [0, 1]),
    ("Gemm", {"transB": 1}, [f64(3, 4), f64(5, 4), f64(5)], [0]),
    ("MatMul", {}, [f64(2, 3, 4), f64(4, 5)], [0, 1]), ("MatMul", {}, [f64(4), f64(2, 4, 3)], [0, 1]),
    ("MatMul", {}, [f64(2, 3, 4), f64(4, 5)], [0]),
    ("Conv", {"pads": [1, 1, 1, 1]}, [f64(2, 3, 5, 6), f64(4, 3, 3, 3), f64(4)], [0]),
    ("Conv", {"pads": [0, 1, 2, 0], "dilations": [2, 1]}, [f64(1, 2, 7, 6), f64(3, 2, 2, 3)], [0]),
    ("Conv", {"strides": [2, 2], "pads": [1, 0, 1, 1], "group": 2}, [f64(2, 4, 7, 6), f64(6, 2, 3, 3)], [0]),
    ("Conv", {"strides": [2, 3], "pads": [1, 0, 1, 1]}, [f64(2, 3, 7, 6), f64(4, 3, 3, 2)], [0]),
    ("Conv", {"group": 2, "pads": [1, 1, 1, 1]}, [f64(1, 4, 5, 5), f64(6, 2, 3, 3)], [0]),
    ("Conv", {"group": 3, "strides": [2, 1], "pads": [1, 1, 1, 1]}, [f64(2, 3, 6, 5), f64(6, 1, 3, 3)], [0]),
    ("Conv", {"group": 3, "strides": [2, 2], "pads": [0, 1, 1, 0]}, [f64(2, 3, 7, 6), f64(3, 1, 3, 3)], [0]),
    ("Conv", {"group": 3, "pads": [2, 2, 2, 2]}, [f64(1, 3, 6, 5), f64(3, 1, 5, 5)], [0]),
    ("Conv", {"pads": [3, 0, 0, 0]}, [f64(1, 2, 4, 4), f64(2, 2, 2, 2)], [0]),
    ("Conv", {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, [f64(1, 2, 7, 6), f64(3, 2, 3, 3)], [0]),
    ("Conv", {"strides": [2, 2], "pads": [3, 3, 3, 3]}, [f64(1, 3, 11, 10), f64(4, 3, 7, 7)], [0]),  # a stem
    ("Conv", {"group": 4, "strides": [2, 2], "pads": [2, 2, 2, 2]}, [f64(1, 4, 9, 8), f64(4, 1, 5, 5)], [0]),
    ("Conv", {"strides": [2, 2]}, [f64(1, 2, 6, 7), f64(3, 2, 2, 2)], [0]),
    ("ConvTranspose", {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0]},
     [f64(2, 3, 4, 3), f64(3, 2, 3, 3), f64(2)], [0]),
    ("ConvTranspose", {"group": 2, "dilations": [1, 2]}, [f64(1, 4, 3, 3), f64(4, 1, 2, 2)], [0]),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
     [distinct(2, 2, 6, 5)], [0]),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 1]}, [distinct(1, 2, 5, 4)], [0]),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [distinct(2, 3, 4, 6)], [0]),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
     [f64(2, 2, 6, 5)], [0]),
    ("AveragePool", {"kernel_shape": [2, 3], "count_include_pad": 1, "pads": [1, 1, 0, 1]}, [f64(1, 2, 4, 5)], [0]),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [f64(2, 3, 5, 4)], [0]),
    ("GlobalAveragePool", {}, [f64(2, 3, 4, 5)], [0]), ("GlobalMaxPool", {}, [distinct(2, 3, 4, 5)], [0]),
    ("BatchNormalization", {"epsilon": 1e-3}, [f64(2, 3, 4, 4), f64(3), f64(3), f64(3), f64(3, positive=True)], [0]),
    ("InstanceNormalization", {}, [f64(2, 3, 4, 5), f64(3), f64(3)], [0, 1, 2]),
    ("LRN", {"size": 3, "alpha": 0.1, "beta": 0.75, "bias": 1.5}, [f64(2, 5, 3, 3)], [0]),
    ("LRN", {"size": 4, "alpha": 0.2, "beta": 0.6}, [f64(1, 6, 2, 2)], [0]),
    ("Identity", {}, [f64(3, 4)], [0]), ("Dropout", {}, [f64(3, 4)], [0]),
    ("Reshape", {}, [f64(2, 3, 4), I64(4, -1)], [0]), ("Flatten", {"axis": 2}, [f64(2, 3, 4, 2)], [0]),
    ("Squeeze", {}, [f64(2, 1, 3), I64(1)], [0]), ("Unsqueeze", {}, [f64(2, 3), I64(0, 3)], [0]),
    ("Transpose", {"perm": [2, 0, 1]}, [f64(2, 3, 4)], [0]), ("Concat", {"axis": 1}, [f64(2, 3), f64(2, 2)], [0, 1]),
    ("Split", {"axis": 1}, [f64(2, 5), I64(2, 3)], [0]),
    ("Slice", {}, [f64(5, 6), I64(1, -1), I64(4, 0), I64(0, 1), I64(2, -2)], [0]),
    ("Slice", {}, [f64(2, 3, 6), I64(1), I64(5), I64(2)], [0]),
    ("Gather", {"axis": 1}, [f64(3, 4, 2), I64([0, 2], [2, -1])], [0]),
    ("Gather", {"axis": 0}, [f64(3, 4), np.array(1, np.int64)], [0]),
    ("Pad", {"mode": "constant"}, [f64(2, 3, 3), I64(0, 1, -1, 0, 2, 1)], [0]),
    ("Pad", {"mode": "reflect"}, [f64(1, 2, 4, 4), I64(0, 0, 2, 1, 0, 0, 1, 3)], [0]),
    ("Pad", {"mode": "edge"}, [f64(1, 2, 3, 3), I64(0, 0, 2, 1, 0, 0, 1, 2)], [0]),
    ("Pad", {"mode": "wrap"}, [f64(2, 3), I64(1, 2, 1, 0)], [0]),
    ("Cast", {"to": 11}, [f64(3, 4)], [0]), ("CastLike", {}, [f64(3, 4), np.zeros(1)], [0]),
    ("Expand", {}, [f64(3, 1), I64(2, 3, 4)], [0]), ("Tile", {}, [f64(2, 3), I64(2, 2)], [0]),
    ("ReduceMean", {"keepdims": 0}, [f64(2, 3, 4), I64(1)], [0]), ("ReduceSum", {}, [f64(2, 3, 4), I64(0, 2)], [0]),
    ("ReduceMax", {}, [distinct(2, 3, 4), I64(2)], [0]), ("ReduceMin", {"keepdims": 0}, [distinct(2, 3, 4), I64(1)], [0]),
    ("ReduceProd", {}, [f64(2, 3, positive=True), I64(1)], [0]),
    ("ReduceL1", {}, [f64(2, 3, away=0.1), I64(1)], [0]), ("ReduceL2", {}, [f64(2, 3), I64(0)], [0]),
    ("ReduceSumSquare", {}, [f64(2, 3)], [0]), ("ReduceLogSum", {}, [f64(2, 3, positive=True), I64(1)], [0]),
    ("ReduceLogSumExp", {}, [f64(2, 3), I64(1)], [0]),
    ("Resize", {"mode": "linear"}, [f64(1, 2, 3, 4), np.zeros(0), np.array([1, 1, 2, 1.5])], [0]),
    ("Resize", {"mode": "nearest"}, [f64(1, 2, 3, 4), np.zeros(0), np.array([1, 1, 2, 0.5])], [0]),
    ("Resize", {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},
     [f64(1, 1, 4, 4), np.zeros(0), None, I64(1, 1, 6, 3)], [0]),
    ("Resize", {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                "extrapolation_value": 0.5}, [f64(1, 1, 4, 4), np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.2]), None,
                                              I64(1, 1, 5, 4)], [0]),
    ("Resize", {"mode": "linear"}, [f64(2, 3, 2, 4), np.zeros(0), np.array([1, 2, 1.5, 1])], [0]),
    ("LayerNormalization", {}, [f64(2, 3, 4), f64(4), f64(4)], [0, 1, 2]),
    ("LayerNormalization", {"axis": 1, "epsilon": 1e-3}, [f64(2, 3, 2, 2), f64(3, 2, 2)], [0, 1]),
    ("GroupNormalization", {"num_groups": 2}, [f64(2, 4, 3, 3), f64(4), f64(4)], [0, 1, 2]),
    ("Mish", {}, [f64(3, 4)], [0]),
    ("CumSum", {}, [f64(2, 5), I64(1)], [0]), ("CumSum", {"exclusive": 1, "reverse": 1}, [f64(4, 3), I64(0)], [0]),
    ("Einsum", {"equation": "bhqd,bhkd->bhqk"}, [f64(2, 2, 3, 4), f64(2, 2, 5, 4)], [0, 1]),
    ("Einsum", {"equation": "...ij,jk"}, [f64(2, 3, 4), f64(4, 5)], [0, 1]),
    ("Einsum", {"equation": "ij,jk->i"}, [f64(3, 4), f64(4, 2)], [0, 1]),
    ("GatherElements", {"axis": 1}, [f64(2, 4), I64([0, 3, 3], [-1, 1, 0])], [0]),
    ("GatherND", {}, [f64(3, 4, 2), I64([0, 1], [2, 3], [0, 1])], [0]),
    ("ScatterND", {}, [f64(4, 3), I64([1], [3]), f64(2, 3)], [0, 2]),
    ("ScatterND", {"reduction": "add"}, [f64(4, 3), I64([1], [1]), f64(2, 3)], [0, 2]),
    ("TopK", {"axis": 1}, [distinct(3, 5), I64(2)], [0]),
    ("Trilu", {"upper": 0}, [f64(2, 3, 4), np.array(1, np.int64)], [0]),
    ("DepthToSpace", {"blocksize": 2}, [f64(2, 8, 2, 3)], [0]),
    ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, [f64(1, 8, 3, 2)], [0]),
    ("SpaceToDepth", {"blocksize": 2}, [f64(2, 3, 4, 6)], [0]),
    ("GridSample", {}, [f64(2, 3, 4, 5), R.uniform(-1.2, 1.2, (2, 3, 6, 2))], [0]),
    ("GridSample", {"mode": "cubic", "padding_mode": "reflection", "align_corners": 1},
     [f64(1, 2, 5, 4), R.uniform(-1.4, 1.4, (1, 4, 3, 2))], [0]),
    ("GridSample", {"mode": "nearest", "padding_mode": "border"}, [f64(1, 2, 4, 4), R.uniform(-1, 1, (1, 3, 3, 2))],
     [0]),
]

STRAIGHT_THROUGH = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")  # test_quantized.py
CONST_FLOAT = {"Clip", "BatchNormalization", "Resize", "CastLike"}  # float operands that are settings, not data


def _model(op, attrs, inputs, wrt, dtype):
    """A one-node model: the differentiated operands are graph inputs, everything else initializers."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    n_out = 2 if op in ("Split", "TopK") else 1
    outs = [f"o{k}" for k in range(n_out)]
    cast = lambda a: a.astype(dtype) if a.dtype == np.float64 else a  # noqa: E731
    graph_inputs = [helper.make_tensor_value_info(names[k], helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                  inputs[k].shape) for k in wrt]
    inits = [numpy_helper.from_array(cast(np.asarray(a)), names[k]) for k, a in enumerate(inputs)
             if a is not None and k not in wrt]
    node = helper.make_node(op, names, outs, **attrs)
    out_type = helper.np_dtype_to_tensor_dtype(np.dtype(np.float64 if op == "Cast" else dtype))
    types = [out_type, helper.np_dtype_to_tensor_dtype(np.dtype(np.int64))] if op == "TopK" else [out_type] * n_out
    g = helper.make_graph([node], op, graph_inputs, [helper.make_tensor_value_info(o, t, None)
                                                     for o, t in zip(outs, types)], inits)
    opset = {"Gelu": 20, "GroupNormalization": 21, "GridSample": 20}.get(op, 18)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _float_outputs(model):
    return [v.name for v in model.graph.outputs if v.dtype is None or v.dtype.kind == "f"]


def _lowered(model, feeds):
    """The gradient of sum(cotangent * output) w.r.t. every graph input, seeds as inputs."""
    table = concrete(model.executor, feeds)
    targets = tuple(Target("array", o) for o in _float_outputs(model))
    return lower(model, Rules.load("gradient"), targets, table, wrt=model.graph.input_names())


def _cotangents(model, feeds):
    outs = model.run(feeds, outputs=_float_outputs(model))
    return [R.standard_normal(outs[o].shape) for o in _float_outputs(model)]


def _run(engine_model, lowered, feeds, cots, dtype):
    seeds = {name: c.astype(dtype) for name, c in zip(lowered.seed_inputs, cots)}
    out = engine_model.engine.run(lowered.graph, {**feeds, **seeds}, lowered.outputs)
    return [out[RELEVANCE if k == 0 else f"{RELEVANCE}:{v}"] for k, v in enumerate(engine_model.graph.input_names())]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_vjp_matches_finite_differences(case):
    op, attrs, inputs, wrt = case
    attrs = dict(attrs)
    flatten = attrs.pop("_flatten", False)
    proto = _model(op, attrs, inputs, wrt, np.float64)
    if flatten:  # the pre-13 Softmax (normalized over the flattened block) exists as opset 11
        proto.opset_import[0].version = 11
    model = fv.load(proto, engine="numpy")
    feeds = {f"i{k}": inputs[k] for k in wrt}
    cots = _cotangents(model, feeds)
    grads = _run(model, _lowered(model, feeds), feeds, cots, np.float64)
    h = 1e-6
    for (name, x), got in zip(feeds.items(), grads):
        num = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            for sign in (1, -1):
                xx = x.copy()
                xx[j] += sign * h
                outs = model.run({**feeds, name: xx}, outputs=_float_outputs(model))
                num[j] += sign * sum(float(np.sum(c * outs[o])) for c, o in zip(cots, _float_outputs(model))) / (2 * h)
        assert got.shape == x.shape, (op, name)
        err = np.linalg.norm(got - num) / max(np.linalg.norm(num), 1e-12)
        assert err < 1e-6, (op, name, err)


def _onnxruntime_runs(case):
    """Cast to float64 changes the dtype this float32 comparison runs in; onnxruntime refuses even LRN sizes."""
    op, attrs = case[0], case[1]
    return op not in ("Cast", "CastLike") and not (op == "LRN" and attrs["size"] % 2 == 0)


@pytest.mark.parametrize("case", [c for c in CASES if _onnxruntime_runs(c)],
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES) if _onnxruntime_runs(c)])
def test_onnxruntime_runs_the_lowered_vjp_like_the_executor(case):
    op, attrs, inputs, wrt = case
    attrs = dict(attrs)
    flatten = attrs.pop("_flatten", False)
    proto = _model(op, attrs, inputs, wrt, np.float32)
    if flatten:
        proto.opset_import[0].version = 11
    model = fv.load(proto, engine="numpy")
    feeds = {f"i{k}": inputs[k].astype(np.float32) for k in wrt}
    cots = _cotangents(model, feeds)
    lowered = _lowered(model, feeds)
    mine = _run(model, lowered, feeds, cots, np.float32)
    ort = fv.load(proto, engine="onnxruntime")
    theirs = ort.engine.run(lowered.graph, {**feeds, **dict(zip(lowered.seed_inputs, [c.astype(np.float32) for c in cots]))},
                            lowered.outputs)
    for k, (name, got) in enumerate(zip(model.graph.input_names(), mine)):
        ref = theirs[RELEVANCE if k == 0 else f"{RELEVANCE}:{name}"]
        assert rel_l2(got, ref) < 1e-5, (op, name, rel_l2(got, ref))


# unrolled at load into ops with cases here; their gradients are checked in tests/test_recurrent.py
RECURRENT = ("LSTM", "GRU", "RNN")


def test_every_differentiable_op_has_a_case():
    covered = {c[0] for c in CASES}
    missing = [op for op, cls in REGISTRY.items() if op not in covered and getattr(cls, "differentiable", True)
               and op not in ("Floor", "Ceil", "Sign", "Not", "Hardmax", "Round") and op not in STRAIGHT_THROUGH
               and _is_float_op(op) and op not in RECURRENT]
    assert not missing, f"ops without a VJP test: {missing}"


def _is_float_op(op):
    # comparison and logic ops return booleans: nothing to differentiate
    return op not in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor")


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
                                   dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2])])
def test_maxpool_ties_route_to_the_first_winner_as_onnxruntime_indices_say(attrs):
    """Windows full of ties (a ReLU's zeros, small integers): each output's gradient goes to the input that
    onnxruntime's own MaxPool Indices name (the first maximum in the window), summed where windows overlap."""
    import onnxruntime as ort
    from onnx import TensorProto
    x = np.maximum(R.integers(-2, 3, (2, 3, 9, 10)), 0).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    g = helper.make_graph([node], "mp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    y, idx = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    seed = R.standard_normal(y.shape).astype(np.float32)
    want = np.zeros(x.size)
    np.add.at(want, idx.ravel(), seed.ravel())
    plain = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], "mp", list(g.input), [g.output[0]])
    model = fv.load(helper.make_model(plain, opset_imports=[helper.make_opsetid("", 13)]))
    for m in (model, fv.load(helper.make_model(plain, opset_imports=[helper.make_opsetid("", 13)]), engine="numpy")):
        got = m.explain(x, "gradient", target=seed).relevance
        assert np.allclose(got.ravel(), want, atol=1e-6)
