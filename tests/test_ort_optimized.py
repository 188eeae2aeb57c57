"""Models saved by onnxruntime's optimizer (com.microsoft fusions): they load, run as onnxruntime runs them, and
explain exactly like the model before optimization; each supported fused op against onnxruntime's own kernel
and float64 finite differences; any other com.microsoft op is refused with its name and nodes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import fvgraph as fv
from tests import zoo
from tests.conftest import rel_l2

R = np.random.default_rng(21)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit"])
def test_optimized_models_explain_like_the_originals(name, tmp_path):
    m = {"resnet": zoo.resnet_like, "mobilenet": zoo.mobilenet_like, "vit": lambda: zoo.vit_like(opset=20)}[name]()
    src, opt = tmp_path / "m.onnx", tmp_path / "m-opt.onnx"
    onnx.save(m, str(src))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(opt)).graph.node if n.domain == "com.microsoft"}
    assert fused, "onnxruntime fused nothing"
    x = R.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    a, b = fv.load(opt), fv.load(src)
    assert rel_l2(a.run(x), ref) < 1e-6
    assert rel_l2(fv.load(opt, engine="numpy").run(x), ref) < 1e-5
    for method in ("gradient", "guided", "lrp-epsilon", "gradcam"):
        assert rel_l2(a.explain(x, method, target=1).relevance, b.explain(x, method, target=1).relevance) < 1e-5, \
            (fused, method)


DEFAULT_DOMAIN = {"SimplifiedLayerNormalization"}  # onnxruntime registers it in the default domain


def _ms_model(op, inputs, consts, attrs, out_shape, dtype=np.float32):
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    domain = "" if op in DEFAULT_DOMAIN else "com.microsoft"
    node = helper.make_node(op, [k for k, _ in inputs] + list(consts), ["y"], domain=domain, **attrs)
    g = helper.make_graph([node], op, [helper.make_tensor_value_info(k, t, s) for k, s in inputs],
                          [helper.make_tensor_value_info("y", t, out_shape)],
                          [numpy_helper.from_array(v.astype(dtype), k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


CASES = [
    ("Gelu", {}, {}),
    ("FastGelu", {"bias": R.standard_normal(6)}, {}),
    ("BiasGelu", {"bias": R.standard_normal(6)}, {}),
    ("QuickGelu", {}, {"alpha": 1.5}),
    ("BiasAdd", {"bias": R.standard_normal(6), "skip": R.standard_normal((2, 3, 6))}, {}),
    ("SimplifiedLayerNormalization", {"scale": R.standard_normal(6)}, {"epsilon": 1e-5}),
    ("SkipLayerNormalization", {"skip": R.standard_normal((2, 3, 6)), "gamma": R.standard_normal(6),
                                "beta": R.standard_normal(6), "bias": R.standard_normal(6)}, {"epsilon": 1e-5}),
    ("FusedMatMul", {"b": R.standard_normal((5, 6))}, {"alpha": 0.7, "transB": 1}),
    ("FusedGemm", {"b": R.standard_normal((5, 6)), "c": R.standard_normal(5)},
     {"transB": 1, "activation": "LeakyRelu", "activation_alpha": 0.2}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_fused_op_runs_as_onnxruntime_and_differentiates(case):
    op, consts, attrs = case
    shape = [6, 6] if op == "FusedGemm" else [2, 3, 6]
    out = [6, 5] if op == "FusedGemm" else [2, 3, 5] if op == "FusedMatMul" else shape
    x = R.standard_normal(shape).astype(np.float32)
    m32 = _ms_model(op, [("x", shape)], consts, attrs, out)
    if op == "BiasAdd":  # onnxruntime has it for CUDA only
        ref = x + consts["bias"].astype(np.float32) + consts["skip"].astype(np.float32)
    else:
        ref = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for engine in ("onnxruntime", "numpy"):
        np.testing.assert_allclose(fv.load(m32, engine=engine).run(x), ref, rtol=1e-4, atol=2e-4)
    m64 = fv.load(_ms_model(op, [("x", shape)], consts, attrs, out, np.float64), engine="numpy")
    x64 = x.astype(np.float64)
    seed = R.standard_normal(out)
    g = m64.explain(x64, "gradient", target=seed).relevance
    h = 1e-6
    for _ in range(4):
        d = R.standard_normal(shape)
        fd = np.sum(seed * (m64.run(x64 + h * d) - m64.run(x64 - h * d))) / (2 * h)
        assert abs(fd - np.sum(g * d)) < 1e-6 * max(1.0, abs(fd)), (op, fd, np.sum(g * d))


def test_other_com_microsoft_ops_are_refused_by_name():
    m = _ms_model("Attention", [("x", [1, 3, 6])], {"w": R.standard_normal((6, 18)), "b": R.standard_normal(18)},
                  {"num_heads": 2}, [1, 3, 6])
    with pytest.raises(fv.UnsupportedModelError, match="com.microsoft.Attention"):
        fv.load(m, engine="numpy")
    with pytest.warns(fv.FvGraphWarning, match="com.microsoft.Attention"):  # onnxruntime runs it: named at load
        fv.load(m)
