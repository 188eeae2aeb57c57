"""Resize (and Upsample, which the importer rewrites to Resize): separable sampling, one axis at a time.

Each resized axis becomes a small table of source indices and weights (1 tap for nearest, 2 for linear,
4 for cubic); the output is the weighted sum of gathered slices. Separability is exact for these modes.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import host_ints, to_host, xp_of
from ..shapes import ShapeUnknown
from . import Op, matmul_along, register

COORD_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
               "half_pixel_symmetric", "tf_crop_and_resize")


@register("Resize")
class Resize(Op):
    def setup(self, node):
        self.mode = node.attr("mode", "nearest")
        self.coord = node.attr("coordinate_transformation_mode", "half_pixel")
        self.nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
        self.cubic_a = float(node.attr("cubic_coeff_a", -0.75))
        self.exclude_outside = bool(node.attr("exclude_outside", 0))
        self.extrapolation = float(node.attr("extrapolation_value", 0.0))
        self.axes_attr = node.attr("axes")
        self.policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if self.mode not in ("nearest", "linear", "cubic"):
            self.unsupported(f"mode={self.mode!r}")
        if self.coord not in COORD_MODES:
            self.unsupported(f"coordinate_transformation_mode={self.coord!r}")
        if int(node.attr("antialias", 0)):
            self.unsupported("antialias=1")
        if self.nearest_mode not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            self.unsupported(f"nearest_mode={self.nearest_mode!r}")
        if self.policy not in ("stretch", "not_larger", "not_smaller"):
            self.unsupported(f"keep_aspect_ratio_policy={self.policy!r}")

    def plan(self, shape, roi, scales, sizes, out_dims=None):
        """Per axis: (output size, scale, roi start, roi end). out_dims: the output's dims, standing in for
        sizes computed at run time (the reverse pass reads them from the graph's shapes)."""
        r = len(shape)
        axes = [a % r for a in self.axes_attr] if self.axes_attr is not None else list(range(r))
        full_scale, out = [1.0] * r, list(shape)
        roi_v = [float(v) for v in np.asarray(to_host(roi)).reshape(-1)] if roi is not None and roi.size else []
        start, end = [0.0] * r, [1.0] * r
        if roi_v:
            for k, a in enumerate(axes):
                start[a], end[a] = roi_v[k], roi_v[k + len(axes)]
        if (sizes is not None and sizes.size) or out_dims is not None:
            s = None
            if sizes is not None and sizes.size:
                sz = host_ints(sizes)
                if self.policy != "stretch":
                    ratios = [sz[k] / shape[a] for k, a in enumerate(axes)]
                    s = min(ratios) if self.policy == "not_larger" else max(ratios)
            else:
                sz = [int(out_dims[a]) for a in axes]
                if self.policy != "stretch":
                    s = self.common_scale(shape, sz, axes)
            if s is not None:
                sz = [int(math.floor(s * shape[a] + 0.5)) for a in axes]
                for a in axes:
                    full_scale[a] = s
            for k, a in enumerate(axes):
                out[a] = sz[k]
                if s is None:
                    full_scale[a] = sz[k] / shape[a]
        elif scales is not None and scales.size:
            sc = [float(v) for v in np.asarray(to_host(scales)).reshape(-1)]
            for k, a in enumerate(axes):
                full_scale[a] = sc[k]
                out[a] = int(math.floor(shape[a] * sc[k] * (end[a] - start[a]) if self.coord == "tf_crop_and_resize"
                                        else shape[a] * sc[k]))
        else:
            raise ValueError("Resize needs scales or sizes")
        return out, full_scale, start, end

    def common_scale(self, shape, out, axes):
        """The one scale keep_aspect_ratio_policy applied, from the output sizes alone: it is sizes[k] / shape
        for the axis that set it, where that ratio is exact; it must be the only ratio that reproduces every
        output size (else the sizes it came from are ambiguous and the sampling positions unknown)."""
        ratios = {o / shape[a] for o, a in zip(out, axes)}
        fit = [r for r in ratios if all(int(math.floor(r * shape[a] + 0.5)) == o for o, a in zip(out, axes))]
        if len(fit) != 1:
            self.unsupported(f"sizes computed at run time with keep_aspect_ratio_policy={self.policy!r}: the scale "
                             f"it applied cannot be read from the output's shape {tuple(out)}")
        return fit[0]

    def source_coords(self, n_in, n_out, scale, start, end):
        x = np.arange(n_out, dtype=np.float64)
        c = self.coord
        length = n_in * scale  # the resized length before rounding, as the ONNX formulas use it
        if c == "half_pixel":
            return (x + 0.5) / scale - 0.5
        if c == "pytorch_half_pixel":
            return (x + 0.5) / scale - 0.5 if length > 1 else np.zeros_like(x)
        if c == "align_corners":
            return x * (n_in - 1) / (length - 1) if length > 1 else np.zeros_like(x)
        if c == "asymmetric":
            return x / scale
        if c == "tf_half_pixel_for_nn":
            return (x + 0.5) / scale
        if c == "half_pixel_symmetric":
            adj = n_out / (scale * n_in)
            center = n_in / 2
            return center * (1 - adj) + (x + 0.5) / scale - 0.5
        # tf_crop_and_resize
        if length > 1:
            return start * (n_in - 1) + x * (end - start) * (n_in - 1) / (length - 1)
        return np.full_like(x, 0.5 * (start + end) * (n_in - 1))

    def taps(self, src, n_in):
        """(indices (n_out, T), weights (n_out, T)) for the sampling mode."""
        if self.mode == "nearest":
            fl = np.floor(src)
            frac = src - fl
            if self.nearest_mode == "floor":
                i = fl
            elif self.nearest_mode == "ceil":
                i = np.ceil(src)
            elif self.nearest_mode == "round_prefer_floor":
                i = np.where(frac <= 0.5, fl, fl + 1)
            else:
                i = np.where(frac < 0.5, fl, fl + 1)
            return np.clip(i, 0, n_in - 1).astype(np.int64)[:, None], np.ones((len(src), 1))
        fl = np.floor(src)
        t = src - fl
        if self.mode == "linear":
            idx = fl[:, None] + np.array([0, 1])
            w = np.stack([1 - t, t], axis=1)
        else:
            idx = fl[:, None] + np.array([-1, 0, 1, 2])
            d = np.abs(idx - src[:, None])
            a = self.cubic_a
            w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                         np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
            if self.exclude_outside:
                w = np.where((idx < 0) | (idx > n_in - 1), 0.0, w)
                w = w / w.sum(axis=1, keepdims=True)
        return np.clip(idx, 0, n_in - 1).astype(np.int64), w

    def axis_plans(self, x, roi, scales, sizes, out_dims=None):
        """Per resized axis, in the order applied: (axis, taps indices, weights, outside mask or None)."""
        out, scale, start, end = self.plan(x.shape, roi, scales, sizes, out_dims)
        plans = []
        for a in range(x.ndim):
            if out[a] == x.shape[a] and scale[a] == 1.0 and self.coord != "tf_crop_and_resize":
                continue
            src = self.source_coords(x.shape[a], out[a], scale[a], start[a], end[a])
            idx, w = self.taps(src, x.shape[a])
            outside = (src < 0) | (src > x.shape[a] - 1) if self.coord == "tf_crop_and_resize" else None
            plans.append((a, idx, w, outside if outside is not None and outside.any() else None))
        return plans

    def forward(self, x, roi=None, scales=None, sizes=None):
        xp = xp_of(x)
        y = x
        for a, idx, w, outside in self.axis_plans(x, roi, scales, sizes):
            bshape = [1] * y.ndim
            bshape[a] = idx.shape[0]
            acc = None
            for t in range(idx.shape[1]):
                part = xp.take(y, xp.asarray(idx[:, t]), axis=a)
                if self.mode != "nearest":
                    wt = w[:, t].astype(x.dtype) if x.dtype.kind == "f" else w[:, t]
                    part = part * xp.asarray(wt).reshape(bshape)
                acc = part if acc is None else acc + part
            if outside is not None:
                acc = xp.where(xp.asarray(outside).reshape(bshape), acc.dtype.type(self.extrapolation), acc)
            y = acc.astype(x.dtype) if acc.dtype != x.dtype else acc
        return (y if y is not x else x.copy(),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """Separable sampling is one matrix per resized axis, A (n_out, n_in); the adjoint contracts the
        gradient with each A along its axis, last axis first."""
        x = inputs[0]
        resized = self.plan_axes(b, x, *self.settings(b, inputs), y=outputs[0])
        shape = list(b.dims(x))
        for a, idx, _, _ in resized:
            shape[a] = idx.shape[0]
        g = grads[0]
        dtype = b.dtype(g)
        for a, idx, w, outside in reversed(resized):
            n_in = b.static(x, [a])[0]
            A = np.zeros((idx.shape[0], n_in))
            for t in range(idx.shape[1]):
                np.add.at(A, (np.arange(idx.shape[0]), idx[:, t]), w[:, t])
            if outside is not None:
                A[outside] = 0
            shape[a] = n_in
            rank = len(shape)
            if a == rank - 2:  # the matrix on the left: no transposes
                g = b.op("MatMul", [b.const(A.T.astype(dtype), "resize_adjoint"), g], dims=tuple(shape), dtype=dtype)
            else:
                g = matmul_along(b, g, b.const(A.astype(dtype), "resize_adjoint"), a, tuple(shape))
        return [g] + [None] * (len(inputs) - 1)

    def settings(self, b, inputs):
        """(roi, scales, sizes) as arrays for the reverse pass, sizes as the string "dynamic" where they are
        computed at run time (the output's dims then say them). Scales computed at run time are refused: every
        coordinate mode samples at positions that depend on their exact value, which the output's dims (a
        floor of size * scale) do not give back; nor does anything give back a roi computed at run time, which
        only tf_crop_and_resize reads."""
        names = (list(inputs[1:4]) + ["", "", ""])[:3]
        vals = []
        for v in names:
            c = b.constant(v) if v else None
            dynamic = bool(v) and c is None and b.table.dims.get(v) != (0,)
            vals.append("dynamic" if dynamic else c)
        roi, scales, sizes = vals
        if isinstance(roi, str):
            if self.coord == "tf_crop_and_resize":
                self.unsupported("roi computed at run time with coordinate_transformation_mode='tf_crop_and_resize'"
                                 ": the reverse pass needs its value; export it as a constant")
            roi = None
        if sizes is None or (not isinstance(sizes, str) and not sizes.size):
            if isinstance(scales, str):
                self.unsupported("scales computed at run time: the reverse pass needs their exact value (the output's "
                                 "shape does not give it back); export the model with constant scales, or with sizes")
        return roi, None if isinstance(scales, str) else scales, sizes

    def plan_axes(self, b, x, roi, scales, sizes, y=None):
        """axis_plans from x's dims alone (the resized axes must be static); sizes "dynamic": from y's dims, the
        resized axes of y static too."""
        dims = b.dims(x)
        probe = _Dims([d if isinstance(d, int) else 1 for d in dims])
        out_dims = None
        if isinstance(sizes, str):
            ydims, sizes = b.dims(y), None
            if len(ydims) != len(dims):
                raise ShapeUnknown(y)
            changed = [a for a in range(len(dims)) if dims[a] != ydims[a]]
            b.static(x, changed)
            out_dims = list(probe.shape)
            for a, n in zip(changed, b.static(y, changed)):
                out_dims[a] = n
        out, scale, start, end = self.plan(probe.shape, roi, scales, sizes, out_dims)
        touched = [a for a in range(len(dims)) if not (out[a] == probe.shape[a] and scale[a] == 1.0
                                                       and self.coord != "tf_crop_and_resize")]
        b.static(x, touched)
        return self.axis_plans(probe, roi, scales, sizes, out_dims)


class _Dims:
    """Something with the .shape and .ndim that Resize's planning reads."""

    def __init__(self, shape):
        self.shape, self.ndim = tuple(shape), len(shape)
