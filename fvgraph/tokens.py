"""Layers seen as maps (N, C, h, w), whatever their layout: channels first (CNNs), channels last (Swin's stages,
(N, h, w, C)), or tokens (ViT, DeiT: (N, T, C) with a few class or register tokens before the h x w patch grid).
The grid follows from the input size: the patch stride must be the same along both axes. The CAM family and
`serve` read every layer through this one view, as pytorch-grad-cam users do with a reshape transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PREFIX = 8  # class + distillation + register tokens


@dataclass(frozen=True)
class MapView:
    kind: str            # "nchw" | "nhwc" | "tokens"
    grid: tuple          # (h, w)
    prefix: int = 0      # tokens before the grid (class, distillation, registers)


def _grid(hw, h, w) -> bool:
    """Whether an h x w grid tiles an H x W input with one integer stride (patches)."""
    return h >= 1 and w >= 1 and hw[0] % h == 0 and hw[1] % w == 0 and hw[0] // h == hw[1] // w


def map_view(dims, input_hw) -> MapView | None:
    """How a value of these dims reads as a map over an input of size input_hw, or None. A 4-D value is
    channels first unless its middle axes tile the input and its last two do not (channels last); a 3-D value
    is tokens when, after up to MAX_PREFIX leading tokens, the rest tile the input as a patch grid."""
    if dims is None or not all(isinstance(d, (int, np.integer)) for d in dims[1:]):
        return None
    if len(dims) == 4:
        a, b, c = (int(d) for d in dims[1:])
        if _grid(input_hw, a, b) and not _grid(input_hw, b, c):
            return MapView("nhwc", (a, b))
        return MapView("nchw", (b, c))
    if len(dims) == 3:
        t = int(dims[1])
        ratio = input_hw[0] / input_hw[1]
        for k in range(0, MAX_PREFIX + 1):
            n = t - k
            if n < 2:
                break
            h = int(round(np.sqrt(n * ratio)))
            for hh in (h - 1, h, h + 1):
                if hh >= 1 and n % hh == 0 and _grid(input_hw, hh, n // hh):
                    return MapView("tokens", (hh, n // hh), k)
    return None


def as_map(b, v: str, view: MapView) -> str:
    """The value as (N, C, h, w) nodes."""
    if view.kind == "nchw":
        return v
    d = b.dims(v)
    h, w = view.grid
    c = int(d[-1])
    if view.kind == "nhwc":
        return b.op("Transpose", [v], perm=[0, 3, 1, 2], dims=(d[0], c, h, w), dtype=b.dtype(v))
    t = int(d[1])
    if view.prefix:
        v = b.op("Slice", [v, b.ints([view.prefix]), b.ints([t]), b.ints([1])], dims=(d[0], t - view.prefix, c),
                 dtype=b.dtype(v))
    grid = b.op("Reshape", [v, b.ints([0, h, w, c])], dims=(d[0], h, w, c), dtype=b.dtype(v))
    return b.op("Transpose", [grid], perm=[0, 3, 1, 2], dims=(d[0], c, h, w), dtype=b.dtype(v))


def as_map_array(a: np.ndarray, view: MapView) -> np.ndarray:
    if view.kind == "nchw":
        return a
    if view.kind == "nhwc":
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    h, w = view.grid
    return np.ascontiguousarray(a[:, view.prefix:].reshape(a.shape[0], h, w, a.shape[-1]).transpose(0, 3, 1, 2))
