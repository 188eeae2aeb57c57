"""Today's blocks: gradients through LayerNorm, GELU/SiLU, softmax attention against float64 finite differences;
the LRP rules the literature uses for them (LayerNorm with its variance held constant, attention and gates
taking the value path) on hand-worked cases with conservation; Grad-CAM on token and channels-last layers
against a NumPy computation; attention rollout in closed form."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph.methods.cam import resize_maps
from tests import zoo

R = np.random.default_rng(11)


def _as_float64(m):
    """The same model in float64 (weights, inputs, outputs), for finite differences."""
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


@pytest.mark.parametrize("kw", [{}, {"opset": 20}, {"prefix": 0, "pool": "mean"}])
def test_gradient_through_a_transformer_equals_finite_differences(kw):
    m = _as_float64(zoo.vit_like(size=16, patch=8, dim=8, depth=1, **kw))
    model = fv.load(m, engine="numpy")
    x = R.standard_normal((1, 3, 16, 16))
    g = model.explain(x, "gradient", target=2).relevance
    h = 1e-6
    for _ in range(6):  # directional derivatives along random directions
        d = R.standard_normal(x.shape)
        fd = (model.run(x + h * d)[0, 2] - model.run(x - h * d)[0, 2]) / (2 * h)
        assert abs(fd - np.sum(g * d)) <= 1e-6 * max(1.0, abs(fd)), (fd, np.sum(g * d))


def _model(nodes, inputs, outputs, inits, opset=18):
    g = helper.make_graph(nodes, "m", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_lrp_layernorm_holds_the_variance_constant_and_conserves():
    """y = LN(x) (gamma, beta = 0), logits = y W: LRP-epsilon by hand, and sum R_in = the logit."""
    n, k = 6, 3
    gamma = (R.random(n) + 0.5).astype(np.float32)
    w = R.standard_normal((n, k)).astype(np.float32)
    m = _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5),
                helper.make_node("MatMul", ["y", "w"], ["logits"])],
               [_vi("x", [1, n])], [_vi("logits", [1, k])],
               {"g": gamma, "b": np.zeros(n, np.float32), "w": w})
    x = R.standard_normal((1, n)).astype(np.float32)
    e = fv.load(m).explain(x, "lrp-epsilon", target=1, epsilon=1e-9)
    # by hand, in float64: R_y = y_j w_j1 (the logit's share), then through the linearized LayerNorm
    x64 = x[0].astype(np.float64)
    inv = 1 / np.sqrt(x64.var() + 1e-5)
    y = (x64 - x64.mean()) * inv * gamma
    ry = y * w[:, 1]
    s = ry / y
    jac = (np.eye(n) - 1.0 / n) * inv * gamma[None, :]  # d y_j / d x_i with the variance held constant
    expected = x64 * (jac @ s)
    np.testing.assert_allclose(e.relevance[0], expected, rtol=1e-4, atol=1e-6)
    assert abs(e.relevance.sum() - e.output[0, 1]) < 1e-4 * abs(e.output[0, 1]) + 1e-6   # conserved


def _attention_model(t=4, d=3):
    """x (1, t, d) -> A = softmax(x Wq (x Wk)^T) -> o = A (x Wv) -> logits = mean over tokens of o Wo (no biases)."""
    inits = {k: R.standard_normal((d, d)).astype(np.float32) for k in ("wq", "wk", "wv")}
    inits["wo"] = R.standard_normal((d, 2)).astype(np.float32)
    inits["axes"] = np.array([1], np.int64)
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["o"]), helper.make_node("MatMul", ["o", "wo"], ["p"]),
             helper.make_node("ReduceMean", ["p", "axes"], ["logits"], keepdims=0)]
    return _model(nodes, [_vi("x", [1, t, d])], [_vi("logits", [1, 2])], inits), inits


def test_lrp_attention_takes_the_value_path_with_the_softmax_held_constant():
    m, w = _attention_model()
    x = R.standard_normal((1, 4, 3)).astype(np.float32)
    model = fv.load(m)
    e = model.explain(x, "lrp-epsilon", target=0, epsilon=1e-9)
    # by hand: the logit is linear in x through the value path once A is a constant
    x64 = x[0].astype(np.float64)
    s = (x64 @ w["wq"]) @ (x64 @ w["wk"]).T
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    v = x64 @ w["wv"]
    p = a @ v @ w["wo"]
    rp = p[:, 0] / 4                                    # ReduceMean: each token's share of the logit
    rv_o = (a @ v) * (w["wo"][:, 0] * (rp / p[:, 0])[:, None])          # through Wo (epsilon, no bias)
    rv = v * (a.T @ (rv_o / (a @ v)))                   # through A (held constant) to v
    expected = x64 * ((rv / v) @ w["wv"].T)             # through Wv
    np.testing.assert_allclose(e.relevance[0], expected, rtol=1e-3, atol=1e-5)
    assert abs(e.relevance.sum() - e.output[0, 0]) < 1e-3 * abs(e.output[0, 0]) + 1e-5   # nothing to Q, K


@pytest.mark.parametrize("order", ["x-first", "gate-first"])
def test_lrp_silu_is_a_gate_whatever_the_operand_order(order):
    """y = x * sigmoid(x): all relevance to x, none to the gate (Ali et al. 2022)."""
    ins = ["x", "sg"] if order == "x-first" else ["sg", "x"]
    m = _model([helper.make_node("Sigmoid", ["x"], ["sg"]), helper.make_node("Mul", ins, ["y"]),
                helper.make_node("MatMul", ["y", "w"], ["logits"])], [_vi("x", [1, 5])], [_vi("logits", [1, 2])],
               {"w": R.standard_normal((5, 2)).astype(np.float32)})
    x = R.standard_normal((1, 5)).astype(np.float32)
    e = fv.load(m).explain(x, "lrp-epsilon", target=1, epsilon=1e-9)
    y = x * (1 / (1 + np.exp(-x)))
    w = numpy_helper.to_array(m.graph.initializer[0])
    np.testing.assert_allclose(e.relevance, y * w[:, 1], rtol=1e-4, atol=1e-6)     # R_x = R_y


def test_lrp_presets_run_and_conserve_on_transformer_blocks():
    m = zoo.vit_like(size=16, patch=8, dim=8, depth=2)
    model = fv.load(m)
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    for method in ("lrp-epsilon", "lrp-zplus", "lrp-alphabeta", "lrp-composite"):
        r = model.explain(x, method, target=1).relevance
        assert np.all(np.isfinite(r)) and np.abs(r).sum() > 0, method


def _gradcam_by_hand(A, G, size):
    w = G.mean(axis=(2, 3), keepdims=True)
    return resize_maps(np.maximum((A * w).sum(axis=1), 0), size)


@pytest.mark.parametrize("kw", [{}, {"prefix": 2}, {"prefix": 0, "pool": "mean"}, {"swin_like": True}])
def test_gradcam_on_token_and_channels_last_layers(kw):
    model = fv.load(zoo.vit_like(**kw))
    x = R.standard_normal((2, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "gradcam", target=3)
    layer = e.extras["layer"]
    got = model.run(x, outputs=[layer])[layer]
    grad = model.explain(x, "gradient", target=3, return_layers=[layer]).layers[layer]
    if got.ndim == 3:       # tokens: class/register tokens dropped, the rest on the 4 x 4 grid
        prefix = got.shape[1] - 16
        assert prefix == kw.get("prefix", 1)
        A, G = (a[:, prefix:].reshape(2, 4, 4, -1).transpose(0, 3, 1, 2) for a in (got, grad))
    else:                   # (N, h, w, C)
        assert got.shape[1:3] == (4, 4)
        A, G = (a.transpose(0, 3, 1, 2) for a in (got, grad))
    assert np.abs(G).sum() > 0  # the default layer is one the target's gradient reaches on the grid
    np.testing.assert_allclose(e.relevance, _gradcam_by_hand(A, G, (32, 32)), rtol=1e-4, atol=1e-6)


def test_default_layer_of_a_class_token_vit_is_the_last_blocks_first_norm():
    model = fv.load(zoo.vit_like(depth=2))
    x = R.standard_normal((1, 3, 32, 32)).astype(np.float32)
    layer = model.explain(x, "gradcam").extras["layer"]
    norms = [n.outputs[0] for n in model.graph.nodes if n.op_type == "LayerNormalization"]
    # per block: norm1, norm2 (computed twice for the gated MLP), then the final norm
    assert layer == norms[-4], (layer, norms)


def test_rollout_closed_form_uniform_attention():
    """Q = K = 0: every attention row is uniform, and so is the class token's rollout over the patches."""
    m = zoo.vit_like(depth=2)
    for t in m.graph.initializer:  # zero the qkv projection's q and k columns
        a = numpy_helper.to_array(t)
        if a.shape == (16, 48):
            a = a.copy()
            a[:, :32] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
        if a.shape == (48,):
            t.CopyFrom(numpy_helper.from_array(np.concatenate([np.zeros(32, np.float32), a[32:]]), t.name))
    model = fv.load(m)
    x = R.standard_normal((2, 3, 32, 32)).astype(np.float32)
    e = model.explain(x, "rollout")
    assert e.relevance.shape == (2, 32, 32) and len(e.extras["layers"]) == 2
    np.testing.assert_allclose(e.relevance, 1.0, rtol=1e-5)
    # a general case against the formula: two layers of attention
    model = fv.load(zoo.vit_like(depth=2))
    e = model.explain(x, "rollout", upsample=False)
    A = model.run(x, outputs=e.extras["layers"])
    eye = np.eye(17)
    rollout = np.broadcast_to(eye, (2, 17, 17))
    for v in e.extras["layers"]:
        a = 0.5 * A[v].astype(np.float64).mean(axis=1) + 0.5 * eye
        rollout = (a / a.sum(-1, keepdims=True)) @ rollout
    expected = rollout[:, 0, 1:].reshape(2, 4, 4)
    np.testing.assert_allclose(e.relevance, expected / expected.max(axis=(1, 2), keepdims=True), rtol=1e-5)
    with pytest.raises(fv.InputError):
        fv.load(zoo.resnet_like()).explain(R.standard_normal((1, 3, 32, 32)).astype(np.float32), "rollout")
