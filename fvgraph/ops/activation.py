"""Elementwise activations and unary math: y = f(x), one small class per parameterized family."""
from __future__ import annotations

import math

import numpy as np

from ..backend import special_erf, xp_of
from . import Op, register, unbroadcast


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


# d(out)/d(in) times the incoming gradient g, from input x and output y. Piecewise-constant ops (Floor,
# Ceil, Sign, Not) are absent: nothing flows back through them.
UNARY_GRAD = {
    "Abs": lambda xp, x, y, g: g * xp.sign(x),
    "Neg": lambda xp, x, y, g: -g,
    "Exp": lambda xp, x, y, g: g * y,
    "Log": lambda xp, x, y, g: g / x,
    "Sqrt": lambda xp, x, y, g: g / (2 * y),
    "Reciprocal": lambda xp, x, y, g: -g * y * y,
    "Tanh": lambda xp, x, y, g: g * (1 - y * y),
    "Sin": lambda xp, x, y, g: g * xp.cos(x),
    "Cos": lambda xp, x, y, g: -g * xp.sin(x),
    "Erf": lambda xp, x, y, g: g * x.dtype.type(2 / math.sqrt(math.pi)) * xp.exp(-x * x),
    "Relu": lambda xp, x, y, g: g * (x > 0),
    "Sigmoid": lambda xp, x, y, g: g * y * (1 - y),
    "Softplus": lambda xp, x, y, g: g * _expit(xp)(x),
    "Softsign": lambda xp, x, y, g: g / (1 + xp.abs(x)) ** 2,
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
        self.grad = UNARY_GRAD.get(node.op_type)
        self.differentiable = self.grad is not None

    def forward(self, x):
        return (self.fn(xp_of(x), x),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        if self.grad is None:
            return [None]
        return [self.grad(xp_of(grads[0]), inputs[0], outputs[0], grads[0]).astype(inputs[0].dtype, copy=False)]


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

    def derivative(self, x):
        xp, t, op = xp_of(x), x.dtype.type, self.op_type
        a = None if self.alpha is None else t(self.alpha)
        if op == "LeakyRelu":
            return xp.where(x >= 0, t(1), a)
        if op == "Elu":
            return xp.where(x > 0, t(1), a * xp.exp(xp.minimum(x, t(0))))
        if op == "Celu":
            return xp.where(x > 0, t(1), xp.exp(xp.minimum(x, t(0)) / a))
        if op == "Selu":
            return t(self.gamma) * xp.where(x > 0, t(1), a * xp.exp(xp.minimum(x, t(0))))
        if op == "ThresholdedRelu":
            return (x > a).astype(x.dtype)
        if op in ("HardSigmoid", "HardSwish"):
            z = a * x + t(self.beta)
            inside = ((z > 0) & (z < 1)).astype(x.dtype)
            if op == "HardSigmoid":
                return a * inside
            return xp.clip(z, t(0), t(1)) + x * a * inside
        if self.approximate == "tanh":  # Gelu, tanh form
            k = t(math.sqrt(2 / math.pi))
            u = k * (x + t(0.044715) * x ** 3)
            th = xp.tanh(u)
            return t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * k * (1 + t(3 * 0.044715) * x * x)
        cdf = t(0.5) * (1 + special_erf(xp)(x / t(math.sqrt(2))).astype(x.dtype, copy=False))
        return cdf + x * xp.exp(-x * x / 2) * t(1 / math.sqrt(2 * math.pi))

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0] * self.derivative(inputs[0])]


@register("Clip")
class Clip(Op):
    """Clip(x, min, max); min/max are inputs after import (opset < 11 attributes are moved there)."""

    def forward(self, x, lo=None, hi=None):
        return (self.forward_inplace(x.copy(), lo, hi),)

    def gate(self, x, lo=None, hi=None):
        """1 where x passes unclipped (lo < x < hi, strict as PyTorch's ReLU6/hardtanh), else 0."""
        lo, hi = _scalar(lo, None, x.dtype), _scalar(hi, None, x.dtype)
        m = None
        if lo is not None:
            m = x > lo
        if hi is not None:
            m = (x < hi) if m is None else m & (x < hi)
        return xp_of(x).ones_like(x) if m is None else m.astype(x.dtype)

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [grads[0] * self.gate(*inputs), None, None][:len(inputs)]

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

    def vjp(self, inputs, outputs, grads, wrt=None):
        xp = xp_of(grads[0])
        x, slope = inputs
        g = grads[0]
        neg = x < 0
        gx = xp.where(neg, g * slope.astype(x.dtype, copy=False), g)
        return [gx, unbroadcast(xp.where(neg, g * x, 0), slope.shape).astype(slope.dtype)]


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
        if self.op_type == "Softmax":  # noqa: SIM114
            e = xp.exp(z)
            y = e / xp.sum(e, axis=axis, keepdims=True)
        else:
            y = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
        return (y.reshape(shape),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        if self.op_type == "Hardmax":
            return [None]
        xp = xp_of(grads[0])
        x, y, g = inputs[0], outputs[0], grads[0]
        axis = self.axis % max(x.ndim, 1)
        if self.flatten:
            lead = int(np.prod(x.shape[:axis], dtype=np.int64))
            y, g, axis = y.reshape(lead, -1), g.reshape(lead, -1), 1
        if self.op_type == "Softmax":
            gx = y * (g - xp.sum(g * y, axis=axis, keepdims=True))
        else:
            gx = g - xp.exp(y) * xp.sum(g, axis=axis, keepdims=True)
        return [gx.reshape(x.shape)]
