"""Propagation rules: what the reverse pass does at one node. Every rule is built from the op's own
forward and VJP, so an op gets every rule by having those two.

- gradient: the VJP.
- deconvnet / guided (ReLU-like ops: Relu, Clip with min 0 such as ReLU6): relu(g), and relu(g) * forward
  gate (0 < x < max); other ops fall back to the gradient.
- pass: relevance goes through an elementwise op unchanged (LRP on activations, LRN).
- epsilon, zplus, alphabeta, zb, w2, flat: the LRP family for ops linear in their data input (Conv,
  ConvTranspose, Gemm, MatMul, pooling by averaging, Resize, BatchNormalization):
      R_in = sum_k c_k * x'_k * vjp_{theta'_k}(R / stabilize(z')),   z' = sum_k f_{theta'_k}(x'_k)
  with x', theta' the input and parameters after the rule's modifier (Montavon et al. 2019).
- proportional (Add, Sum, Sub): R_k = z_k / stabilize(sum z) * R.
- gate (Mul, Div): all relevance to the data operand, none to a constant or broadcast gate (SE blocks).

The stabilizer is z + eps * sign(z) with sign(0) = +1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import xp_of
from .errors import RuleError
from .ops import unbroadcast

LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "Resize",
              "BatchNormalization", "ReduceMean", "ReduceSum", "Pad"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # the others' constant operands are not weights


@dataclass
class Step:
    """One node of the reverse pass, as a rule sees it."""
    node: object
    kernel: object
    inputs: list
    outputs: list
    grads: list
    dynamic: list      # per input: does it depend on the model input (is relevance wanted there)?
    params: dict       # the preset's parameters (epsilon, alpha, beta, low, high)


def stabilize(z, eps):
    xp = xp_of(z)
    return z + z.dtype.type(eps) * xp.where(z >= 0, 1, -1).astype(z.dtype)


def gradient(step: Step):
    wrt = [k for k, d in enumerate(step.dynamic) if d]
    return step.kernel.vjp(step.inputs, step.outputs, step.grads, wrt=wrt)


def _relu_gate(step: Step):
    """The forward gate of a ReLU-like op, or None when the op is not ReLU-like."""
    x = step.inputs[0]
    if step.node.op_type == "Relu":
        return (x > 0).astype(x.dtype)
    if step.node.op_type == "Clip":
        lo = step.inputs[1] if len(step.inputs) > 1 else None
        if lo is not None and float(np.asarray(lo if isinstance(lo, np.ndarray) else lo.get())) == 0.0:
            return step.kernel.gate(*step.inputs)
    return None


def deconvnet(step: Step):
    gate = _relu_gate(step)
    if gate is None:
        return gradient(step)
    g = step.grads[0]
    return [xp_of(g).maximum(g, 0)] + [None] * (len(step.inputs) - 1)


def guided(step: Step):
    gate = _relu_gate(step)
    if gate is None:
        return gradient(step)
    g = step.grads[0]
    return [xp_of(g).maximum(g, 0) * gate] + [None] * (len(step.inputs) - 1)


def passthrough(step: Step):
    """Relevance through an elementwise op unchanged (to its data input)."""
    out = [None] * len(step.inputs)
    k = _data_index(step)
    out[k] = unbroadcast(step.grads[0], step.inputs[k].shape) if step.grads[0].shape != step.inputs[k].shape \
        else step.grads[0]
    return out


def _data_index(step: Step) -> int:
    """The operand relevance flows to: the dynamic one (the first, if several)."""
    for k, d in enumerate(step.dynamic):
        if d:
            return k
    return 0


# --------------------------------------------------------------------------- the LRP family
def _param_indices(step: Step, data: int):
    """Float constant operands (weights, biases) of a linear op: what the rules modify."""
    return [k for k, (a, d) in enumerate(zip(step.inputs, step.dynamic))
            if k != data and a is not None and not d and a.dtype.kind == "f"]


def _bias_index(step: Step):
    return 2 if step.node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(step.inputs) > 2 \
        and step.inputs[2] is not None else None


class LinearTerms:
    """f_theta(x) and vjp_theta for a linear op with some of its operands replaced."""

    def __init__(self, step: Step):
        if step.node.op_type not in LINEAR_OPS:
            raise RuleError(f"node {step.node.name!r} ({step.node.op_type}): LRP rules apply to linear ops "
                            f"({', '.join(sorted(LINEAR_OPS))}); give it another rule in the preset")
        self.step = step
        self.data = _data_index(step)
        self.params = _param_indices(step, self.data)
        self.bias = _bias_index(step)
        self.weights = [k for k in self.params if k != self.bias]
        self.has_weights = bool(self.weights) and step.node.op_type in WEIGHTED_OPS

    def _args(self, x, mod, keep_bias):
        args = list(self.step.inputs)
        args[self.data] = x
        for k in self.weights:
            args[k] = mod(args[k]) if self.has_weights else args[k]
        if self.bias is not None and not keep_bias:
            args[self.bias] = None
        return args

    def forward(self, x, mod, keep_bias=False):
        return self.step.kernel.forward(*self._args(x, mod, keep_bias))[0]

    def vjp(self, x, mod, s):
        args = self._args(x, mod, False)
        return self.step.kernel.vjp(args, self.step.outputs, [s], wrt=[self.data])[self.data]

    def result(self, r_in):
        out = [None] * len(self.step.inputs)
        out[self.data] = r_in
        return out


def _pos(a):
    return xp_of(a).maximum(a, 0)


def _neg(a):
    return xp_of(a).minimum(a, 0)


def _ident(a):
    return a


def epsilon(step: Step):
    t = LinearTerms(step)
    x, R = step.inputs[t.data], step.grads[0]
    z = step.outputs[0]  # the op's own forward on unmodified operands: what the tape already holds
    if z is None or z.shape != R.shape:
        z = t.forward(x, _ident, keep_bias=True)
    return t.result(x * t.vjp(x, _ident, R / stabilize(z, step.params["epsilon"])))


def _signed_terms(t: LinearTerms, x, R, eps, positive: bool):
    """Relevance through the positive (or negative) contributions x_i w_ij: the z+ side of alpha-beta."""
    xp_, xn = _pos(x), _neg(x)
    wa, wb = (_pos, _neg) if positive else (_neg, _pos)
    if not t.has_weights:  # a weight-free linear op (average pooling, Resize): its weights are positive,
        xs = xp_ if positive else xn  # so positive contributions come from x+ and negative ones from x-
        s = R / stabilize(t.forward(xs, _ident), eps)
        return xs * t.vjp(xs, _ident, s)
    z = t.forward(xp_, wa) + t.forward(xn, wb)
    s = R / stabilize(z, eps)
    return xp_ * t.vjp(xp_, wa, s) + xn * t.vjp(xn, wb, s)


def zplus(step: Step):
    t = LinearTerms(step)
    x, R = step.inputs[t.data], step.grads[0]
    return t.result(_signed_terms(t, x, R, step.params["epsilon"], positive=True))


def alphabeta(step: Step):
    t = LinearTerms(step)
    a, b = float(step.params["alpha"]), float(step.params["beta"])
    if abs(a - b - 1) > 1e-6:
        raise RuleError(f"alpha-beta needs alpha - beta = 1, got alpha={a}, beta={b}")
    x, R = step.inputs[t.data], step.grads[0]
    eps = step.params["epsilon"]
    r = _signed_terms(t, x, R, eps, positive=True) * x.dtype.type(a)
    if b:
        r = r - _signed_terms(t, x, R, eps, positive=False) * x.dtype.type(b)
    return t.result(r)


def zb(step: Step):
    """The box rule for the input layer: pixels are bounded by low and high."""
    t = LinearTerms(step)
    x, R = step.inputs[t.data], step.grads[0]
    lo, hi = step.params.get("low"), step.params.get("high")
    if lo is None or hi is None:
        raise RuleError("the z^B rule needs the input bounds: pass low= and high= (per channel or scalars)")
    xp = xp_of(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    lo = xp.broadcast_to(xp.asarray(np.asarray(lo, x.dtype).reshape(shape) if np.ndim(lo) else
                                    np.asarray(lo, x.dtype)), x.shape)
    hi = xp.broadcast_to(xp.asarray(np.asarray(hi, x.dtype).reshape(shape) if np.ndim(hi) else
                                    np.asarray(hi, x.dtype)), x.shape)
    z = t.forward(x, _ident) - t.forward(lo, _pos) - t.forward(hi, _neg)
    s = R / stabilize(z, step.params["epsilon"])
    return t.result(x * t.vjp(x, _ident, s) - lo * t.vjp(lo, _pos, s) - hi * t.vjp(hi, _neg, s))


def _uniform_rule(mod):
    def rule(step: Step):
        t = LinearTerms(step)
        x, R = step.inputs[t.data], step.grads[0]
        ones = xp_of(x).ones_like(x)
        z = t.forward(ones, mod)
        return t.result(t.vjp(ones, mod, R / stabilize(z, step.params["epsilon"])))
    return rule


w2 = _uniform_rule(lambda w: w * w)
flat = _uniform_rule(lambda w: xp_of(w).ones_like(w))


# --------------------------------------------------------------------------- merging ops
def proportional(step: Step):
    """Add/Sum/Sub: each operand gets relevance in proportion to its contribution z_k."""
    op = step.node.op_type
    if op not in ("Add", "Sum", "Sub"):
        return gradient(step)
    xs = step.inputs
    zs = [xs[0], -xs[1]] if op == "Sub" else list(xs)
    total = zs[0]
    for z in zs[1:]:
        total = total + z
    s = step.grads[0] / stabilize(total, step.params["epsilon"])
    return [unbroadcast(z * s, x.shape) if d else None for z, x, d in zip(zs, xs, step.dynamic)]


def gate(step: Step):
    """Mul/Div: all relevance to the data operand (the larger, dynamic one), none to a gate or constant."""
    if step.node.op_type not in ("Mul", "Div"):
        return gradient(step)
    cands = [k for k, d in enumerate(step.dynamic) if d]
    if step.node.op_type == "Div":
        cands = [0] if step.dynamic[0] else cands
    k = max(cands, key=lambda k: step.inputs[k].size) if cands else 0
    out = [None] * len(step.inputs)
    out[k] = unbroadcast(step.grads[0], step.inputs[k].shape)
    return out


RULES = {"gradient": gradient, "deconvnet": deconvnet, "guided": guided, "pass": passthrough,
         "epsilon": epsilon, "zplus": zplus, "alphabeta": alphabeta, "zb": zb, "w2": w2, "flat": flat,
         "proportional": proportional, "gate": gate}
