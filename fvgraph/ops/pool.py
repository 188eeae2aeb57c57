"""Pooling: a reduction over kernel taps of strided views of the channels-last padded input."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from . import Op, register
from .window import Geometry, channels_last_padded, ints, tap_view, to_nchw


class _PoolBase(Op):
    def setup(self, node):
        self.k = node.attr("kernel_shape")
        if self.k is None:
            self.unsupported("kernel_shape is required")
        n = len(self.k)
        self.s = ints(node.attr("strides"), n, [1] * n)
        self.d = ints(node.attr("dilations"), n, [1] * n)
        self.pads = node.attr("pads")
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        self.ceil_mode = bool(node.attr("ceil_mode", 0))

    def check(self, constants):
        n = len(self.k)
        if n < 1 or any(int(a) < 1 for a in self.k) or any(int(a) < 1 for a in self.s) or \
                any(int(a) < 1 for a in self.d):
            raise ValueError(f"kernel_shape {list(self.k)}, strides {list(self.s)} and dilations {list(self.d)} must "
                             "be positive")
        if self.pads is not None and (len(self.pads) != 2 * n or any(int(p) < 0 for p in self.pads)):
            raise ValueError(f"pads {list(self.pads)} do not fit kernel_shape {list(self.k)} (2 values per axis)")
        if self.pads is not None and any(int(p) >= int(k) for p, k in zip(list(self.pads), list(self.k) * 2)):
            raise ValueError(f"pads {list(self.pads)} reach a whole kernel ({list(self.k)}) beyond the input")

    def geometry(self, x) -> Geometry:
        return self.geometry_of(x.shape)

    def geometry_of(self, shape) -> Geometry:
        if len(shape) - 2 != len(self.k):
            raise ValueError(f"kernel_shape {self.k} needs a rank-{len(self.k) + 2} input, got shape {tuple(shape)}")
        return Geometry(shape[2:], self.k, self.s, self.d, self.pads, self.auto_pad, self.ceil_mode)


@register("MaxPool")
class MaxPool(_PoolBase):
    def setup(self, node):
        super().setup(node)
        self.storage_order = int(node.attr("storage_order", 0))

    def forward(self, x):
        want_indices = len(self.node.outputs) > 1 and bool(self.node.outputs[1])
        y, _ = self.pool(x, with_argmax=want_indices, indices=want_indices)
        return y

    def pool(self, x, with_argmax=False, indices=False):
        """Returns ((y, indices?), argmax tap per output); the tap index serves the VJP's routing, the
        flat ONNX Indices output is only computed when asked for."""
        xp = xp_of(x)
        geo = self.geometry(x)
        lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        buf = channels_last_padded(x, geo.pb, [e + x_ for e, x_ in zip(geo.pe, geo.extra)], fill=lowest)
        acc = best = None
        for t, tap in enumerate(geo.taps):
            v = tap_view(buf, geo, tap)
            if acc is None:
                acc = v.copy()
                best = xp.zeros(acc.shape, np.int16) if with_argmax else None
                continue
            if with_argmax:  # the first maximum wins ties, as in onnxruntime; arithmetic select (3x faster
                better = v > acc  # than masked assignment here)
                best -= better * (best - np.int16(t))
            xp.maximum(acc, v, out=acc)
        y = to_nchw(acc)
        if not indices:
            return (y,), best
        return (y, self.flat_indices(x.shape, geo, best)), best

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Route each output's gradient to the input that won the max (the forward switches): the pool's own
        Indices output (flat positions in x) and ScatterElements with reduction="add" (windows may overlap)."""
        x, g = inputs[0], grads[0]
        indices = b.extra_output(self.node, 1, dims=b.dims(outputs[0]), dtype=np.int64)
        flat = b.ints([-1])
        size = b.op("Reshape", [b.op("Size", [x], dims=(), dtype=np.int64), flat], dims=(None,), dtype=np.int64)
        zeros = b.op("ConstantOfShape", [size], dims=(None,), dtype=b.dtype(g),
                     value=np.zeros(1, dtype=b.dtype(g)))
        spread = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat], dims=(None,), dtype=np.int64),
                                          b.op("Reshape", [g, flat], dims=(None,), dtype=b.dtype(g))],
                      dims=(None,), dtype=b.dtype(g), axis=0, reduction="add")
        return [b.reshape_like(spread, x)]

    def flat_indices(self, shape, geo, best):
        """ONNX Indices: flat position of each maximum in the unpadded input (row- or column-major)."""
        xp = xp_of(best)
        N, C, *sp = shape
        taps = np.array(list(geo.taps), dtype=np.int64)  # (K, nsp)
        best_cl = to_nchw(best).astype(np.int64)  # (N, C, *out)
        coords = []
        for a in range(len(sp)):
            o = xp.arange(geo.out[a], dtype=np.int64).reshape([-1 if i == a else 1 for i in range(len(sp))])
            coords.append(o * geo.s[a] - geo.pb[a] + xp.asarray(taps[:, a])[best_cl] * geo.d[a])
        n = xp.arange(N, dtype=np.int64).reshape([N] + [1] * (len(sp) + 1))
        c = xp.arange(C, dtype=np.int64).reshape([1, C] + [1] * len(sp))
        order = range(len(sp)) if self.storage_order == 0 else range(len(sp) - 1, -1, -1)
        idx_sp = 0
        for a in order:  # row-major: last axis fastest; column-major: first axis fastest
            idx_sp = idx_sp * sp[a] + coords[a]
        idx = (n * C + c) * int(np.prod(sp)) + idx_sp
        return idx


@register("AveragePool")
class AveragePool(_PoolBase):
    def setup(self, node):
        super().setup(node)
        self.count_include_pad = bool(node.attr("count_include_pad", 0))

    def divisor(self, xp, in_sp, geo, dtype):
        """Per output position: how many window elements count (explicit pads too when count_include_pad,
        never the extra right padding that ceil_mode adds). Shape (1, *out, 1) for channels-last values."""
        if not any(geo.pb) and not any(geo.pe) and not any(geo.extra):
            return dtype.type(geo.ktotal)
        if self.count_include_pad:
            shape = [i + b + e for i, b, e in zip(in_sp, geo.pb, geo.pe)]
            mask = np.pad(np.ones(shape, dtype), [(0, x) for x in geo.extra])
        else:
            mask = np.pad(np.ones(in_sp, dtype), [(b, e + x) for b, e, x in zip(geo.pb, geo.pe, geo.extra)])
        m = mask[None, ..., None]
        cnt = sum(tap_view(m, geo, tap) for tap in geo.taps)
        return xp.asarray(cnt)

    def forward(self, x):
        xp = xp_of(x)
        geo = self.geometry(x)
        buf = channels_last_padded(x, geo.pb, [e + x_ for e, x_ in zip(geo.pe, geo.extra)])  # zeros
        acc = None
        for tap in geo.taps:
            v = tap_view(buf, geo, tap)
            acc = v.copy() if acc is None else xp.add(acc, v, out=acc)
        acc /= self.divisor(xp, x.shape[2:], geo, x.dtype)
        return (to_nchw(acc),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Each output's gradient, divided by its window's count, spread back over the window: one
        single-channel ConvTranspose with a kernel of ones, on (N*C, 1, *out)."""
        x, g = inputs[0], grads[0]
        xd = b.tail(x, 1)
        geo = self.geometry_of((1,) + tuple(xd))
        nsp = len(geo.k)
        div = self.divisor(np, xd[1:], geo, b.dtype(g))
        if np.ndim(div):
            div = np.asarray(div).reshape(geo.out)
        share = b.op("Div", [g, b.const(np.asarray(div, b.dtype(g)))], like=g)
        flat = b.op("Reshape", [share, b.ints([-1, 1] + geo.out)], dims=(None, 1, *geo.out), dtype=b.dtype(g))
        ends = [(o - 1) * st + ke - pb - h for o, st, ke, pb, h in zip(geo.out, geo.s, geo.keff, geo.pb, xd[1:])]
        ones = b.const(np.ones((1, 1, *geo.k), b.dtype(g)), "ones")
        spread = b.op("ConvTranspose", [flat, ones], dims=(None, 1, *xd[1:]), dtype=b.dtype(g),
                      kernel_shape=list(geo.k), strides=list(geo.s), dilations=list(geo.d),
                      pads=list(geo.pb) + [max(e, 0) for e in ends], output_padding=[max(-e, 0) for e in ends])
        return [b.reshape_like(spread, x)] if nsp else [None]


@register("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Op):
    def forward(self, x):
        xp = xp_of(x)
        axes = tuple(range(2, x.ndim))
        f = xp.mean if self.op_type == "GlobalAveragePool" else xp.max
        return (f(x, axis=axes, keepdims=True).astype(x.dtype, copy=False),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        x, y, g = inputs[0], outputs[0], grads[0]
        if self.op_type == "GlobalAveragePool":
            count = int(np.prod(b.tail(x, 2)))
            share = b.op("Div", [g, b.scalar(count, g)], like=g)
            return [b.op("Expand", [share, b.shape_of(x)], like=x)]
        # to the maxima, split evenly among ties
        hit = b.cast(b.op("Equal", [x, y], dims=b.dims(x), dtype=np.bool_), b.dtype(x))
        total = b.op("ReduceSum", [hit, b.ints(list(range(2, b.rank(x))))], keepdims=1, like=y)
        return [b.mul(hit, b.op("Div", [g, total], like=g), like=x)]
