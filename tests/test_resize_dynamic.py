"""Resize whose sizes or scales are computed at run time (torch's F.interpolate(x, size=...) exports a
Shape -> Gather -> Concat -> Cast chain; ViTs do it for position-embedding interpolation): the forward equals
onnxruntime and the gradient equals finite differences of onnxruntime's score. The models are linear in x, so
a central difference with step 1 is exact up to float32 rounding."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fvgraph as fv
from fvgraph.errors import UnsupportedModelError
from tests.conftest import ort_session, rel_l2

C, H, W = 3, 6, 5
CLASSES = 4


def _const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _model(resize_inputs, chain, inits, out_hw, attrs, opset=13):
    """x (N, 3, 6, 5) -> 1x1 Conv (4 channels) -> y -> Resize(y, ...) -> Flatten -> Gemm (4 classes). `chain`:
    the nodes that compute Resize's operands; out_hw: the resized (h, w), for the Gemm's width."""
    rng = np.random.default_rng(out_hw[0] * 7 + out_hw[1])  # the same weights with or without the chain
    wc = rng.standard_normal((4, C, 1, 1)).astype(np.float32)
    wg = (rng.standard_normal((CLASSES, 4 * out_hw[0] * out_hw[1])) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["y"]), *chain,
             helper.make_node("Resize", ["y", *resize_inputs], ["r"], name="the_resize", **attrs),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "Wg"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "dyn_resize", [helper.make_tensor_value_info("x", T.FLOAT, ["N", C, H, W])],
                          [helper.make_tensor_value_info("logits", T.FLOAT, ["N", CLASSES])],
                          [_const("Wc", wc), _const("Wg", wg), *inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _sizes_chain(out_hw):
    """sizes = Cast(Concat(Shape(y)[0:2], H + dh, W + dw)), the spatial sizes from x's shape (as torch exports)."""
    dh, dw = out_hw[0] - H, out_hw[1] - W
    chain = [helper.make_node("Shape", ["y"], ["sy"]),
             helper.make_node("Slice", ["sy", "s0", "s2"], ["nc"]),
             helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Gather", ["sx", "i2"], ["h"], axis=0),
             helper.make_node("Gather", ["sx", "i3"], ["w"], axis=0),
             helper.make_node("Add", ["h", "dh"], ["h2"]),
             helper.make_node("Add", ["w", "dw"], ["w2"]),
             helper.make_node("Unsqueeze", ["h2", "ax0"], ["h3"]),
             helper.make_node("Unsqueeze", ["w2", "ax0"], ["w3"]),
             helper.make_node("Concat", ["nc", "h3", "w3"], ["sz"], axis=0),
             helper.make_node("Cast", ["sz"], ["sizes"], to=T.INT64)]
    inits = [_const("s0", np.array([0], np.int64)), _const("s2", np.array([2], np.int64)),
             _const("i2", np.array(2, np.int64)), _const("i3", np.array(3, np.int64)),
             _const("dh", np.array(dh, np.int64)), _const("dw", np.array(dw, np.int64)),
             _const("ax0", np.array([0], np.int64))]
    return chain, inits


def _save(m, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def _x(n=2):
    return np.random.default_rng(3).standard_normal((n, C, H, W)).astype(np.float32)


def _fd_gradient(m, x, target):
    """d logits[:, target] / dx by central differences of onnxruntime's outputs, all perturbations in one run."""
    sess = ort_session(m)
    n = x.shape[0]
    grad = np.zeros(x.shape, np.float64)
    for i in range(n):
        eye = np.eye(x[i].size, dtype=np.float32).reshape((-1,) + x.shape[1:])
        batch = np.concatenate([x[i] + eye, x[i] - eye])
        out = sess.run(None, {"x": batch})[0].astype(np.float64)[:, target]
        grad[i] = ((out[:len(eye)] - out[len(eye):]) / 2).reshape(x.shape[1:])
    return grad


def _check(m, tmp_path, target=1):
    x = _x()
    path = _save(m, tmp_path)
    ref = ort_session(m).run(None, {"x": x})[0]
    for engine in ("onnxruntime", "numpy"):
        model = fv.load(str(path), engine=engine)
        np.testing.assert_allclose(model.run(x), ref, rtol=1e-5, atol=1e-5)
        got = model.explain(x, "gradient", target=target).relevance
        fd = _fd_gradient(m, x, target)
        assert np.abs(fd).max() > 1e-2  # the score depends on x through the Resize
        assert rel_l2(got, fd) < 1e-5, (engine, rel_l2(got, fd))
    return got


SIZED = [
    ({"mode": "linear"}, (9, 8)),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, (12, 10)),
    ({"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, (8, 7)),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, (4, 3)),
]


@pytest.mark.parametrize("attrs,out_hw", SIZED, ids=[f"{a['mode']}{i}" for i, (a, _) in enumerate(SIZED)])
def test_sizes_from_a_shape_chain(tmp_path, attrs, out_hw):
    chain, inits = _sizes_chain(out_hw)
    m = _model(["", "", "sizes"], chain, inits, out_hw, attrs)
    got = _check(m, tmp_path)
    # and the same model with its sizes a constant gives the same gradient (the path test_vjp.py covers)
    fixed = _model(["", "", "sizes"], [], [_const("sizes", np.array(out_hw, np.int64))], out_hw,
                   {**attrs, "axes": [2, 3]}, opset=18)
    const = fv.load(str(_save(fixed, tmp_path, "fixed.onnx"))).explain(_x(), "gradient", target=1).relevance
    np.testing.assert_allclose(got, const, rtol=1e-5, atol=1e-6)


def test_sizes_from_a_shape_chain_with_keep_aspect_ratio(tmp_path):
    """not_larger over axes (2, 3): sizes (10, 14) on 6 x 5 apply the scale 10/6 to both, output (10, 8); the
    reverse pass reads that scale back from the output's shape."""
    chain, inits = _sizes_chain((10, 14))
    chain = chain[2:-2] + [helper.make_node("Concat", ["h3", "w3"], ["sizes"], axis=0)]
    inits = inits[2:]
    m = _model(["", "", "sizes"], chain, inits, (10, 8),
               {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18)
    _check(m, tmp_path, target=2)


def test_scales_computed_from_shapes(tmp_path):
    """scales = Concat(1, 1, Cast(target) / Cast(Shape(x)[2:4])): computed, but the same for every batch."""
    chain = [helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Slice", ["sx", "s2", "s4"], ["hw"]),
             helper.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT),
             helper.make_node("Div", ["want_hw", "hwf"], ["ratio"]),
             helper.make_node("Concat", ["ones", "ratio"], ["scales"], axis=0)]
    inits = [_const("s2", np.array([2], np.int64)), _const("s4", np.array([4], np.int64)),
             _const("want_hw", np.array([9, 10], np.float32)), _const("ones", np.array([1, 1], np.float32))]
    m = _model(["", "scales"], chain, inits, (9, 10), {"mode": "linear"})
    _check(m, tmp_path)


def test_scales_from_the_data_are_refused_by_name(tmp_path):
    """scales that depend on x's values: the forward runs, the reverse pass refuses in one line naming the node
    (their exact value decides the sampling positions and the output's shape does not give it back)."""
    chain = [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("Mul", ["mx", "zero"], ["z"]),
             helper.make_node("Add", ["base", "z"], ["scales"])]
    inits = [_const("zero", np.array(0, np.float32)), _const("base", np.array([1, 1, 1.5, 2], np.float32))]
    m = _model(["", "scales"], chain, inits, (9, 10), {"mode": "linear"})
    x = _x()
    model = fv.load(str(_save(m, tmp_path)))
    np.testing.assert_allclose(model.run(x), ort_session(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="the_resize.*scales computed at run time"):
        model.explain(x, "gradient", target=1)
