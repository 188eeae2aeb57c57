"""Shared by the benchmarks: thread settings, timing, onnxruntime sessions, peak memory, the table."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arguments(doc: str, name: str, **options) -> argparse.Namespace:
    """The command line every benchmark shares (--threads, --json benchmarks/results/<name>.json) plus its
    own options given as flag=default (the default's type parses the value); the thread count is applied
    before NumPy is imported."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    for flag, default in options.items():
        ap.add_argument("--" + flag, type=str if default is None else type(default), default=default)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    return args


def set_threads(n: int):
    """Before numpy is imported: the same thread count for NumPy's BLAS and onnxruntime."""
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(n)


def timings(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def alternate(fns: dict, repeats: int, blocks: int = 3) -> dict:
    """Medians of each function, timed in alternating blocks so drift hits all alike."""
    import numpy as np
    times = {k: [] for k in fns}
    for _ in range(blocks):
        for k, fn in fns.items():
            times[k] += timings(fn, repeats)
    return {k: float(np.median(v)) for k, v in times.items()}


def ort_session(proto, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def saved(proto, name) -> Path:
    import onnx
    path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    onnx.save(proto, path)
    return path


def peak_rss_mb(code: str, threads: int) -> float:
    """Peak resident memory (MB) of a fresh Python process running `code`: VmHWM, which (unlike ru_maxrss)
    starts afresh at exec and so does not count the parent benchmark's own memory."""
    prog = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}\n" \
           "print([int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return float(r.stdout.split()[-1])


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
