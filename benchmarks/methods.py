"""The methods users compare with and the faithfulness metrics, against one plain onnxruntime forward of the
same model, side by side in one run (ResNet-18-shaped, 224x224, batch 1, same threads):
integrated gradients (32 steps), SmoothGrad (16 samples), Grad-CAM++, Score-CAM, and deletion / insertion
with 16 steps per image.

    python benchmarks/methods.py [--threads 2] [--repeats 3] [--json benchmarks/results/methods.json]
"""
from __future__ import annotations

from common import alternate, arguments, ort_session, saved, write_json

TARGETS = {"integrated-gradients (32 steps)": 40.0, "deletion (16 steps)": 4.0}


def main():
    args = arguments(__doc__, "methods", repeats=3)
    import numpy as np

    import fvgraph as fv
    from tests.zoo import resnet18

    proto = resnet18()
    model = fv.load(saved(proto, "resnet18"), threads=args.threads)
    sess = ort_session(proto, args.threads)
    x = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
    rel = model.explain(x, "gradient").relevance
    fns = {"ort forward": lambda: sess.run(None, {"input": x}),
           "integrated-gradients (32 steps)": lambda: model.explain(x, "integrated-gradients", steps=32),
           "smoothgrad (16 samples)": lambda: model.explain(x, "smoothgrad", samples=16),
           "gradcam++": lambda: model.explain(x, "gradcam++"),
           "scorecam": lambda: model.explain(x, "scorecam"),
           "deletion (16 steps)": lambda: model.evaluate(x, rel, "deletion", steps=16),
           "insertion (16 steps)": lambda: model.evaluate(x, rel, "insertion", steps=16)}
    for fn in fns.values():
        fn()
    med = alternate(fns, args.repeats, blocks=2)
    rows = [dict(what=k, ms=t * 1e3, vs_ort_forward=t / med["ort forward"], target=TARGETS.get(k)) for k, t in med.items()]
    print(f"ResNet-18, threads={args.threads}, batch 1, medians; ratio = time / one onnxruntime forward")
    print(f"{'what':<34} {'ms':>9} {'x ort fwd':>10} {'target':>7}")
    for r in rows:
        print(f"{r['what']:<34} {r['ms']:>9.1f} {r['vs_ort_forward']:>10.2f} {r['target'] or '':>7}")
    write_json(args.json, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
