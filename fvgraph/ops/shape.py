"""Data movement: reshape, transpose, concat/split, slicing, gather, pad, casts, and shape computation.

Shape-valued results (Shape, Size, Range of ints, ...) are host NumPy arrays: the executor folds the
subgraphs that compute them to constants once the input shape is known.
"""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, on, to_host, xp_of
from ..onnx_types import numpy_dtype, onnx_type
from . import NonDifferentiable, Op, register, scatter_axis


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a % max(rank, 1)


@register("Identity")
class Identity(Op):
    def forward(self, x):
        return (x,)

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [grads[0]]


@register("Dropout")
class Dropout(Op):
    """Inference: identity; the optional mask output is all true."""

    def forward(self, x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(to_host(training_mode)).any()):
            raise ValueError("Dropout in training mode is not supported (fvgraph runs inference)")
        return (x, np.ones(x.shape, dtype=bool))

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [grads[0]] + [None] * (len(inputs) - 1)


class _SameData(Op):
    """Ops that only change the shape: the gradient is reshaped back."""

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [b.reshape_like(grads[0], inputs[0])] + [None] * (len(inputs) - 1)


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        perm = self.perm if self.perm is not None else list(range(b.rank(inputs[0])))[::-1]
        return [b.op("Transpose", [grads[0]], like=inputs[0], perm=[int(p) for p in np.argsort(perm)])]


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        axis = _axis(self.axis, b.rank(inputs[0]))
        sizes = [b.static(x, [axis])[0] for x in inputs]
        parts = b.op("Split", [grads[0], b.ints(sizes)], n_out=len(inputs), axis=axis)
        parts = [parts] if isinstance(parts, str) else parts
        for p, x in zip(parts, inputs):
            b.table.set(p, b.dims(x), b.dtype(grads[0]))
        return [p if k in wrt else None for k, p in enumerate(parts)]


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        parts = [g if g is not None else b.zeros(o) for g, o in zip(grads, outputs)]
        axis = _axis(self.axis, b.rank(inputs[0]))
        return [b.op("Concat", parts, like=inputs[0], axis=axis)] + [None] * (len(inputs) - 1)


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
    def vjp(self, b, inputs, outputs, grads, wrt):
        """Per sliced axis, the adjoint of taking those positions (a Pad for steps of 1)."""
        x = inputs[0]
        args = [b.constant(v) if v else None for v in inputs[1:]]
        rank = b.rank(x)
        axes = host_ints(args[2]) if len(args) > 2 and args[2] is not None else list(range(len(host_ints(args[0]))))
        axes = [_axis(a, rank) for a in axes]
        sizes = dict(zip(axes, b.static(x, axes)))
        shape = [sizes.get(a, 1) for a in range(rank)]
        g = grads[0]
        for a, sl in enumerate(self.index(np.empty(shape, np.bool_), *args)):
            if a in sizes:
                g = scatter_axis(b, g, list(range(sizes[a]))[sl], sizes[a], a)
        return [g] + [None] * (len(inputs) - 1)

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

    def vjp(self, b, inputs, outputs, grads, wrt):
        """The gradient's index axes merged into one, then the adjoint of gathering those positions."""
        data, indices = inputs
        axis = _axis(self.axis, b.rank(data))
        size = b.static(data, [axis])[0]
        const = b.constant(indices)
        g = grads[0]
        lead, rest = b.dims(data)[:axis], b.dims(data)[axis + 1:]
        if const is not None:
            index = [int(i) % size for i in np.asarray(const).reshape(-1)]
            count = len(index)
        else:
            flat = b.op("Reshape", [indices, b.ints([-1])], dims=(None,), dtype=np.int64)
            negative = b.op("Less", [flat, b.ints(0)], dims=(None,), dtype=np.bool_)
            index = b.op("Where", [negative, b.op("Add", [flat, b.ints(size)], like=flat), flat], like=flat)
            count = None
        rest_dims = b.static(data, list(range(axis + 1, b.rank(data))))
        merged = b.op("Reshape", [g, b.ints([0] * axis + [-1] + rest_dims)],
                      dims=tuple(lead) + (count,) + tuple(rest), dtype=b.dtype(g))
        return [scatter_axis(b, merged, index, size, axis), None]


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Between floats the gradient is cast back. An integer-to-float cast passes a float gradient to the
        integer value (int8 models: see ops.quant); a float-to-integer cast cuts it, unless fvgraph marked it
        `_exact` (the integer accumulators of decomposed ConvInteger/MatMulInteger)."""
        x, src = inputs[0], b.dtype(inputs[0])
        if self.dtype.kind != "f" and not self.node.attr("_exact"):
            return [None]
        if src.kind == "f":
            return [b.op("Cast", [grads[0]], like=x, to=onnx_type(src))]
        return [grads[0]] if src.kind in "iu" and b.dtype(grads[0]).kind == "f" else [None]


@register("CastLike")
class CastLike(Op):
    def forward(self, x, like):
        return (x.astype(like.dtype),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x = inputs[0]
        if b.dtype(x).kind != "f" or b.dtype(outputs[0]).kind != "f":
            return [None, None]
        return [b.op("Cast", [grads[0]], like=x, to=onnx_type(b.dtype(x))), None]


@register("Expand")
class Expand(Op):
    def forward(self, x, shape):
        xp = xp_of(x)
        out = np.broadcast_shapes(x.shape, tuple(host_ints(shape)))
        return (xp.broadcast_to(x, out).copy(),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [b.sum_to(grads[0], inputs[0]), None]


@register("Tile")
class Tile(Op):
    def forward(self, x, repeats):
        return (xp_of(x).tile(x, host_ints(repeats)),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, reps = inputs[0], host_ints(b.constant(inputs[1]))
        dims = b.static(x)
        split = [v for r, d in zip(reps, dims) for v in (r, d)]
        g = b.op("Reshape", [grads[0], b.ints(split)], dims=tuple(split), dtype=b.dtype(x))
        return [b.op("ReduceSum", [g, b.ints(list(range(0, 2 * len(dims), 2)))], keepdims=0, like=x), None]


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Per padded axis, the adjoint of reading positions `src` of the (cropped) input: a crop for constant
        padding, a 0/1 product for reflect, edge and wrap (which read some positions twice); axes that
        negative pads cropped get zeros back."""
        x = inputs[0]
        pads = b.constant(inputs[1])
        axes = b.constant(inputs[3]) if len(inputs) > 3 and inputs[3] else None
        dims = b.dims(x)
        rank = len(dims)
        p = host_ints(pads)
        ax = [_axis(a, rank) for a in host_ints(axes)] if axes is not None else list(range(rank))
        touched = sorted({a for k, a in enumerate(ax) if p[k] or p[k + len(ax)]})
        sizes = dict(zip(touched, b.static(x, touched)))
        shape = [sizes.get(a, 1) for a in range(rank)]
        crop, width = self.plan(np.empty(shape, np.bool_), pads, axes)
        g = grads[0]
        for a in touched:
            before, after = width[a]
            kept = crop[a].stop - crop[a].start
            if before or after:
                src = np.arange(kept) if self.mode == "constant" else \
                    np.pad(np.arange(kept), (before, after), mode=self.MODES[self.mode])
                if self.mode == "constant":
                    g = b.op("Slice", [g, b.ints([before]), b.ints([before + kept]), b.ints([a])],
                             dims=_with(b.dims(g), a, kept), dtype=b.dtype(g))
                else:
                    g = _gather_adjoint(b, g, src, kept, a)
            if kept != sizes[a]:
                pad = [0] * (2 * rank)
                pad[a], pad[rank + a] = crop[a].start, sizes[a] - crop[a].stop
                g = b.op("Pad", [g, b.ints(pad)], dims=_with(b.dims(g), a, sizes[a]), dtype=b.dtype(g))
        return [g] + [None] * (len(inputs) - 1)


def _with(dims, axis, size):
    d = list(dims)
    d[axis] = size
    return tuple(d)


def _gather_adjoint(b, g, src, size, axis):
    """Adjoint of y = x[src] along axis (src may repeat positions)."""
    from . import scatter_axis
    return scatter_axis(b, g, [int(i) for i in src], size, axis)


@register("ScatterElements")
class ScatterElements(NonDifferentiable):
    """data with updates written (or added, multiplied, maxed, minned) at indices along an axis. fvgraph emits
    it for the max-pooling VJP; as a model op it is refused by the reverse pass (its gradient is not written)."""
    REDUCTIONS = ("none", "add", "mul", "max", "min")

    def setup(self, node):
        self.axis = int(node.attr("axis", 0))
        self.reduction = node.attr("reduction", "none")
        if self.reduction not in self.REDUCTIONS:
            self.unsupported(f"reduction={self.reduction!r}")

    def forward(self, data, indices, updates):
        xp = xp_of(data, indices, updates)  # zeros from ConstantOfShape live on the host; the updates may not
        data, indices, updates = on(xp, data, indices, updates)
        axis = _axis(self.axis, data.ndim)
        idx = xp.asarray(indices).astype(np.int64)
        idx = xp.where(idx < 0, idx + data.shape[axis], idx)
        out = data.copy()
        grid = list(xp.meshgrid(*[xp.arange(n) for n in idx.shape], indexing="ij")) if idx.ndim > 1 else \
            [xp.arange(idx.shape[0])]
        grid[axis] = idx
        where = tuple(grid)
        if self.reduction == "none":
            out[where] = updates
        elif self.reduction == "add" and data.ndim == 1 and xp is np:  # the max-pool VJP's case: one pass
            out += np.bincount(idx, weights=updates, minlength=data.shape[0]).astype(data.dtype)
        else:
            ufunc = {"add": "add", "mul": "multiply", "max": "maximum", "min": "minimum"}[self.reduction]
            _at(xp, ufunc, out, where, updates)
        return (out,)


def _at(xp, ufunc, out, where, values):
    if xp is np:
        getattr(np, ufunc).at(out, where, values)
    else:  # pragma: no cover - GPU only
        import cupyx  # type: ignore
        getattr(cupyx, f"scatter_{ufunc.replace('imum', '')}")(out, where, values)

