"""Broadcasting binary and variadic elementwise ops (numpy-style multidirectional broadcasting)."""
from __future__ import annotations

from functools import reduce

import numpy as np

from ..backend import xp_of
from . import NonDifferentiable, Op, register, unbroadcast


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

def _pow_grads(xp, a, b, y, g):
    ga = g * b * xp.power(a, b - 1)
    gb = g * y * xp.log(xp.where(a > 0, a, 1))
    return ga, gb


# gradients (d/da, d/db) of the differentiable binary ops
BINARY_GRAD = {
    "Add": lambda xp, a, b, y, g: (g, g),
    "Sub": lambda xp, a, b, y, g: (g, -g),
    "Mul": lambda xp, a, b, y, g: (g * b, g * a),
    "Div": lambda xp, a, b, y, g: (g / b, -g * y / b),
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
        return (self.fn(xp_of(a, b), a, b),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        a, b = inputs
        if self.grad is None or a.dtype.kind != "f":
            return [None, None]
        ga, gb = self.grad(xp_of(grads[0]), a, b, outputs[0], grads[0])
        return [unbroadcast(ga, a.shape).astype(a.dtype, copy=False),
                unbroadcast(gb, b.shape).astype(b.dtype, copy=False)]


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
        y = reduce(lambda a, b: self.fn(xp, a, b), xs)
        if len(xs) == 1:
            y = xp.array(y, copy=True)
        if self.op_type == "Mean":
            y = y / y.dtype.type(len(xs))
        return (y,)

    def vjp(self, inputs, outputs, grads, wrt=None):
        g, y = grads[0], outputs[0]
        if self.op_type in ("Sum", "Mean"):
            g = g / g.dtype.type(len(inputs)) if self.op_type == "Mean" else g
            return [unbroadcast(g, x.shape) for x in inputs]
        # Max/Min: to the inputs that attain the result, split evenly among ties
        hits = [(x == y) for x in inputs]
        count = sum(h.astype(g.dtype) for h in hits)
        return [unbroadcast(g * h / count, x.shape) for x, h in zip(inputs, hits)]


@register("Where")
class Where(Op):
    def forward(self, cond, a, b):
        xp = xp_of(a, b)
        return (xp.where(xp.asarray(cond), a, b),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        cond, a, b = inputs
        xp, g = xp_of(grads[0]), grads[0]
        c = xp.asarray(cond)
        return [None, unbroadcast(xp.where(c, g, 0), a.shape), unbroadcast(xp.where(c, 0, g), b.shape)]
