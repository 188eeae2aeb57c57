"""The embedded default model and photos, the explain/demo commands, and presets shipped in the wheel."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fvgraph as fv
from fvgraph.cli import DEMO_MODEL
from fvgraph.image import demo_images, load_image

ROOT = Path(__file__).resolve().parents[1]
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian Mau
ESPRESSO = 967


@pytest.fixture(scope="module")
def demo_model():
    return fv.load(DEMO_MODEL)


def test_shipped_model_sees_the_cat_and_the_espresso(demo_model):
    spec = demo_model.preprocessing()
    assert spec["mean"] == [0.5, 0.5, 0.5] and spec["size"] == 224
    names = demo_model.class_names()
    assert len(names) == 1000
    photos = {p.name: p for p in demo_images()}
    cat = demo_model.run(load_image(photos["chelsea.png"], spec))
    coffee = demo_model.run(load_image(photos["coffee.png"], spec))
    assert int(cat.argmax()) in CAT_CLASSES, names[int(cat.argmax())]
    assert int(coffee.argmax()) == ESPRESSO and names[ESPRESSO] == "espresso"


def test_shipped_model_matches_onnxruntime(demo_model):
    import onnxruntime as ort
    x = load_image(demo_images()[0], demo_model.preprocessing())
    ref = ort.InferenceSession(str(DEMO_MODEL), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.abs(demo_model.run(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fvgraph", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_explain_command_writes_maps_and_never_overwrites(tmp_path):
    img = demo_images()[1]
    out = tmp_path / "out"
    r = _cli("explain", str(DEMO_MODEL), str(img), "--method", "guided,lrp-epsilon,gradcam", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "espresso" in r.stdout
    for f in ("coffee_guided.png", "coffee_guided_abs.png", "coffee_guided.npy", "coffee_lrp-epsilon.png",
              "coffee_gradcam.png", "coffee_gradcam.npy", "grid.png"):
        assert (out / f).is_file(), f
    assert np.load(out / "coffee_guided.npy").shape == (3, 224, 224)
    assert np.load(out / "coffee_gradcam.npy").shape == (224, 224)
    before = (out / "coffee_guided.png").read_bytes()
    r = _cli("explain", str(DEMO_MODEL), str(img), "--method", "guided", "--out", str(out))
    assert r.returncode != 0 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert (out / "coffee_guided.png").read_bytes() == before
    r = _cli("explain", str(DEMO_MODEL), str(img), "--method", "guided", "--out", str(out), "--overwrite", "-q")
    assert r.returncode == 0, r.stderr


def test_explain_command_bad_options_are_one_line(tmp_path):
    img = str(demo_images()[0])
    for args in (["--method", "nonsense"], ["--target", "5000"], ["--target", "cat"], ["--param", "gamma=1"],
                 ["--layer", "no_such_layer"]):
        r = _cli("explain", str(DEMO_MODEL), img, "--out", str(tmp_path / "o"), *args)
        assert r.returncode != 0, args
        assert r.stderr.startswith("fvgraph: error:") and r.stderr.count("\n") == 1, (args, r.stderr)
    r = _cli("explain", str(DEMO_MODEL), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "no such image" in r.stderr


def test_demo_command_writes_every_method_and_the_grid(tmp_path):
    r = _cli("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "espresso" in r.stdout
    files = {p.name for p in (tmp_path / "demo").iterdir()}
    assert "grid.png" in files
    for m in fv.methods.DEMO_METHODS:
        assert f"coffee_{m}.png" in files, m


def test_presets_ship_inside_the_wheel(tmp_path):
    """Build the wheel, install it away from the repository, and load every preset from it."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(wheels.glob("fvgraph-*.whl"))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    code = ("import fvgraph, json; from fvgraph.rules import preset_names, Rules; "
            "print(json.dumps([fvgraph.__file__, preset_names(), Rules.load('lrp-composite').ops['Gemm']]))")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    path, names, gemm = json.loads(r.stdout)
    assert path.startswith(str(site))
    assert {"gradient", "guided", "deconvnet", "lrp-epsilon", "lrp-composite"} <= set(names)
    assert gemm == "epsilon"
