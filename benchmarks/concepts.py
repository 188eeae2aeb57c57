"""What k concept-conditional maps cost against one unconditional map (concept relevance propagation,
fvgraph.methods.concepts): k = 1, 4, 16 concepts of one image as one batch through one lowered graph, on
tests/zoo.py's resnet-like net, LRP-epsilon and the gradient, medians over alternating blocks.

    python benchmarks/concepts.py [--threads 2] [--repeats 5] [--size 64] [--json benchmarks/results/concepts.json]

The conditioning layer is the second stage's input (a cut of the graph: every path passes it); each concept is
one channel. `ratio` is the time of k maps over the time of one unconditional map (a batch of k costs about k
passes of compute, but one lowering, one session and one call).
"""
from __future__ import annotations

from common import alternate, arguments, write_json


def main():
    args = arguments(__doc__, "concepts", repeats=5, size=64, ks="1,4,16")
    import numpy as np

    import fvgraph as fv
    from tests.zoo import resnet_like
    model = fv.load(resnet_like(size=args.size), threads=args.threads)
    x = np.random.default_rng(0).random((1, 3, args.size, args.size)).astype(np.float32)
    layer = next(l.output for l in model.layers if l.op_type == "MaxPool")
    channels = model.run(x, outputs=[layer])[layer].shape[1]
    rows = []
    for method in ("lrp-epsilon", "gradient"):
        fns = {"unconditional": lambda m=method: model.explain(x, m, target=3)}
        for k in (int(v) for v in args.ks.split(",")):
            concepts = [fv.Concept(layer, [j % channels]) for j in range(k)]
            fns[f"k={k}"] = lambda m=method, c=concepts: model.explain(x, m, target=3, concept=c)
        medians = alternate(fns, args.repeats)
        base = medians["unconditional"]
        for name, t in medians.items():
            rows.append({"method": method, "maps": name, "median_ms": round(t * 1e3, 3),
                         "ratio": round(t / base, 2), "per_map_ms": round(t * 1e3 / int(name[2:]), 3)
                         if name.startswith("k=") else round(t * 1e3, 3)})
            print(f"{method:12s} {name:14s} {t * 1e3:8.2f} ms  x{t / base:5.2f}")
    write_json(args.json, {"model": f"resnet_like({args.size}x{args.size})", "layer": layer,
                           "threads": args.threads, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
