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
