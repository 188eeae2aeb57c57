"""Reductions over axes (axes as an input, the opset-18 form the importer normalizes to) and ArgMax/ArgMin."""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, xp_of
from . import NonDifferentiable, Op, register

REDUCE = {
    "ReduceMean": lambda xp, x, ax, kd: xp.mean(x, axis=ax, keepdims=kd),
    "ReduceSum": lambda xp, x, ax, kd: xp.sum(x, axis=ax, keepdims=kd),
    "ReduceMax": lambda xp, x, ax, kd: xp.max(x, axis=ax, keepdims=kd),
    "ReduceMin": lambda xp, x, ax, kd: xp.min(x, axis=ax, keepdims=kd),
    "ReduceProd": lambda xp, x, ax, kd: xp.prod(x, axis=ax, keepdims=kd),
    "ReduceL1": lambda xp, x, ax, kd: xp.sum(xp.abs(x), axis=ax, keepdims=kd),
    "ReduceL2": lambda xp, x, ax, kd: xp.sqrt(xp.sum(x * x, axis=ax, keepdims=kd)),
    "ReduceSumSquare": lambda xp, x, ax, kd: xp.sum(x * x, axis=ax, keepdims=kd),
    "ReduceLogSum": lambda xp, x, ax, kd: xp.log(xp.sum(x, axis=ax, keepdims=kd)),
    "ReduceLogSumExp": lambda xp, x, ax, kd: _logsumexp(xp, x, ax, kd),
}

# What an empty reduction yields (ONNX: the identity of the reduction)
EMPTY = {"ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceProd": 1.0, "ReduceLogSum": -np.inf,
         "ReduceLogSumExp": -np.inf}


def _logsumexp(xp, x, ax, kd):
    m = xp.max(x, axis=ax, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    y = xp.log(xp.sum(xp.exp(x - m), axis=ax, keepdims=True)) + m
    return y if kd else xp.squeeze(y, axis=ax)


@register(*REDUCE)
class Reduce(Op):
    def setup(self, node):
        self.fn = REDUCE[node.op_type]
        self.keepdims = bool(node.attr("keepdims", 1))
        self.noop_empty = bool(node.attr("noop_with_empty_axes", 0))

    def axes(self, x, axes):
        if axes is None or np.asarray(axes).size == 0:
            return None if self.noop_empty else tuple(range(x.ndim))
        return tuple(sorted({a % x.ndim for a in host_ints(axes)}))

    def forward(self, x, axes=None):
        xp = xp_of(x)
        ax = self.axes(x, axes)
        if ax is None:
            return (x,)
        if any(x.shape[a] == 0 for a in ax):
            shape = [1 if a in ax else d for a, d in enumerate(x.shape)] if self.keepdims else \
                [d for a, d in enumerate(x.shape) if a not in ax]
            fill = EMPTY.get(self.op_type, 0)
            if x.dtype.kind == "b":
                fill = fill > 0
            elif x.dtype.kind in "iu" and not np.isfinite(fill):
                info = np.iinfo(x.dtype)
                fill = info.min if fill < 0 else info.max
            return (xp.full(shape, fill, dtype=x.dtype),)
        return (self.fn(xp, x, ax, self.keepdims).astype(x.dtype, copy=False),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        x = inputs[0]
        if x.dtype.kind != "f":
            return [None] * len(inputs)
        xp = xp_of(grads[0])
        ax = self.axes(x, inputs[1] if len(inputs) > 1 else None)
        if ax is None:
            return [grads[0]] + [None] * (len(inputs) - 1)
        kshape = [1 if a in ax else d for a, d in enumerate(x.shape)]
        g, y = grads[0].reshape(kshape), outputs[0].reshape(kshape)
        op = self.op_type
        count = x.dtype.type(np.prod([x.shape[a] for a in ax]))
        if op == "ReduceSum":
            gx = xp.broadcast_to(g, x.shape)
        elif op == "ReduceMean":
            gx = xp.broadcast_to(g / count, x.shape)
        elif op in ("ReduceMax", "ReduceMin"):  # to the extremes, split evenly among ties
            hit = (x == y).astype(x.dtype)
            gx = g * hit / hit.sum(axis=ax, keepdims=True)
        elif op == "ReduceProd":
            gx = g * y / x
        elif op == "ReduceL1":
            gx = g * xp.sign(x)
        elif op == "ReduceL2":
            gx = g * x / xp.where(y == 0, 1, y)
        elif op == "ReduceSumSquare":
            gx = g * 2 * x
        elif op == "ReduceLogSum":
            gx = xp.broadcast_to(g / xp.exp(y), x.shape)
        else:  # ReduceLogSumExp
            gx = g * xp.exp(x - y)
        return [xp.ascontiguousarray(gx).astype(x.dtype, copy=False)] + [None] * (len(inputs) - 1)


@register("ArgMax", "ArgMin")
class ArgExtreme(NonDifferentiable):
    def setup(self, node):
        self.axis = int(node.attr("axis", 0))
        self.keepdims = bool(node.attr("keepdims", 1))
        self.last = bool(node.attr("select_last_index", 0))

    def forward(self, x):
        xp = xp_of(x)
        axis = self.axis % x.ndim
        f = xp.argmax if self.op_type == "ArgMax" else xp.argmin
        if self.last:
            idx = x.shape[axis] - 1 - f(xp.flip(x, axis=axis), axis=axis)
        else:
            idx = f(x, axis=axis)
        idx = idx.astype(np.int64)
        return (xp.expand_dims(idx, axis) if self.keepdims else idx,)
