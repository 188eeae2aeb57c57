"""Convolution and transposed convolution: im2col on channels-last windows + one matrix product per group.

Depthwise convolutions (one input channel per group) skip the matrix product: a sum over kernel taps of
elementwise products is cheaper than thousands of tiny products.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of
from . import Op, register, upcast_half
from .window import Geometry, channels_last_padded, col2im, ints, to_nchw, windows

COL_BYTES = 8 << 20  # im2col chunk size: large enough for efficient products, small enough to stay in cache


class _ConvBase(Op):
    def setup(self, node):
        self.kernel_shape = node.attr("kernel_shape")
        self.strides = node.attr("strides")
        self.dilations = node.attr("dilations")
        self.pads = node.attr("pads")
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            self.unsupported(f"auto_pad={self.auto_pad!r}")
        self.group = int(node.attr("group", 1))
        self._wcache = (None, None)

    def check(self, constants):
        w = self.operand(constants, self.node, 1)
        if w is None:
            return
        if w.ndim < 3:
            raise ValueError(f"the weight {self.node.inputs[1]!r} has shape {w.shape}: a {self.op_type} weight "
                             "has rank 3 or more (out, in / group, *kernel)")
        nsp = w.ndim - 2
        for name, v in (("kernel_shape", self.kernel_shape), ("strides", self.strides),
                        ("dilations", self.dilations)):
            if v is not None and (len(v) != nsp or any(int(a) < 1 for a in v)):
                raise ValueError(f"{name} {list(v)} does not fit the weight's {nsp} spatial axes {list(w.shape[2:])}")
        if self.kernel_shape is not None and list(self.kernel_shape) != list(w.shape[2:]):
            raise ValueError(f"kernel_shape {list(self.kernel_shape)} does not match the weight's spatial shape "
                             f"{list(w.shape[2:])}")
        if self.pads is not None and (len(self.pads) != 2 * nsp or any(int(p) < 0 for p in self.pads)):
            raise ValueError(f"pads {list(self.pads)} do not fit {nsp} spatial axes (2 non-negative values each)")
        if self.group < 1 or (self.op_type == "Conv" and w.shape[0] % self.group):
            raise ValueError(f"group={self.group} does not divide the weight's {w.shape[0]} output channels")
        b = self.operand(constants, self.node, 2)
        out = w.shape[0] if self.op_type == "Conv" else w.shape[1] * self.group
        if b is not None and b.shape != (out,):
            raise ValueError(f"the bias {self.node.inputs[2]!r} has shape {b.shape}; the layer has {out} output "
                             "channels")

    def _params(self, nsp, kshape):
        k = ints(self.kernel_shape, nsp, kshape) if self.kernel_shape is not None else list(kshape)
        if list(k) != list(kshape):
            raise ValueError(f"kernel_shape {k} does not match the weight's spatial shape {list(kshape)}")
        return k, ints(self.strides, nsp, [1] * nsp), ints(self.dilations, nsp, [1] * nsp)

    def _cached(self, w, make):
        """Weight rearrangements are computed once per weight array (weights are usually constants)."""
        if self._wcache[0] is not w:
            self._wcache = (w, make(w))
        return self._wcache[1]


@register("Conv")
class Conv(_ConvBase):
    def geometry(self, x, w) -> Geometry:
        return self.geometry_of(x.shape[2:], w.shape)

    def weight_matrices(self, w):
        """Per group: (Mg, K*Cg) with columns ordered (kernel taps..., input channel) like the windows."""
        xp = xp_of(w)
        g = self.group
        Mg = w.shape[0] // g
        wt = xp.moveaxis(w, 1, -1)  # (M, *k, Cg)
        return [xp.ascontiguousarray(wt[i * Mg:(i + 1) * Mg].reshape(Mg, -1)) for i in range(g)]

    @upcast_half
    def forward(self, x, w, b=None):
        N, C = x.shape[:2]
        M, Cg = w.shape[:2]
        g = self.group
        if C != Cg * g or M % g:
            raise ValueError(f"input has {C} channels, weight {tuple(w.shape)} with group={g} expects {Cg * g}")
        geo = self.geometry(x, w)
        buf = channels_last_padded(x, geo.pb, geo.pe)
        if g > 1 and Cg == 1:
            y = to_nchw(self._depthwise(buf, w, geo))
        else:
            y = self._gemm(buf, w, geo)
        if b is not None:
            y += b.astype(y.dtype, copy=False).reshape((1, -1) + (1,) * (y.ndim - 2))
        return (y,)

    def _gemm(self, buf, w, geo):
        """y[n] (M, L) = W (M, K*C) @ col[n]^T, col[n] (L, K*C) gathered channels-last. This orientation
        (output rows = channels, so y comes out NCHW) ran 1.2-1.7x faster than col @ W^T in OpenBLAS on the
        ResNet-18 layer shapes (benchmarks/forward.py)."""
        xp = xp_of(buf)
        N, C = buf.shape[0], buf.shape[-1]
        M, g = w.shape[0], self.group
        Cg, Mg = C // g, M // g
        L = math.prod(geo.out)
        wm = self._cached(w, self.weight_matrices)
        pointwise = geo.ktotal == 1 and all(s == 1 for s in geo.s)
        win = buf if pointwise else windows(buf, geo)
        y = xp.empty((N, M, *geo.out), dtype=buf.dtype)
        row = L // geo.out[0]  # output positions per row of the first spatial axis
        per_sample = L * geo.ktotal * Cg * buf.itemsize
        if N > 1 and per_sample * 2 <= COL_BYTES:  # small maps (occlusion windows): several samples per product
            step = max(1, COL_BYTES // per_sample)
            for n0 in range(0, N, step):
                n1 = min(N, n0 + step)
                for gi in range(g):
                    cs = slice(gi * Cg, (gi + 1) * Cg)
                    col = xp.ascontiguousarray(win[n0:n1, ..., cs]).reshape((n1 - n0) * L, -1)
                    part = (wm[gi] @ col.T).reshape(Mg, n1 - n0, *geo.out)
                    y[n0:n1, gi * Mg:(gi + 1) * Mg] = xp.moveaxis(part, 1, 0)
            return y
        rows = max(1, COL_BYTES // max(row * geo.ktotal * Cg * buf.itemsize, 1))  # im2col chunk stays cached
        for n in range(N):
            yn = y[n].reshape(M, L)
            for r0 in range(0, geo.out[0], rows):
                r1 = min(geo.out[0], r0 + rows)
                cols = slice(r0 * row, r1 * row)
                for gi in range(g):
                    cs = slice(gi * Cg, (gi + 1) * Cg)
                    col = xp.ascontiguousarray(win[n, r0:r1, ..., cs]).reshape((r1 - r0) * row, -1)
                    if g == 1:
                        xp.matmul(wm[0], col.T, out=yn[:, cols])
                    else:
                        yn[gi * Mg:(gi + 1) * Mg, cols] = wm[gi] @ col.T
        return y

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Gradient w.r.t. the input (weights are constants: explanations never need their gradient).

        - stride 1, constant weights: a Conv of the gradient with the flipped, in/out-swapped weights
          (pads k-1-p); 20% faster than ConvTranspose in onnxruntime on VGG-16's layers;
        - otherwise: ConvTranspose with the conv's own weights and the output_padding that restores x's size.
          Measured against it in onnxruntime and dropped: zeros inserted between the gradient's elements and
          a stride-1 Conv (1.1-5x slower on EfficientNet's strided depthwise layers), and the polyphase form
          (one Conv per phase of the stride, then DepthToSpace: faster on ResNet's stem, 1.5x slower on its
          deeper layers and up to 5x slower for depthwise).
        """
        out = [None] * len(inputs)
        if 0 not in wrt:
            return out
        x, w, g = inputs[0], inputs[1], grads[0]
        geo = self.geometry_of(b.tail(x, 2), b.static(w))
        wv = b.constant(w)
        nsp = len(geo.k)
        H = b.tail(x, 2)
        if wv is not None and all(st == 1 for st in geo.s):
            g, pads = _padded(b, g, [ke - 1 - pb for ke, pb in zip(geo.keff, geo.pb)],
                              [ke - 1 - pe for ke, pe in zip(geo.keff, geo.pe)])
            wt = b.derived(wv, "adjoint", lambda a: adjoint_weights(a, self.group))
            out[0] = b.op("Conv", [g, wt], like=x, kernel_shape=list(geo.k), strides=[1] * nsp,
                          dilations=list(geo.d), group=self.group, pads=pads)
            return out
        op = [(h + pb + pe - ke) % st for h, pb, pe, ke, st in zip(H, geo.pb, geo.pe, geo.keff, geo.s)]
        out[0] = b.op("ConvTranspose", [g, w], like=x, kernel_shape=list(geo.k), strides=list(geo.s),
                      dilations=list(geo.d), group=self.group, pads=list(geo.pb) + list(geo.pe), output_padding=op)
        return out

    def geometry_of(self, in_sp, wshape) -> Geometry:
        k, s, d = self._params(len(in_sp), wshape[2:])
        return Geometry(in_sp, k, s, d, self.pads, self.auto_pad)


    def _depthwise(self, buf, w, geo):
        """groups == channels: y[..., c, j] = sum over taps of window[..., tap, c] * w[c*mult + j, 0, tap],
        one einsum over the window view (one pass; 1.5x faster than a loop over taps here)."""
        xp = xp_of(buf)
        C = buf.shape[-1]
        mult = w.shape[0] // C
        nsp = len(geo.out)
        wt = self._cached(w, lambda w: xp.ascontiguousarray(
            xp.moveaxis(w.reshape(C, mult, *geo.k), (0, 1), (-2, -1))))  # (*k, C, mult)
        sp, ks = "hwdHWD"[:nsp], "ijkIJK"[:nsp]
        y = xp.einsum(f"n{sp}{ks}c,{ks}cm->n{sp}cm", windows(buf, geo), wt)
        return y.reshape(buf.shape[0], *geo.out, C * mult)


@register("ConvTranspose")
class ConvTranspose(_ConvBase):
    def setup(self, node):
        super().setup(node)
        self.output_padding = node.attr("output_padding")
        self.output_shape = node.attr("output_shape")

    def geometry(self, x, w):
        return self.geometry_from(x.shape[2:], w.shape)

    def geometry_from(self, in_sp, wshape):
        """Pads and output size of the transposed conv; the returned Geometry describes the *forward* conv
        whose adjoint this is (input = the padded output, output = x's spatial size)."""
        nsp = len(in_sp)
        k, s, d = self._params(nsp, wshape[2:])
        in_sp = list(in_sp)
        op = ints(self.output_padding, nsp, [0] * nsp)
        keff = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
        full = [(i - 1) * ss + ke + o for i, ss, ke, o in zip(in_sp, s, keff, op)]
        if self.output_shape is not None:
            out = list(self.output_shape)[-nsp:]
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = [i * ss for i, ss in zip(in_sp, s)]
        else:
            out = None
        if out is not None:
            total = [f - o for f, o in zip(full, out)]  # negative: the output extends past it with zeros
            half = [int(t / 2) for t in total]
            rest = [t - h for t, h in zip(total, half)]
            pb, pe = (rest, half) if self.auto_pad == "SAME_LOWER" else (half, rest)
        else:
            pads = [0] * (2 * nsp) if self.auto_pad == "VALID" or self.pads is None else list(self.pads)
            pb, pe = pads[:nsp], pads[nsp:]
            out = [f - b - e for f, b, e in zip(full, pb, pe)]
        geo = Geometry.__new__(Geometry)
        geo.k, geo.s, geo.d, geo.keff, geo.out = k, s, d, keff, in_sp
        geo.pb, geo.pe, geo.extra = pb, pe, [0] * nsp
        return geo, full, out

    @upcast_half
    def forward(self, x, w, b=None):
        xp = xp_of(x, w)
        N, C = x.shape[:2]
        g = self.group
        Cg, Mg = C // g, w.shape[1]
        if w.shape[0] != C or C % g:
            raise ValueError(f"input has {C} channels, weight {tuple(w.shape)} with group={g} does not fit")
        geo, full, out = self.geometry(x, w)
        x_cl = xp.moveaxis(x, 1, -1)
        L = math.prod(x.shape[2:])
        ys = []
        for gi in range(g):
            wg = xp.moveaxis(w[gi * Cg:(gi + 1) * Cg], 1, -1).reshape(Cg, -1)  # (Cg, K*Mg)
            cols = (x_cl[..., gi * Cg:(gi + 1) * Cg].reshape(N * L, Cg) @ wg).reshape(
                N, *geo.out, *geo.k, Mg)
            ys.append(col2im(cols, geo, full, x.dtype))
        y = ys[0] if g == 1 else xp.concatenate(ys, axis=-1)
        grow = [(max(-b, 0), max(b + o - f, 0)) for b, o, f in zip(geo.pb, out, full)]
        if any(a or c for a, c in grow):
            y = xp.pad(y, [(0, 0), *grow, (0, 0)])
        crop = (slice(None), *[slice(b + g[0], b + g[0] + o) for b, o, g in zip(geo.pb, out, grow)], slice(None))
        y = y[crop]
        if b is not None:
            y = y + b.astype(y.dtype, copy=False)
        return (to_nchw(y),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """The adjoint of a transposed convolution is the convolution with the same weights: the gradient
        padded (or cropped) back to the full col2im extent, then a strided Conv."""
        out = [None] * len(inputs)
        if 0 not in wrt:
            return out
        x, w, g = inputs[0], inputs[1], grads[0]
        geo, full, size = self.geometry_from(b.tail(x, 2), b.static(w))
        g, pads = _padded(b, g, list(geo.pb), [f - pb - o for f, pb, o in zip(full, geo.pb, size)])
        out[0] = b.op("Conv", [g, w], like=x, kernel_shape=list(geo.k), strides=list(geo.s),
                      dilations=list(geo.d), group=self.group, pads=pads)
        return out


def adjoint_weights(w, group):
    """Weights of the adjoint correlation: W'[gi*Cg + c, m, t] = W[gi*Mg + m, c, flipped t]."""
    M, Cg = w.shape[:2]
    Mg = M // group
    flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)]
    return np.ascontiguousarray(
        flipped.reshape(group, Mg, Cg, *w.shape[2:]).swapaxes(1, 2).reshape(group * Cg, Mg, *w.shape[2:]))


def _padded(b, g, begin, end):
    """Signed pads of g's spatial axes for a Conv: (g with the negative ones cropped by a Slice, the Conv's
    `pads` for the positive ones)."""
    pads = [max(p, 0) for p in begin] + [max(p, 0) for p in end]
    cut_b, cut_e = [max(-p, 0) for p in begin], [max(-p, 0) for p in end]
    if not any(cut_b) and not any(cut_e):
        return g, pads
    d = b.tail(g, 2)
    stops = [n - e for n, e in zip(d, cut_e)]
    dims = b.dims(g)[:2] + tuple(s_ - a for s_, a in zip(stops, cut_b))
    g = b.op("Slice", [g, b.ints(cut_b), b.ints(stops), b.ints(list(range(2, 2 + len(d))))], dims=dims,
             dtype=b.dtype(g))
    return g, pads
