"""Bad input gets one clear FvGraphError (and a one-line CLI message with a nonzero exit), never a traceback."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import fvgraph as fv
from tests.conftest import single_op_model
from tests.zoo import ZOO


def test_missing_empty_truncated_and_foreign_files(tmp_path):
    with pytest.raises(fv.ModelLoadError, match="no such file"):
        fv.load(tmp_path / "nope.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(fv.ModelLoadError):
        fv.load(empty)
    good = ZOO["resnet_like"]().SerializeToString()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(fv.ModelLoadError):
        fv.load(trunc)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(fv.ModelLoadError):
        fv.load(png)
    with pytest.raises(fv.ModelLoadError, match="directory"):
        fv.load(tmp_path)


def test_random_byte_flips_never_escape_as_other_errors():
    """Flip seeded random bytes of a real model a few hundred times: load and run either work or raise
    FvGraphError, nothing else."""
    good = bytearray(ZOO["resnet_like"]().SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    outcomes = {"ok": 0, "error": 0}
    for trial in range(300):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        try:
            m = fv.load(bytes(data))
            m.run(x)
            outcomes["ok"] += 1
        except fv.FvGraphError as e:
            assert str(e)
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes


def test_initializer_size_is_checked_against_its_shape():
    m = ZOO["vgg_like"]()
    t = m.graph.initializer[0]
    t.dims[0] += 1
    with pytest.raises(fv.ModelLoadError, match="corrupt"):
        fv.load(m)


def test_unsupported_ops_are_all_named_at_load():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Unique", ["a"], ["b"], name="e1"),
             helper.make_node("Unique", ["b"], ["c"], name="e2"),
             helper.make_node("BiasSoftmax", ["c"], ["y"], name="t1", domain="com.microsoft")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17),
                                                                                   helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(fv.UnsupportedModelError) as e:  # fvgraph's own engine cannot run it at all
        fv.load(m, engine="numpy")
    with pytest.warns(fv.FvGraphWarning) as said:  # onnxruntime runs it: loaded, and said at load
        model = fv.load(m)
    with pytest.raises(fv.UnsupportedModelError) as later:  # what needs the executor or the reverse pass
        model.explain(np.ones((1, 4), np.float32), "gradient")
    for msg in (str(e.value), str(said[0].message), str(later.value)):
        for word in ("Unique", "com.microsoft.BiasSoftmax", "e1", "e2", "t1"):
            assert word in msg, msg


def test_unsupported_attribute_is_refused_at_load():
    x = np.zeros((1, 1, 4, 4), np.float32)
    m = single_op_model("Resize", [("x", x)], initializers=[("roi", np.zeros(0, np.float32)),
                                                          ("s", np.array([1, 1, 0.5, 0.5], np.float32))],
                        opset=18, mode="linear", antialias=1)
    with pytest.raises(fv.UnsupportedModelError, match="antialias"):
        fv.load(m, engine="numpy")
    with pytest.warns(fv.FvGraphWarning, match="antialias"):
        fv.load(m)


def test_wrong_inputs_name_the_input_expected_and_got():
    model = fv.load(ZOO["vgg_like"]())
    with pytest.raises(fv.InputError, match=r"input 'input': expected rank 4"):
        model.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(fv.InputError, match=r"expected shape \(N, 3, 32, 32\), got \(1, 3, 31, 32\)"):
        model.run(np.zeros((1, 3, 31, 32), np.float32))
    with pytest.raises(fv.InputError, match="expected dtype float32, got int64"):
        model.run(np.zeros((1, 3, 32, 32), np.int64))
    with pytest.raises(fv.InputError, match="unknown input"):
        model.run({"image": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(fv.InputError, match="unknown layer"):
        model.run(np.zeros((1, 3, 32, 32), np.float32), outputs=["conv99"])
    with pytest.raises(fv.InputError, match="out of range"):
        model.run(np.zeros((1, 3, 32, 32), np.float32), outputs=[1000])
    # float64 is accepted for a float32 input (same kind), and cast
    assert model.run(np.zeros((1, 3, 32, 32), np.float64)).dtype == np.float32


def test_runtime_failure_names_the_node():
    x = np.zeros((1, 6), np.float32)
    m = single_op_model("Reshape", [("x", x)], initializers=[("s", np.array([4, -1], np.int64))])
    with pytest.raises(fv.ExecutionError, match="Reshape"):
        fv.load(m).run(x)


def test_cuda_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here: the GPU tests cover device='cuda'")
    except ImportError:
        pass
    with pytest.raises(fv.DeviceError, match="CuPy"):
        fv.load(ZOO["vgg_like"](), device="cuda")
    with pytest.raises(fv.DeviceError, match="unknown device"):
        fv.load(ZOO["vgg_like"](), device="tpu")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fvgraph", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = _cli("info", str(bad))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("fvgraph: error:")
    assert "Traceback" not in r.stderr
    r = _cli("--debug", "info", str(bad))
    assert r.returncode != 0 and "Traceback" in r.stderr
