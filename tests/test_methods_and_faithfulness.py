"""The methods users compare with (integrated gradients, SmoothGrad and kin, the CAM family) against
independent NumPy computations of their formulas, and the faithfulness metrics on cases where the right answer
is known."""
import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from tests.conftest import rel_l2
from tests.zoo import resnet_like

R = np.random.default_rng(21)


def mlp(d=12, h=7, k=3, seed=0, dtype=np.float64):
    """y = W2 relu(W1 x + b1) + b2 on flat inputs: gradients by hand."""
    r = np.random.default_rng(seed)
    W1, b1 = r.standard_normal((h, d)), r.standard_normal(h) * 0.1
    W2, b2 = r.standard_normal((k, h)), r.standard_normal(k) * 0.1
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["N", d])],
                          [helper.make_tensor_value_info("y", elem, ["N", k])],
                          [numpy_helper.from_array(v.astype(dtype), n) for n, v in
                           (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2))])
    model = fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))

    def f(x):
        return np.maximum(x @ W1.T + b1, 0) @ W2.T + b2

    def grad(x, c):
        return ((x @ W1.T + b1 > 0) * W2[c]) @ W1
    return model, f, grad


def captum_points(method, n):
    """Captum's approximation_parameters, written out from its documentation."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return list(0.5 * (1 + nodes)), list(0.5 * w)
    if method == "riemann_trapezoid":
        return list(np.linspace(0, 1, n)), [1 / (2 * (n - 1))] + [1 / (n - 1)] * (n - 2) + [1 / (2 * (n - 1))]
    alphas = {"riemann_left": np.linspace(0, 1 - 1 / n, n), "riemann_right": np.linspace(1 / n, 1, n),
              "riemann_middle": np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)}[method]
    return list(alphas), [1 / n] * n


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients_equal_captums_formula(method):
    model, f, grad = mlp()
    x = R.standard_normal((3, 12))
    base = R.standard_normal((1, 12)) * 0.1
    target = [0, 2, 1]
    e = model.explain(x, "integrated-gradients", target=target, steps=20, integration=method, baseline=base)
    alphas, weights = captum_points(method, 20)
    want = np.zeros_like(x)
    for i, c in enumerate(target):
        total = sum(wt * grad(base[0] + a * (x[i] - base[0]), c) for a, wt in zip(alphas, weights))
        want[i] = total * (x[i] - base[0])
    assert rel_l2(e.relevance, want) < 1e-10
    gap = want.sum(axis=1) - (f(x)[np.arange(3), target] - f(np.repeat(base, 3, axis=0))[np.arange(3), target])
    np.testing.assert_allclose(e.extras["completeness_gap"], gap, atol=1e-9)


def test_completeness_and_baselines():
    model, f, _ = mlp()
    x = R.standard_normal((2, 12))
    gaps = [np.abs(model.explain(x, "integrated-gradients", steps=s).extras["completeness_gap"]).max()
            for s in (4, 64)]
    assert gaps[1] < gaps[0] and gaps[1] < 0.05 * np.abs(f(x)).max()
    img = fv.load(resnet_like())
    xi = R.standard_normal((1, 3, 32, 32)).astype(np.float32)
    for baseline in ("zero", "blur", "uniform"):
        a = img.explain(xi, "integrated-gradients", steps=4, baseline=baseline)
        b = img.explain(xi, "integrated-gradients", steps=4, baseline=baseline)
        assert np.array_equal(a.relevance, b.relevance) and np.any(a.relevance)
    with pytest.raises(fv.RuleError, match="baseline"):
        img.explain(xi, "integrated-gradients", baseline="grey")
    with pytest.raises(fv.RuleError, match="integration of integrated-gradients must be one of gausslegendre"):
        img.explain(xi, "integrated-gradients", integration="simpson")
    with pytest.raises(fv.RuleError, match="steps"):
        img.explain(xi, "integrated-gradients", steps=1)


def test_smoothing_is_seeded_and_follows_its_noise_model():
    model = fv.load(resnet_like())
    x = R.standard_normal((2, 3, 32, 32)).astype(np.float32)
    kw = dict(samples=5, sigma=0.2, seed=3)
    mean = model.explain(x, "smoothgrad", target=[1, 2], **kw).relevance
    assert np.array_equal(mean, model.explain(x, "smoothgrad", target=[1, 2], **kw).relevance)
    assert not np.array_equal(mean, model.explain(x, "smoothgrad", target=[1, 2], **{**kw, "seed": 4}).relevance)
    rng = np.random.default_rng(3)  # the documented noise: sigma * (max - min) of each image
    spread = (x.reshape(2, -1).max(axis=1) - x.reshape(2, -1).min(axis=1)).reshape(2, 1, 1, 1)
    copies = [model.explain((x + rng.standard_normal(x.shape) * 0.2 * spread).astype(np.float32), "gradient",
                            target=[1, 2]).relevance.astype(np.float64) for _ in range(5)]
    assert rel_l2(mean, np.mean(copies, axis=0)) < 1e-5
    sq = model.explain(x, "smoothgrad", target=[1, 2], kind="mean-of-squares", **kw).relevance
    var = model.explain(x, "smoothgrad", target=[1, 2], kind="variance", **kw).relevance
    assert rel_l2(var, sq - mean.astype(np.float64) ** 2) < 1e-4
    plain = model.explain(x, "guided", target=[1, 2]).relevance
    assert np.array_equal(model.explain(x, "guided", target=[1, 2], smooth={"sigma": 0}).relevance, plain)
    noisy = model.explain(x, "guided", target=[1, 2], smooth=True).relevance
    assert noisy.shape == plain.shape and not np.array_equal(noisy, plain)
    assert model.explain(x, "gradcam", target=[1, 2], samples=3, sigma=0.1).relevance.shape == (2, 32, 32)
    with pytest.raises(fv.RuleError, match="kind"):
        model.explain(x, "smoothgrad", kind="median")


def _layer_and_gradient(model, x, layer, target):
    A = model.run(x, outputs=[layer])[layer].astype(np.float64)
    G = model.explain(x, "gradient", target=target, return_layers=[layer]).layers[layer].astype(np.float64)
    return A, G


def test_gradient_weighted_cams_equal_their_formulas():
    model = fv.load(resnet_like())
    x = R.standard_normal((2, 3, 32, 32)).astype(np.float32)
    layer = model.explain(x, "gradcam").extras["layer"]
    A, G = _layer_and_gradient(model, x, layer, [3, 4])
    relu = lambda m: np.maximum(m, 0)  # noqa: E731
    g2, g3 = G ** 2, G ** 3  # Grad-CAM++ as pytorch-grad-cam computes it
    aij = g2 / (2 * g2 + A.sum(axis=(2, 3))[:, :, None, None] * g3 + 0.000001)
    aij = np.where(G != 0, aij, 0)
    want = {"gradcam": relu((G.mean(axis=(2, 3))[:, :, None, None] * A).sum(axis=1)),
            "gradcam++": relu(((relu(G) * aij).sum(axis=(2, 3))[:, :, None, None] * A).sum(axis=1)),
            "layercam": relu((relu(G) * A).sum(axis=1)),
            "xgradcam": relu((((G * A).sum(axis=(2, 3)) / (A.sum(axis=(2, 3)) + 1e-7))[:, :, None, None] * A).sum(axis=1)),
            "hirescam": relu((G * A).sum(axis=1))}
    for method, m in want.items():
        got = model.explain(x, method, target=[3, 4], upsample=False)
        assert got.relevance.shape == m.shape
        assert rel_l2(got.relevance, m) < 1e-5, method
        assert model.explain(x, method, target=[3, 4]).relevance.shape == (2, 32, 32)


def _resize_align_corners(a, size):
    """Bilinear resize of (h, w) maps with align_corners (PyTorch's UpsamplingBilinear2d), in NumPy."""
    h, w = a.shape[-2:]
    ys, xs = np.linspace(0, h - 1, size[0]), np.linspace(0, w - 1, size[1])
    y0, x0 = np.minimum(np.floor(ys).astype(int), h - 2), np.minimum(np.floor(xs).astype(int), w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    tl, tr = a[..., y0[:, None], x0[None, :]], a[..., y0[:, None], x0[None, :] + 1]
    bl, br = a[..., y0[:, None] + 1, x0[None, :]], a[..., y0[:, None] + 1, x0[None, :] + 1]
    return tl * (1 - fy) * (1 - fx) + tr * (1 - fy) * fx + bl * fy * (1 - fx) + br * fy * fx


def test_score_cam_and_eigen_cam_equal_their_formulas():
    model = fv.load(resnet_like())
    x = R.standard_normal((1, 3, 32, 32)).astype(np.float32)
    layer = model.explain(x, "gradcam").extras["layer"]
    A = model.run(x, outputs=[layer])[layer].astype(np.float64)
    up = _resize_align_corners(A[0], (32, 32))
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    masks = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)  # a constant channel masks all
    scores = model.run((x * masks[:, None]).astype(np.float32))[:, 6]
    w = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    want = np.maximum((w[:, None, None] * A[0]).sum(axis=0), 0)
    got = model.explain(x, "scorecam", target=6, upsample=False)
    assert rel_l2(got.relevance[0], want) < 1e-4
    flat = A[0].reshape(A.shape[1], -1).T
    flat = flat - flat.mean(axis=0)
    proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
    proj = proj if np.dot(proj, A[0].sum(axis=0).reshape(-1)) >= 0 else -proj
    got = model.explain(x, "eigencam", upsample=False)
    assert rel_l2(got.relevance[0], np.maximum(proj, 0).reshape(A.shape[2:])) < 1e-4


def test_eigen_cam_from_either_gram_matrix_equals_the_svd():
    """Eigen-CAM takes the smaller Gram matrix (positions or channels): both equal the SVD's projection."""
    from fvgraph.methods.cam import eigencam
    for c, h, w in ((64, 3, 4), (5, 9, 7)):  # fewer positions than channels, and the other way round
        A = np.random.default_rng(c).standard_normal((2, c, h, w)).astype(np.float32)
        for a, got in zip(A.astype(np.float64), eigencam(A)):
            flat = a.reshape(c, -1).T - a.reshape(c, -1).T.mean(axis=0)
            proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
            proj = proj if np.dot(proj, a.sum(axis=0).reshape(-1)) >= 0 else -proj
            assert rel_l2(got, np.maximum(proj, 0).reshape(h, w)) < 1e-5


# --------------------------------------------------------------------------- faithfulness
def linear_toy(size=8):
    """Two classes on an 8x8 one-channel image: logit_1 = sum(W * x), logit_0 = 0, so p_1 = sigmoid(sum W x)
    and the contribution W * x is the right ranking."""
    r = np.random.default_rng(4)
    W = r.standard_normal((size, size))
    Wg = np.stack([np.zeros(size * size), W.reshape(-1)]).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(Wg, "W")])
    return fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])), W


def test_the_faithful_ranking_gets_the_best_aucs():
    model, W = linear_toy()
    x = np.abs(np.random.default_rng(5).standard_normal((1, 1, 8, 8))).astype(np.float32) + 0.5
    faithful = (W * x[0, 0])[None]
    maps = {"faithful": faithful, "random": model.explain(x, "random", seed=1).relevance, "reversed": -faithful}
    auc = {m: {metric: model.evaluate(x, rel, metric, target=1, fill=0.0, patch=1, steps=32).auc[0]
               for metric in ("deletion", "insertion")} for m, rel in maps.items()}
    assert auc["faithful"]["deletion"] < auc["random"]["deletion"] < auc["reversed"]["deletion"]
    assert auc["faithful"]["insertion"] > auc["random"]["insertion"] > auc["reversed"]["insertion"]
    ev = model.evaluate(x, faithful, "deletion", target=1, fill=0.0, patch=1, steps=4)
    p = 1 / (1 + np.exp(-(W * x[0, 0]).sum()))
    assert ev.scores.shape == (1, 5) and ev.scores[0, 0] == pytest.approx(p, rel=1e-5)
    assert ev.scores[0, -1] == pytest.approx(0.5, abs=1e-6)  # everything deleted: logits 0 and 0
    for bad, match in ((dict(metric="area"), "metric"), (dict(steps=0), "steps"), (dict(fill="green"), "fill")):
        with pytest.raises(fv.InputError, match=match):
            model.evaluate(x, faithful, **{"metric": "deletion", **bad})


def test_occlusion_beats_random_on_the_embedded_model_and_photos(tmp_path):
    from fvgraph.cli import DEMO_MODEL
    from fvgraph.image import demo_images, load_image
    model = fv.load(DEMO_MODEL)
    x = np.concatenate([load_image(p, model.preprocessing()) for p in demo_images()])
    occlusion = model.occlusion(x, box=32, stride=16, quiet=True).relevance
    for metric in ("deletion", "insertion"):
        occ = model.evaluate(x, occlusion, metric).auc.mean()
        rnd = np.mean([model.evaluate(x, model.explain(x, "random", seed=s).relevance, metric).auc.mean()
                       for s in range(3)])
        assert (occ < rnd) if metric == "deletion" else (occ > rnd), (metric, occ, rnd)


def test_evaluate_command(tmp_path):
    from fvgraph.cli import DEMO_MODEL
    from fvgraph.image import demo_images
    img = demo_images()[0]
    args = [sys.executable, "-m", "fvgraph", "evaluate", str(DEMO_MODEL), str(img), "-m", "random,gradcam",
            "--steps", "4", "-o", str(tmp_path)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "deletion AUC" in r.stdout and "gradcam" in r.stdout
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert {(x["method"], x["metric"]) for x in report["results"]} == {
        (m, k) for m in ("random", "gradcam") for k in ("deletion", "insertion")}
    assert all(len(x["curve"]) == 5 and 0 <= x["auc"] <= 1 for x in report["results"])
    from PIL import Image
    assert Image.open(tmp_path / "evaluation.png").size[0] > 600
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stderr
    r = subprocess.run(args[:-2] + ["--metric", "area", "-o", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
