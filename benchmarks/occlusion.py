"""Occlusion speed: fvgraph's default (whichever way its cost estimate picks), each way forced (the windows as
one graph on onnxruntime, fvgraph.methods.windows; the windows on fvgraph's executor,
fvgraph.methods.incremental; full passes), and the same number of plain onnxruntime forward passes at the
same batch size, side by side in one run.

    python benchmarks/occlusion.py [--threads 2] [--batch 16] [--sample 96] [--repeats 3] [--skip_executor 1]
                                   [--json ...]

Models: VGG-16- and ResNet-18-shaped, 224x224; settings: box 16 stride 8 (729 boxes) and box 32 stride 16
(169 boxes). `--sample K` times K boxes spread evenly over all positions (interior and edge boxes alike) and
reports seconds per box and the projected time for all boxes; `--sample 0` runs every box.
"""
from __future__ import annotations

import time

from common import arguments, ort_session, write_json


def main():
    args = arguments(__doc__, "occlusion", batch=16, sample=96, models="vgg16,resnet18", repeats=3,
                     skip_executor=0)
    import numpy as np

    import fvgraph as fv
    from fvgraph.methods.incremental import IncrementalRunner
    from fvgraph.methods.occlusion import positions, windows_faster, windows_pay
    from fvgraph.methods.windows import window_plan
    from tests.zoo import resnet18, vgg16

    rows = []
    for name in args.models.split(","):
        proto = {"vgg16": vgg16, "resnet18": resnet18}[name]()
        model = fv.load(proto, threads=args.threads)
        sess = ort_session(proto, args.threads)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        out = model.outputs[0].name
        for box, stride in ((16, 8), (32, 16)):
            ps = positions(224, box, stride)
            boxes = [(y, xx) for y in ps for xx in ps]
            chosen = boxes if not args.sample else [boxes[int(k)] for k in
                                                    np.linspace(0, len(boxes) - 1, min(args.sample, len(boxes)))]
            patches = np.zeros((len(chosen), 3, box, box), np.float32)
            batches = [chosen[i:i + args.batch] for i in range(0, len(chosen), args.batch)]

            def occluded(chunk, k0):
                b = np.repeat(x, len(chunk), axis=0)
                for k, (y, xx) in enumerate(chunk):
                    b[k, :, y:y + box, xx:xx + box] = patches[k0 + k]
                return b

            runner = IncrementalRunner(model, out)
            runner.set_image(x)
            plan = window_plan(model, out, (box, box), boxes, x)
            default = "fvgraph windows" if windows_pay(plan) and windows_faster(model, plan, x, boxes, (box, box), out) \
                else "fvgraph full"
            clean = plan.clean_feeds(x)
            inputs = [occluded(c, i * args.batch) for i, c in enumerate(batches)]
            ways = {"ort": lambda i, c: sess.run(None, {"input": inputs[i]}),
                    "fvgraph full": lambda i, c: model.run(inputs[i]),
                    "fvgraph windows": lambda i, c: model.engine.run(plan.graph, {**clean, **plan.feeds(
                        c, patches[i * args.batch:i * args.batch + len(c)])}, ["windows/out"]),
                    "fvgraph incremental (executor)": lambda i, c: runner.run(
                        c, (box, box), patches[i * args.batch:i * args.batch + len(c)])}
            if args.skip_executor:
                ways.pop("fvgraph incremental (executor)")
            for fn in ways.values():
                fn(0, batches[0])  # warm
            runs = {what: [] for what in ways}
            for _ in range(args.repeats):  # rounds alternate the ways; each way's median round
                for what, fn in ways.items():
                    start = time.perf_counter()
                    for i, c in enumerate(batches):
                        fn(i, c)
                    runs[what].append((time.perf_counter() - start) / len(chosen))
            t = {what: float(np.median(v)) for what, v in runs.items()}
            t["fvgraph default (" + default.split()[-1] + ")"] = t[default]
            for what, per in t.items():
                rows.append(dict(model=name, box=box, stride=stride, boxes=len(boxes), timed=len(chosen),
                                 what=what, s_per_box=per, projected_s=per * len(boxes),
                                 speedup_vs_ort=t["ort"] / per))
    print(f"threads={args.threads}, batch {args.batch}; times per box over {args.sample or 'all'} boxes spread "
          "over the image; projected = per box x all boxes")
    print(f"{'model':<9} {'box/stride':>10} {'boxes':>6} {'what':<30} {'ms/box':>8} {'projected s':>12} "
          f"{'x faster than ort':>18}")
    for r in rows:
        print(f"{r['model']:<9} {str(r['box']) + '/' + str(r['stride']):>10} {r['boxes']:>6} {r['what']:<30} "
              f"{r['s_per_box'] * 1e3:>8.1f} {r['projected_s']:>12.1f} {r['speedup_vs_ort']:>18.2f}")
    write_json(args.json, {"threads": args.threads, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
