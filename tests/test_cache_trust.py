"""The disk cache never changes a result: a damaged, swapped, foreign or malformed entry is a miss (rebuilt, one
warning), a model edited in place with its size and mtime restored is hashed again, a cache folder others can
write is not used, and a bad size in the environment warns and takes the default (issue #26)."""
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import onnx
import pytest

import fvgraph as fv
from fvgraph import diskcache
from fvgraph.engines import CachedGraph
from fvgraph.errors import FvGraphWarning
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


def _scaled(factor):
    """resnet_like with its first weights scaled: the same file size, other maps."""
    m = zoo.resnet_like()
    w = m.graph.initializer[0]
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(factor), w.name))
    return m


def _entries(cache):
    g = cache / "graphs"
    return sorted(p for p in g.iterdir() if p.is_dir() and p.name != "index" and not p.name.startswith("."))


def _explain(path, method="gradient", **kw):
    """(relevance, whether the lowered graph came from the disk cache) for a fresh model object (a new process)."""
    model = fv.load(path, **kw)
    r = model.explain(X, method, target=1).relevance
    return r, any(isinstance(v.graph, CachedGraph) for v in model._lowered.values())


def _uncached(path, method="gradient"):
    return fv.load(path, cache=False).explain(X, method, target=1).relevance


def _same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _meta(entry):
    return json.loads((entry / "meta.json").read_text())


def _put_meta(entry, meta):
    (entry / "meta.json").write_text(json.dumps(meta))


def _truncate(entry):
    p = entry / "optimized.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(path, n=200, seed=0, keep_mtime=False):
    """XOR n bytes of a file in place (its size kept; with keep_mtime, its mtime set back too)."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    for i in np.random.default_rng(seed).choice(len(data), n, replace=False):
        data[i] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _drop(key):
    def damage(entry):
        meta = _meta(entry)
        del meta[key]
        _put_meta(entry, meta)
    return damage


def _garble(key, value):
    def damage(entry):
        _put_meta(entry, {**_meta(entry), key: value})
    return damage


DAMAGES = {
    "truncated optimized.onnx": _truncate,
    "200 flipped bytes in weights.data": lambda e: _flip(e / "weights.data"),
    "flipped bytes, mtime set back": lambda e: _flip(e / "weights.data", keep_mtime=True),
    "weights.data missing": lambda e: (e / "weights.data").unlink(),
    "an extra file": lambda e: (e / "other.data").write_bytes(b"x" * 10),
    "meta.json without outputs": _drop("outputs"),
    "meta.json without its files (an old entry)": _drop("files"),
    "meta.json not a dict": lambda e: _put_meta(e, [1, 2, 3]),
    "meta.json not JSON": lambda e: (e / "meta.json").write_bytes(b"\x00{not json"),
    "meta.json missing": lambda e: (e / "meta.json").unlink(),
    "outputs of the wrong type": _garble("outputs", "relevance"),
    "an unknown dtype": lambda e: _put_meta(e, {**_meta(e), "inputs": [[n, d, "float99"] for n, d, _ in
                                                                         _meta(e)["inputs"]]}),
    "params of the wrong shape": _garble("params", {"param:epsilon": "epsilon"}),
    "a foreign key": _garble("key", "0" * 40),
    "a wrong hash recorded": lambda e: _put_meta(e, {**_meta(e), "files": {
        k: {**f, "sha256": "0" * 64} for k, f in _meta(e)["files"].items()}}),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_entry_is_rebuilt_and_the_maps_are_the_uncached_ones(cache, net, damage):
    plain = _uncached(net)
    first, hit = _explain(net)
    assert not hit
    (entry,) = _entries(cache)
    again, hit = _explain(net)
    assert hit
    _same(again, plain)
    DAMAGES[damage](entry)
    with pytest.warns(FvGraphWarning, match="disk cache entry .* it is not used, the graph is rebuilt"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain)
    # rebuilt in place: valid again, and the next process takes it
    assert _entries(cache) == [entry] and diskcache.read(entry) is not None
    assert set(_meta(entry)["files"]) == {p.name for p in entry.iterdir()} - {"meta.json"}
    later, hit = _explain(net)
    assert hit
    _same(later, plain)


def test_swapped_entries_of_other_methods_or_models_are_rebuilt(tmp_path, cache, net, monkeypatch):
    """The whole folders of two methods' entries swapped, then the weights of two models' entries (the same graph,
    other weights: the same sizes) swapped between two cache folders: each run gives its own uncached maps."""
    plain = {m: _uncached(net, m) for m in ("gradient", "guided")}
    for m in plain:
        _explain(net, m)
    a, b = _entries(cache)
    tmp = a.parent / "swap"
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    for m in plain:
        with pytest.warns(FvGraphWarning, match="belongs to another key"):
            got, hit = _explain(net, m)
        assert not hit
        _same(got, plain[m])
    # two models, two cache folders
    other = tmp_path / "other.onnx"
    onnx.save(_scaled(3), str(other))
    other_cache = tmp_path / "cache2"
    monkeypatch.setenv("FVGRAPH_CACHE", str(other_cache))
    plain_other = _uncached(other)
    _explain(other)
    (e2,) = _entries(other_cache)
    e1 = next(e for e in _entries(cache) if _meta(e)["applied"]["Relu_70"] == "gradient")
    assert _meta(e1)["files"]["weights.data"]["size"] == _meta(e2)["files"]["weights.data"]["size"]
    for name in ("optimized.onnx", "weights.data"):
        (e1 / name).rename(tmp_path / "t"), (e2 / name).rename(e1 / name), (tmp_path / "t").rename(e2 / name)
    with pytest.warns(FvGraphWarning, match="whose content is not what was written"):
        got, hit = _explain(other)
    assert not hit
    _same(got, plain_other)
    monkeypatch.setenv("FVGRAPH_CACHE", str(cache))
    with pytest.warns(FvGraphWarning, match="whose content is not what was written"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain["gradient"])
    assert not np.allclose(plain["gradient"], plain_other)  # the swap would have changed the maps


def test_an_entry_onnxruntime_refuses_is_a_miss(cache, net):
    """An entry whose files match their record but that onnxruntime cannot load (a bug that wrote it wrong)."""
    plain = _uncached(net)
    _explain(net)
    (entry,) = _entries(cache)
    bad = entry / "optimized.onnx"
    bad.write_bytes(b"not an onnx model")
    meta = _meta(entry)
    meta["files"]["optimized.onnx"] = {"size": bad.stat().st_size, "sha256": diskcache._sha256(bad)}
    _put_meta(entry, meta)
    assert diskcache.read(entry) is not None  # it passes the checks
    with pytest.warns(FvGraphWarning, match="refused by onnxruntime"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain)
    assert _explain(net)[1]


def test_remembered_hashes_are_keyed_by_ctime(cache, net, monkeypatch):
    """With hashes remembered at once (RACY_NS 0), a hit remembers its files' hashes; an edit in place that keeps
    the size and sets the mtime back is still seen (the ctime moved), in an entry and in the model itself."""
    monkeypatch.setattr(diskcache, "RACY_NS", 0)
    plain = _uncached(net)
    _explain(net)
    index = cache / "graphs" / "index"
    before = set(os.listdir(index))
    assert _explain(net)[1]
    assert len(set(os.listdir(index)) - before) == 2  # optimized.onnx and weights.data, hashed once
    assert _explain(net)[1]
    assert len(set(os.listdir(index)) - before) == 2  # and not again
    (entry,) = _entries(cache)
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    _flip(entry / "weights.data", keep_mtime=True)
    with pytest.warns(FvGraphWarning, match="weights.data whose content"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain)
    # the model edited in place: the same size, its mtime set back
    st = net.stat()
    time.sleep(0.05)
    onnx.save(_scaled(2), str(net))
    os.utime(net, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert net.stat().st_size == st.st_size and net.stat().st_mtime_ns == st.st_mtime_ns
    edited = _uncached(net)
    assert not np.allclose(edited, plain)
    got, hit = _explain(net)
    assert not hit
    _same(got, edited)
    # an index holding garbage is ignored (the hashes are computed again)
    for f in index.iterdir():
        f.write_text("not a hash\n")
    got, hit = _explain(net)
    assert hit
    _same(got, edited)


def test_a_model_edited_in_place_within_the_timestamp_granularity(cache, net):
    """Right after a write (less than RACY_NS ago) a file's hash is not remembered: an edit that restores size
    and mtime at once still gives the new model's maps."""
    plain = _explain(net)[0]
    st = net.stat()
    onnx.save(_scaled(2), str(net))
    os.utime(net, ns=(st.st_atime_ns, st.st_mtime_ns))
    got, hit = _explain(net)
    assert not hit
    _same(got, _uncached(net))
    assert not np.allclose(got, plain)


@pytest.mark.parametrize("where", ["cache", "graphs"])
def test_a_cache_folder_others_can_write_is_not_used(cache, net, where):
    plain = _uncached(net)
    _explain(net)
    folder = cache if where == "cache" else cache / "graphs"
    os.chmod(folder, 0o777)
    with pytest.warns(FvGraphWarning, match="is writable by other users .*does not use its disk cache"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain)
    os.chmod(folder, 0o1777)  # a sticky folder (like /tmp): others cannot replace what is in it
    assert _explain(net)[1]


def test_a_cache_of_another_user_is_not_used_and_said_once(cache, net, monkeypatch):
    plain = _uncached(net)
    _explain(net)
    from fvgraph import cache as cache_module
    monkeypatch.setattr(cache_module, "_uid", lambda: os.getuid() + 1)
    with pytest.warns(FvGraphWarning, match="is owned by another user") as said:
        got, hit = _explain(net)
        _explain(net, "guided")
    assert len([w for w in said if "owned by another user" in str(w.message)]) == 1
    assert not hit
    _same(got, plain)
    assert len(_entries(cache)) == 1  # nothing written there either


def test_an_entry_others_can_write_is_rebuilt(cache, net):
    plain = _uncached(net)
    _explain(net)
    (entry,) = _entries(cache)
    os.chmod(entry, 0o777)
    with pytest.warns(FvGraphWarning, match="is writable by other users"):
        got, hit = _explain(net)
    assert not hit
    _same(got, plain)
    assert os.stat(entry).st_mode & 0o777 == 0o700 and _explain(net)[1]


def test_new_cache_folders_are_private(tmp_path, net, monkeypatch):
    d = tmp_path / "fresh" / "cache"
    monkeypatch.setenv("FVGRAPH_CACHE", str(d))
    monkeypatch.setattr(diskcache, "RACY_NS", 0)  # the index written at once
    old = os.umask(0o002)
    try:
        _explain(net)
    finally:
        os.umask(old)
    for p in (d, d / "graphs", d / "graphs" / "index", *_entries(d), *(d / "graphs" / "index").iterdir()):
        assert os.stat(p).st_mode & 0o077 == 0, p
    assert _explain(net)[1]


def test_the_cli_on_a_damaged_entry(tmp_path, cache, net, capsys):
    from fvgraph.cli import main
    from fvgraph.image import demo_images
    image = str(demo_images()[0])
    assert main(["explain", str(net), image, "-m", "guided", "--no-cache", "-o", str(tmp_path / "plain"), "-q"]) == 0
    assert main(["explain", str(net), image, "-m", "guided", "-o", str(tmp_path / "first"), "-q"]) == 0
    (entry,) = _entries(cache)
    _flip(entry / "weights.data")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["explain", str(net), image, "-m", "guided", "-o", str(tmp_path / "again"), "-q"]) == 0
    err = capsys.readouterr().err  # the CLI prints the warning on one line
    assert err.startswith("fvgraph: warning: the disk cache entry") and err.count("\n") == 1, err
    (npy,) = (tmp_path / "plain").glob("*.npy")
    _same(np.load(tmp_path / "again" / npy.name), np.load(npy))
    _truncate(entry)
    r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(net), image, "-m", "guided", "-o",
                        str(tmp_path / "sub"), "-q"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("fvgraph: warning: the disk cache entry"), r.stderr
    _same(np.load(tmp_path / "sub" / npy.name), np.load(npy))


def test_bad_sizes_in_the_environment_warn_and_take_the_default(monkeypatch):
    for bad in ("abc", "-1", "nan", "inf", "1e400"):
        monkeypatch.setenv("FVGRAPH_CACHE_TOTAL_MB", bad)
        with pytest.warns(FvGraphWarning, match=f"FVGRAPH_CACHE_TOTAL_MB='{bad}' is not a size in MB"):
            assert diskcache._megabytes("FVGRAPH_CACHE_TOTAL_MB", 2048) == 2048 * 2**20
    monkeypatch.setenv("FVGRAPH_CACHE_TOTAL_MB", "0.5")
    assert diskcache._megabytes("FVGRAPH_CACHE_TOTAL_MB", 2048) == 2**19
    r = subprocess.run([sys.executable, "-c", "import fvgraph.diskcache as d; print(d.TOTAL_BYTES, d.MAX_BYTES)"],
                       capture_output=True, text=True,
                       env={**os.environ, "FVGRAPH_CACHE_TOTAL_MB": "abc", "FVGRAPH_CACHE_MAX_MB": "12x",
                            "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(2048 * 2**20), str(256 * 2**20)]
    assert "FVGRAPH_CACHE_TOTAL_MB='abc'" in r.stderr and "FVGRAPH_CACHE_MAX_MB='12x'" in r.stderr
    assert "Traceback" not in r.stderr


def test_stale_leftovers_are_cleaned(cache, net):
    _explain(net)
    graphs = cache / "graphs"
    old, new = graphs / ".dead-writer", graphs / ".live-writer"
    for d in (old, new):
        d.mkdir()
        (d / "optimized.onnx").write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    diskcache.evict(graphs, diskcache.TOTAL_BYTES)
    assert not old.exists() and new.exists()
    shutil.rmtree(new)


def test_the_index_of_remembered_hashes_is_bounded(cache, net):
    """The index keeps the most recently written records only; an evicted record is hashed again, never wrong."""
    first, _ = _explain(net)
    index = cache / "graphs" / "index"
    index.mkdir(mode=0o700, exist_ok=True)
    for k in range(40):  # records of file versions long gone
        (index / f"{k:032x}").write_text("0" * 64)
        os.utime(index / f"{k:032x}", (time.time() - 10000 + k,) * 2)
    kept = sorted(index.iterdir(), key=lambda m: m.stat().st_mtime)[-10:]
    diskcache.trim_index(index, keep=10)
    assert sorted(index.iterdir()) == sorted(kept)
    diskcache.evict(cache / "graphs", diskcache.TOTAL_BYTES)  # eviction trims it too, to its default bound
    assert len(list(index.iterdir())) <= diskcache.INDEX_ENTRIES
    assert np.array_equal(_explain(net)[0], first)
