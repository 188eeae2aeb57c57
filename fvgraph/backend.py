"""The array module behind the executor: NumPy on the CPU, CuPy on a GPU.

Kernels are written once against the NumPy API and ask `xp_of(...)` for the module their operands live in.
Float tensors live on the device; integer tensors (shapes, indices, axes) stay on the host as NumPy arrays,
so shape arithmetic never round-trips through the GPU.
"""
from __future__ import annotations

import numpy as np

from .errors import DeviceError

_cupy = None


def cupy_module():
    """Import CuPy and check that a GPU answers; raise DeviceError with what to do otherwise."""
    global _cupy
    if _cupy is None:
        try:
            import cupy  # type: ignore
        except Exception as e:  # ImportError, or a CUDA library that fails to load
            raise DeviceError(f"device='cuda' needs CuPy, which could not be imported ({e}). "
                              "Install the GPU extra: pip install 'fvgraph[gpu]'") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device found")
        except Exception as e:
            raise DeviceError(f"device='cuda' found CuPy but no usable GPU ({e}); use device='cpu'") from None
        _cupy = cupy
    return _cupy


class Backend:
    """Where arrays live: 'cpu' (NumPy) or 'cuda' (CuPy)."""

    def __init__(self, device: str = "cpu"):
        if device not in ("cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
        self.device = device
        self.xp = np if device == "cpu" else cupy_module()

    def to_device(self, a):
        """Float arrays go to the device; integer and bool arrays stay on the host."""
        if self.xp is np or not isinstance(a, np.ndarray) or a.dtype.kind not in "fc":
            return a
        return self.xp.asarray(a)

    @staticmethod
    def to_host(a):
        return a if isinstance(a, np.ndarray) or np.isscalar(a) else a.get()


def xp_of(*arrays):
    """The array module of the operands: CuPy if any of them is a CuPy array, else NumPy."""
    for a in arrays:
        if a is not None and type(a).__module__.startswith("cupy"):
            return _cupy
    return np


def to_host(a):
    return Backend.to_host(a)


def on(xp, *arrays):
    """The operands on xp's device: integer values (indices, shapes) live on the host, and an op that mixes them
    with device arrays (a Where choosing between a computed class and a given one) takes them over."""
    if xp is np:
        return arrays
    return tuple(a if a is None else xp.asarray(a) for a in arrays)


def host_ints(a) -> list[int]:
    """A small integer tensor (axes, pads, a shape) as a list of Python ints."""
    return [int(v) for v in np.asarray(to_host(a)).reshape(-1)]


def special_erf(xp):
    if xp is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf  # type: ignore
    return erf
