"""Issue #26: options and targets that silently did nothing or read the wrong tensor, each checked against an
independent computation (onnxruntime, numpy, an equivalent model)."""
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from tests.conftest import ort_session, rel_l2


def _model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _f32(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _classifier(seed=0, size=16, classes=5, relu_weights_negative=False):
    """conv -> relu -> conv -> relu -> GAP -> Gemm: logits, no softmax."""
    rng = np.random.default_rng(seed)
    inits = {"w1": _f32(rng, 8, 3, 3, 3), "b1": _f32(rng, 8, scale=0.1), "w2": _f32(rng, 8, 8, 3, 3, scale=0.3),
             "b2": _f32(rng, 8, scale=0.1), "wf": _f32(rng, classes, 8), "bf": _f32(rng, classes, scale=0.1)}
    if relu_weights_negative:
        inits["wf"] = -np.abs(inits["wf"]) - 0.1
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- 1. occlusion score="prob"
@pytest.mark.parametrize("incremental", [False, True])
def test_occlusion_prob_scores_softmax_probabilities_on_a_logit_model(incremental):
    m = _classifier(seed=1)
    model = fv.load(m)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    e = model.occlusion(x, box=8, stride=8, target=3, score="prob", incremental=incremental)
    sess = ort_session(m)
    p0 = _softmax(sess.run(None, {"x": x})[0].astype(np.float64))[0, 3]
    want = np.zeros((16, 16))
    for y in (0, 8):
        for xx in (0, 8):
            occ = x.copy()
            occ[:, :, y:y + 8, xx:xx + 8] = 0
            want[y:y + 8, xx:xx + 8] = p0 - _softmax(sess.run(None, {"x": occ})[0].astype(np.float64))[0, 3]
    assert np.allclose(e.relevance[0], want, atol=1e-5), np.abs(e.relevance[0] - want).max()
    logit = model.occlusion(x, box=8, stride=8, target=3, score="logit", incremental=incremental).relevance
    assert np.abs(logit - e.relevance).max() > 1e-3  # the option does something


# --------------------------------------------------------------------------- 2. a node named like a graph output
def test_run_output_named_like_a_node_gives_the_graph_output():
    """keras2onnx: MatMul node 'dense_5' writes 'dense_5/MatMul:0'; the bias Add writes the graph output 'dense_5'."""
    rng = np.random.default_rng(0)
    inits = {"W": _f32(rng, 4, 3), "B": np.array([5.0, -3.0, 7.0], np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["dense_5/MatMul:0"], name="dense_5"),
             helper.make_node("Add", ["dense_5/MatMul:0", "B"], ["dense_5"], name="dense_5/BiasAdd"),
             helper.make_node("Softmax", ["dense_5"], ["prob"], axis=1, name="softmax")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3]),
                helper.make_tensor_value_info("dense_5", TensorProto.FLOAT, ["N", 3])], inits)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    model = fv.load(m)
    got = model.run(x, outputs=["dense_5"])["dense_5"]
    want = ort_session(m).run(["dense_5"], {"x": x})[0]
    assert np.allclose(got, want, atol=1e-6), (got, want)
    # the node is still reachable by its layer name where that is not an output's name
    assert np.allclose(model.run(x, outputs=["dense_5/BiasAdd"])["dense_5/BiasAdd"], want, atol=1e-6)


# --------------------------------------------------------------------------- 3. masks on channels-last outputs
def _pnet_like():
    """P-Net-like: conv (stride 2, no padding) -> Transpose to NHWC -> Softmax over the last axis."""
    rng = np.random.default_rng(4)
    inits = {"w": _f32(rng, 2, 3, 3, 3), "b": _f32(rng, 2, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("Softmax", ["t"], ["prob"], axis=-1, name="softmax")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                  [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5, 5, 2])], inits)


def test_image_mask_with_a_channel_on_a_channels_last_output_matches_the_npy_mask(tmp_path):
    from PIL import Image
    from fvgraph.methods.attribution import output_mask
    model = fv.load(_pnet_like())
    region = np.zeros((5, 5), np.uint8)
    region[1:4, 2:5] = 255
    Image.fromarray(region).save(tmp_path / "mask.png")
    full = np.zeros((5, 5, 2), np.float32)
    full[..., 1] = region / 255.0
    np.save(tmp_path / "mask.npy", full)
    from_png = output_mask(model, tmp_path / "mask.png", channel=1)
    assert from_png.shape == full.shape and np.array_equal(from_png, full)
    assert np.array_equal(output_mask(model, tmp_path / "mask.npy"), full)
    x = np.random.default_rng(5).standard_normal((1, 3, 12, 12)).astype(np.float32)
    a = model.explain(x, "gradient", target=fv.OutputTarget(mask=from_png)).relevance
    b = model.explain(x, "gradient", target=fv.OutputTarget(mask=full)).relevance
    assert np.abs(b).max() > 1e-4 and np.allclose(a, b)


# --------------------------------------------------------------------------- 4. all-zero CAM maps say so
def test_all_zero_gradcam_map_warns_once_and_flags_it():
    model = fv.load(_classifier(seed=3, relu_weights_negative=True))
    x = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = model.explain(x, "gradcam", target=0)
    assert not np.any(e.relevance)  # every channel weight negative: the ReLU removes the whole map
    zero = [w for w in caught if "zero everywhere" in str(w.message)]
    assert len(zero) == 1, [str(w.message) for w in caught]
    assert "layercam" in str(zero[0].message)
    assert e.extras.get("degenerate") == [0, 1]
    with warnings.catch_warnings(record=True) as caught:  # noisy copies: one warning, on the average
        warnings.simplefilter("always")
        e = model.explain(x, "gradcam", target=0, smooth={"samples": 3})
    assert len([w for w in caught if "zero everywhere" in str(w.message)]) == 1
    assert e.extras.get("degenerate") == [0, 1]
    ok = model.explain(x, "layercam", target=0, layer="relu1")  # an earlier layer gets mixed gradients: no flag
    assert np.any(ok.relevance) and "degenerate" not in ok.extras


# --------------------------------------------------------------------------- 5. int8 QDQ: ReLUs folded into quantizers
class _Reader:
    def __init__(self, xs):
        self.rows = iter([{"x": xs[i:i + 1]} for i in range(len(xs))])

    def get_next(self):
        return next(self.rows, None)


def test_guided_backprop_sees_the_relus_quantize_static_folded(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    m = _classifier(seed=7)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # the quantizer wants concrete shapes
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(m, str(src))
    calib = np.random.default_rng(8).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_static(str(src), str(dst), _Reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    q = onnx.load(str(dst))
    assert not any(n.op_type == "Relu" for n in q.graph.node)  # folded into the quantizers' ranges
    x = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
    full, int8 = fv.load(src), fv.load(dst)
    want = full.explain(x, "guided", target=2).relevance.ravel()
    got = int8.explain(x, "guided", target=2).relevance.ravel()
    assert np.corrcoef(want, got)[0, 1] > 0.5, np.corrcoef(want, got)[0, 1]
    # the graph fvgraph explains computes what the QDQ model computes (onnxruntime, no fusions)
    twin = int8.engine.run(int8.graph, int8.feeds(x), [int8.graph.output_names()[0]])[int8.graph.output_names()[0]]
    plain = ort_session(q).run(None, {"x": x})[0]
    assert np.array_equal(twin, plain)
    assert any(n.op_type == "Relu" for n in int8.graph.nodes)


def test_quantizer_ending_at_six_is_a_relu6():
    """A hand-written QDQ graph: Conv -> QuantizeLinear(scale 6/255, zp 0) -> DequantizeLinear, a folded ReLU6."""
    from fvgraph.precision import explainable_twin
    from fvgraph.onnx_import import import_model
    rng = np.random.default_rng(10)
    inits = {"w": _f32(rng, 2, 1, 1, 1, scale=3.0), "s": np.array(6 / 255, np.float32), "z": np.array(0, np.uint8)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], inits)
    twin = explainable_twin(import_model(m))
    assert twin is not None
    clips = [n for n in twin.nodes if n.op_type == "Clip"]
    assert len(clips) == 1
    hi = float(np.asarray(twin.initializers[clips[0].inputs[2]]))
    assert abs(hi - 6.0) < 1e-5 and float(np.asarray(twin.initializers[clips[0].inputs[1]])) == 0.0
    x = (rng.standard_normal((2, 1, 4, 4)) * 4).astype(np.float32)
    model = fv.load(m)
    out = model.engine.run(model.graph, model.feeds(x), ["y"])["y"]
    assert np.array_equal(out, ort_session(m).run(None, {"x": x})[0])
    # guided backprop through it gates at 0 < z < 6, as at a ReLU6
    g = model.explain(x, "guided", target=np.ones((2, 2, 4, 4), np.float32)).relevance
    c = np.einsum("nchw,kc->nkhw", x, inits["w"].reshape(2, 1))
    want = ((c > 0) & (c < 6)).astype(np.float32)
    want = np.einsum("nkhw,kc->nchw", want, inits["w"].reshape(2, 1))
    assert np.allclose(g, want, atol=1e-5)


# --------------------------------------------------------------------------- 6. time-major outputs (T, N, C)
def _crnn_like(time_major: bool):
    """conv -> relu -> mean over height -> (N, C, T) -> (T, N, C) (or (N, T, C) summed over T) -> MatMul."""
    rng = np.random.default_rng(11)
    inits = {"w": _f32(rng, 4, 3, 3, 3), "b": _f32(rng, 4, scale=0.1), "wc": _f32(rng, 4, 5, scale=0.1),
             "axes": np.array([2], np.int64), "t_axis": np.array([1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0, name="pool_h")]
    if time_major:
        nodes += [helper.make_node("Transpose", ["m"], ["t"], perm=[2, 0, 1], name="to_tnc"),
                  helper.make_node("MatMul", ["t", "wc"], ["logits"], name="classifier")]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, "N", 5])
    else:
        nodes += [helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1], name="to_ntc"),
                  helper.make_node("MatMul", ["t", "wc"], ["seq"], name="classifier"),
                  helper.make_node("ReduceSum", ["seq", "t_axis"], ["logits"], keepdims=0, name="sum_t")]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])
    del inits["axes"]
    if time_major:
        del inits["t_axis"]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [out], inits)


def test_time_major_output_class_target_sums_over_time():
    tm, bf = fv.load(_crnn_like(True)), fv.load(_crnn_like(False))
    x = np.random.default_rng(12).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert tm.run(x).shape == (8, 2, 5)
    for target in (2, [1, 4], None):
        a, b = tm.explain(x, "gradient", target=target), bf.explain(x, "gradient", target=target)
        assert np.abs(b.relevance).max() > 1e-4
        assert rel_l2(a.relevance, b.relevance) < 1e-5, target
        assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
    for target in (3, None):  # the class fixed once for all the copies
        a, b = (m.explain(x, "integrated-gradients", target=target, steps=4) for m in (tm, bf))
        assert rel_l2(a.relevance, b.relevance) < 1e-5 and np.array_equal(a.target, b.target)
    curves = [m.evaluate(x, b.relevance, steps=4, fill=0.0) for m in (tm, bf)]
    assert np.allclose(curves[0].scores, curves[1].scores, atol=1e-5)
    for target, score in ((1, "logit"), (None, "logit"), (4, "prob")):  # occlusion scores the same sums over time
        a, b = (m.occlusion(x, box=4, stride=4, target=target, incremental=False, score=score) for m in (tm, bf))
        assert np.abs(b.relevance).max() > 1e-4 and np.allclose(a.relevance, b.relevance, atol=1e-5)
        assert np.array_equal(a.target, b.target)
    # one time step: fv.OutputTarget(index=(t, class)), the index leaving out the batch axis
    t, k, h = 3, 2, 1e-2
    e = tm.explain(x[:1], "gradient", target=fv.OutputTarget(index=(t, k))).relevance
    sess = ort_session(_crnn_like(True))
    fd = np.zeros(x[:1].size)
    base = x[:1].astype(np.float64)
    for i in range(0, x[:1].size, 7):  # central differences on a sample of the pixels
        d = np.zeros(x[:1].size)
        d[i] = h
        plus = sess.run(None, {"x": (base + d.reshape(base.shape)).astype(np.float32)})[0][t, 0, k]
        minus = sess.run(None, {"x": (base - d.reshape(base.shape)).astype(np.float32)})[0][t, 0, k]
        fd[i] = (plus - minus) / (2 * h)
    picked = np.arange(0, x[:1].size, 7)
    assert np.allclose(e.ravel()[picked], fd[picked], atol=2e-3), np.abs(e.ravel()[picked] - fd[picked]).max()
