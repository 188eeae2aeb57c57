"""Normalizations (inference): BatchNormalization, and the statistics-over-axes family (InstanceNormalization,
LayerNormalization, GroupNormalization, which share one forward and one VJP), LRN."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from ..shapes import ShapeUnknown
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

    def check(self, constants):
        params = [self.operand(constants, self.node, k) for k in range(1, 5)]
        shapes = {p.shape for p in params if p is not None}
        if any(p is not None and p.ndim != 1 for p in params) or len(shapes) > 1:
            raise ValueError(f"scale, bias, mean and variance must be vectors of one length, got shapes "
                             f"{[None if p is None else p.shape for p in params]}")
        if any(p is not None and p.dtype.kind != "f" for p in params):
            raise ValueError(f"scale, bias, mean and variance must be floating point, got "
                             f"{[None if p is None else str(p.dtype) for p in params]}")

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


def normalize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over `axes`, with the mean and 1/std (keepdims): the statistics-over-axes
    family's forward, in float32 at least (ONNX's stash_type)."""
    xp = xp_of(x)
    work = x.astype(np.float32) if x.dtype == np.float16 else x
    mean = work.mean(axis=axes, keepdims=True)
    centred = work - mean
    inv = 1 / xp.sqrt((centred * centred).mean(axis=axes, keepdims=True) + work.dtype.type(eps))
    return centred * inv, mean, inv


def normalize_vjp(b, x, gh, axes, eps, detach_variance=False):
    """d/dx of xhat = normalize(x) over `axes` given the gradient gh at xhat (nodes):
    inv * (gh - mean(gh) - xhat * mean(gh * xhat)); with `detach_variance` the 1/std factor is held constant
    (LRP's linearization, Ali et al. 2022): inv * (gh - mean(gh)). Returns (dx, xhat)."""
    kd = tuple(1 if a in axes else d for a, d in enumerate(b.dims(x)))
    ax = b.ints(list(axes))

    def mean(v):
        return b.op("ReduceMean", [v, ax], keepdims=1, dims=kd, dtype=b.dtype(x))
    centred = b.op("Sub", [x, mean(x)], like=x)
    var = b.op("Add", [mean(b.mul(centred, centred)), b.scalar(eps, x)], dims=kd, dtype=b.dtype(x))
    inv = b.op("Reciprocal", [b.op("Sqrt", [var], dims=kd, dtype=b.dtype(x))], dims=kd, dtype=b.dtype(x))
    xhat = b.mul(centred, inv, like=x)
    inner = b.op("Sub", [gh, mean(gh)], like=gh)
    if not detach_variance:
        inner = b.op("Sub", [inner, b.mul(xhat, mean(b.mul(gh, xhat)), like=x)], like=gh)
    return b.mul(inner, inv, like=x), xhat


class StatisticsNorm(Op):
    """Normalize over some axes, then scale and shift: y = xhat * scale + bias. Subclasses say which axes
    (`axes(rank)`), how scale and bias broadcast (`param_shape`) and, for groups, the view the statistics
    are taken on (`view`)."""

    def setup(self, node):
        self.eps = float(node.attr("epsilon", 1e-5))

    def view(self, shape):
        return None  # statistics on x as it is

    def check(self, constants):
        scale, bias = self.operand(constants, self.node, 1), self.operand(constants, self.node, 2)
        if scale is not None and bias is not None and scale.shape != bias.shape:
            raise ValueError(f"scale {scale.shape} and bias {bias.shape} differ in shape")
        if any(p is not None and p.dtype.kind != "f" for p in (scale, bias)):
            raise ValueError("scale and bias must be floating point")

    def forward(self, x, scale, bias=None):
        view = self.view(x.shape)
        xv = x if view is None else x.reshape(view)
        xhat, mean, inv = normalize(xv, self.axes(xv.ndim), self.eps)
        ps = self.param_shape(x.ndim, scale.shape)
        y = xhat.reshape(x.shape) * scale.reshape(ps).astype(xhat.dtype)
        if bias is not None:
            y = y + bias.reshape(ps).astype(xhat.dtype)
        return (y.astype(x.dtype, copy=False), mean, inv)[:max(1, len(self.node.outputs))]

    def vjp(self, b, inputs, outputs, grads, wrt, detach_variance=False):
        x, scale = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
        g = grads[0]

        def broadcast(p):  # a parameter reshaped to broadcast against x (per channel, or the trailing axes)
            ps = self.param_shape(b.rank(x), b.static(p))
            if tuple(ps) == tuple(b.dims(p)):
                return p
            dims = tuple(b.static(p)[0] if d == -1 else d for d in ps)
            return b.op("Reshape", [p, b.ints(list(ps))], dims=dims, dtype=b.dtype(p))
        s = broadcast(scale)
        gh = b.mul(g, s, like=g)
        view = self.view(b.dims(x))
        if view is None:
            xv, ghv = x, gh
        else:
            dims = (b.dims(x)[0],) + tuple(view[1:2]) + (int(np.prod(b.tail(x, 1))) // view[1],)
            xv = b.op("Reshape", [x, b.ints([0, view[1], -1])], dims=dims, dtype=b.dtype(x))
            ghv = b.op("Reshape", [gh, b.ints([0, view[1], -1])], dims=dims, dtype=b.dtype(x))
        dx, xhat = normalize_vjp(b, xv, ghv, self.axes(b.rank(xv)), self.eps, detach_variance)
        if view is not None:
            dx, xhat = b.reshape_like(dx, x), b.reshape_like(xhat, x)
        out = [None] * len(inputs)
        if 0 in wrt:
            out[0] = dx
        if 1 in wrt:
            out[1] = b.reshape_like(b.sum_to(b.mul(g, xhat, like=g), s), scale)
        if bias is not None and 2 in wrt:
            out[2] = b.reshape_like(b.sum_to(g, broadcast(bias)), bias)
        return out

    def vjp_linearized(self, b, inputs, outputs, grads, wrt):
        """LRP's view: the variance held constant (Ali et al. 2022), so the map is linear in x: the centring
        and the scale; the mean keeps its share, which makes the rule conserve."""
        return self.vjp(b, inputs, outputs, grads, wrt, detach_variance=True)


@register("InstanceNormalization")
class InstanceNormalization(StatisticsNorm):
    def axes(self, rank):
        return tuple(range(2, rank))

    def param_shape(self, rank, shape):
        return (1, -1) + (1,) * (rank - 2)


@register("LayerNormalization")
class LayerNormalization(StatisticsNorm):
    """Over the axes from `axis` on; scale and bias broadcast against those trailing axes (opset 17)."""

    def setup(self, node):
        super().setup(node)
        self.axis = int(node.attr("axis", -1))

    def axes(self, rank):
        return tuple(range(self.axis % rank, rank))

    def param_shape(self, rank, shape):
        return tuple(shape)


@register("GroupNormalization")
class GroupNormalization(StatisticsNorm):
    """Channels in `num_groups` groups, each normalized over its channels and space; scale and bias per channel
    (opset 21), or per group (opset 18's form, marked `_per_group` by the importer)."""

    def setup(self, node):
        super().setup(node)
        self.groups = int(node.attr("num_groups"))
        self.per_group = bool(node.attr("_per_group", False))
        if self.groups < 1:
            self.unsupported(f"num_groups={self.groups}")

    def view(self, shape):
        if len(shape) < 2 or shape[1] % self.groups:
            raise ValueError(f"{shape[1] if len(shape) > 1 else '?'} channels do not split into {self.groups} groups")
        return (shape[0], self.groups, -1)

    def axes(self, rank):
        return (2,)

    def param_shape(self, rank, shape):
        return (1, -1) + (1,) * (rank - 2)

    def forward(self, x, scale, bias=None):
        if self.per_group:  # opset 18: one scale per group, repeated over its channels
            k = x.shape[1] // self.groups
            scale, bias = scale.repeat(k), None if bias is None else bias.repeat(k)
        return super().forward(x, scale, bias)

    def vjp(self, b, inputs, outputs, grads, wrt, detach_variance=False):
        if self.per_group:  # the opset-18 form: per-group parameters repeated to per-channel constants
            k = b.static(inputs[0], [1])[0] // self.groups
            params = [b.constant(v) for v in inputs[1:3] if v]
            if any(p is None for p in params) or 1 in wrt or 2 in wrt:
                raise ShapeUnknown(inputs[1])
            inputs = [inputs[0]] + [b.const(np.asarray(p).repeat(k), "group_param") for p in params]
        return super().vjp(b, inputs, outputs, grads, wrt, detach_variance)


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
