"""Occlusion: closed form on a linear model, coverage, a plain reference loop, incremental = full."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph.methods.occlusion import positions
from tests.zoo import ZOO


def _linear_model(H=12, W=10, C=2, seed=0):
    """score = sum(Wt * x): occlusion has a closed form."""
    Wt = np.random.default_rng(seed).standard_normal((1, C * H * W)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "lin", [x], [y], [numpy_helper.from_array(Wt, "W")])
    return fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])), Wt.reshape(C, H, W)


@pytest.mark.parametrize("incremental", [False, True])
def test_closed_form_on_a_linear_model(incremental):
    model, Wt = _linear_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 12, 10)).astype(np.float32)
    fill = 0.3
    box, stride = (4, 3), (3, 2)
    e = model.occlusion(x, box=box, stride=stride, fill=fill, target=0, incremental=incremental)
    want = np.zeros((12, 10))
    count = np.zeros((12, 10))
    for y0 in positions(12, 4, 3):
        for x0 in positions(10, 3, 2):
            drop = float(np.sum(Wt[:, y0:y0 + 4, x0:x0 + 3] * (x[0, :, y0:y0 + 4, x0:x0 + 3] - fill)))
            want[y0:y0 + 4, x0:x0 + 3] += drop
            count[y0:y0 + 4, x0:x0 + 3] += 1
    np.testing.assert_allclose(e.relevance[0], want / count, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(e.extras["counts"], count)


def test_positions_and_edge_coverage():
    assert positions(12, 4, 4) == [0, 4, 8]             # fits exactly: 0, s, 2s
    assert positions(12, 4, 3) == [0, 3, 6, 8]          # one more box flush with the edge
    assert positions(10, 10, 3) == [0]
    assert positions(11, 3, 5) == [0, 5, 8]
    for size, box, stride in ((12, 4, 3), (31, 7, 5), (16, 16, 8), (20, 3, 3)):
        cover = np.zeros(size, int)
        for p in positions(size, box, stride):
            cover[p:p + box] += 1
        assert cover.min() >= 1, (size, box, stride)
    # a stride longer than the box leaves gaps: those pixels get 0, and counts say so
    model, _ = _linear_model()
    e = model.occlusion(np.ones((1, 2, 12, 10), np.float32), box=(2, 2), stride=(5, 5))
    assert np.isfinite(e.relevance).all() and (e.extras["counts"] == 0).any()
    assert (e.relevance[0][e.extras["counts"] == 0] == 0).all()


def _reference(model, x, box, stride, fill, seed=0):
    """One full forward per box, written plainly."""
    N, C, H, W = x.shape
    out = model.outputs[0].name
    logits = model.run(x)
    target = logits.argmax(axis=1)
    rng = np.random.default_rng(seed)
    rel = np.zeros((N, H, W))
    for n in range(N):
        boxes = [(y, xx) for y in positions(H, box[0], stride[0]) for xx in positions(W, box[1], stride[1])]
        if fill == "random":
            lo = x[n].min(axis=(1, 2)).reshape(1, C, 1, 1)
            hi = x[n].max(axis=(1, 2)).reshape(1, C, 1, 1)
            patches = (lo + (hi - lo) * rng.random((len(boxes), C) + box)).astype(np.float32)
        elif fill == "mean":
            patches = np.broadcast_to(x[n].mean(axis=(1, 2)).reshape(1, C, 1, 1), (len(boxes), C) + box)
        else:
            patches = np.full((len(boxes), C) + box, fill, np.float32)
        total, count = np.zeros((H, W)), np.zeros((H, W))
        for k, (y, xx) in enumerate(boxes):
            xo = x[n:n + 1].copy()
            xo[0, :, y:y + box[0], xx:xx + box[1]] = patches[k]
            drop = logits[n, target[n]] - model.run(xo)[0, target[n]]
            total[y:y + box[0], xx:xx + box[1]] += drop
            count[y:y + box[0], xx:xx + box[1]] += 1
        rel[n] = total / count
    del out
    return rel


@pytest.mark.parametrize("name", ["vgg_like", "resnet_like", "inception_like", "mobilenet_like", "alexnet_like"])
@pytest.mark.parametrize("fill", [0.0, "mean", "random"])
def test_against_a_plain_reference_loop(name, fill):
    """Full passes, the windows as one onnxruntime graph, the windows on fvgraph's executor (engine numpy)."""
    proto = ZOO[name](opset=13) if name != "vgg_like" else ZOO[name](softmax=False)
    model = fv.load(proto)
    shape = [2] + list(model.inputs[0].shape[1:])
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    box, stride = (9, 7), (6, 5)
    ref = _reference(model, x, box, stride, fill)
    for m, incremental, way in ((model, False, "full passes"), (model, True, "windows"),
                                (fv.load(proto, engine="numpy"), True, "incremental")):
        e = m.occlusion(x, box=box, stride=stride, fill=fill, batch_size=7, incremental=incremental)
        err = np.linalg.norm(e.relevance - ref) / np.linalg.norm(ref)
        assert err < 1e-5 and e.extras["way"] == way, (name, fill, way, err)


def test_incremental_equals_full_with_units_and_probabilities():
    model = fv.load(ZOO["resnet_like"]())
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    layer = [l for l in model.layers if l.op_type == "Relu"][2]
    for kw in (dict(target=fv.Unit(layer.name, channel=3)), dict(score="prob"), dict(fill=[0.1, -0.2, 0.3])):
        a = model.occlusion(x, box=(6, 6), stride=(3, 3), incremental=False, **kw)
        b = model.occlusion(x, box=(6, 6), stride=(3, 3), incremental=True, **kw)
        assert np.linalg.norm(a.relevance - b.relevance) <= 2e-5 * np.linalg.norm(a.relevance), kw  # float32 sums


def test_seed_determinism_and_bad_options():
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = model.occlusion(x, box=8, stride=8, fill="random", seed=3)
    b = model.occlusion(x, box=8, stride=8, fill="random", seed=3)
    c = model.occlusion(x, box=8, stride=8, fill="random", seed=4)
    np.testing.assert_array_equal(a.relevance, b.relevance)
    assert not np.array_equal(a.relevance, c.relevance)
    for kw, msg in ((dict(box=(40, 8)), "larger"), (dict(box=(0, 8)), "positive"), (dict(box=(-2, 4)), "positive"),
                    (dict(stride=0), "positive"), (dict(fill="blue"), "fill"), (dict(fill=[1, 2]), "per channel"),
                    (dict(score="softmax"), "score"), (dict(box="big"), "pair")):
        with pytest.raises(fv.InputError, match=msg):
            model.occlusion(x, **kw)


def test_occlude_command(tmp_path):
    import subprocess
    import sys

    from fvgraph.cli import DEMO_MODEL
    from fvgraph.image import demo_images
    img = str(demo_images()[1])
    r = subprocess.run([sys.executable, "-m", "fvgraph", "occlude", str(DEMO_MODEL), img, "--box", "64x64",
                        "--stride", "56x56", "--fill", "random", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "coffee_occlusion.npy").shape == (224, 224)
    assert (tmp_path / "coffee_occlusion_overlay.png").is_file()
    r = subprocess.run([sys.executable, "-m", "fvgraph", "occlude", str(DEMO_MODEL), img, "--box", "300x300",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.startswith("fvgraph: error:") and "larger" in r.stderr


def test_incremental_equals_full_on_the_embedded_model():
    """Exporter-style graph: TF-style Pad nodes, depthwise convs, a Shape -> Reshape head."""
    from fvgraph.cli import DEMO_MODEL
    from fvgraph.image import demo_images, load_image
    model = fv.load(DEMO_MODEL)
    x = load_image(demo_images()[0], model.preprocessing())
    a = model.occlusion(x, box=48, stride=44, fill="mean", incremental=False)
    b = model.occlusion(x, box=48, stride=44, fill="mean", incremental=True)
    assert np.linalg.norm(a.relevance - b.relevance) <= 1e-5 * np.linalg.norm(a.relevance)


def test_occlusion_runs_on_any_model_onnxruntime_runs(tmp_path):
    """A model with an op fvgraph's executor lacks (Shrink) loads with one warning; occlusion's full passes run
    on onnxruntime and equal one plain onnxruntime forward per box; the reverse pass and the numpy engine
    name the op and its node; the command line says so in one line."""
    import subprocess
    import sys

    import onnx
    import onnxruntime as ort
    from PIL import Image
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Shrink", ["c"], ["s"], lambd=0.1, name="the_shrink"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "shrink", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                           numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "wg")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "shrink.onnx"
    onnx.save(proto, str(path))
    with pytest.warns(fv.FvGraphWarning, match="cannot differentiate this model .Shrink."):
        model = fv.load(str(path))
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": x})[0]
    k = logits.argmax(axis=1)
    want = np.zeros((2, 16, 16))
    for n in range(2):
        total, count = np.zeros((16, 16)), np.zeros((16, 16))
        for y in positions(16, 6, 5):
            for xx in positions(16, 6, 5):
                xo = x[n:n + 1].copy()
                xo[0, :, y:y + 6, xx:xx + 6] = 0
                total[y:y + 6, xx:xx + 6] += logits[n, k[n]] - sess.run(None, {"x": xo})[0][0, k[n]]
                count[y:y + 6, xx:xx + 6] += 1
        want[n] = total / np.maximum(count, 1)
    got = model.occlusion(x, box=6, stride=5)
    assert np.abs(got.relevance - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    # the windows run as one graph on onnxruntime: they need no kernel of fvgraph's executor
    windows = model.occlusion(x, box=6, stride=5, incremental=True)
    assert windows.extras["way"] == "windows"
    assert np.abs(windows.relevance - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    for refused in (lambda: model.explain(x, "gradient"), lambda: fv.load(str(path), engine="numpy")):
        with pytest.raises(fv.FvGraphError, match="Shrink: 1 node.s.: the_shrink"):
            refused()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(path), str(tmp_path / "p.png"), "-m",
                        "occlusion,gradient", "-p", "box=6", "-o", str(tmp_path / "out")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "the_shrink" in r.stderr
    assert (tmp_path / "out" / "p_occlusion.npy").exists()  # what could run was written before the refusal
