"""Forward-pass speed: fvgraph against onnxruntime on ResNet-18- and VGG-16-shaped models (224x224, seeded
weights, the real networks' layer shapes), same thread count, side by side in one run.

    python benchmarks/forward.py [--threads 2] [--repeats 10] [--models resnet18,vgg16] [--json out.json]

Prints a table of medians and ratios and writes JSON. Also reports GFLOP/s against this machine's measured
float32 matrix-product rate (the physical floor for both runtimes) and fvgraph's peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def set_threads(n):
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(n)


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


def median_time(fn, repeats, warmup=2):
    import numpy as np
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def timings(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_rate(repeats=5):
    import numpy as np
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    t = median_time(lambda: a @ a, repeats, warmup=1)
    return 2 * 2048 ** 3 / t / 1e9


def peak_memory_mb(path, batch, threads):
    """Peak resident memory of a fresh process that loads the model file and runs one forward (fvgraph);
    also the resident memory right after loading."""
    import subprocess
    code = f"""
import resource, sys, numpy as np
sys.path.insert(0, {str(ROOT)!r})
import fvgraph as fv
m = fv.load({str(path)!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m.run(np.zeros(({batch}, 3, 224, 224), np.float32))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base / 1024)
"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default="resnet18,vgg16")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "forward.json"))
    args = ap.parse_args()
    set_threads(args.threads)

    import numpy as np
    import onnx
    import onnxruntime as ort

    import fvgraph as fv
    from tests.zoo import resnet18, vgg16

    builders = {"resnet18": resnet18, "vgg16": vgg16}
    floor = matmul_rate()
    rows = []
    for name in args.models.split(","):
        proto = builders[name]()
        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        onnx.save(proto, path)
        model = fv.load(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
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
            peak, base = peak_memory_mb(path, batch, args.threads) if batch == 1 else (float("nan"), float("nan"))
            rows.append(dict(model=name, batch=batch, ort_ms=to * 1e3, fvgraph_ms=tf * 1e3, ratio=ratios,
                             gflops_fvgraph=flops / tf / 1e9, gflops_ort=flops / to / 1e9, matmul_floor_gflops=floor,
                             rel_err_vs_ort=err, peak_rss_mb=peak, rss_after_load_mb=base))
    hdr = f"{'model':<9} {'batch':>5} {'ort ms':>8} {'fvgraph ms':>10} {'ratio':>6} {'fv GF/s':>8} {'ort GF/s':>8} " \
          f"{'floor GF/s':>10} {'peak MB':>8} {'rel err':>8}"
    print(f"threads={args.threads}, medians of interleaved runs; ratio = fvgraph median / ort median")
    print(hdr)
    for r in rows:
        print(f"{r['model']:<9} {r['batch']:>5} {r['ort_ms']:>8.1f} {r['fvgraph_ms']:>10.1f} {r['ratio']:>6.2f} "
              f"{r['gflops_fvgraph']:>8.0f} {r['gflops_ort']:>8.0f} {r['matmul_floor_gflops']:>10.0f} "
              f"{r['peak_rss_mb']:>8.0f} {r['rel_err_vs_ort']:>8.1e}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
