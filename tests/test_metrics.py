"""The field's metrics (fvgraph.methods.metrics) against closed forms and hand computations on tiny inputs:
the Gini index against its mean-absolute-difference form, entropy against scipy, pointing on planted maxima
and shares, faithfulness correlation exactly 1 for a linear model's true contributions, max-sensitivity from
the documented draws, ROAD's imputation of a plane and of one pixel by hand, and its curves ranking the true
contributions above a random map. Forward passes run on fvgraph's engine of a two-class linear ONNX model."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import entropy

import fvgraph as fv
from fvgraph.methods import metrics as M


def linear_model(c=3, size=8, seed=0, positive=False, bias=0.0, scale=1.0):
    """logit_0 = 0, logit_1 = sum(W * x) + bias: p_1 = sigmoid(sum W x + bias), and W * x is each input's true
    share (positive: |W|, every share of a positive image counts for class 1)."""
    W = scale * np.random.default_rng(seed).standard_normal((c, size, size))
    W = np.abs(W) if positive else W
    Wg = np.stack([np.zeros(W.size), W.reshape(-1)]).astype(np.float32)
    b = numpy_helper.from_array(np.array([0, bias], np.float32), "b")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(Wg, "W"), b])
    return fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])), W.astype(np.float32)


def positive_image(c=3, size=8, seed=1, n=1):
    return (np.abs(np.random.default_rng(seed).standard_normal((n, c, size, size))) + 0.5).astype(np.float32)


# --------------------------------------------------------------------------- conciseness
def test_sparseness_and_complexity_closed_forms():
    n = 8 * 8
    one = np.zeros((1, 8, 8))
    one[0, 3, 5] = -2.0
    flat = np.full((1, 8, 8), 0.3)
    assert M.sparseness(one)[0] == pytest.approx(1 - 1 / n, abs=1e-12)
    assert M.sparseness(flat)[0] == pytest.approx(0.0, abs=1e-12)
    assert M.complexity(flat)[0] == pytest.approx(np.log(n), abs=1e-12)
    assert M.complexity(one)[0] == 0.0
    # a random map: Gini as its mean absolute difference, sum_ij |a_i - a_j| / (2 n sum a), and
    # entropy as scipy's; a (1, C, H, W) map counts per pixel (channels summed first)
    m = np.random.default_rng(2).standard_normal((1, 3, 6, 5))
    a = np.abs(m.sum(axis=1)).reshape(-1)
    gini = np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size * a.sum())
    assert M.sparseness(m)[0] == pytest.approx(gini, rel=1e-6)
    assert M.complexity(m)[0] == pytest.approx(entropy(a / a.sum()), rel=1e-6)
    assert np.isnan(M.sparseness(np.zeros((1, 4, 4)))[0]) and np.isnan(M.complexity(np.zeros((1, 4, 4)))[0])


# --------------------------------------------------------------------------- localisation
def test_pointing_game_on_planted_maxima():
    size = (64, 64)
    box = (10, 20, 30, 40)  # x0, y0, x1, y1: columns 10..29, rows 20..39
    mask = M.box_mask(box, size)
    assert mask.sum() == 20 * 20 and mask[20, 10] and mask[39, 29] and not mask[40, 29] and not mask[39, 30]

    def planted(r, c, value=5.0):
        m = np.random.default_rng(r * 64 + c).random((1, *size))
        m[0, r, c] = value
        return m
    assert M.pointing_game(planted(25, 15), [box])[0] == 1
    assert M.pointing_game(planted(2, 60), [box])[0] == 0            # far away
    near = planted(50, 15)                                             # 11 rows under the box's last row
    assert M.pointing_game(near, [box], tolerance=15)[0] == 1
    assert M.pointing_game(near, [box], tolerance=10)[0] == 0
    assert M.pointing_game(near, [box], tolerance=0)[0] == 0
    # corner: distance from (55, 45) to (39, 29) is sqrt(16^2 + 16^2) = 22.6
    assert M.pointing_game(planted(55, 45), [box], tolerance=22)[0] == 0
    assert M.pointing_game(planted(55, 45), [box], tolerance=23)[0] == 1
    # ties: a hit only if every maximum is in; a flat map does not hit
    tied = planted(25, 15)
    tied[0, 2, 60] = 5.0
    assert M.pointing_game(tied, [box])[0] == 0
    assert M.pointing_game(np.ones((1, *size)), [box])[0] == 0
    # one mask per image of a batch; a map at another resolution is resized to size first
    both = np.concatenate([planted(25, 15), planted(2, 60)])
    assert M.pointing_game(both, np.stack([mask, mask])).tolist() == [1, 0]
    small = np.zeros((1, 8, 8))
    small[0, 3, 2] = 1.0  # covers input rows 24..31, columns 16..23: inside the box
    assert M.pointing_game(small, [box], size=size)[0] == 1


def test_energy_pointing_is_the_planted_share():
    size = (20, 30)
    box = [(5, 4, 15, 10)]  # 10 x 6 = 60 pixels of 600
    m = np.full((1, *size), 1.0)
    assert M.energy_pointing(m, box)[0] == pytest.approx(60 / 600)
    m = np.full((1, *size), -1.0)  # negative relevance is no energy
    m[0, 4:10, 5:15] = 3.0 / 60
    m[0, 0, 0] = 1.0
    assert M.energy_pointing(m, box)[0] == pytest.approx(0.75)
    two = [[(5, 4, 15, 10), (0, 0, 1, 1)]]  # several boxes: their union
    assert M.energy_pointing(m, two)[0] == pytest.approx(1.0)
    assert np.isnan(M.energy_pointing(-np.ones((1, *size)), box)[0])


def test_region_files(tmp_path):
    from PIL import Image
    size = (32, 48)  # H, W
    (tmp_path / "b.json").write_text(json.dumps([[4, 2, 10, 8]]))
    assert np.array_equal(M.load_regions(tmp_path / "b.json", size), M.box_mask((4, 2, 10, 8), size))
    # keyed by image name, boxes in the photo's pixels (96 x 64): scaled by 1/2 to the input
    (tmp_path / "k.json").write_text(json.dumps({"cat.jpg": {"boxes": [[8, 4, 20, 16]], "size": [96, 64]}}))
    assert np.array_equal(M.load_regions(tmp_path / "k.json", size, "photos/cat.jpg"),
                          M.box_mask((4, 2, 10, 8), size))
    with pytest.raises(fv.InputError, match="dog.jpg"):
        M.load_regions(tmp_path / "k.json", size, "dog.jpg")
    # a mask at twice the input's size, as .npy and as a 0/255 PNG: resized to the input
    big = np.zeros((64, 96), np.uint8)
    big[8:24, 16:40] = 255
    np.save(tmp_path / "m.npy", big > 0)
    Image.fromarray(big).save(tmp_path / "m.png")
    want = np.zeros(size, bool)
    want[4:12, 8:20] = True
    assert np.array_equal(M.load_regions(tmp_path / "m.npy", size), want)
    assert np.array_equal(M.load_regions(tmp_path / "m.png", size), want)
    (tmp_path / "out.json").write_text(json.dumps([[60, 40, 90, 50]]))
    with pytest.raises(fv.InputError, match="does not lie in the 48x32 input"):
        M.load_regions(tmp_path / "out.json", size)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(fv.InputError, match="empty"):
        M.load_regions(tmp_path / "empty.png", size)


# --------------------------------------------------------------------------- faithfulness correlation
def test_faithfulness_correlation_is_one_for_true_contributions():
    model, W = linear_model()
    x = positive_image()
    true = W[None] * x
    r, sums, drops = M.faithfulness_correlation(model, x, true, target=1, subset=10, draws=30, softmax=False,
                                                return_samples=True)
    assert r[0] == pytest.approx(1.0, abs=1e-6)
    # the drop of the logit when a subset goes to 0 is exactly the subset's contributions: the hand sums
    rng = np.random.default_rng(0)
    subsets = [rng.choice(64, 10, replace=False) for _ in range(30)]
    hand = [true[0].sum(axis=0).reshape(-1)[s].sum() for s in subsets]
    assert np.allclose(sums[0], hand, rtol=1e-5, atol=1e-5) and np.allclose(drops[0], hand, rtol=1e-4, atol=1e-5)
    assert M.mufidelity is M.faithfulness_correlation and M.metric_name("mufidelity") == "faithfulness-correlation"
    noisy = M.faithfulness_correlation(model, x, np.random.default_rng(3).standard_normal((1, 8, 8)), 1,
                                       subset=10, draws=30, softmax=False)
    assert noisy[0] < 0.7
    # probabilities (the default): a saturating function of the logit, so below 1 but high; seeded
    p = M.faithfulness_correlation(model, x, true, 1, subset=10, draws=30)
    assert 0.8 < p[0] < 1 and p[0] == M.faithfulness_correlation(model, x, true, 1, subset=10, draws=30)[0]


# --------------------------------------------------------------------------- max-sensitivity
def test_max_sensitivity_from_the_documented_draws():
    model, W = linear_model()
    x = positive_image(n=2)
    const = np.random.default_rng(5).standard_normal((2, 8, 8))
    assert M.max_sensitivity(model, x, lambda m, xx: const, draws=5).tolist() == [0.0, 0.0]
    # the gradient of a linear model does not depend on x; input-x-gradient is W * x
    assert np.all(M.max_sensitivity(model, x, "gradient", draws=3, target=1) < 1e-6)
    radius = 0.05
    got = M.max_sensitivity(model, x, lambda m, xx: W * xx, radius=radius, draws=7, seed=4, input_range=(0, 2))
    rng = np.random.default_rng(4)
    ratios = []
    for _ in range(7):
        d = (radius * 2 * rng.uniform(-1, 1, x.shape)).astype(np.float32).astype(np.float64)
        ratios.append([np.linalg.norm(W * d[i]) / np.linalg.norm(W * x[i]) for i in range(2)])
    assert np.allclose(got, np.max(ratios, axis=0), rtol=1e-4)
    via = M.max_sensitivity(model, x, "input-x-gradient", radius=radius, draws=7, seed=4, target=1,
                            input_range=(0, 2))
    assert np.allclose(via, got, rtol=1e-3)
    lo, hi = model.input_bounds()  # default: the preprocessing's range (ImageNet's: one per channel)
    span = radius * (np.asarray(hi) - np.asarray(lo)).reshape(1, -1, 1, 1)
    rng = np.random.default_rng(0)
    d = span * rng.uniform(-1, 1, x.shape)
    one = M.max_sensitivity(model, x, lambda m, xx: W * xx, radius=radius, draws=1)
    assert np.allclose(one, [np.linalg.norm(W * d[i]) / np.linalg.norm(W * x[i]) for i in range(2)], rtol=1e-4)


def _scaled(m):
    m = m.astype(np.float64)
    return (m - m.min()) / (m.max() - m.min())


def test_adcc_by_hand_on_a_linear_model():
    """p_1 = sigmoid(sum W x): average drop, coherency and complexity computed here from the formulas."""
    model, W = linear_model()
    x = positive_image()
    lo = np.asarray(model.input_bounds()[0], np.float64).reshape(1, -1, 1, 1)
    p1 = lambda xx: 1 / (1 + np.exp(-(W * xx).sum()))  # noqa: E731
    for method, of in (("gradient", lambda xx: W.sum(axis=0)), ("input-x-gradient", lambda xx: (W * xx[0]).sum(0))):
        S = _scaled(of(x))
        masked = (lo + (x - lo) * S).astype(np.float32)
        y, o = p1(x.astype(np.float64)), p1(masked.astype(np.float64))
        ad = max(0.0, y - o) / y
        coh = (1 + np.corrcoef(S.ravel(), _scaled(of(masked)).ravel())[0, 1]) / 2
        com = S.mean()
        want = 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - ad))
        rel = model.explain(x, method, target=1).relevance
        got = M.adcc(model, x, rel, method, target=1)
        assert got["average_drop"][0] == pytest.approx(ad, rel=1e-4, abs=1e-6), method
        assert got["coherency"][0] == pytest.approx(coh, rel=1e-5), method
        assert got["complexity"][0] == pytest.approx(com, rel=1e-6)
        assert got["adcc"][0] == pytest.approx(want, rel=1e-4), method
    assert M.adcc(model, x, np.ones((1, 8, 8)), "gradient", target=1)["adcc"][0] == 0  # complexity 1: ADCC 0


# --------------------------------------------------------------------------- ROAD
def test_imputation_reproduces_a_plane_and_the_hand_mean():
    h, w = 12, 10
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    plane = np.stack([0.3 * rr - 0.7 * cc + 2, -1.1 * rr + 0.2 * cc, 0.5 + 0 * rr])
    removed = np.zeros((h, w), bool)
    removed[1:-1, 1:-1] = np.random.default_rng(0).random((h - 2, w - 2)) < 0.8  # away from the border
    out = M.impute(plane, removed)
    assert np.allclose(out, plane, atol=1e-9)
    # one pixel inside: the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal); one in a corner:
    # its 3 neighbours' weights normalized by their sum (1/6 + 1/6 + 1/12)
    img = np.random.default_rng(1).random((2, h, w))
    one = np.zeros((h, w), bool)
    one[5, 4] = one[0, 0] = True
    got = M.impute(img, one)
    nb = img[:, 4:7, 3:6]
    want = (nb[:, 0, 1] + nb[:, 2, 1] + nb[:, 1, 0] + nb[:, 1, 2]) / 6 + \
        (nb[:, 0, 0] + nb[:, 0, 2] + nb[:, 2, 0] + nb[:, 2, 2]) / 12
    assert np.allclose(got[:, 5, 4], want)
    corner = (img[:, 0, 1] / 6 + img[:, 1, 0] / 6 + img[:, 1, 1] / 12) / (5 / 12)
    assert np.allclose(got[:, 0, 0], corner)
    assert np.array_equal(got[:, ~one], img[:, ~one])
    # noise: only on the removed pixels, with the std given
    noisy = M.impute(plane, removed, noise=0.5, rng=np.random.default_rng(2))
    diff = noisy - plane
    assert np.all(diff[:, ~removed] == 0) and diff[:, removed].std() == pytest.approx(0.5, rel=0.15)
    with pytest.raises(fv.InputError):
        M.impute(plane, np.ones((h, w), bool))


def test_road_ranks_the_true_contributions_first():
    x = positive_image(c=1, size=16, seed=8)
    _, W = linear_model(c=1, size=16, seed=7, positive=True, scale=0.03)  # a pixel moves the logit by ~0.03
    model, _ = linear_model(c=1, size=16, seed=7, positive=True, scale=0.03, bias=2 - float((W * x[0]).sum()))
    true = W[None] * x
    ev = M.road(model, x, true, "morf", target=1)
    assert ev.metric == "road-morf" and ev.scores.shape == (1, 9) and np.allclose(ev.fractions, np.arange(1, 10) / 10)
    assert set(np.unique(ev.extras["kept"])) <= {0.0, 1.0}
    rand = [M.road(model, x, model.explain(x, "random", seed=s).relevance, "morf", 1).auc[0] for s in range(3)]
    assert ev.auc[0] < min(rand)
    lerf = M.road(model, x, true, "lerf", 1).auc[0]
    rand_l = [M.road(model, x, model.explain(x, "random", seed=s).relevance, "lerf", 1).auc[0] for s in range(3)]
    assert lerf > max(rand_l) and lerf > ev.auc[0]
    # fraction 0 is the clean image; seeded; an image's curve does not depend on its batch
    p = 1 / (1 + np.exp(-2))
    assert M.road(model, x, true, fractions=(0.0, 0.5), target=1).scores[0, 0] == pytest.approx(p, rel=1e-5)
    assert np.array_equal(M.road(model, x, true, target=1).scores, ev.scores)
    pair = M.road(model, np.concatenate([x, x[:, :, ::-1]]), np.concatenate([true, true[:, :, ::-1]]), target=1)
    assert np.allclose(pair.scores[0], ev.scores[0], rtol=1e-6)
    with pytest.raises(fv.InputError, match="order"):
        M.road(model, x, true, "both")


# --------------------------------------------------------------------------- all together
def test_evaluate_metrics_rows_and_refusals():
    model, W = linear_model(c=1, size=16, seed=7)
    x = positive_image(c=1, size=16, seed=8, n=2)
    found = M.evaluate_metrics(model, x, ["gradient", "input-x-gradient"],
                               ["road-morf", "mufidelity", "pointing-game", "energy-pointing", "max-sensitivity",
                                "sparseness", "complexity", "adcc"], target=1, boxes=[(0, 0, 8, 8), [(8, 8, 16, 16)]],
                               fractions=(0.2, 0.6), draws=10, sensitivity_draws=2)
    rows = found["results"]
    assert all(0 <= r["coherency"] <= 1 for r in rows if r["metric"] == "adcc")
    assert len(rows) == 2 * 2 * 8 and {r["metric"] for r in rows} == set(M.METRICS) - {"road-lerf"}
    road = [r for r in rows if r["metric"] == "road-morf"]
    assert all(len(r["curve"]) == 2 and r["fractions"] == [0.2, 0.6] for r in road)
    sens = {r["method"]: r["value"] for r in rows if r["metric"] == "max-sensitivity" and r["image"] == "0"}
    assert sens["gradient"] < 1e-6 and sens["input-x-gradient"] > 0
    fc = [r["value"] for r in rows if r["metric"] == "faithfulness-correlation" and r["method"] == "input-x-gradient"]
    want = [M.faithfulness_correlation(model, x[i:i + 1], W[None] * x[i:i + 1], 1, draws=10)[0] for i in range(2)]
    assert np.allclose(fc, want, rtol=1e-5)
    energy = [r["value"] for r in rows if r["metric"] == "energy-pointing" and r["method"] == "input-x-gradient"]
    for i, box in enumerate([(0, 0, 8, 8), (8, 8, 16, 16)]):
        e = np.maximum((W * x[i])[0], 0)
        assert energy[i] == pytest.approx(e[box[1]:box[3], box[0]:box[2]].sum() / e.sum(), rel=1e-5)
    assert set(found["mean"]) == {"gradient", "input-x-gradient"} and found["better"]["road-morf"] == "lower"
    panels = M.metric_curves(found, ["gradient", "input-x-gradient"])
    assert list(panels) == ["road-morf (lower is better)"]
    with pytest.raises(fv.InputError, match="boxes"):
        M.evaluate_metrics(model, x, ["gradient"], ["pointing-game"])
    with pytest.raises(fv.InputError, match="unknown metric"):
        M.evaluate_metrics(model, x, ["gradient"], ["area"])
    with pytest.raises(fv.InputError, match="boxes for 3 images, there are 2"):
        M.evaluate_metrics(model, x, ["gradient"], ["energy-pointing"], boxes=[(0, 0, 4, 4)] * 3)
