"""Quantizers: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear. The QOperator and integer ops
(QLinearConv, MatMulInteger, onnxruntime's QLinearAdd, ...) are rewritten at import into these around the float op
(fvgraph.decompose), so every op, rule and method of the float world applies to int8 models.

Reverse pass: the straight-through estimator (Bengio et al. 2013), as PyTorch's fake quantization takes it:
quantize-then-dequantize passes the gradient unchanged where the value was inside the integer range and nothing
where it saturated; the scales and zero points are held constant. Written per op: QuantizeLinear's VJP is
g / scale (gated to the range), DequantizeLinear's g * scale, so their product is the identity.
"""
from __future__ import annotations

import numpy as np

from ..backend import on, xp_of
from ..onnx_types import numpy_dtype, onnx_type
from . import Op, register

RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.uint16, np.int16,
                                                                    np.int32)}


class Quantizer(Op):
    def setup(self, node):
        self.axis = int(node.attr("axis", 1))
        self.block = int(node.attr("block_size", 0))
        out = int(node.attr("output_dtype", 0))
        self.out_dtype = numpy_dtype(out, f"node {node.name!r}") if out else None

    def spread(self, xp, p, x):
        """A scale or zero point broadcast against x: a scalar, one per `axis`, or one per block along it."""
        if p.ndim == 0 or p.size == 1:
            return p.reshape(())
        axis = self.axis % x.ndim
        if self.block:
            return xp.repeat(p, self.block, axis=axis)[tuple(slice(0, n) for n in x.shape)]
        return p.reshape([-1 if a == axis else 1 for a in range(x.ndim)])

    def spread_graph(self, b, p, x):
        """The same as nodes (a per-axis parameter reshaped; blocks repeated when constant)."""
        if b.rank(p) == 0:
            return p
        const = b.constant(p)
        if self.block or (const is not None and np.asarray(const).size == 1):
            if const is None:
                raise ValueError("a computed block-wise scale")
            return b.const(np.ascontiguousarray(self.spread(np, np.asarray(const), np.empty(b.static(x), np.bool_))),
                           "qparam")
        rank = b.rank(x)
        axis = self.axis % rank
        shape = [-1 if a == axis else 1 for a in range(rank)]
        return b.op("Reshape", [p, b.ints(shape)], dims=tuple(b.dims(x)[axis] if a == axis else 1
                                                              for a in range(rank)), dtype=b.dtype(p))


@register("QuantizeLinear")
class QuantizeLinear(Quantizer):
    def target(self, zero_point):
        if zero_point is not None:
            return zero_point.dtype
        return self.out_dtype or np.dtype(np.uint8)

    def forward(self, x, scale, zero_point=None):
        xp = xp_of(x)
        dtype = self.target(zero_point)
        if dtype not in RANGES:
            self.unsupported(f"quantizing to {dtype}")
        lo, hi = RANGES[dtype]
        scale, zero_point = on(xp, scale, zero_point)
        s = self.spread(xp, scale, x).astype(np.float32)
        q = xp.round(x.astype(np.float32) / s)
        if zero_point is not None:
            q = q + self.spread(xp, zero_point, x).astype(np.float32)
        return (xp.clip(q, lo, hi).astype(dtype),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """g / scale where round(x / scale) + zero point lies inside the integer range, else 0."""
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 and inputs[2] else None
        dtype = b.dtype(outputs[0])
        lo, hi = RANGES.get(np.dtype(dtype), RANGES[np.dtype(np.uint8)])
        s = self.spread_graph(b, scale, x)
        if b.dtype(s) != b.dtype(x):
            s = b.cast(s, b.dtype(x))
        q = b.op("Round", [b.op("Div", [x, s], like=x)], like=x)
        if zp is not None:
            q = b.op("Add", [q, b.cast(self.spread_graph(b, zp, x), b.dtype(x))], like=x)
        inside = b.op("And", [b.op("GreaterOrEqual", [q, b.scalar(lo, x)], dims=b.dims(x), dtype=np.bool_),
                              b.op("LessOrEqual", [q, b.scalar(hi, x)], dims=b.dims(x), dtype=np.bool_)],
                      dims=b.dims(x), dtype=np.bool_)
        g = grads[0]
        if b.dtype(g) != b.dtype(x):
            g = b.cast(g, b.dtype(x))
        return [b.gate(inside, b.op("Div", [g, s], like=x))] + [None] * (len(inputs) - 1)


@register("DequantizeLinear")
class DequantizeLinear(Quantizer):
    def forward(self, x, scale, zero_point=None):
        xp = xp_of(x, scale)
        x, scale, zero_point = on(xp, x, scale, zero_point)
        dtype = self.out_dtype or scale.dtype
        v = x.astype(np.int64 if x.dtype.kind in "iu" else np.float32)
        if zero_point is not None:
            v = v - self.spread(xp, zero_point, x).astype(v.dtype)
        return ((v.astype(np.float32) * self.spread(xp, scale, x).astype(np.float32)).astype(dtype),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """g * scale, to the integer input (a float signal: the straight-through estimator's other half)."""
        x, scale = inputs[0], inputs[1]
        g = grads[0]
        return [b.mul(g, self.spread_graph(b, scale, x), like=g)] + [None] * (len(inputs) - 1)


@register("DynamicQuantizeLinear")
class DynamicQuantizeLinear(Op):
    """uint8 with the scale and zero point computed from the data's range (which always includes 0)."""

    def forward(self, x):
        xp = xp_of(x)
        lo = min(float(x.min()) if x.size else 0.0, 0.0)
        hi = max(float(x.max()) if x.size else 0.0, 0.0)
        scale = np.float32((hi - lo) / 255)
        if scale == 0:
            return (xp.zeros(x.shape, np.uint8), np.asarray(scale), np.asarray(0, np.uint8))
        zp = np.clip(np.round(np.float32(-lo) / scale), 0, 255).astype(np.uint8)
        y = xp.clip(xp.round(x.astype(np.float32) / scale) + np.float32(zp), 0, 255).astype(np.uint8)
        return (y, np.asarray(scale, np.float32), np.asarray(zp))

    def vjp(self, b, inputs, outputs, grads, wrt):
        """g / scale: the range includes every value, so nothing saturates; the scale is held constant."""
        if grads[0] is None:
            return [None]
        g = grads[0]
        x = inputs[0]
        if b.dtype(g) != b.dtype(x):
            g = b.op("Cast", [g], like=x, to=onnx_type(b.dtype(x)))
        return [b.op("Div", [g, outputs[1]], like=x)]
