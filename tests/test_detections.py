"""Detections as users see them (fvgraph.methods.detections): decoding and class-wise NMS against a plain
loop over onnxruntime's raw output, NMS closed cases, the photo geometry against fvgraph.image.resize_crop,
targets, maps and files, D-RISE on a detector whose detections depend only on the pixels of their cell."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph.image import resize_crop, spec_from_metadata
from fvgraph.methods.detections import (box_iou, detections, drise, explain_detections, from_photo, nms, to_photo,
                                        write_detections)
from tests.zoo import yolo_like

R = np.random.default_rng(0)
SMALL = dict(size=64, widths=(8, 8, 16, 16, 32))


def ort_outputs(proto, x):
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))


# --------------------------------------------------------------------------- an independent reference
def iou_loop(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference(rows, conf, iou, max_det):
    """rows: (box x0, y0, x1, y1, class scores) per anchor; ultralytics' single-label selection, one by one."""
    cands = []
    for a, (box, scores) in enumerate(rows):
        c = max(range(len(scores)), key=lambda k: scores[k])
        if scores[c] > conf:
            cands.append((float(scores[c]), a, c, [float(v) for v in box]))
    cands.sort(key=lambda t: -t[0])  # stable: ties in anchor order
    kept = []
    for s, a, c, box in cands:
        if all(not (k[2] == c and iou_loop(k[3], box) > iou) for k in kept):
            kept.append((s, a, c, box))
        if len(kept) == max_det:
            break
    return kept, len(cands)


def yolo_rows(out):
    """(N, 4 + C, A) -> per anchor (x0, y0, x1, y1), scores."""
    rows = []
    for a in range(out.shape[1]):
        cx, cy, w, h = (float(v) for v in out[:4, a])
        rows.append(((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), out[4:, a]))
    return rows


def same(dets, kept):
    assert len(dets) == len(kept)
    for d, (s, a, c, box) in zip(dets, kept):
        assert (d.anchor, d.cls) == (a, c)
        assert d.score == pytest.approx(s, abs=1e-6)
        assert np.allclose(d.box, box, atol=1e-4)


def test_yolov8_decoding_and_nms_equal_a_plain_loop_on_onnxruntimes_output():
    proto = yolo_like(**SMALL)
    model = fv.load(proto)
    x = R.random((2, 3, 64, 64)).astype(np.float32)
    out = ort_outputs(proto, x)[proto.graph.output[0].name]
    got = detections(model, x, conf=0.25, iou=0.5, max_det=300)
    suppressed = 0
    for n in range(2):
        kept, cands = reference(yolo_rows(out[n]), 0.25, 0.5, 300)
        same(got[n], kept)
        suppressed += cands - len(kept)
        for d in got[n]:
            assert d.target.index == (4 + d.cls, d.anchor) and d.label == f"class{d.cls}" and d.image == n
    assert suppressed > 0  # NMS had work to do
    few = detections(model, x, conf=0.25, iou=0.5, max_det=3)
    assert [len(d) for d in few] == [3, 3] and all(a.anchor == b.anchor for a, b in zip(few[0], got[0]))
    only = detections(model, x, conf=0.25, iou=0.5, max_det=300, classes=[got[0][0].cls])
    assert only[0] and all(d.cls == got[0][0].cls for d in only[0])


def test_the_transposed_layout_is_recognized_and_decodes_the_same():
    proto = yolo_like(**SMALL, classes=5)  # (N, 9, 84): at 80 classes both axes would be 84
    t = onnx.ModelProto()
    t.CopyFrom(proto)
    name = t.graph.output[0].name
    t.graph.node.append(helper.make_node("Transpose", [name], ["dets_t"], perm=[0, 2, 1]))
    del t.graph.output[:]
    t.graph.output.append(helper.make_tensor_value_info("dets_t", TensorProto.FLOAT, None))
    x = R.random((1, 3, 64, 64)).astype(np.float32)
    a = detections(fv.load(proto), x, max_det=300)[0]
    b = detections(fv.load(t), x, max_det=300)[0]
    assert b[0].layout.kind == "yolov8-t" and a[0].layout.kind == "yolov8"
    assert [(d.anchor, d.cls) for d in a] == [(d.anchor, d.cls) for d in b]
    assert np.allclose([d.box for d in a], [d.box for d in b], atol=1e-4)
    assert b[0].target.index == (b[0].anchor, 4 + b[0].cls) and b[0].target.output == "dets_t"


# --------------------------------------------------------------------------- NMS closed cases
def test_nms_closed_cases():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert box_iou(boxes[0], boxes[1:2])[0] == pytest.approx(81 / 119)
    assert nms(boxes[:2], [0.9, 0.8], [0, 0], iou=0.5).tolist() == [0]  # overlapping, same class: one
    assert nms(boxes[:2], [0.8, 0.9], [0, 0], iou=0.5).tolist() == [1]  # the better one stays
    assert nms(boxes[:2], [0.9, 0.8], [0, 1], iou=0.5).tolist() == [0, 1]  # different classes: two
    assert nms(boxes[:2], [0.9, 0.8], [0, 0], iou=0.7).tolist() == [0, 1]  # IoU 0.68 is not over 0.7
    assert nms(boxes, [0.7, 0.8, 0.9], [0, 0, 0], iou=0.5).tolist() == [2, 1]
    assert nms(boxes, [0.7, 0.8, 0.9], [0, 1, 2], iou=0.5, max_det=2).tolist() == [2, 1]
    assert nms(np.zeros((0, 4)), [], [], iou=0.5).tolist() == []


# --------------------------------------------------------------------------- a detector of cells
CELL, GRID, K = 8, 4, 3  # 32 x 32 input, 16 anchors (one per 8 x 8 cell), 3 classes
SHAPES = {"boxes": ["N", 16, 4], "scores": ["N", 16, K], "output0": ["N", 4 + K, 16]}


def cell_detector(layout="ssd", names=True):
    """Each anchor is one 8 x 8 cell: class k's logit is 10 x (the cell's mean of channel k) - 5, its box the
    cell moved by at most half a pixel by a tanh of the cell's pixels. Every output depends only on its cell's
    pixels. layout "ssd": boxes (N, 16, 4) x0, y0, x1, y1 and scores (N, 16, 3); "yolov8": (N, 4 + 3, 16)."""
    rng = np.random.default_rng(3)
    mean = np.zeros((K, 3, CELL, CELL), np.float32)
    for k in range(K):
        mean[k, k] = 10 / CELL ** 2
    shift = (rng.standard_normal((4, 3, CELL, CELL)) * 0.05).astype(np.float32)
    inits = [numpy_helper.from_array(mean, "wm"), numpy_helper.from_array(np.full(K, -5, np.float32), "bm"),
             numpy_helper.from_array(shift, "ws"), numpy_helper.from_array(np.array([0, K, -1], np.int64), "s3"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "s4")]
    ys, xs = np.meshgrid(np.arange(GRID) * CELL, np.arange(GRID) * CELL, indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + CELL, ys.ravel() + CELL], 1).astype(np.float32)
    inits.append(numpy_helper.from_array(cells[None], "cells"))
    inits.append(numpy_helper.from_array(np.float32(0.5), "half"))
    conv = dict(kernel_shape=[CELL, CELL], strides=[CELL, CELL])
    nodes = [helper.make_node("Conv", ["input", "wm", "bm"], ["logit_map"], **conv),
             helper.make_node("Reshape", ["logit_map", "s3"], ["logits_ca"]),
             helper.make_node("Transpose", ["logits_ca"], ["logits"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Conv", ["input", "ws"], ["shift_map"], **conv),
             helper.make_node("Tanh", ["shift_map"], ["shift_t"]),
             helper.make_node("Mul", ["shift_t", "half"], ["shift_h"]),
             helper.make_node("Reshape", ["shift_h", "s4"], ["shift_ca"]),
             helper.make_node("Transpose", ["shift_ca"], ["shift"], perm=[0, 2, 1]),
             helper.make_node("Add", ["cells", "shift"], ["boxes"])]
    outputs = ["boxes", "scores"]
    if layout == "yolov8":
        to_c = np.array([[.5, 0, -1, 0], [0, .5, 0, -1], [.5, 0, 1, 0], [0, .5, 0, 1]], np.float32)
        inits.append(numpy_helper.from_array(to_c, "to_c"))
        nodes += [helper.make_node("MatMul", ["boxes", "to_c"], ["cxcywh"]),
                  helper.make_node("Concat", ["cxcywh", "scores"], ["rows"], axis=2),
                  helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1])]
        outputs = ["output0"]
    g = helper.make_graph(nodes, "cells", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPES[o]) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    if names:
        m.metadata_props.add(key="names", value=str({0: "red", 1: "green", 2: "blue"}))
    m.metadata_props.add(key="fvgraph.preprocess", value=json.dumps({"size": 32, "resize": "letterbox",
                                                                     "scale": 1 / 255, "mean": [0, 0, 0],
                                                                     "std": [1, 1, 1]}))
    onnx.checker.check_model(m)
    return m


def painted():
    """A dark picture with a red cell (anchor 5), a green one (anchor 10), and a blue one beside the red."""
    x = (R.random((1, 3, 32, 32)) * 0.05).astype(np.float32)
    for k, (r, c) in enumerate([(1, 1), (2, 2), (1, 2)]):
        x[0, k, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = 0.9
    return x


def test_two_output_layout_decodes_like_a_plain_loop():
    proto = cell_detector("ssd")
    model = fv.load(proto)
    x = np.concatenate([painted(), R.random((1, 3, 32, 32)).astype(np.float32)])
    raw = ort_outputs(proto, x)
    got = detections(model, x, conf=0.25, iou=0.5, max_det=10)
    for n in range(2):
        kept, _ = reference(list(zip(raw["boxes"][n], raw["scores"][n])), 0.25, 0.5, 10)
        same(got[n], kept)
    d = got[0]
    assert [(e.anchor, e.label) for e in d] == [(5, "red"), (6, "blue"), (10, "green")] or \
        sorted((e.anchor, e.label) for e in d) == [(5, "red"), (6, "blue"), (10, "green")]
    assert d[0].layout.kind == "ssd" and d[0].target.output == "scores" and d[0].target.index == (d[0].anchor,
                                                                                                  d[0].cls)
    assert d[0].box_target("x1").index == (d[0].anchor, 2) and d[0].box_target(3).output == "boxes"
    yolo = detections(fv.load(cell_detector("yolov8")), x[:1], conf=0.25, iou=0.5)[0]
    assert [(e.anchor, e.cls) for e in yolo] == [(e.anchor, e.cls) for e in d]
    assert np.allclose([e.box for e in yolo], [e.box for e in d], atol=1e-4)
    with pytest.raises(fv.InputError, match="layout"):
        detections(model, x, layout="diagonal")
    with pytest.raises(fv.InputError, match="conf"):
        detections(model, x, conf=2)


def test_targets_are_the_detections_output_elements_and_maps_sit_in_the_boxes():
    proto = yolo_like(**SMALL)
    model = fv.load(proto)
    x = R.random((1, 3, 64, 64)).astype(np.float32)
    d = detections(model, x, max_det=2)[0][0]
    hand = fv.OutputTarget(index=(4 + d.cls, d.anchor))
    assert np.array_equal(model.explain(x, "gradient", target=d.target).relevance,
                          model.explain(x, "gradient", target=hand).relevance)
    assert np.array_equal(model.explain(x, "gradient", target=d.box_target("w")).relevance,
                          model.explain(x, "gradient", target=fv.OutputTarget(index=(2, d.anchor))).relevance)

    cells = fv.load(cell_detector("ssd"))
    x = painted()
    res = explain_detections(cells, x, ["gradient", "gradcam"], conf=0.25, coords=("x0",))[0]
    assert len(res) == 3
    for r in res:
        x0, y0, x1, y1 = r.detection.box
        inside = np.zeros((32, 32), bool)
        inside[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = True
        for name in ("gradient", "gradient:x0"):
            mass = np.abs(r.maps[name])
            assert mass[inside].sum() / mass.sum() > 2 * inside.mean(), name  # all of it, in fact
            assert mass[inside].sum() / mass.sum() > 0.99, name
        cam = r.maps["gradcam"]  # at the scores' branch (logit_map), not the boxes' (the first output's)
        assert cam.shape == (32, 32) and cam[inside].sum() / cam.sum() > 2 * inside.mean()
        assert r.explanations["gradcam"].extras["layer"] == "logit_map"
        assert r.explanations["gradcam"].target is r.detection.target


# --------------------------------------------------------------------------- the photo's pixels
@pytest.mark.parametrize("how", ["shorter", "stretch", "letterbox"])
def test_to_photo_inverts_the_resize_and_crop(how):
    spec = spec_from_metadata({}, None, size=[40, 56], resize=how, interpolation="nearest")
    h, w = 48, 90
    pts = R.random((20, 2)) * [w, h]
    assert np.allclose(to_photo(from_photo(pts, (h, w), spec), (h, w), spec, clip=False), pts, atol=1e-9)
    inp = R.random((20, 4)) * [56, 40, 56, 40]
    assert np.allclose(from_photo(to_photo(inp, (h, w), spec, clip=False), (h, w), spec), inp, atol=1e-9)
    # against the pixels resize_crop moves: a white block lands where from_photo says
    photo = np.zeros((h, w, 3), np.uint8)
    block = (30, 12, 60, 36)  # x0, y0, x1, y1
    photo[block[1]:block[3], block[0]:block[2]] = 255
    shown = resize_crop(photo, spec)[..., 0] == 255
    ys, xs = np.nonzero(shown)
    seen = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.allclose(from_photo(block, (h, w), spec), seen, atol=1.0), (how, seen)
    if how == "letterbox":
        grey = resize_crop(np.zeros((h, w, 3), np.uint8), spec)[..., 0] == 0
        ys, xs = np.nonzero(grey)  # the resized photo's own area in the canvas
        assert np.allclose(from_photo([0, 0, w, h], (h, w), spec), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        assert np.allclose(to_photo([-5, -5, 100, 100], (h, w), spec), [0, 0, w, h])  # clipped to the photo


def test_write_detections_files_and_refusal(tmp_path):
    model = fv.load(cell_detector("ssd"))
    x = painted()
    res = explain_detections(model, x, ["gradient"], conf=0.25)
    photo = np.zeros((64, 64, 3), np.uint8)  # what x would be made from: 32 x 32 at twice the size
    path = write_detections(model, x, res, tmp_path / "out", photos=[photo])
    listing = json.loads(path.read_text())
    assert listing["space"] == "photo" and len(listing["detections"]) == 3
    for item, r in zip(listing["detections"], res[0]):
        assert np.allclose(item["box"], np.clip(np.asarray(r.detection.box) * 2, 0, 64), atol=1e-2)
        assert item["label"] == r.detection.label and item["class"] == r.detection.cls
        files = item["maps"]["gradient"]
        assert (tmp_path / "out" / files["png"]).exists()
        m = np.load(tmp_path / "out" / files["npy"])  # in the photo's pixels, as the box
        assert m.shape == (64, 64) and np.allclose(m.sum(), 4 * r.maps["gradient"].sum(), rtol=0.05)
        x0, y0, x1, y1 = (int(round(v)) for v in item["box"])  # the box is its cell moved by up to 1 px here,
        near = np.abs(m[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2]).sum()  # and bilinear spills a pixel over
        assert near > 0.99 * np.abs(m).sum() and np.abs(m[y0:y1, x0:x1]).sum() > 0.75 * np.abs(m).sum()
    with pytest.raises(fv.InputError, match="exists"):
        write_detections(model, x, res, tmp_path / "out", photos=[photo])
    write_detections(model, x, res, tmp_path / "out", photos=[photo], overwrite=True)
    plain = write_detections(model, x, res, tmp_path / "in")
    listing = json.loads(plain.read_text())
    assert listing["space"] == "input" and np.allclose(listing["detections"][0]["box"], res[0][0].detection.box,
                                                       atol=1e-3)
    name = listing["detections"][0]["maps"]["gradient"]["npy"]
    assert np.array_equal(np.load(tmp_path / "in" / name), res[0][0].maps["gradient"])


# --------------------------------------------------------------------------- D-RISE
def test_drise_is_seeded_and_peaks_inside_the_box():
    model = fv.load(cell_detector("ssd"))
    x = painted()
    det = detections(model, x, conf=0.25)[0]
    red = next(d for d in det if d.label == "red")
    a = drise(model, x, red, masks=300, cells=4, seed=1)
    b = drise(model, x, red, masks=300, cells=4, seed=1, batch_size=7)
    assert np.array_equal(a.relevance, b.relevance)
    assert not np.array_equal(a.relevance, drise(model, x, red, masks=300, cells=4, seed=2).relevance)
    m = a.relevance[0]
    y, xx = np.unravel_index(np.argmax(m), m.shape)
    x0, y0, x1, y1 = red.box
    assert x0 <= xx + 0.5 <= x1 and y0 <= y + 0.5 <= y1
    inside = np.zeros_like(m, bool)
    inside[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = True
    assert m[inside].mean() > m[~inside].mean()
    assert a.extras["weights"].shape == (300,) and 0 <= a.extras["weights"].min() <= a.extras["weights"].max() <= 1


# --------------------------------------------------------------------------- the other layouts, on raw arrays
class Named:
    def class_names(self):
        return ["a", "b", "c"]


def test_yolov5_and_ssd_with_background_and_normalized_boxes():
    from fvgraph.methods.detections import _settle, find_layout, select
    model = Named()
    rows = R.random((1, 60, 8))
    rows[..., :2] *= 64
    rows[..., 2:4] = rows[..., 2:4] * 20 + 2
    lay = find_layout(model, {"output": rows.shape})
    assert lay.kind == "yolov5" and lay.classes == 3  # 8 = 5 + 3 names
    seg = find_layout(model, {"output0": (1, 4 + 3 + 32, 100), "output1": (1, 32, 16, 16)})
    assert (seg.kind, seg.classes) == ("yolov8", 3)  # YOLOv8-seg: the mask coefficients are no classes
    got = select(model, lay, {"output": rows}, (64, 64), 0.2, 0.5, 50)[0]
    cx, cy, w, h = rows[0, :, :4].T
    ref = list(zip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), rows[0, :, 5:] * rows[0, :, 4:5]))
    same(got, reference(ref, 0.2, 0.5, 50)[0])
    assert got[0].target.index == (got[0].anchor, 5 + got[0].cls) and got[0].objectness == rows[0, got[0].anchor, 4]

    corners = np.sort(R.random((1, 60, 2, 2)), axis=2)  # x0 < x1, y0 < y1, normalized
    boxes = corners.transpose(0, 1, 3, 2).reshape(1, 60, 4)[..., [0, 2, 1, 3]]
    logits = R.standard_normal((1, 60, 4)) * 2
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # column 0: the background
    raw = {"det_boxes": boxes, "det_scores": soft}
    lay = _settle(find_layout(model, {k: v.shape for k, v in raw.items()}), raw, model)
    assert (lay.kind, lay.normalized, lay.background, lay.sigmoid) == ("ssd", True, 0, False)
    got = select(model, lay, raw, (48, 64), 0.3, 0.5, 50)[0]
    same(got, reference(list(zip(boxes[0] * [64, 48, 64, 48], soft[0, :, 1:])), 0.3, 0.5, 50)[0])
    assert got and got[0].target.index == (got[0].anchor, got[0].cls + 1) and got[0].label == "abc"[got[0].cls]
    raw = {"det_boxes": boxes * 100, "det_scores": logits}  # logits: RetinaNet's sigmoid scores
    lay = _settle(find_layout(model, {k: v.shape for k, v in raw.items()}), raw, model)
    assert (lay.normalized, lay.background, lay.sigmoid) == (False, None, True)
    got = select(model, lay, raw, (48, 64), 0.3, 0.5, 50)[0]
    same(got, reference(list(zip(boxes[0] * 100, 1 / (1 + np.exp(-logits[0])))), 0.3, 0.5, 50)[0])


# --------------------------------------------------------------------------- end2end exports: (N, K, 6) rows
def end2end_detector(names=True, keep=5):
    """cell_detector's boxes and scores selected inside the graph as ultralytics' end2end exports do (YOLOv10's
    top-k): each anchor's best score and its class, the `keep` best anchors' rows x0, y0, x1, y1, score, class
    gathered into output0 (N, keep, 6)."""
    m = cell_detector("ssd", names=names)
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.array([0, -1], np.int64), "s2"),
                          numpy_helper.from_array(np.array([keep], np.int64), "keep"),
                          numpy_helper.from_array(np.array([2], np.int64), "ax2"),
                          numpy_helper.from_array(np.array([1, 1, 6], np.int64), "six")])
    g.node.extend([helper.make_node("ReduceMax", ["scores"], ["best"], axes=[2], keepdims=1),
                   helper.make_node("ArgMax", ["scores"], ["cls_i"], axis=2, keepdims=1),
                   helper.make_node("Cast", ["cls_i"], ["cls_f"], to=TensorProto.FLOAT),
                   helper.make_node("Concat", ["boxes", "best", "cls_f"], ["rows"], axis=2),
                   helper.make_node("Reshape", ["best", "s2"], ["best2"]),
                   helper.make_node("TopK", ["best2", "keep"], ["top_v", "top_i"], axis=1),
                   helper.make_node("Unsqueeze", ["top_i", "ax2"], ["top_i3"]),
                   helper.make_node("Tile", ["top_i3", "six"], ["top_i6"]),
                   helper.make_node("GatherElements", ["rows", "top_i6"], ["output0"], axis=1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", keep, 6]))
    onnx.checker.check_model(m)
    return m


def test_end2end_rows_are_read_as_boxes_score_class_not_as_two_class_scores():
    # an ultralytics nms=True export (output0 (1, 300, 6)) was read as a 2-class "yolov8-t": its class index
    # column taken as a score (a "bicycle" of score 41.0)
    proto = end2end_detector()
    model = fv.load(proto)
    x = np.concatenate([painted(), R.random((1, 3, 32, 32)).astype(np.float32)])
    out = ort_outputs(proto, x)["output0"]
    got = detections(model, x, conf=0.25, iou=0.5, max_det=10)
    for n in range(2):
        rows = [r for r in out[n] if r[4] > 0.25]  # the export's own order: best first
        assert len(got[n]) == len(rows)
        for d, r in zip(got[n], rows):
            assert d.cls == int(r[5]) and d.score == pytest.approx(float(r[4]), abs=1e-6)
            assert np.allclose(d.box, r[:4], atol=1e-5)
            assert d.layout.kind == "end2end" and (d.target.index, d.target.output) == ((d.anchor, 4), "output0")
            assert np.allclose(out[n, d.anchor, :4], d.box, atol=1e-5)
    assert sorted(d.label for d in got[0]) == ["blue", "green", "red"]
    assert [d.score for d in got[0]] == sorted((d.score for d in got[0]), reverse=True)
    assert got[0][0].box_target("y1").index == (got[0][0].anchor, 3)
    assert len(detections(model, x, conf=0.25, max_det=2)[0]) == 2
    assert [d.label for d in detections(model, x, conf=0.25, classes=[1])[0]] == ["green"]
    # without names: the whole class indices (2 > 1) tell an end2end output from a 2-class (N, A, 6) one
    bare = detections(fv.load(end2end_detector(names=False)), x[:1], conf=0.25)[0]
    assert [(d.anchor, d.cls, d.label) for d in bare] == [(d.anchor, d.cls, None) for d in got[0]]
    # the maps: the row's score depends on its cell only, through TopK and GatherElements
    res = explain_detections(model, x[:1], ["gradient"], dets=[got[0]])[0]
    for r in res:
        x0, y0, x1, y1 = r.detection.box
        inside = np.zeros((32, 32), bool)
        inside[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = True
        mass = np.abs(r.maps["gradient"])
        assert mass.sum() > 0 and mass[inside].sum() / mass.sum() > 0.99
    with pytest.raises(fv.InputError, match="end2end"):
        detections(fv.load(cell_detector("yolov8")), x, layout="end2end")


def test_a_two_class_transposed_output_without_names_stays_yolov8_t():
    from fvgraph.methods.detections import _settle, find_layout

    class Bare:
        def class_names(self):
            return None

    rows = R.random((1, 60, 6))
    rows[..., :4] *= 64
    lay = _settle(find_layout(Bare(), {"out": rows.shape}), {"out": rows}, Bare())
    assert (lay.kind, lay.classes) == ("yolov8-t", 2)  # scores in 0..1: two classes
    rows[..., 5] = R.integers(0, 7, 60)
    lay = _settle(find_layout(Bare(), {"out": rows.shape}), {"out": rows}, Bare())
    assert (lay.kind, lay.classes, lay.box_format) == ("end2end", 7, "xyxy")
    assert find_layout(Bare(), {"out": rows.shape}, layout="yolov8-t").kind == "yolov8-t"  # as asked
    assert find_layout(Named(), {"out": (1, 300, 6)}).kind == "end2end"  # 3 names: 6 is no 4 + 3 nor 5 + 3
