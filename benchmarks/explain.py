"""Explanation speed on the default engine (onnxruntime running the lowered graphs): `run` and every method
against one plain onnxruntime forward of the same model, side by side in one run, same threads, batch 1.

    python benchmarks/explain.py [--threads 2] [--repeats 5] [--models resnet18,vgg16,efficientnet,yolo]
                                 [--engine onnxruntime] [--json benchmarks/results/explain.json]

Models: ResNet-18- and VGG-16-shaped (224x224, the real layer shapes, seeded weights), the embedded
EfficientNet-Lite0 (depthwise convolutions, ReLU6), and a YOLOv8n-shaped detector at 320x320 (Conv + Sigmoid +
Mul blocks; its gradient is seeded at one class score of one anchor). Also the peak memory (VmHWM) of a fresh
process that loads VGG-16 and explains one image with guided backpropagation, and the time the first call
takes (lowering plus session creation), which later calls do not pay.
"""
from __future__ import annotations

import time

from common import (
    ROOT,
    alternate,
    arguments,
    ort_session,
    peak_rss_mb,
    saved,
    write_json,
)

METHODS = ("gradient", "guided", "deconvnet", "lrp-epsilon", "lrp-zplus", "lrp-alphabeta", "gradcam")
TARGETS = {"run": 1.1, "gradient": 2.6, "guided": 2.6, "deconvnet": 2.6, "lrp-epsilon": 3.0, "lrp-zplus": 4.0,
           "lrp-alphabeta": 4.0, "gradcam": 1.8}


def models(names):
    from pathlib import Path

    import onnx

    from tests.zoo import resnet18, vgg16, yolo_like
    for name in names:
        if name == "efficientnet":
            path = Path(ROOT) / "fvgraph" / "data" / "efficientnet_lite0.onnx"
            yield name, path, onnx.load(path), (1, 3, 224, 224)
        else:
            proto = {"resnet18": resnet18, "vgg16": vgg16, "yolo": yolo_like}[name]()
            size = 320 if name == "yolo" else 224
            yield name, saved(proto, name), proto, (1, 3, size, size)


def main():
    args = arguments(__doc__, "explain", repeats=5, models="resnet18,vgg16,efficientnet,yolo", engine="onnxruntime")
    import numpy as np

    import fvgraph as fv

    rows = []
    for name, path, proto, shape in models(args.models.split(",")):
        model = fv.load(path, engine=args.engine, threads=args.threads)
        sess = ort_session(proto, args.threads)
        inp = proto.graph.input[0].name
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        fns = {"ort forward": lambda: sess.run(None, {inp: x}), "run": lambda: model.run(x)}
        if name == "yolo":  # a detector: one class score of one anchor
            seed = np.zeros_like(model.run(x))
            seed[0, 4 + 5, 1234] = 1
            todo = {"gradient": dict(target=seed)}
        else:
            todo = {m: {} for m in METHODS}
        first = {}
        for m, kw in todo.items():
            start = time.perf_counter()
            model.explain(x, m, **kw)
            first[m] = time.perf_counter() - start
            fns[m] = (lambda m=m, kw=kw: model.explain(x, m, **kw))
        med = alternate(fns, args.repeats)
        for k, t in med.items():
            peak = float("nan")
            if name == "vgg16" and k == "guided":
                peak = peak_rss_mb(f"import numpy as np, fvgraph as fv\nm = fv.load({str(path)!r}, threads={args.threads})\n"
                                   f"m.explain(np.zeros((1, 3, 224, 224), np.float32), 'guided')", args.threads)
            rows.append(dict(model=name, what=k, ms=t * 1e3, vs_ort_forward=t / med["ort forward"], peak_mb=peak,
                             first_call_s=first.get(k, float("nan")), target=TARGETS.get(k)))
    print(f"engine={args.engine}, threads={args.threads}, batch 1, medians of alternating blocks; "
          "ratio = time / one onnxruntime forward")
    print(f"{'model':<13} {'what':<14} {'ms':>8} {'x ort fwd':>10} {'target':>7} {'first call s':>13} {'peak MB':>8}")
    for r in rows:
        target = f"{r['target']:.1f}" if r["target"] else ""
        print(f"{r['model']:<13} {r['what']:<14} {r['ms']:>8.1f} {r['vs_ort_forward']:>10.2f} {target:>7} "
              f"{r['first_call_s']:>13.2f} {r['peak_mb']:>8.0f}")
    write_json(args.json, {"threads": args.threads, "engine": args.engine, "rows": rows})


if __name__ == "__main__":
    main()
