"""The commands over the concept and dataset API give what the API gives: `fvgraph concepts` (the CRP atlas),
`clusters` (SpRAy), `discover` (NMF concepts), `examples --by relevance` (RelMax), `evaluate --metric` (the
metrics and the randomization test), `explain --detections` and `--target LABEL`; bad input is one line."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

import fvgraph as fv
from fvgraph.cli import main
from fvgraph.image import load_image
from tests.test_spray import _picture, _shortcut_net
from tests.zoo import resnet_like, yolo_like


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    path = root / "net.onnx"
    onnx.save(resnet_like(size=32), str(path))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    model = fv.load(str(path))
    layer = [v for v in model.layers if v.op_type == "Relu"][-2].name
    return root, path, photos, model, layer


def test_concepts_command_writes_the_api_atlas(net, tmp_path):
    root, path, photos, model, layer = net
    out = tmp_path / "c"
    assert main(["concepts", str(path), str(photos / "p0.png"), "--layer", layer, "-k", "3", "--images",
                 str(photos), "--examples", "2", "-o", str(out), "-q"]) == 0
    got = json.loads((out / "concepts.json").read_text())
    want = model.concepts(load_image(photos / "p0.png", model.preprocessing()), "lrp-epsilon", layer, top=3)
    assert [c["channel"] for c in got["concepts"]] == [int(c) for c in want.channels]
    assert np.allclose([c["share"] for c in got["concepts"]], want.share)
    assert all(len(c["examples"]) == 2 for c in got["concepts"])
    assert Image.open(out / "concepts.png").size[0] > 300
    assert main(["concepts", str(path), str(photos / "p0.png"), "--layer", layer, "-o", str(out), "-q"]) != 0


def test_clusters_command_finds_the_planted_shortcut(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(_shortcut_net(), str(path))
    rng = np.random.default_rng(1)
    folder = tmp_path / "data"
    folder.mkdir()
    patched = set()
    for i in range(12):
        Image.fromarray(_picture(rng, red=i % 2 == 0)).save(folder / f"img{i:02d}.png")
        if i % 2 == 0:
            patched.add(f"img{i:02d}.png")
    out = tmp_path / "out"
    assert main(["clusters", str(path), str(folder), "--target", "0", "--size", "8", "--preprocess", "raw", "-o",
                 str(out), "-q"]) == 0
    data = json.loads((out / "clusters.json").read_text())
    assert patched in [set(c["members"]) for c in data["clusters"]]
    assert (out / "embedding.png").exists()


def test_discover_command(net, tmp_path):
    root, path, photos, model, layer = net
    out = tmp_path / "d"
    assert main(["discover", str(path), str(photos), "--layer", layer, "-k", "3", "-o", str(out), "-q"]) == 0
    data = json.loads((out / "discovery.json").read_text())
    assert len(data["concepts"]) == 3 and np.load(out / "directions.npy").shape[0] == 3


def test_examples_by_relevance_equal_the_api(net, tmp_path):
    root, path, photos, model, layer = net
    from fvgraph.methods.examples import top_examples
    out = tmp_path / "e"
    assert main(["examples", str(path), str(photos), "--layer", layer, "--channel", "0-2", "-k", "2", "--by",
                 "relevance", "--target", "1", "--no-pictures", "-o", str(out), "-q"]) == 0
    got = json.loads((out / "examples.json").read_text())
    want = top_examples(model, [photos], layer, [0, 1, 2], 2, by="relevance", target=1, quiet=True)
    text = json.dumps(got)
    for c in (0, 1, 2):
        for e in want[c]:
            assert e.image.split("/")[-1] in text
    r = subprocess.run([sys.executable, "-m", "fvgraph", "examples", str(path), str(photos), "--layer", layer,
                        "--target", "1", "-o", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode != 0 and "--by relevance" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_command_with_the_metrics_and_the_randomization_test(net, tmp_path):
    root, path, photos, model, layer = net
    out = tmp_path / "v"
    assert main(["evaluate", str(path), str(photos / "p0.png"), "-m", "gradient,guided", "--metric",
                 "deletion,sparseness,complexity,randomization", "--steps", "4", "-o", str(out), "-q"]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    rnd = json.loads((out / "randomization.json").read_text())
    from fvgraph.methods.metrics import sparseness
    x = load_image(photos / "p0.png", model.preprocessing())
    want = float(np.ravel(sparseness(model.explain(x, "gradient").relevance))[0])
    assert np.isclose(ev["metric_means"]["gradient"]["sparseness"], want, rtol=1e-6)
    steps = rnd["methods"]["gradient"][0]["similarity"]["spearman"]
    direct = model.randomization(x, "gradient").similarity["spearman"]
    assert np.allclose(np.asarray(steps), direct)
    assert (out / "evaluation.png").exists() and (out / "randomization.png").exists()
    r = subprocess.run([sys.executable, "-m", "fvgraph", "evaluate", str(path), str(photos / "p0.png"),
                        "--metric", "accuracy", "-o", str(tmp_path / "bad")], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown metric(s) ['accuracy']" in r.stderr and "Traceback" not in r.stderr


def test_explain_detections_command_lists_what_the_api_decodes(tmp_path):
    path = tmp_path / "yolo.onnx"
    onnx.save(yolo_like(size=64), str(path))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    model = fv.load(str(path))
    out = tmp_path / "det"
    assert main(["explain", str(path), str(tmp_path / "s.png"), "-m", "gradient", "--detections", "--conf", "0.01",
                 "--max", "3", "-o", str(out), "-q"]) == 0
    listed = json.loads((out / "detections.json").read_text())
    dets = model.detections(load_image(tmp_path / "s.png", model.preprocessing()), conf=0.01, max_det=3)[0]
    got = listed["detections"]
    assert [(g["class"], g["anchor"]) for g in got] == [(d.cls, d.anchor) for d in dets] and len(got) == 3
    assert np.allclose([g["score"] for g in got], [d.score for d in dets])
    for g in got:  # one map per detection, in the photo's pixels (its values: tests/test_detections.py)
        m = np.load(out / g["maps"]["gradient"]["npy"])
        assert m.shape == (64, 64) and np.abs(m).max() > 0 and (out / g["maps"]["gradient"]["png"]).exists()


def test_a_class_by_its_label_from_the_command_line(tmp_path):
    from fvgraph.image import DEMO_MODEL, demo_images
    photo = demo_images()[0]
    assert main(["explain", str(DEMO_MODEL), str(photo), "-m", "gradient", "--target", "tabby cat", "-o",
                 str(tmp_path / "o"), "-q"]) == 0
    model = fv.load(DEMO_MODEL)
    want = model.explain(load_image(photo, model.preprocessing()), "gradient", target=281).relevance[0]
    assert np.array_equal(np.load(tmp_path / "o" / f"{photo.stem}_gradient.npy"), want)
    r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(DEMO_MODEL), str(photo), "--target", "cat",
                        "-o", str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode != 0 and "nearest" in r.stderr and "Traceback" not in r.stderr
