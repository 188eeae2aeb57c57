"""Broadcasting binary and variadic elementwise ops (numpy-style multidirectional broadcasting)."""
from __future__ import annotations

from functools import reduce

import numpy as np

from ..backend import xp_of
from . import Op, register


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
        if node.attr("axis") is not None:
            self.unsupported("legacy broadcasting with an axis attribute (opset < 7); "
                             "upgrade the model with onnx.version_converter")

    def forward(self, a, b):
        return (self.fn(xp_of(a, b), a, b),)


@register("Mod")
class Mod(Op):
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


@register("Where")
class Where(Op):
    def forward(self, cond, a, b):
        xp = xp_of(a, b)
        return (xp.where(xp.asarray(cond), a, b),)
