"""Input reconstruction: the priors' gradients, activation maximization, inversion, determinism."""
import numpy as np
import pytest

import fvgraph as fv
from fvgraph.methods.reconstruction import lp_term, tv_term
from tests.zoo import ZOO


def _fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("p", [2, 6, 1.5])
def test_lp_gradient_matches_finite_differences(p):
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5))
    value, g = lp_term(x, p)
    assert value == pytest.approx(np.sum(np.abs(x) ** p))
    num = _fd(lambda z: lp_term(z, p)[0], x)
    assert np.linalg.norm(g - num) / np.linalg.norm(num) < 1e-6


@pytest.mark.parametrize("beta", [2, 1, 1.5])
def test_tv_gradient_matches_finite_differences(beta):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    _, g = tv_term(x, beta)
    num = _fd(lambda z: tv_term(z, beta)[0], x)
    assert np.linalg.norm(g - num) / np.linalg.norm(num) < 1e-6


def test_tv_value_by_hand():
    x = np.array([[[[0.0, 1.0], [3.0, 0.0]]]])
    # one pixel (0,0) has both neighbours: d1 = 1, d2 = 3 -> (1 + 9) ** (beta / 2)
    assert tv_term(x, 2)[0] == pytest.approx(10.0, rel=1e-6)
    assert tv_term(x, 1)[0] == pytest.approx(np.sqrt(10.0), rel=1e-6)


@pytest.fixture(scope="module")
def vgg():
    return fv.load(ZOO["vgg_like"](softmax=False))


def _smooth(h, k=10):
    return np.convolve(h, np.ones(k) / k, mode="valid")


def test_activation_maximization_raises_a_class_and_units(vgg):
    r = vgg.reconstruct(3, steps=150)
    obj = _smooth(r.history["objective"])
    assert obj[-1] > obj[0] and r.history["objective"][-1] > 10 * max(r.history["objective"][0], 0.1)
    relu = [l for l in vgg.layers if l.op_type == "Relu"][1]
    units = [fv.Unit(relu.name, channel=c) for c in range(4)]
    rb = vgg.reconstruct(units, steps=200)
    assert rb.image.shape == (4, 3, 32, 32) and rb.picture.shape == (4, 32, 32, 3)
    start = vgg.run(rb.image * 0 + _start(vgg, 4), outputs=[relu.output])[relu.output].mean(axis=(2, 3))
    end = vgg.run(rb.image, outputs=[relu.output])[relu.output].mean(axis=(2, 3))
    for c in range(4):
        assert end[c, c] >= 10 * max(start[c, c], 1e-3), (c, start[c, c], end[c, c])
    lo, hi = vgg.input_bounds()
    assert (rb.image >= lo.reshape(1, 3, 1, 1) - 1e-6).all() and (rb.image <= hi.reshape(1, 3, 1, 1) + 1e-6).all()


def _start(model, n):
    """The random start the optimizer uses for seed 0 (same formula as the library)."""
    lo, hi = (a.reshape(1, -1, 1, 1) for a in model.input_bounds())
    rng = np.random.default_rng(0)
    return ((lo + hi) / 2 + 0.1 * (hi - lo) / 2 * rng.standard_normal((n, 3, 32, 32))).astype(np.float32)


def test_more_tv_weight_gives_a_smoother_image(vgg):
    rough = vgg.reconstruct(2, steps=80, tv=(2, 0.0))
    smooth = vgg.reconstruct(2, steps=80, tv=(2, 0.5))
    assert tv_term(smooth.image.astype(np.float64), 2)[0] < tv_term(rough.image.astype(np.float64), 2)[0]


def test_inversion_of_a_shallow_layer_recovers_the_input(vgg):
    x = np.random.default_rng(3).uniform(-1.5, 1.5, (1, 3, 32, 32)).astype(np.float32)
    conv = [l for l in vgg.layers if l.op_type == "Conv"][0]
    r = vgg.invert(x, conv.name, steps=300, lp=None, tv=None)
    assert r.history["distance"][-1] < 1e-3 * r.history["distance"][0]
    assert np.linalg.norm(r.image - x) / np.linalg.norm(x) < 0.2


def test_same_seed_same_image_and_bad_options(vgg):
    a = vgg.reconstruct(1, steps=10, jitter=2, seed=5)
    b = vgg.reconstruct(1, steps=10, jitter=2, seed=5)
    c = vgg.reconstruct(1, steps=10, jitter=2, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    m = vgg.reconstruct(1, steps=10, optimizer="momentum")
    assert np.isfinite(m.image).all()
    with pytest.raises(fv.InputError, match="optimizer"):
        vgg.reconstruct(1, steps=5, optimizer="lbfgs")
    with pytest.raises(fv.InputError, match="out of range"):
        vgg.reconstruct(99, steps=2)
    with pytest.raises(fv.InputError, match="lp"):
        vgg.reconstruct(1, steps=2, lp=(0, 1))
    with pytest.raises(fv.InputError, match="unknown layer"):
        vgg.reconstruct(fv.Unit("nope"), steps=2)


def test_reconstruct_and_invert_commands(tmp_path):
    import subprocess
    import sys

    import onnx
    path = tmp_path / "vgg.onnx"
    onnx.save(ZOO["vgg_like"](softmax=False), path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "fvgraph", *a], capture_output=True, text=True,  # noqa
                                    timeout=300)
    r = run("reconstruct", str(path), "--target", "1,2", "--steps", "5", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert {"00_1.png", "01_2.png", "grid.png", "images.npy"} <= {p.name for p in (tmp_path / "r").iterdir()}
    layer = fv.load(path).layers[1].name
    r = run("reconstruct", str(path), "--layer", layer, "--channel", "0-2", "--steps", "3", "--out",
            str(tmp_path / "u"), "--tv", "2,0.5")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "u" / "images.npy").shape == (3, 3, 32, 32)
    from PIL import Image
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)
    r = run("invert", str(path), str(img), "--layer", layer, "--steps", "3", "--out", str(tmp_path / "i"))
    assert r.returncode == 0, r.stderr
    r = run("reconstruct", str(path), "--steps", "3", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "--target" in r.stderr and "Traceback" not in r.stderr
