"""Data movement: reshape, transpose, concat/split, slicing, gather, pad, casts, and shape computation.

Shape-valued results (Shape, Size, Range of ints, ...) are host NumPy arrays: the executor folds the
subgraphs that compute them to constants once the input shape is known.
"""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, to_host, xp_of
from ..onnx_types import numpy_dtype
from . import Op, register


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a % max(rank, 1)


@register("Identity")
class Identity(Op):
    def forward(self, x):
        return (x,)


@register("Dropout")
class Dropout(Op):
    """Inference: identity; the optional mask output is all true."""

    def forward(self, x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(to_host(training_mode)).any()):
            raise ValueError("Dropout in training mode is not supported (fvgraph runs inference)")
        return (x, np.ones(x.shape, dtype=bool))


@register("Reshape")
class Reshape(Op):
    def setup(self, node):
        self.allowzero = bool(node.attr("allowzero", 0))

    def forward(self, x, shape):
        dims = host_ints(shape)
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (x.reshape(dims),)


@register("Flatten")
class Flatten(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 1))

    def forward(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        if not 0 <= axis <= x.ndim:
            raise ValueError(f"axis {self.axis} out of range for rank {x.ndim}")
        lead = int(np.prod(x.shape[:axis], dtype=np.int64))
        return (x.reshape(lead, int(np.prod(x.shape[axis:], dtype=np.int64))),)


@register("Transpose")
class Transpose(Op):
    def setup(self, node):
        self.perm = node.attr("perm")

    def forward(self, x):
        perm = self.perm if self.perm is not None else list(range(x.ndim))[::-1]
        return (x.transpose(perm),)


@register("Squeeze")
class Squeeze(Op):
    def forward(self, x, axes=None):
        if axes is None or np.asarray(axes).size == 0:
            return (x.reshape([d for d in x.shape if d != 1]),)
        ax = sorted({_axis(a, x.ndim) for a in host_ints(axes)})
        for a in ax:
            if x.shape[a] != 1:
                raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]}")
        return (x.reshape([d for i, d in enumerate(x.shape) if i not in ax]),)


@register("Unsqueeze")
class Unsqueeze(Op):
    def forward(self, x, axes):
        rank = x.ndim + len(host_ints(axes))
        ax = sorted({_axis(a, rank) for a in host_ints(axes)})
        shape = list(x.shape)
        for a in ax:
            shape.insert(a, 1)
        return (x.reshape(shape),)


@register("Concat")
class Concat(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 1))

    def forward(self, *xs):
        xp = xp_of(*xs)
        return (xp.concatenate([xp.asarray(x) for x in xs], axis=_axis(self.axis, xs[0].ndim)),)


@register("Split")
class Split(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 0))
        self.n = len(node.outputs)

    def forward(self, x, split=None):
        axis = _axis(self.axis, x.ndim)
        dim = x.shape[axis]
        if split is not None and np.asarray(split).size:
            sizes = host_ints(split)
        else:  # equal parts; the last one smaller when the size does not divide (opset 18)
            step = -(-dim // self.n)
            sizes = [min(step, dim - i * step) for i in range(self.n)]
        if sum(sizes) != dim or len(sizes) != self.n:
            raise ValueError(f"split sizes {sizes} do not fit axis {axis} of size {dim} into {self.n} outputs")
        bounds = np.cumsum([0] + sizes)
        idx = [slice(None)] * x.ndim
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx[axis] = slice(int(a), int(b))
            outs.append(x[tuple(idx)])
        return tuple(outs)


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping rules turned into a Python slice."""
    if step == 0:
        raise ValueError("Slice step must not be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return slice(start, end, step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@register("Slice")
class Slice(Op):
    def forward(self, x, starts, ends, axes=None, steps=None):
        st, en = host_ints(starts), host_ints(ends)
        ax = host_ints(axes) if axes is not None else list(range(len(st)))
        sp = host_ints(steps) if steps is not None else [1] * len(st)
        idx = [slice(None)] * x.ndim
        for s, e, a, k in zip(st, en, ax, sp):
            a = _axis(a, x.ndim)
            idx[a] = slice_bounds(s, e, k, x.shape[a])
        return (x[tuple(idx)],)


@register("Gather")
class Gather(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 0))

    def forward(self, data, indices):
        xp = xp_of(data)
        axis = _axis(self.axis, data.ndim)
        dim = data.shape[axis]
        ind = xp.asarray(indices).astype(np.int64)
        if ind.size and (int(ind.min()) < -dim or int(ind.max()) >= dim):
            raise ValueError(f"Gather indices out of range for axis {axis} of size {dim}")
        ind = xp.where(ind < 0, ind + dim, ind)
        return (xp.take(data, ind, axis=axis),)


@register("Shape")
class Shape(Op):
    def setup(self, node):
        self.start, self.end = node.attr("start", 0), node.attr("end", None)

    def forward(self, x):
        return (np.array(x.shape[slice(self.start, self.end)], dtype=np.int64),)


@register("Size")
class Size(Op):
    def forward(self, x):
        return (np.array(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64),)


@register("ConstantOfShape")
class ConstantOfShape(Op):
    def setup(self, node):
        v = node.attr("value")
        self.value = np.zeros((), np.float32) if v is None else np.asarray(v).reshape(())

    def forward(self, shape):
        return (np.full(host_ints(shape), self.value, dtype=self.value.dtype),)


@register("Cast")
class Cast(Op):
    def setup(self, node):
        self.dtype = numpy_dtype(int(node.attr("to")), f"Cast node {node.name!r}")

    def forward(self, x):
        return (x.astype(self.dtype),)


@register("CastLike")
class CastLike(Op):
    def forward(self, x, like):
        return (x.astype(like.dtype),)


@register("Expand")
class Expand(Op):
    def forward(self, x, shape):
        xp = xp_of(x)
        out = np.broadcast_shapes(x.shape, tuple(host_ints(shape)))
        return (xp.broadcast_to(x, out).copy(),)


@register("Tile")
class Tile(Op):
    def forward(self, x, repeats):
        return (xp_of(x).tile(x, host_ints(repeats)),)


@register("Range")
class Range(Op):
    def forward(self, start, limit, delta):
        s, l, d = (np.asarray(to_host(v)).reshape(()) for v in (start, limit, delta))
        n = max(int(np.ceil((l - s) / d)), 0)
        return ((s + d * np.arange(n)).astype(s.dtype),)


@register("Pad")
class Pad(Op):
    MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}

    def setup(self, node):
        mode = node.attr("mode", "constant")
        if mode not in self.MODES:
            self.unsupported(f"Pad mode {mode!r}")
        self.mode = mode

    def forward(self, x, pads, value=None, axes=None):
        xp = xp_of(x)
        p = host_ints(pads)
        ax = [_axis(a, x.ndim) for a in host_ints(axes)] if axes is not None else list(range(x.ndim))
        if len(p) != 2 * len(ax):
            raise ValueError(f"pads has {len(p)} values, expected {2 * len(ax)}")
        before, after = [0] * x.ndim, [0] * x.ndim
        for k, a in enumerate(ax):
            before[a], after[a] = p[k], p[k + len(ax)]
        crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(before, after)))
        x = x[crop]
        width = [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]
        if self.mode == "constant":
            v = 0 if value is None or value.size == 0 else np.asarray(to_host(value)).reshape(()).item()
            shape = [d + a + b for d, (a, b) in zip(x.shape, width)]
            y = xp.zeros(shape, x.dtype) if v == 0 else xp.full(shape, v, x.dtype)
            y[tuple(slice(a, a + d) for d, (a, _) in zip(x.shape, width))] = x
            return (y,)
        return (xp.pad(x, width, mode=self.MODES[self.mode]),)
