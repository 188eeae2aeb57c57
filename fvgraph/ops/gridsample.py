"""GridSample (opset 16 and 20, 2-D and volumetric): every output pixel reads the input at a position the grid gives.

Per axis the position becomes taps (1 for nearest, 2 for linear, 4 for cubic with Keys' a = -0.75), each an
index and a weight; the padding mode decides what a tap outside the image reads (zero, the border pixel, or
the reflected one). The output is the weighted sum of the gathered taps, so the op is linear in the image and
its VJP is the scatter-add of g times the same weights to the same pixels. The grid is treated as data of
the sampler, not as relevance-carrying input: no gradient flows to it (fvgraph refuses a grid computed from
the image with a clear error when a method needs to go through it).
"""
from __future__ import annotations

import numpy as np

from ..backend import to_host, xp_of
from ..errors import RuleError
from . import Op, register

MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}


def _cubic(t, a=-0.75):
    """Keys' weights of the taps at offsets -1, 0, 1, 2 from floor(x), for the fraction t."""
    def k(d):
        d = np.abs(d)
        return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                        np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def _reflect(x, lo, hi):
    """Fold x into [lo, hi] by reflecting at the borders, as often as needed (computed where it is outside)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    outside = (x < lo) | (x > hi)
    if not outside.any():
        return x
    out = np.array(x, copy=True)
    out[outside] = _fold(x[outside], lo, hi, span)
    return out


def _fold(x, lo, hi, span):
    d = np.abs(x - lo)
    n = np.floor(d / span)
    r = d - n * span
    inside = (x >= lo) & (x <= hi)
    below = np.where(n % 2 == 0, lo + r, hi - r)
    d2 = np.abs(x - hi)
    n2 = np.floor(d2 / span)
    r2 = d2 - n2 * span
    above = np.where(n2 % 2 == 0, hi - r2, lo + r2)
    return np.where(inside, x, np.where(x < lo, below, above))


class GridTaps:
    """The taps of one axis of length `size` for normalized positions `pos`: [(index, weight, valid)]."""

    def __init__(self, pos, size, mode, padding, align):
        x = (pos + 1) / 2 * (size - 1) if align else ((pos + 1) * size - 1) / 2
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            x = np.rint(x)
        outside = (x < lo) | (x > hi)
        if padding == "border":
            x = np.where(outside, np.clip(x, 0, size - 1), x)
        elif padding == "reflection":
            x = np.where(outside, _reflect(x, lo, hi), x)
        if mode == "nearest":
            idx, weights = [x.astype(np.int64)], [np.ones_like(x)]
        else:
            base = np.floor(x)
            t = x - base
            base = base.astype(np.int64)
            if mode == "linear":
                idx, weights = [base, base + 1], [1 - t, t]
            else:
                idx, weights = [base - 1, base, base + 1, base + 2], _cubic(t)
        self.taps = []
        for i, w in zip(idx, weights):
            if padding == "zeros":
                valid = (i >= 0) & (i < size)
            else:
                valid = np.ones(i.shape, bool)
                if padding == "border":
                    i = np.clip(i, 0, size - 1)
                else:
                    i = np.clip(_reflect(i.astype(np.float64), lo, hi).astype(np.int64), 0, size - 1)
            self.taps.append((np.where(valid, i, 0), np.where(valid, w, 0.0)))


@register("GridSample")
class GridSample(Op):
    def setup(self, node):
        mode = node.attr("mode", "linear")  # opset 16's default "bilinear" is opset 20's "linear"
        if mode not in MODES:
            self.unsupported(f"mode={mode!r}")
        self.mode = MODES[mode]
        self.padding = node.attr("padding_mode", "zeros")
        if self.padding not in ("zeros", "border", "reflection"):
            self.unsupported(f"padding_mode={self.padding!r}")
        self.align = bool(node.attr("align_corners", 0))

    def plan(self, shape, grid):
        """(flat source index, weight) pairs, each (N, outputs), for an input of `shape` (N, C, *spatial); the
        grid's last axis holds the positions along the spatial axes in reverse order (x, y, ...)."""
        import itertools
        g = np.asarray(to_host(grid), np.float64)
        spatial = tuple(shape[2:])
        if g.ndim != len(shape) or g.shape[-1] != len(spatial) or g.shape[0] != shape[0]:
            raise ValueError(f"a grid of shape {g.shape} does not fit an input of shape {tuple(shape)}")
        axes = [GridTaps(g[..., len(spatial) - 1 - a], size, self.mode, self.padding, self.align).taps
                for a, size in enumerate(spatial)]
        n = g.shape[0]
        out = []
        for combo in itertools.product(*axes):
            idx = np.ravel_multi_index(tuple(i for i, _ in combo), spatial)
            wt = np.prod([w for _, w in combo], axis=0)
            out.append((idx.reshape(n, -1), wt.reshape(n, -1)))
        return out

    def forward(self, x, grid):
        xp = xp_of(x)
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        out = None
        for idx, wt in self.plan(x.shape, grid):
            idx = xp.asarray(np.broadcast_to(idx[:, None], (n, c, idx.shape[1])))
            term = xp.take_along_axis(flat, idx, axis=2) * xp.asarray(wt[:, None].astype(x.dtype))
            out = term if out is None else out + term
        return (out.reshape(n, c, *np.shape(grid)[1:-1]).astype(x.dtype, copy=False),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """The adjoint of the weighted gather: one ScatterElements(add) of g times the weights, from the taps of
        the (constant) grid."""
        x, grid = inputs
        const = b.constant(grid)
        if const is None:
            if 1 in wrt or 0 in wrt:
                raise RuleError(f"node {self.node.name!r} (GridSample): the grid is computed from the data; fvgraph "
                                "takes GridSample's gradient for constant grids only")
        dims = b.static(x)
        n, c = dims[:2]
        plan = self.plan(dims, const)
        idx = np.concatenate([i for i, _ in plan], axis=1)
        wt = np.concatenate([w for _, w in plan], axis=1).astype(b.dtype(x))
        k = idx.shape[1]
        size = int(np.prod(dims[2:]))
        g = b.op("Reshape", [grads[0], b.ints([n, c, -1])], dims=(n, c, k // len(plan)), dtype=b.dtype(x))
        g = b.op("Tile", [g, b.ints([1, 1, len(plan)])], dims=(n, c, k), dtype=b.dtype(x))
        g = b.mul(g, b.const(wt[:, None], "grid_weights"))
        index = b.const(np.ascontiguousarray(np.broadcast_to(idx[:, None], (n, c, k))), "grid_taps")
        flat = b.op("ConstantOfShape", [b.ints([n, c, size])], dims=(n, c, size), dtype=b.dtype(x),
                    value=np.zeros(1, b.dtype(x)))
        out = b.op("ScatterElements", [flat, index, g], dims=(n, c, size), dtype=b.dtype(x), axis=2, reduction="add")
        return [b.reshape_like(out, x), None]

