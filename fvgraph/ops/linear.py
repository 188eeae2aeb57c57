"""Dense layers: Gemm and MatMul."""
from __future__ import annotations

from ..backend import xp_of
from . import Op, register, upcast_half


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


@register("MatMul")
class MatMul(Op):
    @upcast_half
    def forward(self, a, b):
        return (xp_of(a, b).matmul(a, b),)
