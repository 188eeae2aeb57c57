"""Indexing and rearranging ops of today's exporters: GatherElements, GatherND, ScatterND, TopK, Trilu, CumSum,
DepthToSpace, SpaceToDepth. Each VJP is the adjoint of the same indexing: a gather's is a scatter-add of the
gradient to the positions read, a scatter's a gather, a rearrangement's the inverse rearrangement."""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, on, xp_of
from ..errors import RuleError
from . import NonDifferentiable, Op, register


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a % max(rank, 1)


def _wrap(xp, idx, size):
    idx = xp.asarray(idx).astype(np.int64)
    if idx.size and (int(idx.min()) < -size or int(idx.max()) >= size):
        raise ValueError(f"indices out of range for an axis of size {size}")
    return xp.where(idx < 0, idx + size, idx)


def scatter_add(b, like: str, indices: str, g: str, axis: int) -> str:
    """zeros shaped like `like`, with g added at `indices` along `axis` (the adjoint of GatherElements)."""
    return b.op("ScatterElements", [b.zeros(like), indices, g], like=like, axis=axis, reduction="add")


@register("GatherElements")
class GatherElements(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 0))

    def forward(self, data, indices):
        xp = xp_of(data)
        axis = _axis(self.axis, data.ndim)
        return (xp.take_along_axis(data, _wrap(xp, indices, data.shape[axis]), axis=axis),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        data, indices = inputs
        axis = _axis(self.axis, b.rank(data))
        return [scatter_add(b, data, _nonnegative(b, indices, data, axis), grads[0], axis), None]


def _nonnegative(b, indices, data, axis):
    """Indices with negative ones wrapped (ScatterElements in the adjoint takes them as they are, but a constant
    list is cheaper to wrap now)."""
    const = b.constant(indices)
    if const is not None:
        size = b.static(data, [axis])[0]
        return b.const(np.where(np.asarray(const) < 0, np.asarray(const) + size, const).astype(np.int64))
    return indices


@register("GatherND")
class GatherND(Op):
    def setup(self, node):
        self.batch_dims = int(node.attr("batch_dims", 0))

    def forward(self, data, indices):
        xp = xp_of(data)
        bd = self.batch_dims
        idx = xp.asarray(indices).astype(np.int64)
        k = idx.shape[-1]
        lead = data.shape[:bd]
        flat_data = data.reshape((-1,) + data.shape[bd:])
        flat_idx = idx.reshape((int(np.prod(lead, dtype=np.int64)), -1, k))
        dims = data.shape[bd:bd + k]
        for j in range(k):
            flat_idx[..., j] = _wrap(xp, flat_idx[..., j], dims[j])
        out = [flat_data[(i,) + tuple(flat_idx[i, :, j] for j in range(k))] for i in range(flat_data.shape[0])]
        out = xp.stack(out) if out else xp.zeros((0,) + flat_idx.shape[1:2] + data.shape[bd + k:], data.dtype)
        return (out.reshape(idx.shape[:-1] + data.shape[bd + k:]),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        data, indices = inputs
        if self.batch_dims:
            raise RuleError(f"node {self.node.name!r} (GatherND): no gradient with batch_dims > 0")
        return [b.op("ScatterND", [b.zeros(data), indices, grads[0]], like=data, reduction="add"), None]


@register("ScatterND")
class ScatterND(Op):
    REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}

    def setup(self, node):
        self.reduction = node.attr("reduction", "none")
        if self.reduction not in self.REDUCTIONS:
            self.unsupported(f"reduction={self.reduction!r}")
        self.differentiable = self.reduction in ("none", "add")

    def forward(self, data, indices, updates):
        xp = xp_of(data, updates)
        data, updates = on(xp, data, updates)
        out = data.copy()
        idx = xp.asarray(indices).astype(np.int64)
        k = idx.shape[-1]
        idx = idx.reshape(-1, k)
        for j in range(k):
            idx[:, j] = _wrap(xp, idx[:, j], data.shape[j])
        upd = updates.reshape((idx.shape[0],) + data.shape[k:])
        where = tuple(idx[:, j] for j in range(k))
        ufunc = self.REDUCTIONS[self.reduction]
        if ufunc is None:
            for i in range(idx.shape[0]):  # in order: a later update to the same place wins
                out[tuple(int(v) for v in idx[i])] = upd[i]
        elif xp is np:
            ufunc.at(out, where, upd)
        else:  # pragma: no cover - GPU only
            for i in range(idx.shape[0]):
                p = tuple(int(v) for v in idx[i])
                out[p] = ufunc(out[p], upd[i])
        return (out,)

    def vjp(self, b, inputs, outputs, grads, wrt):
        data, indices, updates = inputs
        g = grads[0]
        if not self.differentiable:
            raise RuleError(f"node {self.node.name!r} (ScatterND): no gradient with reduction={self.reduction!r}")
        out = [None, None, None]
        if 0 in wrt:  # overwritten positions get nothing back; added-to ones pass g
            out[0] = g if self.reduction == "add" else \
                b.op("ScatterND", [g, indices, b.zeros(updates)], like=data)
        if 2 in wrt:
            out[2] = b.op("GatherND", [g, indices], like=updates)
        return out


@register("TopK")
class TopK(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", -1))
        self.largest = bool(node.attr("largest", 1))
        self.sorted = bool(node.attr("sorted", 1))

    def forward(self, x, k):
        xp = xp_of(x)
        axis = _axis(self.axis, x.ndim)
        k = host_ints(k)[0]
        if not 0 <= k <= x.shape[axis]:
            raise ValueError(f"k={k} is out of range for an axis of size {x.shape[axis]}")
        # stable sort: among equal values the lower index comes first (ONNX's rule)
        if self.largest:  # descending without negating (unsigned types): sort the reversed axis, read backwards
            n = x.shape[axis]
            order = n - 1 - xp.flip(_stable_argsort(xp, xp.flip(x, axis), axis), axis)
        else:
            order = _stable_argsort(xp, x, axis)
        idx = xp.take(order, xp.arange(k), axis=axis).astype(np.int64)
        return (xp.take_along_axis(x, idx, axis=axis), idx)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x = inputs[0]
        if grads[0] is None:
            return [None, None]
        axis = _axis(self.axis, b.rank(x))
        return [scatter_add(b, x, outputs[1], grads[0], axis), None]


def _stable_argsort(xp, x, axis):
    """Ties in order of position (ONNX's TopK rule); CuPy's sort is stable without being asked."""
    return xp.argsort(x, axis=axis, kind="stable") if xp is np else xp.argsort(x, axis=axis)


@register("Trilu")
class Trilu(Op):
    def setup(self, node):
        self.upper = bool(node.attr("upper", 1))

    def forward(self, x, k=None):
        xp = xp_of(x)
        k = host_ints(k)[0] if k is not None else 0
        return ((xp.triu if self.upper else xp.tril)(x, k),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """The mask is its own adjoint."""
        return [b.op("Trilu", [grads[0]] + [v for v in inputs[1:2] if v], like=inputs[0], upper=int(self.upper))] \
            + [None] * (len(inputs) - 1)


@register("CumSum")
class CumSum(Op):
    def setup(self, node):
        self.exclusive = bool(node.attr("exclusive", 0))
        self.reverse = bool(node.attr("reverse", 0))

    def forward(self, x, axis):
        xp = xp_of(x)
        a = _axis(host_ints(axis)[0], x.ndim)
        y = xp.flip(x, a) if self.reverse else x
        y = xp.cumsum(y, axis=a, dtype=x.dtype)
        if self.exclusive:
            y = xp.concatenate([xp.zeros_like(xp.take(y, [0], axis=a)), xp.take(y, xp.arange(y.shape[a] - 1), axis=a)],
                               axis=a)
        return (xp.flip(y, a) if self.reverse else y,)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """A sum over a prefix is adjoint to a sum over the matching suffix: the same CumSum, reversed."""
        return [b.op("CumSum", [grads[0], inputs[1]], like=inputs[0], exclusive=int(self.exclusive),
                     reverse=int(not self.reverse)), None]


class BlockRearrange(Op):
    """DepthToSpace / SpaceToDepth: a reshape, a transpose and a reshape; the VJP runs them backwards."""

    def setup(self, node):
        self.block = int(node.attr("blocksize"))
        self.mode = node.attr("mode", "DCR")
        if self.block < 1 or self.mode not in ("DCR", "CRD"):
            self.unsupported(f"blocksize={self.block}, mode={self.mode!r}")

    def forward(self, x):
        first, perm, last = self.plan(x.shape)
        return (x.reshape(first).transpose(perm).reshape(last),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x = inputs[0]
        first, perm, last = self.plan((0,) + tuple(b.tail(x, 1)))
        moved = [0] + [first[p] for p in perm[1:]]
        g = b.op("Reshape", [grads[0], b.ints(moved)], dims=(b.dims(x)[0],) + tuple(moved[1:]), dtype=b.dtype(x))
        g = b.op("Transpose", [g], perm=[int(p) for p in np.argsort(perm)], dims=(b.dims(x)[0],) + tuple(first[1:]),
                 dtype=b.dtype(x))
        return [b.reshape_like(g, x)]


@register("DepthToSpace")
class DepthToSpace(BlockRearrange):
    def plan(self, shape):
        n, c, h, w = shape
        k = self.block
        if c % (k * k):
            raise ValueError(f"{c} channels do not divide by blocksize^2 = {k * k}")
        if self.mode == "DCR":
            return (n, k, k, c // (k * k), h, w), [0, 3, 4, 1, 5, 2], (n, c // (k * k), h * k, w * k)
        return (n, c // (k * k), k, k, h, w), [0, 1, 4, 2, 5, 3], (n, c // (k * k), h * k, w * k)


@register("SpaceToDepth")
class SpaceToDepth(BlockRearrange):
    def plan(self, shape):
        n, c, h, w = shape
        k = self.block
        if h % k or w % k:
            raise ValueError(f"spatial size {h}x{w} does not divide by blocksize {k}")
        perm = [0, 3, 5, 1, 2, 4] if self.mode == "DCR" else [0, 1, 3, 5, 2, 4]
        return (n, c, h // k, k, w // k, k), perm, (n, c * k * k, h // k, w // k)


@register("IsNaN", "IsInf")
class IsSpecial(NonDifferentiable):
    def setup(self, node):
        self.negative = bool(node.attr("detect_negative", 1))
        self.positive = bool(node.attr("detect_positive", 1))

    def forward(self, x):
        xp = xp_of(x)
        if self.op_type == "IsNaN":
            return (xp.isnan(x),)
        return (((x == xp.inf) & self.positive) | ((x == -xp.inf) & self.negative),)
