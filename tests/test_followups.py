"""Issue #26's follow-ups: the CLI's image limits, param's safe reader, atomic map files, one sha256 helper, the
patch bank's private and verified cache, and fixed_target on time-major outputs; each against an independent
computation."""
import hashlib
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import fvgraph as fv
from fvgraph import image as fimage
from fvgraph.cli import main
from fvgraph.errors import FvGraphWarning, InputError
from tests.conftest import ort_session


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _f32(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _classifier(size=16, classes=4, seed=0):
    """conv -> relu -> GAP -> Gemm on (N, 3, size, size)."""
    rng = np.random.default_rng(seed)
    inits = {"w": _f32(rng, 6, 3, 3, 3), "b": _f32(rng, 6, scale=0.1), "wf": _f32(rng, classes, 6),
             "bf": _f32(rng, classes, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)


@pytest.fixture
def no_limits(monkeypatch):
    """The image limits at their defaults, whatever the environment or an earlier test set."""
    monkeypatch.setattr(fimage, "_SET", {})
    monkeypatch.delenv("FVGRAPH_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.delenv("FVGRAPH_MAX_IMAGE_ASPECT", raising=False)


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(_classifier(), str(path))
    return path


def _one_error_line(err):
    return err.startswith("fvgraph: error:") and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- 1. --max-image-pixels/-aspect
def test_max_image_pixels_refuses_a_big_png_in_one_line_and_accepts_it_without(net_file, tmp_path, capsys,
                                                                               no_limits):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000), (90, 140, 200)).save(big)  # one colour: a 9 MP file of a few kB
    cmd = ["explain", str(net_file), str(big), "-m", "gradient", "-q"]
    for argv in (["--max-image-pixels", "1000000", *cmd, "-o", str(tmp_path / "a")],
                 [*cmd, "-o", str(tmp_path / "a"), "--max-image-pixels", "1e6"]):  # before or after the command
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert _one_error_line(err), err
        assert "--max-image-pixels" in err and "9.0 megapixels" in err and "over the limit of 1 megapixels" in err
        assert not (tmp_path / "a" / "big_gradient.npy").exists()
    assert fimage.image_limits() == fimage.ImageLimits()  # main leaves the process's limits as they were
    assert "FVGRAPH_MAX_IMAGE_PIXELS" not in os.environ
    assert main([*cmd, "-o", str(tmp_path / "b")]) == 0  # 9 MP is under the default 50 MP
    want = fv.load(net_file).explain(fimage.load_image(big, fv.load(net_file).preprocessing()), "gradient")
    np.testing.assert_allclose(np.load(tmp_path / "b" / "big_gradient.npy"), want.relevance[0], rtol=1e-5,
                               atol=1e-7)
    assert main(["--max-image-pixels", "1e8", *cmd, "-o", str(tmp_path / "c")]) == 0  # 1e8 is a number
    assert (tmp_path / "c" / "big_gradient.npy").is_file()


def test_max_image_aspect_and_bad_limit_values_are_one_line(net_file, tmp_path, capsys, no_limits):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (90, 30), (10, 20, 30)).save(strip)  # 3:1
    cmd = ["explain", str(net_file), str(strip), "-m", "gradient", "-q", "-o", str(tmp_path / "o")]
    capsys.readouterr()
    assert main(["--max-image-aspect", "2", *cmd]) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err) and "3 times its short one" in err and "limit of 2" in err, err
    assert main(["--max-image-aspect", "3.5", *cmd]) == 0
    for flag in ("--max-image-pixels", "--max-image-aspect"):
        for bad in ("lots", "0", "-5", "nan", "inf", "", "0.5"):
            capsys.readouterr()
            assert main([flag, bad, *cmd, "--overwrite"]) == 2, (flag, bad)
            err = capsys.readouterr().err
            assert _one_error_line(err) and flag in err and repr(bad) in err, (flag, bad, err)
    assert fimage.image_limits() == fimage.ImageLimits()


def test_limits_given_to_main_apply_to_the_command_and_its_workers(monkeypatch, no_limits):
    """What the command sees while it runs: set_image_limits' values, and the environment spawned workers read."""
    import fvgraph.cli as cli
    seen = {}

    def probe(args):
        seen.update(limits=fimage.image_limits(), env=(os.environ.get("FVGRAPH_MAX_IMAGE_PIXELS"),
                                                       os.environ.get("FVGRAPH_MAX_IMAGE_ASPECT")))
        return 0
    monkeypatch.setattr(cli, "cmd_info", probe)
    assert main(["--max-image-pixels", "2.5e7", "--max-image-aspect", "40", "info", "m.onnx"]) == 0
    assert seen["limits"] == fimage.ImageLimits(max_pixels=25_000_000, max_aspect=40.0)
    assert seen["env"] == ("25000000", "40.0")
    assert fimage.image_limits() == fimage.ImageLimits() and "FVGRAPH_MAX_IMAGE_ASPECT" not in os.environ


# ----------------------------------------------------------------------------- 2. param's natural magnitude
def test_natural_magnitude_reads_through_the_safe_reader(monkeypatch, no_limits):
    from fvgraph.methods.param import natural_magnitude
    for path in fimage.demo_images():  # the safe reader gives what Pillow's RGB conversion gives
        with Image.open(path) as im:
            assert np.array_equal(fimage.read_rgb(path), np.asarray(im.convert("RGB")))
    natural_magnitude.cache_clear()
    monkeypatch.setattr(fimage, "_SET", {"max_pixels": 1000})
    try:
        with pytest.raises(InputError, match="over the limit of 0.001 megapixels"):
            natural_magnitude(3, 8, 8)
    finally:
        natural_magnitude.cache_clear()


# ----------------------------------------------------------------------------- 3. atomic save_png / save_npy
def test_save_png_and_npy_write_whole_files_and_leave_no_temporaries(tmp_path, monkeypatch):
    from fvgraph.render import save_npy, save_png
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    a = np.random.default_rng(2).standard_normal((3, 5, 4)).astype(np.float32)
    out = tmp_path / "maps"
    assert save_png(out / "m.png", rgb) == out / "m.png" and save_npy(out / "m.npy", a) == out / "m.npy"
    with Image.open(out / "m.png") as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), rgb)
    got = np.load(out / "m.npy")
    assert got.dtype == a.dtype and np.array_equal(got, a)
    assert sorted(os.listdir(out)) == ["m.npy", "m.png"]  # no .part files, no "m.npy.npy"
    with pytest.raises(InputError, match="exists"):
        save_png(out / "m.png", rgb)

    def killed(*args, **kw):  # a write that dies half-way
        target = args[1] if isinstance(args[0], Image.Image) else args[0]
        with open(target, "wb") if isinstance(target, (str, os.PathLike)) else _nullcontext(target) as f:
            f.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, "save", killed)
    monkeypatch.setattr(np, "save", killed)
    for save, name, value in ((save_png, "m.png", rgb), (save_npy, "m.npy", a), (save_png, "new.png", rgb),
                              (save_npy, "new.npy", a)):
        with pytest.raises(KeyboardInterrupt):
            save(out / name, value, overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["m.npy", "m.png"]  # the old files whole, nothing new, no temporaries
    with Image.open(out / "m.png") as im:
        assert np.array_equal(np.asarray(im), rgb)
    assert np.array_equal(np.load(out / "m.npy"), a)


class _nullcontext:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- 4. one sha256 helper
def test_reference_records_the_model_sha256_with_the_shared_helper(net_file, tmp_path):
    import fvgraph.compare as compare
    assert not hasattr(compare, "file_sha256")
    img = tmp_path / "i.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(img)
    meta = compare.record(fv.load(net_file), net_file, [img], ["gradient"], tmp_path / "ref.npz")
    assert meta["model_sha256"] == hashlib.sha256(net_file.read_bytes()).hexdigest()
    _, info = compare.compare(fv.load(net_file), net_file, tmp_path / "ref.npz")
    assert info["model_sha256"] == info["reference_model_sha256"] == meta["model_sha256"]


# ----------------------------------------------------------------------------- 5. the patch bank's cache
@pytest.fixture
def bank_images(tmp_path):
    d = tmp_path / "bank_images"
    d.mkdir()
    rng = np.random.default_rng(4)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"b{k}.png")
    return d


def _brute_bank(path, model, folder):
    """Unit feature vectors of every position of 'r' with onnxruntime, image by image."""
    sess = ort_session(onnx.load(str(path)), extra_outputs=["r"])
    names = [o.name for o in sess.get_outputs()]
    rows = []
    for f in sorted(folder.iterdir()):
        a = dict(zip(names, sess.run(None, {"x": fimage.load_image(f, model.preprocessing())})))["r"][0]
        v = a.transpose(1, 2, 0).reshape(-1, a.shape[0])
        rows.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
    return np.concatenate(rows)


def _banked(model, folder, cache):
    from fvgraph.methods.examples import build_bank
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        bank = build_bank(model, [folder], "relu", cache, quiet=True)
    return bank, [str(x.message) for x in w if issubclass(x.category, FvGraphWarning)]


def test_bank_cache_is_private_verified_and_rebuilt_when_damaged(net_file, bank_images, tmp_path):
    from fvgraph import diskcache
    model = fv.load(net_file)
    want = _brute_bank(net_file, model, bank_images)
    cache = tmp_path / "cache" / "banks"
    (vectors, where, files), said = _banked(model, bank_images, cache)
    assert not said and np.allclose(vectors, want, atol=1e-5) and len(where) == len(want) == 3 * 16 * 16
    assert os.stat(cache).st_mode & 0o777 == 0o700  # created private
    (entry,) = cache.iterdir()
    good_bytes = entry.read_bytes()
    assert np.allclose(_banked(model, bank_images, cache)[0][0], want, atol=1e-5)  # a hit, the same bank

    # damaged: truncated, a flipped byte in the vectors, not a zip at all, a bank of another key -> rebuilt
    with np.load(entry) as npz:
        z = dict(npz)
    other = dict(z, key=np.array("0" * 24))
    from fvgraph.methods.examples import _bank_digest
    forged = {k: v for k, v in other.items() if k != "digest"}
    short = {k: (v[:-5] if k == "vectors" else v) for k, v in z.items() if k != "digest"}  # rows without places
    flip = bytearray(good_bytes)
    at = good_bytes.index(np.ascontiguousarray(z["vectors"]).tobytes()[:64]) + 100
    flip[at] ^= 0x40
    for damage in (good_bytes[:len(good_bytes) // 2], bytes(flip), b"not a bank",
                   _npz(dict(forged, digest=np.array(_bank_digest(forged)))),
                   _npz(dict(short, digest=np.array(_bank_digest(short)))), _npz(dict(z, digest=np.array("x")))[:-1]):
        entry.write_bytes(damage)
        (vectors, where, files), said = _banked(model, bank_images, cache)
        assert np.allclose(vectors, want, atol=1e-5) and len(where) == len(want)
        assert len(said) == 1 and str(entry) in said[0] and "rebuilt" in said[0], said
        assert entry.read_bytes() != damage and sorted(os.listdir(cache)) == [entry.name]  # replaced whole

    # another user could write the folder: a bank planted there (digest and all) is never used, one warning
    wrong = dict(z, vectors=np.ones_like(z["vectors"]) / np.sqrt(z["vectors"].shape[1]))
    wrong.pop("digest")
    entry.write_bytes(_npz(dict(wrong, digest=np.array(_bank_digest(wrong)))))
    os.chmod(cache, 0o777)
    diskcache._warned.discard(f"bank:{cache}")
    try:
        for again in range(2):
            (vectors, _, _), said = _banked(model, bank_images, cache)
            assert np.allclose(vectors, want, atol=1e-5)
            assert len(said) == (1 - again) and all("writable by other users" in s and "patch banks" in s
                                                    for s in said), said
        assert sorted(os.listdir(cache)) == [entry.name]  # nothing written there
    finally:
        os.chmod(cache, 0o700)
        diskcache._warned.discard(f"bank:{cache}")


def _npz(arrays) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ----------------------------------------------------------------------------- 6. fixed_target, time-major
def _time_major(classes=5):
    """conv -> relu -> mean over height -> (T, N, C') -> MatMul: (8, N, classes) logits."""
    rng = np.random.default_rng(21)
    inits = {"w": _f32(rng, 6, 3, 3, 3), "b": _f32(rng, 6, scale=0.1), "wc": _f32(rng, 6, classes)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0, name="pool_h"),
             helper.make_node("Transpose", ["m"], ["t"], perm=[2, 0, 1], name="to_tnc"),
             helper.make_node("MatMul", ["t", "wc"], ["logits"], name="classifier")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, "N", classes])], inits)


def test_fixed_target_on_a_time_major_output_is_the_predicted_class_of_explain():
    from fvgraph.methods.sampling import fixed_target
    proto = _time_major()
    model = fv.load(proto)
    rng = np.random.default_rng(27)
    x = (rng.standard_normal((6, 3, 8, 8)) + 2 * rng.standard_normal((6, 3, 1, 1))).astype(np.float32)
    out = ort_session(proto).run(None, {"x": x})[0]
    assert out.shape == (8, 6, 5)
    want = out.astype(np.float64).sum(axis=0).argmax(axis=1)  # the class scores summed over time, per sample
    assert len(set(want.tolist())) == 3  # classes 2, 3 and 4 among the samples
    assert not np.array_equal(out.reshape(6, -1).argmax(axis=1), want)  # what the batch-first reading gave
    got = fixed_target(model, x, None)
    assert np.array_equal(got, want)
    assert np.array_equal(np.asarray(model.explain(x, "gradient").target), want)
    assert np.array_equal(fixed_target(model, x, [1, 2, 0, 0, 4, 3]), [1, 2, 0, 0, 4, 3])  # given: kept
    bf = np.random.default_rng(23).standard_normal((3, 3, 16, 16)).astype(np.float32)  # batch first: unchanged
    clf = _classifier()
    assert np.array_equal(fixed_target(fv.load(clf), bf, None), ort_session(clf).run(None, {"x": bf})[0].argmax(1))
