"""Feature visualization's pieces: each parameterization's gradient against finite differences, the transforms'
backward as the exact adjoint, objectives that add and scale (values and gradients linear in their terms), the
diversity term's gradient, the defaults, and the command line."""
import numpy as np
import onnx
import pytest

import fvgraph as fv
from fvgraph.cli import main
from fvgraph.methods import param as params
from fvgraph.methods.objectives import Objective, diversity, parse
from fvgraph.methods.transforms import Sampling, Transforms
from tests import zoo

R = np.random.default_rng(8)


@pytest.mark.parametrize("name", ["pixel", "fourier", "maco"])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
@pytest.mark.parametrize("channels", [3, 1])
def test_parameterization_gradients_equal_finite_differences(name, size, channels):
    p = params.make(name, 2, channels, size, np.random.default_rng(1))
    v = p.image()
    assert v.shape == (2, channels) + size and v.min() >= 0 and v.max() <= 1
    G = R.standard_normal(v.shape)
    g = p.backward(G)
    base = p.params.copy()
    h = 1e-6
    for _ in range(3):
        d = R.standard_normal(base.shape)
        p.params = base + h * d
        fp = np.sum(G * p.image())
        p.params = base - h * d
        fm = np.sum(G * p.image())
        p.params = base
        fd = (fp - fm) / (2 * h)
        assert abs(fd - np.sum(g * d)) <= 1e-6 * max(1.0, abs(fd)), (name, fd, np.sum(g * d))


def test_maco_keeps_the_natural_magnitude():
    p = params.make("maco", 1, 3, (32, 32), np.random.default_rng(0))
    mag = params.natural_magnitude(3, 32, 32)
    assert mag.shape == (3, 32, 17) and np.all(mag > 0)
    # a natural spectrum falls with frequency: the lowest ring holds more than the highest
    f = params.frequencies(32, 32)
    assert mag[:, f < 0.1].mean() > 5 * mag[:, f > 0.4].mean()
    assert p.image().shape == (1, 3, 32, 32)


def test_transforms_backward_is_the_adjoint_and_crops_cover_the_batch():
    s = Sampling(Transforms(crops=3, noise=0.0, flip=True), np.random.default_rng(0), 2, (9, 11), (6, 5))
    v = R.standard_normal((2, 3, 9, 11))
    g = R.standard_normal((6, 3, 6, 5))
    assert np.sum(s.forward(v) * g) == pytest.approx(np.sum(v * s.backward(g)), rel=1e-6)  # float32 copies
    assert list(s.owner) == [0, 0, 0, 1, 1, 1]
    ident = Sampling(Transforms(crops=1, scale=(1, 1), shift=0, rotate=0, noise=0), np.random.default_rng(0), 1,
                     (8, 8), (8, 8))
    np.testing.assert_allclose(ident.forward(v[:1, :, :8, :8]), v[:1, :, :8, :8], atol=1e-6)  # no transform
    with pytest.raises(fv.InputError):
        Transforms(crops=0)


def test_objectives_add_and_scale():
    o = Objective.class_(3) - 0.5 * Objective.channel("c", 2) + Objective.neuron("c", 1, 2, 3) / 4
    assert [t.kind for t in o.terms] == ["class", "channel", "neuron"]
    assert [t.weight for t in o.terms] == [1.0, -0.5, 0.25]
    assert parse("class:479 - 0.5*class:817").terms[1].weight == -0.5
    assert parse("channel:a-b:3 + 2*neuron:x:1:2:3").terms[0].layer == "a-b"
    with pytest.raises(fv.InputError):
        parse("colour:3")
    with pytest.raises(fv.InputError):
        Objective.direction("c", np.zeros(4))


@pytest.fixture(scope="module")
def vgg():
    return fv.load(zoo.vgg_like(softmax=False))


def test_a_combination_is_the_combination_of_its_terms(vgg):
    """One step's gradient is linear in the terms: compare a combined objective with its parts (no transforms,
    pixel parameterization, one step of plain ascent from the same start)."""
    relu = [l for l in vgg.layers if l.op_type == "Relu"][2].name
    x = R.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    kw = dict(steps=1, param="pixel", transforms="none", lp=None, tv=None, init=x, optimizer="momentum", lr=1e-3,
              quiet=True)  # one plain step, small enough that nothing reaches the range's bounds
    a = vgg.run(x, outputs=[relu])[relu][0]
    c, y, xx = np.unravel_index(a.argmax(), a.shape)  # units alive at x (a dead one would be redirected)
    c2 = int(a.mean(axis=(1, 2)).argmax())
    parts = [Objective.class_(2), Objective.channel(relu, c2), Objective.neuron(relu, int(c), int(y), int(xx))]
    weights = [1.0, -0.7, 2.0]
    step = lambda o: vgg.reconstruct(o, **kw).image.astype(np.float64) - x  # noqa: E731 -- lr * span * gradient
    combined = step(sum((w * p for w, p in zip(weights, parts)), Objective([])))
    separate = sum(w * step(p) for w, p in zip(weights, parts))
    assert np.linalg.norm(combined - separate) < 1e-3 * np.linalg.norm(separate)
    # the reported objective: the class logit minus 0.7 * the channel's mean plus 2 * the neuron
    r = vgg.reconstruct(sum((w * p for w, p in zip(weights, parts)), Objective([])), **kw)
    logits = vgg.run(x)[0]
    want = logits[2] - 0.7 * a[c2].mean() + 2.0 * a[c, y, xx]
    assert r.history["objective"][0] == pytest.approx(want, rel=1e-5)


def test_direction_equals_the_weighted_channels(vgg):
    relu = [l for l in vgg.layers if l.op_type == "Relu"][2].name
    c = vgg.run(np.zeros((1, 3, 32, 32), np.float32), outputs=[relu])[relu].shape[1]
    vec = R.standard_normal(c)
    x = R.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    kw = dict(steps=1, param="pixel", transforms="none", lp=None, tv=None, init=x, quiet=True)
    a = vgg.reconstruct(Objective.direction(relu, vec), **kw).history["objective"][0]
    b = vgg.reconstruct(sum((float(w) * Objective.channel(relu, k) for k, w in enumerate(vec)), Objective([])),
                        **kw).history["objective"][0]
    assert a == pytest.approx(b, rel=1e-5)


def test_diversity_gradient_equals_finite_differences():
    acts = R.standard_normal((4, 3, 2, 3))
    owner = np.array([0, 0, 1, 2])
    value, grad = diversity(acts, owner)
    assert -1 <= value <= 1
    h = 1e-6
    for _ in range(3):
        d = R.standard_normal(acts.shape)
        fd = (diversity(acts + h * d, owner)[0] - diversity(acts - h * d, owner)[0]) / (2 * h)
        assert fd == pytest.approx(np.sum(grad * d), rel=1e-5, abs=1e-9)


def test_diversity_makes_pictures_of_one_unit_differ(vgg):
    relu = [l for l in vgg.layers if l.op_type == "Relu"][2].name
    units = [fv.Unit(relu, channel=1)] * 3
    plain = vgg.reconstruct(units, steps=30, seed=0, quiet=True)
    diverse = vgg.reconstruct(units, steps=30, seed=0, quiet=True, diversity=50.0)

    def spread(r):
        grams = []
        for a in vgg.run(r.image, outputs=[relu])[relu]:
            g = a.reshape(a.shape[0], -1) @ a.reshape(a.shape[0], -1).T
            grams.append(g.ravel() / np.linalg.norm(g))
        return np.mean([grams[i] @ grams[j] for i in range(3) for j in range(3) if i != j])
    assert spread(diverse) < spread(plain)


def test_defaults_are_fourier_with_transforms_and_report_where_they_looked(vgg):
    r = vgg.reconstruct(1, steps=20, quiet=True)
    assert r.image.shape == (1, 3, 32, 32) and r.picture.shape == (1, 32, 32, 3)
    assert r.transparency.shape == (1, 32, 32) and r.transparency.max() == pytest.approx(1.0)
    assert r.history["objective"][-1] > r.history["objective"][0]
    lo, hi = vgg.input_bounds()
    assert (r.image >= lo.reshape(1, 3, 1, 1) - 1e-5).all() and (r.image <= hi.reshape(1, 3, 1, 1) + 1e-5).all()
    m = vgg.reconstruct(1, steps=20, param="maco", quiet=True)
    assert m.history["objective"][-1] > m.history["objective"][0]
    inv = vgg.invert(R.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32), vgg.layers[1].name, steps=5,
                     param="fourier", quiet=True)
    assert inv.image.shape == (1, 3, 32, 32)
    with pytest.raises(fv.InputError, match="param"):
        vgg.reconstruct(1, steps=2, param="wavelet")


def test_reconstruct_command_takes_objectives_neurons_directions_and_diversity(tmp_path):
    path = tmp_path / "vgg.onnx"
    onnx.save(zoo.vgg_like(softmax=False), str(path))
    model = fv.load(path)
    relu = str([i for i, l in enumerate(model.layers) if l.op_type == "Relu"][2])
    name = model.layers[int(relu)].name
    base = ["reconstruct", str(path), "--steps", "3", "-q"]
    assert main(base + ["--objective", f"class:1 - 0.5*channel:{name}:2", "-o", str(tmp_path / "a")]) == 0
    assert main(base + ["--layer", relu, "--channel", "1", "--neuron", "3,4", "--param", "maco", "--crops", "2",
                        "-o", str(tmp_path / "b")]) == 0
    np.save(tmp_path / "v.npy", np.ones(model.run(np.zeros((1, 3, 32, 32), np.float32), outputs=[name])[name].shape[1]))
    assert main(base + ["--layer", relu, "--direction", str(tmp_path / "v.npy"), "--copies", "2", "--diversity", "5",
                        "-o", str(tmp_path / "c")]) == 0
    assert np.load(tmp_path / "c" / "images.npy").shape == (2, 3, 32, 32)
    assert main(base + ["--target", "1", "--transforms", "crops=2,scale=0.5:0.9,rotate=5", "--param", "pixel",
                        "-o", str(tmp_path / "d")]) == 0
    assert main(base + ["--objective", "colour:3", "-o", str(tmp_path / "e")]) == 2
