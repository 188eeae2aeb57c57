"""The CuPy path: the same kernels on a GPU, against the CPU. Runs only where CuPy and a GPU are present."""
import numpy as np
import pytest

import fvgraph as fv
from tests.zoo import ZOO


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA GPU (none on this machine)")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_gpu_forward_and_explain_match_cpu(name):
    proto = ZOO[name](opset=13)
    cpu, gpu = fv.load(proto), fv.load(proto, device="cuda")
    x = np.random.default_rng(0).standard_normal([2] + list(cpu.inputs[0].shape[1:])).astype(np.float32)
    np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-4, atol=1e-5)
    for method in ("gradient", "guided", "lrp-epsilon"):
        a, b = cpu.explain(x, method, target=1), gpu.explain(x, method, target=1)
        assert np.linalg.norm(a.relevance - b.relevance) <= 1e-3 * np.linalg.norm(a.relevance), method
