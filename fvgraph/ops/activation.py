"""Elementwise activations and unary math: y = f(x), one small class per parameterized family."""
from __future__ import annotations

import math

import numpy as np

from ..backend import special_erf, xp_of
from ..onnx_types import onnx_type
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
    "Round": lambda xp, x: xp.round(x),  # half to even, as ONNX
    "Mish": lambda xp, x: x * xp.tanh(xp.logaddexp(x, x.dtype.type(0))),
}


# The VJP of each unary op as nodes: g times d(out)/d(in), from input x and output y. Piecewise-constant ops
# (Floor, Ceil, Sign, Not) are absent: nothing flows back through them.
def _u(b, op, v, **attrs):
    return b.op(op, [v], like=v, **attrs)


def _m(b, *vs):
    out = vs[0]
    for v in vs[1:]:
        out = b.op("Mul", [out, v], like=vs[0])
    return out


UNARY_GRAD = {
    "Abs": lambda b, x, y, g: _m(b, g, _u(b, "Sign", x)),
    "Neg": lambda b, x, y, g: _u(b, "Neg", g),
    "Exp": lambda b, x, y, g: _m(b, g, y),
    "Log": lambda b, x, y, g: b.op("Div", [g, x], like=g),
    "Sqrt": lambda b, x, y, g: b.op("Div", [g, _m(b, y, b.scalar(2, y))], like=g),
    "Reciprocal": lambda b, x, y, g: _u(b, "Neg", _m(b, g, y, y)),
    "Tanh": lambda b, x, y, g: _m(b, g, b.op("Sub", [b.scalar(1, y), _m(b, y, y)], like=y)),
    "Sin": lambda b, x, y, g: _m(b, g, _u(b, "Cos", x)),
    "Cos": lambda b, x, y, g: _u(b, "Neg", _m(b, g, _u(b, "Sin", x))),
    "Erf": lambda b, x, y, g: _m(b, g, b.scalar(2 / math.sqrt(math.pi), x), _u(b, "Exp", _u(b, "Neg", _m(b, x, x)))),
    "Relu": lambda b, x, y, g: b.gate(positive(b, y), g),
    "Sigmoid": lambda b, x, y, g: _m(b, g, y, b.op("Sub", [b.scalar(1, y), y], like=y)),
    "Softplus": lambda b, x, y, g: _m(b, g, _u(b, "Sigmoid", x)),
    "Softsign": lambda b, x, y, g: b.op("Div", [g, _square(b, b.op("Add", [b.scalar(1, x), _u(b, "Abs", x)],
                                                                     like=x))], like=g),
    "Mish": lambda b, x, y, g: _mish_grad(b, x, g),
}


def _mish_grad(b, x, g):
    """d/dx x tanh(softplus(x)) = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)."""
    t = _u(b, "Tanh", _u(b, "Softplus", x))
    slope = b.op("Sub", [b.scalar(1, x), _m(b, t, t)], like=x)
    return _m(b, g, b.op("Add", [t, _m(b, x, _u(b, "Sigmoid", x), slope)], like=x))


def _square(b, v):
    return _m(b, v, v)


def positive(b, v):
    """v > 0 as a boolean value (the ReLU gate, from the ReLU's output: y > 0 exactly where x > 0)."""
    return b.op("Greater", [v, b.scalar(0, v)], dims=b.dims(v), dtype=np.bool_)


def relu_like(node, constant) -> bool:
    """Whether a node is a ReLU-like gate: Relu, or Clip whose lower bound is a constant 0 (ReLU6 and kin).
    constant(name) is the value's array when it is a constant, else None. The one test that guided
    backprop/deconvnet (fvgraph.propagation) and dead-unit redirection (fvgraph.methods.reconstruction) share."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip" or len(node.inputs) < 2 or not node.inputs[1]:
        return False
    low = constant(node.inputs[1])
    return low is not None and float(np.asarray(low).reshape(-1)[0]) == 0.0


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        if self.grad is None or 0 not in wrt:
            return [None]
        return [self.grad(b, inputs[0], outputs[0], grads[0])]


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

    def derivative(self, b, x, y):
        """d(out)/d(in) as nodes."""
        op = self.op_type
        c = lambda v: b.scalar(v, x)  # noqa: E731
        cmp = lambda kind, v: b.op(kind, [x, c(v)], dims=b.dims(x), dtype=np.bool_)  # noqa: E731
        one = c(1)
        if op == "LeakyRelu":
            return b.where(cmp("Less", 0), c(self.alpha), one, like=x)
        if op in ("Elu", "Selu", "Celu"):  # a * exp(x / s) below 0 (s = a for Celu, 1 otherwise)
            neg = b.op("Min", [x, c(0)], like=x)
            if op == "Celu":
                neg = b.op("Div", [neg, c(self.alpha)], like=x)
            slope = _m(b, _u(b, "Exp", neg), c(1.0 if op == "Celu" else self.alpha))
            d = b.where(cmp("Greater", 0), one, slope, like=x)
            return _m(b, d, c(self.gamma)) if op == "Selu" else d
        if op == "ThresholdedRelu":
            return b.op("Cast", [cmp("Greater", self.alpha)], like=x, to=onnx_type(b.dtype(x)))
        if op in ("HardSigmoid", "HardSwish"):
            z = b.op("Add", [_m(b, x, c(self.alpha)), c(self.beta)], like=x)
            inside = b.op("And", [b.op("Greater", [z, c(0)], dims=b.dims(x), dtype=np.bool_),
                                  b.op("Less", [z, c(1)], dims=b.dims(x), dtype=np.bool_)],
                          dims=b.dims(x), dtype=np.bool_)
            slope = b.where(inside, c(self.alpha), c(0), like=x)
            if op == "HardSigmoid":
                return slope
            return b.op("Add", [b.op("Clip", [z, c(0), c(1)], like=x), _m(b, x, slope)], like=x)
        if self.approximate == "tanh":  # Gelu, tanh form
            k = math.sqrt(2 / math.pi)
            x2 = _m(b, x, x)
            u = _m(b, c(k), b.op("Add", [x, _m(b, c(0.044715), x2, x)], like=x))
            th = _u(b, "Tanh", u)
            first = _m(b, c(0.5), b.op("Add", [one, th], like=x))
            dth = b.op("Sub", [one, _m(b, th, th)], like=x)
            return b.op("Add", [first, _m(b, c(0.5 * k), x, dth, b.op("Add", [one, _m(b, c(3 * 0.044715), x2)],
                                                                        like=x))], like=x)
        cdf = _m(b, c(0.5), b.op("Add", [one, _u(b, "Erf", _m(b, x, c(1 / math.sqrt(2))))], like=x))
        pdf = _m(b, c(1 / math.sqrt(2 * math.pi)), _u(b, "Exp", _m(b, x, x, c(-0.5))))
        return b.op("Add", [cdf, _m(b, x, pdf)], like=x)

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [_m(b, grads[0], self.derivative(b, inputs[0], outputs[0]))]



@register("Clip")
class Clip(Op):
    """Clip(x, min, max); min/max are inputs after import (opset < 11 attributes are moved there)."""

    def forward(self, x, lo=None, hi=None):
        return (self.forward_inplace(xp_of(x).array(x, copy=True), lo, hi),)

    def gate_graph(self, b, y, lo, hi):
        """The gate lo < x < hi as a boolean value, from the output y (y = lo or hi exactly where clipped)."""
        m = None
        for bound, kind in ((lo, "Greater"), (hi, "Less")):
            if bound:
                c = b.op(kind, [y, bound], dims=b.dims(y), dtype=np.bool_)
                m = c if m is None else b.op("And", [m, c], dims=b.dims(y), dtype=np.bool_)
        return m

    def vjp(self, b, inputs, outputs, grads, wrt):
        ins = list(inputs) + ["", ""]
        gate = self.gate_graph(b, outputs[0], ins[1], ins[2])
        g = grads[0] if gate is None else b.gate(gate, grads[0])
        return [g, None, None][:len(inputs)]

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

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, slope = inputs
        g = grads[0]
        neg = b.op("Less", [x, b.scalar(0, x)], dims=b.dims(x), dtype=np.bool_)
        out = [None, None]
        if 0 in wrt:
            out[0] = b.where(neg, _m(b, g, slope), g, like=x)
        if 1 in wrt:
            out[1] = b.sum_to(b.where(neg, _m(b, g, x), b.scalar(0, g), like=g), slope)
        return out


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

    def vjp(self, b, inputs, outputs, grads, wrt):
        if self.op_type == "Hardmax":
            return [None]
        x, y, g = inputs[0], outputs[0], grads[0]
        rank = b.rank(x)
        axis = self.axis % max(rank, 1)
        axes = list(range(axis, rank)) if self.flatten else [axis]  # the flattened block, or one axis
        kd = tuple(1 if a in axes else d for a, d in enumerate(b.dims(x)))

        def total(v):
            return b.op("ReduceSum", [v, b.ints(axes)], keepdims=1, dims=kd, dtype=b.dtype(v))
        if self.op_type == "Softmax":
            return [_m(b, y, b.op("Sub", [g, total(_m(b, g, y))], like=g))]
        return [b.op("Sub", [g, b.op("Mul", [_u(b, "Exp", y), total(g)], like=y)], like=g)]
