"""Explaining a folder of images: streamed, resumable, on worker processes and on a local Ray instance."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def folder(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(ZOO["vgg_like"](), model)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for k in range(5):
        d = data / "sub" if k >= 3 else data
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(d / f"im{k}.png")
    (data / "notes.txt").write_text("not an image")
    return tmp_path, model, data


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fvgraph", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_folder_is_streamed_and_resumable(folder):
    tmp, model, data = folder
    out = tmp / "out"
    r = _cli("explain", str(model), str(data), "-m", "guided,gradcam", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "explained 5" in r.stdout
    names = {p.name for p in out.iterdir()}
    assert {"im0.png_guided.npy", "im0.png_gradcam.npy", "sub__im3.png_guided.npy", "sub__im4.png_gradcam.png"} <= names
    assert not any(n.endswith(".part") for n in names)
    before = (out / "im0.png_guided.npy").stat().st_mtime_ns
    (out / "sub__im4.png_gradcam.npy").unlink()  # as if interrupted before the last file
    r = _cli("explain", str(model), str(data), "-m", "guided,gradcam", "-o", str(out))
    assert r.returncode == 0 and "explained 1" in r.stdout and "skipped 4" in r.stdout, r.stdout + r.stderr
    assert (out / "im0.png_guided.npy").stat().st_mtime_ns == before
    assert (out / "sub__im4.png_gradcam.npy").exists()


def test_worker_processes_give_the_same_maps(folder):
    tmp, model, data = folder
    a, b = tmp / "a", tmp / "b"
    assert _cli("explain", str(model), str(data), "-m", "lrp-epsilon", "-o", str(a), "-q").returncode == 0
    r = _cli("explain", str(model), str(data), "-m", "lrp-epsilon", "-o", str(b), "--workers", "2", "-q")
    assert r.returncode == 0, r.stderr
    for f in a.glob("*.npy"):
        np.testing.assert_allclose(np.load(b / f.name), np.load(f), rtol=1e-5, atol=1e-7)


def test_ray_local_instance(folder):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'fvgraph[ray]')")
    tmp, model, data = folder
    out = tmp / "ray"
    r = _cli("explain", str(model), str(data), "-m", "guided", "-o", str(out), "--ray", "local")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(out.glob("*_guided.npy"))) == 5
    ref = tmp / "ref"
    assert _cli("explain", str(model), str(data), "-m", "guided", "-o", str(ref), "-q").returncode == 0
    for f in ref.glob("*.npy"):
        np.testing.assert_allclose(np.load(out / f.name), np.load(f), rtol=1e-5, atol=1e-7)  # BLAS threads differ
