"""LSTM, GRU and RNN (fvgraph.ops.recurrent): fvgraph's forward on its NumPy executor equals onnxruntime for
every direction, layout, with and without bias and initial states; the gradient of a class score equals
float64 central finite differences of onnxruntime running the same model in float64, through Y, Y_h, Y_c and
through initial states computed from the input. Sizes: batch 2, sequence 4, input 3, hidden 3-5."""
import itertools
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fvgraph as fv
from fvgraph.errors import FvGraphError, UnsupportedModelError
from tests.conftest import ort_session, rel_l2

N, STEPS, IN, CLASSES = 2, 4, 3, 3
HIDDEN = {"LSTM": 3, "GRU": 4, "RNN": 5}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
FD_TOLERANCE = 1e-3  # relative L2; the float32 differences' rounding is ~1e-4 of a typical gradient, a wrong
                     # gate, direction or time step is O(1)


def _c(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def recurrent_model(kind, direction="forward", layout=0, bias=True, init=None, peephole=False, lbr=0,
                    steps=STEPS, extra=None):
    """x (N, T, 3) -> [Transpose to (T, N, 3) for layout 0] -> kind -> Y, Y_h[, Y_c] each to (N, ...) ->
    Flatten -> Concat -> Gemm (3 classes). init: None, "const" (initial states as initializers) or "computed"
    (tanh of a product of x's mean over time, so the gradient also flows through them). steps=None: the
    length is symbolic (not fixed at load) and the head reads Y_h only."""
    rng = np.random.default_rng(zlib.crc32(repr((kind, direction, layout, bias, init, peephole, lbr)).encode()))
    H, G = HIDDEN[kind], GATES[kind]
    D = 2 if direction == "bidirectional" else 1
    f = lambda *s: (rng.standard_normal(s) * 0.6).astype(np.float32)  # noqa: E731
    inits = [_c("W", f(D, G * H, IN)), _c("R", f(D, G * H, H))]
    ins = ["X", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(_c("B", f(D, 2 * G * H)))
    nodes = []
    x_info = helper.make_tensor_value_info("x", T.FLOAT, ["N", steps or "T", IN])
    nodes.append(helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]) if layout == 0
                 else helper.make_node("Identity", ["x"], ["X"]))
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    if init == "const":
        shape = (D, N, H) if layout == 0 else (N, D, H)
        inits += [_c(s, f(*shape)) for s in states]
    elif init == "computed":
        inits.append(_c("nDH", np.array([-1, D, H], np.int64)))
        nodes.append(helper.make_node("ReduceMean", ["x"], ["xm"], axes=[1], keepdims=0))
        for s in states:
            inits.append(_c(f"{s}W", f(IN, D * H)))
            nodes += [helper.make_node("MatMul", ["xm", f"{s}W"], [f"{s}m"]),
                      helper.make_node("Tanh", [f"{s}m"], [f"{s}t"]),
                      helper.make_node("Reshape", [f"{s}t", "nDH"], [f"{s}r" if layout == 0 else s])]
            if layout == 0:
                nodes.append(helper.make_node("Transpose", [f"{s}r"], [s], perm=[1, 0, 2]))
    ins += ["", "h0" if init else ""]
    if kind == "LSTM":
        ins += ["c0" if init else ""]
        if peephole:
            ins.append("P")
            inits.append(_c("P", f(D, 3 * H)))
    while ins and not ins[-1]:
        ins.pop()
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    attrs = dict(direction=direction, hidden_size=H, **({"layout": layout} if layout else {}),
                 **({"linear_before_reset": lbr} if lbr else {}), **(extra or {}))
    nodes.append(helper.make_node(kind, ins, outs, name="the_rnn", **attrs))
    width = 0
    flat = []
    for o in outs if steps else ["Y_h"]:
        if layout == 0:  # Y (T, D, N, H) -> (N, T, D, H); Y_h (D, N, H) -> (N, D, H)
            perm = [2, 0, 1, 3] if o == "Y" else [1, 0, 2]
            nodes.append(helper.make_node("Transpose", [o], [o + "t"], perm=perm))
            src = o + "t"
        else:
            src = o
        nodes.append(helper.make_node("Flatten", [src], [o + "f"], axis=1))
        flat.append(o + "f")
        width += (steps if o == "Y" else 1) * D * H
    nodes += [helper.make_node("Concat", flat, ["feat"], axis=1),
              helper.make_node("Gemm", ["feat", "Wg"], ["logits"], transB=1)]
    inits.append(_c("Wg", f(CLASSES, width)))
    out_infos = [helper.make_tensor_value_info("logits", T.FLOAT, ["N", CLASSES])]
    g = helper.make_graph(nodes, "rec", [x_info], out_infos, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def time_major(m):
    """The model with its layout-1 node as a layout-0 one between Transposes (onnxruntime's CPU kernels
    refuse layout 1): X, initial_h/c (N, T|D, ...) -> (T|D, N, ...), Y (T, D, N, H) -> (N, T, D, H), Y_h/Y_c
    (D, N, H) -> (N, D, H), as the ONNX spec defines layout 1."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = []
    for n in out.graph.node:
        layout = next((a for a in n.attribute if a.name == "layout"), None)
        if n.op_type not in GATES or layout is None or layout.i == 0:
            nodes.append(n)
            continue
        layout.i = 0
        for k in (0, 5, 6):
            if k < len(n.input) and n.input[k]:
                nodes.append(helper.make_node("Transpose", [n.input[k]], [n.input[k] + "_tm"], perm=[1, 0, 2]))
                n.input[k] += "_tm"
        nodes.append(n)
        for k, o in enumerate(n.output):
            if o:
                n.output[k] = o + "_tm"
                nodes.append(helper.make_node("Transpose", [o + "_tm"], [o], perm=[2, 0, 1, 3] if k == 0 else [1, 0, 2]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def reference(m):
    return ort_session(time_major(m))


def _x(steps=STEPS):
    return np.random.default_rng(7).standard_normal((N, steps, IN)).astype(np.float32)


def fd_gradient(m, x, target, eps=2e-2):
    """d logits[i, target] / dx[i] by central differences of onnxruntime's outputs (float32: its LSTM has no
    float64 kernel), taken in float64 and Richardson-extrapolated from steps eps and 2 eps (error O(eps^4)
    plus rounding ~1e-7 / eps). Each perturbation is its own run of the whole batch (initial states given
    as constants are per sample)."""
    sess = reference(m)
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        d = []
        for step in (eps, 2 * eps):
            outs = []
            for sign in (1, -1):
                xp = x.copy()
                xp[idx] += np.float32(sign * step)
                outs.append((float(sess.run(None, {"x": xp})[0][idx[0], target]), float(xp[idx]) - float(x[idx])))
            d.append((outs[0][0] - outs[1][0]) / (outs[0][1] - outs[1][1]))
        grad[idx] = (4 * d[0] - d[1]) / 3
    return grad


KINDS = [("LSTM", 0), ("GRU", 0), ("GRU", 1), ("RNN", 0)]
FORWARD = [(k, lbr, d, lay, b, init) for (k, lbr), d, lay, b, init in itertools.product(
    KINDS, ("forward", "reverse", "bidirectional"), (0, 1), (True, False), (None, "const", "computed"))]


@pytest.mark.parametrize("kind,lbr,direction,layout,bias,init", FORWARD,
                         ids=[f"{k}{'-lbr' if l else ''}-{d}-L{lay}-{'B' if b else 'noB'}-{i}"
                              for k, l, d, lay, b, i in FORWARD])
def test_forward_equals_onnxruntime(kind, lbr, direction, layout, bias, init):
    m = recurrent_model(kind, direction, layout, bias, init, lbr=lbr)
    x = _x()
    ref = reference(m).run(None, {"x": x})[0]
    model = fv.load(m, engine="numpy")
    assert not any(n.op_type == kind for n in model.graph.nodes)  # unrolled into standard ops
    np.testing.assert_allclose(model.run(x), ref, rtol=1e-5, atol=1e-5)


GRADIENT = [("LSTM", 0, d, lay, "computed") for d in ("forward", "reverse", "bidirectional") for lay in (0, 1)] + \
           [("GRU", 0, "bidirectional", 0, "computed"), ("GRU", 1, "reverse", 1, "computed"),
            ("GRU", 0, "forward", 1, None), ("RNN", 0, "bidirectional", 1, "computed"),
            ("RNN", 0, "reverse", 0, None), ("LSTM", 0, "forward", 0, "const")]


@pytest.mark.parametrize("kind,lbr,direction,layout,init", GRADIENT,
                         ids=[f"{k}{'-lbr' if l else ''}-{d}-L{lay}-{i}" for k, l, d, lay, i in GRADIENT])
def test_gradient_equals_finite_differences(kind, lbr, direction, layout, init):
    m = recurrent_model(kind, direction, layout, True, init, lbr=lbr)
    x = _x()
    fd = fd_gradient(m, x, target=1)
    assert np.abs(fd).max() > 1e-2
    ref = reference(m).run(None, {"x": x})[0]
    for engine in ("onnxruntime", "numpy"):
        model = fv.load(m, engine=engine)  # (onnxruntime refuses layout 1 itself: `run` falls back to the twin)
        np.testing.assert_allclose(model.run(x), ref, rtol=1e-5, atol=1e-5)
        got = model.explain(x, "gradient", target=1).relevance
        assert rel_l2(got, fd) < FD_TOLERANCE, (engine, rel_l2(got, fd))


def test_lstm_peepholes_forward_and_gradient():
    m = recurrent_model("LSTM", "bidirectional", 0, True, "computed", peephole=True)
    x = _x()
    np.testing.assert_allclose(fv.load(m, engine="numpy").run(x), reference(m).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
    got = fv.load(m).explain(x, "gradient", target=2).relevance
    assert rel_l2(got, fd_gradient(m, x, target=2)) < FD_TOLERANCE


def test_activations_and_constant_sequence_lens():
    """Named activations other than the defaults (smooth ones for the finite differences; Relu forward only),
    and a sequence_lens constant equal to the length."""
    x = _x()
    m = recurrent_model("RNN", "bidirectional", 0, True, "const", extra={"activations": ["Relu", "Softsign"]})
    np.testing.assert_allclose(fv.load(m, engine="numpy").run(x), reference(m).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
    m = recurrent_model("GRU", "bidirectional", 0, True, None,
                        extra={"activations": ["Softsign", "Softplus", "Sigmoid", "Softsign"]})
    m.graph.initializer.append(_c("lens", np.full(N, STEPS, np.int32)))
    node = next(n for n in m.graph.node if n.op_type == "GRU")
    node.input.extend([""] * (5 - len(node.input)))
    node.input[4] = "lens"
    model = fv.load(m, engine="numpy")
    assert not any(n.op_type == "GRU" for n in model.graph.nodes)
    np.testing.assert_allclose(model.run(x), reference(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    got = fv.load(m).explain(x, "gradient", target=0).relevance
    assert rel_l2(got, fd_gradient(m, x, target=0)) < FD_TOLERANCE


LENGTH_FREE = [("LSTM", "bidirectional", 0), ("LSTM", "reverse", 1), ("GRU", "bidirectional", 1),
               ("GRU", "forward", 0), ("RNN", "bidirectional", 0), ("RNN", "reverse", 1)]


@pytest.mark.parametrize("kind,direction,layout", LENGTH_FREE)
def test_length_free_at_load_runs_and_refuses_the_reverse_by_name(kind, direction, layout):
    """A sequence length left symbolic: the node stays, fvgraph's own kernel runs it (at two lengths, every
    output equal to onnxruntime's), and its reverse pass is refused in one line naming the node."""
    m = recurrent_model(kind, direction, layout, True, "computed", steps=None, lbr=int(kind == "GRU" and layout))
    model = fv.load(m, engine="numpy")
    assert any(n.op_type == kind for n in model.graph.nodes)
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    sess = ort_session(time_major(m), extra_outputs=outs + ["logits"])
    for steps in (4, 6):
        x = _x(steps)
        got = model.run(x, outputs=["logits"] + outs)
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
        for name in ["logits"] + outs:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    with pytest.raises(UnsupportedModelError, match="the_rnn.*sequence length"):
        model.explain(_x(), "gradient", target=0)


def test_unsupported_attributes_are_named_at_load():
    m = recurrent_model("LSTM", extra={"clip": 1.0})
    with pytest.raises(UnsupportedModelError, match="the_rnn.*clip"):
        fv.load(m, engine="numpy")
    m = recurrent_model("RNN", extra={"activations": ["HardSigmoid"], "activation_alpha": [0.3]})
    with pytest.raises(UnsupportedModelError, match="the_rnn.*activation_alpha"):
        fv.load(m, engine="numpy")


def test_other_length_at_run_time_fails_instead_of_truncating():
    """The unrolled graph splits the time axis into exactly the length it was unrolled for: a longer sequence
    reaching it (past the input's own shape check) is an error, never its first steps silently."""
    model = fv.load(recurrent_model("LSTM", "forward", 1, True, None), engine="numpy")
    with pytest.raises(FvGraphError, match="the_rnn.*Split.*split sizes"):
        model.executor.run({"x": _x(steps=STEPS + 1)}, ["logits"])


def conv_lstm_model():
    """The shape of a text recognizer: x (N, 2, 4, 6) -> Conv 3x3 (4 channels, pad 1) -> Tanh (smooth, for the finite differences) -> Transpose to
    (N, W=6, C, H) -> Reshape (N, 6, 16) -> Transpose to time-major -> bidirectional LSTM (hidden 5) -> Y_h ->
    (N, 10) -> Gemm (3 classes)."""
    rng = np.random.default_rng(11)
    f = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    H = 5
    nodes = [helper.make_node("Conv", ["x", "Wc", "Bc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["a"]),
             helper.make_node("Transpose", ["a"], ["at"], perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["at", "shape"], ["seq"]),
             helper.make_node("Transpose", ["seq"], ["X"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["X", "W", "R", "B"], ["", "Y_h"], name="the_rnn", hidden_size=H,
                              direction="bidirectional"),
             helper.make_node("Transpose", ["Y_h"], ["ht"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["ht"], ["hf"]),
             helper.make_node("Gemm", ["hf", "Wg", "Bg"], ["logits"], transB=1)]
    inits = [_c("Wc", f(4, 2, 3, 3)), _c("Bc", f(4)), _c("shape", np.array([0, 6, 16], np.int64)),
             _c("W", f(2, 4 * H, 16)), _c("R", f(2, 4 * H, H)), _c("B", f(2, 8 * H)),
             _c("Wg", f(CLASSES, 2 * H)), _c("Bg", f(CLASSES))]
    g = helper.make_graph(nodes, "conv_lstm", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 2, 4, 6])],
                          [helper.make_tensor_value_info("logits", T.FLOAT, ["N", CLASSES])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_conv_features_into_an_lstm(tmp_path):
    m = conv_lstm_model()
    path = tmp_path / "conv_lstm.onnx"
    onnx.save(m, str(path))
    x = np.random.default_rng(5).standard_normal((N, 2, 4, 6)).astype(np.float32)
    ref = ort_session(m).run(None, {"x": x})[0]
    fd = fd_gradient(m, x, target=2)
    assert np.abs(fd).max() > 1e-2
    for engine in ("onnxruntime", "numpy"):
        model = fv.load(str(path), engine=engine)
        np.testing.assert_allclose(model.run(x), ref, rtol=1e-5, atol=1e-5)
        got = model.explain(x, "gradient", target=2).relevance
        assert rel_l2(got, fd) < FD_TOLERANCE, (engine, rel_l2(got, fd))


def test_dynamic_quantize_lstm_is_the_lstm_of_its_dequantized_weights():
    """com.microsoft's DynamicQuantizeLSTM (W (D, in, 4H) and R (D, H, 4H) uint8 with per-direction or
    per-column scales): fvgraph runs and differentiates the float LSTM of the dequantized weights, equal to
    onnxruntime's LSTM on those weights, and within the activation-quantization rounding of onnxruntime's
    DynamicQuantizeLSTM itself."""
    H, D = 3, 2
    rng = np.random.default_rng(3)
    wq = rng.integers(40, 220, (D, IN, 4 * H)).astype(np.uint8)
    rq = rng.integers(30, 220, (D, H, 4 * H)).astype(np.uint8)
    w_scale, w_zero = np.array([0.012, 0.009], np.float32), np.array([131, 125], np.uint8)
    r_scale = rng.uniform(0.004, 0.008, (D, 4 * H)).astype(np.float32)
    r_zero = np.full((D, 4 * H), 128, np.uint8)
    bias = (rng.standard_normal((D, 8 * H)) * 0.3).astype(np.float32)
    wg = (rng.standard_normal((CLASSES, D * H))).astype(np.float32)

    def model(quantized):
        if quantized:
            lstm = helper.make_node("DynamicQuantizeLSTM", ["X", "W", "R", "B", "", "", "", "", "ws", "wz", "rs", "rz"],
                                    ["", "Y_h"], name="the_rnn", domain="com.microsoft", hidden_size=H,
                                    direction="bidirectional")
            inits = [_c("W", wq), _c("R", rq), _c("ws", w_scale), _c("wz", w_zero), _c("rs", r_scale), _c("rz", r_zero)]
        else:
            wf = ((wq.astype(np.float32) - w_zero[:, None, None]) * w_scale[:, None, None]).transpose(0, 2, 1)
            rf = ((rq.astype(np.float32) - r_zero[:, None, :]) * r_scale[:, None, :]).transpose(0, 2, 1)
            lstm = helper.make_node("LSTM", ["X", "W", "R", "B"], ["", "Y_h"], hidden_size=H, direction="bidirectional")
            inits = [_c("W", np.ascontiguousarray(wf)), _c("R", np.ascontiguousarray(rf))]
        nodes = [helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]), lstm,
                 helper.make_node("Transpose", ["Y_h"], ["ht"], perm=[1, 0, 2]),
                 helper.make_node("Flatten", ["ht"], ["hf"]),
                 helper.make_node("Gemm", ["hf", "Wg"], ["logits"], transB=1)]
        g = helper.make_graph(nodes, "dq_lstm", [helper.make_tensor_value_info("x", T.FLOAT, ["N", STEPS, IN])],
                              [helper.make_tensor_value_info("logits", T.FLOAT, ["N", CLASSES])],
                              inits + [_c("B", bias), _c("Wg", wg)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        return m

    q, f = model(True), model(False)
    x = _x()
    ref = ort_session(f).run(None, {"x": x})[0]
    own = ort_session(q).run(None, {"x": x})[0]
    got = fv.load(q, engine="numpy").run(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(own - ref).max() < 0.05 * np.abs(ref).max()  # onnxruntime's run-time rounding of X and H
    relevance = fv.load(q).explain(x, "gradient", target=1).relevance
    assert rel_l2(relevance, fd_gradient(f, x, target=1)) < FD_TOLERANCE
