"""Normalizations (inference): BatchNormalization, InstanceNormalization, LRN."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from . import Op, register


def channel_shape(x):
    """Shape that broadcasts a per-channel vector along axis 1 of x."""
    return (1, -1) + (1,) * (x.ndim - 2)


@register("BatchNormalization")
class BatchNormalization(Op):
    """y = (x - mean) / sqrt(var + eps) * scale + bias, as one per-channel affine map y = a x + b."""

    def setup(self, node):
        self.eps = float(node.attr("epsilon", 1e-5))
        if int(node.attr("training_mode", 0)):
            self.unsupported("training_mode=1 (fvgraph runs inference; export the model in eval mode)")
        self._cache = (None, None)

    def affine(self, scale, bias, mean, var):
        key = (scale, bias, mean, var)
        if self._cache[0] is None or any(p is not q for p, q in zip(self._cache[0], key)):
            xp = xp_of(scale)
            a = scale / xp.sqrt(var + var.dtype.type(self.eps))
            self._cache = (key, (a, bias - mean * a))
        return self._cache[1]

    def forward(self, x, scale, bias, mean, var):
        a, b = self.affine(scale, bias, mean, var)
        s = channel_shape(x)
        return (x * a.astype(x.dtype, copy=False).reshape(s) + b.astype(x.dtype, copy=False).reshape(s),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """g times the per-channel scale/sqrt(var + eps): one Mul by a constant when the statistics are."""
        x, scale, bias, mean, var = inputs
        params = [b.constant(v) for v in (scale, bias, mean, var)]
        shape = (-1,) + (1,) * (b.rank(x) - 2)
        if all(p is not None for p in params):
            a, _ = self.affine(*params)
            a = b.const(np.asarray(a, b.dtype(x)).reshape(shape), "bn_scale")
        else:
            root = b.op("Sqrt", [b.op("Add", [var, b.scalar(self.eps, var)], like=var)], like=var)
            a = b.op("Reshape", [b.op("Div", [scale, root], like=scale), b.ints(list(shape))],
                     dims=(b.dims(scale)[0],) + (1,) * (b.rank(x) - 2), dtype=b.dtype(x))
        return [b.mul(grads[0], a, like=x), None, None, None, None]


def conv_parameters(conv, constants, bn=None, bn_kernel=None):
    """(weight, bias or None) of a Conv node from `constants` (name -> array), with the inference
    BatchNormalization node `bn` after it folded in when given, as one Conv. Used by the executor's forward
    fusion and by the lowering's canonization (the pair is one linear layer for relevance)."""
    w = constants[conv.inputs[1]]
    b = constants[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else None
    if bn is None:
        return w, b
    a, shift = bn_kernel.affine(*[constants[v] for v in bn.inputs[1:5]])
    a = a.astype(w.dtype)
    folded_w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    folded_b = shift.astype(w.dtype) + (b * a if b is not None else 0)
    return folded_w, folded_b


@register("InstanceNormalization")
class InstanceNormalization(Op):
    def setup(self, node):
        self.eps = float(node.attr("epsilon", 1e-5))

    def forward(self, x, scale, bias):
        xp = xp_of(x)
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        s = channel_shape(x)
        y = (x - mean) / xp.sqrt(var + x.dtype.type(self.eps)) * scale.reshape(s) + bias.reshape(s)
        return (y.astype(x.dtype, copy=False),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, scale, bias = inputs
        g = grads[0]
        r = b.rank(x)
        axes = b.ints(list(range(2, r)))
        kd = tuple(b.dims(x)[:2]) + (1,) * (r - 2)

        def mean(v):
            return b.op("ReduceMean", [v, axes], keepdims=1, dims=kd, dtype=b.dtype(x))
        centred = b.op("Sub", [x, mean(x)], like=x)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [mean(b.mul(centred, centred)), b.scalar(self.eps, x)],
                                                     dims=kd, dtype=b.dtype(x))], dims=kd, dtype=b.dtype(x))],
                   dims=kd, dtype=b.dtype(x))
        xhat = b.mul(centred, inv, like=x)
        s = b.op("Reshape", [scale, b.ints([-1] + [1] * (r - 2))], dims=(b.dims(x)[1],) + (1,) * (r - 2),
                 dtype=b.dtype(x))
        gh = b.mul(g, s, like=g)
        inner = b.op("Sub", [b.op("Sub", [gh, mean(gh)], like=g), b.mul(xhat, mean(b.mul(gh, xhat)), like=x)], like=g)
        out = [b.mul(inner, inv, like=x) if 0 in wrt else None, None, None]
        every = b.ints([0] + list(range(2, r)))
        if 1 in wrt:
            out[1] = b.op("ReduceSum", [b.mul(g, xhat), every], keepdims=0, like=scale)
        if 2 in wrt:
            out[2] = b.op("ReduceSum", [g, every], keepdims=0, like=bias)
        return out


@register("LRN")
class LRN(Op):
    """y = x / (bias + alpha/size * sum of x^2 over a window of `size` channels) ** beta."""

    def setup(self, node):
        self.size = int(node.attr("size"))
        self.alpha = float(node.attr("alpha", 1e-4))
        self.beta = float(node.attr("beta", 0.75))
        self.bias = float(node.attr("bias", 1.0))

    def window_sum(self, sq):
        """Sum over channels c - floor((size-1)/2) .. c + ceil((size-1)/2), zero outside."""
        lo, hi = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        C = sq.shape[1]
        acc = sq.copy()
        for off in range(1, max(lo, hi) + 1):
            if off <= lo and off < C:  # channel c gets c - off
                acc[:, off:] += sq[:, :C - off]
            if off <= hi and off < C:  # channel c gets c + off
                acc[:, :C - off] += sq[:, off:]
        return acc

    def denominator(self, x):
        t = x.dtype.type
        return t(self.bias) + t(self.alpha / self.size) * self.window_sum(x * x)

    def forward(self, x):
        return (x / self.denominator(x) ** x.dtype.type(self.beta),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """y_c = x_c d_c^-beta with d_c = bias + alpha/size * (window sum of x^2)_c, so
        dx_j = g_j d_j^-beta - 2 beta alpha/size x_j * (adjoint window sum of g x d^(-beta-1))_j.
        Window sums over channels run as a Conv with a kernel of ones along the channel axis."""
        x, g = inputs[0], grads[0]
        c = lambda v: b.scalar(v, x)  # noqa: E731
        d = b.op("Add", [c(self.bias), b.mul(c(self.alpha / self.size), self.window_graph(b, b.mul(x, x), False),
                                             like=x)], like=x)
        u = b.mul(b.mul(g, x, like=g), b.op("Pow", [d, c(-self.beta - 1)], like=x), like=g)
        back = self.window_graph(b, u, True)
        first = b.mul(g, b.op("Pow", [d, c(-self.beta)], like=x), like=g)
        second = b.mul(b.mul(c(2 * self.beta * self.alpha / self.size), x, like=x), back, like=x)
        return [b.op("Sub", [first, second], like=x)]

    def window_graph(self, b, v, adjoint: bool):
        """Sum over channels c - lo .. c + hi (adjoint: c - hi .. c + lo), zero outside."""
        lo, hi = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        if adjoint:
            lo, hi = hi, lo
        d = b.tail(v, 1)
        rest = int(np.prod(d[1:]))
        flat = b.op("Reshape", [v, b.ints([-1, 1, d[0], rest])], dims=(None, 1, d[0], rest), dtype=b.dtype(v))
        ones = b.const(np.ones((1, 1, self.size, 1), b.dtype(v)), "ones")
        summed = b.op("Conv", [flat, ones], dims=(None, 1, d[0], rest), dtype=b.dtype(v), kernel_shape=[self.size, 1],
                      pads=[lo, 0, hi, 0])
        return b.reshape_like(summed, v)
