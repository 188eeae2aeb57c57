"""Reductions over axes (axes as an input, the opset-18 form the importer normalizes to) and ArgMax/ArgMin."""
from __future__ import annotations

import numpy as np

from ..backend import host_ints, xp_of
from ..shapes import ShapeUnknown
from ..onnx_types import onnx_type
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

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, y, g = inputs[0], outputs[0], grads[0]
        if b.dtype(x).kind != "f":
            return [None] * len(inputs)
        rank = b.rank(x)
        axes_v = b.constant(inputs[1]) if len(inputs) > 1 and inputs[1] else None
        if axes_v is None and len(inputs) > 1 and inputs[1]:
            raise ShapeUnknown(inputs[1])
        if axes_v is None or np.asarray(axes_v).size == 0:
            if self.noop_empty:
                return [g] + [None] * (len(inputs) - 1)
            ax = list(range(rank))
        else:
            ax = sorted({a % rank for a in host_ints(axes_v)})
        kd = tuple(1 if a in ax else d for a, d in enumerate(b.dims(x)))
        op = self.op_type
        if not self.keepdims:
            g = b.op("Unsqueeze", [g, b.ints(ax)], dims=kd, dtype=b.dtype(g))
            if op not in ("ReduceSum", "ReduceMean", "ReduceL1", "ReduceSumSquare"):
                y = b.op("Unsqueeze", [y, b.ints(ax)], dims=kd, dtype=b.dtype(y))
        c = lambda v: b.scalar(v, x)  # noqa: E731
        full = lambda v: b.op("Expand", [v, b.shape_of(x)], like=x)  # noqa: E731
        if op == "ReduceSum":
            gx = full(g)
        elif op == "ReduceMean":
            gx = full(b.op("Div", [g, c(int(np.prod(b.static(x, ax))))], like=g))
        elif op in ("ReduceMax", "ReduceMin"):  # to the extremes, split evenly among ties
            hit = b.op("Cast", [b.op("Equal", [x, y], dims=b.dims(x), dtype=np.bool_)], like=x,
                       to=onnx_type(b.dtype(x)))
            count = b.op("ReduceSum", [hit, b.ints(ax)], keepdims=1, dims=kd, dtype=b.dtype(x))
            gx = b.mul(hit, b.op("Div", [g, count], like=g), like=x)
        elif op == "ReduceProd":
            gx = b.op("Div", [b.mul(g, y, like=g), x], like=x)
        elif op == "ReduceL1":
            gx = b.mul(g, b.op("Sign", [x], like=x), like=x)
        elif op == "ReduceL2":
            zero = b.op("Equal", [y, c(0)], dims=kd, dtype=np.bool_)
            gx = b.op("Div", [b.mul(g, x, like=x), b.where(zero, c(1), y, like=y)], like=x)
        elif op == "ReduceSumSquare":
            gx = b.mul(b.mul(g, c(2), like=g), x, like=x)
        elif op == "ReduceLogSum":
            gx = full(b.op("Div", [g, b.op("Exp", [y], like=y)], like=g))
        else:  # ReduceLogSumExp
            gx = b.mul(g, b.op("Exp", [b.op("Sub", [x, y], like=x)], like=x), like=x)
        return [gx] + [None] * (len(inputs) - 1)



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
