"""Normalizations (inference): BatchNormalization, InstanceNormalization, LRN."""
from __future__ import annotations

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
        xp = xp_of(sq)
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
