"""Data movement: reshape, transpose, concat/split, slicing, gather, pad, casts, and shape computation.

Shape-valued results (Shape, Size, Range of ints, ...) are host NumPy arrays: the executor folds the
subgraphs that compute them to constants once the input shape is known.
"""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, to_host, xp_of
from ..onnx_types import numpy_dtype
from . import NonDifferentiable, Op, register, unbroadcast


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a % max(rank, 1)


@register("Identity")
class Identity(Op):
    def forward(self, x):
        return (x,)

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0]]


@register("Dropout")
class Dropout(Op):
    """Inference: identity; the optional mask output is all true."""

    def forward(self, x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(to_host(training_mode)).any()):
            raise ValueError("Dropout in training mode is not supported (fvgraph runs inference)")
        return (x, np.ones(x.shape, dtype=bool))

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0]] + [None] * (len(inputs) - 1)


class _SameData(Op):
    """Ops that only change the shape: the gradient is reshaped back."""

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0].reshape(inputs[0].shape)] + [None] * (len(inputs) - 1)


@register("Reshape")
class Reshape(_SameData):
    def setup(self, node):
        self.allowzero = bool(node.attr("allowzero", 0))

    def forward(self, x, shape):
        dims = host_ints(shape)
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (x.reshape(dims),)


@register("Flatten")
class Flatten(_SameData):
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
        return (x.transpose(self._perm(x)),)

    def _perm(self, x):
        return self.perm if self.perm is not None else list(range(x.ndim))[::-1]

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0].transpose(np.argsort(self._perm(inputs[0])))]


@register("Squeeze")
class Squeeze(_SameData):
    def forward(self, x, axes=None):
        if axes is None or np.asarray(axes).size == 0:
            return (x.reshape([d for d in x.shape if d != 1]),)
        ax = sorted({_axis(a, x.ndim) for a in host_ints(axes)})
        for a in ax:
            if x.shape[a] != 1:
                raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]}")
        return (x.reshape([d for i, d in enumerate(x.shape) if i not in ax]),)


@register("Unsqueeze")
class Unsqueeze(_SameData):
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

    def vjp(self, inputs, outputs, grads, wrt=None):
        axis = _axis(self.axis, inputs[0].ndim)
        bounds = np.cumsum([0] + [x.shape[axis] for x in inputs])
        idx = [slice(None)] * inputs[0].ndim
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx[axis] = slice(int(a), int(b))
            out.append(grads[0][tuple(idx)])
        return out


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

    def vjp(self, inputs, outputs, grads, wrt=None):
        xp = xp_of(*[g for g in grads if g is not None])
        parts = [g if g is not None else xp.zeros(o.shape, o.dtype) for g, o in zip(grads, outputs)]
        return [xp.concatenate(parts, axis=_axis(self.axis, inputs[0].ndim))] + [None] * (len(inputs) - 1)


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
    def vjp(self, inputs, outputs, grads, wrt=None):
        x = inputs[0]
        gx = xp_of(grads[0]).zeros(x.shape, grads[0].dtype)
        gx[self.index(*inputs)] = grads[0]
        return [gx] + [None] * (len(inputs) - 1)

    def forward(self, x, starts, ends, axes=None, steps=None):
        return (x[self.index(x, starts, ends, axes, steps)],)

    def index(self, x, starts, ends, axes=None, steps=None):
        st, en = host_ints(starts), host_ints(ends)
        ax = host_ints(axes) if axes is not None else list(range(len(st)))
        sp = host_ints(steps) if steps is not None else [1] * len(st)
        idx = [slice(None)] * x.ndim
        for s, e, a, k in zip(st, en, ax, sp):
            a = _axis(a, x.ndim)
            idx[a] = slice_bounds(s, e, k, x.shape[a])
        return tuple(idx)


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

    def vjp(self, inputs, outputs, grads, wrt=None):
        data, indices = inputs
        axis = _axis(self.axis, data.ndim)
        xp = xp_of(grads[0])
        ind = xp.asarray(indices).astype(np.int64)
        ind = xp.where(ind < 0, ind + data.shape[axis], ind).reshape(-1)
        g = xp.moveaxis(grads[0], list(range(axis, axis + indices.ndim)), list(range(indices.ndim)))
        g = g.reshape((-1,) + g.shape[indices.ndim:])
        gx = xp.zeros((data.shape[axis],) + tuple(d for i, d in enumerate(data.shape) if i != axis), g.dtype)
        scatter_add(xp, gx, ind, g)
        return [xp.moveaxis(gx, 0, axis), None]


def scatter_add(xp, target, index, values):
    """target[index[i]] += values[i] along the first axis, duplicates accumulated."""
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx  # type: ignore
        cupyx.scatter_add(target, index, values)


@register("Shape")
class Shape(NonDifferentiable):
    def setup(self, node):
        self.start, self.end = node.attr("start", 0), node.attr("end", None)

    def forward(self, x):
        return (np.array(x.shape[slice(self.start, self.end)], dtype=np.int64),)


@register("Size")
class Size(NonDifferentiable):
    def forward(self, x):
        return (np.array(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64),)


@register("ConstantOfShape")
class ConstantOfShape(NonDifferentiable):
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

    def vjp(self, inputs, outputs, grads, wrt=None):
        x = inputs[0]
        return [grads[0].astype(x.dtype) if x.dtype.kind == "f" and self.dtype.kind == "f" else None]


@register("CastLike")
class CastLike(Op):
    def forward(self, x, like):
        return (x.astype(like.dtype),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        x = inputs[0]
        return [grads[0].astype(x.dtype) if x.dtype.kind == "f" and outputs[0].dtype.kind == "f" else None, None]


@register("Expand")
class Expand(Op):
    def forward(self, x, shape):
        xp = xp_of(x)
        out = np.broadcast_shapes(x.shape, tuple(host_ints(shape)))
        return (xp.broadcast_to(x, out).copy(),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [unbroadcast(grads[0], inputs[0].shape), None]


@register("Tile")
class Tile(Op):
    def forward(self, x, repeats):
        return (xp_of(x).tile(x, host_ints(repeats)),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        x, reps = inputs[0], host_ints(inputs[1])
        split = [v for r, d in zip(reps, x.shape) for v in (r, d)]
        return [grads[0].reshape(split).sum(axis=tuple(range(0, 2 * x.ndim, 2))), None]


@register("Range")
class Range(NonDifferentiable):
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

    def plan(self, x, pads, axes=None):
        """Per axis: (crop slice, before, after) with negative pads turned into crops."""
        p = host_ints(pads)
        ax = [_axis(a, x.ndim) for a in host_ints(axes)] if axes is not None else list(range(x.ndim))
        if len(p) != 2 * len(ax):
            raise ValueError(f"pads has {len(p)} values, expected {2 * len(ax)}")
        before, after = [0] * x.ndim, [0] * x.ndim
        for k, a in enumerate(ax):
            before[a], after[a] = p[k], p[k + len(ax)]
        crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(before, after)))
        return crop, [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]

    def forward(self, x, pads, value=None, axes=None):
        xp = xp_of(x)
        crop, width = self.plan(x, pads, axes)
        x = x[crop]
        if self.mode == "constant":
            v = 0 if value is None or value.size == 0 else np.asarray(to_host(value)).reshape(()).item()
            shape = [d + a + b for d, (a, b) in zip(x.shape, width)]
            y = xp.zeros(shape, x.dtype) if v == 0 else xp.full(shape, v, x.dtype)
            y[tuple(slice(a, a + d) for d, (a, _) in zip(x.shape, width))] = x
            return (y,)
        return (xp.pad(x, width, mode=self.MODES[self.mode]),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        x, pads = inputs[0], inputs[1]
        axes = inputs[3] if len(inputs) > 3 else None
        xp = xp_of(grads[0])
        crop, width = self.plan(x, pads, axes)
        g = grads[0]
        cropped = x[crop].shape
        for a, (b, e) in enumerate(width):  # adjoint of the padding, one axis at a time
            if not b and not e:
                continue
            n = cropped[a]
            src = np.pad(np.arange(n), (b, e), mode=self.MODES[self.mode], **(
                {"constant_values": -1} if self.mode == "constant" else {}))
            keep = src >= 0
            gm = xp.moveaxis(g, a, 0)[xp.asarray(np.nonzero(keep)[0])]
            acc = xp.zeros((n,) + gm.shape[1:], g.dtype)
            scatter_add(xp, acc, xp.asarray(src[keep]), gm)
            g = xp.moveaxis(acc, 0, a)
        gx = xp.zeros(x.shape, g.dtype)
        gx[crop] = g
        return [gx] + [None] * (len(inputs) - 1)
