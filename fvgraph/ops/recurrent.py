"""LSTM, GRU and RNN (ONNX opsets 7-22): direction forward/reverse/bidirectional, layout 0 and 1, optional bias,
initial states and peepholes, GRU's linear_before_reset, and the parameterless activations.

Two paths. Where the sequence length is fixed by the model's shapes at load, `unroll` (a rewrite of
fvgraph.decompose) writes the time loop out as standard ops (MatMul, Add, Mul, Sub, Sigmoid, Tanh, Split,
Concat, Unsqueeze) in the graph fvgraph explains, so the forward, the VJP and every rule come from those ops;
the input's time axis is split into exactly that many steps, so a run at another length fails instead of
silently using the first steps. Otherwise the node stays as it is: `Recurrent` runs it on fvgraph's executor
(equal to onnxruntime), and its reverse pass is refused by name.

Refused by name at load: clip, activation_alpha/activation_beta, activations other than Sigmoid, Tanh, Relu,
Softsign and Softplus, LSTM's input_forget=1; sequence_lens other than absent or all equal to the sequence
length is refused when a run meets it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_host, xp_of
from ..errors import UnsupportedModelError
from ..graph import Node
from . import Op, register

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign", "softplus": "Softplus"}


def _expit(x):
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


NUMPY_ACT = {
    "Sigmoid": _expit,
    "Tanh": lambda x: xp_of(x).tanh(x),
    "Relu": lambda x: xp_of(x).maximum(x, x.dtype.type(0)),
    "Softsign": lambda x: x / (1 + xp_of(x).abs(x)),
    "Softplus": lambda x: xp_of(x).logaddexp(x, x.dtype.type(0)),
}


@dataclass
class Spec:
    kind: str
    reverse: list          # per direction: whether it runs backwards in time
    acts: list             # per direction: the activation op types (f, g, h for LSTM; f, g for GRU; f for RNN)
    layout: int
    hidden: int | None
    linear_before_reset: bool


def parse(node: Node) -> Spec:
    """The node's attributes; UnsupportedModelError (naming the node) for what fvgraph does not implement."""
    kind = node.op_type

    def refuse(what):
        raise UnsupportedModelError(f"node {node.name!r} ({kind}): {what}")
    direction = node.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        refuse(f"direction {direction!r} is not one of forward, reverse, bidirectional")
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    if node.attr("clip") is not None:
        refuse("clip is not supported")
    if node.attr("activation_alpha") or node.attr("activation_beta"):
        refuse("activation_alpha/activation_beta are not supported")
    if kind == "LSTM" and int(node.attr("input_forget", 0) or 0):
        refuse("input_forget=1 is not supported")
    layout = int(node.attr("layout", 0) or 0)
    if layout not in (0, 1):
        refuse(f"layout {layout} is not 0 or 1")
    per = len(DEFAULT_ACTIVATIONS[kind])
    names = node.attr("activations") or DEFAULT_ACTIVATIONS[kind] * len(reverse)
    if len(names) != per * len(reverse):
        refuse(f"{len(names)} activations given, expected {per * len(reverse)}")
    acts = []
    for a in names:
        if str(a).lower() not in ACTIVATIONS:
            refuse(f"activation {a!r} is not supported (only {', '.join(ACTIVATIONS.values())})")
        acts.append(ACTIVATIONS[str(a).lower()])
    hidden = node.attr("hidden_size")
    return Spec(kind, reverse, [acts[d * per:(d + 1) * per] for d in range(len(reverse))], layout,
                int(hidden) if hidden is not None else None, bool(int(node.attr("linear_before_reset", 0) or 0)))


def _seq_lens_trivial(lens, steps: int) -> bool:
    return lens is None or bool(np.all(np.asarray(lens).reshape(-1) == steps))


# ---------------------------------------------------------------------------------------------- the kernel
@register("LSTM", "GRU", "RNN")
class Recurrent(Op):
    """The recurrence on fvgraph's executor, for nodes left as they are (sequence length not fixed at load)."""

    def setup(self, node):
        self.spec = parse(node)

    def check(self, constants):
        lens = self.operand(constants, self.node, 4)
        if lens is not None and np.unique(np.asarray(lens)).size > 1:
            self.unsupported("sequence_lens with different lengths is not supported")

    def forward(self, X, W, R, B=None, lens=None, H0=None, C0=None, P=None):
        s = self.spec
        xp = xp_of(X)
        if s.layout == 1:  # batch-major: work time-major
            X = xp.transpose(X, (1, 0, 2))
            H0 = None if H0 is None else xp.transpose(H0, (1, 0, 2))
            C0 = None if C0 is None else xp.transpose(C0, (1, 0, 2))
        steps, batch = X.shape[0], X.shape[1]
        if lens is not None and not _seq_lens_trivial(to_host(lens), steps):
            self.unsupported("sequence_lens other than the full sequence length is not supported")
        G = GATES[s.kind]
        H = W.shape[1] // G
        dt = X.dtype
        ys, hs, cs = [], [], []
        for d, backwards in enumerate(s.reverse):
            w, r = W[d], R[d]
            b = B[d] if B is not None else xp.zeros(2 * G * H, dt)
            wb, rb = b[:G * H], b[G * H:]
            h = H0[d] if H0 is not None else xp.zeros((batch, H), dt)
            c = C0[d] if C0 is not None else xp.zeros((batch, H), dt)
            acts = [NUMPY_ACT[a] for a in s.acts[d]]
            out = [None] * steps
            for t in (range(steps - 1, -1, -1) if backwards else range(steps)):
                xw = X[t] @ w.T + wb
                if s.kind == "LSTM":
                    f_, g_, h_ = acts
                    z = xw + h @ r.T + rb
                    i, o, f, cc = (z[:, k * H:(k + 1) * H] for k in range(4))
                    if P is not None:
                        i = i + P[d, :H] * c
                        f = f + P[d, 2 * H:] * c
                    c = f_(f) * c + f_(i) * g_(cc)
                    if P is not None:
                        o = o + P[d, H:2 * H] * c
                    h = f_(o) * h_(c)
                elif s.kind == "GRU":
                    f_, g_ = acts
                    hr = h @ r[:2 * H].T + rb[:2 * H]
                    zt = f_(xw[:, :H] + hr[:, :H])
                    rt = f_(xw[:, H:2 * H] + hr[:, H:])
                    if s.linear_before_reset:
                        ht = g_(xw[:, 2 * H:] + rt * (h @ r[2 * H:].T + rb[2 * H:]))
                    else:
                        ht = g_(xw[:, 2 * H:] + (rt * h) @ r[2 * H:].T + rb[2 * H:])
                    h = (1 - zt) * ht + zt * h
                else:
                    h = acts[0](xw + h @ r.T + rb)
                out[t] = h
            ys.append(xp.stack(out))
            hs.append(h)
            cs.append(c)
        Y = xp.stack(ys, axis=1).astype(dt, copy=False)             # (T, D, N, H)
        Yh, Yc = xp.stack(hs).astype(dt, copy=False), xp.stack(cs).astype(dt, copy=False)  # (D, N, H)
        if s.layout == 1:
            Y, Yh, Yc = xp.transpose(Y, (2, 0, 1, 3)), xp.transpose(Yh, (1, 0, 2)), xp.transpose(Yc, (1, 0, 2))
        outs = (Y, Yh, Yc) if s.kind == "LSTM" else (Y, Yh)
        return outs[:max(len(self.node.outputs), 1)]

    def vjp(self, b, inputs, outputs, grads, wrt):
        self.unsupported("the reverse pass unrolls the time loop at load, which needs the sequence length of "
                         f"input X ({self.node.inputs[0]!r}) fixed by the model's shapes and sequence_lens absent "
                         "or a constant equal to it; this node has neither (re-export it with a fixed sequence "
                         "length)")


# ---------------------------------------------------------------------------------------------- the unrolling
def _keep(r):
    r.nodes.append(r.node)


def _split(r, x, sizes, axis):
    outs = [r.value("split") for _ in sizes]
    r.nodes.append(Node(f"{r.node.name}::Split{len(r.nodes)}", "Split",
                        [x, r.const("split", np.asarray(sizes, np.int64))], outs, {"axis": axis}))
    return outs


def _static_length(r, x, axis):
    info = getattr(r.names, "value_info", {}).get(x)
    shape = getattr(info, "shape", None)
    if shape is None or len(shape) != 3 or not isinstance(shape[axis], (int, np.integer)) or shape[axis] < 1:
        return None
    return int(shape[axis]), info.dtype


def unroll(r):
    """The rewrite for LSTM/GRU/RNN (see the module's docstring); the node is kept where it cannot apply."""
    n = r.node
    try:
        s = parse(n)
    except UnsupportedModelError:
        return _keep(r)  # the kernel refuses it with the same message
    X, W, R, B, L, H0 = (r.arg(k) for k in range(6))
    C0, P = (r.arg(6), r.arg(7)) if s.kind == "LSTM" else ("", "")
    a = s.layout  # the time axis of X and Y's step slices, and the direction axis of the states
    found = _static_length(r, X, a)
    if found is None:
        return _keep(r)
    steps, dtype = found
    if L and (L not in r.constants or not _seq_lens_trivial(r.constants[L], steps)):
        return _keep(r)
    Wc = r.constants.get(W)
    dtype = np.dtype(dtype if dtype is not None else Wc.dtype if Wc is not None else np.float32)
    if dtype.kind != "f":
        return _keep(r)
    G = GATES[s.kind]
    H = s.hidden if s.hidden is not None else (Wc.shape[1] // G if Wc is not None else None)
    if H is None:
        return _keep(r)
    D = len(s.reverse)

    def ints(tag, values):
        return r.const(tag, np.asarray(values, np.int64))

    def piece(v, d, lo, hi):
        """v[d, lo:hi] of a (D, k) operand (bias, peepholes)."""
        if v in r.constants:
            return r.const("piece", np.asarray(r.constants[v][d, lo:hi], dtype))
        return r.op("Slice", [v, ints("starts", [d, lo]), ints("ends", [d + 1, hi]), ints("axes", [0, 1])])

    def weight(v, d, lo, hi):
        """v[d, lo:hi, :] transposed (k, in) -> (in, k), for a product on the right."""
        if v in r.constants:
            return r.const("weight", np.ascontiguousarray(np.asarray(r.constants[v][d, lo:hi], dtype).T))
        part = r.op("Slice", [v, ints("starts", [d, lo]), ints("ends", [d + 1, hi]), ints("axes", [0, 1])])
        return r.op("Transpose", [part], perm=[0, 2, 1])

    def add(x, y):
        return x if y is None else r.op("Add", [x, y])

    def bias(d, lo, hi, recurrent_too=True):
        if not B:
            return None
        if not recurrent_too:
            return piece(B, d, lo, hi)
        if B in r.constants:
            both = np.asarray(r.constants[B][d], dtype)
            return r.const("bias", both[lo:hi] + both[G * H + lo:G * H + hi])
        return r.op("Add", [piece(B, d, lo, hi), piece(B, d, G * H + lo, G * H + hi)])

    def states(v):
        if not v:
            return [r.const("zeros", np.zeros((1, 1, H), dtype))] * D  # broadcasts to (1, N, H) / (N, 1, H)
        return [v] if D == 1 else _split(r, v, [1] * D, a)

    def act(kind, x):
        return r.op(kind, [x])

    hs0, cs0 = states(H0), states(C0)
    ys, last_h, last_c = [], [], []
    for d, backwards in enumerate(s.reverse):
        f_act = s.acts[d][0]
        h, c = hs0[d], cs0[d]
        if s.kind == "GRU":
            xzr = _split(r, add(r.op("MatMul", [X, weight(W, d, 0, 2 * H)]), bias(d, 0, 2 * H)), [1] * steps, a)
            xh = _split(r, add(r.op("MatMul", [X, weight(W, d, 2 * H, 3 * H)]),
                               bias(d, 2 * H, 3 * H, recurrent_too=not s.linear_before_reset)), [1] * steps, a)
            r_zr, r_h = weight(R, d, 0, 2 * H), weight(R, d, 2 * H, 3 * H)
            rb_h = piece(B, d, 5 * H, 6 * H) if B and s.linear_before_reset else None
        else:
            xs = _split(r, add(r.op("MatMul", [X, weight(W, d, 0, G * H)]), bias(d, 0, G * H)), [1] * steps, a)
            rt = weight(R, d, 0, G * H)
            if P:
                p_i, p_o, p_f = (piece(P, d, k * H, (k + 1) * H) for k in range(3))
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if backwards else range(steps)):
            if s.kind == "LSTM":
                _, g_act, h_act = s.acts[d]
                i, o, f, cc = _split(r, r.op("Add", [xs[t], r.op("MatMul", [h, rt])]), [H] * 4, 2)
                if P:
                    i, f = r.op("Add", [i, r.op("Mul", [p_i, c])]), r.op("Add", [f, r.op("Mul", [p_f, c])])
                c = r.op("Add", [r.op("Mul", [act(f_act, f), c]), r.op("Mul", [act(f_act, i), act(g_act, cc)])])
                if P:
                    o = r.op("Add", [o, r.op("Mul", [p_o, c])])
                h = r.op("Mul", [act(f_act, o), act(h_act, c)])
            elif s.kind == "GRU":
                g_act = s.acts[d][1]
                z, rr = _split(r, r.op("Add", [xzr[t], r.op("MatMul", [h, r_zr])]), [H, H], 2)
                z, rr = act(f_act, z), act(f_act, rr)
                if s.linear_before_reset:
                    hh = r.op("Add", [xh[t], r.op("Mul", [rr, add(r.op("MatMul", [h, r_h]), rb_h)])])
                else:
                    hh = r.op("Add", [xh[t], r.op("MatMul", [r.op("Mul", [rr, h]), r_h])])
                hh = act(g_act, hh)
                h = r.op("Add", [hh, r.op("Mul", [z, r.op("Sub", [h, hh])])])  # (1 - z) hh + z h
            else:
                h = act(f_act, r.op("Add", [xs[t], r.op("MatMul", [h, rt])]))
            out[t] = h
        ys.append(out)
        last_h.append(h)
        last_c.append(c)

    outs = list(n.outputs) + ["", "", ""]
    if outs[0]:  # Y: (T, D, N, H) / (N, T, D, H); each step is (1, N, H) / (N, 1, H)
        per = [r.op("Unsqueeze", [r.op("Concat", y, axis=a) if steps > 1 else y[0], ints("axes", [a + 1])])
               for y in ys]
        r.op("Concat", per, outs[0], axis=a + 1) if D > 1 else r.op("Identity", per, outs[0])
    for name, values in ((outs[1], last_h), (outs[2] if s.kind == "LSTM" else "", last_c)):
        if name:
            r.op("Concat", values, name, axis=a) if D > 1 else r.op("Identity", values, name)


def dynamic_quantize_lstm(r):
    """com.microsoft's DynamicQuantizeLSTM(X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale,
    W_zero_point, R_scale, R_zero_point): an LSTM on the dequantized weights (W (D, in, 4H) and R (D, H, 4H),
    scales and zero points per direction or per direction and column), then the same path as LSTM. As for
    DynamicQuantizeMatMul, onnxruntime's run-time quantization of X and H is not modelled: the twin computes
    the float recurrence those weights stand for (onnxruntime's own result differs by that rounding)."""
    n = r.node
    float_weights = []
    for w, s, z in ((1, 8, 9), (2, 10, 11)):
        q, scale = r.constants.get(r.arg(w)), r.constants.get(r.arg(s))
        zero = r.constants.get(r.arg(z)) if r.arg(z) else np.zeros_like(np.asarray(scale, np.float32))
        if q is None or scale is None or zero is None:
            raise UnsupportedModelError(f"node {n.name!r} (DynamicQuantizeLSTM): weights, scales and zero points "
                                        "computed at run time are not supported")
        D = q.shape[0]
        per = lambda a: np.asarray(a, np.float32).reshape(D, 1, -1)  # noqa: E731  (D,) or (D, 4H) -> columns
        real = (np.asarray(q, np.float32) - per(zero)) * per(scale)
        float_weights.append(r.const("dequantized", np.ascontiguousarray(real.transpose(0, 2, 1))))
    inputs = [r.arg(0), *float_weights] + [r.arg(k) for k in range(3, 8)]
    while inputs and not inputs[-1]:
        inputs.pop()
    r.node = Node(n.name, "LSTM", inputs, list(n.outputs), dict(n.attrs))
    try:
        unroll(r)
    finally:
        r.node = n
