"""Occlusion's windows as one onnxruntime graph (fvgraph.methods.windows): the graph's scores for a batch of
boxes equal plain onnxruntime passes of the occluded images, on every zoo shape (skip connections, depthwise,
inception branches, squeeze-excitation, exporter-style shape arithmetic, a spatial output), edge boxes included."""
import numpy as np
import pytest

import fvgraph as fv
from fvgraph.methods.attribution import logits_value
from fvgraph.methods.occlusion import positions, windows_pay
from fvgraph.methods.windows import Window, indices, window_plan
from tests.conftest import ort_session
from tests.zoo import ZOO, seg_like


@pytest.mark.parametrize("name", sorted(ZOO) + ["seg_like"])
def test_window_graph_equals_plain_passes(name):
    proto = seg_like() if name == "seg_like" else ZOO[name]()
    model = fv.load(proto.SerializeToString())
    shape = [1] + list(model.inputs[0].shape[1:])
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(np.float32)
    H, W = x.shape[2:]
    box, stride = (7, 5), (5, 4)
    boxes = [(y, xx) for y in positions(H, box[0], stride[0]) for xx in positions(W, box[1], stride[1])]
    value = logits_value(model)
    plan = window_plan(model, value, box, boxes, x)
    assert plan is not None
    clean = plan.clean_feeds(x)
    patches = rng.standard_normal((len(boxes), x.shape[1]) + box).astype(np.float32)
    sess = ort_session(proto, extra_outputs=[value])  # the scored value (logits before a trailing softmax)
    for b0 in range(0, len(boxes), 11):  # the last batch smaller: the graph takes any batch
        chunk = boxes[b0:b0 + 11]
        got = model.engine.run(plan.graph, {**clean, **plan.feeds(chunk, patches[b0:b0 + 11])},
                               ["windows/out"])["windows/out"]
        batch = np.repeat(x, len(chunk), axis=0)
        for k, (y, xx) in enumerate(chunk):
            batch[k, :, y:y + box[0], xx:xx + box[1]] = patches[b0 + k]
        want = sess.run([value], {model.graph.input_names()[0]: batch})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), (name, b0)
    modes = set(plan.modes.values())
    if name not in ("misc_ops",):
        assert "spatial" in modes, modes  # windows were drawn, not only full tensors


def test_windows_are_less_work_where_boxes_are_small_and_not_at_all_where_nothing_stays_local():
    model = fv.load(ZOO["vgg_like"]().SerializeToString())
    x = np.zeros((1, 3, 32, 32), np.float32)
    value = logits_value(model)
    small = window_plan(model, value, (4, 4), [(0, 0), (28, 28)], x)
    inc, full = small.work()
    assert 0 < inc < 0.5 * full and windows_pay(small)
    big = window_plan(model, value, (30, 30), [(0, 0), (2, 2)], x)
    inc, full = big.work()
    assert inc == full and not windows_pay(big)


def test_indices_lay_each_patch_over_the_clean_values():
    # two boxes: a 2x2 patch at (1, 1) and at (0, 2) of a 3x4 value; windows 2x3 at (1, 0) and (0, 1)
    src = Window(np.array([1, 0]), np.array([1, 2]), 2, 2)
    tgt = Window(np.array([1, 0]), np.array([0, 1]), 2, 3)
    idx = indices(src, tgt, (3, 4), 2).reshape(2, 2, 3)
    patches = np.arange(8).reshape(2, 2, 2) + 100
    clean = np.arange(12).reshape(3, 4)
    source = np.concatenate([patches.ravel(), clean.ravel()])
    want0 = clean[1:3, 0:3].copy()
    want0[0:2, 1:3] = patches[0]
    want1 = clean[0:2, 1:4].copy()
    want1[0:2, 1:3] = patches[1]
    assert np.array_equal(source[idx[0]], want0) and np.array_equal(source[idx[1]], want1)


def test_auto_falls_back_to_full_passes_where_the_engine_refuses_the_windows():
    from fvgraph.errors import ExecutionError
    model = fv.load(ZOO["vgg_like"]().SerializeToString())
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = model.occlusion(x, box=4, stride=4, incremental=False).relevance
    run = model.engine.run
    refused = []

    def refuse(graph, feeds, outputs):
        if "windows/out" in outputs:
            refused.append(1)
            raise ExecutionError("onnxruntime failed: refused for the test")
        return run(graph, feeds, outputs)
    model.engine.run = refuse
    try:
        got = model.occlusion(x, box=4, stride=4)
        assert refused and got.extras["way"] == "full passes" and np.allclose(got.relevance, want, atol=1e-6)
        model.occlusion(x, box=4, stride=4)
        assert len(refused) == 1  # decided once: the next call goes straight to full passes
        with pytest.raises(ExecutionError, match="refused for the test"):
            model.occlusion(x, box=4, stride=4, incremental=True)  # forced: the error is the user's to see
    finally:
        model.engine.run = run


def test_auto_asks_the_clock_on_large_jobs(monkeypatch):
    """Where the work says windows pay and the job is large, the timed probe decides (its answer is kept)."""
    from fvgraph.methods import occlusion as occ
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    asked = []
    for verdict, way in ((False, "full passes"), (True, "windows")):
        model = fv.load(ZOO["vgg_like"]().SerializeToString())
        monkeypatch.setattr(occ, "PROBE_FROM", 1)
        monkeypatch.setattr(occ, "windows_faster", lambda *a, v=verdict: asked.append(v) or v)
        assert model.occlusion(x, box=4, stride=4).extras["way"] == way
        assert model.occlusion(x, box=4, stride=4).extras["way"] == way
    assert asked == [False, True]  # once per model and geometry
    model = fv.load(ZOO["vgg_like"]().SerializeToString())
    plan = window_plan(model, logits_value(model), (4, 4), [(y, xx) for y in range(0, 32, 4) for xx in range(0, 32, 4)],
                       x)
    monkeypatch.undo()
    assert isinstance(occ.windows_faster(model, plan, x, [(0, 0), (4, 4)], (4, 4), logits_value(model)), bool)
