"""Malformed models: every one ends in one clear FvGraphError (from the API; one line and exit 2 from the CLI),
never another exception, a crash or a hang. Seeded mutations of five small nets (tests/mutations.py), and the
load-time checks of weights against their ops, each by hand."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from tests import zoo
from tests.mutations import NEW_KINDS, mutate

NETS = [zoo.vgg_like(size=16), zoo.resnet_like(size=16), zoo.mobilenet_like(size=16), zoo.inception_like(size=16),
        zoo.se_block()]


def _exercise(data):
    """'ok' or 'clean'; anything else propagates (the test fails with it)."""
    try:
        m = fv.load(data)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (m.inputs[0].shape or [1, 3, 16, 16])]
        x = np.random.default_rng(0).standard_normal(shape).astype(m.inputs[0].dtype or np.float32)
        m.run(x)
        m.explain(x, "gradient")
        m.explain(x, "lrp-epsilon")
        return "ok"
    except fv.FvGraphError:
        return "clean"


def _exercise_cli_path(data):
    """What `fvgraph info` and `explain` read on top of running: labels, preprocessing, layer shapes, on the
    onnxruntime engine (whose optimizer segfaulted on a LayerNormalization with bias "")."""
    try:
        m = fv.load(data, engine="onnxruntime", cache=False)
        names = m.class_names()
        assert names is None or all(isinstance(n, str) for n in names), names
        m.preprocessing()
        m.concrete_shapes()
        shape = [d if isinstance(d, int) and d > 0 else 4 for d in (m.inputs[0].shape or [1, 3, 16, 16])]
        x = np.random.default_rng(0).standard_normal(shape).astype(m.inputs[0].dtype or np.float32)
        m.run(x)
        m.explain(x, "gradient")
        return "ok"
    except fv.FvGraphError:
        return "clean"


def test_the_kinds_the_cli_fuzz_found_end_in_fvgraph_errors_only():
    """Metadata of the wrong type, -1 / symbolic dims, odd output names, optional inputs as "", attributes of
    another type, bad opsets, tiny graphs (tools/fuzz_cli.py runs 1,100 of them through the CLI)."""
    nets = NETS + [_paddle_like([-1, 3, 48, -1]), _ultralytics_like()]
    counts = {"ok": 0, "clean": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(240):
            counts[_exercise_cli_path(mutate(nets[k % len(nets)], np.random.default_rng(10_000 + k),
                                             NEW_KINDS))] += 1
    assert counts["clean"] > 60 and counts["ok"] > 40, counts


def test_seeded_mutations_end_in_fvgraph_errors_only():
    counts = {"ok": 0, "clean": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(150):
            counts[_exercise(mutate(NETS[k % len(NETS)], np.random.default_rng(k)))] += 1
    assert counts["clean"] > 50 and counts["ok"] > 10, counts  # the mutations break most, not all


def test_a_malformed_model_from_the_command_line_is_one_line(tmp_path):
    from fvgraph.image import demo_images
    rng = np.random.default_rng(3)
    shown = 0
    for k in range(40):
        data = mutate(NETS[k % len(NETS)], rng)
        if _exercise(data) == "ok":
            continue
        path = tmp_path / f"m{k}.onnx"
        path.write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(path), str(demo_images()[0]), "-m",
                            "gradient", "--out", str(tmp_path / "o"), "-q"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("fvgraph: error:") and r.stderr.count("\n") == 1, r.stderr
        shown += 1
        if shown == 4:
            break
    assert shown == 4


def _conv_model(w, b=None, **attrs):
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    ins = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        ins.append("b")
    g = helper.make_graph([helper.make_node("Conv", ins, ["y"], name="the_conv", **attrs)], "c",
                          [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])], [helper.make_tensor_value_info("y", 1, None)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("case, words", [
    (dict(w=np.zeros((4, 3, 3, 3)), kernel_shape=[3, 1000]), "kernel_shape"),
    (dict(w=np.zeros((4, 3, 3, 3)), b=np.zeros(5)), "bias"),
    (dict(w=np.zeros((4, 3))), "rank 3"),
    (dict(w=np.zeros((4, 3, 3, 3)), pads=[1, 1, 1]), "pads"),
    (dict(w=np.zeros((4, 3, 3, 3)), group=3), "group"),
])
def test_weights_that_do_not_fit_their_op_are_named_at_load(case, words):
    case = dict(case)
    with pytest.raises(fv.ModelLoadError, match=words) as e:
        fv.load(_conv_model(case.pop("w"), case.pop("b", None), **case))
    assert "the_conv" in str(e.value)


def test_normalization_parameters_of_different_lengths_are_named_at_load():
    inits = [numpy_helper.from_array(np.ones(n, np.float32), k) for k, n in (("s", 3), ("b", 3), ("m", 4), ("v", 3))]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")], "b",
                          [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])], [helper.make_tensor_value_info("y", 1, None)],
                          inits)
    with pytest.raises(fv.ModelLoadError, match="bn.*one length"):
        fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def _paddle_like(dims, classes=2):
    """A PaddleOCR-style classifier: free dims written as -1, labels in `character`."""
    m = zoo.mobilenet_like(size=16, classes=classes)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info(m.graph.input[0].name, TensorProto.FLOAT, dims))
    m.metadata_props.add(key="character", value="0\n180")
    return m


def _ultralytics_like(imgsz="[16, 16]", names="{0: 'cat', 1: 'dog', 2: 'cow'}"):
    m = zoo.vgg_like(size=16, classes=3)
    m.metadata_props.add(key="imgsz", value=imgsz)
    m.metadata_props.add(key="names", value=names)
    return m


@pytest.mark.parametrize("dims", [[-1, 3, -1, -1], [-1, 3, 48, -1]])
def test_input_dims_written_as_minus_one_load_show_and_explain(tmp_path, dims):
    """PaddleOCR's classifier writes its free dims as -1: they are unknown dims, not sizes."""
    from fvgraph.image import demo_images, load_image
    proto = _paddle_like(dims)
    m = fv.load(proto)
    assert m.inputs[0].shape == tuple(None if d < 0 else d for d in dims)
    path = tmp_path / "cls.onnx"
    onnx.save(proto, str(path))
    r = subprocess.run([sys.executable, "-m", "fvgraph", "info", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    shown = "(?, 3, ?, ?)" if dims[2] < 0 else "(?, 3, 48, ?)"
    assert f"input {shown} float32" in r.stdout and "labels    2: 0, 180" in r.stdout, r.stdout
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(path), str(demo_images()[0]), "-m",
                        "gradient", "-o", str(out), "--preprocess", "size=48x192", "-q"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = np.load(next(out.glob("*_gradient.npy")))
    # the same net declared at 1x3x48x192, fed the same preprocessed picture: the same gradient
    fixed = _paddle_like([1, 3, 48, 192])
    ref = fv.load(fixed, preprocess="size=48x192", engine="numpy")
    want = ref.explain(load_image(demo_images()[0], ref.preprocessing()), "gradient").relevance[0]
    assert got.shape == want.shape == (3, 48, 192)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _layernorm_net(bias_inputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("LayerNormalization", ["r", "s"] + bias_inputs, ["y"], axis=-1, name="ln")],
                          "ln", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "s")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_layernormalization_whose_optional_bias_is_empty_runs_on_onnxruntime():
    """onnxruntime's optimizer segfaulted on bias "": the session gets the node without it (the same node)."""
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.25, 4.0]], np.float32)
    r = np.maximum(x, 0)
    mu, var = r.mean(-1, keepdims=True), r.var(-1, keepdims=True)
    want = (r - mu) / np.sqrt(var + 1e-5) * np.array([1.0, 2.0, 3.0], np.float32)
    m = fv.load(_layernorm_net([""]), engine="onnxruntime", cache=False)
    np.testing.assert_allclose(m.run(x), want, rtol=1e-4, atol=1e-5)
    numpy = fv.load(_layernorm_net([""]), engine="numpy")  # fvgraph's own executor, no onnxruntime
    np.testing.assert_allclose(m.explain(x, "gradient", target=0).relevance,
                               numpy.explain(x, "gradient", target=0).relevance, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key, value", [
    ("fvgraph.classes", '{"0": ["a"]}'), ("fvgraph.classes", "5"), ("fvgraph.classes", "[[1, 2]]"),
    ("names", "[" * 3000), ("names", "{0: 'a', 'b': 1}"), ("classes", '{"a": {"b": 1}}'), ("labels", " , \n "),
])
def test_labels_of_the_wrong_type_in_metadata_are_none(key, value):
    m = _ultralytics_like()
    del m.metadata_props[:]
    m.metadata_props.add(key=key, value=value)
    assert fv.load(m).class_names() is None


@pytest.mark.parametrize("key, value, want", [
    ("fvgraph.classes", "[1.5, 2, null]", ["1.5", "2", ""]),
    ("names", "{1: 'dog', 0: 'cat'}", ["cat", "dog"]),
    ("labels", '["x", 3]', ["x", "3"]),
])
def test_labels_in_metadata_are_strings(key, value, want):
    m = _ultralytics_like()
    del m.metadata_props[:]
    m.metadata_props.add(key=key, value=value)
    assert fv.load(m).class_names() == want


@pytest.mark.parametrize("imgsz", ['{"h": 1}', "[640, [1]]", "[1, 2, 3]", '"abc"', "0", "1e400", "(640, 'a')"])
def test_an_ultralytics_imgsz_that_is_no_size_is_named_at_load(imgsz):
    with pytest.raises(fv.InputError, match="imgsz"):
        fv.load(_ultralytics_like(imgsz=imgsz))


def test_a_valid_ultralytics_imgsz_still_sets_the_size():
    assert fv.load(_ultralytics_like(imgsz="(16, 24)")).preprocessing()["size"] == [16, 24]


def _graph_surgery(fn):
    m = zoo.vgg_like(size=16)
    fn(m)
    return m


@pytest.mark.parametrize("fn, error, words", [
    (lambda m: m.graph.ClearField("output"), fv.ModelLoadError, "no outputs"),
    (lambda m: setattr(m.graph.output[0], "name", ""), fv.ModelLoadError, "empty name"),
    (lambda m: m.graph.node[1].input.__setitem__(0, ""), fv.ModelLoadError, "required input 0"),
    (lambda m: m.opset_import[0].__setattr__("version", 10 ** 6), fv.UnsupportedModelError, "newer than"),
])
def test_graphs_without_what_they_need_are_named_at_load(fn, error, words):
    with pytest.raises(error, match=words):
        fv.load(_graph_surgery(fn))


def test_a_reduction_over_the_batch_axis_is_one_unsupported_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("ReduceMean", ["r"], ["y"], axes=[0, 3], keepdims=0)], "rb", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), engine="numpy")
    x0 = np.ones((1, 3, 4, 4), np.float32)
    np.testing.assert_allclose(m.run(x0), np.ones((3, 4), np.float32))
    with pytest.raises(fv.UnsupportedModelError, match="batch"):
        m.explain(x0, "gradient", target=fv.OutputTarget(mask=np.float32(1.0)))
