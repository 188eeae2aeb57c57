"""Propagation rules: what the reverse pass emits at one node. Every rule is built from the op's own forward
and VJP builder, so an op gets every rule by having those two. Rules emit ONNX nodes (see fvgraph.builder);
they never compute arrays.

- gradient: the VJP.
- deconvnet / guided (ReLU-like ops: Relu, Clip with min 0 such as ReLU6): relu(g), and relu(g) * forward
  gate (0 < x < max); other ops fall back to the gradient.
- pass: relevance goes through an elementwise op unchanged (LRP on activations, LRN).
- epsilon, zplus, alphabeta, zb, w2, flat: the LRP family for ops linear in their data input (Conv,
  ConvTranspose, Gemm, MatMul, pooling by averaging, Resize, BatchNormalization):
      R_in = sum_k c_k * x'_k * vjp_{theta'_k}(R / stabilize(z')),   z' = sum_k f_{theta'_k}(x'_k)
  with x', theta' the input and parameters after the rule's modifier (Montavon et al. 2019); f is the node
  itself emitted again with the modified operands, vjp its VJP builder on them.
- proportional (Add, Sum, Sub): R_k = z_k / stabilize(sum z) * R.
- gate (Mul, Div): all relevance to the data operand, none to a constant or broadcast gate (SE blocks).

The stabilizer is z + eps * sign(z) with sign(0) = +1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RuleError
from .ops.activation import positive, relu_like

LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "AveragePool", "GlobalAveragePool", "Resize",
              "BatchNormalization", "ReduceMean", "ReduceSum", "Pad", "LayerNormalization", "GroupNormalization",
              "InstanceNormalization"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # the others' constant operands are not weights


@dataclass
class Step:
    """One node of the reverse pass, as a rule sees it (value names, not arrays)."""
    node: object
    kernel: object
    inputs: list
    outputs: list
    grads: list
    dynamic: list      # per input: does it depend on the model input (is relevance wanted there)?
    params: dict       # the preset's parameters (epsilon, alpha, beta, low, high)
    b: object          # the GraphBuilder the rule emits into


def stabilize(b, z, eps):
    """z + eps * sign(z), sign(0) = +1. eps is a rule parameter: a graph input unless the graph is exported."""
    e = b.param("epsilon", eps, z)
    e = b.where(b.op("GreaterOrEqual", [z, b.scalar(0, z)], dims=b.dims(z), dtype=np.bool_),
                e, b.op("Neg", [e], dims=(), dtype=b.dtype(z)), like=z)
    return b.add(z, e, like=z)


def gradient(step: Step):
    wrt = {k for k, d in enumerate(step.dynamic) if d}
    return step.kernel.vjp(step.b, step.inputs, step.outputs, step.grads, wrt)


def _constant_operand(b, node, k):
    """The first element of node's k-th input when that input is a constant, else None (absent or computed)."""
    v = node.inputs[k] if len(node.inputs) > k else ""
    const = b.constant(v) if v else None
    return None if const is None else float(np.asarray(const).reshape(-1)[0])


def _relu_gate(step: Step):
    """The forward gate of a ReLU-like op as a boolean value, or None when the op is not ReLU-like."""
    b, y = step.b, step.outputs[0]
    if not relu_like(step.node, b.constant):
        return None
    if step.node.op_type == "Relu":
        return positive(b, y)
    ins = list(step.inputs) + ["", ""]
    return step.kernel.gate_graph(b, y, ins[1], ins[2])


def deconvnet(step: Step):
    if _relu_gate(step) is None:
        return gradient(step)
    g = step.grads[0]
    return [step.b.op("Relu", [g], like=g)] + [None] * (len(step.inputs) - 1)


def guided(step: Step):
    gate = _relu_gate(step)
    if gate is None:
        return gradient(step)
    b, g = step.b, step.grads[0]
    return [b.gate(gate, b.op("Relu", [g], like=g))] + [None] * (len(step.inputs) - 1)


def passthrough(step: Step):
    """Relevance through an elementwise op unchanged (to its data input)."""
    out = [None] * len(step.inputs)
    k = _data_index(step)
    out[k] = step.b.sum_to(step.grads[0], step.inputs[k])
    return out


def _data_index(step: Step) -> int:
    """The operand relevance flows to: the dynamic one; of several, the first that is no gate (attention's
    softmax weights, a SiLU's sigmoid, a GELU's erf: held constant, as Ali et al. 2022 and Achtibat et al. 2024
    do, so relevance takes the value path); the first if all are."""
    dynamic = [k for k, d in enumerate(step.dynamic) if d]
    if not dynamic:
        return 0
    plain = [k for k in dynamic if not is_gate(step.b, step.inputs[k])]
    return (plain or dynamic)[0]


GATE_OPS = {"Softmax", "Sigmoid", "HardSigmoid", "Tanh", "Erf"}
GATE_PATH = {"Add", "Mul", "Div", "Sub", "Reshape", "Transpose", "Cast", "Identity", "Expand", "Squeeze",
             "Unsqueeze", "Dropout"}


def is_gate(b, v, depth: int = 0) -> bool:
    """Whether v is a squashing function of the data (a softmax, sigmoid, tanh or erf, up to an affine map or a
    reshaping): a multiplicative gate rather than a carrier of relevance."""
    node = b.producer(v)
    if node is None or depth > 6:
        return False
    if node.op_type in GATE_OPS:
        return True
    if node.op_type not in GATE_PATH:
        return False
    data = [i for i in node.inputs if i and b.constant(i) is None]
    return len(data) == 1 and is_gate(b, data[0], depth + 1)


# --------------------------------------------------------------------------- the LRP family
def _pos(b, x):
    return b.op("Relu", [x], like=x)


def _neg(b, x):
    return b.op("Min", [x, b.scalar(0, x)], like=x)


MODIFIERS = {  # name -> (on a constant array, as nodes on a computed value)
    "ident": None,
    "pos": (lambda w: np.maximum(w, 0), _pos),
    "neg": (lambda w: np.minimum(w, 0), _neg),
    "square": (lambda w: w * w, lambda b, v: b.mul(v, v)),
    "ones": (lambda w: np.ones_like(w), lambda b, v: b.op("Add", [b.zeros(v), b.scalar(1, v)], like=v)),
}


class LinearTerms:
    """f_theta(x) and vjp_theta for a linear op with some of its operands replaced."""

    def __init__(self, step: Step):
        if step.node.op_type not in LINEAR_OPS:
            raise RuleError(f"node {step.node.name!r} ({step.node.op_type}): LRP rules apply to linear ops "
                            f"({', '.join(sorted(LINEAR_OPS))}); give it another rule in the preset")
        b = step.b
        self.step, self.b = step, b
        self.data = _data_index(step)
        self.params = [k for k, (v, d) in enumerate(zip(step.inputs, step.dynamic))
                       if k != self.data and v and not d and b.constant(v) is not None and b.dtype(v).kind == "f"]
        op = step.node.op_type
        self.bias = 2 if op in ("Conv", "ConvTranspose", "Gemm") and len(step.inputs) > 2 and step.inputs[2] \
            else None
        self.weights = [k for k in self.params if k != self.bias]
        self.has_weights = bool(self.weights) and op in WEIGHTED_OPS

    def _modified(self, v, mod):
        if mod == "ident" or not self.has_weights:
            return v
        const = self.b.constant(v)
        on_array, on_value = MODIFIERS[mod]
        return self.b.derived(const, mod, on_array) if const is not None else on_value(self.b, v)

    def _args(self, x, mod, keep_bias):
        args = list(self.step.inputs)
        args[self.data] = x
        for k in self.weights:
            args[k] = self._modified(args[k], mod)
        if self.bias is not None and not keep_bias:
            args[self.bias] = ""
        while args and not args[-1]:
            args.pop()
        return args

    def forward(self, x, mod, keep_bias=False):
        node, out = self.step.node, self.step.outputs[0]
        return self.b.op(node.op_type, self._args(x, mod, keep_bias), like=out, **node.attrs)

    def vjp(self, x, mod, s):
        args = self._args(x, mod, False)
        args += [""] * (len(self.step.inputs) - len(args))
        return self.step.kernel.vjp_linearized(self.b, args, self.step.outputs, [s], {self.data})[self.data]

    def without_bias(self, z):
        """The op's output z minus its bias term (Conv/ConvTranspose b per channel, Gemm beta*C)."""
        if self.bias is None:
            return z
        b, bias = self.b, self.step.inputs[self.bias]
        op = self.step.node.op_type
        if op == "Gemm":
            beta = float(self.step.node.attr("beta", 1.0))
            term = bias if beta == 1.0 else b.mul(bias, b.scalar(beta, bias))
        else:
            rank = b.rank(z)
            term = b.op("Reshape", [bias, b.ints([-1] + [1] * (rank - 2))],
                        dims=(b.dims(bias)[0],) + (1,) * (rank - 2), dtype=b.dtype(z))
        return b.op("Sub", [z, term], like=z)

    def result(self, r_in):
        out = [None] * len(self.step.inputs)
        out[self.data] = r_in
        return out


def _times(b, x, v):
    return b.mul(x, v, like=x)


def _div(b, r, z):
    return b.op("Div", [r, z], like=r)


def epsilon(step: Step):
    t, b = LinearTerms(step), step.b
    x, R = step.inputs[t.data], step.grads[0]
    z = step.outputs[0]  # the op's own forward on unmodified operands: already in the graph
    return t.result(_times(b, x, t.vjp(x, "ident", _div(b, R, stabilize(b, z, step.params["epsilon"])))))


def _signed_terms(t: LinearTerms, x, R, eps, positive_side: bool):
    """Relevance through the positive (or negative) contributions x_i w_ij: the z+ side of alpha-beta.
    Where x is non-negative by construction (after a ReLU, a max pool of ReLUs, ...) the x- terms vanish and
    are not emitted: half the work of z+ and alpha-beta in ReLU networks."""
    b = t.b
    signed = not nonnegative(b, x)
    xp_ = _pos(b, x) if signed else x
    xn = _neg(b, x) if signed else None
    wa, wb = ("pos", "neg") if positive_side else ("neg", "pos")
    if not t.has_weights:  # a weight-free linear op (average pooling, Resize): its weights are positive,
        xs = xp_ if positive_side else xn  # so positive contributions come from x+ and negative ones from x-
        if xs is None:
            return b.zeros(x)
        s = _div(b, R, stabilize(b, t.forward(xs, "ident"), eps))
        return _times(b, xs, t.vjp(xs, "ident", s))
    z = t.forward(xp_, wa)
    if xn is not None:
        z = b.add(z, t.forward(xn, wb))
    s = _div(b, R, stabilize(b, z, eps))
    r = _times(b, xp_, t.vjp(xp_, wa, s))
    return b.add(r, _times(b, xn, t.vjp(xn, wb, s))) if xn is not None else r


NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softmax", "Exp", "Abs", "Sqrt", "HardSigmoid", "Softplus"}
KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Squeeze",
              "Unsqueeze", "Transpose", "Identity", "Dropout", "Concat", "Split", "Slice", "Cast", "Mul", "Add",
              "Sum", "Max", "Min", "Expand", "Tile", "Gather", "ReduceMax", "ReduceSum", "ReduceMean"}


def nonnegative(b, v, depth: int = 0) -> bool:
    """Whether value v is >= 0 by construction (ReLU outputs and what pooling, reshaping or concatenating
    them keeps non-negative); False when unsure."""
    const = b.constant(v)
    if const is not None:
        return bool(np.all(np.asarray(const) >= 0))
    node = b.producer(v)
    if node is None or depth > 64:
        return False
    op = node.op_type
    if op in NONNEGATIVE_OPS:
        return True
    if op == "Clip":
        lo = _constant_operand(b, node, 1)
        return lo is not None and lo >= 0
    if op == "Pad":  # an absent pad value is 0; a computed one counts as unknown
        padded_with = _constant_operand(b, node, 2) if len(node.inputs) > 2 and node.inputs[2] else 0.0
        return nonnegative(b, node.inputs[0], depth + 1) and padded_with is not None and padded_with >= 0
    if op == "Resize":
        return node.attr("mode", "nearest") in ("nearest", "linear") and nonnegative(b, node.inputs[0], depth + 1)
    if op in KEEPS_SIGN:
        data = [i for i in node.inputs[:len(node.inputs) if op in ("Concat", "Mul", "Add", "Sum", "Max", "Min")
                                         else 1] if i]
        if op == "Max":
            return any(nonnegative(b, i, depth + 1) for i in data)
        return all(nonnegative(b, i, depth + 1) for i in data)
    return False


def zplus(step: Step):
    t = LinearTerms(step)
    x, R = step.inputs[t.data], step.grads[0]
    return t.result(_signed_terms(t, x, R, step.params["epsilon"], positive_side=True))


def alphabeta(step: Step):
    t, b = LinearTerms(step), step.b
    a, be = float(step.params["alpha"]), float(step.params["beta"])
    if abs(a - be - 1) > 1e-6:
        raise RuleError(f"alpha-beta needs alpha - beta = 1, got alpha={a}, beta={be}")
    x, R = step.inputs[t.data], step.grads[0]
    eps = step.params["epsilon"]
    if be and t.has_weights and nonnegative(b, x):
        return t.result(_alphabeta_nonnegative(t, x, R, a, be, eps))
    r = _times(b, _signed_terms(t, x, R, eps, positive_side=True), b.param("alpha", a, x))
    if be:
        neg = _times(b, _signed_terms(t, x, R, eps, positive_side=False), b.param("beta", be, x))
        r = b.op("Sub", [r, neg], like=x)
    return t.result(r)


def _alphabeta_nonnegative(t: LinearTerms, x, R, a, be, eps):
    """alpha-beta where x >= 0: z- = (z - bias) - z+, from the forward output the graph already has, instead of
    another product with W-."""
    b = t.b
    zp = t.forward(x, "pos")
    zn = b.op("Sub", [t.without_bias(t.step.outputs[0]), zp], like=zp)
    sp = _div(b, _times(b, R, b.param("alpha", a, R)), stabilize(b, zp, eps))
    sn = _div(b, _times(b, R, b.param("beta", be, R)), stabilize(b, zn, eps))
    return _times(b, x, b.op("Sub", [t.vjp(x, "pos", sp), t.vjp(x, "neg", sn)], like=x))


def zb(step: Step):
    """The box rule for the input layer: pixels are bounded by low and high."""
    t, b = LinearTerms(step), step.b
    x, R = step.inputs[t.data], step.grads[0]
    lo, hi = step.params.get("low"), step.params.get("high")
    if lo is None or hi is None:
        raise RuleError("the z^B rule needs the input bounds: pass low= and high= (per channel or scalars)")
    shape = (1, -1) + (1,) * (b.rank(x) - 2)
    bounds = []
    for v in (lo, hi):
        a = np.asarray(v, b.dtype(x))
        a = a.reshape(shape) if a.ndim else a
        bounds.append(b.op("Expand", [b.const(a, "bound"), b.shape_of(x)], like=x))
    lo, hi = bounds
    z = b.op("Sub", [b.op("Sub", [t.forward(x, "ident"), t.forward(lo, "pos")], like=R), t.forward(hi, "neg")],
             like=R)
    s = _div(b, R, stabilize(b, z, step.params["epsilon"]))
    r = b.op("Sub", [_times(b, x, t.vjp(x, "ident", s)), _times(b, lo, t.vjp(lo, "pos", s))], like=x)
    return t.result(b.op("Sub", [r, _times(b, hi, t.vjp(hi, "neg", s))], like=x))


def _uniform_rule(mod):
    def rule(step: Step):
        t, b = LinearTerms(step), step.b
        x, R = step.inputs[t.data], step.grads[0]
        ones = MODIFIERS["ones"][1](b, x)
        z = t.forward(ones, mod)
        return t.result(t.vjp(ones, mod, _div(b, R, stabilize(b, z, step.params["epsilon"]))))
    return rule


w2 = _uniform_rule("square")
flat = _uniform_rule("ones")


# --------------------------------------------------------------------------- merging ops
def proportional(step: Step):
    """Add/Sum/Sub: each operand gets relevance in proportion to its contribution z_k."""
    op, b = step.node.op_type, step.b
    if op not in ("Add", "Sum", "Sub"):
        return gradient(step)
    xs = step.inputs
    zs = [xs[0], b.op("Neg", [xs[1]], like=xs[1])] if op == "Sub" else list(xs)
    total = step.outputs[0] if op != "Sub" else b.op("Add", [zs[0], zs[1]], like=step.outputs[0])
    s = _div(b, step.grads[0], stabilize(b, total, step.params["epsilon"]))
    return [b.sum_to(b.mul(s, z, like=s), x) if d else None for z, x, d in zip(zs, xs, step.dynamic)]


def gate(step: Step):
    """Mul/Div: all relevance to the data operand, none to a gate or constant: the dynamic operand that is no
    squashing function (SiLU = x * sigmoid(x), GELU = x * (1 + erf(x / sqrt 2)) / 2, SE blocks), and of several
    the larger."""
    b = step.b
    if step.node.op_type not in ("Mul", "Div"):
        return gradient(step)
    cands = [k for k, d in enumerate(step.dynamic) if d]
    if step.node.op_type == "Div":
        cands = [0] if step.dynamic[0] else cands
    cands = [k for k in cands if not is_gate(b, step.inputs[k])] or cands

    def size(k):
        return int(np.prod([d if isinstance(d, int) else 1 << 20 for d in b.dims(step.inputs[k])]))
    k = max(cands, key=size) if cands else 0
    out = [None] * len(step.inputs)
    out[k] = b.sum_to(step.grads[0], step.inputs[k])
    return out


RULES = {"gradient": gradient, "deconvnet": deconvnet, "guided": guided, "pass": passthrough,
         "epsilon": epsilon, "zplus": zplus, "alphabeta": alphabeta, "zb": zb, "w2": w2, "flat": flat,
         "proportional": proportional, "gate": gate}
# what each rule reads from step.params (tests/test_rules_base.py runs each rule with only these)
RULE_PARAMS = {"gradient": (), "deconvnet": (), "guided": (), "pass": (),
               "epsilon": ("epsilon",), "zplus": ("epsilon",), "alphabeta": ("alpha", "beta", "epsilon"),
               "zb": ("low", "high", "epsilon"), "w2": ("epsilon",), "flat": ("epsilon",),
               "proportional": ("epsilon",), "gate": ()}
