"""Seeded mutations of small models through the command line (`fvgraph info M` and `fvgraph explain M img -m
gradient`), each case in a child process with a timeout: a negative exit status is a crash, 'Traceback' in the
output a traceback, the timeout a hang. Prints a summary and the first lines of each failure; exit 1 if any.

    python tools/fuzz_cli.py -n 1100 [--jobs 2] [--timeout 60] [--exec] [--kinds all|new|old] [--seed 0]

By default each child is forked from this process with fvgraph already imported (and runs `fvgraph.cli.main`
as `python -m fvgraph` would), which is ten times faster than a fresh interpreter; --exec runs
`python -m fvgraph ...` itself (the same checks, slower).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def base_models():
    """Small nets, one PaddleOCR-style classifier (dims -1, labels in `character`) and one ultralytics-style
    net (imgsz and names), so that metadata mutations meet the code that reads them."""
    from onnx import TensorProto, helper

    from tests import zoo
    nets = [zoo.vgg_like(size=16), zoo.resnet_like(size=16), zoo.mobilenet_like(size=16),
            zoo.inception_like(size=16), zoo.se_block(), zoo.misc_ops(size=20)]
    paddle = zoo.mobilenet_like(size=16, classes=2)
    paddle.graph.input[0].CopyFrom(helper.make_tensor_value_info(paddle.graph.input[0].name, TensorProto.FLOAT,
                                                                 [-1, 3, 48, -1]))
    paddle.metadata_props.add(key="character", value="0\n180")
    ultra = zoo.vgg_like(size=16, classes=3)
    ultra.metadata_props.add(key="imgsz", value="[16, 16]")
    ultra.metadata_props.add(key="names", value="{0: 'cat', 1: 'dog', 2: 'cow'}")
    return nets + [paddle, ultra]


def run_case(argv_sets, log_path, timeout, use_exec):
    """(status, seconds): status is 'crash', 'hang', 'traceback', or the exit codes joined by ','."""
    t0 = time.time()
    with open(log_path, "wb") as log:
        if use_exec:
            import subprocess
            codes = []
            for argv in argv_sets:
                try:
                    r = subprocess.run([sys.executable, "-m", "fvgraph"] + argv, stdout=log, stderr=log,
                                       timeout=timeout)
                except subprocess.TimeoutExpired:
                    return "hang", time.time() - t0
                if r.returncode < 0:
                    return "crash", time.time() - t0
                codes.append(r.returncode)
            status = ",".join(map(str, codes))
        else:
            pid = os.fork()
            if pid == 0:  # the child: run the commands as `python -m fvgraph` would, report uncaught errors
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                codes = []
                try:
                    from fvgraph.cli import main
                    for argv in argv_sets:
                        codes.append(main(argv))
                        sys.stdout.flush()
                    os.write(1, f"\n@@codes {','.join(map(str, codes))}\n".encode())
                    os._exit(0)
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                    os._exit(1)
            deadline = t0 + timeout * len(argv_sets)
            while True:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.time() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return "hang", time.time() - t0
                time.sleep(0.02)
            if os.WIFSIGNALED(st):
                return "crash", time.time() - t0
            status = None
    text = Path(log_path).read_text(errors="replace")
    if "Traceback" in text:
        return "traceback", time.time() - t0
    if status is None:
        tail = [ln for ln in text.splitlines() if ln.startswith("@@codes ")]
        status = tail[-1].split()[1] if tail else "?"
    return status, time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1100)
    ap.add_argument("--seed", type=int, default=0, help="first case's seed (case k uses seed + k)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    ap.add_argument("--exec", action="store_true", help="a fresh `python -m fvgraph` per command")
    ap.add_argument("--kinds", choices=["all", "new", "old"], default="all")
    ap.add_argument("--keep", help="folder to copy the failing models into")
    args = ap.parse_args(argv)

    from tests import mutations
    kinds = {"all": mutations.ALL_MUTATIONS, "new": mutations.NEW_KINDS, "old": mutations.MUTATIONS}[args.kinds]
    from fvgraph.image import demo_images
    image = str(demo_images()[0])
    if not args.exec:  # import in the parent once; the forked children share it
        import fvgraph.cli  # noqa: F401
        import fvgraph.model  # noqa: F401
        import onnxruntime  # noqa: F401
    nets = base_models()
    work = Path(tempfile.mkdtemp(prefix="fvgraph-fuzz-"))
    os.environ["FVGRAPH_CACHE"] = str(work / "cache")
    counts, failures, running = {}, [], {}
    t_start = time.time()

    def launch(k):
        rng = np.random.default_rng(args.seed + k)
        data = mutations.mutate(nets[k % len(nets)], rng, kinds)
        case = work / f"c{k}"
        case.mkdir()
        model = case / "m.onnx"
        model.write_bytes(data)
        argv_sets = [["info", str(model)],
                     ["explain", str(model), image, "-m", "gradient", "-o", str(case / "out"), "-q"]]
        return run_case(argv_sets, case / "log.txt", args.timeout, args.exec), case

    # at most `jobs` children at once: each case is launched from a thread that waits on its child
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(launch, k): k for k in range(args.n)}
        for fut in futures:
            k = futures[fut]
            (status, secs), case = fut.result()
            if status in ("crash", "hang", "traceback"):
                kind = status
                text = (case / "log.txt").read_text(errors="replace")
                failures.append((k, kind, text))
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    (Path(args.keep) / f"c{k}.onnx").write_bytes((case / "m.onnx").read_bytes())
            else:
                codes = status.split(",")
                kind = "valid" if all(c == "0" for c in codes) else "clean error"
            counts[kind] = counts.get(kind, 0) + 1
            import shutil
            shutil.rmtree(case, ignore_errors=True)
    elapsed = time.time() - t_start
    for k, kind, text in failures:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        print(f"--- case {k} ({kind}): " + " | ".join(lines[-3:])[:600])
    print(f"cases {args.n} in {elapsed:.0f}s ({args.n / elapsed:.1f}/s): " +
          ", ".join(f"{c} {k}" for k, c in sorted(counts.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
