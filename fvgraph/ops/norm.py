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

    def vjp(self, inputs, outputs, grads, wrt=None):
        x, scale, bias, mean, var = inputs
        a, _ = self.affine(scale, bias, mean, var)
        return [grads[0] * a.astype(x.dtype, copy=False).reshape(channel_shape(x)), None, None, None, None]


def fold_into_conv(w, b, bn: "BatchNormalization", bn_params):
    """Weights and bias of Conv(w, b) followed by inference BatchNormalization, as one Conv. Used by the
    forward fusion and by LRP canonization (the pair is one linear layer for relevance)."""
    a, shift = bn.affine(*bn_params)
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

    def vjp(self, inputs, outputs, grads, wrt=None):
        x, scale, bias = inputs
        axes = tuple(range(2, x.ndim))
        s = channel_shape(x)
        mean = x.mean(axis=axes, keepdims=True)
        inv = 1 / xp_of(x).sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + x.dtype.type(self.eps))
        xhat = (x - mean) * inv
        gh = grads[0] * scale.reshape(s)
        gx = inv * (gh - gh.mean(axis=axes, keepdims=True) - xhat * (gh * xhat).mean(axis=axes, keepdims=True))
        gscale = (grads[0] * xhat).sum(axis=(0,) + axes)
        return [gx.astype(x.dtype, copy=False), gscale, grads[0].sum(axis=(0,) + axes)]


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

    def vjp(self, inputs, outputs, grads, wrt=None):
        x, g = inputs[0], grads[0]
        t = x.dtype.type
        d = self.denominator(x)
        # y_c = x_c d_c^-b;  dy_c/dx_j = d_c^-b [c == j] - 2 b alpha/size x_c x_j d_c^(-b-1) [j in window(c)]
        u = g * x * d ** t(-self.beta - 1)
        # the window is symmetric up to its split; the adjoint sums over channels c whose window holds j
        back = self.transposed_window_sum(u)
        return [g * d ** t(-self.beta) - t(2 * self.beta * self.alpha / self.size) * x * back]

    def transposed_window_sum(self, u):
        """Adjoint of window_sum: channel j collects from channels c with j in window(c)."""
        lo, hi = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        C = u.shape[1]
        acc = u.copy()
        for off in range(1, max(lo, hi) + 1):
            if off <= lo and off < C:  # c got c - off: j = c - off collects from c = j + off
                acc[:, :C - off] += u[:, off:]
            if off <= hi and off < C:  # c got c + off: j = c + off collects from c = j - off
                acc[:, off:] += u[:, :C - off]
        return acc
