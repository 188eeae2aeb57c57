"""The disk cache of lowered graphs: a second process reuses what the first built (the same maps, no lowering),
a changed model file or another environment is never trusted, concurrent processes do not corrupt it, and it
can be moved or turned off."""
import json
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import onnx
import pytest

import fvgraph as fv
from fvgraph.engines import CachedGraph
from tests import zoo

X = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FVGRAPH_CACHE", str(d))
    return d


@pytest.fixture()
def net(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(zoo.resnet_like(), str(path))
    return path


def _entries(cache):
    g = cache / "graphs"
    return sorted(p for p in g.iterdir() if p.is_dir() and p.name != "index" and not p.name.startswith(".")) \
        if g.exists() else []


def _lowered_graph(model):
    return [v.graph for v in model._lowered.values()]


@pytest.mark.parametrize("method", ["guided", "lrp-epsilon", "gradcam"])
def test_a_second_process_reuses_the_lowered_graph(cache, net, method):
    first = fv.load(net).explain(X, method, target=1)
    assert len(_entries(cache)) == 1
    again = fv.load(net)  # a new model object: what a new process has
    second = again.explain(X, method, target=1)
    assert any(isinstance(g, CachedGraph) for g in _lowered_graph(again))
    np.testing.assert_allclose(second.relevance, first.relevance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(second.target), np.asarray(first.target))
    # and the same maps as with no cache at all
    plain = fv.load(net, cache=False).explain(X, method, target=1)
    np.testing.assert_allclose(second.relevance, plain.relevance, rtol=1e-6, atol=1e-7)
    assert len(_entries(cache)) == 1


def test_a_changed_model_or_environment_is_not_trusted(cache, net):
    a = fv.load(net).explain(X, "gradient", target=1).relevance
    onnx.save(zoo.resnet_like(), str(net))           # the same bytes: the same entry
    assert len(_entries(cache)) == 1
    m = zoo.resnet_like()
    w = m.graph.initializer[0]
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 2, w.name))
    onnx.save(m, str(net))                          # other weights: another entry, and the right maps
    b = fv.load(net).explain(X, "gradient", target=1).relevance
    assert len(_entries(cache)) == 2 and not np.allclose(a, b)
    np.testing.assert_allclose(b, fv.load(net, cache=False).explain(X, "gradient", target=1).relevance, rtol=1e-6)
    for e in _entries(cache):  # an entry another version wrote is ignored (and rebuilt over)
        meta = json.loads((e / "meta.json").read_text())
        meta["environment"]["fvgraph"] = "0.0.0"
        (e / "meta.json").write_text(json.dumps(meta))
    again = fv.load(net)
    with pytest.warns(fv.FvGraphWarning, match="made by another version"):
        again.explain(X, "gradient", target=1)
    assert not any(isinstance(g, CachedGraph) for g in _lowered_graph(again))
    assert sorted(json.loads((e / "meta.json").read_text())["environment"]["fvgraph"] == "0.0.0"
                  for e in _entries(cache)) == [False, True]  # the entry it used was rebuilt over, not the other


def test_off_and_no_cache(tmp_path, net, monkeypatch):
    monkeypatch.setenv("FVGRAPH_CACHE", "off")
    fv.load(net).explain(X, "guided")
    monkeypatch.setenv("FVGRAPH_CACHE", str(tmp_path / "c"))
    fv.load(net, cache=False).explain(X, "guided")
    assert not (tmp_path / "c" / "graphs").exists() or not _entries(tmp_path / "c")
    from fvgraph.cli import main
    from fvgraph.image import demo_images
    assert main(["explain", str(net), str(demo_images()[0]), "-m", "guided", "--no-cache", "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    assert not _entries(tmp_path / "c")
    assert main(["explain", str(net), str(demo_images()[0]), "-m", "guided", "-o", str(tmp_path / "o2"), "-q"]) == 0
    assert len(_entries(tmp_path / "c")) == 1


def _explain_in_a_process(args):
    path, cache = args
    import os
    os.environ["FVGRAPH_CACHE"] = cache
    import fvgraph as fv_
    return fv_.load(path).explain(X, "lrp-epsilon", target=2).relevance


def test_concurrent_processes_share_the_cache_safely(tmp_path, net):
    cache = str(tmp_path / "shared")
    with mp.get_context("spawn").Pool(3) as pool:
        maps = pool.map(_explain_in_a_process, [(str(net), cache)] * 3)
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], rtol=1e-6, atol=1e-7)
    graphs = tmp_path / "shared" / "graphs"
    assert len(_entries(tmp_path / "shared")) == 1
    assert not [p for p in graphs.iterdir() if p.name.startswith(".")]  # no half-written folders left
    r = subprocess.run([sys.executable, "-c", "import sys, numpy as np, fvgraph as fv; "
                        "m = fv.load(sys.argv[1]); "
                        "print(np.abs(m.explain(np.load(sys.argv[2]), 'lrp-epsilon', target=2).relevance).sum())",
                        str(net), str(_save(tmp_path))], capture_output=True, text=True,
                       env={**__import__("os").environ, "FVGRAPH_CACHE": cache})
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(float(np.abs(maps[0]).sum()), rel=1e-5)


def _save(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, X)
    return p


def test_the_cache_stays_under_its_size_by_dropping_the_least_recently_used(cache, net, monkeypatch):
    import time

    from fvgraph import diskcache
    model = fv.load(net)
    model.explain(X, "gradient", target=1)
    time.sleep(0.05)
    model.explain(X, "guided", target=1)
    first, second = sorted(_entries(cache), key=lambda e: (e / "meta.json").stat().st_mtime)
    time.sleep(0.05)
    assert diskcache.read(first) is not None  # reading it makes it the most recently used
    size = sum(f.stat().st_size for f in second.iterdir())
    diskcache.evict(cache / "graphs", sum(f.stat().st_size for f in first.iterdir()) + size // 2)
    assert _entries(cache) == [first]


def test_the_key_holds_a_hash_of_the_code_and_presets(tmp_path, monkeypatch):
    """An editable checkout whose code or presets changed under the same version must not load old graphs."""
    import shutil

    from fvgraph import diskcache, rules
    before = diskcache.code_fingerprint()
    assert diskcache.environment()["code"] == before
    copy = tmp_path / "rules"
    shutil.copytree(rules.presets_dir(), copy)
    monkeypatch.setattr(rules, "presets_dir", lambda: copy)
    assert diskcache.code_fingerprint() == before
    (copy / "guided.toml").write_text((copy / "guided.toml").read_text() + "\n# changed\n")
    assert diskcache.code_fingerprint() != before
