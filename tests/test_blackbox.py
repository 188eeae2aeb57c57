"""RISE and ReciproCAM (fvgraph.methods.blackbox) against computations of their own: the masks rebuilt from the
documented seed draws with scipy, the scores from plain onnxruntime sessions, ReciproCAM's copies run through
the model itself with the layer's output replaced by each copy."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.ndimage import zoom

import fvgraph as fv
from fvgraph.methods.registry import table
from tests.conftest import ort_session
from tests.zoo import resnet_like, vit_like


def linear_model(size=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, 3 * size * size)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["N", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def masks_by_hand(masks, cells, p, size, seed):
    """The paper's masks from the documented draws: grids, then row and column shifts; bilinear upsampling
    with half-pixel centres and clamped edges (scipy's zoom in grid mode, nearest edges)."""
    rng = np.random.default_rng(seed)
    grids = rng.random((masks, cells, cells)) < p
    cell = int(np.ceil(size / cells))
    dy, dx = rng.integers(0, cell, masks), rng.integers(0, cell, masks)
    up = (cells + 1) * cell
    out = []
    for i in range(masks):
        big = zoom(grids[i].astype(np.float64), up / cells, order=1, grid_mode=True, mode="nearest")
        out.append(big[dy[i]:dy[i] + size, dx[i]:dx[i] + size])
    return np.stack(out)


def test_rise_is_the_weighted_mask_formula():
    proto = linear_model()
    model = fv.load(proto.SerializeToString())
    sess = ort_session(proto)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    for score in ("logit", "prob"):
        e = model.explain(x, "rise", masks=50, cells=4, p=0.4, seed=3, score=score)
        M = masks_by_hand(50, 4, 0.4, 12, 3)
        logits = sess.run(None, {"input": x})[0][0]
        k = int(np.argmax(logits))
        assert int(np.ravel(e.target)[0]) == k
        want = np.zeros((12, 12))
        for m in M:  # one copy at a time
            out = sess.run(None, {"input": (x * m[None, None]).astype(np.float32)})[0][0].astype(np.float64)
            s = out[k] if score == "logit" else np.exp(out[k] - out.max()) / np.exp(out - out.max()).sum()
            want += s * m
        want /= 50 * 0.4
        assert e.relevance.shape == (1, 12, 12)
        assert np.allclose(e.relevance[0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_rise_is_seeded_and_independent_of_the_batch_size():
    model = fv.load(linear_model().SerializeToString())
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)
    a = model.explain(x, "rise", masks=40, seed=5).relevance
    b = model.explain(x, "rise", masks=40, seed=5, batch_size=7).relevance
    c = model.explain(x, "rise", masks=40, seed=6).relevance
    assert np.allclose(a, b, rtol=1e-5, atol=1e-7) and not np.allclose(a, c)
    assert np.array_equal(a, model.explain(x, "rise", masks=40, seed=5).relevance)


def test_rise_passes_and_progress():
    model = fv.load(linear_model().SerializeToString())
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32)
    m = table()["rise"]
    assert m.passes_for(m.check({"masks": 30}), x.shape) == 30
    assert m.passes_for(m.check({}), x.shape) == 2000
    rows = []
    run = model.engine.run
    model.engine.run = lambda g, feeds, outs: rows.append(len(next(iter(feeds.values())))) or run(g, feeds, outs)
    heard = []
    e = model.explain(x, "rise", masks=30, batch_size=8, progress=lambda d, t, partial: heard.append((d, t, partial())))
    model.engine.run = run
    assert sum(rows) <= 30 + 3  # the masked copies, plus the clean forwards that fix and report the class
    assert [h[0] for h in heard] == [8, 16, 24, 30] and all(h[1] == 30 for h in heard)
    assert np.allclose(heard[-1][2], e.relevance, rtol=1e-6)
    with pytest.raises(fv.FvGraphError, match="p of rise must be"):
        model.explain(x, "rise", masks=3, p=0.0)


def _replaced(proto, value):
    """The model with `value`'s consumers reading a new input 'replaced' instead: the layer's output replaced."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for n in m.graph.node:
        for k, v in enumerate(n.input):
            if v == value:
                n.input[k] = "replaced"
    m.graph.input.append(helper.make_tensor_value_info("replaced", TensorProto.FLOAT, None))
    return m


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def reciprocam_by_hand(proto, x, value, A, gaussian=False, score="prob"):
    """Every position's copy, one at a time, through the model with the layer's output replaced."""
    sess = ort_session(_replaced(proto, value))
    K, h, w = A.shape
    kern = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    Y = []
    for i in range(h):
        for j in range(w):
            m = np.zeros((h + 2, w + 2))
            if gaussian:
                m[i:i + 3, j:j + 3] = kern
            else:
                m[i + 1, j + 1] = 1
            copy = (A * m[1:-1, 1:-1])[None].astype(np.float32)
            out = sess.run(None, {"input": x, "replaced": copy})[0][0].astype(np.float64)
            Y.append(_softmax(out) if score == "prob" else out)
    Y = np.array(Y)  # (h*w, classes)
    Y = (Y - Y.min(axis=0)) / (Y.max(axis=0) - Y.min(axis=0))
    return Y.T.reshape(-1, h, w)


@pytest.mark.parametrize("inner,gaussian,score", [(False, False, "prob"), (False, True, "logit"),
                                                  (True, False, "prob")])
def test_reciprocam_equals_the_model_with_the_layer_replaced(inner, gaussian, score):
    proto = resnet_like(size=16)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    relus = [l for l in model.layers if l.op_type == "Relu"]
    layer = relus[-2].output if inner else None  # inside the last block: the shortcut passes around it
    e = model.explain(x, "reciprocam", layer=layer, gaussian=gaussian, score=score, upsample=False)
    value = e.extras["layer"]
    if not inner:
        from fvgraph.methods.attribution import logits_value
        from fvgraph.methods.cam import default_gradcam_layer
        assert value == default_gradcam_layer(model, model.feeds(x), logits_value(model))
    A = ort_session(_with_output(proto, value)).run([value], {"input": x})[0][0]
    want = reciprocam_by_hand(proto, x, value, A, gaussian, score)
    logits = ort_session(proto).run(None, {"input": x})[0][0]
    k = int(np.argmax(logits))
    assert int(np.ravel(e.target)[0]) == k
    assert np.allclose(e.extras["classes"][0], want, atol=1e-5)
    assert np.allclose(e.relevance[0], want[k], atol=1e-5)
    assert e.extras["tail_runs"] == 1
    up = model.explain(x, "reciprocam", layer=layer, gaussian=gaussian, score=score, target=2)
    assert up.relevance.shape == (1, 16, 16) and int(np.ravel(up.target)[0]) == 2


def test_reciprocam_on_tokens_keeps_the_class_token_and_equals_the_model_with_the_layer_replaced():
    proto = vit_like(size=16, patch=4, prefix=1)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(6).standard_normal((1, 3, 16, 16)).astype(np.float32)
    e = model.explain(x, "reciprocam", score="logit", upsample=False)
    value = e.extras["layer"]
    A = ort_session(_with_output(proto, value)).run([value], {"input": x})[0][0]  # (T, C): 1 + 4 x 4 tokens
    assert A.shape[0] == 17
    sess = ort_session(_replaced(proto, value))
    Y = []
    for p in range(16):
        copy = A.copy()
        keep = np.zeros(16, np.float32)
        keep[p] = 1
        copy[1:] *= keep[:, None]  # the class token stays
        Y.append(sess.run(None, {"input": x, "replaced": copy[None]})[0][0].astype(np.float64))
    Y = np.array(Y)
    want = ((Y - Y.min(axis=0)) / (Y.max(axis=0) - Y.min(axis=0))).T.reshape(-1, 4, 4)
    assert np.allclose(e.extras["classes"][0], want, atol=1e-5)


def _with_output(proto, value):
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    m.graph.output.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
    return m


def _engine_calls(model, call):
    calls = []
    run = model.engine.run
    model.engine.run = lambda g, feeds, outs: calls.append((g, {k: np.shape(v) for k, v in feeds.items()})) \
        or run(g, feeds, outs)
    try:
        return call(), calls
    finally:
        model.engine.run = run


def test_reciprocam_runs_forward_and_tail_in_one_engine_run():
    proto = resnet_like(size=16)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    model.explain(x, "reciprocam")  # warm: the default layer is chosen once per model
    e, calls = _engine_calls(model, lambda: model.explain(x, "reciprocam"))
    h, w = e.extras["classes"].shape[2:]
    assert len(calls) == 1 and calls[0][1]["reciprocam_masks"][0] == h * w  # every position's copy in the run
    assert e.extras["tail_runs"] == 1
    # copies in batches through the tail graph (a batch cap below one image's positions): the same maps
    split, calls = _engine_calls(model, lambda: model.explain(x, "reciprocam", batch_size=h * w - 1))
    value = e.extras["layer"]
    tails = [c for c in calls if value in c[1]]
    assert [c[1][value][0] for c in tails] == [h * w - 1, 1] and len(calls) == 3
    assert np.allclose(split.extras["classes"], e.extras["classes"], atol=1e-5)
    assert np.allclose(split.relevance, e.relevance, atol=1e-5)
    # several images: as many per run as the cap holds, the same maps as one image per run
    x3 = np.random.default_rng(6).standard_normal((3, 3, 16, 16)).astype(np.float32)
    two = model.explain(x3, "reciprocam", batch_size=2 * h * w)
    one = model.explain(x3, "reciprocam", batch_size=h * w)
    assert two.extras["tail_runs"] == 2 and one.extras["tail_runs"] == 3
    assert np.allclose(two.extras["classes"], one.extras["classes"], atol=1e-5)
    assert np.allclose(two.extras["classes"][1], model.explain(x3[1:2], "reciprocam").extras["classes"][0], atol=1e-5)
    assert table()["reciprocam"].passes_for(table()["reciprocam"].check({}), x.shape) == 1
    with pytest.raises(fv.FvGraphError, match="class target"):
        model.explain(x, "reciprocam", target=fv.Unit(value, 0))


@pytest.mark.parametrize("n_in,n_out", [(3, 10), (7, 256), (5, 17), (4, 3), (6, 6)])
def test_linear_weights_are_onnxruntime_resize_linear(n_in, n_out):
    from fvgraph.methods.blackbox import linear_weights
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    g = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, n_in, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([2, 1, n_out, n_out], np.int64), "sizes")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    x = np.random.default_rng(n_in).random((2, 1, n_in, n_in)).astype(np.float32)
    want = ort_session(m).run(None, {"x": x})[0][:, 0]
    r = linear_weights(n_in, n_out)
    assert np.allclose(np.einsum("hk,nkl,wl->nhw", r, x[:, 0], r), want, atol=1e-6)


@pytest.mark.parametrize("net", ["resnet", "vit"])
def test_the_reciprocam_explainer_equals_the_api_for_a_batch_and_every_class(net):
    """export-explainer's ReciproCAM (insert_xai's portable counterpart): one graph that plain onnxruntime
    runs, its relevance for per-sample targets (-1: predicted) and its saliency for every class equal to
    model.explain's on a batch of three (a pooled head, and tokens keeping their class token)."""
    proto = resnet_like(size=16) if net == "resnet" else vit_like(size=16, patch=4)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(9).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for score in ("prob", "logit"):
        sess = ort_session(model.export_explainer("reciprocam", score=score, all_classes=True))
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(None, {"input": x, "target": np.array([-1, 2, -1], np.int64)})))
        predicted = model.explain(x, "reciprocam", score=score).target
        want = model.explain(x, "reciprocam", score=score, target=[int(predicted[0]), 2, int(predicted[2])])
        assert names[0] == "relevance" and names[-1] == "saliency"
        assert np.allclose(out["relevance"], want.relevance, atol=1e-5)
        assert np.allclose(out["saliency"], model.explain(x, "reciprocam", score=score, target="all").relevance,
                           atol=1e-5)
        assert out["saliency"].shape == (3, 5 if net == "vit" else 10, 16, 16)
