"""Models as they are found: MatConvNet files in their historical layouts, detectors and segmenters (targets
beyond classes), dead units in activation maximization, readable layer shapes, and no traceback anywhere."""
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from PIL import Image
from scipy.io import savemat

import fvgraph as fv
from tests.conftest import ort_session, rel_l2
from tests.test_matconvnet import _write_v73, cell, mcn_bnorm, mcn_conv, mcn_lrn, mcn_pool, mcn_softmax, \
    struct_array, w
from tests.zoo import NetBuilder, seg_like, yolo_like

R = np.random.default_rng(5)


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "fvgraph", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((R.random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- MatConvNet as it exists
def cnn_train_gray(tmp_path, v73=False):
    """What cnn_train saves for a grayscale character net: meta.inputSize [20 20 1], a full 20x20 mean image,
    classes in meta.classes."""
    F1, b1 = w(5, 5, 1, 6), w(1, 6, scale=0.1)
    F2, b2 = w(8, 8, 6, 7), w(1, 7, scale=0.1)
    mean_image = (100 + 30 * R.random((20, 20))).astype(np.float32)
    layers = [{"type": "conv", "name": "conv1", "weights": cell([F1, b1]), "stride": 1.0, "pad": 0.0},
              {"type": "relu", "name": "relu1"},
              {"type": "pool", "name": "pool1", "method": "max", "pool": np.array([[2, 2]], float), "stride": 2.0,
               "pad": 0.0},
              {"type": "conv", "name": "fc", "weights": cell([F2, b2]), "stride": 1.0, "pad": 0.0},
              {"type": "softmaxloss", "name": "loss"}]
    net = {"layers": cell(layers),
           "meta": {"inputSize": np.array([[20, 20, 1]], float),
                    "normalization": {"averageImage": mean_image, "imageSize": np.array([[20, 20, 1]], float)},
                    "classes": {"name": cell([f"char{k}" for k in range(7)])}}}
    path = tmp_path / ("chars73.mat" if v73 else "chars.mat")
    _write_v73(path, net) if v73 else savemat(path, {"net": net})

    def ref(raw):
        h = np.maximum(mcn_conv(raw - mean_image[:, :, None], F1, b1, 0, 1), 0)
        return mcn_conv(mcn_pool(h, (2, 2), 2, (0, 0, 0, 0), "max"), F2, b2, 0, 1)
    return path, ref


@pytest.mark.parametrize("v73", [False, True], ids=["v7", "v7.3"])
def test_grayscale_cnn_train_net_with_a_full_mean_image(tmp_path, photo, v73):
    path, ref = cnn_train_gray(tmp_path, v73)
    proto = fv.convert.matconvnet(path)
    assert [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, 20, 20]
    raw = R.uniform(0, 255, (2, 20, 20, 1))
    want = np.stack([ref(r) for r in raw]).transpose(0, 3, 1, 2)
    x = raw.transpose(0, 3, 1, 2).astype(np.float32)
    model = fv.load(path)
    for got in (model.run(x), ort_session(proto).run(None, {proto.graph.input[0].name: x})[0]):
        assert rel_l2(got, want) < 1e-5  # the mean image is subtracted inside the graph
    spec = model.preprocessing()
    assert spec["channels"] == "L" and spec["mean"] == [0.0] and spec["size"] == [20, 20]
    assert model.class_names()[3] == "char3"
    r = cli("explain", path, photo, "-m", "gradient,guided,gradcam", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "out" / "photo_gradient.npy").shape == (1, 20, 20)


def test_pre_2015_layout_and_every_simplenn_layer_type(tmp_path):
    """filters/biases fields, normalization and classes at the top level; conv, relu with leak, sigmoid,
    noffset, normalize, avg pool, dropout, bnorm, softmax; the preprocessing options carried over."""
    F1, b1 = w(3, 3, 3, 6), w(1, 6, scale=0.1)
    F2 = w(3, 3, 6, 5)
    g, be = (1 + 0.1 * R.standard_normal(5)).astype(np.float32), (0.1 * R.standard_normal(5)).astype(np.float32)
    moments = np.stack([0.1 * R.standard_normal(5), 0.5 + R.random(5)], axis=1).astype(np.float32)
    lrn = np.array([[3, 1.5, 1e-3, 0.75]])
    layers = [{"type": "conv", "name": "c1", "filters": F1, "biases": b1, "stride": 1.0, "pad": 1.0},
              {"type": "relu", "name": "r1", "leak": 0.2},
              {"type": "noffset", "name": "off", "param": np.array([[0.3, 0.5]])},
              {"type": "normalize", "name": "n1", "param": lrn},
              {"type": "pool", "name": "p1", "method": "avg", "pool": np.array([[2, 2]], float), "stride": 2.0,
               "pad": 0.0},
              {"type": "dropout", "name": "d1", "rate": 0.5},
              {"type": "conv", "name": "c2", "filters": F2, "biases": np.zeros((1, 0), np.float32), "stride": 1.0,
               "pad": 0.0},
              {"type": "bnorm", "name": "bn", "filters": g, "biases": be, "moments": moments},
              {"type": "sigmoid", "name": "s"},
              {"type": "softmax", "name": "prob"}]
    net = {"layers": cell(layers),
           "normalization": {"averageImage": np.array([[[110.0, 100.0, 90.0]]]), "imageSize": np.array([[16, 16, 3]], float),
                             "keepAspect": 0.0, "border": np.array([[8, 8]], float), "interpolation": "bicubic"},
           "classes": {"name": cell(["a", "b", "c", "d", "e"]), "description": cell(["A", "B", "C", "D", "E"])}}
    path = tmp_path / "old.mat"
    savemat(path, {"net": net})
    proto = fv.convert.matconvnet(path)
    x_hwc = R.uniform(0, 255, (2, 16, 16, 3)) - np.array([110.0, 100.0, 90.0])

    def ref(x):
        h = mcn_conv(x, F1, b1, 1, 1)
        h = np.where(h > 0, h, 0.2 * h)
        h = h - 0.3 * np.sqrt((h ** 2).sum(axis=2, keepdims=True)) ** 0.5
        h = mcn_pool(mcn_lrn(h, lrn.reshape(-1)), (2, 2), 2, (0, 0, 0, 0), "avg")
        h = mcn_bnorm(mcn_conv(h, F2, None, 0, 1), g, be, moments)
        return mcn_softmax(1 / (1 + np.exp(-h)))
    want = np.stack([ref(x) for x in x_hwc]).transpose(0, 3, 1, 2)
    x = x_hwc.transpose(0, 3, 1, 2).astype(np.float32)
    for got in (fv.load(proto).run(x), ort_session(proto).run(None, {proto.graph.input[0].name: x})[0]):
        assert rel_l2(got, want) < 1e-5
    model = fv.load(path)
    spec = model.preprocessing()
    assert spec["resize"] == "stretch" and spec["border"] == [8, 8] and spec["interpolation"] == "bicubic"
    assert spec["mean"] == [110.0, 100.0, 90.0] and model.class_names() == ["A", "B", "C", "D", "E"]


@pytest.mark.parametrize("kind", ["pdist", "custom"])
def test_pdist_and_custom_layers_are_named(tmp_path, kind):
    layers = [{"type": "conv", "name": "c1", "weights": cell([w(3, 3, 3, 4), w(1, 4)]), "stride": 1.0, "pad": 1.0},
              {"type": kind, "name": "mine"}]
    path = tmp_path / "net.mat"
    savemat(path, {"net": {"layers": cell(layers)}})
    r = cli("convert", path, "-o", tmp_path / "net.onnx")
    assert r.returncode == 2 and "'mine'" in r.stderr and kind in r.stderr and r.stderr.count("\n") == 1


def test_dagnn_fcn_with_crop_scale_sigmoid(tmp_path):
    """An FCN-style DagNN: a strided conv, a transposed conv upsampling back, Crop to the input's size,
    Scale, Sigmoid, DropOut, SoftMax and a Loss layer (dropped)."""
    F1, b1 = w(4, 4, 3, 5), w(1, 5, scale=0.1)
    Fu = w(4, 4, 5, 5)  # convt: FH x FW x K(out) x D(in)
    sw, sb = (1 + 0.2 * R.standard_normal((1, 1, 5))).astype(np.float32), (0.1 * R.standard_normal((1, 1, 5))).astype(np.float32)
    layers = [
        {"name": "c1", "type": "dagnn.Conv", "inputs": cell(["data"]), "outputs": cell(["x1"]), "params": cell(["f1", "b1"]),
         "block": {"hasBias": True, "pad": 1.0, "stride": 2.0}},
        {"name": "up", "type": "dagnn.ConvTranspose", "inputs": cell(["x1"]), "outputs": cell(["x2"]),
         "params": cell(["fu"]), "block": {"upsample": 2.0, "crop": 0.0, "hasBias": False}},
        {"name": "crop", "type": "dagnn.Crop", "inputs": cell(["x2", "data"]), "outputs": cell(["x3"]),
         "params": cell([]), "block": {"crop": np.array([[1, 1]], float)}},
        {"name": "scale", "type": "dagnn.Scale", "inputs": cell(["x3"]), "outputs": cell(["x4"]),
         "params": cell(["sw", "sb"]), "block": {"hasBias": True}},
        {"name": "sig", "type": "dagnn.Sigmoid", "inputs": cell(["x4"]), "outputs": cell(["x5"]), "params": cell([]),
         "block": {}},
        {"name": "drop", "type": "dagnn.DropOut", "inputs": cell(["x5"]), "outputs": cell(["x6"]), "params": cell([]),
         "block": {"rate": 0.5}},
        {"name": "prob", "type": "dagnn.SoftMax", "inputs": cell(["x6"]), "outputs": cell(["prob"]), "params": cell([]),
         "block": {}},
        {"name": "loss", "type": "dagnn.Loss", "inputs": cell(["prob", "label"]), "outputs": cell(["objective"]),
         "params": cell([]), "block": {"loss": "softmaxlog"}}]
    params = [("f1", F1), ("b1", b1), ("fu", Fu), ("sw", sw), ("sb", sb)]
    net = {"layers": struct_array(layers, ["name", "type", "inputs", "outputs", "params", "block"]),
           "params": struct_array([{"name": n, "value": v} for n, v in params], ["name", "value"]),
           "vars": struct_array([{"name": "data"}], ["name"]),
           "meta": {"normalization": {"averageImage": np.array([[[120.0, 115.0, 100.0]]]),
                                      "imageSize": np.array([[12, 12, 3]], float)}}}
    path = tmp_path / "fcn.mat"
    savemat(path, {"net": net})
    proto = fv.convert.matconvnet(path)

    def convt(x, F, up):  # MatConvNet vl_nnconvt: y(up*i + p, up*j + q, k) += x(i, j, d) F(p, q, k, d)
        H, W = x.shape[:2]
        fh, fw = F.shape[:2]
        y = np.zeros(((H - 1) * up + fh, (W - 1) * up + fw, F.shape[2]))
        for i in range(H):
            for j in range(W):
                y[i * up:i * up + fh, j * up:j * up + fw] += np.einsum("pqkd,d->pqk", F, x[i, j])
        return y

    def ref(x):
        h = convt(mcn_conv(x, F1, b1, 1, 2), Fu, 2)[1:13, 1:13]
        h = 1 / (1 + np.exp(-(h * sw.reshape(-1) + sb.reshape(-1))))
        return mcn_softmax(h)
    x_hwc = R.uniform(0, 255, (2, 12, 12, 3)) - np.array([120.0, 115.0, 100.0])
    want = np.stack([ref(x) for x in x_hwc]).transpose(0, 3, 1, 2)
    x = x_hwc.transpose(0, 3, 1, 2).astype(np.float32)
    for got in (fv.load(proto).run(x), ort_session(proto).run(None, {proto.graph.input[0].name: x})[0]):
        assert got.shape == want.shape and rel_l2(got, want) < 1e-5


# --------------------------------------------------------------------------- detectors and segmenters
def test_a_yolo_output_element_as_the_target_on_every_method():
    proto = yolo_like(size=64, widths=(8, 8, 16, 16, 32))
    model, numpy_model = fv.load(proto), fv.load(proto, engine="numpy")
    x = R.random((2, 3, 64, 64)).astype(np.float32)
    target = fv.OutputTarget(index=(4 + 3, 70))  # class 3 of anchor 70
    seed = np.zeros_like(model.run(x))
    seed[:, 4 + 3, 70] = 1
    for m in ("gradient", "guided", "lrp-epsilon", "lrp-zplus", "gradcam"):
        e = model.explain(x, m, target=target)
        assert e.target is target and np.any(e.relevance)
        assert rel_l2(e.relevance, model.explain(x, m, target=seed).relevance) < 1e-6, m
        assert rel_l2(e.relevance, numpy_model.explain(x, m, target=target).relevance) < 1e-4, m
    with pytest.raises(fv.InputError, match="OutputTarget"):
        model.explain(x, "gradient")  # no class target on a detector: the message says what to use
    with pytest.raises(fv.InputError, match="does not fit"):
        model.explain(x, "gradient", target=fv.OutputTarget(index=(4 + 3,)))
    occ = model.occlusion(x[:1], box=16, stride=16, target=target)
    score = model.run(x[:1])[0, 7, 70]
    boxed = x[:1].copy()
    boxed[:, :, :16, :16] = 0
    assert occ.relevance[0, 0, 0] == pytest.approx(score - model.run(boxed)[0, 7, 70], rel=1e-4, abs=1e-6)
    r = model.reconstruct(target, steps=5, shape=(1, 3, 64, 64))
    assert r.history["objective"][-1] > r.history["objective"][0]


def test_a_segmentation_region_as_the_target():
    proto = seg_like()
    model = fv.load(proto)
    x = R.standard_normal((1, 3, 32, 32)).astype(np.float32)
    region = np.zeros((32, 32), np.float32)
    region[4:9, 10:14] = 1
    mask = np.zeros((4, 32, 32), np.float32)
    mask[2] = region  # class 2 over the region, as pytorch-grad-cam's SemanticSegmentationTarget
    e = model.explain(x, "gradient", target=fv.OutputTarget(mask=mask))
    pixels = [model.explain(x, "gradient", target=fv.OutputTarget(index=(2, i, j))).relevance
              for i, j in zip(*np.nonzero(region))]
    assert rel_l2(e.relevance, np.sum(pixels, axis=0)) < 1e-5  # the gradient is linear in the seed
    assert np.any(model.explain(x, "gradcam", target=fv.OutputTarget(mask=mask)).relevance)
    occ = model.occlusion(x, box=8, stride=8, target=fv.OutputTarget(mask=mask))
    assert occ.relevance.shape == (1, 32, 32)


def test_detector_and_segmenter_commands(tmp_path, photo):
    det = tmp_path / "det.onnx"
    onnx.save(yolo_like(size=64, widths=(8, 8, 16, 16, 32)), det)
    seg = tmp_path / "seg.onnx"
    onnx.save(seg_like(), seg)
    mask = tmp_path / "mask.png"
    m = np.zeros((32, 32), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    r = cli("explain", det, photo, "-m", "gradient,gradcam", "--target-index", "7,70", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "output (84, 84)" in r.stdout  # no class to name: the output's shape
    r = cli("explain", seg, photo, "-m", "guided", "--target-mask", mask, "--target-channel", "1", "-o", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    r = cli("occlude", det, photo, "--box", "16x16", "--stride", "16x16", "--target-index", "7,70", "-o", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    r = cli("check", "record", det, photo, "--methods", "gradient", "--target-index", "7,70", "-o", tmp_path / "ref.npz")
    assert r.returncode == 0, r.stderr
    r = cli("check", "compare", det, tmp_path / "ref.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    for bad in (("--target-index", "7,99999"), ("--target-index", "x"), ("--target-mask", tmp_path / "none.png")):
        r = cli("explain", det, photo, "-m", "gradient", *bad, "-o", tmp_path / "d")
        assert r.returncode == 2 and r.stderr.startswith("fvgraph: error:") and r.stderr.count("\n") == 1
    r = cli("explain", det, photo, "-m", "gradient", "-o", tmp_path / "e")  # a class target on a detector
    assert r.returncode == 2 and "OutputTarget" in r.stderr


def test_ultralytics_metadata_gives_letterbox_preprocessing_and_names(photo):
    model = fv.load(yolo_like(size=64, widths=(8, 8, 16, 16, 32)))  # metadata imgsz, stride, names
    spec = model.preprocessing()
    assert spec["resize"] == "letterbox" and spec["size"] == [64, 64] and spec["scale"] == 1 / 255.0
    assert spec["mean"] == [0.0, 0.0, 0.0] and spec["std"] == [1.0, 1.0, 1.0]
    assert model.class_names()[5] == "class5"
    x = fv.image.load_image(photo, spec)
    assert x.shape == (1, 3, 64, 64)
    assert np.allclose(x[0, :, 0, 0], 114 / 255)  # the 48x64 photo is letterboxed: grey bars above and below


# --------------------------------------------------------------------------- dead units
def _net_with_a_dead_unit(bias0):
    b = NetBuilder((1, 3, 16, 16), 13, seed=0)
    wt = b.param((4, 3, 3, 3))
    y = b.op("Conv", ["input", wt, b.const(np.array([bias0, 0.1, 0.1, 0.1], np.float32))], kernel_shape=[3, 3],
             pads=[1, 1, 1, 1])
    r = b.op("Relu", [y], name="act")
    return fv.load(b.model(b.gemm(b.flatten(r), 4 * 256, 3)))


def test_a_dead_unit_is_redirected_until_it_turns_on():
    model = _net_with_a_dead_unit(-2.5)
    x0 = np.zeros((1, 3, 16, 16), np.float32)
    assert not model.run(x0, outputs=["act"])["act"][0, 0].any()  # dead where the search starts
    r = model.reconstruct(fv.Unit("act", channel=0), steps=60, shape=(1, 3, 16, 16), lp=None, tv=None, param="pixel")
    assert r.history["redirected"][0] == 1 and r.history["redirected"][-1] == 0
    assert r.history["objective"][0] == 0 and r.history["objective"][-1] > 1 and r.history["dead"] == []
    for param in ("fourier", "maco"):  # the defaults too: the picture found turns the unit on
        r = model.reconstruct(fv.Unit("act", channel=0), steps=60, shape=(1, 3, 16, 16), param=param)
        assert r.history["redirected"][0] == 1 and r.history["dead"] == [], param
        assert model.run(r.image, outputs=["act"])["act"][0, 0].max() > 0, param


def test_a_dead_unit_beside_a_live_one_in_one_batch_ends_active():
    model = _net_with_a_dead_unit(-2.5)
    r = model.reconstruct([fv.Unit("act", channel=1), fv.Unit("act", channel=0)], steps=40, shape=(2, 3, 16, 16))
    assert r.history["dead"] == []
    acts = model.run(r.image, outputs=["act"])["act"]
    assert acts[0, 1].max() > 0 and acts[1, 0].max() > 0  # each picture turns its own unit on


def test_a_unit_that_stays_dead_is_reported(tmp_path):
    model = _net_with_a_dead_unit(-50.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = model.reconstruct([fv.Unit("act", channel=0), fv.Unit("act", channel=1)], steps=10,
                              shape=(2, 3, 16, 16))
    assert r.history["dead"] == [0]
    assert any(issubclass(c.category, fv.FvGraphWarning) and "stayed dead" in str(c.message) for c in caught)


# --------------------------------------------------------------------------- readable shapes
def test_info_shows_concrete_shapes(tmp_path):
    b = NetBuilder((1, 3, 1, 1), 13, seed=1, batch="batch")
    b.input_shape = ["batch", 3, "height", "width"]  # a fully dynamic export
    x = b.relu(b.conv("input", 3, 8, 3, stride=2))
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    proto = b.model(b.conv(x, 8, 4, 3, stride=2))
    path = tmp_path / "dyn.onnx"
    onnx.save(proto, path)
    r = cli("info", path, "--shape", "1x3x320x320")
    assert r.returncode == 0, r.stderr
    assert "(batch, 8, 160, 160)" in r.stdout and "(batch, 4, 40, 40)" in r.stdout and "floor" not in r.stdout
    r = cli("info", path)  # no size anywhere: the preprocessing's default size
    assert r.returncode == 0 and "floor" not in r.stdout and "(batch, 8, 112, 112)" in r.stdout
    r = cli("info", path, "--shape", "1x3xbig")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
