"""Forward-pass speed of fvgraph's own executor (the NumPy engine; `--engine` picks another) against
onnxruntime on ResNet-18- and VGG-16-shaped models (224x224, seeded weights, the real networks' layer shapes),
same thread count, side by side in one run.

    python benchmarks/forward.py [--threads 2] [--repeats 10] [--models resnet18,vgg16] [--json out.json]

Prints a table of medians and ratios and writes JSON. Also reports GFLOP/s against this machine's measured
float32 matrix-product rate (the physical floor for both runtimes) and fvgraph's peak memory. The default
engine, onnxruntime itself, is timed as "run" by explain.py.
"""
from __future__ import annotations

from common import arguments, ort_session, peak_rss_mb, saved, timings, write_json


def conv_flops(model, x):
    """Multiply-adds x 2 of every Conv and Gemm, from the shapes seen in one run."""
    import numpy as np
    flops = 0
    tape = model.forward(x, [model.outputs[0].name], keep=True)
    for i in tape.nodes:
        n = model.graph.nodes[i]
        if n.op_type == "Conv":
            w = model.graph.initializers[n.inputs[1]]
            y = tape.values[n.outputs[0]]
            flops += 2 * y.size * int(np.prod(w.shape[1:]))
        elif n.op_type == "Gemm":
            w = model.graph.initializers[n.inputs[1]]
            flops += 2 * tape.values[n.outputs[0]].shape[0] * w.size
    return flops


def matmul_rate(repeats=5):
    import numpy as np
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    t = float(np.median(timings(lambda: a @ a, repeats, warmup=1)))
    return 2 * 2048 ** 3 / t / 1e9


def main():
    args = arguments(__doc__, "forward", repeats=10, batches="1,8", models="resnet18,vgg16", engine="numpy")

    import numpy as np

    import fvgraph as fv
    from tests.zoo import resnet18, vgg16

    builders = {"resnet18": resnet18, "vgg16": vgg16}
    floor = matmul_rate()
    rows = []
    for name in args.models.split(","):
        proto = builders[name]()
        path = saved(proto, name)
        model = fv.load(path, engine=args.engine, threads=args.threads)
        sess = ort_session(proto, args.threads)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            ref = sess.run(None, {"input": x})[0]
            err = float(np.linalg.norm(model.run(x) - ref) / np.linalg.norm(ref))
            reps = args.repeats if batch == 1 else max(3, args.repeats // 3)
            t_ort, t_fv = [], []
            for block in range(3):  # alternate blocks, so drift hits both alike and neither's idle threads
                t_ort += timings(lambda: sess.run(None, {"input": x}), reps)  # spin during the other's turn
                t_fv += timings(lambda: model.run(x), reps)
            to, tf = float(np.median(t_ort)), float(np.median(t_fv))
            ratios = tf / to
            flops = conv_flops(model, x)
            peak = peak_rss_mb(f"import numpy as np, fvgraph as fv\nm = fv.load({str(path)!r}, engine={args.engine!r})\n"
                               f"m.run(np.zeros(({batch}, 3, 224, 224), np.float32))", args.threads) \
                if batch == 1 else float("nan")
            rows.append(dict(model=name, batch=batch, ort_ms=to * 1e3, fvgraph_ms=tf * 1e3, ratio=ratios,
                             gflops_fvgraph=flops / tf / 1e9, gflops_ort=flops / to / 1e9, matmul_floor_gflops=floor,
                             rel_err_vs_ort=err, peak_rss_mb=peak))
    hdr = f"{'model':<9} {'batch':>5} {'ort ms':>8} {'fvgraph ms':>10} {'ratio':>6} {'fv GF/s':>8} {'ort GF/s':>8} " \
          f"{'floor GF/s':>10} {'peak MB':>8} {'rel err':>8}"
    print(f"threads={args.threads}, medians of interleaved runs; ratio = fvgraph median / ort median")
    print(hdr)
    for r in rows:
        print(f"{r['model']:<9} {r['batch']:>5} {r['ort_ms']:>8.1f} {r['fvgraph_ms']:>10.1f} {r['ratio']:>6.2f} "
              f"{r['gflops_fvgraph']:>8.0f} {r['gflops_ort']:>8.0f} {r['matmul_floor_gflops']:>10.0f} "
              f"{r['peak_rss_mb']:>8.0f} {r['rel_err_vs_ort']:>8.1e}")
    write_json(args.json, {"threads": args.threads, "matmul_floor_gflops": floor, "rows": rows})


if __name__ == "__main__":
    main()
