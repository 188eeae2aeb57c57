"""Reconstruction speed: one optimization step (forward + reverse + update) on the ResNet-18-shaped model
against one onnxruntime forward in the same run; and batched units (16 channels of a layer in one batch)
against one unit at a time, as throughput per unit.

    python benchmarks/reconstruct.py [--threads 2] [--steps 5]
"""
from __future__ import annotations

import time

from common import alternate, arguments, ort_session, write_json


def main():
    args = arguments(__doc__, "reconstruct", steps=5)
    import numpy as np

    import fvgraph as fv
    from tests.zoo import resnet18

    proto = resnet18()
    model = fv.load(proto)
    sess = ort_session(proto, args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    layer = [l for l in model.layers if l.op_type == "Relu"][8].name
    q = dict(quiet=True, steps=args.steps)
    med = alternate({"ort forward": lambda: sess.run(None, {"input": x}),
                     "class step": lambda: model.reconstruct(3, **q),
                     "unit step": lambda: model.reconstruct(fv.Unit(layer, channel=0), **q)}, 1, blocks=3)
    per_step = {k: (v / args.steps if k != "ort forward" else v) for k, v in med.items()}
    start = time.perf_counter()
    model.reconstruct([fv.Unit(layer, channel=c) for c in range(16)], **q)
    batched = (time.perf_counter() - start) / args.steps / 16
    rows = [dict(what=k, ms=v * 1e3, vs_ort_forward=v / per_step["ort forward"]) for k, v in per_step.items()]
    rows.append(dict(what="unit step, 16 units batched (per unit)", ms=batched * 1e3,
                     vs_ort_forward=batched / per_step["ort forward"]))
    print(f"ResNet-18-shaped, 224x224, threads={args.threads}; a step = forward + reverse + update")
    for r in rows:
        print(f"{r['what']:<40} {r['ms']:>9.1f} ms {r['vs_ort_forward']:>7.2f}x ort forward")
    print(f"batched units: {per_step['unit step'] / batched:.2f}x the throughput of one unit at a time")
    write_json(args.json, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
