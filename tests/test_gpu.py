"""The GPU paths: fvgraph's executor on CuPy and onnxruntime's CUDA provider, against the CPU. Each runs only
where its library and a GPU are present."""
import numpy as np
import pytest

import fvgraph as fv
from tests.zoo import ZOO, vit_like


def _cupy_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _ort_cuda():
    try:
        import onnxruntime as ort
        return "CUDAExecutionProvider" in ort.get_available_providers() and _cupy_gpu()
    except Exception:
        return False


ENGINES = [pytest.param("cupy", marks=pytest.mark.skipif(not _cupy_gpu(), reason="needs CuPy and a CUDA GPU")),
           pytest.param("onnxruntime", marks=pytest.mark.skipif(not _ort_cuda(),
                                                                reason="needs onnxruntime-gpu and a CUDA GPU"))]


NETS = {**{name: (lambda f=f: f(opset=13)) for name, f in ZOO.items()}, "vit_like": vit_like,
        "swin_like": lambda: vit_like(swin_like=True)}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(NETS))
def test_gpu_forward_and_explain_match_cpu(name, engine):
    proto = NETS[name]()
    cpu, gpu = fv.load(proto, engine="numpy"), fv.load(proto, engine=engine, device="cuda")
    x = np.random.default_rng(0).standard_normal([2] + list(cpu.inputs[0].shape[1:])).astype(np.float32)
    np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-4, atol=1e-5)
    for method in ("gradient", "guided", "lrp-epsilon", "gradcam"):
        a, b = cpu.explain(x, method, target=1), gpu.explain(x, method, target=1)
        assert np.linalg.norm(a.relevance - b.relevance) <= 1e-3 * np.linalg.norm(a.relevance), method


CUPY = pytest.mark.skipif(not _cupy_gpu(), reason="needs CuPy and a CUDA GPU")


@CUPY
def test_gpu_runs_int8_and_half_models_like_the_cpu(tmp_path):
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tests.test_precision import _calibration
    base = tmp_path / "float.onnx"
    onnx.save(ZOO["resnet_like"](opset=13), str(base))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(base), str(qdq), _calibration(x), quant_format=QuantFormat.QDQ, per_channel=True)
    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(base))), str(half))
    for path, tol in ((qdq, 1e-2), (half, 1e-3)):  # int8: a value rounding to the other quantum moves a map
        cpu, gpu = fv.load(path, engine="numpy"), fv.load(path, engine="cupy", device="cuda")
        for method in ("gradient", "guided", "gradcam"):
            a, b = cpu.explain(x, method, target=1).relevance, gpu.explain(x, method, target=1).relevance
            assert np.linalg.norm(a - b) <= tol * np.linalg.norm(a), (path.name, method)


@CUPY
def test_gpu_reconstruction_and_rollout_match_the_cpu():
    proto = vit_like()
    cpu, gpu = fv.load(proto, engine="numpy"), fv.load(proto, engine="cupy", device="cuda")
    a = cpu.reconstruct(1, steps=3, quiet=True)
    b = gpu.reconstruct(1, steps=3, quiet=True)
    np.testing.assert_allclose(b.history["objective"], a.history["objective"], rtol=1e-3, atol=1e-4)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(gpu.explain(x, "rollout").relevance, cpu.explain(x, "rollout").relevance,
                               rtol=1e-4, atol=1e-5)
