"""Sliding windows shared by convolution and pooling (and their VJPs).

Spatial ops work on a channels-last copy of the input, (N, *spatial, C): a window view of it is
(N, *out, *kernel, C) with C innermost, so im2col is a copy of contiguous channel runs (3-10x faster than
gathering from NCHW). Convolution outputs come out NCHW (see Conv._gemm for why); pooling outputs are
NCHW views of channels-last memory, which NumPy's elementwise ops keep ('K' order).
"""
from __future__ import annotations

import itertools
import math

from ..backend import xp_of


def ints(v, n, default):
    v = default if v is None else v
    return [int(a) for a in v] if len(v) == n else [int(v[0])] * n if len(v) == 1 else list(map(int, v))


class Geometry:
    """Output size and padding of a windowed op along each spatial axis (ONNX rules, ceil_mode included)."""

    def __init__(self, in_sp, kernel, strides, dilations, pads, auto_pad, ceil_mode=False):
        n = len(in_sp)
        self.k, self.s, self.d = list(kernel), list(strides), list(dilations)
        self.keff = [(k - 1) * d + 1 for k, d in zip(self.k, self.d)]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            self.out = [-(-i // s) for i, s in zip(in_sp, self.s)]
            total = [max((o - 1) * s + ke - i, 0) for o, s, ke, i in zip(self.out, self.s, self.keff, in_sp)]
            small = [t // 2 for t in total]
            big = [t - t // 2 for t in total]
            self.pb, self.pe = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        else:
            if auto_pad == "VALID":
                pads = [0] * (2 * n)
            pads = list(pads) if pads is not None else [0] * (2 * n)
            self.pb, self.pe = pads[:n], pads[n:]
            span = [i + b + e - ke for i, b, e, ke in zip(in_sp, self.pb, self.pe, self.keff)]
            if any(sp < 0 for sp in span):
                raise ValueError(f"kernel {self.k} (dilated {self.keff}) is larger than the padded input {list(in_sp)}")
            if ceil_mode:
                out = [-(-sp // s) + 1 for sp, s in zip(span, self.s)]
                # the last window must start inside the input or the left padding
                self.out = [o - 1 if (o - 1) * s >= i + b else o for o, s, i, b in zip(out, self.s, in_sp, self.pb)]
            else:
                self.out = [sp // s + 1 for sp, s in zip(span, self.s)]
        # extra right padding needed by ceil_mode windows that run past the explicit padding
        self.extra = [max((o - 1) * s + ke - (i + b + e), 0)
                      for o, s, ke, i, b, e in zip(self.out, self.s, self.keff, in_sp, self.pb, self.pe)]
        if any(o <= 0 for o in self.out):
            raise ValueError(f"output size {self.out} is empty for input {list(in_sp)}")

    @property
    def taps(self):
        return itertools.product(*[range(k) for k in self.k])

    @property
    def ktotal(self):
        return math.prod(self.k)


def channels_last_padded(x, pb, pe, fill=0.0):
    """(N, C, *sp) in any layout -> contiguous (N, *sp padded, C), borders set to `fill`."""
    xp = xp_of(x)
    x_cl = xp.moveaxis(x, 1, -1)
    if not any(pb) and not any(pe):
        return xp.ascontiguousarray(x_cl)
    shape = (x.shape[0], *[s + b + e for s, b, e in zip(x.shape[2:], pb, pe)], x.shape[1])
    buf = xp.zeros(shape, x.dtype) if fill == 0 else xp.full(shape, fill, x.dtype)
    buf[(slice(None), *[slice(b, b + s) for b, s in zip(pb, x.shape[2:])], slice(None))] = x_cl
    return buf


def windows(buf, geo: Geometry):
    """View (N, *out, *kernel, C) of a channels-last padded buffer (N, *P, C)."""
    xp = xp_of(buf)
    n = len(geo.out)
    st = buf.strides
    shape = (buf.shape[0], *geo.out, *geo.k, buf.shape[-1])
    strides = (st[0], *[st[1 + i] * geo.s[i] for i in range(n)], *[st[1 + i] * geo.d[i] for i in range(n)], st[-1])
    return xp.lib.stride_tricks.as_strided(buf, shape=shape, strides=strides)


def tap_view(buf, geo: Geometry, tap):
    """The strided view (N, *out, C) of one kernel tap: what that tap sees at every output position."""
    idx = [slice(None)]
    for t, s, d, o in zip(tap, geo.s, geo.d, geo.out):
        idx.append(slice(t * d, t * d + s * (o - 1) + 1, s))
    idx.append(slice(None))
    return buf[tuple(idx)]


def col2im(cols, geo: Geometry, full_shape, dtype):
    """Adjoint of `windows`: scatter-add cols (N, *out, *kernel, C) into a zero buffer (N, *full, C)."""
    xp = xp_of(cols)
    out = xp.zeros((cols.shape[0], *full_shape, cols.shape[-1]), dtype)
    n = len(geo.out)
    for tap in geo.taps:
        tap_view(out, geo, tap)[...] += cols[(slice(None),) * (1 + n) + tuple(tap)]
    return out


def to_nchw(y_cl):
    """Channels-last result (N, *sp, C) as an NCHW view (no copy)."""
    return xp_of(y_cl).moveaxis(y_cl, -1, 1)
