"""Dataset examples against brute force with onnxruntime, resumable and on workers; receptive fields against the
support of the input gradient; patch replacement in closed form; the commands."""
import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

import fvgraph as fv
from fvgraph.cli import main
from fvgraph.methods.examples import build_bank, replace_patches, top_examples
from fvgraph.receptive import WHOLE, receptive_field
from tests import zoo
from tests.conftest import ort_session


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(11):
        sub = d / ("a" if k % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + k, 36, 3), dtype=np.uint8)).save(sub / f"img{k:02d}.png")
    return d


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "vgg.onnx"
    onnx.save(zoo.vgg_like(softmax=False), str(path))
    return path


def _brute_force(path, model, files, value, k):
    from fvgraph.image import load_image
    m = onnx.load(str(path))
    sess = ort_session(m, extra_outputs=[value])
    scores = []
    for f in files:
        x = load_image(f, model.preprocessing())
        a = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))[value]
        scores.append(a[0].reshape(a.shape[1], -1).max(axis=1))
    scores = np.array(scores)  # (images, channels)
    return {c: [(files[i], scores[i, c]) for i in sorted(range(len(files)), key=lambda i: (-scores[i, c], i))[:k]]
            for c in range(scores.shape[1])}


def test_top_examples_equal_brute_force_with_onnxruntime(net, folder, tmp_path):
    from fvgraph.batch import image_files
    model = fv.load(net)
    layer = [l for l in model.layers if l.op_type == "Relu"][2]
    files = [str(f) for f, _ in image_files([folder])]
    want = _brute_force(net, model, files, layer.output, 3)
    got = top_examples(model, [folder], layer.name, k=3, batch=4)
    assert set(got) == set(want)
    for c in want:
        assert [e.image for e in got[c]] == [f for f, _ in want[c]]
        np.testing.assert_allclose([e.score for e in got[c]], [s for _, s in want[c]], rtol=1e-5)
    # resumable: a state with some images done gives the same answer; two workers too
    state = tmp_path / "state.json"
    half = top_examples(model, [folder / "a"], layer.name, k=3, batch=2, state_file=state)
    assert json.loads(state.read_text())["done"] and half
    again = top_examples(model, [folder], layer.name, k=3, batch=4, state_file=state)
    assert {c: [e.image for e in r] for c, r in again.items()} == {c: [f for f, _ in w] for c, w in want.items()}
    two = top_examples(model, [folder], layer.name, channels=[0, 5], k=3, batch=3, workers=2, model_path=str(net))
    assert [e.image for e in two[5]] == [f for f, _ in want[5]]


def test_receptive_field_boxes_contain_the_input_gradient_support():
    """A ReLU-free conv net: a position's gradient is non-zero exactly inside its (clipped) receptive field."""
    b = zoo.NetBuilder((1, 3, 24, 24), 13, seed=2)
    x = b.conv("input", 3, 4, 3, stride=1, pad=[1, 1, 1, 1])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, 4, 4, 3, stride=2, pad=[0, 0, 1, 1], dilation=1)
    x = b.conv(x, 4, 4, 3, dilation=2, pad=[2, 2, 2, 2])
    model = fv.load(b.model(x))
    xin = np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)
    value = model.layers[-1].output
    field = receptive_field(model, value, model.shape_table(model.feeds(xin)))
    assert field != WHOLE
    for y, xx in [(0, 0), (2, 3), (5, 5)]:
        g = model.explain(xin, "gradient", target=fv.Unit(value, 1, y, xx)).relevance[0]
        ys, xs = np.nonzero(np.abs(g).sum(axis=0))
        y0, x0, y1, x1 = field.box(y, xx, (24, 24))
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1, ((y, xx), (y0, x0, y1, x1))
        # and it is tight where the max pool's window does not hide pixels: the box's rows and columns are reached
        assert ys.max() - ys.min() >= (y1 - y0) - 3 and xs.max() - xs.min() >= (x1 - x0) - 3


def test_patch_replacement_with_an_identical_copy_in_the_bank_gives_the_image_back(net, tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    src = tmp_path / "query.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src)
    shutil.copy(src, bank / "copy.png")
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(bank / "other.png")
    model = fv.load(net)
    layer = [l for l in model.layers if l.op_type == "Conv"][1].name  # no ReLU: no all-zero feature vectors
    cache = tmp_path / "cache"
    banked = build_bank(model, [bank], layer, cache)
    assert len(list(cache.iterdir())) == 1 and build_bank(model, [bank], layer, cache)[0].shape == banked[0].shape
    pic, neighbours = replace_patches(model, src, banked, layer)
    assert all(n[0].endswith("copy.png") for n in neighbours) and min(n[3] for n in neighbours) > 0.999
    from fvgraph.image import read_rgb, resize_crop
    want = resize_crop(read_rgb(src), model.preprocessing())
    covered = pic.sum(axis=2) > 0
    assert covered.mean() > 0.8 and np.array_equal(pic[covered], want[covered])


def test_examples_and_replace_commands(net, folder, tmp_path):
    out = tmp_path / "ex"
    layer = str([i for i, l in enumerate(fv.load(net).layers) if l.op_type == "Relu"][2])
    assert main(["examples", str(net), str(folder), "--layer", layer, "--channel", "0-2", "-k", "2", "-o", str(out),
                 "-q"]) == 0
    data = json.loads((out / "examples.json").read_text())
    assert set(data["channels"]) == {"0", "1", "2"} and len(data["channels"]["0"]) == 2
    assert all(len(e["box"]) == 4 for rows in data["channels"].values() for e in rows)
    assert len(list(out.glob("channel_*.png"))) == 3 and (out / "fvgraph-examples.state.json").exists()
    assert main(["examples", str(net), str(folder), "--layer", layer, "-o", str(out), "-q"]) == 2  # other options
    before = (out / "examples.json").read_text()
    assert main(["examples", str(net), str(folder), "--layer", layer, "--channel", "0-2", "-k", "2", "-o", str(out),
                 "-q"]) == 0  # the same run again: its own files, resumed (nothing left to count)
    assert (out / "examples.json").read_text() == before
    img = next(folder.rglob("*.png"))
    rep = tmp_path / "rep.png"
    assert main(["replace", str(net), str(img), "--bank", str(folder), "--layer", layer, "-o", str(rep),
                 "--no-cache", "-q"]) == 0
    assert Image.open(rep).size == (32, 32)
