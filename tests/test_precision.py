"""Half and int8 models as onnxruntime's own tools write them: float16 by its converter, int8 by quantize_static
(QDQ and QOperator formats) and quantize_dynamic. They load, run equal to onnxruntime, and every method explains
them (float16 through its float32 twin; int8 with the straight-through estimator, tested against its formula)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import fvgraph as fv
from tests import zoo
from tests.conftest import ort_session, rel_l2

METHODS = ("gradient", "guided", "lrp-epsilon", "gradcam", "integrated-gradients")


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("prec") / "float.onnx"
    onnx.save(zoo.resnet_like(opset=13, size=32), str(path))
    return path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)


def _ort(path, x):
    """onnxruntime as users run it (its default optimizations: QDQ fusion into integer kernels)."""
    import onnxruntime as ort
    m = onnx.load(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = m.graph.input[0].name
    dtype = np.float16 if m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else np.float32
    return sess.run(None, {name: x.astype(dtype)})[0]


@pytest.fixture(scope="module")
def half_model(float_model, tmp_path_factory):
    from onnxruntime.transformers.float16 import convert_float_to_float16
    path = tmp_path_factory.mktemp("prec") / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(float_model))), str(path))
    return path


def test_float16_runs_as_onnxruntime_and_explains_like_the_float32_model(float_model, half_model, images):
    half, full = fv.load(half_model), fv.load(float_model)
    y = half.run(images[:1])
    assert y.dtype == np.float16
    # the model as written: onnxruntime's float16 kernels (the session's own fusions round in other places)
    assert rel_l2(y, _ort(half_model, images[:1])) < 3e-3
    # explained in float32: exactly the float32 model with its weights rounded to half, and near the original
    rounded = onnx.load(str(float_model))
    for t in rounded.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    rounded = fv.load(rounded)
    for method in METHODS:
        a = half.explain(images, method).relevance
        assert a.dtype == np.float32 and np.all(np.isfinite(a)) and np.abs(a).sum() > 0, method
        assert rel_l2(a, rounded.explain(images, method).relevance) < 1e-5, method
        assert rel_l2(a, full.explain(images, method).relevance) < 0.1, method


def _calibration(images):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"input": images[k:k + 1]} for k in range(len(images))])

        def get_next(self):
            return next(self.rows, None)
    return Reader()


@pytest.fixture(scope="module", params=["QDQ", "QOperator", "dynamic"])
def int8_model(request, float_model, images, tmp_path_factory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    path = tmp_path_factory.mktemp("prec") / f"int8-{request.param}.onnx"
    if request.param == "dynamic":
        quantize_dynamic(str(float_model), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm",
                                                                                                         "MatMul"])
    else:
        quantize_static(str(float_model), str(path), _calibration(images),
                        quant_format=getattr(QuantFormat, request.param), per_channel=True)
    return request.param, path


def test_int8_models_load_run_as_onnxruntime_and_explain(int8_model, float_model, images):
    kind, path = int8_model
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"}, ops
    model = fv.load(path)
    ref = _ort(path, images)
    assert rel_l2(model.run(images), ref) < 1e-5
    # fvgraph's own kernels compute the QDQ graph as written, as onnxruntime does without its integer fusions
    plain = ort_session(onnx.load(str(path))).run(None, {"input": images})[0]
    assert rel_l2(fv.load(path, engine="numpy").run(images), plain) < 1e-5
    full = fv.load(float_model)
    for method in METHODS:
        r = model.explain(images, method, target=1).relevance
        assert np.all(np.isfinite(r)) and np.abs(r).sum() > 0, (kind, method)
        if method == "gradient":  # through the straight-through estimator: near the float model's
            assert rel_l2(r, full.explain(images, method, target=1).relevance) < 0.5, (kind, method)


def test_check_diff_reports_how_far_quantization_moved_the_maps(int8_model, float_model, tmp_path):
    from fvgraph.cli import main
    from fvgraph.image import demo_images
    kind, path = int8_model
    out = tmp_path / "diff.json"
    rc = main(["check", "diff", str(float_model), str(path), str(demo_images()[0]), "--methods", "gradient,gradcam",
               "--json", str(out)])
    assert rc in (0, 1)
    import json
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == ["output", "gradient", "gradcam"]
    for r in report["results"]:  # how far each moved: finite, and the maps still related
        assert np.isfinite(r["rel_l2"]) and -1 <= r["correlation"] <= 1


def _qdq_model(x_scale, zp, dtype):
    """x -> QuantizeLinear -> DequantizeLinear -> * 3: the straight-through estimator's closed form."""
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Mul", ["d", "three"], ["y"])]
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "s"),
             numpy_helper.from_array(np.array(zp, dtype), "z"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", 1, [2, 5])],
                          [helper.make_tensor_value_info("y", 1, [2, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, t


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_straight_through_estimator_passes_inside_the_range_and_stops_where_it_saturates(engine):
    m, _ = _qdq_model(0.1, 0, np.int8)  # representable: -12.8 .. 12.7
    x = np.array([[0.04, -3.0, 12.6, 13.5, -13.0], [0.0, 1.26, -12.8, 50.0, 2.0]], np.float32)
    model = fv.load(m, engine=engine)
    np.testing.assert_allclose(model.run(x), 3 * np.clip(np.round(x / 0.1), -128, 127) * 0.1, atol=1e-6)
    seed = np.ones((2, 5), np.float32)
    g = model.explain(x, "gradient", target=seed).relevance
    inside = (np.round(x / 0.1) >= -128) & (np.round(x / 0.1) <= 127)
    np.testing.assert_allclose(g, 3 * inside, atol=1e-6)
