"""AblationCAM and Sobol attribution (fvgraph.methods.blackbox) against computations of their own: AblationCAM's
weights in closed form on a layer followed by a GAP + Gemm head (y_c^k = y_c - w_ck mean(A_k)), and by rerunning
the model with the layer's output replaced (onnxruntime) on a net whose skip connection passes the layer; Sobol's
total indices from scipy's own Sobol sequence and onnxruntime scores, and on a toy whose score reads one cell."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.ndimage import zoom
from scipy.stats import qmc

import fvgraph as fv
from fvgraph.methods.registry import table
from tests.conftest import ort_session
from tests.test_blackbox import _replaced, _with_output
from tests.zoo import resnet_like


def _model(nodes, inits, size, classes, channels=3):
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                       ["N", channels, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def gap_net(seed=0, size=8, k=5, classes=3, zero_class=None):
    """input -> Conv (stride 2) -> Relu 'act' -> GlobalAveragePool -> Flatten -> Gemm: (w, b) the head."""
    rng = np.random.default_rng(seed)
    wc = rng.standard_normal((k, 3, 3, 3)).astype(np.float32)
    w = rng.standard_normal((classes, k)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    if zero_class is not None:
        w[zero_class], b[zero_class] = 0, 0
    nodes = [helper.make_node("Conv", ["input", "wc"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["conv"], ["act"], name="act"),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    return _model(nodes, {"wc": wc, "w": w, "b": b}, size, classes), w, b


def _bilinear(m, size):
    return zoom(m.astype(np.float64), size / m.shape[-1], order=1, grid_mode=True, mode="nearest")


def test_ablationcam_is_the_closed_form_on_a_gap_head():
    proto, w, b = gap_net()
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    A, logits = ort_session(proto, ["act"]).run(["act", "logits"], {"input": x})
    A = A.astype(np.float64)
    for target, layer in ((None, None), (1, "act")):
        e = model.explain(x, "ablationcam", target=target, layer=layer, upsample=False)
        assert e.extras["layer"] == "act"  # the default is the layer before the head
        for n in range(2):
            c = int(np.argmax(logits[n])) if target is None else target
            assert int(np.ravel(e.target)[n]) == c
            yc = float(logits[n, c])
            weights = w[c].astype(np.float64) * A[n].mean(axis=(1, 2)) / yc  # (y_c - y_c^k) / y_c
            assert np.allclose(e.extras["weights"][n], weights, rtol=1e-4, atol=1e-6)
            want = np.maximum(np.tensordot(weights, A[n], axes=1), 0)
            assert np.allclose(e.relevance[n], want, rtol=1e-4, atol=1e-6 * max(1, np.abs(want).max()))
            up = model.explain(x[n:n + 1], "ablationcam", target=c, layer=layer)
            assert up.relevance.shape == (1, 8, 8)
            assert np.allclose(up.relevance[0], _bilinear(want, 8), rtol=1e-4, atol=1e-5 * max(1, want.max()))


def test_ablationcam_batches_progress_and_a_zero_score():
    proto, w, b = gap_net(seed=2, k=7, zero_class=2)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    a = model.explain(x, "ablationcam", target=0)
    heard = []
    c = model.explain(x, "ablationcam", target=0, batch_size=3,
                      progress=lambda d, t, partial: heard.append((d, t, partial())))
    assert np.allclose(a.relevance, c.relevance, rtol=1e-5, atol=1e-7)
    assert c.extras["tail_runs"] == 3 and a.extras["tail_runs"] == 1
    assert [h[0] for h in heard] == [3, 6, 7] and all(h[1] == 7 for h in heard)
    assert np.allclose(heard[-1][2], c.relevance)
    with pytest.warns(fv.FvGraphWarning):  # y_c = 0 and no channel moves it: zero weights, not a division by 0
        z = model.explain(x, "ablationcam", target=2)
    assert np.all(z.extras["weights"] == 0) and not np.any(z.relevance)
    m = table()["ablationcam"]
    assert m.layer and m.family == "cam" and m.kind == "heat" and m.passes_for(m.check({}), x.shape) >= 7
    with pytest.raises(fv.FvGraphError, match="class target"):
        model.explain(x, "ablationcam", target=fv.Unit("act", 0))


def test_ablationcam_equals_the_model_with_the_layer_replaced():
    """A layer inside a residual block (its shortcut passes around it): each channel zeroed in the layer's
    output, the rest of the model rerun by onnxruntime."""
    proto = resnet_like(size=16)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    layer = [v for v in model.layers if v.op_type == "Relu"][-2].output
    e = model.explain(x, "ablationcam", layer=layer, upsample=False)
    A = ort_session(_with_output(proto, layer)).run([layer], {"input": x})[0][0].astype(np.float64)
    sess = ort_session(_replaced(proto, layer))
    clean = ort_session(proto).run(None, {"input": x})[0][0]
    c = int(np.argmax(clean))
    weights = []
    for k in range(len(A)):
        copy = A.copy()
        copy[k] = 0
        yk = sess.run(None, {"input": x, "replaced": copy[None].astype(np.float32)})[0][0][c]
        weights.append((clean[c] - yk) / clean[c])
    weights = np.array(weights)
    assert np.allclose(e.extras["weights"][0], weights, rtol=1e-3, atol=1e-5)
    want = np.maximum(np.tensordot(weights, A, axes=1), 0)
    assert np.allclose(e.relevance[0], want, rtol=1e-3, atol=1e-5 * max(1, want.max()))


def linear_net(size, classes=2, seed=0, w=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, 3 * size * size)).astype(np.float32) if w is None else w
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    return _model(nodes, {"w": w, "b": np.zeros(len(w), np.float32)}, size, len(w))


def sobol_by_hand(proto, x, grid, designs, seed, target):
    """The paper's estimator from scipy's sequence: A, B its halves, A_B^i, nearest cells (np.kron), onnxruntime
    scores, Jansen's total index with the variance over f(A) and f(B)."""
    d = grid * grid
    pts = qmc.Sobol(d=2 * d, scramble=True, seed=seed).random(designs)
    a, b = pts[:, :d], pts[:, d:]
    sess = ort_session(proto)
    size = x.shape[-1]

    def f(cells):
        m = np.kron(cells.reshape(grid, grid), np.ones((size // grid, size // grid)))
        return float(sess.run(None, {"input": (x * m).astype(np.float32)})[0][0, target])
    fa = np.array([f(r) for r in a])
    fb = np.array([f(r) for r in b])
    st = []
    for i in range(d):
        ab = a.copy()
        ab[:, i] = b[:, i]
        fc = np.array([f(r) for r in ab])
        st.append(np.mean((fa - fc) ** 2) / (2 * np.var(np.concatenate([fa, fb]))))
    return np.array(st).reshape(grid, grid)


def test_sobol_is_the_jansen_estimator():
    proto = linear_net(8)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    e = model.explain(x, "sobol", grid=2, designs=8, seed=3, target=1)
    want = sobol_by_hand(proto, x, 2, 8, 3, 1)
    assert np.allclose(e.extras["indices"][0], want, rtol=1e-4, atol=1e-6)
    assert np.allclose(e.relevance[0], _bilinear(want, 8), rtol=1e-4, atol=1e-5)


def test_sobol_finds_the_one_cell_the_score_reads():
    size, grid = 16, 4
    w = np.zeros((2, 3, size, size), np.float32)
    w[0, :, 4:8, 8:12] = 1  # class 0 is the sum of the input over cell (1, 2)
    model = fv.load(linear_net(size, w=w.reshape(2, -1)).SerializeToString())
    x = np.random.default_rng(6).uniform(0.5, 1, (1, 3, size, size)).astype(np.float32)
    e = model.explain(x, "sobol", grid=grid, designs=16, target=0)
    st = e.extras["indices"][0]
    assert st[1, 2] >= 0.9 * st.sum() and st.argmax() == 1 * grid + 2
    assert e.relevance.shape == (1, size, size)


def test_sobol_is_seeded_batched_and_counts_its_passes():
    proto = linear_net(8, seed=1)
    model = fv.load(proto.SerializeToString())
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = model.explain(x, "sobol", grid=2, designs=8, seed=4).relevance
    assert np.array_equal(a, model.explain(x, "sobol", grid=2, designs=8, seed=4).relevance)
    assert np.allclose(a, model.explain(x, "sobol", grid=2, designs=8, seed=4, batch_size=5).relevance,
                       rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, model.explain(x, "sobol", grid=2, designs=8, seed=5).relevance)
    m = table()["sobol"]
    assert m.passes_for(m.check({"grid": 2, "designs": 8}), x.shape) == 8 * 6
    assert m.passes_for(m.check({}), x.shape) == m.check({})["designs"] * 66 <= 2048  # serve's default budget
    rows, heard = [], []
    run = model.engine.run
    model.engine.run = lambda g, feeds, outs: rows.append(len(next(iter(feeds.values())))) or run(g, feeds, outs)
    e = model.explain(x[:1], "sobol", grid=2, designs=8, batch_size=16,
                      progress=lambda d, t, partial: heard.append((d, t, partial())))
    model.engine.run = run
    assert sum(rows) <= 8 * 6 + 3  # the masked copies, plus the clean forwards that fix and report the class
    assert [h[0] for h in heard] == [16, 32, 48] and all(h[1] == 48 for h in heard)
    assert np.allclose(heard[-1][2], e.relevance)
