"""Explanation speed: `explain` for gradient, guided, lrp-epsilon and gradcam against one onnxruntime forward
on the same model, side by side in one run (ResNet-18- and VGG-16-shaped, 224x224, batch 1), and the peak
memory of a VGG-16 explanation.

    python benchmarks/explain.py [--threads 2] [--repeats 5] [--json benchmarks/results/explain.json]
"""
from __future__ import annotations

import argparse

from common import ROOT, alternate, ort_session, peak_rss_mb, saved, set_threads, write_json

METHODS = ("gradient", "guided", "lrp-epsilon", "gradcam")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="resnet18,vgg16")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "explain.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    import numpy as np

    import fvgraph as fv
    from tests.zoo import resnet18, vgg16

    rows = []
    for name in args.models.split(","):
        proto = {"resnet18": resnet18, "vgg16": vgg16}[name]()
        path = saved(proto, name)
        model = fv.load(path)
        sess = ort_session(proto, args.threads)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        fns = {"ort forward": lambda: sess.run(None, {"input": x}), "fvgraph forward": lambda: model.run(x)}
        for m in METHODS:
            fns[m] = (lambda m=m: model.explain(x, m))
        med = alternate(fns, args.repeats)
        for k, t in med.items():
            peak = float("nan")
            if name == "vgg16" and k in METHODS:
                peak = peak_rss_mb(f"import numpy as np, fvgraph as fv\nm = fv.load({str(path)!r})\n"
                                   f"m.explain(np.zeros((1, 3, 224, 224), np.float32), {k!r})", args.threads)
            rows.append(dict(model=name, what=k, ms=t * 1e3, vs_ort_forward=t / med["ort forward"], peak_mb=peak))
    print(f"threads={args.threads}, batch 1, medians of alternating blocks; ratio = time / onnxruntime forward")
    print(f"{'model':<9} {'what':<16} {'ms':>8} {'x ort fwd':>10} {'peak MB':>8}")
    for r in rows:
        print(f"{r['model']:<9} {r['what']:<16} {r['ms']:>8.1f} {r['vs_ort_forward']:>10.2f} {r['peak_mb']:>8.0f}")
    write_json(args.json, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
