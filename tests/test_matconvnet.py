"""MatConvNet .mat -> ONNX: SimpleNN and DagNN files written in MatConvNet's layout, checked against a plain
NumPy implementation of MatConvNet's layer formulas (from its documentation), in fvgraph and onnxruntime."""
import subprocess
import sys

import numpy as np
import pytest
from scipy.io import savemat

import fvgraph as fv
from tests.conftest import ort_session

R = np.random.default_rng(11)


# --------------------------------------------------------------------------- MatConvNet, in NumPy (H x W x C)
def mcn_conv(x, F, b, pad, stride, dilate=1):
    t, bo, l, r = np.broadcast_to(np.asarray(pad).reshape(-1), (4,)) if np.size(pad) > 1 else [pad] * 4
    sy, sx = (stride, stride) if np.isscalar(stride) else stride
    dy, dx = (dilate, dilate) if np.isscalar(dilate) else dilate
    xp = np.pad(x, ((t, bo), (l, r), (0, 0)))
    fh, fw = F.shape[:2]
    H = (xp.shape[0] - (fh - 1) * dy - 1) // sy + 1
    W = (xp.shape[1] - (fw - 1) * dx - 1) // sx + 1
    out = np.zeros((H, W, F.shape[3]))
    for i in range(fh):
        for j in range(fw):
            patch = xp[i * dy:i * dy + (H - 1) * sy + 1:sy, j * dx:j * dx + (W - 1) * sx + 1:sx]
            out += patch @ F[i, j]
    return out + (0 if b is None else np.asarray(b).reshape(-1))


def mcn_pool(x, size, stride, pad, method):
    t, bo, l, r = pad
    ph, pw = size
    H, W = x.shape[:2]
    Ho, Wo = (H + t + bo - ph) // stride + 1, (W + l + r - pw) // stride + 1
    out = np.zeros((Ho, Wo, x.shape[2]))
    for y in range(Ho):
        for xx in range(Wo):
            y1, x1 = y * stride - t, xx * stride - l
            y2, x2 = min(y1 + ph, H), min(x1 + pw, W)
            y1, x1 = max(y1, 0), max(x1, 0)
            win = x[y1:y2, x1:x2]
            out[y, xx] = win.max(axis=(0, 1)) if method == "max" else win.mean(axis=(0, 1))
    return out


def mcn_lrn(x, param):
    n, kappa, alpha, beta = param
    n = int(n)
    m1, m2 = (n - 1) // 2, n - (n - 1) // 2 - 1
    C = x.shape[2]
    out = np.zeros_like(x)
    for t in range(C):
        acc = (x[:, :, max(t - m1, 0):min(t + m2, C - 1) + 1] ** 2).sum(axis=2)
        out[:, :, t] = x[:, :, t] * (kappa + alpha * acc) ** (-beta)
    return out


def mcn_bnorm(x, g, b, moments):
    return g * (x - moments[:, 0]) / moments[:, 1] + b


def mcn_softmax(x):
    e = np.exp(x - x.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


# --------------------------------------------------------------------------- writing .mat files
def cell(items):
    c = np.empty((1, len(items)), dtype=object)
    for k, v in enumerate(items):
        c[0, k] = v
    return c


def struct_array(records, fields):
    a = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for k, rec in enumerate(records):
        for f in fields:
            a[0, k][f] = rec.get(f, np.zeros((0, 0)))
    return a


def w(*shape, scale=None):
    scale = scale or np.sqrt(2.0 / np.prod(shape[:-1]))
    return (R.standard_normal(shape) * scale).astype(np.float32)


def meta(size, classes):
    return {"normalization": {"averageImage": np.array([[[120.0, 115.0, 100.0]]], np.float32),
                              "imageSize": np.array([size, size, 3], np.float64), "interpolation": "bilinear"},
            "classes": {"name": cell([f"n{k:05d}" for k in range(classes)]),
                        "description": cell([f"class {k}" for k in range(classes)])}}


def lenet(tmp_path):
    F1, b1 = w(5, 5, 3, 6), w(1, 6, scale=0.1)
    F2, b2 = w(5, 5, 6, 8), w(1, 8, scale=0.1)
    F3, b3 = w(4, 4, 8, 16), w(1, 16, scale=0.1)   # fully connected, stored as a convolution
    F4, b4 = w(1, 1, 16, 5), w(1, 5, scale=0.1)
    layers = [
        {"type": "conv", "name": "conv1", "weights": cell([F1, b1]), "stride": 1.0, "pad": 0.0},
        {"type": "pool", "name": "pool1", "method": "max", "pool": np.array([[2, 2]], float), "stride": 2.0,
         "pad": 0.0},
        {"type": "relu", "name": "relu1"},
        {"type": "conv", "name": "conv2", "weights": cell([F2, b2]), "stride": 1.0, "pad": 0.0},
        {"type": "pool", "name": "pool2", "method": "max", "pool": np.array([[2, 2]], float), "stride": 2.0,
         "pad": 0.0},
        {"type": "relu", "name": "relu2", "leak": 0.1},
        {"type": "conv", "name": "fc1", "weights": cell([F3, b3]), "stride": 1.0, "pad": 0.0},
        {"type": "relu", "name": "relu3"},
        {"type": "dropout", "name": "drop", "rate": 0.5},
        {"type": "conv", "name": "fc2", "weights": cell([F4, b4]), "stride": 1.0, "pad": 0.0},
        {"type": "softmaxloss", "name": "loss"},
    ]
    path = tmp_path / "lenet.mat"
    savemat(path, {"net": {"layers": cell(layers), "meta": meta(28, 5)}})

    def ref(x):
        h = mcn_conv(x, F1, b1, 0, 1)
        h = np.maximum(mcn_pool(h, (2, 2), 2, (0, 0, 0, 0), "max"), 0)
        h = mcn_conv(h, F2, b2, 0, 1)
        h = mcn_pool(h, (2, 2), 2, (0, 0, 0, 0), "max")
        h = np.where(h > 0, h, 0.1 * h)
        h = np.maximum(mcn_conv(h, F3, b3, 0, 1), 0)
        return mcn_conv(h, F4, b4, 0, 1)
    return path, 28, ref


def vgg_lrn(tmp_path):
    """LRN, odd pooling sizes, asymmetric padding, average pooling over padding, dilation, 1x1 filters."""
    F1, b1 = w(3, 3, 3, 8), w(1, 8, scale=0.1)
    F2, b2 = w(3, 3, 8, 8), w(1, 8, scale=0.1)
    F3 = w(1, 1, 8, 6)
    F4, b4 = w(3, 3, 6, 4), w(1, 4, scale=0.1)
    lrn = np.array([[5, 2.0, 1e-4 * 5, 0.75]])
    layers = [
        {"type": "conv", "name": "c1", "weights": cell([F1, b1]), "stride": np.array([[2, 1]], float),
         "pad": np.array([[1, 0, 2, 1]], float)},
        {"type": "relu", "name": "r1"},
        {"type": "normalize", "name": "n1", "param": lrn},
        {"type": "pool", "name": "p1", "method": "max", "pool": np.array([[3, 3]], float), "stride": 2.0,
         "pad": np.array([[0, 1, 0, 1]], float)},
        {"type": "conv", "name": "c2", "weights": cell([F2, b2]), "stride": 1.0, "pad": 2.0, "dilate": 2.0},
        {"type": "relu", "name": "r2"},
        {"type": "pool", "name": "p2", "method": "avg", "pool": np.array([[3, 2]], float), "stride": 2.0,
         "pad": np.array([[1, 1, 0, 1]], float)},
        {"type": "conv", "name": "c3", "weights": cell([F3, np.zeros((1, 0), np.float32)]), "stride": 1.0,
         "pad": 0.0},
        {"type": "conv", "name": "c4", "weights": cell([F4, b4]), "stride": 1.0, "pad": 1.0},
        {"type": "softmax", "name": "prob"},
    ]
    path = tmp_path / "vgg.mat"
    savemat(path, {"net": {"layers": cell(layers), "meta": meta(33, 4)}})

    def ref(x):
        h = np.maximum(mcn_conv(x, F1, b1, [1, 0, 2, 1], (2, 1)), 0)
        h = mcn_lrn(h, lrn.reshape(-1))
        h = mcn_pool(h, (3, 3), 2, (0, 1, 0, 1), "max")
        h = np.maximum(mcn_conv(h, F2, b2, 2, 1, 2), 0)
        h = mcn_pool(h, (3, 2), 2, (1, 1, 0, 1), "avg")
        h = mcn_conv(h, F3, None, 0, 1)
        return mcn_softmax(mcn_conv(h, F4, b4, 1, 1))
    return path, 33, ref


def dag_resnet(tmp_path):
    C = 6
    F0 = w(3, 3, 3, C)
    F1, F2 = w(3, 3, C, C), w(3, 3, C, C)
    Fb = w(1, 1, C, 4)
    Fc, bc = w(1, 1, C + 4, 3), w(1, 3, scale=0.1)

    def bn():
        return (1 + 0.1 * R.standard_normal(C)).astype(np.float32), (0.1 * R.standard_normal(C)).astype(np.float32), \
            np.stack([0.1 * R.standard_normal(C), 0.5 + R.random(C)], axis=1).astype(np.float32)
    g0, be0, m0 = bn()
    g1, be1, m1 = bn()
    conv = lambda name, i, o, p, pad, bias=False: {  # noqa: E731
        "name": name, "type": "dagnn.Conv", "inputs": cell([i]), "outputs": cell([o]), "params": cell(p),
        "block": {"size": np.zeros((1, 4)), "hasBias": bias, "pad": float(pad), "stride": 1.0}}
    layers = [
        conv("conv0", "input", "x0", ["conv0_f"], 1),
        {"name": "bn0", "type": "dagnn.BatchNorm", "inputs": cell(["x0"]), "outputs": cell(["x1"]),
         "params": cell(["bn0_m", "bn0_b", "bn0_x"]), "block": {"epsilon": 1e-4}},
        {"name": "relu0", "type": "dagnn.ReLU", "inputs": cell(["x1"]), "outputs": cell(["x2"]), "params": cell([]),
         "block": {"leak": 0.0}},
        conv("conv1", "x2", "x3", ["conv1_f"], 1),
        {"name": "bn1", "type": "dagnn.BatchNorm", "inputs": cell(["x3"]), "outputs": cell(["x4"]),
         "params": cell(["bn1_m", "bn1_b", "bn1_x"]), "block": {"epsilon": 1e-4}},
        {"name": "relu1", "type": "dagnn.ReLU", "inputs": cell(["x4"]), "outputs": cell(["x5"]), "params": cell([]),
         "block": {"leak": 0.0}},
        conv("conv2", "x5", "x6", ["conv2_f"], 1),
        {"name": "sum", "type": "dagnn.Sum", "inputs": cell(["x6", "x2"]), "outputs": cell(["x7"]),
         "params": cell([]), "block": {}},
        conv("branch", "x7", "x8", ["branch_f"], 0),
        {"name": "cat", "type": "dagnn.Concat", "inputs": cell(["x7", "x8"]), "outputs": cell(["x9"]),
         "params": cell([]), "block": {"dim": 3.0}},
        {"name": "pool", "type": "dagnn.Pooling", "inputs": cell(["x9"]), "outputs": cell(["x10"]),
         "params": cell([]), "block": {"method": "avg", "poolSize": np.array([[12, 12]], float), "pad": 0.0,
                                         "stride": 1.0}},
        conv("cls", "x10", "prediction", ["cls_f", "cls_b"], 0, bias=True),
        {"name": "loss", "type": "dagnn.Loss", "inputs": cell(["prediction", "label"]), "outputs": cell(["objective"]),
         "params": cell([]), "block": {"loss": "softmaxlog"}},
    ]
    params = [("conv0_f", F0), ("bn0_m", g0), ("bn0_b", be0), ("bn0_x", m0), ("conv1_f", F1), ("bn1_m", g1),
              ("bn1_b", be1), ("bn1_x", m1), ("conv2_f", F2), ("branch_f", Fb), ("cls_f", Fc), ("cls_b", bc)]
    net = {"layers": struct_array(layers, ["name", "type", "inputs", "outputs", "params", "block"]),
           "params": struct_array([{"name": n, "value": v} for n, v in params], ["name", "value"]),
           "vars": struct_array([{"name": "input"}], ["name"]), "meta": meta(12, 3)}
    path = tmp_path / "dag.mat"
    savemat(path, {"net": net})

    def ref(x):
        h0 = np.maximum(mcn_bnorm(mcn_conv(x, F0, None, 1, 1), g0, be0, m0), 0)
        h = np.maximum(mcn_bnorm(mcn_conv(h0, F1, None, 1, 1), g1, be1, m1), 0)
        s = mcn_conv(h, F2, None, 1, 1) + h0
        cat = np.concatenate([s, mcn_conv(s, Fb, None, 0, 1)], axis=2)
        p = mcn_pool(cat, (12, 12), 1, (0, 0, 0, 0), "avg")
        return mcn_conv(p, Fc, bc, 0, 1)
    return path, 12, ref


@pytest.mark.parametrize("make", [lenet, vgg_lrn, dag_resnet], ids=["simplenn-lenet", "simplenn-vgg-lrn", "dagnn-resnet"])
def test_converted_nets_match_matconvnet_formulas(make, tmp_path):
    path, size, ref = make(tmp_path)
    proto = fv.convert.matconvnet(path)
    x_hwc = R.uniform(0, 255, (2, size, size, 3)) - np.array([120.0, 115.0, 100.0])
    want = np.stack([ref(x) for x in x_hwc]).transpose(0, 3, 1, 2)
    x = x_hwc.transpose(0, 3, 1, 2).astype(np.float32)
    got = fv.load(proto).run(x)
    ort_out = ort_session(proto).run(None, {proto.graph.input[0].name: x})[0]
    for out in (got, ort_out):
        assert out.shape == want.shape
        assert np.linalg.norm(out - want) / np.linalg.norm(want) < 1e-5
    # fv.load reads the .mat directly, metadata carries the preprocessing and class names
    model = fv.load(path)
    assert model.preprocessing()["mean"] == [120.0, 115.0, 100.0]
    assert model.class_names()[1] == "class 1"


def test_convert_command_and_info_on_a_mat_file(tmp_path):
    path, _, _ = lenet(tmp_path)
    out = tmp_path / "lenet.onnx"
    run = lambda *a: subprocess.run([sys.executable, "-m", "fvgraph", *a], capture_output=True, text=True,  # noqa
                                    timeout=120)
    r = run("convert", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert fv.load(out).run(np.zeros((1, 3, 28, 28), np.float32)).shape == (1, 5, 1, 1)
    r = run("convert", str(path), "-o", str(out))
    assert r.returncode != 0 and "exists" in r.stderr
    r = run("info", str(path))
    assert r.returncode == 0 and "conv1" in r.stdout and "MaxPool" in r.stdout


def test_unknown_layer_is_named_and_nothing_is_written(tmp_path):
    layers = [{"type": "conv", "name": "c1", "weights": cell([w(3, 3, 3, 4), w(1, 4)]), "stride": 1.0, "pad": 1.0},
              {"type": "spatialtransformer", "name": "st"}]
    path = tmp_path / "bad.mat"
    savemat(path, {"net": {"layers": cell(layers)}})
    with pytest.raises(fv.UnsupportedModelError, match=r"layer 2 of 2.*'st'.*spatialtransformer"):
        fv.convert.matconvnet(path)
    out = tmp_path / "bad.onnx"
    r = subprocess.run([sys.executable, "-m", "fvgraph", "convert", str(path), "-o", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "spatialtransformer" in r.stderr and not out.exists()
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(fv.ModelLoadError):
        fv.convert.matconvnet(tmp_path / "junk.mat")


# --------------------------------------------------------------------------- MATLAB v7.3 (HDF5)
def _write_v73(path, net):
    """Write a struct the way MATLAB's save -v7.3 does: HDF5 behind a 512-byte MATLAB header; structs are
    groups, cells and struct-array fields hold references into #refs#, char is uint16, arrays transposed."""
    import h5py
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        counter = [0]

        def put(parent, name, v):
            if isinstance(v, dict):
                g = parent.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
                for k, x in v.items():
                    put(g, k, x)
            elif isinstance(v, np.ndarray) and v.dtype == object:  # a cell
                items = list(v.reshape(-1))
                ds = parent.create_dataset(name, (len(items), 1), dtype=h5py.ref_dtype)
                for i, x in enumerate(items):
                    counter[0] += 1
                    key = f"r{counter[0]}"
                    put(refs, key, x)
                    ds[i, 0] = refs[key].ref
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            elif isinstance(v, str):
                ds = parent.create_dataset(name, data=np.array([ord(c) for c in v], np.uint16).reshape(-1, 1))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
            else:
                a = np.atleast_2d(np.asarray(v))
                ds = parent.create_dataset(name, data=a.T)
                ds.attrs["MATLAB_class"] = np.bytes_("single" if a.dtype == np.float32 else "double")
        put(f, "net", net)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(128))


def test_v73_hdf5_files_convert_like_v5(tmp_path):
    F1, b1 = w(3, 3, 3, 4), w(1, 4, scale=0.1)
    F2, b2 = w(1, 1, 4, 2), w(1, 2, scale=0.1)
    layers = [{"type": "conv", "name": "c1", "weights": cell([F1, b1]), "stride": 1.0, "pad": 1.0},
              {"type": "relu", "name": "r1"},
              {"type": "pool", "name": "p1", "method": "avg", "pool": np.array([[2, 2]], float), "stride": 2.0,
               "pad": 0.0},
              {"type": "conv", "name": "c2", "weights": cell([F2, b2]), "stride": 1.0, "pad": 0.0}]
    net = {"layers": cell(layers), "meta": {"normalization": {"imageSize": np.array([8.0, 8.0, 3.0])}}}
    v5, v73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
    savemat(v5, {"net": net})
    _write_v73(v73, net)
    assert open(v73, "rb").read(10) == b"MATLAB 7.3"
    x = R.standard_normal((1, 3, 8, 8)).astype(np.float32)
    a, b = fv.load(v5).run(x), fv.load(v73).run(x)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert b.shape == (1, 2, 4, 4)
