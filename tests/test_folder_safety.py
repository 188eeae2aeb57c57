"""Folder commands never overwrite what they did not write, never map two images to one file, skip and list
unreadable images, resume after a kill at any point, and never mix a changed model into a resumed run; the
bank is keyed by content; layer names never become paths; the CLI's prediction and error lines."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import fvgraph as fv
from fvgraph import cli
from fvgraph.cli import main
from fvgraph.image import load_image
from tests.zoo import vgg_like

ROOT = Path(__file__).resolve().parents[1]


def _png(path, seed, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "net.onnx"
    onnx.save(vgg_like(softmax=False), str(path))
    return path


def _retrained(src, dst):
    """The same net with other weights: a file of the same size (a retrained model)."""
    m = onnx.load(str(src))
    init = m.graph.initializer[0]
    a = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((a * -1.5 + 0.01).astype(a.dtype), init.name))
    onnx.save(m, str(dst))


def _images(d, n, offset=0):
    for k in range(n):
        _png(d / f"i{k:02d}.png", offset + k)
    return d


def _layer(net):
    return str([i for i, l in enumerate(fv.load(net).layers) if l.op_type == "Relu"][1])


def _lines(text):
    return [l for l in text.splitlines() if l.strip()]


# ------------------------------------------------------------------------------ never over a user's file
def test_a_users_file_is_refused_and_replaced_only_with_overwrite(net, tmp_path, capsys):
    data, out = _images(tmp_path / "d", 3), tmp_path / "out"
    out.mkdir()
    mine = out / "i01.png_gradient.png"
    mine.write_bytes(b"the user's own picture")
    stale = out / ".i00.png_gradient.npy.abcd_123.part.npy"  # a killed writer's leftover
    stale.write_bytes(b"half")
    capsys.readouterr()
    assert main(["explain", str(net), str(data), "-m", "gradient", "-o", str(out), "-q"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "i01.png_gradient.png" in err[0] and "--overwrite" in err[0], err
    assert mine.read_bytes() == b"the user's own picture"
    assert not list(out.glob("*.npy")) and not stale.exists()  # refused before any work
    assert main(["explain", str(net), str(data), "-m", "gradient", "-o", str(out), "-q", "--overwrite"]) == 0
    assert Image.open(mine).size == (32, 32)
    want = fv.load(net).explain(load_image(data / "i01.png", fv.load(net).preprocessing()), "gradient").relevance[0]
    np.testing.assert_allclose(np.load(out / "i01.png_gradient.npy"), want, rtol=1e-5, atol=1e-7)

    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / "channel_0000.png").write_bytes(b"user")
    args = ["examples", str(net), str(data), "--layer", _layer(net), "--channel", "0-1", "-k", "2", "-o", str(ex),
            "-q"]
    capsys.readouterr()
    assert main(args) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "channel_0000.png" in err[0] and "--overwrite" in err[0]
    assert (ex / "channel_0000.png").read_bytes() == b"user" and not (ex / "examples.json").exists()
    assert main(args + ["--overwrite"]) == 0
    assert Image.open(ex / "channel_0000.png").size[0] > 0


# ------------------------------------------------------------------------------ names
def test_inputs_that_shared_a_name_get_distinct_maps(net, tmp_path):
    d = tmp_path / "d"
    _png(d / "a.png", 1)
    d.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "a.jpg",
                                                                                                  quality=95)
    _png(d / "x__y.png", 3)
    _png(d / "x" / "y.png", 4)
    out = tmp_path / "out"
    assert main(["explain", str(net), str(d), "-m", "gradient", "-o", str(out), "-q"]) == 0
    maps = [np.load(f) for f in sorted(out.glob("*.npy"))]
    assert len(maps) == 4
    model = fv.load(net)
    for img in (d / "a.png", d / "a.jpg", d / "x__y.png", d / "x" / "y.png"):
        want = model.explain(load_image(img, model.preprocessing()), "gradient").relevance[0]
        assert sum(np.allclose(m, want, rtol=1e-5, atol=1e-7) for m in maps) == 1, img
    # single images given by name: a.png and a.jpg, two maps too
    single = tmp_path / "single"
    assert main(["explain", str(net), str(d / "a.png"), str(d / "a.jpg"), "-m", "gradient", "-o", str(single),
                 "-q"]) == 0
    assert len(list(single.glob("*_gradient.npy"))) == 2


# ------------------------------------------------------------------------------ unreadable images
def test_unreadable_images_are_skipped_listed_and_listed_again(net, tmp_path, capsys):
    d = _images(tmp_path / "d", 4)
    (d / "bad.png").write_bytes(b"not a png at all")
    good = (d / "i00.png").read_bytes()
    (d / "cut.png").write_bytes(good[:len(good) // 2])
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["explain", str(net), str(d), "-m", "gradient", "-o", str(out)]) == 0
    io = capsys.readouterr()
    warn = [l for l in _lines(io.err) if "warning" in l]
    assert len(warn) == 1 and "skipped 2 unreadable" in warn[0] and "bad.png" in warn[0] and "cut.png" in warn[0]
    assert "explained 4" in io.out and len(list(out.glob("*.npy"))) == 4
    assert main(["explain", str(net), str(d), "-m", "gradient", "-o", str(out)]) == 0  # resumed: listed again
    io = capsys.readouterr()
    assert "explained 0" in io.out and "skipped 4" in io.out and "skipped 2 unreadable" in io.err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "bad.png").write_bytes(b"junk")
    assert main(["explain", str(net), str(only_bad), "-m", "gradient", "-o", str(tmp_path / "o2"), "-q"]) == 1

    ex = tmp_path / "ex"
    assert main(["examples", str(net), str(d), "--layer", _layer(net), "--channel", "0", "-k", "3", "-o", str(ex),
                 "-q", "--batch", "4"]) == 0
    assert "skipped 2 unreadable" in capsys.readouterr().err
    rows = json.loads((ex / "examples.json").read_text())["channels"]["0"]
    assert len(rows) == 3 and not any(Path(r["image"]).name in ("bad.png", "cut.png") for r in rows)
    rep = tmp_path / "rep.png"
    assert main(["replace", str(net), str(d / "i01.png"), "--bank", str(d), "--layer", _layer(net), "-o", str(rep),
                 "--cache", str(tmp_path / "cache"), "-q"]) == 0
    assert "skipped 2 unreadable" in capsys.readouterr().err and rep.exists()


# ------------------------------------------------------------------------------ kill and resume
def _cli(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fvgraph", *args, "-q"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _started(p, state, limit=60):
    """Seconds until the run's state file appears (its work begins), or None if the process ended first."""
    t0 = time.monotonic()
    while not state.exists():
        if p.poll() is not None or time.monotonic() - t0 > limit:
            return None
        time.sleep(0.005)
    return time.monotonic() - t0


def _killed_then_resumed(args, out, rng, state_name, kills=4):
    """An uninterrupted run, and a run killed (SIGKILL) `kills` times at random points of its work (after
    its state file appears; the first kill at any moment from the start), then resumed to the end."""
    t0 = time.monotonic()
    p = _cli(args + ["-o", str(out / "ref")])
    begin = _started(p, out / "ref" / state_name)
    assert p.wait(120) == 0, p.stderr.read()
    work = time.monotonic() - t0 - begin
    run = out / "run"
    for k in range(kills):
        p = _cli(args + ["-o", str(run)])
        if k == 0:
            time.sleep(rng.uniform(0, begin + work))
        elif _started(p, run / state_name) is not None:
            time.sleep(rng.uniform(0, work))
        p.send_signal(signal.SIGKILL)
        p.wait(60)
    p = _cli(args + ["-o", str(run)])
    assert p.wait(120) == 0, p.stderr.read()
    assert not [f for f in run.iterdir() if ".part" in f.name]
    return out / "ref", run


def test_explain_folder_resumes_after_kills_at_random_points(net, tmp_path):
    data = _images(tmp_path / "d", 60)
    ref, run = _killed_then_resumed(["explain", str(net), str(data), "-m", "gradient,lrp-epsilon"], tmp_path,
                                    np.random.default_rng(26), "fvgraph-explain.state.json")
    names = sorted(f.name for f in ref.iterdir() if not f.name.endswith(".state.json"))
    assert names == sorted(f.name for f in run.iterdir() if not f.name.endswith(".state.json"))
    assert len([n for n in names if n.endswith(".npy")]) == 120
    for n in names:
        if n.endswith(".npy"):
            np.testing.assert_allclose(np.load(run / n), np.load(ref / n), rtol=1e-5, atol=1e-7)


def test_examples_resume_after_kills_at_random_points(net, tmp_path):
    data = _images(tmp_path / "d", 40)
    ref, run = _killed_then_resumed(["examples", str(net), str(data), "--layer", _layer(net), "--channel", "0-3",
                                     "-k", "3", "--batch", "2"], tmp_path, np.random.default_rng(7),
                                    "fvgraph-examples.state.json")
    a, b = (json.loads((f / "examples.json").read_text())["channels"] for f in (ref, run))
    assert a.keys() == b.keys()
    for c in a:
        assert [e["image"] for e in a[c]] == [e["image"] for e in b[c]]
        np.testing.assert_allclose([e["score"] for e in a[c]], [e["score"] for e in b[c]], rtol=1e-5)
    assert sorted(f.name for f in run.glob("channel_*.png")) == [f"channel_{c:04d}.png" for c in range(4)]


# ------------------------------------------------------------------------------ a changed model
def test_examples_with_a_changed_model_are_refused_or_started_over_never_mixed(net, tmp_path, capsys):
    from fvgraph.methods.examples import top_examples
    data = _images(tmp_path / "d", 8)
    model = tmp_path / "model.onnx"
    model.write_bytes(net.read_bytes())
    args = ["--layer", _layer(net), "--channel", "0-2", "-k", "3", "--no-pictures", "-q"]
    ex = tmp_path / "ex"
    assert main(["examples", str(model), str(data), "-o", str(ex)] + args) == 0
    before = (ex / "examples.json").read_text()
    _retrained(net, model)
    capsys.readouterr()
    assert main(["examples", str(model), str(data), "-o", str(ex)] + args) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "another model" in err[0] and "--overwrite" in err[0]
    assert (ex / "examples.json").read_text() == before
    assert main(["examples", str(model), str(data), "-o", str(ex), "--overwrite"] + args) == 0
    assert main(["examples", str(model), str(data), "-o", str(tmp_path / "fresh")] + args) == 0
    assert (ex / "examples.json").read_text() == (tmp_path / "fresh" / "examples.json").read_text()
    assert (ex / "examples.json").read_text() != before

    # the API: a state counted with the old model is started over, not continued
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    old.write_bytes(net.read_bytes())
    _retrained(net, new)
    layer = fv.load(net).layers[int(_layer(net))].name
    state = tmp_path / "state.json"
    top_examples(fv.load(old), [data], layer, channels=[0, 1], k=2, batch=2, state_file=state)
    got = top_examples(fv.load(new), [data], layer, channels=[0, 1], k=2, batch=2, state_file=state)
    want = top_examples(fv.load(new), [data], layer, channels=[0, 1], k=2, batch=2)
    assert {c: [(e.image, round(e.score, 5)) for e in r] for c, r in got.items()} == \
        {c: [(e.image, round(e.score, 5)) for e in r] for c, r in want.items()}


def test_the_bank_is_built_again_when_model_or_images_change_with_the_same_size_and_date(net, tmp_path):
    from fvgraph.methods.examples import build_bank
    bank = tmp_path / "bank"
    bank.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(bank / f"{k}.bmp")
    model = tmp_path / "model.onnx"
    model.write_bytes(net.read_bytes())
    cache = tmp_path / "cache"
    layer = fv.load(net).layers[int(_layer(net))].name
    first = build_bank(fv.load(model), [bank], layer, cache)
    stamp = os.stat(model)
    _retrained(net, model)
    assert os.path.getsize(model) == stamp.st_size
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    second = build_bank(fv.load(model), [bank], layer, cache)
    want = build_bank(fv.load(model), [bank], layer, None)
    np.testing.assert_allclose(second[0], want[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(second[0], first[0], atol=1e-3)
    img = bank / "1.bmp"
    st = os.stat(img)
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    assert os.path.getsize(img) == st.st_size
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = build_bank(fv.load(model), [bank], layer, cache)
    np.testing.assert_allclose(third[0], build_bank(fv.load(model), [bank], layer, None)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(third[0], second[0], atol=1e-3)
    assert len(list(cache.glob("bank-*.npz"))) == 3


# ------------------------------------------------------------------------------ names from layers
def _tiny(layer_name):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    g = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "g")
    gr = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "gr")
    nodes = [helper.make_node("Conv", ["input", "w"], [layer_name], name=layer_name, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [layer_name], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["logits"]),
             helper.make_node("GlobalAveragePool", ["input"], ["q"]),
             helper.make_node("Flatten", ["q"], ["qf"]),
             helper.make_node("Gemm", ["qf", "gr"], ["reg"]),
             helper.make_node("Softmax", ["reg"], ["boxes"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4])], [w, g, gr])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_a_layer_named_like_a_path_writes_inside_out_only(tmp_path):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    model = work / "tiny.onnx"
    onnx.save(_tiny("/../../x"), str(model))
    _png(work / "cat.png", 1, (16, 16))
    out = work / "out"
    common = ["--layer", "/../../x", "--steps", "2", "--param", "pixel", "-o", str(out), "-q"]
    assert main(["invert", str(model), str(work / "cat.png")] + common) == 0
    assert main(["reconstruct", str(model), "--channel", "0", "--transforms", "none"] + common + ["--overwrite"]) == 0
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert sorted(p.name for p in outside) == ["cat.png", "tiny.onnx"], outside
    pictures = [p.name for p in out.iterdir() if p.name.endswith(".png") and p.name != "grid.png"]
    assert len(pictures) == 2 and all(p.startswith("00_") for p in pictures)


# ------------------------------------------------------------------------------ the CLI's lines
def test_prediction_line_names_the_explained_output_not_a_class(tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    onnx.save(_tiny("conv"), str(model))
    _png(tmp_path / "cat.png", 1, (16, 16))
    capsys.readouterr()
    assert main(["explain", str(model), str(tmp_path / "cat.png"), "-m", "gradient", "--target-index", "1",
                 "--target-output", "boxes", "-o", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "boxes" in line and "class" not in line and "p=" not in line, line
    assert main(["explain", str(model), str(tmp_path / "cat.png"), "-m", "gradient", "-o", str(tmp_path / "o2")]) == 0
    m = fv.load(model)
    k = int(np.argmax(m.run(load_image(tmp_path / "cat.png", m.preprocessing()))[0]))
    assert f"(class {k}," in capsys.readouterr().out.splitlines()[0]


def test_memory_error_and_empty_messages_are_readable_lines(monkeypatch, capsys):
    def oom(args):
        raise MemoryError()
    monkeypatch.setattr(cli, "cmd_info", oom)
    assert main(["info", "x.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvgraph: error: out of memory while running `fvgraph info`") and "--batch" in err

    def empty(args):
        raise OSError()
    monkeypatch.setattr(cli, "cmd_info", empty)
    assert main(["info", "x.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvgraph: error: OSError") and len(err) > len("fvgraph: error: ")
