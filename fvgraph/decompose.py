"""Ops rewritten as standard ONNX ops in the graph fvgraph explains (the model's twin, see fvgraph.precision), so
that every kernel, VJP and rule of fvgraph applies to them; `Model.run` on onnxruntime keeps running the model
as written, equal to onnxruntime's own fused and integer kernels:

- onnxruntime's own fusions (domain com.microsoft, in models saved after its optimizer): FusedConv, FusedGemm,
  FusedMatMul, Gelu, FastGelu, BiasGelu, QuickGelu, BiasAdd, SkipLayerNormalization, (Skip)Simplified-
  LayerNormalization (RMSNorm), and its quantized ops;
- quantized operators (QOperator format): QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, and
  com.microsoft's QGemm, QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid,
  QLinearLeakyRelu, QLinearConcat, DynamicQuantizeMatMul, MatMulIntegerToFloat: each becomes DequantizeLinear
  on its integer operands, the float op, and QuantizeLinear on its result (the QDQ form). The integer
  accumulators of ConvInteger/MatMulInteger are summed in float (exact for integer sums below 2^24) and cast to
  the declared int32 by a Cast marked exact, which the reverse pass crosses.
- LSTM, GRU and RNN whose sequence length is fixed at load: the time loop unrolled (fvgraph.ops.recurrent.unroll;
  kept as they are otherwise), and com.microsoft's DynamicQuantizeLSTM as an LSTM on its dequantized weights.

Any other com.microsoft op stays as it is and is refused at load with its name and nodes.
"""
from __future__ import annotations

import numpy as np

from .errors import UnsupportedModelError
from .graph import Node, unique_name
from .ops.recurrent import dynamic_quantize_lstm, unroll

MS = "com.microsoft."


class Rewriter:
    """Emits the replacement nodes of one node: `const(base, array)` makes an initializer, names are fresh."""

    def __init__(self, node: Node, names, constants: dict):
        self.node, self.names, self.constants = node, names, constants
        self.nodes: list[Node] = []
        self._count = 0

    def value(self, tag: str) -> str:
        self._count += 1
        return self.names.fresh(f"{self.node.name}::{tag}{self._count}")

    def op(self, op_type, inputs, out=None, **attrs) -> str:
        out = out or self.value(op_type.lower())
        self.nodes.append(Node(f"{self.node.name}::{op_type}{len(self.nodes)}", op_type, list(inputs), [out], attrs))
        return out

    def const(self, tag, array) -> str:
        return self.names.const(f"{self.node.name}::{tag}", np.asarray(array))

    def arg(self, k) -> str:
        return self.node.inputs[k] if len(self.node.inputs) > k else ""

    def dq(self, x, scale, zp, axis=1) -> str:
        return self.op("DequantizeLinear", [x, scale] + ([zp] if zp else []), axis=axis)

    def q(self, y, scale, zp, out) -> str:
        return self.op("QuantizeLinear", [y, scale] + ([zp] if zp else []), out=out)


def _activation(r: Rewriter, x, kind, params, out):
    if kind == "Relu":
        return r.op("Relu", [x], out)
    if kind in ("Tanh", "Sigmoid"):
        return r.op(kind, [x], out)
    if kind == "LeakyRelu":
        return r.op("LeakyRelu", [x], out, alpha=float(params[0]) if params else 0.01)
    if kind == "HardSigmoid":
        return r.op("HardSigmoid", [x], out, alpha=float(params[0]), beta=float(params[1]))
    if kind == "Clip":
        return r.op("Clip", [x, r.const("min", np.float32(params[0])), r.const("max", np.float32(params[1]))], out)
    raise UnsupportedModelError(f"node {r.node.name!r} (FusedConv): activation {kind!r} is not supported")


def fused_conv(r: Rewriter):
    n = r.node
    attrs = {k: v for k, v in n.attrs.items() if k not in ("activation", "activation_params")}
    y = r.op("Conv", [v for v in n.inputs[:3] if v], **attrs)
    if r.arg(3):
        y = r.op("Add", [y, r.arg(3)])
    kind = n.attrs.get("activation")
    if not kind:
        return r.op("Identity", [y], n.outputs[0])
    return _activation(r, y, kind, n.attrs.get("activation_params") or [], n.outputs[0])


def gelu(r: Rewriter, approximate="none"):
    x = r.arg(0)
    if r.arg(1):  # BiasGelu / FastGelu's bias
        x = r.op("Add", [x, r.arg(1)])
    return r.op("Gelu", [x], r.node.outputs[0], approximate=approximate)


def quick_gelu(r: Rewriter):
    x = r.arg(0)
    alpha = float(r.node.attrs.get("alpha", 1.702))
    s = r.op("Sigmoid", [r.op("Mul", [x, r.const("alpha", np.float32(alpha))])])
    return r.op("Mul", [x, s], r.node.outputs[0])


def skip_layer_norm(r: Rewriter):
    n = r.node
    skip = r.op("Add", [r.arg(1), r.arg(4)]) if r.arg(4) else r.arg(1)  # input + (skip + bias): a dense layer's
    total = r.op("Add", [r.arg(0), skip])                                # output and its bias, then the residual
    outs = list(n.outputs) + [""] * 4
    r.nodes.append(Node(f"{n.name}::LayerNormalization", "LayerNormalization",
                        [total, r.arg(2)] + ([r.arg(3)] if r.arg(3) else []), [outs[0]],
                        {"axis": -1, "epsilon": float(n.attrs.get("epsilon", 1e-12))}))
    if outs[3]:
        r.op("Identity", [total], outs[3])


def _swap_last(r: Rewriter, v):
    """A constant v with its last two axes swapped."""
    if v not in r.constants:  # a computed operand: its rank is not known here
        raise UnsupportedModelError(f"node {r.node.name!r} ({r.node.op_type}): a transposed computed operand is "
                                    "not supported")
    rank = np.asarray(r.constants[v]).ndim
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return r.op("Transpose", [v], perm=perm)


def fused_matmul(r: Rewriter):
    """FusedMatMul(A, B; alpha, transA, transB): alpha * A' B' (the batch transposes are refused)."""
    n = r.node
    if n.attrs.get("transBatchA") or n.attrs.get("transBatchB"):
        raise UnsupportedModelError(f"node {n.name!r} (FusedMatMul): transBatchA/transBatchB are not supported")
    a = _swap_last(r, r.arg(0)) if n.attrs.get("transA") else r.arg(0)
    b = _swap_last(r, r.arg(1)) if n.attrs.get("transB") else r.arg(1)
    alpha = float(n.attrs.get("alpha", 1.0))
    if alpha == 1.0:
        return r.op("MatMul", [a, b], n.outputs[0])
    return r.op("Mul", [r.op("MatMul", [a, b]), r.const("alpha", np.float32(alpha))], n.outputs[0])


def fused_gemm(r: Rewriter):
    """FusedGemm: Gemm, then the activation it names."""
    n = r.node
    attrs = {k: v for k, v in n.attrs.items() if k in ("alpha", "beta", "transA", "transB")}
    y = r.op("Gemm", [v for v in n.inputs[:3] if v], **attrs)
    kind = n.attrs.get("activation")
    if not kind:
        return r.op("Identity", [y], n.outputs[0])
    params = [n.attrs[k] for k in ("activation_alpha", "activation_beta") if k in n.attrs]
    return _activation(r, y, kind, params, n.outputs[0])


def rms_norm(r: Rewriter, skip: bool):
    """(Skip)SimplifiedLayerNormalization: x / sqrt(mean(x^2) + eps) * scale over the last axis (RMSNorm); the
    skip form adds the skip (and bias) first and may return that sum."""
    n = r.node
    x = r.arg(0)
    outs = list(n.outputs) + [""] * 4
    if skip:
        x = r.op("Add", [x, r.op("Add", [r.arg(1), r.arg(3)]) if r.arg(3) else r.arg(1)])
        scale = r.arg(2)
    else:
        scale = r.arg(1)
    ms = r.op("ReduceMean", [r.op("Mul", [x, x]), r.const("axes", np.array([-1], np.int64))], keepdims=1)
    root = r.op("Sqrt", [r.op("Add", [ms, r.const("eps", np.float32(n.attrs.get("epsilon", 1e-5)))])])
    r.op("Mul", [r.op("Div", [x, root]), scale], outs[0])
    if skip and outs[3]:
        r.op("Identity", [x], outs[3])


def bias_add(r: Rewriter):
    """BiasAdd(X, bias, skip) = X + bias + skip."""
    return r.op("Add", [r.op("Add", [r.arg(0), r.arg(1)]), r.arg(2)], r.node.outputs[0])


def qlinear(float_op, operands, out_scale, attrs_from_node=True, weight_axis=None):
    """A QOperator op: `operands` = [(x, scale, zero point) input positions]; the result quantized with the
    scale and zero point at `out_scale` (positions), or left float (None)."""
    def rewrite(r: Rewriter):
        n = r.node
        if n.attrs.get("channels_last"):
            raise UnsupportedModelError(f"node {n.name!r} ({n.op_type}): channels_last=1 is not supported")
        ins = []
        for k, (x, s, z) in enumerate(operands):
            axis = weight_axis if (weight_axis is not None and k == 1) else 1
            ins.append(r.dq(r.arg(x), r.arg(s), r.arg(z) if z is not None else "", axis=axis))
        attrs = {k: v for k, v in n.attrs.items() if k != "channels_last"} if attrs_from_node else {}
        y = r.op(float_op, ins, **attrs)
        if out_scale is None:
            return r.op("Identity", [y], n.outputs[0])
        s, z = out_scale
        return r.q(y, r.arg(s), r.arg(z) if z is not None else "", n.outputs[0])
    return rewrite


def weighted(r: Rewriter, float_op, w_axis, bias_at, out_at, attrs):
    """QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B) and QGemm(A, as, az, B, bs, bz, C, ys, yz): the operands
    dequantized, the int32 bias with scale xs * ws, the float op, the result quantized (QGemm without ys: float)."""
    ins = [r.dq(r.arg(0), r.arg(1), r.arg(2)), r.dq(r.arg(3), r.arg(4), r.arg(5), axis=w_axis)]
    if r.arg(bias_at):
        xs, ws = r.constants.get(r.arg(1)), r.constants.get(r.arg(4))
        scale = r.const("bias_scale", (np.asarray(xs, np.float32) * np.asarray(ws, np.float32)).reshape(-1)) \
            if xs is not None and ws is not None else r.op("Mul", [r.arg(1), r.arg(4)])
        ins.append(r.dq(r.arg(bias_at), scale, "", axis=0))
    y = r.op(float_op, ins, **attrs)
    if not r.arg(out_at[0]):
        return r.op("Identity", [y], r.node.outputs[0])
    return r.q(y, r.arg(out_at[0]), r.arg(out_at[1]), r.node.outputs[0])


def qlinear_conv(r: Rewriter):
    return weighted(r, "Conv", 0, 8, (6, 7), r.node.attrs)


def qgemm(r: Rewriter):
    attrs = {k: v for k, v in r.node.attrs.items() if k in ("alpha", "transA", "transB")}
    return weighted(r, "Gemm", 0 if attrs.get("transB", 0) else 1, 6, (7, 8), attrs)


def integer_op(float_op, w_axis):
    """ConvInteger / MatMulInteger (a, b, a_zero_point, b_zero_point): the operands minus their zero points as
    float (DequantizeLinear with scale 1), then the float op."""
    def rewrite(r: Rewriter):
        one = r.const("one", np.float32(1))
        a = r.dq(r.arg(0), one, r.arg(2))
        w = r.dq(r.arg(1), one if not r.arg(3) or np.asarray(r.constants.get(r.arg(3), 0)).size <= 1
                 else r.const("ones", np.ones(np.asarray(r.constants[r.arg(3)]).size, np.float32)), r.arg(3),
                 axis=w_axis)
        y = r.op(float_op, [a, w], **r.node.attrs)
        return r.op("Cast", [y], r.node.outputs[0], to=6, _exact=True)  # int32, as declared (exact: see Cast)
    return rewrite


def matmul_to_float(r: Rewriter, dynamic: bool):
    """DynamicQuantizeMatMul(A, B, b_scale, b_zp, bias) / MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp,
    b_zp, bias): the float MatMul of the dequantized operands, plus the bias."""
    if dynamic:
        a, w, bias = r.arg(0), r.dq(r.arg(1), r.arg(2), r.arg(3), axis=-1), r.arg(4)
    else:
        a, w, bias = r.dq(r.arg(0), r.arg(2), r.arg(4)), r.dq(r.arg(1), r.arg(3), r.arg(5), axis=-1), r.arg(6)
    y = r.op("MatMul", [a, w])
    return r.op("Add" if bias else "Identity", [y, bias] if bias else [y], r.node.outputs[0])


def qlinear_concat(r: Rewriter):
    """QLinearConcat(y_scale, y_zp, (x, x_scale, x_zp)...)."""
    n = r.node
    parts = [r.dq(n.inputs[k], n.inputs[k + 1], n.inputs[k + 2]) for k in range(2, len(n.inputs), 3)]
    y = r.op("Concat", parts, axis=int(n.attrs.get("axis", 1)))
    return r.q(y, r.arg(0), r.arg(1), n.outputs[0])


def renamed(op_type):
    def rewrite(r: Rewriter):
        r.nodes.append(Node(r.node.name, op_type, list(r.node.inputs), list(r.node.outputs), dict(r.node.attrs)))
    return rewrite


UNARY_Q = [(0, 1, 2)]
REWRITES = {
    "QLinearConv": qlinear_conv,
    "QLinearMatMul": qlinear("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7), weight_axis=-1),
    "ConvInteger": integer_op("Conv", 0),
    "MatMulInteger": integer_op("MatMul", -1),
    MS + "QGemm": qgemm,
    MS + "FusedMatMul": fused_matmul,
    MS + "FusedGemm": fused_gemm,
    MS + "BiasAdd": bias_add,
    MS + "SimplifiedLayerNormalization": lambda r: rms_norm(r, False),
    MS + "SkipSimplifiedLayerNormalization": lambda r: rms_norm(r, True),
    "SimplifiedLayerNormalization": lambda r: rms_norm(r, False),
    MS + "FusedConv": fused_conv,
    MS + "Gelu": gelu,
    MS + "BiasGelu": gelu,
    MS + "FastGelu": lambda r: gelu(r, "tanh"),
    MS + "QuickGelu": quick_gelu,
    MS + "SkipLayerNormalization": skip_layer_norm,
    MS + "QLinearAdd": qlinear("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    MS + "QLinearMul": qlinear("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    MS + "QLinearGlobalAveragePool": qlinear("GlobalAveragePool", UNARY_Q, (3, 4)),
    MS + "QLinearAveragePool": qlinear("AveragePool", UNARY_Q, (3, 4)),
    MS + "QLinearSigmoid": qlinear("Sigmoid", UNARY_Q, (3, 4)),
    MS + "QLinearLeakyRelu": qlinear("LeakyRelu", UNARY_Q, (3, 4)),
    MS + "QLinearSoftmax": qlinear("Softmax", UNARY_Q, (3, 4)),
    MS + "QLinearConcat": qlinear_concat,
    MS + "DynamicQuantizeMatMul": lambda r: matmul_to_float(r, True),
    MS + "MatMulIntegerToFloat": lambda r: matmul_to_float(r, False),
    MS + "QuantizeLinear": renamed("QuantizeLinear"),
    MS + "DequantizeLinear": renamed("DequantizeLinear"),
    "LSTM": unroll,  # unrolled where the sequence length is fixed at load (fvgraph.ops.recurrent), else kept
    "GRU": unroll,
    "RNN": unroll,
    MS + "DynamicQuantizeLSTM": dynamic_quantize_lstm,  # an LSTM on the dequantized weights
}


class Names:
    """Fresh value names and new initializers for the rewritten graph."""

    def __init__(self, graph, initializers: dict):
        self.taken = {v for n in graph.nodes for v in list(n.inputs) + list(n.outputs)} | set(initializers)
        self.initializers = initializers
        self.value_info = dict(getattr(graph, "value_info", None) or {})  # shapes at load (recurrent ops' lengths)
        for v in getattr(graph, "inputs", ()):
            self.value_info.setdefault(v.name, v)

    def fresh(self, base: str) -> str:
        return unique_name(base, self.taken)

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.initializers[name] = np.asarray(value)
        return name


def decompose_nodes(graph, initializers: dict) -> list[Node] | None:
    """The graph's nodes with every rewritable op rewritten (new constants go into `initializers`), or None
    when there is none."""
    if not any(n.op_type in REWRITES for n in graph.nodes):
        return None
    names = Names(graph, initializers)
    out = []
    for n in graph.nodes:
        parts = decompose(n, names, initializers)
        out.extend(parts if parts is not None else [n])
    return out


def decompose(node: Node, names, constants: dict) -> list[Node] | None:
    """The standard ops replacing `node`, or None when it is kept as it is. `names` makes initializers
    (`const(base, array)`) and fresh value names (`fresh(base)`)."""
    rewrite = REWRITES.get(node.op_type)
    if rewrite is None:
        return None
    r = Rewriter(node, names, constants)
    rewrite(r)
    return r.nodes
