"""The command line as a user meets it: process start to PNG, cold (an empty cache) and warm (what the first run
kept), against onnxruntime's own session plus one forward in a fresh process, on the ResNet-18-shaped model.
Medians of alternating runs; peak resident memory of each (from the OS).

    python benchmarks/cli.py [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, arguments, write_json

PHOTO = ROOT / "fvgraph" / "data" / "chelsea.png"
BASELINE = ("import numpy as np, onnxruntime as ort, sys\n"
            "so = ort.SessionOptions(); so.intra_op_num_threads = {threads}\n"
            "s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n"
            "s.run(None, {{s.get_inputs()[0].name: np.zeros((1, 3, 224, 224), np.float32)}})\n")


PEAK = ("import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); t = time.perf_counter() - t\n"
        "print(t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n")


def timed(cmd, env):
    """(seconds, peak resident MB) of one process (measured by a parent of its own, which reports its child's
    peak)."""
    r = subprocess.run([sys.executable, "-c", PEAK] + [str(c) for c in cmd], env=env, capture_output=True, text=True)
    took, peak, rc = r.stdout.strip().splitlines()[-1].split()
    if int(rc):
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {r.stderr[-500:]}")
    return float(took), int(peak) / 1024


def main():
    args = arguments(__doc__, "cli", repeats=5)
    import numpy as np
    import onnx

    from tests.zoo import resnet18
    work = Path(tempfile.mkdtemp())
    model = work / "resnet18.onnx"
    onnx.save(resnet18(), str(model))
    # bytecode as an installed package has it (pip compiles at install; an editable checkout under
    # PYTHONDONTWRITEBYTECODE would compile every module at every start, which no user's install does)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "fvgraph")], env=env, check=False)
    fv = [sys.executable, "-m", "fvgraph", "--threads", str(args.threads)]
    jobs = {
        "onnxruntime session + forward": lambda e: [sys.executable, "-c", BASELINE.format(threads=args.threads),
                                                    str(model)],
        "explain guided": lambda e: fv + ["explain", str(model), str(PHOTO), "-m", "guided", "-o", str(work / "o"),
                                          "-q", "--overwrite"],
        "explain lrp-alphabeta": lambda e: fv + ["explain", str(model), str(PHOTO), "-m", "lrp-alphabeta", "-o",
                                                 str(work / "o"), "-q", "--overwrite"],
        "occlude 32/16": lambda e: fv + ["occlude", str(model), str(PHOTO), "--box", "32x32", "--stride", "16x16",
                                         "-o", str(work / "occ"), "-q", "--overwrite"],
        "reconstruct 8 steps": lambda e: fv + ["reconstruct", str(model), "--target", "1", "--steps", "8", "-o",
                                               str(work / "rec"), "-q", "--overwrite"],
    }
    rows = []
    for name, cmd in jobs.items():
        cold, warm, peak = [], [], 0.0
        for k in range(args.repeats):
            cache = work / f"cache-{name.replace(' ', '_')}-{k}"
            e = {**env, "FVGRAPH_CACHE": str(cache)}
            t, p = timed(cmd(e), e)
            cold.append(t)
            t, p2 = timed(cmd(e), e)  # the same cache: what the first run kept
            warm.append(t)
            peak = max(peak, p, p2)
        rows.append(dict(what=name, cold_s=float(np.median(cold)), warm_s=float(np.median(warm)), peak_mb=peak))
    base = rows[0]["warm_s"]
    print(f"ResNet-18-shaped, 224x224, threads={args.threads}, medians of {args.repeats}; process start to PNG")
    print(f"{'':<34} {'cold s':>8} {'warm s':>8} {'warm / ort':>11}")
    for r in rows:
        r["warm_vs_ort"] = r["warm_s"] / base
        print(f"{r['what']:<34} {r['cold_s']:>8.2f} {r['warm_s']:>8.2f} {r['warm_vs_ort']:>10.2f}x")
    write_json(args.json, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
