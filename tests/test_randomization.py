"""Randomization tests (fvgraph.methods.randomization): what is re-drawn and where (only the named layers, in a
copy: the model's graph and file untouched, the re-drawn weights used, not the file's, checked by onnxruntime on
a model rewritten with them), seeding, the similarity metrics against scipy and hand computations, and the
paper's finding on a small net: gradients lose the original map as layers are re-drawn, guided maps keep it."""
import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

import fvgraph as fv
from fvgraph.methods import randomization as R
from tests.conftest import ort_session
from tests.zoo import resnet_like, vgg_like


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    path = tmp_path_factory.mktemp("rand") / "vgg.onnx"
    onnx.save(vgg_like(size=32), str(path))
    return path


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_identical_models_are_similar_exactly(vgg):
    model, twin = fv.load(str(vgg)), fv.load(str(vgg))
    r = R.data_randomization(model, twin, _x(), "gradient")
    assert r.layers == ["data"] and all(np.all(v == 1.0) for v in r.similarity.values())
    a = np.random.default_rng(1).random((3, 20, 20))
    assert all(v[0] == 1.0 for v in R.similarities(a[None], a[None]).values())
    flat = np.zeros((1, 20, 20))
    assert all(v[0] == 0.0 for v in R.similarities(a[None], flat).values())


def test_only_the_named_layers_change_in_a_copy(vgg):
    digest = hashlib.sha256(vgg.read_bytes()).hexdigest()
    model = fv.load(str(vgg))
    before = {k: v.copy() for k, v in model.graph.initializers.items()}
    layers = R.weighted_layers(model.graph)
    assert [l.op_type for l in layers] == ["Conv"] * 4 + ["Gemm"] * 2
    assert all(len(l.params) == 2 for l in layers)  # weight and bias
    x = _x(1)
    r = R.randomization(model, x, "gradient", layers=[layers[1].name, layers[4].name], order="independent")
    assert r.layers == [layers[4].name, layers[1].name]  # from the output down
    assert len(r.maps) == 2 and all(s < 1 for s in r.similarity["spearman"][:, 0])
    # the model's graph and its file are untouched
    assert hashlib.sha256(vgg.read_bytes()).hexdigest() == digest
    assert all(np.array_equal(before[k], v) for k, v in model.graph.initializers.items())
    # a step's graph: exactly the named layer's parameters differ; everything else is the same array
    top_down = [layers[4], layers[1]]
    draws = R.layer_draws(model.graph, top_down, 0)
    g = R.randomized_graph(model.graph, top_down, draws)
    changed = {k for k in g.initializers if g.initializers[k] is not model.graph.initializers[k]}
    assert changed == set(layers[4].params) | set(layers[1].params)
    assert all(not np.array_equal(g.initializers[k], before[k]) for k in changed)
    assert not changed & set(g.weight_files) and set(model.graph.weight_files) & changed  # the file held some
    # the step runs the re-drawn weights: onnxruntime on the model rewritten with them
    proto = onnx.load(str(vgg))
    for t in proto.graph.initializer:
        if t.name in changed:
            t.CopyFrom(numpy_helper.from_array(g.initializers[t.name], t.name))
    want = ort_session(proto).run(None, {"input": x})[0]
    got = R.model_over(model, g).run(x)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6) and not np.allclose(got, model.run(x), atol=1e-3)
    # independent order: step k alone; cascade: the top k, the top step the same in both
    cascade = R.randomization(model, x, "gradient", layers=[layers[1].name, layers[4].name])
    assert np.array_equal(cascade.maps[0], r.maps[0]) and not np.array_equal(cascade.maps[1], r.maps[1])


def test_seeded_and_deterministic(vgg):
    model = fv.load(str(vgg))
    x = _x()
    a = R.randomization(model, x, "gradient", seed=3)
    b = R.randomization(model, x, "gradient", seed=3)
    c = R.randomization(model, x, "gradient", seed=4)
    assert all(np.array_equal(a.similarity[k], b.similarity[k]) for k in R.METRICS)
    assert all(np.array_equal(u, v) for u, v in zip(a.maps, b.maps))
    assert not np.array_equal(a.similarity["spearman"], c.similarity["spearman"])
    assert a.similarity["spearman"].shape == (6, 2) and a.to_dict()["layers"] == a.layers
    with pytest.raises(fv.FvGraphError, match="order must be"):
        R.randomization(model, x, order="sideways")
    with pytest.raises(fv.FvGraphError, match="unknown layer 'nonsense'"):
        R.randomization(model, x, layers=["nonsense"])
    relu = next(l.name for l in model.layers if l.op_type == "Relu")
    with pytest.raises(fv.FvGraphError, match="is not a weighted layer; the weighted layers are Conv"):
        R.randomization(model, x, layers=[relu])


def test_the_target_is_the_original_prediction(vgg):
    model = fv.load(str(vgg))
    x = _x()
    r = R.randomization(model, x, "gradient", layers=[R.weighted_layers(model.graph)[-1].name])
    assert np.array_equal(r.target, model.run(x).argmax(axis=1))


def test_gradient_loses_the_map_guided_keeps_it():
    """The paper's finding, on a small VGG-like net and two images (measured: gradient 0.21 at the top step and
    0.06 with all six layers re-drawn; guided 0.77 at the top step)."""
    model = fv.load(vgg_like(size=32).SerializeToString())
    x = _x()
    grad = R.randomization(model, x, "gradient")
    guided = R.randomization(model, x, "guided")
    g, gb = grad.curve("spearman"), guided.curve("spearman")
    assert g[-1] < 0.3 and g[-1] < g[0]
    assert gb[0] > 0.6 and gb[0] > g[0] + 0.3
    assert guided.curve("ssim")[0] > grad.curve("ssim")[0] + 0.3
    r = R.randomization(fv.load(resnet_like(size=32).SerializeToString()), x[:1], "gradcam",
                        layers=[R.weighted_layers(fv.load(resnet_like(size=32).SerializeToString()).graph)[-1].name])
    assert r.maps[0].shape == (1, 32, 32) and r.similarity["ssim"].shape == (1, 1)


def test_spearman_against_scipy():
    rng = np.random.default_rng(7)
    for _ in range(5):
        a = rng.integers(0, 5, (6, 7)).astype(float)  # ties
        b = a + rng.integers(0, 3, (6, 7))
        assert np.isclose(R.spearman(a, b), spearmanr(a.ravel(), b.ravel()).statistic, atol=1e-12)
    a = rng.standard_normal((3, 5, 5))
    b = rng.standard_normal((3, 5, 5))
    want = spearmanr(np.abs(a).sum(0).ravel(), np.abs(b).sum(0).ravel()).statistic
    assert np.isclose(R.similarities(a[None], b[None])["spearman"][0], want, atol=1e-12)


def _ssim_by_hand(a, b):
    """Wang et al.'s SSIM at every pixel, from an explicit Gaussian window over reflected edges."""
    x, y = [(v - v.min()) / (v.max() - v.min()) for v in (a, b)]
    r = int(3.5 * 1.5 + 0.5)
    t = np.arange(-r, r + 1)
    w1 = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w1 /= w1.sum()
    win = np.outer(w1, w1)
    px, py = np.pad(x, r, mode="symmetric"), np.pad(y, r, mode="symmetric")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            u, v = px[i:i + 2 * r + 1, j:j + 2 * r + 1], py[i:i + 2 * r + 1, j:j + 2 * r + 1]
            mu, mv = (win * u).sum(), (win * v).sum()
            su, sv = (win * (u - mu) ** 2).sum(), (win * (v - mv) ** 2).sum()
            suv = (win * (u - mu) * (v - mv)).sum()
            total += ((2 * mu * mv + c1) * (2 * suv + c2)) / ((mu ** 2 + mv ** 2 + c1) * (su + sv + c2))
    return total / x.size


def test_ssim_by_hand():
    rng = np.random.default_rng(8)
    a = rng.random((9, 12))
    b = gaussian_filter(a, 1) + 0.3 * rng.random((9, 12))
    assert np.isclose(R.ssim(a, b), _ssim_by_hand(a, b), atol=1e-10)
    assert R.ssim(a, a) == 1.0 and R.ssim(a, 3 * a + 1) == 1.0  # scaled to [0, 1] first


def test_hog_features():
    im = np.zeros((32, 32))
    im[:, 16:] = 1.0  # one vertical edge: horizontal gradients, orientation 0 degrees
    f = R.hog(im)
    assert f.shape == (3 * 3 * 4 * 9,)  # 4 x 4 cells, blocks of 2 x 2
    hist = f.reshape(3, 3, 2, 2, 9)
    assert np.all(hist[..., 1:8] == 0)  # 0 degrees votes into the first and last bins only (centres 10, 170)
    assert R.hog_similarity(im, im) == 1.0
    assert R.hog_similarity(im, im.T) < 0.5  # the edge turned 90 degrees
    assert R.hog(np.random.default_rng(0).random((6, 6))).shape == (9,)  # smaller than a cell: one cell
