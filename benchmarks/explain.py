"""Explanation speed on the default engine (onnxruntime running the lowered graphs): `run` and every method
against one plain onnxruntime forward of the same model, side by side in one run, same threads, batch 1.

    python benchmarks/explain.py [--threads 2] [--repeats 5] [--models resnet18,vgg16,efficientnet,yolo]
                                 [--engine onnxruntime] [--methods gradient,guided,...] [--profile 12]
                                 [--json benchmarks/results/explain.json]

Models: ResNet-18- and VGG-16-shaped (224x224, the real layer shapes, seeded weights), the embedded
EfficientNet-Lite0 (depthwise convolutions, ReLU6), and a YOLOv8n-shaped detector at 320x320 (Conv + Sigmoid +
Mul blocks; its gradient is seeded at one class score of one anchor). Also the peak memory (VmHWM) of a fresh
process that loads VGG-16 and explains one image with guided backpropagation, and the time the first call
takes (lowering plus session creation), which later calls do not pay.

--profile N (onnxruntime engine) also runs each method's lowered graph and the plain forward under
onnxruntime's profiler and prints the kernel time per op type (reverse pass against the forward) and the N
slowest nodes of the reverse pass with their input shapes: where a lowering's cost is. The machine is
shared: compare kernel-time shares within one graph, and same-run ratios, not absolute times across runs.
"""
from __future__ import annotations

import time
from pathlib import Path

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


def kernel_times(proto, feeds, threads, runs=10):
    """{(node name, op type): mean kernel ms} and {node name: input shapes} from onnxruntime's profiler."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.add_session_config_entry("session.disable_prepacking", "1")  # as fvgraph's engine
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    for _ in range(3 + runs):
        sess.run(None, feeds)
    per, shapes = collections.defaultdict(float), {}
    for e in json.loads(Path(sess.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][:-len("_kernel_time")], e["args"]["op_name"])
            per[key] += e["dur"] / 1e3 / (3 + runs)
            shapes[key[0]] = [list(d.values())[0] for d in e["args"].get("input_type_shape", [])][:2]
    return per, shapes


def profiled(model, proto, feeds, todo, threads, top):
    """Kernel time per op type of each method's lowered graph against the forward's, and its slowest nodes."""
    import collections

    import numpy as np

    from fvgraph.onnx_export import to_onnx
    fwd, _ = kernel_times(proto, feeds, threads)
    total_f = sum(fwd.values())
    for m, kw in todo.items():
        model.explain(feeds[next(iter(feeds))], m, **kw)
        low = next(reversed(model._lowered.values()))  # the graph this call used (cache=False: in memory)
        g = low.graph
        if not getattr(g, "nodes", None):
            print(f"  {m}: the lowered graph came from the disk cache; profile with the cache off")
            continue
        types = {o: (None, g.value_info[o].dtype) for o in low.outputs if o in g.value_info}
        rev_proto, _ = to_onnx(g, low.outputs, types=types, embed=True)
        run_feeds = dict(feeds, target=np.array([-1] * next(iter(feeds.values())).shape[0], np.int64), **kw_seed(kw))
        for k, (name, dtype) in low.params.items():
            run_feeds[k] = np.asarray({"epsilon": 1e-6, "alpha": 2.0, "beta": 1.0}.get(name, 0.0), dtype)
        rev, shapes = kernel_times(rev_proto, run_feeds, threads)
        total_r = sum(rev.values())
        by_op, count = collections.defaultdict(float), collections.Counter()
        for (_, op), t in rev.items():
            by_op[op] += t
            count[op] += 1
        print(f"  profile {m}: kernel time {total_r:.1f} ms = {total_r / total_f:.2f}x the forward's {total_f:.1f} ms")
        ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
        print("    " + ", ".join(f"{op} {t:.1f} ms/{count[op]}" for op, t in ranked if t >= 0.01 * total_r))
        for (name, op), t in sorted(rev.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {t:7.2f} ms  {op:<16} {name[:40]:<40} {shapes.get(name)}")


def kw_seed(kw):
    """The seed input of an array target (the detector's one anchor score)."""
    return {"seed": kw["target"]} if "target" in kw and not isinstance(kw["target"], (int, type(None))) else {}


def main():
    args = arguments(__doc__, "explain", repeats=5, models="resnet18,vgg16,efficientnet,yolo", engine="onnxruntime",
                     methods=",".join(METHODS), profile=0)
    import numpy as np

    import fvgraph as fv

    rows = []
    for name, path, proto, shape in models(args.models.split(",")):
        model = fv.load(path, engine=args.engine, threads=args.threads, cache=not args.profile)
        sess = ort_session(proto, args.threads)
        inp = proto.graph.input[0].name
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        fns = {"ort forward": lambda: sess.run(None, {inp: x}), "run": lambda: model.run(x)}
        if name == "yolo":  # a detector: one class score of one anchor
            seed = np.zeros_like(model.run(x))
            seed[0, 4 + 5, 1234] = 1
            todo = {"gradient": dict(target=seed)}
        else:
            todo = {m: {} for m in args.methods.split(",")}
        first = {}
        for m, kw in todo.items():
            start = time.perf_counter()
            model.explain(x, m, **kw)
            first[m] = time.perf_counter() - start
            fns[m] = (lambda m=m, kw=kw: model.explain(x, m, **kw))
        if args.profile:
            profiled(model, proto, {inp: x}, todo, args.threads, args.profile)
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
