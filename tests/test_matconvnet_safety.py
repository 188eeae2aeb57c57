"""Crafted MATLAB v7.3 (HDF5) files: the MatConvNet reader reads a .mat only from its own bytes. External
storage, external links, virtual datasets, dangling soft links, unknown filters, reference cycles, deep nesting
and absurd claimed sizes are refused with one ModelLoadError line, from the API and from `fvgraph convert`."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.io import savemat

import fvgraph as fv
from tests.test_matconvnet import _write_v73, cell

R = np.random.default_rng(26)
F1 = R.standard_normal((3, 3, 3, 4)).astype(np.float32)
B1 = R.standard_normal((1, 4)).astype(np.float32)


def _net():
    return {"layers": cell([{"type": "conv", "name": "c1", "weights": cell([F1, B1]), "stride": 1.0, "pad": 1.0},
                            {"type": "relu", "name": "r1"}]),
            "meta": {"normalization": {"imageSize": np.array([6.0, 6.0, 3.0])}}}


def _model(tmp_path):
    """A legitimate v7.3 net in its own folder (model/), and a folder outside it (outside/)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    path = tmp_path / "model" / "net.mat"
    _write_v73(path, _net())
    return path


def _layer(f):
    return f[f["net/layers"][0, 0]]


def _replace_weight(f, make):
    """Replace conv1's filters (a dataset in #refs#) by make(f, name) and point the weights cell at it."""
    layer = _layer(f)
    old = f[layer["weights"][0, 0]]
    name = old.name
    del f[name]
    new = make(f, name)
    new.attrs["MATLAB_class"] = np.bytes_("single")
    layer["weights"][0, 0] = new.ref
    return name


def _expected(x):
    """conv1 (pad 1, stride 1) + ReLU in NumPy, from the same filters: the converted net must match it."""
    xp = np.pad(x[0].transpose(1, 2, 0), ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((6, 6, 4))
    for i in range(3):
        for j in range(3):
            out += xp[i:i + 6, j:j + 6] @ F1[i, j]
    return np.maximum(out + B1.reshape(-1), 0).transpose(2, 0, 1)[None]


def _cli(path, out):
    return subprocess.run([sys.executable, "-m", "fvgraph", "convert", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)


def _refused(path, *words):
    """ModelLoadError from the API and a one-line error from the CLI, both naming the file and the problem;
    no output file."""
    with pytest.raises(fv.ModelLoadError) as e:
        fv.convert.matconvnet(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for word in words:
        assert word in msg, (word, msg)
    out = path.parent / "out.onnx"
    r = _cli(path, out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("fvgraph: error:") and all(word in lines[0] for word in words), r.stderr
    assert r.stdout == "" and not out.exists()
    return msg


# --------------------------------------------------------------------------- the helpers write real files
def test_a_rewritten_but_legitimate_v73_file_still_converts(tmp_path):
    """The same surgery as below with an ordinary dataset, and an internal soft link: converts exactly."""
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        _replace_weight(f, lambda f, name: f.create_dataset(name, data=F1.T))
        f.create_dataset("#refs#/stride_value", data=np.array([[1.0]]))
        layer = _layer(f)
        del layer["stride"]
        layer["stride"] = h5py.SoftLink("/#refs#/stride_value")
    x = R.standard_normal((1, 3, 6, 6)).astype(np.float32)
    got = fv.load(fv.convert.matconvnet(path)).run(x)
    np.testing.assert_allclose(got, _expected(x), rtol=1e-4, atol=1e-4)
    r = _cli(path, tmp_path / "ok.onnx")
    assert r.returncode == 0 and "wrote" in r.stdout and (tmp_path / "ok.onnx").exists(), r.stderr


# --------------------------------------------------------------------------- reading outside the file
def test_external_storage_pointing_outside_is_refused(tmp_path):
    path = _model(tmp_path)
    secret = tmp_path / "outside" / "secret.bin"
    known = np.arange(F1.size, dtype=np.float32) * 7 + 1
    secret.write_bytes(known.tobytes())
    with h5py.File(path, "r+") as f:
        name = _replace_weight(f, lambda f, name: f.create_dataset(
            name, F1.T.shape, np.float32, external=[(str(secret), 0, known.nbytes)]))
    with h5py.File(path, "r") as f:  # the crafted file really reads the outside file's bytes
        np.testing.assert_array_equal(f[name][()].reshape(-1), known)
    msg = _refused(path, "external storage", name, "secret.bin")
    assert "refusing" in msg


def test_external_link_to_another_file_is_refused(tmp_path):
    path = _model(tmp_path)
    other = tmp_path / "outside" / "other.h5"
    with h5py.File(other, "w") as g:
        g.create_dataset("pad", data=np.array([[5.0]]))
    with h5py.File(path, "r+") as f:
        layer = _layer(f)
        del layer["pad"]
        layer["pad"] = h5py.ExternalLink(str(other), "/pad")
        where = layer.name + "/pad"
    with h5py.File(path, "r") as f:
        assert f[where][()][0, 0] == 5.0
    _refused(path, "external link", where, "other.h5")


def test_external_link_as_the_net_itself_is_refused(tmp_path):
    other = tmp_path / "outside" / "net.mat"
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    _write_v73(other, _net())
    path = tmp_path / "model" / "net.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["net"] = h5py.ExternalLink(str(other), "/net")  # no MATLAB header text: found by HDF5's signature
    with h5py.File(path, "r") as f:
        assert "layers" in f["net"]
    _refused(path, "external link", "'/net'")


def test_virtual_dataset_is_refused(tmp_path):
    path = _model(tmp_path)
    src = tmp_path / "outside" / "src.h5"
    with h5py.File(src, "w") as g:
        g.create_dataset("data", data=F1.T * 0 + 3)

    def vds(f, name):
        layout = h5py.VirtualLayout(shape=F1.T.shape, dtype=np.float32)
        layout[...] = h5py.VirtualSource(str(src), "data", shape=F1.T.shape)
        return f.create_virtual_dataset(name, layout)
    with h5py.File(path, "r+") as f:
        name = _replace_weight(f, vds)
    with h5py.File(path, "r") as f:
        assert f[name].is_virtual and np.all(f[name][()] == 3)
    _refused(path, "virtual dataset", name)


@pytest.mark.parametrize("target", ["/nowhere/at/all", "/ext/pad"], ids=["dangling", "through-external-link"])
def test_soft_link_dangling_or_leaving_the_file_is_refused(tmp_path, target):
    path = _model(tmp_path)
    other = tmp_path / "outside" / "other.h5"
    with h5py.File(other, "w") as g:
        g.create_dataset("pad", data=np.array([[5.0]]))
    with h5py.File(path, "r+") as f:
        f["ext"] = h5py.ExternalLink(str(other), "/")
        layer = _layer(f)
        del layer["pad"]
        layer["pad"] = h5py.SoftLink(target)
        where = layer.name + "/pad"
    _refused(path, where, "dangling" if target.startswith("/nowhere") else "external link")


def test_soft_link_loop_is_refused(tmp_path):
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        f["#refs#/loop_a"] = h5py.SoftLink("/#refs#/loop_b")
        f["#refs#/loop_b"] = h5py.SoftLink("/#refs#/loop_a")
        layer = _layer(f)
        del layer["pad"]
        layer["pad"] = h5py.SoftLink("/#refs#/loop_a")
    _refused(path, "soft link", "loop")


# --------------------------------------------------------------------------- decoders, sizes, cycles, depth
def test_filter_h5py_cannot_decode_is_refused(tmp_path):
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        name = _replace_weight(f, lambda f, name: f.create_dataset(
            name, data=F1.T, chunks=F1.T.shape, compression=32999, allow_unknown_filter=True))
    _refused(path, "filter 32999", name)


def test_absurd_claimed_size_is_refused_before_reading(tmp_path):
    path = _model(tmp_path)
    shape = (1 << 20, 1 << 20, 4, 3)  # 4 TiB x 3 of float32 in the header, nothing stored
    with h5py.File(path, "r+") as f:
        name = _replace_weight(f, lambda f, name: f.create_dataset(name, shape, np.float32, chunks=(64, 64, 4, 3)))
    assert path.stat().st_size < 1 << 20
    msg = _refused(path, "claims", name, str(shape))
    assert str(int(np.prod(shape, dtype=object)) * 4) in msg


def test_a_file_cannot_read_one_dataset_again_and_again(tmp_path):
    """A cell of references to one dataset (a DAG, not a cycle) counts each read against the size bound."""
    path = _model(tmp_path)
    n_refs = 4096
    with h5py.File(path, "r+") as f:
        big = f.create_dataset("#refs#/big", (1024, 1024), np.float32, chunks=(256, 256), compression="gzip")
        big[...] = 0
        big.attrs["MATLAB_class"] = np.bytes_("single")
        many = f.create_dataset("#refs#/many", (n_refs, 1), dtype=h5py.ref_dtype)
        many[:, 0] = [big.ref] * n_refs
        many.attrs["MATLAB_class"] = np.bytes_("cell")
        layer = _layer(f)
        layer["extra"] = many  # a struct field holding the cell
    size = path.stat().st_size
    assert n_refs * 4 << 20 > 1032 * size + (1 << 20)  # the claimed total really exceeds the documented bound
    _refused(path, "claims", "/#refs#/big")


def test_reference_cycle_through_a_cell_is_refused(tmp_path):
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        layer = _layer(f)
        del layer["weights"]
        ds = layer.create_dataset("weights", (1, 1), dtype=h5py.ref_dtype)
        ds[0, 0] = ds.ref  # the cell's only element is the cell
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        where = ds.name
    _refused(path, "reference cycle", where)


def test_group_cycle_is_refused(tmp_path):
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        f["net/meta/normalization/up"] = f["net/meta"]  # a hard link back to an ancestor group
    _refused(path, "reference cycle", "/net/meta")


def test_nesting_deeper_than_the_bound_is_refused(tmp_path):
    path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        g = f["net/meta"]
        for k in range(70):  # acyclic, just deep: each struct holds the next one
            g = g.create_group(f"s{k}")
            g.attrs["MATLAB_class"] = np.bytes_("struct")
        g.create_dataset("leaf", data=np.array([[1.0]]))
    msg = _refused(path, "deeper than 64")
    assert "/net/meta/s0/s1" in msg


def test_v5_files_with_the_same_net_still_convert(tmp_path):
    """The v5 path (scipy.io.loadmat) is untouched: the same net converts to the same outputs."""
    path = tmp_path / "v5.mat"
    savemat(path, {"net": _net()})
    x = R.standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(fv.load(path).run(x), _expected(x), rtol=1e-4, atol=1e-4)
