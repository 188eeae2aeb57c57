"""One-off: fvgraph's detections on a real ultralytics YOLOv8n ONNX export, checked against an independent
numpy decode + NMS of onnxruntime's raw output.

Not part of the package or the tests. Two steps, in two venvs:

    # a venv with torch + ultralytics (no weights can be downloaded: the model is built from its yaml)
    python3 -m venv /work/yolo-venv
    /work/yolo-venv/bin/pip install torch==2.13.0 ultralytics onnx onnxruntime
    /work/yolo-venv/bin/python tools/yolo_check.py export --photo fvgraph/data/chelsea.png -o /tmp/yolov8n.onnx

    # fvgraph's venv (onnxruntime + numpy + fvgraph)
    python tools/yolo_check.py check /tmp/yolov8n.onnx fvgraph/data/chelsea.png --conf 0.25

export: YOLO("yolov8n.yaml") (random weights, COCO's names), its P3 class-branch biases raised for a few classes
so that only the top anchors of those classes score high on this photo (random weights otherwise score ~1e-5
everywhere), then ultralytics' own ONNX export at imgsz 640.

check: (1) onnxruntime on fvgraph's input tensor, decoded here with numpy (rows cx, cy, w, h, then 80 class
scores; best class per anchor, > conf, class-wise NMS IoU 0.7, max_det) vs fvgraph.load(...).detections(x, conf);
(2) the same with this script's own letterbox of the photo (PIL bilinear, pad 114, centred), its boxes mapped to
the photo's pixels and compared with the `fvgraph explain ... --detections` CLI's detections.json; (3) for each
gradient map (the CLI's .npy in the photo's pixels, and the API's map over the input) the share of |map| inside
its box divided by the box's share of the area. An nms=True export (export --nms: rows x0, y0, x1, y1, score,
class in (1, 300, 6)) gets step (1) only, its rows read as they are (fvgraph cannot differentiate its NMS).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = (15, 16, 41)  # cat, dog, cup: the classes whose P3 bias is raised
MOST_PER_CLASS = 4      # at most this many anchors per class over conf on the calibration photo


# --------------------------------------------------------------------------- shared, numpy only
def letterbox(path, size=640, pad=114):
    """(input (1, 3, size, size) float32 0..1 RGB, (scale, ox, oy)): the photo resized keeping its aspect
    (PIL bilinear), pasted centred on a pad-grey square."""
    from PIL import Image
    im = Image.open(path).convert("RGB")
    w, h = im.size
    k = min(size / h, size / w)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    canvas = Image.new("RGB", (size, size), (pad,) * 3)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas.paste(im.resize((nw, nh), Image.BILINEAR), (ox, oy))
    x = np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(x), (nw / w, nh / h, ox, oy)


def iou_one(b, bs):
    bs = np.asarray(bs, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(b[2], bs[:, 2]) - np.maximum(b[0], bs[:, 0]), 0, None)
    ih = np.clip(np.minimum(b[3], bs[:, 3]) - np.maximum(b[1], bs[:, 1]), 0, None)
    inter = iw * ih
    union = (b[2] - b[0]) * (b[3] - b[1]) + (bs[:, 2] - bs[:, 0]) * (bs[:, 3] - bs[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


def reference(out, conf, iou=0.7, max_det=10):
    """ultralytics' non_max_suppression (single label, agnostic=False) re-done on a (1, 84, A) output:
    [(box x0 y0 x1 y1, class, score, anchor)], best first."""
    p = np.asarray(out[0], np.float64).T  # (A, 84)
    cx, cy, w, h = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    sc = p[:, 4:]
    cls = sc.argmax(1)
    best = sc[np.arange(len(cls)), cls]
    idx = np.nonzero(best > conf)[0]
    # ultralytics offsets boxes by class * max_wh so one NMS is class-wise; done here class by class
    order = idx[np.argsort(-best[idx], kind="stable")]
    keep = []
    alive = {int(a): True for a in order}
    for a in order:
        if not alive[int(a)]:
            continue
        keep.append(int(a))
        for b in order:
            if alive[int(b)] and b != a and cls[b] == cls[a] and int(b) not in keep:
                if iou_one(boxes[a], boxes[b][None])[0] > iou:
                    alive[int(b)] = False
    keep = keep[:max_det]
    return [(boxes[a], int(cls[a]), float(best[a]), a) for a in keep]


def mass_ratio(m, box):
    """Share of |m| inside box (x0 y0 x1 y1, pixel edges) / the box's share of m's area."""
    m = np.abs(np.asarray(m, np.float64))
    H, W = m.shape
    x0, y0, x1, y1 = box
    X = np.arange(W) + 0.5
    Y = np.arange(H) + 0.5
    inside = ((Y >= y0) & (Y <= y1))[:, None] & ((X >= x0) & (X <= x1))[None, :]
    share = m[inside].sum() / max(m.sum(), 1e-30)
    area = inside.mean()
    return share / area if area > 0 else float("nan"), share, area


# --------------------------------------------------------------------------- export (torch venv)
def export(args):
    import torch
    import yaml
    from ultralytics import YOLO
    import ultralytics
    torch.manual_seed(args.seed)
    m = YOLO("yolov8n.yaml")
    coco = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/datasets/coco.yaml").read_text())["names"]
    m.model.names = {int(k): v for k, v in coco.items()}
    net = m.model
    det = net.model[-1]
    x, _ = letterbox(args.photo)
    # random init shrinks the activations layer by layer to ~1e-7 at the head (every score ~ its bias):
    # BatchNorm's running statistics are set from the photo (and its mirror) so each layer is ~unit scale
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a cumulative average over the passes
    batch = torch.from_numpy(np.concatenate([x, x[..., ::-1]]).copy())
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(batch)
    net.eval()
    seen = {}
    hook = det.cv3[0][-1].register_forward_hook(lambda mod, i, o: seen.__setitem__("p3", o.detach()))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    logits = seen["p3"][0]  # (80, 80, 80): class, y, x
    conv = det.cv3[0][-1]
    with torch.no_grad():
        for c in CLASSES:
            flat = logits[c].flatten()
            top = torch.topk(flat, 12).values
            gaps = top[:MOST_PER_CLASS] - top[1:MOST_PER_CLASS + 1]
            k = int(gaps.argmax())  # the widest gap among the top anchors' logits
            thr = float((top[k] + top[k + 1]) / 2) - float(np.log(args.conf / (1 - args.conf)))
            conv.bias[c] -= thr  # the gap's middle now scores args.conf
            scores = torch.sigmoid(top - thr)
            print(f"class {c} ({coco[c]}): P3 bias {float(conv.bias[c]):+.3f}, {k + 1} anchor(s) over "
                  f"{args.conf}; top scores {[round(float(v), 3) for v in scores]}")
    t = time.perf_counter()
    path = m.export(format="onnx", imgsz=640, opset=args.opset, simplify=args.simplify, dynamic=args.dynamic,
                    **({"nms": True} if args.nms else {}))
    print(f"exported {path} in {time.perf_counter() - t:.1f} s")
    out = Path(args.output)
    Path(path).replace(out)
    print(f"-> {out}")


# --------------------------------------------------------------------------- check (fvgraph venv)
def check(args):
    import onnx
    import onnxruntime as ort
    sys.path.insert(0, str(ROOT))
    import fvgraph
    from fvgraph.image import load_image
    from fvgraph.methods.detections import to_photo

    meta = {p.key: p.value for p in onnx.load(args.onnx, load_external_data=False).metadata_props}
    print("metadata:", {k: (v if len(v) < 80 else v[:77] + "...") for k, v in meta.items()})
    sess = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    print("outputs:", [(o.name, o.shape) for o in sess.get_outputs()])
    failures = []

    t = time.perf_counter()
    model = fvgraph.load(args.onnx)
    print(f"fvgraph.load: {time.perf_counter() - t:.2f} s; preprocessing {model.preprocessing()}")
    x = load_image(args.photo, model.preprocessing())
    print("fvgraph input", x.shape, x.dtype)

    # (1) the same tensor through onnxruntime, decoded here
    raw = sess.run(None, {iname: x})[0]
    if raw.shape[-1] == 6:  # nms=True: rows x0, y0, x1, y1, score, class, selected in the graph
        ref = [(r[:4].astype(np.float64), int(r[5]), float(r[4]), k) for k, r in enumerate(raw[0]) if r[4] > args.conf]
        dets = model.detections(x, conf=args.conf, iou=0.7, max_det=args.max)[0]
        print(f"(1) end2end output {raw.shape}: reference {len(ref[:args.max])} detection(s), fvgraph {len(dets)}")
        failures += compare(ref[:args.max], [(np.asarray(d.box), d.cls, d.score, d.anchor) for d in dets], "api")
        return report(failures)  # fvgraph cannot differentiate NonMaxSuppression: no maps
    ref = reference(raw, args.conf, 0.7, args.max)
    t = time.perf_counter()
    dets = model.detections(x, conf=args.conf, iou=0.7, max_det=args.max)[0]
    print(f"model.detections: {time.perf_counter() - t:.2f} s")
    print(f"(1) same input: reference {len(ref)} detection(s), fvgraph {len(dets)}")
    failures += compare(ref, [(np.asarray(d.box), d.cls, d.score, d.anchor) for d in dets], "api")

    # (2) this script's own letterbox, boxes in the photo's pixels vs the CLI's detections.json
    x2, (sx, sy, ox, oy) = letterbox(args.photo)
    print(f"own letterbox vs fvgraph's input: max |diff| {np.abs(x2 - x).max():.4f}")
    ref2 = reference(sess.run(None, {iname: x2})[0], args.conf, 0.7, args.max)
    out = Path(args.out)
    cmd = [sys.executable, "-m", "fvgraph", "explain", args.onnx, args.photo, "-m", "gradient,gradcam",
           "--detections", "--conf", str(args.conf), "--max", str(args.max), "-o", str(out), "--overwrite"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    cli_s = time.perf_counter() - t
    print(f"CLI: rc {r.returncode} in {cli_s:.1f} s")
    if r.returncode:
        print(r.stdout[-3000:], r.stderr[-3000:])
        failures.append("CLI failed")
        return report(failures)
    listing = json.loads((out / "detections.json").read_text())
    print("detections.json space:", listing["space"])
    from PIL import Image
    W, H = Image.open(args.photo).size
    ref2_photo = []
    for b, c, s, a in ref2:
        pb = np.array([(b[0] - ox) / sx, (b[1] - oy) / sy, (b[2] - ox) / sx, (b[3] - oy) / sy])
        pb[0::2] = np.clip(pb[0::2], 0, W)
        pb[1::2] = np.clip(pb[1::2], 0, H)
        ref2_photo.append((pb, c, s, a))
    cli = [(np.asarray(d["box"]), d["class"], d["score"], d["anchor"]) for d in listing["detections"]]
    print(f"(2) own letterbox: reference {len(ref2_photo)} detection(s), CLI {len(cli)} (photo pixels)")
    failures += compare(ref2_photo, cli, "cli")
    # fvgraph's own to_photo of the API's boxes agrees with the JSON
    for d, j in zip(dets, listing["detections"]):
        pb = to_photo(d.box, (H, W), model.preprocessing())
        if iou_one(pb, np.asarray(j["box"])[None])[0] < 0.999:
            failures.append(f"to_photo of det {d.anchor} disagrees with detections.json")

    # (3) mass ratios: the CLI's gradient maps (photo pixels) and the API's (input pixels)
    print("(3) |gradient| mass inside the box / the box's area share:")
    for i, d in enumerate(listing["detections"]):
        for name in ("gradient", "gradcam"):
            m = np.load(out / d["maps"][name]["npy"])
            ratio, share, area = mass_ratio(m, d["box"])
            flag = "" if ratio >= 2 or name != "gradient" else "  <-- below 2"
            print(f"   det{i} {d['label']:>5} {name:8s} photo: inside {share:.3f}, area {area:.4f}, "
                  f"ratio {ratio:.2f}{flag}")
            if name == "gradient" and not ratio >= 2:
                failures.append(f"det{i} gradient mass ratio {ratio:.2f} < 2")
    t = time.perf_counter()
    from fvgraph.methods.detections import explain_detections
    res = explain_detections(model, x, ("gradient",), dets=[dets])[0]
    print(f"   API explain_detections(gradient) for {len(res)} detection(s): {time.perf_counter() - t:.2f} s")
    for i, r_ in enumerate(res):
        ratio, share, area = mass_ratio(r_.maps["gradient"], r_.detection.box)
        print(f"   det{i} {r_.detection.label:>5} gradient input: inside {share:.3f}, area {area:.4f}, "
              f"ratio {ratio:.2f}")
        if not ratio >= 2:
            failures.append(f"API det{i} gradient mass ratio {ratio:.2f} < 2")
    return report(failures)


def compare(ref, got, what):
    bad = []
    if len(ref) != len(got):
        bad.append(f"{what}: count {len(got)} != reference {len(ref)}")
    rc = sorted(c for _, c, _, _ in ref)
    gc = sorted(c for _, c, _, _ in got)
    if rc != gc:
        bad.append(f"{what}: classes {gc} != reference {rc}")
    used = set()
    for b, c, s, a in ref:
        cands = [(iou_one(b, gb[None])[0], k) for k, (gb, gcl, _, _) in enumerate(got) if gcl == c and k not in used]
        if not cands:
            bad.append(f"{what}: reference class {c} anchor {a} unmatched")
            continue
        v, k = max(cands)
        used.add(k)
        print(f"   {what}: class {c:2d} score {s:.4f} (fvgraph {got[k][2]:.4f}) anchor {a} ({got[k][3]}) "
              f"IoU {v:.4f} box {np.round(b, 1).tolist()}")
        if v < 0.9:
            bad.append(f"{what}: class {c} anchor {a} IoU {v:.3f} < 0.9")
    return bad


def report(failures):
    print("FAILURES:" if failures else "ALL CHECKS PASSED")
    for f in failures:
        print("  -", f)
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--photo", default=str(ROOT / "fvgraph/data/chelsea.png"))
    e.add_argument("-o", "--output", default="/tmp/yolov8n.onnx")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--conf", type=float, default=0.25, help="the score the biases are set around")
    e.add_argument("--opset", type=int, default=None)
    e.add_argument("--simplify", action="store_true")
    e.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    e.add_argument("--nms", action="store_true", help="NMS inside the export: output (1, 300, 6)")
    c = sub.add_parser("check")
    c.add_argument("onnx")
    c.add_argument("photo")
    c.add_argument("--conf", type=float, default=0.25)
    c.add_argument("--max", type=int, default=10)
    c.add_argument("-o", "--out", default="/tmp/yolo_out")
    a = p.parse_args()
    sys.exit(export(a) if a.cmd == "export" else check(a))


if __name__ == "__main__":
    main()
