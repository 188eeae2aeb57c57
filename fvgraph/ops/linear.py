"""Dense layers: Gemm and MatMul."""
from __future__ import annotations

from ..backend import xp_of
from ..errors import RuleError
from . import Op, register, upcast_half


@register("Gemm")
class Gemm(Op):
    """Y = alpha * A' B' + beta * C, A' = A or A^T, B' = B or B^T."""

    def setup(self, node):
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.trans_a = bool(node.attr("transA", 0))
        self.trans_b = bool(node.attr("transB", 0))

    def check(self, constants):
        w = self.operand(constants, self.node, 1)
        if w is not None and w.ndim != 2:
            raise ValueError(f"the weight {self.node.inputs[1]!r} has shape {w.shape}; Gemm takes a matrix")
        c = self.operand(constants, self.node, 2)
        if w is not None and c is not None:
            n = w.shape[0] if self.trans_b else w.shape[1]
            if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, n)):
                raise ValueError(f"the bias {self.node.inputs[2]!r} of shape {c.shape} does not broadcast to {n} "
                                 "outputs")

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

    def vjp(self, b, inputs, outputs, grads, wrt):
        """d/dA = alpha g B'^T and d/dB = alpha A'^T g, each as one Gemm on the operands as they are (the
        transposes are Gemm's flags: no transposed copy of a weight matrix is made)."""
        a, w = inputs[:2]
        g = grads[0]
        out = [None] * len(inputs)
        alpha = self.alpha
        if 0 in wrt:  # g (M, N) against B' (K, N): A' = g B'^T; A = A'^T when transA
            if not self.trans_a:
                out[0] = b.op("Gemm", [g, w], like=a, alpha=alpha, transB=int(not self.trans_b))
            else:
                out[0] = b.op("Gemm", [w, g], like=a, alpha=alpha, transA=int(self.trans_b), transB=1)
        if 1 in wrt:
            if not self.trans_b:
                out[1] = b.op("Gemm", [a, g], like=w, alpha=alpha, transA=int(not self.trans_a))
            else:
                out[1] = b.op("Gemm", [g, a], like=w, alpha=alpha, transA=1, transB=int(self.trans_a))
        if len(inputs) > 2 and inputs[2] and 2 in wrt:
            gc = g if self.beta == 1.0 else b.mul(g, b.scalar(self.beta, g), like=g)
            out[2] = b.sum_to(gc, inputs[2])
        return out


@register("MatMul")
class MatMul(Op):
    @upcast_half
    def forward(self, a, b):
        return (xp_of(a, b).matmul(a, b),)

    def vjp(self, b, inputs, outputs, grads, wrt):
        """d/da = g b^T, d/db = a^T g (batched, broadcast dims summed back). A constant 2-D b (a dense
        layer's weight) goes through Gemm with transB, so no transposed copy of the weight is made."""
        a, w = inputs
        g = grads[0]
        out = [None, None]
        ra, rw = b.rank(a), b.rank(w)
        a2 = a if ra > 1 else b.op("Unsqueeze", [a, b.ints([0])], dims=(1,) + b.dims(a), dtype=b.dtype(a))
        w2 = w if rw > 1 else b.op("Unsqueeze", [w, b.ints([1])], dims=b.dims(w) + (1,), dtype=b.dtype(w))
        gd = list(b.dims(g))
        if ra == 1:
            gd.insert(len(gd) - (0 if rw == 1 else 1), 1)
        if rw == 1:
            gd.append(1)
        g2 = g if (ra > 1 and rw > 1) else b.op("Reshape", [g, b.ints([0 if isinstance(d, str) else d
                                                                        for d in gd])],
                                                 dims=tuple(gd), dtype=b.dtype(g))
        if 0 in wrt:
            if rw == 2 and ra > 1 and b.constant(w) is not None:
                flat = b.op("Reshape", [g2, b.ints([-1, b.static(w, [1])[0]])], dims=(None, b.dims(w)[1]),
                            dtype=b.dtype(g))
                prod = b.op("Gemm", [flat, w], transB=1, dims=(None, b.dims(w)[0]), dtype=b.dtype(g))
                out[0] = b.reshape_like(prod, a)
            else:
                wt = _swap_last(b, w2)
                dims = tuple(gd[:-1]) + (b.dims(w2)[-2],)
                out[0] = b.sum_to(b.op("MatMul", [g2, wt], dims=dims, dtype=b.dtype(g)), a2)
                if ra == 1:
                    out[0] = b.reshape_like(out[0], a)
        if 1 in wrt:
            at = _swap_last(b, a2)
            dims = tuple(gd[:-2]) + (b.dims(a2)[-1], gd[-1])
            out[1] = b.sum_to(b.op("MatMul", [at, g2], dims=dims, dtype=b.dtype(g)), w2)
            if rw == 1:
                out[1] = b.reshape_like(out[1], w)
        return out


def _swap_last(b, v):
    r = b.rank(v)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    d = list(b.dims(v))
    d[-1], d[-2] = d[-2], d[-1]
    return b.op("Transpose", [v], perm=perm, dims=tuple(d), dtype=b.dtype(v))


@register("Einsum")
class Einsum(Op):
    """np.einsum's semantics. The VJP of operand k is another Einsum: the gradient against the other operands,
    written to k's subscripts; letters only k has (summed away in the forward) are broadcast back."""

    def setup(self, node):
        eq = str(node.attr("equation", "")).replace(" ", "")
        if not eq:
            self.unsupported("no equation")
        self.equation = eq

    @upcast_half
    def forward(self, *xs):
        return (xp_of(*xs).einsum(self.equation, *xs),)

    def subscripts(self, ranks):
        """(per-operand subscripts, output subscripts) with '...' spelled out as capital letters."""
        lhs, _, rhs = self.equation.partition("->")
        terms = lhs.split(",")
        ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
        spell = lambda t, r: t.replace("...", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[26 - (r - len(t) + 3):])  # noqa: E731
        full = [spell(t, r) for t, r in zip(terms, ranks)]
        if "->" in self.equation:
            out = rhs.replace("...", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[26 - ell:])
        else:  # implicit output: the letters used once, sorted, after the broadcast ones
            letters = "".join(full)
            out = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[26 - ell:] + "".join(
                sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
        return full, out

    def vjp(self, b, inputs, outputs, grads, wrt):
        ranks = [b.rank(x) for x in inputs]
        terms, out = self.subscripts(ranks)
        if any(len(set(t)) != len(t) for t in terms + [out]):
            raise RuleError(f"node {self.node.name!r} (Einsum {self.equation}): no gradient for repeated subscripts")
        result = [None] * len(inputs)
        for k in wrt:
            others = [t for j, t in enumerate(terms) if j != k]
            seen = set(out).union(*map(set, others))
            kept = "".join(c for c in terms[k] if c in seen)
            eq = ",".join([out] + others) + "->" + kept
            ops = [grads[0]] + [x for j, x in enumerate(inputs) if j != k]
            dims = tuple(b.dims(inputs[k])[terms[k].index(c)] for c in kept)
            g = b.op("Einsum", ops, equation=eq, dims=dims, dtype=b.dtype(inputs[k]))
            if kept != terms[k]:  # broadcast back over the letters the forward summed away
                missing = [i for i, c in enumerate(terms[k]) if c not in seen]
                g = b.op("Unsqueeze", [g, b.ints(missing)], dims=tuple(1 if i in missing else d for i, d in
                                                                        enumerate(b.dims(inputs[k]))),
                         dtype=b.dtype(inputs[k]))
                g = b.op("Expand", [g, b.shape_of(inputs[k])], like=inputs[k])
            result[k] = b.sum_to(g, inputs[k]) if b.dims(g) != b.dims(inputs[k]) else g
        return result
