"""Concept relevance propagation (fvgraph.methods.concepts) against closed forms, finite differences of a modified
onnxruntime model and conservation; the concept atlas against its own definition; relevance maximization
against a planted example and brute force."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph.methods.concepts import atlas, conditional, layer_relevance
from fvgraph.methods.examples import top_examples
from tests import zoo
from tests.conftest import ort_session


@pytest.fixture(scope="module")
def vgg():
    proto = zoo.vgg_like(softmax=False)
    return proto, fv.load(proto)


@pytest.fixture(scope="module")
def resnet():
    return fv.load(zoo.resnet_like())


def _x(n=2, seed=0):
    return np.random.default_rng(seed).random((n, 3, 32, 32)).astype(np.float32)


def _convs(model):
    return [l.output for l in model.layers if l.op_type == "Conv"]


@pytest.mark.parametrize("method", ["lrp-epsilon", "gradient", "input-x-gradient", "lrp-zplus"])
def test_maps_over_all_channels_sum_to_the_unconditional_map(vgg, resnet, method):
    """Every rule linear in the signal conserves: a layer every path passes (a cut of the graph), split into
    its channels, gives maps that sum to the unconditional one. resnet_like's first Conv folds its BN in."""
    for model, layer in ((vgg[1], _convs(vgg[1])[2]), (resnet, _convs(resnet)[0])):
        x = _x()
        full = model.explain(x, method, target=3).relevance.astype(np.float64)
        c = model.run(x, outputs=[layer])[layer].shape[1]
        e = model.explain(x, method, target=3, concept=[fv.Concept(layer, [k]) for k in range(c)])
        assert e.relevance.shape == (2 * c,) + x.shape[1:]
        parts = e.relevance.reshape((2, c) + x.shape[1:]).astype(np.float64)
        assert np.abs(parts.sum(axis=1) - full).max() <= 1e-5 * np.abs(full).max()
        assert np.abs(parts).max() > 0 and np.abs(parts.sum(axis=1)).max() > 0


def test_a_linear_net_in_closed_form():
    """x -> W1 x -> W2 h: concept c's gradient is W2[t, c] W1[c, :]; its LRP-epsilon relevance is
    x_i W1[c, i] / s(h_c) * h_c W2[t, c] / s(y_t) * y_t with s(z) = z + eps sign(z)."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w1.astype(np.float32), "w1"),
                           numpy_helper.from_array(w2.astype(np.float32), "w2")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    model = fv.load(proto)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    w1, w2 = w1.astype(np.float32).astype(np.float64), w2.astype(np.float32).astype(np.float64)
    xd = x[0].astype(np.float64)
    h, t, eps = w1 @ xd, 1, 0.01
    y = w2 @ h

    def s(z):
        return z + eps * (1 if z >= 0 else -1)
    e = model.explain(x, "gradient", target=t, concept=[fv.Concept("h", [c]) for c in range(3)])
    for c in range(3):
        assert np.allclose(e.relevance[c], w2[t, c] * w1[c], rtol=1e-6, atol=1e-7)
    e = model.explain(x, "lrp-epsilon", target=t, epsilon=eps, concept=[fv.Concept("h", [c]) for c in range(3)])
    for c in range(3):
        r_h = h[c] * w2[t, c] / s(y[t]) * y[t]
        want = xd * w1[c] / s(h[c]) * r_h
        assert np.allclose(e.relevance[c], want, rtol=1e-5, atol=1e-7)
    two = model.explain(x, "lrp-epsilon", target=t, epsilon=eps, concept=fv.Concept("h", [0, 2])).relevance
    assert np.allclose(two[0], e.relevance[0] + e.relevance[2], rtol=1e-5, atol=1e-7)


def _frozen_except(proto, value, keep, frozen):
    """The model with `value` replaced, for its consumers, by value * mask + frozen * (1 - mask): the other
    channels held at their values for the point, so only `keep` carries a change onward."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    mask = np.zeros((1, frozen.shape[1]) + (1,) * (frozen.ndim - 2), np.float32)
    mask[0, keep] = 1
    rest = (frozen * (1 - mask)).astype(np.float32)
    m.graph.initializer.extend([numpy_helper.from_array(mask, "cut_mask"), numpy_helper.from_array(rest, "cut_rest")])
    for n in m.graph.node:
        n.input[:] = ["cut_value" if v == value else v for v in n.input]
    m.graph.node.extend([helper.make_node("Mul", [value, "cut_mask"], ["cut_kept"]),
                         helper.make_node("Add", ["cut_kept", "cut_rest"], ["cut_value"])])
    return _sorted(m)


def _sorted(m):
    """Nodes in topological order (the cut's two nodes were appended)."""
    nodes, have, out = list(m.graph.node), {i.name for i in m.graph.input} | {i.name for i in m.graph.initializer}, []
    while nodes:
        for n in nodes:
            if all(v in have or not v for v in n.input):
                out.append(n)
                have.update(n.output)
                nodes.remove(n)
                break
    del m.graph.node[:]
    m.graph.node.extend(out)
    return m


def test_one_channel_gradient_equals_finite_differences_of_the_cut_model(vgg):
    """The gradient through channel c only is the gradient of the model in which the layer's other channels
    are held constant: central differences of that model in onnxruntime, at a few input coordinates."""
    proto, model = vgg
    layer, c, t = _convs(model)[1], 5, 2
    x = _x(1, seed=4)
    frozen = ort_session(proto, [layer]).run([layer], {"input": x})[0]
    sess = ort_session(_frozen_except(proto, layer, [c], frozen))
    out = sess.get_outputs()[0].name
    got = model.explain(x, "gradient", target=t, concept=fv.Concept(layer, [c])).relevance[0]
    assert np.abs(got).max() > 0
    rng = np.random.default_rng(5)
    h = 1e-2
    for _ in range(6):
        i = tuple(int(v) for v in (rng.integers(3), rng.integers(32), rng.integers(32)))
        xp, xm = x.copy(), x.copy()
        xp[(0,) + i] += h
        xm[(0,) + i] -= h
        fd = (sess.run([out], {"input": xp})[0][0, t].astype(np.float64)
              - sess.run([out], {"input": xm})[0][0, t]) / (2 * h)
        assert abs(fd - got[i]) <= 2e-3 * np.abs(got).max() + 1e-5, (i, fd, got[i])


def test_k_concepts_in_one_call_equal_k_calls(vgg):
    """One batch of k concepts (several layers, several channels) equals each concept alone, for a batch of
    images (image-major order), from explain and from conditional."""
    _, model = vgg
    a, b = _convs(model)[1], _convs(model)[3]
    concepts = [fv.Concept(a, [3, 5]), fv.Concept(b, 1), fv.Concept(a, [0])]
    x = _x(2, seed=1)
    both = model.explain(x, "lrp-epsilon", target=[1, 4], concept=concepts)
    again = conditional(model, x, "lrp-epsilon", [1, 4], concepts)
    assert np.array_equal(both.relevance, again.relevance)
    assert both.extras["images"] == 2 and both.extras["concepts"] == concepts
    for j, c in enumerate(concepts):
        one = model.explain(x, "lrp-epsilon", target=[1, 4], concept=c).relevance
        assert np.allclose(both.relevance[j::3], one, rtol=1e-5, atol=1e-8)
    assert np.array_equal(np.asarray(both.target), [1, 1, 1, 4, 4, 4])
    g = model.explain(x[:1], "guided", target=1, concept=concepts).relevance
    assert np.allclose(g[1], model.explain(x[:1], "guided", target=1, concept=concepts[1]).relevance[0], atol=1e-8)


def test_the_graph_without_a_concept_has_no_mask(vgg):
    _, model = vgg
    proto = model.export_explainer("lrp-epsilon", shape=(1, 3, 32, 32))
    assert not any("concept" in i.name for i in proto.graph.input)
    with pytest.raises(fv.FvGraphError, match="concept="):
        model.export_explainer("lrp-epsilon", shape=(1, 3, 32, 32), concept=fv.Concept(_convs(model)[0], 1))


def test_bad_concepts_get_one_line(vgg):
    _, model = vgg
    x = _x(1)
    layer = _convs(model)[0]
    with pytest.raises(fv.InputError, match=r"channel\(s\) \[8\] out of range: layer .* has 8 channels"):
        model.explain(x, "lrp-epsilon", concept=fv.Concept(layer, [2, 8]))
    with pytest.raises(fv.InputError, match="Concept channels must be"):
        fv.Concept(layer, [])
    with pytest.raises(fv.InputError, match="Concept channels must be"):
        fv.Concept(layer, [1.5])
    with pytest.raises(fv.FvGraphError, match="concept of lrp-epsilon must be fv.Concept"):
        model.explain(x, "lrp-epsilon", concept=3)
    with pytest.raises(fv.FvGraphError, match="concept of lrp-epsilon must be"):
        fv.methods.registry.lookup("lrp-epsilon").parse({"concept": "conv:3"})
    with pytest.raises(fv.FvGraphError, match="unknown parameter 'concept' for gradcam"):
        model.explain(x, "gradcam", concept=fv.Concept(layer, 1))
    with pytest.raises(fv.FvGraphError, match="not supported"):
        model.explain(x, "gradient", concept=fv.Concept(layer, 1), samples=2)
    assert fv.Concept(layer, 3) == fv.Concept(layer, [3]) and hash(fv.Concept(layer, (1, 2)))


def test_the_atlas_ranks_channels_by_their_relevance(vgg, resnet):
    for model, layer, lower in ((vgg[1], _convs(vgg[1])[2], _convs(vgg[1])[1]),
                                (resnet, _convs(resnet)[1], _convs(resnet)[0])):
        x = _x(1, seed=2)
        rel, e = layer_relevance(model, x, "lrp-epsilon", layer, target=3)
        c = rel.shape[1]
        a = atlas(model, x, "lrp-epsilon", layer, target=3, top=c, lower_layer=lower, children=3)
        assert np.all(np.diff(a.relevance) <= 0) and sorted(a.channels.tolist()) == list(range(c))
        assert np.isclose(a.relevance.sum(), a.total, rtol=1e-9) and np.isclose(a.total, rel.sum(dtype=np.float64))
        assert np.allclose(a.per_channel, rel[0].reshape(c, -1).sum(axis=1, dtype=np.float64))
        assert np.isclose(np.abs(a.share).sum(), 1)
        few = atlas(model, x, "lrp-epsilon", layer, target=3, top=3, lower_layer=lower, children=3)
        assert np.array_equal(few.channels, a.channels[:3])
        cond = model.explain(x, "lrp-epsilon", target=3, concept=few.concepts(), return_layers=[lower])
        assert np.allclose(few.maps, cond.relevance, atol=1e-8)
        for j, ch in enumerate(few.channels):  # the children: the lower layer's relevance that flows from ch
            low = cond.layers[lower][j].reshape(cond.layers[lower].shape[1], -1).sum(axis=1, dtype=np.float64)
            kids = few.children[int(ch)]
            assert [k for k, _, _ in kids] == np.argsort(-low, kind="stable")[:3].tolist()
            assert np.allclose([r for _, r, _ in kids], np.sort(low)[::-1][:3])
        assert few.to_json()["concepts"][0]["channel"] == int(a.channels[0])
    g = atlas(vgg[1], _x(1), "gradient", _convs(vgg[1])[2], target=3, top=2)  # gradient x activation there
    grad = vgg[1].explain(_x(1), "gradient", target=3, return_layers=[_convs(vgg[1])[2]]).layers
    act = vgg[1].run(_x(1), outputs=[_convs(vgg[1])[2]])[_convs(vgg[1])[2]]
    per = (grad[_convs(vgg[1])[2]] * act)[0].reshape(act.shape[1], -1).sum(axis=1)
    assert np.allclose(g.per_channel, per, rtol=1e-5, atol=1e-9) and g.channels[0] == int(np.argmax(per))


def _planted_net():
    """x (N, 1, 4, 4) -> 1x1 Conv to 2 channels (weights +1, +2) -> GlobalAveragePool -> Gemm to 2 classes:
    channel 0's relevance to class 0 is w[0, 0] * its spatial mean, its activation maximum its largest pixel."""
    nodes = [helper.make_node("Conv", ["x", "cw"], ["a"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(np.array([1, 2], np.float32).reshape(2, 1, 1, 1), "cw"),
             numpy_helper.from_array(np.array([[1.5, 0.1], [-1, 0.5]], np.float32), "fw")]
    g = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return fv.load(proto)


def test_relevance_maximization_ranks_the_planted_example_first():
    """Image 3 (flat, 2 everywhere) carries channel 0's most relevance to class 0; image 1 (one pixel of 10)
    excites it most. Ranked by activation, image 1 comes first; by relevance, image 3."""
    model = _planted_net()
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32) * 0.5
    x[1] = 0
    x[1, 0, 2, 1] = 10
    x[3] = 2
    act = top_examples(model, x, "a", channels=[0], k=3, quiet=True)
    assert act[0][0].image == "1"
    rel = top_examples(model, x, "a", channels=[0], k=3, by="relevance", target=0, quiet=True)
    assert rel[0][0].image == "3"
    want = [1.5 * x[i, 0].mean() for i in range(6)]  # LRP-epsilon: the channel's share of the logit (less
    assert np.isclose(rel[0][0].score, want[3], rtol=1e-3)  # what epsilon = 1e-3 absorbs)
    assert [e.image for e in rel[0]] == [str(i) for i in np.argsort(want)[::-1][:3]]
    with pytest.raises(fv.InputError, match="by must be"):
        top_examples(model, x, "a", by="gradient")
    with pytest.raises(fv.InputError, match="one class index"):
        top_examples(model, x, "a", by="relevance", target=[0, 1])


def test_relevance_maximization_over_a_folder_matches_brute_force(tmp_path, vgg):
    from PIL import Image

    from fvgraph.image import load_image
    proto, _ = vgg
    path = tmp_path / "vgg.onnx"
    onnx.save(proto, str(path))
    model = fv.load(path)
    rng = np.random.default_rng(1)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(tmp_path / f"i{k}.png")
    files = sorted(str(p) for p in tmp_path.glob("*.png"))
    layer = _convs(model)[3]
    state = tmp_path / "state.json"
    got = top_examples(model, [tmp_path], layer, channels=[0, 7], k=2, batch=2, by="relevance", target=4,
                       state_file=state, quiet=True)
    scores = []
    for f in files:
        rel, _ = layer_relevance(model, load_image(f, model.preprocessing()), "lrp-epsilon", layer, target=4)
        scores.append(rel[0].reshape(rel.shape[1], -1).sum(axis=1))
    scores = np.array(scores)
    for c in (0, 7):
        best = sorted(range(len(files)), key=lambda i: (-scores[i, c], i))[:2]
        assert [e.image for e in got[c]] == [files[i] for i in best]
        assert np.allclose([e.score for e in got[c]], scores[best, c], rtol=1e-5)
    import json
    assert json.loads(state.read_text())["ranking"]["target"] == 4
    again = top_examples(model, [tmp_path], layer, channels=[0, 7], k=2, batch=2, by="relevance", target=4,
                         state_file=state, quiet=True)  # resumed from the state: the same
    assert [e.image for e in again[0]] == [e.image for e in got[0]]
