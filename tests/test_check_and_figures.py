"""fvgraph check (record/compare/diff/parity), the testing helper, and the comparison figures."""
import json
import subprocess
import sys
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

import fvgraph as fv
from fvgraph.testing import assert_explanations_close
from tests.zoo import ZOO


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fvgraph", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


@pytest.fixture()
def setup(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(ZOO["resnet_like"](), model)
    imgs = []
    for k in range(2):
        p = tmp_path / f"img{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        imgs.append(str(p))
    return tmp_path, str(model), imgs


def _perturbed(src, dst, scale=1.05):
    m = onnx.load(src)
    t = next(t for t in m.graph.initializer if len(t.dims) == 4)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(scale), t.name))
    onnx.save(m, dst)


def test_record_compare_round_trip_and_a_perturbed_model_is_caught(setup):
    tmp, model, imgs = setup
    ref = tmp / "ref.npz"
    r = _cli("check", "record", model, *imgs, "--methods", "gradient,lrp-epsilon:epsilon=0.01,gradcam", "--out",
             str(ref))
    assert r.returncode == 0, r.stderr
    r = _cli("check", "compare", model, str(ref), "--json", str(tmp / "r.json"), "--junit", str(tmp / "r.xml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all agree" in r.stdout
    report = json.loads((tmp / "r.json").read_text())
    assert report["ok"] and {x["name"] for x in report["results"]} == {"output", "gradient", "lrp-epsilon:epsilon=0.01",
                                                                          "gradcam"}
    _perturbed(model, tmp / "bad.onnx")
    r = _cli("check", "compare", str(tmp / "bad.onnx"), str(ref), "--junit", str(tmp / "bad.xml"))
    assert r.returncode == 1 and "DIFFERS" in r.stdout
    suite = ET.parse(tmp / "bad.xml").getroot()
    assert suite.tag == "testsuite" and int(suite.get("failures")) >= 1
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert "output" in failed
    r = _cli("check", "compare", model, str(tmp / "missing.npz"))
    assert r.returncode == 2 and r.stderr.startswith("fvgraph: error:")


def test_diff_of_two_models_and_parity(setup):
    tmp, model, imgs = setup
    r = _cli("check", "diff", model, model, *imgs, "--methods", "guided")
    assert r.returncode == 0, r.stdout + r.stderr
    _perturbed(model, tmp / "bad.onnx", 1.5)
    r = _cli("check", "diff", model, str(tmp / "bad.onnx"), *imgs, "--methods", "guided")
    assert r.returncode == 1
    r = _cli("check", "parity", model, "--image", imgs[0])
    assert r.returncode == 0 and "agree" in r.stdout, r.stdout + r.stderr


def test_parity_names_the_first_diverging_layer(monkeypatch):
    from fvgraph import compare
    proto = ZOO["vgg_like"]()
    model = fv.load(proto)
    relu = [n for n in model.graph.nodes if n.op_type == "Relu"][1]
    k = model.executor.kernels[model.executor.node_index[id(relu)]]
    monkeypatch.setattr(k, "forward", lambda x: (np.maximum(x, 0) * np.float32(1.01),))  # a bug in one layer
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    rows, first = compare.parity(model, proto, x)
    assert first == relu.name
    assert all(ok for name, _, _, ok in rows[:[r[0] for r in rows].index(relu.name)])


def test_assert_explanations_close():
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = model.explain(x, "guided")
    assert_explanations_close(a, model.explain(x, "guided"))
    with pytest.raises(AssertionError, match="differ"):
        assert_explanations_close(a, model.explain(x, "gradient"))
    assert_explanations_close(a.relevance, a.relevance * 1.00001, min_correlation=0.99, min_topk_overlap=0.9)


def test_methods_and_networks_figures(setup):
    tmp, model, imgs = setup
    out = tmp / "fig.png"
    r = _cli("figure", "methods", model, *imgs, "--methods", "gradient,lrp-epsilon:epsilon=0.001,cam,occlusion:box=8",
             "-o", str(out))
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.size[0] > 4 * im.size[1] // 2  # 5 columns, 2 rows
    arrays = np.load(out.with_suffix(".npz"))
    assert "img0__occlusion:box=8" in arrays.files and arrays["img0__occlusion:box=8"].shape == (32, 32)
    other = tmp / "other.onnx"
    onnx.save(ZOO["vgg_like"](), other)
    r = _cli("figure", "networks", model, str(other), "--image", *imgs, "--method", "guided", "-o",
             str(tmp / "nets.png"))
    assert r.returncode == 0, r.stderr
    r = _cli("figure", "networks", model, str(other), "--image", *imgs, "-o", str(tmp / "nets.png"))
    assert r.returncode != 0 and "exists" in r.stderr
    from fvgraph.figures import methods_figure
    img, arrays = methods_figure(fv.load(model), imgs[:1], ["guided"])
    assert isinstance(img, Image.Image) and arrays["img0/guided"].shape == (3, 32, 32)


def test_figure_colour_maps(setup):
    tmp, model, imgs = setup
    from fvgraph.figures import methods_figure
    m = fv.load(model)
    signed, _ = methods_figure(m, imgs[:1], ["lrp-epsilon"], kind="signed")
    bw, _ = methods_figure(m, imgs[:1], ["lrp-epsilon"], kind="abs")
    cell = np.asarray(bw)[30:150, 170:290]
    assert (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()  # black and white
    assert not np.array_equal(np.asarray(signed), np.asarray(bw))
    r = _cli("figure", "methods", model, imgs[0], "--methods", "gradcam", "--kind", "heat", "--alpha", "0.8",
             "-o", str(tmp / "h.png"))
    assert r.returncode == 0, r.stderr
