"""The reverse pass: gradients against finite differences on whole networks, the ReLU rules of the paper's
Figure 2, LRP by hand and by conservation, CAM and Grad-CAM against independent computations."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from tests.conftest import rel_l2
from tests.zoo import MIN_OPSET, ZOO, NetBuilder


def to_float64(proto):
    """The same network computing in float64 (for finite differences)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    return m


@pytest.mark.parametrize("name", sorted(ZOO))
def test_gradient_equals_finite_differences_on_the_zoo(name):
    model = fv.load(to_float64(ZOO[name](opset=max(13, MIN_OPSET.get(name, 9)))))
    rng = np.random.default_rng(7)
    shape = [2] + list(model.inputs[0].shape[1:])
    x = rng.standard_normal(shape)
    e = model.explain(x, "gradient", target=[3, 5])
    assert e.relevance.shape == x.shape and e.relevance.dtype == np.float64
    logits_name = fv.methods.attribution.logits_value(model)

    def score(xx):
        out = model.run(xx, outputs=[logits_name])[logits_name]
        return out[0, 3] + out[1, 5]

    h = 1e-6
    for _ in range(3):
        u = rng.standard_normal(shape)
        fd = (score(x + h * u) - score(x - h * u)) / (2 * h)
        assert abs(np.sum(e.relevance * u) - fd) <= 1e-6 * max(abs(fd), 1e-3), (name, np.sum(e.relevance * u), fd)


# --------------------------------------------------------------------------- ReLU rules (Figure 2)
def _relu_net():
    """y = sum(W * relu(x)): the reverse signal arriving at the ReLU is W."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    W = np.array([[-2, 0, -1, 4], [6, -3, 1, -1], [2, -1, 3, 0.5], [-4, 2, -2, 1]], np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "relu", [x], [y], [numpy_helper.from_array(W.reshape(1, 16), "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), W


def test_relu_rules_on_a_hand_worked_4x4_example():
    proto, W = _relu_net()
    model = fv.load(proto)
    x = np.array([[1, -1, 5, -2], [2, -5, -7, 3], [-3, 2, 4, 1], [0.5, -1, -2, 6]], np.float32)
    # worked out by hand from Figure 2's definitions, signal R = W coming back to the ReLU:
    backprop = np.array([[-2, 0, -1, 0], [6, 0, 0, -1], [0, -1, 3, 0.5], [-4, 0, 0, 1]], np.float32)
    deconv = np.array([[0, 0, 0, 4], [6, 0, 1, 0], [2, 0, 3, 0.5], [0, 2, 0, 1]], np.float32)
    guided = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [0, 0, 3, 0.5], [0, 0, 0, 1]], np.float32)
    for method, want in (("gradient", backprop), ("deconvnet", deconv), ("guided", guided)):
        got = model.explain(x[None, None], method, target=0).relevance[0, 0]
        np.testing.assert_array_equal(got, want, err_msg=method)


def test_deconvnet_equals_gradient_without_relus():
    b = NetBuilder((1, 3, 12, 12), 13, seed=3)
    y = b.op("MaxPool", [b.conv(b.op("Tanh", [b.conv("input", 3, 4, 3)]), 4, 4, 3)], kernel_shape=[2, 2],
             strides=[2, 2])
    y = b.gemm(b.flatten(b.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])), 36, 5)
    model = fv.load(b.model(y))
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(model.explain(x, "deconvnet").relevance, model.explain(x, "gradient").relevance)


def test_guided_equals_gradient_where_everything_is_positive():
    """All forward activations and backward signals positive: the guided mask never bites."""
    b = NetBuilder((1, 2, 8, 8), 13, seed=4)
    w1 = b.const(np.abs(np.random.default_rng(1).standard_normal((3, 2, 3, 3))))
    h = b.relu(b.op("Conv", ["input", w1], pads=[1, 1, 1, 1]))
    w2 = b.const(np.abs(np.random.default_rng(2).standard_normal((4, 3 * 64))))
    y = b.op("Gemm", [b.relu(b.flatten(h)), w2], transB=1)
    model = fv.load(b.model(y))
    x = np.abs(np.random.default_rng(3).standard_normal((1, 2, 8, 8))).astype(np.float32) + 0.1
    g, gd = model.explain(x, "gradient", target=1), model.explain(x, "guided", target=1)
    assert np.all(g.relevance > 0)
    np.testing.assert_allclose(gd.relevance, g.relevance, rtol=1e-6)


def test_relu6_is_relu_like_for_deconvnet_and_guided():
    """Clip(0, 6): the guided gate is 0 < x < 6."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    W = np.array([[1.0, -2.0, 3.0, -1.0]], np.float32)
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Gemm", ["c", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "r6", [x], [y], [numpy_helper.from_array(np.float32(0), "lo"),
                                                  numpy_helper.from_array(np.float32(6), "hi"),
                                                  numpy_helper.from_array(W, "W")])
    model = fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    xin = np.array([[2.0, 3.0, 7.0, -1.0]], np.float32)
    np.testing.assert_array_equal(model.explain(xin, "guided", target=0).relevance, [[1, 0, 0, 0]])
    np.testing.assert_array_equal(model.explain(xin, "deconvnet", target=0).relevance, [[1, 0, 3, 0]])
    np.testing.assert_array_equal(model.explain(xin, "gradient", target=0).relevance, [[1, -2, 0, 0]])


# --------------------------------------------------------------------------- LRP
def _dense2():
    """Two dense layers: x (1, 3) -> relu(x W1^T + b1) -> W2^T + b2 -> (1, 2)."""
    rng = np.random.default_rng(5)
    W1 = rng.standard_normal((4, 3)).astype(np.float64)
    b1 = np.array([0.1, -0.2, 0.05, 0.3])
    W2 = rng.standard_normal((2, 4)).astype(np.float64)
    b2 = np.array([0.2, -0.1])
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2])
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "d2", [x], [y], [numpy_helper.from_array(v, k) for k, v in
                                                  (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), W1, b1, W2, b2


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _rules_file(tmp_path, first, second, **params):
    text = 'name = "t"\nseed = "output"\n[params]\n' + "".join(f"{k} = {v}\n" for k, v in params.items())
    text += f'[ops]\nRelu = "pass"\n[[override]]\nop = "Gemm"\nposition = "first"\nrule = "{first}"\n'
    text += f'[[override]]\nop = "Gemm"\nposition = "last"\nrule = "{second}"\n'
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "alphabeta", "zb", "w2", "flat"])
def test_lrp_rules_by_hand_on_two_dense_layers(rule, tmp_path):
    proto, W1, b1, W2, b2 = _dense2()
    model = fv.load(proto)
    x = np.array([[0.7, -1.2, 0.4]])
    eps, alpha, beta, lo, hi = 0.01, 2.0, 1.0, -2.0, 2.0
    h = np.maximum(x @ W1.T + b1, 0)
    y = h @ W2.T + b2
    c = 1
    R2 = np.zeros(2)
    R2[c] = y[0, c]
    # top layer: epsilon in every case, by hand
    z = h[0] @ W2.T + b2
    Rh = h[0] * (W2.T @ (R2 / _stab(z, eps)))
    xi = x[0]
    P, N = np.maximum(W1, 0), np.minimum(W1, 0)
    xp_, xn = np.maximum(xi, 0), np.minimum(xi, 0)
    if rule == "epsilon":
        zz = W1 @ xi + b1
        want = xi * (W1.T @ (Rh / _stab(zz, eps)))
    elif rule in ("zplus", "alphabeta"):
        zp = P @ xp_ + N @ xn
        pos = xp_ * (P.T @ (Rh / _stab(zp, eps))) + xn * (N.T @ (Rh / _stab(zp, eps)))
        want = pos
        if rule == "alphabeta":
            zn = N @ xp_ + P @ xn
            neg = xp_ * (N.T @ (Rh / _stab(zn, eps))) + xn * (P.T @ (Rh / _stab(zn, eps)))
            want = alpha * pos - beta * neg
    elif rule == "zb":
        l, hh = np.full(3, lo), np.full(3, hi)
        zz = W1 @ xi - P @ l - N @ hh
        s = Rh / _stab(zz, eps)
        want = xi * (W1.T @ s) - l * (P.T @ s) - hh * (N.T @ s)
    elif rule == "w2":
        V = W1 ** 2
        want = V.T @ (Rh / _stab(V.sum(axis=1), eps))
    else:
        V = np.ones_like(W1)
        want = V.T @ (Rh / _stab(V.sum(axis=1), eps))
    rules = _rules_file(tmp_path, rule, "epsilon", epsilon=eps, alpha=alpha, beta=beta, low=lo, high=hi)
    got = model.explain(x, str(rules), target=c).relevance[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _zero_biases(proto):
    """Biases zero, BatchNorm shifts zero (mean 0, bias 0), so LRP-epsilon conserves relevance exactly."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        targets = []
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2:
            targets = [n.input[2]]
        if n.op_type == "BatchNormalization":
            targets = [n.input[2], n.input[3]]
        for name in targets:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), name))
    return m


def _cuts(model):
    """Layers every path from input to output goes through (relevance is conserved across these)."""
    g = model.graph
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    consumers = g.consumers()
    last_use = {v: max(pos[id(c)] for c in cs) for v, cs in consumers.items()}
    dyn = [l for l in model.layers]
    out = []
    for l in dyn:
        p = model.executor.producer_index[l.output]
        live = [u for u in dyn if model.executor.producer_index[u.output] < p and last_use.get(u.output, -1) > p]
        if not live:
            out.append(l)
    return out


@pytest.mark.parametrize("name", ["vgg_like", "resnet_like", "inception_like", "mobilenet_like"])
def test_lrp_epsilon_conserves_relevance_layer_by_layer(name):
    proto = _zero_biases(ZOO[name](opset=13) if name != "vgg_like" else ZOO[name](softmax=False))
    model = fv.load(proto)
    x = np.abs(np.random.default_rng(0).standard_normal([1] + list(model.inputs[0].shape[1:]))).astype(np.float32)
    consumers = model.graph.consumers()
    folded = {l.name for l in model.layers if l.op_type == "Conv"  # canonized: the Conv+BN pair is one layer
              and [c.op_type for c in consumers.get(l.output, [])] == ["BatchNormalization"]}
    layers = [l.name for l in _cuts(model) if l.name not in folded]
    assert len(layers) >= 5
    e = model.explain(x, "lrp-epsilon", epsilon=1e-9, return_layers=layers)
    total = float(e.output[0, e.target[0]])
    assert abs(e.relevance.sum() - total) <= 1e-5 * abs(total), (e.relevance.sum(), total)
    for l in layers:
        s = float(e.layers[l].sum())
        assert abs(s - total) <= 1e-5 * abs(total), (l, s, total)


def test_batchnorm_folding_keeps_the_logits():
    model = fv.load(ZOO["resnet_like"]())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = model.graph.output_names()[0]
    fused = model.run(x)  # forward-only runs fold BN into the convs
    unfused = model.forward(x, [out], keep=True).values[out]  # the tape keeps every op as it is
    assert rel_l2(fused, unfused) < 1e-5
    e = model.explain(x, "lrp-epsilon")
    assert any("folded" in r for r in e.rules_used.values())


def test_lrp_composite_uses_zb_first_then_alphabeta_and_epsilon():
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "lrp-composite")
    convs = [n.name for n in model.graph.nodes if n.op_type == "Conv"]
    gemms = [n.name for n in model.graph.nodes if n.op_type == "Gemm"]
    assert e.rules_used[convs[0]] == "zb"
    assert all(e.rules_used[c] == "alphabeta" for c in convs[1:])
    assert all(e.rules_used[g] == "epsilon" for g in gemms)
    assert np.isfinite(e.relevance).all() and np.abs(e.relevance).sum() > 0


# --------------------------------------------------------------------------- CAM / Grad-CAM
def test_cam_equals_the_weighted_sum_of_the_last_feature_maps():
    model = fv.load(ZOO["resnet_like"]())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "cam", target=[1, 4], upsample=False)
    gap = next(n for n in model.graph.nodes if n.op_type == "GlobalAveragePool")
    gemm = next(n for n in model.graph.nodes if n.op_type == "Gemm")
    A = model.run(x, outputs=[gap.inputs[0]])[gap.inputs[0]]
    W = model.graph.initializers[gemm.inputs[1]]
    want = np.stack([np.tensordot(W[c], A[i], axes=1) for i, c in enumerate([1, 4])])
    np.testing.assert_allclose(e.relevance, want, rtol=1e-5, atol=1e-5)
    up = model.explain(x, "cam", target=[1, 4])
    assert up.relevance.shape == (2, 32, 32)


def test_gradcam_equals_the_gradient_weighted_maps():
    model = fv.load(to_float64(ZOO["vgg_like"](softmax=False)))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    layer = [l for l in model.layers if l.op_type == "Relu"][2]
    e = model.explain(x, "gradcam", target=2, layer=layer.name, upsample=False)
    A = model.run(x, outputs=[layer.output])[layer.output]
    out = model.graph.output_names()[0]
    # the gradient of the logit w.r.t. A, by finite differences through the rest of the network
    g = model.explain(x, "gradient", target=fv.Unit(layer.name))  # sanity: Unit targets run
    assert g.relevance.shape == x.shape
    h = 1e-6
    dA = np.zeros_like(A)
    sub = _tail(model, layer.output, out)
    for idx in np.ndindex(A.shape):
        Ap, Am = A.copy(), A.copy()
        Ap[idx] += h
        Am[idx] -= h
        dA[idx] = (sub(Ap)[0, 2] - sub(Am)[0, 2]) / (2 * h)
    alpha = dA.mean(axis=(2, 3))
    want = np.maximum(np.einsum("nk,nkhw->nhw", alpha, A), 0)
    np.testing.assert_allclose(e.relevance, want, rtol=1e-6, atol=1e-9)


def _tail(model, start, out):
    """The network from value `start` to `out`, as a function (runs the executor from a feed there)."""
    ex = model.executor

    def f(a):
        values = dict(ex.constants)
        values[start] = a
        begin = ex.producer_index[start]
        for i in range(begin + 1, len(model.graph.nodes)):
            n = model.graph.nodes[i]
            if all(not v or v in values for v in n.inputs):
                for o, val in zip(n.outputs, ex.kernels[i].forward(*[values[v] if v else None for v in n.inputs])):
                    values[o] = val
        return values[out]
    return f


def test_gradcam_default_layer_and_cam_refusal():
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "gradcam")
    assert e.relevance.shape == (1, 32, 32) and e.extras["layer"]
    with pytest.raises(fv.InputError, match="global average pooling"):
        model.explain(x, "cam")


# --------------------------------------------------------------------------- targets and bad input
def test_targets_batch_units_and_return_layers():
    model = fv.load(ZOO["resnet_like"]())
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "gradient")
    np.testing.assert_array_equal(e.target, model.run(x).argmax(axis=1))
    per_sample = model.explain(x, "gradient", target=[0, 1, 2])
    single = model.explain(x[1:2], "gradient", target=1)
    np.testing.assert_allclose(per_sample.relevance[1:2], single.relevance, rtol=1e-5, atol=1e-7)
    conv = model.layers[3].name
    u = model.explain(x, "guided", target=fv.Unit(conv, channel=2, y=4, x=5))
    assert u.relevance.shape == x.shape and np.abs(u.relevance).sum() > 0
    # a unit's gradient only sees its receptive field
    assert np.abs(u.relevance[..., 20:, 20:]).sum() == 0
    r = model.explain(x, "lrp-epsilon", return_layers=[conv, -2])
    assert set(r.layers) == {conv, -2}


def test_through_softmax_and_seed_arrays():
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = model.explain(x, "gradient", target=1)
    b = model.explain(x, "gradient", target=1, through_softmax=True)
    assert not np.allclose(a.relevance, b.relevance)
    seed = np.zeros((2, 10), np.float32)
    seed[:, 1] = 1
    np.testing.assert_allclose(model.explain(x, "gradient", target=seed).relevance, a.relevance, rtol=1e-6)


def test_bad_methods_targets_and_presets(tmp_path):
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(fv.RuleError, match="unknown method"):
        model.explain(x, "smoothgradient")
    with pytest.raises(fv.InputError, match="out of range"):
        model.explain(x, "gradient", target=10)
    with pytest.raises(fv.InputError, match="2 targets|batch of 2"):
        model.explain(x, "gradient", target=[1, 2, 3])
    with pytest.raises(fv.InputError, match="unknown layer"):
        model.explain(x, "gradient", target=fv.Unit("conv_nope"))
    with pytest.raises(fv.InputError, match="out of range"):
        model.explain(x, "gradient", target=fv.Unit(0, channel=99))
    with pytest.raises(fv.InputError, match="shape"):
        model.explain(x, "gradient", target=np.zeros((2, 3), np.float32))
    with pytest.raises(fv.RuleError, match="unknown parameter"):
        model.explain(x, "lrp-epsilon", gamma=0.25)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[ops]\nRelu = "guided"\nConv = "zplusplus"\n')
    with pytest.raises(fv.RuleError, match=r"line 4.*zplusplus"):
        fv.Rules.load(bad)
    bad.write_text('name = "bad"\n[ops]\nRelu = "guided"\nConvolution = "epsilon"\n')
    with pytest.raises(fv.RuleError, match=r"line 4.*Convolution"):
        fv.Rules.load(bad)


def test_a_users_preset_file_runs(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('name = "mine"\ndefault = "gradient"\n[ops]\nRelu = "guided"\n'
                 '[[override]]\nname = "Relu_3"\nrule = "deconvnet"\n')
    model = fv.load(ZOO["vgg_like"]())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, str(p))
    relus = [n.name for n in model.graph.nodes if n.op_type == "Relu"]
    assert e.rules_used[relus[0]] == "deconvnet" if relus[0] == "Relu_3" else e.rules_used[relus[0]] == "guided"
    e2 = model.explain(x, fv.Rules.load(p))
    np.testing.assert_array_equal(e.relevance, e2.relevance)


def test_signed_lrp_rules_on_weight_free_linear_ops(tmp_path):
    """Average pooling has positive weights: for x >= 0, z+ equals epsilon, and alpha-beta gives alpha times
    the positive part (the negative part is empty)."""
    b = NetBuilder((1, 2, 4, 4), 13, seed=9)
    y = b.op("Flatten", [b.op("AveragePool", ["input"], kernel_shape=[2, 2], strides=[2, 2])])
    model = fv.load(b.model(y))
    x = np.abs(np.random.default_rng(0).standard_normal((1, 2, 4, 4))).astype(np.float32) + 0.1
    rules = {}
    for rule in ("epsilon", "zplus", "alphabeta"):
        p = tmp_path / f"{rule}.toml"
        p.write_text(f'name = "{rule}"\nseed = "output"\n[params]\nepsilon = 1e-9\n[ops]\nAveragePool = "{rule}"\n')
        rules[rule] = model.explain(x, str(p), target=3).relevance
    np.testing.assert_allclose(rules["zplus"], rules["epsilon"], rtol=1e-5)
    np.testing.assert_allclose(rules["alphabeta"], 2.0 * rules["epsilon"], rtol=1e-5)
    out = model.run(x)[0, 3]
    assert rules["epsilon"].sum() == pytest.approx(out, rel=1e-5)
