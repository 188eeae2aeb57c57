"""Convolution and transposed convolution: im2col on channels-last windows + one matrix product per group.

Depthwise convolutions (one input channel per group) skip the matrix product: a sum over kernel taps of
elementwise products is cheaper than thousands of tiny products.
"""
from __future__ import annotations

import math

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


def _tap_slices(geo, tap):
    """Spatial slices of the padded input that one kernel tap reads at every output position."""
    return tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, s, d, o in zip(tap, geo.s, geo.d, geo.out))


@register("Conv")
class Conv(_ConvBase):
    def geometry(self, x, w) -> Geometry:
        nsp = x.ndim - 2
        k, s, d = self._params(nsp, w.shape[2:])
        return Geometry(x.shape[2:], k, s, d, self.pads, self.auto_pad)

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

    def _gemm(self, buf, w, geo, matrices=None):
        """y[n] (M, L) = W (M, K*C) @ col[n]^T, col[n] (L, K*C) gathered channels-last. This orientation
        (output rows = channels, so y comes out NCHW) ran 1.2-1.7x faster than col @ W^T in OpenBLAS on the
        ResNet-18 layer shapes (benchmarks/forward.py)."""
        xp = xp_of(buf)
        N, C = buf.shape[0], buf.shape[-1]
        M, g = w.shape[0], self.group
        Cg, Mg = C // g, M // g
        L = math.prod(geo.out)
        wm = self._cached(w, self.weight_matrices) if matrices is None else matrices
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

    def vjp(self, inputs, outputs, grads, wrt=None):
        """Gradient w.r.t. the input (weights are constants here: explanations never need their gradient).
        Stride 1: a correlation of the gradient with the flipped, transposed weights, through the same fast
        path as the forward pass. Strided: the adjoint of im2col (col2im)."""
        x, w = inputs[0], inputs[1]
        g = grads[0]
        if g.dtype == "float16":
            g, x, w = g.astype("float32"), x.astype("float32"), w.astype("float32")
        geo = self.geometry(x, w)
        gx = self._input_grad(g, x, w, geo)
        return [gx.astype(inputs[0].dtype, copy=False), None, None][:len(inputs)]

    def _input_grad(self, g, x, w, geo):
        xp = xp_of(g)
        C, g_ = x.shape[1], self.group
        depthwise = g_ > 1 and w.shape[1] == 1
        if all(s == 1 for s in geo.s) and not depthwise:
            pb = [(k - 1) * d - b for k, d, b in zip(geo.k, geo.d, geo.pb)]
            pe = [i - 1 + ke - o - p for i, ke, o, p in zip(x.shape[2:], geo.keff, geo.out, pb)]
            if all(p >= 0 for p in pb + pe):
                back = Geometry(g.shape[2:], geo.k, geo.s, geo.d, pb + pe, "NOTSET")
                wt, wt_matrices = self._cached_transposed(w)
                buf = channels_last_padded(g, back.pb, back.pe)
                return self._gemm(buf, wt, back, matrices=wt_matrices)
        # col2im (strided convs): per sample gcol (C*K, L) = W^T (C*K, M) @ g (M, L), added back tap by tap.
        # NCHW here: each tap's rows are contiguous runs of the output width (channels-last would make the
        # inner loop as short as C, which is 3 at the first layer).
        N, M = g.shape[:2]
        Cg, Mg = C // g_, M // g_
        P = [i + b + e for i, b, e in zip(x.shape[2:], geo.pb, geo.pe)]
        buf = xp.zeros((N, C, *P), g.dtype)
        L = math.prod(geo.out)
        if depthwise:
            mult = M // C
            wt = w.reshape(C, mult, -1)
            gm = g.reshape(N, C, mult, *geo.out)
            for t, tap in enumerate(geo.taps):
                contrib = xp.einsum("ncm...,cm->nc...", gm, wt[:, :, t])
                buf[(slice(None), slice(None)) + _tap_slices(geo, tap)] += contrib
        else:
            for n in range(N):
                for gi in range(g_):
                    wg = w[gi * Mg:(gi + 1) * Mg].reshape(Mg, -1)  # (Mg, Cg*K), columns (c, taps...)
                    cols = (wg.T @ g[n, gi * Mg:(gi + 1) * Mg].reshape(Mg, L)).reshape(Cg, *geo.k, *geo.out)
                    view = buf[n, gi * Cg:(gi + 1) * Cg]
                    for tap in geo.taps:
                        view[(slice(None),) + _tap_slices(geo, tap)] += cols[(slice(None),) + tuple(tap)]
        crop = (slice(None), slice(None)) + tuple(slice(b, b + i) for b, i in zip(geo.pb, x.shape[2:]))
        return buf[crop]

    def _cached_transposed(self, w):
        """Weights of the adjoint correlation: W'[gi*Cg + c, m, t] = W[gi*Mg + m, c, flipped t]."""
        if getattr(self, "_tcache", (None,))[0] is not w:
            xp = xp_of(w)
            g = self.group
            M, Cg = w.shape[:2]
            Mg = M // g
            flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)]
            wt = xp.ascontiguousarray(
                flipped.reshape(g, Mg, Cg, *w.shape[2:]).swapaxes(1, 2).reshape(g * Cg, Mg, *w.shape[2:]))
            self._tcache = (w, (wt, self.weight_matrices(wt)))
        return self._tcache[1]

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
        """Pads and output size of the transposed conv; the returned Geometry describes the *forward* conv
        whose adjoint this is (input = the padded output, output = x's spatial size)."""
        nsp = x.ndim - 2
        k, s, d = self._params(nsp, w.shape[2:])
        in_sp = list(x.shape[2:])
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

    def vjp(self, inputs, outputs, grads, wrt=None):
        """Adjoint of col2im + product: windows of the (uncropped) gradient times the weights."""
        x, w = inputs[0], inputs[1]
        xp = xp_of(grads[0])
        g = grads[0].astype("float32") if grads[0].dtype == "float16" else grads[0]
        geo, full, out = self.geometry(x, w)
        N, C = x.shape[:2]
        gr, Mg = self.group, w.shape[1]
        Cg = C // gr
        g_cl = xp.moveaxis(g, 1, -1)
        buf = xp.zeros((N, *full, g.shape[1]), g.dtype)
        n = [min(o - max(-b, 0), f - max(b, 0)) for b, o, f in zip(geo.pb, out, full)]
        src = [slice(max(-b, 0), max(-b, 0) + k) for b, k in zip(geo.pb, n)]
        dst = [slice(max(b, 0), max(b, 0) + k) for b, k in zip(geo.pb, n)]
        buf[(slice(None), *dst, slice(None))] = g_cl[(slice(None), *src, slice(None))]
        win = windows(buf, geo)  # (N, *in, *k, M)
        L = math.prod(x.shape[2:])
        gx = xp.empty((N, *x.shape[2:], C), g.dtype)
        for gi in range(gr):
            wg = xp.moveaxis(w[gi * Cg:(gi + 1) * Cg], 1, -1).reshape(Cg, -1)  # (Cg, K*Mg)
            cols = xp.ascontiguousarray(win[..., gi * Mg:(gi + 1) * Mg]).reshape(N * L, -1)
            gx[..., gi * Cg:(gi + 1) * Cg] = (cols @ wg.T).reshape(N, *x.shape[2:], Cg)
        return [xp.ascontiguousarray(to_nchw(gx)).astype(x.dtype, copy=False), None, None][:len(inputs)]
