"""Elementwise activations and unary math: y = f(x), one small class per parameterized family."""
from __future__ import annotations

import math

import numpy as np

from ..backend import special_erf, xp_of
from . import Op, register


def _scalar(v, default, dtype):
    """An optional 0-d operand (Clip's min/max) as a scalar of the data's dtype."""
    if v is None:
        return None if default is None else dtype.type(default)
    a = np.asarray(v if isinstance(v, np.ndarray) else v.get())
    if a.size != 1:
        raise ValueError(f"expected a scalar, got shape {a.shape}")
    return dtype.type(a.reshape(()))


UNARY = {
    "Abs": lambda xp, x: xp.abs(x),
    "Neg": lambda xp, x: xp.negative(x),
    "Exp": lambda xp, x: xp.exp(x),
    "Log": lambda xp, x: xp.log(x),
    "Sqrt": lambda xp, x: xp.sqrt(x),
    "Reciprocal": lambda xp, x: xp.reciprocal(x),
    "Floor": lambda xp, x: xp.floor(x),
    "Ceil": lambda xp, x: xp.ceil(x),
    "Sign": lambda xp, x: xp.sign(x),
    "Tanh": lambda xp, x: xp.tanh(x),
    "Sin": lambda xp, x: xp.sin(x),
    "Cos": lambda xp, x: xp.cos(x),
    "Erf": lambda xp, x: special_erf(xp)(x).astype(x.dtype, copy=False),
    "Relu": lambda xp, x: xp.maximum(x, x.dtype.type(0)),
    "Sigmoid": lambda xp, x: _expit(xp)(x),
    "Softplus": lambda xp, x: xp.logaddexp(x, x.dtype.type(0)),
    "Softsign": lambda xp, x: x / (1 + xp.abs(x)),
    "Not": lambda xp, x: xp.logical_not(x),
}


def _expit(xp):
    if xp is np:
        from scipy.special import expit
    else:
        from cupyx.scipy.special import expit  # type: ignore
    return expit


@register(*UNARY)
class Unary(Op):
    def setup(self, node):
        self.fn = UNARY[node.op_type]

    def forward(self, x):
        return (self.fn(xp_of(x), x),)


@register("LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Celu", "ThresholdedRelu", "Gelu")
class ParamActivation(Op):
    """Activations with scalar attributes. Defaults are ONNX's."""

    DEFAULTS = {
        "LeakyRelu": {"alpha": 0.01},
        "Elu": {"alpha": 1.0},
        "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
        "HardSigmoid": {"alpha": 0.2, "beta": 0.5},
        "HardSwish": {"alpha": 1 / 6, "beta": 0.5},
        "Celu": {"alpha": 1.0},
        "ThresholdedRelu": {"alpha": 1.0},
        "Gelu": {},
    }

    def setup(self, node):
        p = {k: float(node.attr(k, v)) for k, v in self.DEFAULTS[node.op_type].items()}
        self.alpha, self.beta, self.gamma = p.get("alpha"), p.get("beta"), p.get("gamma")
        self.approximate = node.attr("approximate", "none")
        if node.op_type == "Gelu" and self.approximate not in ("none", "tanh"):
            self.unsupported(f"Gelu approximate={self.approximate!r}")

    def forward(self, x):
        xp, t, op = xp_of(x), x.dtype.type, self.op_type
        a = None if self.alpha is None else t(self.alpha)
        if op == "LeakyRelu":
            y = xp.where(x >= 0, x, x * a)
        elif op == "Elu":
            y = xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, t(0))))
        elif op == "Celu":
            y = xp.maximum(x, t(0)) + xp.minimum(t(0), a * xp.expm1(x / a))
        elif op == "Selu":
            y = t(self.gamma) * xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, t(0))))
        elif op == "ThresholdedRelu":
            y = xp.where(x > a, x, t(0))
        elif op in ("HardSigmoid", "HardSwish"):
            y = xp.clip(a * x + t(self.beta), t(0), t(1))
            if op == "HardSwish":
                y = x * y
        else:  # Gelu
            if self.approximate == "tanh":
                y = t(0.5) * x * (1 + xp.tanh(t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x ** 3)))
            else:
                y = t(0.5) * x * (1 + special_erf(xp)(x / t(math.sqrt(2))).astype(x.dtype, copy=False))
        return (y,)


@register("Clip")
class Clip(Op):
    """Clip(x, min, max); min/max are inputs after import (opset < 11 attributes are moved there)."""

    def forward(self, x, lo=None, hi=None):
        return (self.forward_inplace(x.copy(), lo, hi),)

    def forward_inplace(self, y, lo=None, hi=None):
        xp = xp_of(y)
        lo, hi = _scalar(lo, None, y.dtype), _scalar(hi, None, y.dtype)
        if lo is not None:
            xp.maximum(y, lo, out=y)
        if hi is not None:
            xp.minimum(y, hi, out=y)
        return y


@register("PRelu")
class PRelu(Op):
    def forward(self, x, slope):
        xp = xp_of(x)
        return (xp.where(x >= 0, x, x * slope.astype(x.dtype, copy=False)),)


@register("Softmax", "LogSoftmax", "Hardmax")
class Softmax(Op):
    """Opset >= 13: along one axis (default -1). Before 13 the importer sets `_flatten` : the input is
    viewed as 2-D at `axis` (default 1) and normalized over the whole trailing block."""

    def setup(self, node):
        self.flatten = bool(node.attr("_flatten", False))
        self.axis = int(node.attr("axis", 1 if self.flatten else -1))

    def forward(self, x):
        xp = xp_of(x)
        shape = x.shape
        axis = self.axis % max(x.ndim, 1)
        if self.flatten:
            x = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
            axis = 1
        if self.op_type == "Hardmax":
            idx = xp.argmax(x, axis=axis)
            y = (xp.arange(x.shape[axis]).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
                 == xp.expand_dims(idx, axis)).astype(x.dtype)
            return (y.reshape(shape),)
        z = x - xp.max(x, axis=axis, keepdims=True)
        if self.op_type == "Softmax":
            e = xp.exp(z)
            y = e / xp.sum(e, axis=axis, keepdims=True)
        else:
            y = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
        return (y.reshape(shape),)
