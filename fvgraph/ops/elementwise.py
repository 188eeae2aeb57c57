"""Broadcasting binary and variadic elementwise ops (numpy-style multidirectional broadcasting)."""
from __future__ import annotations

from functools import reduce

import numpy as np

from ..backend import on, xp_of
from ..onnx_types import onnx_type
from . import NonDifferentiable, Op, register


def _div(xp, a, b):
    """ONNX Div: true division for floats, truncation toward zero for integers."""
    if a.dtype.kind in "iu":
        q = xp.floor_divide(a, b)
        fix = (xp.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return (q + fix).astype(a.dtype)
    return a / b


def _pow(xp, a, b):
    """ONNX Pow: the result has the base's type."""
    if a.dtype == b.dtype:
        return xp.power(a, b)
    return xp.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)


def _mod(self_fmod):
    def f(xp, a, b):
        return xp.fmod(a, b) if self_fmod else xp.mod(a, b)
    return f


BINARY = {
    "Add": lambda xp, a, b: a + b,
    "Sub": lambda xp, a, b: a - b,
    "Mul": lambda xp, a, b: a * b,
    "Div": _div,
    "Pow": _pow,
    "Equal": lambda xp, a, b: a == b,
    "Less": lambda xp, a, b: a < b,
    "LessOrEqual": lambda xp, a, b: a <= b,
    "Greater": lambda xp, a, b: a > b,
    "GreaterOrEqual": lambda xp, a, b: a >= b,
    "And": lambda xp, a, b: xp.logical_and(a, b),
    "Or": lambda xp, a, b: xp.logical_or(a, b),
    "Xor": lambda xp, a, b: xp.logical_xor(a, b),
}

def _pow_grads(b, x, e, y, g):
    e_ = e if b.dtype(e) == b.dtype(x) else b.cast(e, b.dtype(x))
    base = b.op("Pow", [x, b.op("Sub", [e_, b.scalar(1, e_)], like=e_)], like=g)
    gx = b.mul(b.mul(g, e_, like=g), base, like=g)
    safe = b.where(b.op("Greater", [x, b.scalar(0, x)], dims=b.dims(x), dtype=np.bool_), x, b.scalar(1, x), like=x)
    ge = b.mul(b.mul(g, y, like=g), b.op("Log", [safe], like=x), like=g)
    return gx, ge


# gradients (d/da, d/db) of the differentiable binary ops, as nodes
BINARY_GRAD = {
    "Add": lambda b, x, e, y, g: (g, g),
    "Sub": lambda b, x, e, y, g: (g, b.op("Neg", [g], like=g)),
    "Mul": lambda b, x, e, y, g: (b.mul(g, e, like=g), b.mul(g, x, like=g)),
    "Div": lambda b, x, e, y, g: (b.op("Div", [g, e], like=g),
                                  b.op("Neg", [b.op("Div", [b.mul(g, y, like=g), e], like=g)], like=g)),
    "Pow": _pow_grads,
}



VARIADIC = {
    "Sum": lambda xp, a, b: a + b,
    "Mean": lambda xp, a, b: a + b,
    "Max": lambda xp, a, b: xp.maximum(a, b),
    "Min": lambda xp, a, b: xp.minimum(a, b),
}


@register(*BINARY)
class Binary(Op):
    def setup(self, node):
        self.fn = BINARY[node.op_type]
        self.grad = BINARY_GRAD.get(node.op_type)
        self.differentiable = self.grad is not None
        if node.attr("axis") is not None:
            self.unsupported("legacy broadcasting with an axis attribute (opset < 7); "
                             "upgrade the model with onnx.version_converter")

    def forward(self, a, b):
        xp = xp_of(a, b)
        return (self.fn(xp, *on(xp, a, b)),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, e = inputs
        if self.grad is None or b.dtype(x).kind != "f":
            return [None, None]
        gx, ge = self.grad(b, x, e, outputs[0], grads[0])
        return [b.sum_to(gx, x) if 0 in wrt else None,
                b.sum_to(ge, e) if 1 in wrt and b.dtype(e).kind == "f" else None]


@register("Mod")
class Mod(NonDifferentiable):
    def setup(self, node):
        self.fmod = bool(node.attr("fmod", 0))

    def forward(self, a, b):
        return (_mod(self.fmod)(xp_of(a, b), a, b),)


@register(*VARIADIC)
class Variadic(Op):
    def setup(self, node):
        self.fn = VARIADIC[node.op_type]

    def forward(self, *xs):
        xp = xp_of(*xs)
        xs = on(xp, *xs)
        y = reduce(lambda a, b: self.fn(xp, a, b), xs)
        if len(xs) == 1:
            y = xp.array(y, copy=True)
        if self.op_type == "Mean":
            y = y / y.dtype.type(len(xs))
        return (y,)

    def vjp(self, b, inputs, outputs, grads, wrt):
        g, y = grads[0], outputs[0]
        if self.op_type in ("Sum", "Mean"):
            if self.op_type == "Mean":
                g = b.op("Div", [g, b.scalar(len(inputs), g)], like=g)
            return [b.sum_to(g, x) if k in wrt else None for k, x in enumerate(inputs)]
        # Max/Min: to the inputs that attain the result, split evenly among ties
        hits = [b.op("Cast", [b.op("Equal", [x, y], dims=b.dims(y), dtype=np.bool_)], like=y,
                     to=onnx_type(b.dtype(y))) for x in inputs]
        count = hits[0]
        for h in hits[1:]:
            count = b.add(count, h, like=y)
        share = b.op("Div", [g, count], like=g)
        return [b.sum_to(b.mul(share, h, like=g), x) if k in wrt else None
                for k, (x, h) in enumerate(zip(inputs, hits))]


@register("Where")
class Where(Op):
    def forward(self, cond, a, b):
        xp = xp_of(cond, a, b)
        return (xp.where(*on(xp, cond, a, b)),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        cond, x, e = inputs
        g = grads[0]
        zero = b.scalar(0, g)
        return [None, b.sum_to(b.where(cond, g, zero, like=g), x) if 1 in wrt else None,
                b.sum_to(b.where(cond, zero, g, like=g), e) if 2 in wrt else None]
