"""Detections as users see them: decode a detector's raw outputs into boxes, classes and scores, keep the best
after class-wise NMS, and explain each kept detection (its class score, or one of its box coordinates) with any
method, or black-box with D-RISE; maps and boxes go back to the photo's pixels.

Layouts (`layout=`; "auto" picks one from the outputs' shapes, the class names and the output names):
- "yolov8": one output (N, 4 + C, A): rows cx, cy, w, h (input pixels), then C class scores (after a sigmoid),
  as ultralytics exports YOLOv8/v9/v10/11 detectors. "auto": a rank-3 first output whose axis 1 is 4 + the
  number of class names, or (no names) whose axis 1 is shorter than axis 2. Rows after the named classes
  (YOLOv8-seg's 32 mask coefficients) are not classes.
- "yolov8-t": the same transposed, (N, A, 4 + C). "auto": axis 2 is 4 + the number of names, or (no names)
  axis 2 is shorter than axis 1.
- "yolov5": (N, A, 5 + C): cx, cy, w, h, objectness, C class probabilities (YOLOv5/v7 exports); the score is
  objectness x class probability. "auto": axis 2 is 5 + the number of names (never chosen without names:
  give layout="yolov5").
- "end2end": one output (N, K, 6): rows x0, y0, x1, y1 (input pixels), score, class index, already selected by
  the export (ultralytics' `nms=True` exports, YOLOv10 / YOLO26's NMS-free heads; rows past the kept ones are
  zeros); kept when score > conf, best first, no NMS redone (as ultralytics reads these). "auto": axis 2 is 6
  and the model has more than 2 class names, or (no names) axis 2 is 6 and every class-index value of the
  first image is a whole number >= 0, and some score or class above 1 or every class 0 (a 2-class (N, A, 6)
  "yolov8-t" has scores in 0..1 there).
- "ssd": boxes and scores as two outputs, (N, A, 4) (or (N, A, 1, 4), YOLOv4's) boxes and (N, A, C) scores,
  as decoded SSD / RetinaNet / FCOS exports write them. "auto": two outputs with the same A, one ending in 4;
  where both could be the boxes, output names decide (box/bbox/loc/reg for the boxes, score/conf/cls/class/
  logit/prob for the scores). Boxes are x0, y0, x1, y1 (`box_format="xyxy"`, the default) or "cxcywh" or
  "yxyx" (TensorFlow's), in input pixels or normalized to 0..1 (recognized when every box coordinate of the
  first image is within [-0.5, 1.5]: scaled by the input's width and height). Scores outside [0, 1] are taken
  as logits (sigmoid, RetinaNet's); scores whose rows sum to 1 over C = names + 1 columns have class 0 as the
  background (SSD's softmax), dropped.
Anchor-delta exports (boxes still encoded against prior boxes) are not decoded: their boxes mean nothing
without the priors.

Selection follows ultralytics' non_max_suppression (single label): each anchor's best class, kept when its
score > conf (and in `classes` when given), then class-wise NMS (highest score first, a box suppressed when its
IoU with a kept box of the same class is > iou), then the max_det best. The target of a detection is its raw
score element (an fv.OutputTarget) at its anchor; `box_target(coord)` one raw box coordinate there.

D-RISE (Petsiuk et al. 2021): RISE's masks (fvgraph.methods.blackbox), each masked image's proposals (every
anchor, decoded as above, no threshold and no NMS) compared with the target detection: IoU of the boxes x
cosine of the class-score vectors x objectness (where the layout has one), its maximum over the proposals the
mask's weight; the map is sum_i w_i M_i / (masks * p).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OptionError, refuse_overwrite
from ..explanation import Explanation, OutputTarget

LAYOUTS = ("auto", "yolov8", "yolov8-t", "yolov5", "end2end", "ssd")
BOX_FORMATS = ("xyxy", "cxcywh", "yxyx")
BOX_WORDS = ("box", "bbox", "loc", "reg")
SCORE_WORDS = ("score", "conf", "cls", "class", "logit", "prob")


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """How raw outputs become boxes and class scores (see the module's doc)."""
    kind: str                    # yolov8, yolov8-t, yolov5, end2end, ssd
    scores: str                  # the output class scores are read from
    boxes: str                   # the output boxes are read from (the same for the YOLO layouts)
    classes: int                 # score columns C (the background's included)
    box_format: str = "cxcywh"
    normalized: bool = False     # boxes in 0..1 of the input's width and height
    sigmoid: bool = False        # scores are logits
    background: int | None = None  # a column that is no class (SSD's 0)
    box_extra: tuple = ()        # singleton axes between anchor and coordinate ((0,) for (N, A, 1, 4))
    guessed: bool = False        # "auto" chose it from shapes alone (no class names): _settle may revise it

    def score_index(self, anchor: int, column: int) -> tuple:
        """The element (no batch axis) holding class column `column`'s score at `anchor`."""
        if self.kind == "yolov8":
            return (4 + column, anchor)
        if self.kind == "yolov8-t":
            return (anchor, 4 + column)
        if self.kind == "yolov5":
            return (anchor, 5 + column)
        if self.kind == "end2end":
            return (anchor, 4)  # the row's one score, whatever its class
        return (anchor, column)

    def box_index(self, anchor: int, coord: int) -> tuple:
        """The element holding raw box coordinate `coord` (0..3, in the layout's box format) at `anchor`."""
        if self.kind == "yolov8":
            return (coord, anchor)
        if self.kind in ("yolov8-t", "yolov5", "end2end"):
            return (anchor, coord)
        return (anchor,) + tuple(self.box_extra) + (coord,)

    def coord_names(self) -> tuple:
        return {"xyxy": ("x0", "y0", "x1", "y1"), "cxcywh": ("cx", "cy", "w", "h"),
                "yxyx": ("y0", "x0", "y1", "x1")}[self.box_format]


def _names_count(model):
    names = model.class_names()
    return len(names) if names else None


def find_layout(model, shapes: dict, layout="auto", box_format=None) -> Layout:
    """The Layout of outputs of these (concrete) shapes, by name: `layout` as given, or recognized ("auto")."""
    if layout not in LAYOUTS:
        raise OptionError(f"unknown detection layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if box_format is not None and box_format not in BOX_FORMATS:
        raise OptionError(f"unknown box_format {box_format!r}: use one of {', '.join(BOX_FORMATS)}")
    names = list(shapes)
    k = _names_count(model)
    if layout in ("auto", "ssd"):
        pair = _split_pair(shapes)
        if pair is not None:
            boxes, scores = pair
            extra = tuple(0 for _ in shapes[boxes][2:-1])
            return Layout("ssd", scores, boxes, int(shapes[scores][2]), box_format or "xyxy", box_extra=extra)
        if layout == "ssd":
            raise InputError("layout='ssd' needs two outputs, boxes (N, A, 4) and scores (N, A, C) with the same A; "
                             f"the model's outputs are {_shown(shapes)}")
    first = names[0]
    s = shapes[first]
    if len(s) != 3:
        raise InputError(f"cannot read detections from outputs {_shown(shapes)}: give layout= one of "
                         f"{', '.join(LAYOUTS[1:])} (yolov8: (N, 4 + C, A); yolov8-t: (N, A, 4 + C); yolov5: "
                         "(N, A, 5 + C); ssd: boxes (N, A, 4) + scores (N, A, C))")
    _, d1, d2 = s
    kind = layout
    guessed = False
    if kind == "auto":
        if k is not None and d1 == 4 + k:
            kind = "yolov8"
        elif k is not None and d2 == 4 + k:
            kind = "yolov8-t"
        elif k is not None and d2 == 5 + k:
            kind = "yolov5"
        elif k is not None and d2 == 6:
            kind = "end2end"
        else:
            kind = "yolov8" if d1 < d2 else "yolov8-t"
            guessed = k is None and d2 == 6  # or end2end: told by the values
    if kind == "end2end":
        if d2 != 6:
            raise InputError(f"layout 'end2end' needs an output (N, K, 6) (x0, y0, x1, y1, score, class); output "
                             f"{first!r} is {_shown(shapes)[first]}")
        return Layout("end2end", first, first, int(k or 1), "xyxy")
    c = (d1 - 4) if kind == "yolov8" else (d2 - 4) if kind == "yolov8-t" else d2 - 5
    if k is not None and c > k and layout == "auto":
        c = k  # rows after the classes: a segmenter's mask coefficients (YOLOv8-seg's 4 + 80 + 32)
    if c < 1:
        raise InputError(f"output {first!r} of shape {_shown(shapes)[first]} has no class rows for layout {kind!r}")
    return Layout(kind, first, first, int(c), box_format or "cxcywh", guessed=guessed)


def _split_pair(shapes):
    """(boxes, scores) output names of a two-output layout, or None."""
    box_like = [n for n, s in shapes.items() if len(s) >= 3 and s[-1] == 4 and all(d == 1 for d in s[2:-1])]
    score_like = [n for n, s in shapes.items() if len(s) == 3]
    pairs = [(b, c) for b in box_like for c in score_like if b != c and shapes[b][1] == shapes[c][1]]
    if not pairs:
        return None
    if len(pairs) > 1:
        named = [(b, c) for b, c in pairs if any(w in b.lower() for w in BOX_WORDS)
                 and any(w in c.lower() for w in SCORE_WORDS)]
        pairs = named or pairs
    return pairs[0]


def _shown(shapes):
    return {n: tuple(["N"] + [int(d) for d in s[1:]]) for n, s in shapes.items()}


def _settle(layout: Layout, raw: dict, model) -> Layout:
    """The settings a layout reads from its values: an "ssd" layout's normalized boxes, logits and background
    column; an "end2end" layout's class count (the names', or past the largest class index); a (N, A, 6)
    guessed "yolov8-t" without names that is an end2end export's (see the module's doc)."""
    from dataclasses import replace
    if layout.guessed:
        rows = np.asarray(raw[layout.scores], np.float64)
        first = rows[:1].reshape(-1, 6)
        cls, score = first[:, 5], first[:, 4]
        whole = first.size and np.all(np.isfinite(cls)) and np.all(cls >= 0) and np.all(cls == np.round(cls))
        if whole and (cls.max() > 1 or score.max() > 1 or not cls.any()):
            layout = replace(layout, kind="end2end", classes=1, box_format="xyxy", guessed=False)
    if layout.kind == "end2end":
        cls = np.asarray(raw[layout.scores], np.float64)[..., 5]
        top = int(np.nanmax(np.clip(cls, 0, None))) + 1 if cls.size else 1
        return replace(layout, classes=max(layout.classes, _names_count(model) or 1, top))
    if layout.kind != "ssd":
        return layout
    boxes = np.asarray(raw[layout.boxes], np.float64)
    scores = np.asarray(raw[layout.scores], np.float64)
    normalized = bool(boxes.size) and boxes[0].min() >= -0.5 and boxes[0].max() <= 1.5
    sigmoid = bool(scores.size) and (scores.min() < 0 or scores.max() > 1)
    background = None
    k = _names_count(model)
    if not sigmoid and k is not None and layout.classes == k + 1 and np.allclose(scores.sum(-1), 1, atol=1e-3):
        background = 0
    return replace(layout, normalized=normalized, sigmoid=sigmoid, background=background)


def decode(layout: Layout, raw: dict, input_hw) -> tuple:
    """(boxes (N, A, 4) x0, y0, x1, y1 in input pixels, scores (N, A, C) in 0..1, objectness (N, A) or None)."""
    H, W = input_hw
    if layout.kind == "yolov8":
        a = np.asarray(raw[layout.scores], np.float64).transpose(0, 2, 1)
    else:
        a = np.asarray(raw[layout.scores], np.float64)
    obj = None
    if layout.kind == "end2end":
        boxes = a[..., :4].copy()
        cls = np.clip(np.nan_to_num(a[..., 5]), 0, layout.classes - 1).astype(np.int64)
        scores = np.zeros(a.shape[:2] + (layout.classes,), np.float64)
        np.put_along_axis(scores, cls[..., None], a[..., 4:5], axis=-1)  # the row's score at its class
        return boxes, scores, None
    if layout.kind == "ssd":
        b = np.asarray(raw[layout.boxes], np.float64)
        b = b.reshape(b.shape[0], b.shape[1], 4)
        scores = a
    elif layout.kind == "yolov5":
        b, obj, scores = a[..., :4], a[..., 4], a[..., 5:5 + layout.classes]
    else:
        b, scores = a[..., :4], a[..., 4:4 + layout.classes]
    if layout.sigmoid:
        scores = 1 / (1 + np.exp(-scores))
    boxes = to_xyxy(b, layout.box_format)
    if layout.normalized:
        boxes = boxes * np.array([W, H, W, H], np.float64)
    return boxes, scores, obj


def to_xyxy(b, fmt="cxcywh") -> np.ndarray:
    b = np.asarray(b, np.float64)
    if fmt == "cxcywh":
        cx, cy, w, h = np.moveaxis(b, -1, 0)
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    if fmt == "yxyx":
        return b[..., [1, 0, 3, 2]]
    return b


# --------------------------------------------------------------------------- NMS
def box_iou(box, boxes) -> np.ndarray:
    """IoU of one box (4,) with each of boxes (M, 4), all x0, y0, x1, y1 (empty boxes: IoU 0)."""
    box, boxes = np.asarray(box, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes, scores, classes, iou=0.7, max_det=None) -> np.ndarray:
    """Class-wise non-maximum suppression: indices kept, best score first (ties in index order)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(order), bool)
    kept = []
    for r, i in enumerate(order):
        if not alive[r]:
            continue
        kept.append(int(i))
        if max_det is not None and len(kept) >= max_det:
            break
        rest = order[r + 1:]
        same = alive[r + 1:] & (classes[rest] == classes[i])
        if same.any():
            over = box_iou(boxes[i], boxes[rest[same]]) > iou
            idx = np.nonzero(same)[0][over]
            alive[r + 1 + idx] = False
    return np.asarray(kept, np.int64)


# --------------------------------------------------------------------------- detections
@dataclass(frozen=True, eq=False)
class Detection:
    """One kept detection. box: x0, y0, x1, y1 in the model input's pixels; cls: the class index (as the
    model's names count it: an SSD background column does not count); target: the fv.OutputTarget of its raw
    score element at its anchor (what model.explain(x, method, target=det.target) explains)."""
    box: tuple
    cls: int
    label: str | None
    score: float
    anchor: int
    output: str
    target: OutputTarget
    image: int = 0
    layout: Layout | None = field(default=None, repr=False)
    probs: Any = field(default=None, repr=False)   # the class scores (0..1) at the anchor (D-RISE's vector)
    objectness: float | None = None

    def box_target(self, coord) -> OutputTarget:
        """The OutputTarget of one raw box coordinate at this anchor: 0..3 or its name in the layout's box
        format (cx, cy, w, h for the YOLO layouts; x0, y0, x1, y1 for "ssd" boxes as exported)."""
        names = self.layout.coord_names()
        if isinstance(coord, str):
            if coord not in names:
                raise InputError(f"box coordinate {coord!r}: this layout's boxes are {', '.join(names)}")
            coord = names.index(coord)
        if not isinstance(coord, (int, np.integer)) or not 0 <= coord < 4:
            raise InputError(f"box coordinate must be 0..3 or one of {', '.join(names)}, got {coord!r}")
        return OutputTarget(index=self.layout.box_index(self.anchor, int(coord)), output=self.layout.boxes)

    def to_dict(self) -> dict:
        return {"image": self.image, "box": [float(v) for v in self.box], "class": int(self.cls),
                "label": self.label, "score": float(self.score), "anchor": int(self.anchor), "output": self.output,
                "index": list(self.target.index)}


def raw_outputs(model, x) -> dict:
    """Every graph output by name on x (the model's engine)."""
    names = model.graph.output_names()
    got = model.run(x, outputs=list(names))
    return {n: np.asarray(got[n]) for n in names}


def _image_batch(model, x):
    first = model.graph.input_names()[0]
    x = model.feeds(x)[first]
    if x.ndim != 4:
        raise InputError(f"detections need an image batch (N, C, H, W), got shape {x.shape}")
    return x


def detections(model, x, conf=0.25, iou=0.7, max_det=10, layout="auto", classes=None, box_format=None):
    """The kept detections of each image of x: a list per image of Detection, best score first (the module's
    doc says how the outputs are read and what is kept)."""
    for name, v, lo, hi in (("conf", conf, 0, 1), ("iou", iou, 0, 1)):
        if not isinstance(v, (int, float, np.floating, np.integer)) or not lo <= v <= hi:
            raise OptionError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    if not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise OptionError(f"max_det must be a positive integer, got {max_det!r}")
    x = _image_batch(model, x)
    raw = raw_outputs(model, x)
    lay = _settle(find_layout(model, {n: a.shape for n, a in raw.items()}, layout, box_format), raw, model)
    return select(model, lay, raw, x.shape[2:], conf, iou, max_det, classes)


def select(model, lay: Layout, raw: dict, input_hw, conf, iou, max_det, classes=None):
    """decode + threshold + class-wise NMS of raw outputs already run (see detections)."""
    boxes, scores, obj = decode(lay, raw, input_hw)
    names = model.class_names()
    keep_cls = None if classes is None else {int(c) for c in np.atleast_1d(classes)}
    offset = 0
    if lay.background is not None:
        scores = scores.copy()
        scores[..., lay.background] = -np.inf  # never a detection's class
        offset = 1
    out = []
    for n in range(len(boxes)):
        conf_all = scores[n] * obj[n][:, None] if obj is not None else scores[n]
        column = conf_all.argmax(axis=1)
        best = conf_all[np.arange(len(column)), column]
        cand = best > conf
        if obj is not None:
            cand &= obj[n] > conf
        if keep_cls is not None:
            cand &= np.isin(column - offset, list(keep_cls))
        idx = np.nonzero(cand)[0]
        if lay.kind == "end2end":  # selected by the export already: best first, no NMS redone
            kept = idx[np.argsort(-best[idx], kind="stable")][:max_det]
        else:
            kept = idx[nms(boxes[n, idx], best[idx], column[idx], iou, max_det)]
        dets = []
        for a in kept:
            c = int(column[a]) - offset
            probs = scores[n, a].copy()
            if lay.background is not None:
                probs = np.delete(probs, lay.background)
            dets.append(Detection(
                box=tuple(float(v) for v in boxes[n, a]), cls=c,
                label=names[c] if names and 0 <= c < len(names) else None, score=float(best[a]), anchor=int(a),
                output=lay.scores, target=OutputTarget(index=lay.score_index(int(a), int(column[a])),
                                                       output=lay.scores),
                image=n, layout=lay, probs=probs, objectness=None if obj is None else float(obj[n, a])))
        out.append(dets)
    return out


# --------------------------------------------------------------------------- the photo's pixels
def _geometry(photo_size, spec):
    """(sx, sy, ox, oy): input = photo * s + o, in continuous pixel coordinates (edges at 0 and the size),
    the resize fvgraph.image.resize_crop does (Pillow maps pixel edges linearly), then its crop or pad."""
    from ..image import _resized
    h, w = (int(v) for v in photo_size)
    how, _, (nh, nw), (th, tw) = _resized(h, w, spec)
    sx, sy = nw / w, nh / h
    if how == "letterbox":
        return sx, sy, (tw - nw) // 2, (th - nh) // 2
    return sx, sy, -((nw - tw) // 2), -((nh - th) // 2)


def to_photo(box, photo_size, spec, clip=True) -> np.ndarray:
    """Coordinates in the model input's pixels (x, y pairs along the last axis: a box x0, y0, x1, y1, or
    points) -> the photo's pixels. photo_size: (height, width) of the photo; spec: the model's preprocessing
    (model.preprocessing()); clip: to the photo's bounds."""
    a = np.asarray(box, np.float64)
    sx, sy, ox, oy = _geometry(photo_size, spec)
    out = a.copy()
    out[..., 0::2] = (a[..., 0::2] - ox) / sx
    out[..., 1::2] = (a[..., 1::2] - oy) / sy
    if clip:
        out[..., 0::2] = np.clip(out[..., 0::2], 0, photo_size[1])
        out[..., 1::2] = np.clip(out[..., 1::2], 0, photo_size[0])
    return out


def from_photo(box, photo_size, spec) -> np.ndarray:
    """The inverse of to_photo (without clipping): photo pixels -> the model input's pixels."""
    a = np.asarray(box, np.float64)
    sx, sy, ox, oy = _geometry(photo_size, spec)
    out = a.copy()
    out[..., 0::2] = a[..., 0::2] * sx + ox
    out[..., 1::2] = a[..., 1::2] * sy + oy
    return out


def map_to_photo(m, photo_size, spec) -> tuple:
    """An (H, W) map over the model's input resampled (bilinear) onto the photo's pixels: (map (h, w),
    valid (h, w): where the photo reached the input; False in what a centre crop cut off)."""
    m = np.asarray(m, np.float64)
    H, W = m.shape
    h, w = (int(v) for v in photo_size)
    sx, sy, ox, oy = _geometry(photo_size, spec)
    X = (np.arange(w) + 0.5) * sx + ox - 0.5  # the input pixel (centres at integers) each photo pixel lands on
    Y = (np.arange(h) + 0.5) * sy + oy - 0.5
    vx, vy = (X >= -0.5) & (X <= W - 0.5), (Y >= -0.5) & (Y <= H - 0.5)
    X, Y = np.clip(X, 0, W - 1), np.clip(Y, 0, H - 1)
    x0, y0 = np.floor(X).astype(int), np.floor(Y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (X - x0)[None, :], (Y - y0)[:, None]
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy, vy[:, None] & vx[None, :]


# --------------------------------------------------------------------------- explanations
@dataclass
class DetectionExplanation:
    """One detection's maps: explanations[name] (the Explanation), maps[name] (H, W) over the model's input;
    names are the methods, and "METHOD:COORD" for a box coordinate's map."""
    detection: Detection
    explanations: dict
    maps: dict


def map_2d(e: Explanation) -> np.ndarray:
    """One sample's map as (H, W), reduced over channels as the method's maps are shown (signed: summed;
    abs: largest magnitude)."""
    from ..render import to_2d
    from .registry import map_kind
    rel = np.asarray(e.relevance[0], np.float32)
    return to_2d(rel, "absmax" if map_kind(e.method) == "abs" else "sum") if rel.ndim == 3 else rel


def explain_detections(model, x, methods=("gradient",), dets=None, conf=0.25, iou=0.7, max_det=10, layout="auto",
                       classes=None, coords=(), options=None):
    """For each kept detection of each image (`dets`, else detections(model, x, ...)) and each method,
    model.explain(that image, method, target=det.target); `coords` adds box coordinates' maps (names or 0..3,
    see Detection.box_target); `options` {method: {option: value}}. Returns a list per image of
    DetectionExplanation."""
    x = _image_batch(model, x)
    methods = [methods] if isinstance(methods, str) else list(methods)
    options = options or {}
    if dets is None:
        dets = detections(model, x, conf, iou, max_det, layout, classes)
    out = []
    for per_image in dets:
        row = []
        for d in per_image:
            xs = x[d.image:d.image + 1]
            exps = {}
            for m in methods:
                exps[m] = model.explain(xs, m, target=d.target, **_options(model, xs, m, d.target, options))
                for c in coords:
                    name = c if isinstance(c, str) else d.layout.coord_names()[int(c)]
                    t = d.box_target(c)
                    exps[f"{m}:{name}"] = model.explain(xs, m, target=t, **_options(model, xs, m, t, options))
            row.append(DetectionExplanation(d, exps, {k: map_2d(e) for k, e in exps.items()}))
        out.append(row)
    return out


def _options(model, xs, method, target, options):
    """A method's options; a CAM without layer= gets Grad-CAM's default layer for the output the target reads
    (the CAMs' own default looks at the first output: on a boxes + scores export, the boxes' branch)."""
    from .registry import lookup
    opts = dict(options.get(method, {}))
    m = lookup(method)
    if m.family == "cam" and method not in ("cam", "reciprocam") and opts.get("layer") is None \
            and any(o.name == "layer" for o in m.options):
        from .attribution import output_value
        from .cam import default_gradcam_layer
        opts["layer"] = default_gradcam_layer(model, model.feeds(xs), output_value(model, target))
    return opts


def write_detections(model, x, results, out, photos=None, overwrite=False, alpha=0.5, percentile=99.5) -> Path:
    """One PNG per detection and map (the map over the photo, the detection's box and label drawn), its .npy
    (the (h, w) map in the photo's pixels, as the boxes: 0 where a centre crop cut the photo off; the map over
    the model's input is DetectionExplanation.maps), and out/detections.json listing each detection (box in the
    photo's pixels, and in the input's, class, label, score, its files). photos: one per image (a path, PIL image or (h, w, 3)
    array: the photo x was made from with the model's preprocessing), or None (drawn over x shown as the
    picture it was: boxes in the input's pixels). Every file is checked absent first (overwrite=True replaces
    them) and written atomically. Returns the JSON's path."""
    from ..display import as_rgb
    from ..files import safe_part, write_text
    from ..image import to_display
    from ..render import save_npy, save_png
    from .registry import map_kind
    x = _image_batch(model, x)
    spec = model.preprocessing()
    out = Path(out)
    if photos is not None and not isinstance(photos, (list, tuple)):
        photos = [photos]
    if photos is not None and len(photos) != len(results):
        raise InputError(f"{len(photos)} photo(s) for {len(results)} image(s): give one photo per image")
    plan, records = [], []
    for n, row in enumerate(results):
        for i, r in enumerate(row):
            d = r.detection
            stem = (f"img{n}-" if len(results) > 1 else "") + f"det{i:02d}-{safe_part(d.label or d.cls)}"
            files = {}
            for name in r.maps:
                base = f"{stem}-{safe_part(name.replace(':', '-'))}"
                files[name] = {"png": base + ".png", "npy": base + ".npy"}
                plan.append((n, r, name, out / (base + ".png"), out / (base + ".npy")))
            records.append((n, d, files))
    json_path = out / "detections.json"
    for _, _, _, png, npy in plan:  # refused before any work
        refuse_overwrite(png, overwrite, other_out=True)
        refuse_overwrite(npy, overwrite, other_out=True)
    refuse_overwrite(json_path, overwrite, other_out=True)
    pictures = {}
    for n in range(len(results)):
        pictures[n] = as_rgb(photos[n]) if photos is not None else to_display(x[n], spec)
    listing = []
    for n, d, files in records:
        size = pictures[n].shape[:2]
        box = to_photo(d.box, size, spec) if photos is not None else np.asarray(d.box)
        listing.append({**d.to_dict(), "box": [round(float(v), 3) for v in box],
                        "box_input": [round(float(v), 3) for v in d.box], "maps": files})
    for n, r, name, png, npy in plan:
        photo = pictures[n]
        m = r.maps[name]
        if photos is None:
            shown, valid, box = m, np.ones(photo.shape[:2], bool), r.detection.box
        else:
            shown, valid = map_to_photo(m, photo.shape[:2], spec)
            shown = np.where(valid, shown, 0.0).astype(np.float32)
            box = to_photo(r.detection.box, photo.shape[:2], spec)
        save_png(png, draw(photo, shown, valid, map_kind(name.split(":")[0]), r.detection, box, alpha, percentile),
                 overwrite=True)
        save_npy(npy, shown, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text(json_path, json.dumps({"space": "photo" if photos is not None else "input",
                                      "detections": listing}, indent=1))
    return json_path


def draw(photo, m, valid, kind, det, box, alpha=0.5, percentile=99.5) -> np.ndarray:
    """The map (coloured as its kind, "rgb" as signed) blended over the photo where valid, the box and its
    label drawn."""
    from PIL import Image, ImageDraw
    from ..render import overlay, picture
    colours = picture(np.asarray(m, np.float32), "signed" if kind == "rgb" else kind, percentile)
    blended = np.where(valid[..., None], overlay(photo, colours, alpha), photo).astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(blended))
    g = ImageDraw.Draw(im)
    width = max(1, min(im.size) // 150)
    x0, y0, x1, y1 = (float(v) for v in box)
    g.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=(0, 255, 0), width=width)
    text = f"{det.label if det.label is not None else det.cls} {det.score:.2f}"
    g.text((x0 + 2, max(0, y0 - 11)), text, fill=(0, 255, 0))
    return np.asarray(im)


# --------------------------------------------------------------------------- D-RISE
def drise(model, x, detection: Detection, masks=2000, cells=16, p=0.5, seed=0, batch_size=None, memory=None,
          quiet=None, progress=None) -> Explanation:
    """D-RISE saliency (1, H, W) of one detection on its image of x (see the module's doc); the masks are
    RISE's (fvgraph.methods.blackbox.rise_grids / rise_masks) for the same masks, cells, p and seed."""
    from .blackbox import rise_grids, rise_masks
    from .memory import copies_per_batch
    from .reconstruction import Progress
    if not 0 < p <= 1:
        raise OptionError(f"p of drise must be in (0, 1], got {p!r}")
    if not isinstance(masks, (int, np.integer)) or masks < 1:
        raise OptionError(f"masks must be a positive integer, got {masks!r}")
    if not isinstance(detection, Detection) or detection.layout is None:
        raise InputError("drise explains a Detection from fvgraph.methods.detections.detections(model, x)")
    x = _image_batch(model, x)
    x1 = x[detection.image:detection.image + 1]
    H, W = x1.shape[2:]
    lay = detection.layout
    grids, dy, dx, cell = rise_grids(int(masks), cells, float(p), (H, W), int(seed))
    batch_size = copies_per_batch(model, x1, lay.scores, int(masks), batch_size, memory, 256)
    limit = model.batch_limit
    t_box = np.asarray(detection.box, np.float64)
    t_probs = np.asarray(detection.probs, np.float64)
    t_norm = np.linalg.norm(t_probs) or 1.0
    sal = np.zeros((H, W), np.float64)
    weights = np.zeros(masks, np.float64)
    bar = Progress(masks, "drise", quiet, progress)
    for s in range(0, masks, batch_size):
        e = min(masks, s + batch_size)
        m = rise_masks(grids[s:e], dy[s:e], dx[s:e], cell, (H, W))
        w = _similarities(model, lay, x1 * m[:, None], t_box, t_probs, t_norm, limit, (H, W))
        weights[s:e] = w
        sal += np.tensordot(w, m.astype(np.float64), axes=1)
        bar.update(e, partial=lambda e=e: (sal / (e * p)).astype(np.float32)[None])
    rel = (sal / (masks * p)).astype(np.float32)[None]
    return Explanation(rel, detection.target, raw_outputs(model, x1)[lay.scores], "drise",
                       extras={"masks": int(masks), "cells": cells, "p": float(p), "seed": int(seed),
                               "batch_size": batch_size, "weights": weights.astype(np.float32),
                               "detection": detection.to_dict()})


def _similarities(model, lay, rows, t_box, t_probs, t_norm, limit, hw) -> np.ndarray:
    """Each masked image's best match to the target: max over its proposals of IoU x cosine x objectness."""
    parts = []
    step = limit or len(rows)
    for s in range(0, len(rows), step):
        chunk = rows[s:s + step]
        pad = (limit - len(chunk)) if limit else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        raw = raw_outputs(model, np.ascontiguousarray(chunk, np.float32))
        boxes, scores, obj = decode(lay, raw, hw)
        if lay.background is not None:
            scores = np.delete(scores, lay.background, axis=-1)
        sims = []
        for k in range(len(chunk) - pad):
            iou = box_iou(t_box, boxes[k])
            norms = np.linalg.norm(scores[k], axis=1)
            cos = scores[k] @ t_probs / np.where(norms > 0, norms * t_norm, 1)
            sim = iou * cos * (obj[k] if obj is not None else 1.0)
            sims.append(float(sim.max()) if sim.size else 0.0)
        parts.append(np.asarray(sims))
    return np.concatenate(parts)
