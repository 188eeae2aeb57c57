"""Concept discovery (fvgraph.methods.discover): NMF recovers planted non-negative directions; on a net whose
layer sees red, green and blue through disjoint channels the concepts are the colours, their top images and
patches are where the colour is strongest, the heatmap is the closed-form gradient, and the relevance
shares follow the classifier's weights (closed form: all of class 0's relevance sits on red's channels)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from scipy.optimize import linear_sum_assignment

import fvgraph as fv
from fvgraph.errors import InputError
from fvgraph.methods.discover import (coefficients, discover, factorize, heatmap, split_relevance, visualize,
                                      write_discovery)
from tests.conftest import ort_session

S = 12


def _match(found, truth):
    """Cosines of the best one-to-one matching of found directions to the true ones."""
    a = found / np.linalg.norm(found, axis=1, keepdims=True)
    b = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols]


def test_nmf_recovers_planted_directions():
    rng = np.random.default_rng(0)
    k, c, n = 4, 16, 3000
    truth = rng.random((k, c)) * (rng.random((k, c)) < 0.5)  # overlapping, non-negative
    U = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < 0.35)
    A = np.maximum(U @ truth + 0.01 * rng.standard_normal((n, c)), 0)
    D, Uf, err = factorize(A, k, seed=0)
    assert D.shape == (k, c) and np.all(D >= 0)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, rtol=1e-9)
    assert np.all(_match(D, truth) > 0.95) and err < 0.1
    # coefficients for fixed directions: the factorization's own U, by non-negative least squares
    again = coefficients(A[:200], D)
    assert np.all(again >= 0)
    assert np.linalg.norm(A[:200] - again @ D) <= np.linalg.norm(A[:200] - Uf[:200] @ D) * 1.01
    with pytest.raises(InputError, match="k must be"):
        factorize(A, 17)
    with pytest.raises(InputError, match="all 0"):
        factorize(np.zeros((5, 3)), 2)


def test_split_relevance_conserves():
    rng = np.random.default_rng(1)
    D = rng.random((3, 5))
    U = rng.random((20, 3))
    R = rng.standard_normal((20, 5))
    per, residual = split_relevance(R, U, D)
    np.testing.assert_allclose(per.sum() + residual, R.sum(), rtol=1e-10)
    assert abs(residual) < 1e-10  # every channel reconstructed: nothing left over
    # a concept alone on its channels takes all of their relevance
    D = np.array([[1.0, 1, 0, 0], [0, 0, 1, 0]])
    U = np.array([[2.0, 0], [0, 3.0], [1.0, 1.0]])
    R = np.array([[1.0, 2, 5, 7], [0, 0, 4, 1], [1, 1, 1, 1]])
    per, residual = split_relevance(R, U, D)
    np.testing.assert_allclose(per, [(1 + 2) + (1 + 1), 4 + 1])
    np.testing.assert_allclose(residual, (5 + 7) + 1 + 1)  # channels no concept of that position holds


# ----------------------------------------------------------------------------------- a colour net
W = np.zeros((6, 3), np.float32)
W[0:2, 0] = [1.0, 0.5]     # red
W[2:4, 1] = [0.3, 1.0]     # green
W[4:6, 2] = [0.8, 0.8]     # blue
FC = np.array([[1.0, 2.0, 0, 0, 0, 0], [0, 0, 1.0, 1.0, 1.0, 1.0]], np.float32)


def _colour_net():
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "colours", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, S, S])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(W[:, :, None, None], "w"), numpy_helper.from_array(FC, "fc")])
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 13)])


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("discover")
    path = root / "net.onnx"
    onnx.save(_colour_net(), str(path))
    rng = np.random.default_rng(2)
    folder = root / "images"
    folder.mkdir()
    squares = {}
    for i in range(9):
        a = np.zeros((S, S, 3))
        c = i % 3
        y, x = rng.integers(0, S - 4, 2)
        a[y:y + 4, x:x + 4, c] = 0.4 + 0.06 * i   # brightest: the last of each colour
        other = (c + 1) % 3
        a[0:2, S - 2:S, other] = 0.3
        name = f"img{i}.png"
        Image.fromarray((a * 255).round().astype(np.uint8)).save(folder / name)
        squares[name] = (c, int(y), int(x))
    (folder / "broken.png").write_bytes(b"no")
    return path, folder, squares


def test_concepts_are_the_colours_with_their_top_patches(colours, tmp_path):
    path, folder, squares = colours
    model = fv.load(path, preprocess="raw")
    failed = {}
    r = discover(model, [folder], "act", k=3, top=2, target=0, failed=failed, quiet=True)
    assert list(failed) == [str(folder / "broken.png")]
    truth = W.T  # (3 colours, 6 channels)
    assert np.all(_match(r.directions, truth) > 0.99)
    colour_of = [int(np.argmax(r.directions[i] @ truth.T)) for i in range(3)]
    assert sorted(colour_of) == [0, 1, 2]
    for concept, c in zip(r.concepts, colour_of):
        best = [f"img{i}.png" for i in (6 + c, 3 + c)]  # the two brightest squares of that colour
        assert [e.image.rsplit("/", 1)[-1] for e in concept.top] == best
        for e in concept.top:
            _, y, x = squares[e.image.rsplit("/", 1)[-1]]
            y0, x0, y1, x1 = e.box  # a 1x1 convolution sees one pixel: the box is that pixel, in the square
            assert (y1 - y0, x1 - x0) == (1, 1) and y <= y0 < y + 4 and x <= x0 < x + 4
        # class 0 reads only red's channels: red carries all of its relevance, the others none
        np.testing.assert_allclose(concept.share[0], 1.0 if c == 0 else 0.0, atol=1e-4)
    assert r.relevance[0]["images"] == 9 and abs(r.relevance[0]["residual"]) < 1e-4
    # each image's predicted class: green or blue squares are class 1 (the brighter corner notwithstanding)
    predicted = discover(model, [folder], "act", k=3, top=1, failed={}, quiet=True)
    assert sorted(predicted.relevance) == [0, 1]
    written = write_discovery(r, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "discovery.json").read_text())
    assert len(data["concepts"]) == 3 and data["layer"] == r.layer
    np.testing.assert_allclose(np.load(tmp_path / "out" / "directions.npy"), r.directions)
    assert all(p.exists() for p in written) and Image.open(tmp_path / "out" / "concept_00.png").size[0] > 100
    with pytest.raises(InputError, match="exists"):
        write_discovery(r, tmp_path / "out")


def test_heatmap_is_the_closed_form_gradient(colours):
    path, folder, _ = colours
    model = fv.load(path, preprocess="raw")
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, S, S)).astype(np.float32) - 0.3
    v = rng.random(6)
    got = heatmap(model, x, v, "act")
    # d/dx of sum_{y,x} <relu(W x), v> = sum_ch v_ch W[ch, c] [W x > 0]
    pre = np.einsum("kc,nchw->nkhw", W.astype(np.float64), x.astype(np.float64))
    want = np.einsum("k,kc,nkhw->nchw", v, W.astype(np.float64), (pre > 0).astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and it is the gradient of onnxruntime's forward pass (float64 central differences, away from kinks)
    sess = ort_session(_colour_net(), extra_outputs=["act"])
    names = [o.name for o in sess.get_outputs()]

    def f(xx):
        a = dict(zip(names, sess.run(None, {"input": xx.astype(np.float32)})))["act"].astype(np.float64)
        return float((a[0] * v[:, None, None]).sum())
    safe = np.argwhere(np.abs(pre[0]).min(axis=0) > 2e-2)[:3]  # positions with no ReLU at a kink
    assert len(safe) == 3
    for c, (y, xx) in enumerate(safe):
        e = np.zeros_like(x)
        e[0, c, y, xx] = 1e-3
        fd = (f(x + e) - f(x - e)) / 2e-3
        np.testing.assert_allclose(got[0, c, y, xx], fd, rtol=1e-2, atol=1e-3)
    with pytest.raises(InputError, match="direction of 5"):
        heatmap(model, x, np.ones(5), "act")


def test_two_workers_and_a_visualization(colours):
    path, folder, _ = colours
    model = fv.load(path, preprocess="raw")
    one = discover(model, [folder], "act", k=3, top=2, method=None, failed={}, quiet=True)
    two = discover(model, [folder], "act", k=3, top=2, method=None, failed={}, quiet=True, workers=2,
                   batch=4, load_options={"preprocess": "raw"})
    np.testing.assert_allclose(one.directions, two.directions, atol=1e-6)
    assert [[e.image for e in c.top] for c in one.concepts] == [[e.image for e in c.top] for c in two.concepts]
    assert one.concepts[0].share == {} and one.relevance == {}
    pics = visualize(model, one, steps=4, quiet=True)
    assert set(pics) == {0, 1, 2} and pics[0].shape == (S, S, 3)
    with pytest.raises(InputError, match="reverse-pass"):
        discover(model, [folder], "act", k=2, method="occlusion", quiet=True)
