"""The public interface: load from path / bytes / ModelProto / external data, run with named and indexed
outputs, several inputs, layers, and the `fvgraph info` command."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from tests.conftest import ort_session, rel_l2
from tests.zoo import ZOO


def _copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


@pytest.fixture(scope="module")
def proto():
    return ZOO["resnet_like"]()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)


def test_load_from_path_bytes_proto_and_external_data(proto, x, tmp_path):
    ref = ort_session(proto).run(None, {"input": x})[0]
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save(_copy(proto), ext, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert (ext.parent / "weights.bin").stat().st_size > 1000
    for source in (proto, proto.SerializeToString(), path, str(path), ext):
        model = fv.load(source)
        assert isinstance(model.graph, fv.Graph)
        assert rel_l2(model.run(x), ref) < 1e-5


def test_external_data_missing_is_a_clear_error(proto, tmp_path):
    ext = tmp_path / "m.onnx"
    onnx.save(_copy(proto), ext, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(fv.ModelLoadError):
        fv.load(ext)


def test_inputs_outputs_layers(proto):
    model = fv.load(proto)
    assert [v.name for v in model.inputs] == ["input"]
    assert model.inputs[0].shape == ("N", 3, 32, 32)
    assert len(model.outputs) == 1
    layers = model.layers
    assert [l.index for l in layers] == list(range(len(layers)))
    assert layers[0].op_type == "Conv" and layers[0].shape == ("N", 8, 32, 32) and layers[0].params == 8 * 3 * 9
    assert layers[-1].op_type == "Gemm" and layers[-1].output == model.outputs[0].name


def test_run_outputs_by_value_name_layer_name_and_index(proto, x):
    model = fv.load(proto)
    layers = model.layers
    conv = layers[0]
    ref = ort_session(proto, extra_outputs=[conv.output]).run([conv.output], {"input": x})[0]
    out = model.run(x, outputs=[conv.output, conv.name, 0, -1, model.outputs[0].name])
    assert set(out) == {conv.output, conv.name, 0, -1, model.outputs[0].name}
    for k in (conv.output, conv.name, 0):
        assert rel_l2(out[k], ref) < 1e-5
    np.testing.assert_allclose(out[-1], model.run(x), rtol=1e-5, atol=1e-6)  # fused vs unfused plan
    np.testing.assert_array_equal(out[-1], out[model.outputs[0].name])


def test_several_inputs_and_a_shape_tensor_input():
    """A model fed an image and a target shape (int64): run({name: array, ...})."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["img", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "bias"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["y"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 5, 5]),
                                          helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 4, 1, 1]),
                                          helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"img": np.random.default_rng(1).standard_normal((1, 3, 5, 5)).astype(np.float32),
             "bias": np.ones((1, 4, 1, 1), np.float32), "shape": np.array([4, -1], np.int64)}
    model = fv.load(m)
    y = model.run(feeds)
    assert y.shape == (4, 25)
    np.testing.assert_allclose(y, ort_session(m).run(None, feeds)[0], rtol=1e-5, atol=1e-5)
    feeds["shape"] = np.array([2, 50], np.int64)  # a new shape tensor gives a new fold, not a stale one
    assert model.run(feeds).shape == (2, 50)
    with pytest.raises(fv.InputError, match="pass a dict"):
        model.run(feeds["img"])


def test_initializers_listed_as_graph_inputs_and_unnamed_nodes(proto, x):
    """Old exporters list weights among the graph inputs and leave nodes unnamed."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for n in m.graph.node:
        n.name = ""
    model = fv.load(m)
    assert [v.name for v in model.inputs] == ["input"]
    names = [l.name for l in model.layers]
    assert len(set(names)) == len(names) and names[0] == "conv_0"
    assert rel_l2(model.run(x), ort_session(proto).run(None, {"input": x})[0]) < 1e-5


def test_shape_subgraph_is_folded_once_per_input_shape():
    model = fv.load(ZOO["exporter_style"](), engine="numpy")
    ex = model.executor
    x1 = np.zeros((1, 3, 16, 16), np.float32)
    model.run(x1)
    model.run(x1)
    tape = model.forward(x1, [model.outputs[0].name], keep=True)
    shape_nodes = [i for i, n in enumerate(model.graph.nodes) if n.op_type in ("Shape", "Gather", "Concat")
                   and i in ex.static]
    assert shape_nodes and not any(i in tape.nodes for i in shape_nodes)
    assert model.run(np.zeros((4, 3, 16, 16), np.float32)).shape == (4, 10)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fvgraph", *args], capture_output=True, text=True, timeout=120)


def test_info_command_prints_the_layer_table(proto, tmp_path):
    path = tmp_path / "r.onnx"
    onnx.save(proto, path)
    r = _cli("info", str(path))
    assert r.returncode == 0, r.stderr
    for word in ("opset", "13", "input", "(N, 3, 32, 32)", "Conv", "GlobalAveragePool", "params", "(N, 10)"):
        assert word in r.stdout


def test_info_lists_unsupported_ops_with_their_nodes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Unique", ["a"], ["y"], name="ein")]
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]),
              path)
    r = _cli("info", str(path))
    assert r.returncode == 1
    assert "Unique" in r.stdout and "ein" in r.stdout and "Relu" in r.stdout
