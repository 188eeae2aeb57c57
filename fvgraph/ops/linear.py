"""Dense layers: Gemm and MatMul."""
from __future__ import annotations

from ..backend import xp_of
from . import Op, register, unbroadcast, upcast_half


@register("Gemm")
class Gemm(Op):
    """Y = alpha * A' B' + beta * C, A' = A or A^T, B' = B or B^T."""

    def setup(self, node):
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.trans_a = bool(node.attr("transA", 0))
        self.trans_b = bool(node.attr("transB", 0))

    @upcast_half
    def forward(self, a, b, c=None):
        a2 = a.T if self.trans_a else a
        b2 = b.T if self.trans_b else b
        y = a2 @ b2
        if self.alpha != 1.0:
            y *= y.dtype.type(self.alpha)
        if c is not None and self.beta != 0.0:
            c = c.astype(y.dtype, copy=False)
            y += c if self.beta == 1.0 else y.dtype.type(self.beta) * c
        return (y,)

    def vjp(self, inputs, outputs, grads, wrt=None):
        a, b = inputs[:2]
        g = grads[0]
        t = g.dtype.type
        if self.alpha != 1.0:
            g = g * t(self.alpha)
        b2 = b.T if self.trans_b else b
        a2 = a.T if self.trans_a else a
        want = set(range(len(inputs))) if wrt is None else set(wrt)
        ga = g @ b2.T if 0 in want else None
        gb = a2.T @ g if 1 in want else None  # a weight-sized product: skipped unless asked for
        out = [None if ga is None else ga.T if self.trans_a else ga,
               None if gb is None else gb.T if self.trans_b else gb]
        if len(inputs) > 2 and inputs[2] is not None and 2 in want:
            out.append(unbroadcast(grads[0] * t(self.beta), inputs[2].shape))
        return out


@register("MatMul")
class MatMul(Op):
    @upcast_half
    def forward(self, a, b):
        return (xp_of(a, b).matmul(a, b),)

    def vjp(self, inputs, outputs, grads, wrt=None):
        xp = xp_of(grads[0])
        a, b = inputs
        g = grads[0]
        a2 = a[None] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        want = {0, 1} if wrt is None else set(wrt)
        ga = unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if 0 in want else None
        gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape) if 1 in want else None
        return [ga, gb]
