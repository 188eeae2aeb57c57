"""Forward parity with onnxruntime on the test zoo: every graph output and every intermediate value."""
import numpy as np
import pytest

import fvgraph as fv
from tests.conftest import ort_session, rel_l2, single_op_model
from tests.zoo import MIN_OPSET, ZOO

OPSETS = (9, 10, 11, 13, 18, 21)
CASES = [(n, o) for n in sorted(ZOO) for o in OPSETS if o >= MIN_OPSET.get(n, 9)]


@pytest.mark.parametrize("name,opset", CASES)
def test_zoo_matches_onnxruntime(name, opset):
    proto = ZOO[name](opset=opset)
    model = fv.load(proto)
    layers = [l.output for l in model.layers]
    sess = ort_session(proto, extra_outputs=layers)
    names = [o.name for o in sess.get_outputs()]
    assert len(names) > len(proto.graph.output), "intermediate values must be compared too"
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    for batch in (1, 3):
        x = np.random.default_rng(batch + opset).standard_normal([batch] + shape).astype(np.float32)
        ref = dict(zip(names, sess.run(None, {"input": x})))
        got = model.run(x, outputs=names)
        for n in names:
            assert got[n].shape == ref[n].shape, n
            assert got[n].dtype == ref[n].dtype, n
            assert rel_l2(got[n], ref[n]) < 1e-4, (n, rel_l2(got[n], ref[n]))


def _conv_cases():
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 4, 11, 9)).astype(np.float32)
    w = r.standard_normal((6, 4, 3, 3)).astype(np.float32)
    wg = r.standard_normal((6, 2, 3, 2)).astype(np.float32)
    wd = r.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b = r.standard_normal(6).astype(np.float32)
    return [
        ("Conv", [("x", x)], [("w", w), ("b", b)], dict(pads=[1, 1, 1, 1])),
        ("Conv", [("x", x)], [("w", w)], dict(strides=[2, 3], pads=[0, 2, 1, 0])),
        ("Conv", [("x", x)], [("w", w)], dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
        ("Conv", [("x", x)], [("w", w)], dict(strides=[2, 2], auto_pad="SAME_LOWER")),
        ("Conv", [("x", x)], [("w", w)], dict(auto_pad="VALID", strides=[1, 2])),
        ("Conv", [("x", x)], [("w", wg)], dict(group=2, pads=[1, 0, 1, 1])),
        ("Conv", [("x", x)], [("w", wd)], dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2])),
        ("Conv", [("x", x)], [("w", r.standard_normal((5, 4, 1, 1)).astype(np.float32))], {}),
        ("ConvTranspose", [("x", x)], [("w", r.standard_normal((4, 3, 3, 3)).astype(np.float32))],
         dict(strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 0])),
        ("ConvTranspose", [("x", x)], [("w", r.standard_normal((4, 2, 4, 4)).astype(np.float32))],
         dict(strides=[2, 2], group=2, pads=[1, 1, 1, 1])),
        ("MaxPool", [("x", x)], [], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
        ("MaxPool", [("x", x)], [], dict(kernel_shape=[2, 3], dilations=[2, 1], strides=[1, 2])),
        ("AveragePool", [("x", x)], [], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
        ("AveragePool", [("x", x)], [], dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                                             count_include_pad=1)),
        ("LRN", [("x", x)], [], dict(size=3, alpha=1e-2, beta=0.7, bias=1.5)),
        ("InstanceNormalization", [("x", x)], [("s", r.random(4).astype(np.float32)),
                                                ("bb", r.random(4).astype(np.float32))], dict(epsilon=1e-3)),
        ("Resize", [("x", x)], [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 1.5, 2], np.float32))],
         dict(mode="linear")),
        ("Resize", [("x", x)], [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))],
         dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
        # downsampling by sizes: with non-integral in*scale, onnxruntime and the ONNX reference disagree on
        # align_corners (integer vs exact resized length); fvgraph follows the ONNX specification there
        ("Resize", [("x", x)], [("roi", np.zeros(0, np.float32)), ("sc", np.zeros(0, np.float32)),
                                ("sz", np.array([2, 4, 6, 5], np.int64))],
         dict(mode="linear", coordinate_transformation_mode="align_corners")),
        ("Resize", [("x", x)], [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))],
         dict(mode="cubic")),
        ("Softmax", [("x", x)], [], dict(axis=1)),
        ("LogSoftmax", [("x", x)], [], dict(axis=-1)),
        ("HardSigmoid", [("x", x)], [], dict(alpha=0.3, beta=0.4)),
    ]


@pytest.mark.parametrize("case", _conv_cases(), ids=lambda c: f"{c[0]}-{sorted(c[3].items())}")
def test_single_op_matches_onnxruntime(case):
    op, inputs, inits, attrs = case
    m = single_op_model(op, inputs, initializers=inits, **attrs)
    ref = ort_session(m).run(None, dict(inputs))[0]
    got = fv.load(m).run(dict(inputs))
    assert got.shape == ref.shape
    assert rel_l2(got, ref) < 1e-5


def test_any_batch_size_and_symbolic_dims():
    """A fully convolutional net declared with symbolic batch, height and width runs at any size."""
    from tests.zoo import NetBuilder
    b = NetBuilder((1, 3, 16, 16), 13)
    b.input_shape = ["batch", 3, "height", "width"]
    y = b.op("GlobalAveragePool", [b.relu(b.conv("input", 3, 4, 3, stride=2))])
    proto = b.model(y)
    model = fv.load(proto)
    sess = ort_session(proto)
    for shape in ((1, 3, 16, 16), (5, 3, 23, 9), (2, 3, 64, 31)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        assert rel_l2(model.run(x), sess.run(None, {"input": x})[0]) < 1e-5


def test_nan_propagates_like_onnxruntime():
    proto = ZOO["vgg_like"](softmax=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    x[0, 1, 5, 7] = np.nan
    got = fv.load(proto).run(x)
    ref = ort_session(proto).run(None, {"input": x})[0]
    assert np.array_equal(np.isnan(got), np.isnan(ref))
