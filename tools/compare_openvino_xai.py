"""One-off: fvgraph's RISE and ReciproCAM beside OpenVINO XAI 1.1's, timed in one process, same threads.

Not part of the package or the tests; OpenVINO XAI goes in a venv of its own, never the project's:

    python3 -m venv /work/ovxai-venv
    /work/ovxai-venv/bin/pip install openvino-xai==1.1.0 openvino onnx onnxruntime scipy scikit-learn pillow
    /work/ovxai-venv/bin/python tools/compare_openvino_xai.py --repeats 7

(openvino-xai 1.1.0 pins openvino-dev 2024.4.0, so pip resolves openvino 2024.4.0, not the newest; fvgraph is
read from this checkout, put on sys.path.) On the embedded EfficientNet-Lite0 (fvgraph/data/efficientnet_lite0.onnx)
and photo (fvgraph/data/chelsea.png): the photo is preprocessed once by fvgraph
(`fv.load(path).preprocessing().to_input(photo)`, (1, 3, 224, 224)) and the same array goes to both tools
(OpenVINO XAI with its identity preprocess_fn). The ONNX file is read into OpenVINO with Core().read_model.

Threads: 2 intra-op threads everywhere: `fv.load(path, threads=2)`, onnxruntime intra_op_num_threads=2, and
OpenVINO's CPU plugin INFERENCE_NUM_THREADS=2. OpenVINO XAI compiles its models with a bare ov.Core() (no
properties), so this script builds each method with prepare_model=False and compiles the method's model itself
with those properties (method._model_compiled), otherwise OpenVINO would take every core. Also forced:
INFERENCE_PRECISION_HINT=f32 (`--ov-precision default` leaves OpenVINO's choice, bf16 on a CPU with AMX or
AVX512-BF16, which is faster but not the float32 arithmetic fvgraph and onnxruntime do).

Methods, as equal as the two allow:
- RISE: `masks` in {169, 2000} (`--masks`), `cells` x `cells` grid (`--cells`, default 8 = OpenVINO XAI's
  BALANCE preset; fvgraph's own default is 7), p = prob = 0.5, seed 0, the class's softmax probability as the
  score (fvgraph's score="prob"; OpenVINO XAI's postprocess_fn here returns softmax(logits)), the predicted
  class only (target_indices=[class]: without it OpenVINO XAI accumulates all 1000 classes' maps per mask).
  OpenVINO XAI's map is taken unscaled (scale_output=False: its scaling casts to uint8, which adds ties).
  What stays different (OpenVINO XAI 1.1's RISE, methods/black_box/rise.py): it runs one masked copy per
  synchronous inference (batch 1, no batching, no async requests), draws grid, row shift and column shift per
  mask from one default_rng (fvgraph draws all grids, then all shifts: the same seed gives other masks),
  upsamples with cv2 INTER_CUBIC and clips to [0, 1] (fvgraph: bilinear, half-pixel, as the paper), and sums
  score * mask without dividing by masks * p (a constant factor; Spearman and its min-max scaling ignore it).
  fvgraph's RISE is also timed with batch_size=8 (`--fv-batch`) beside its memory cap's choice (64).
- ReciproCAM: the layer each picks itself (both pick the last map, /_swish_1/Clip, 1280 x 7 x 7); fvgraph with
  score="logit" because OpenVINO XAI reads the logits (the model has no Softmax; it would read the Softmax's
  input anyway); the 7 x 7 maps are compared (fvgraph's extras["classes"], OpenVINO XAI's XAI-branch output,
  uint8 0..255, and once more with embed_scaling=False, float), and again at 224 x 224 (OpenVINO XAI's
  upsampled with fvgraph's bilinear kernel). fvgraph's default score="prob" map is compared too (untimed).
  OpenVINO XAI's ReciproCAM refuses the model as exported (its flatten reads the batch from Shape(image), and
  the cloned head it hangs on the mosaic then references an undeclared parameter); the error is kept in the
  JSON and OpenVINO XAI gets the same model with that flatten's shape made the constant [0, -1]
  (flatten_by_zero; its forward is checked equal). fvgraph runs the model as exported.

Timing: one warm-up call, then the median of `--repeats` calls (each in ms; the list is in the JSON), the
unit one plain onnxruntime forward of the same model (2 threads). The RISE noise floor (each tool with seed 0
against itself with seed 1) says how far apart two maps of the same method with other masks already are.
`--all-classes-probe` times OpenVINO XAI's RISE once without target_indices (every class's map), per mask.
Timings on a shared machine are noisy: the load average at the start and the end is in the JSON.
Results: a table on stdout and benchmarks/results/openvino_xai_compare.json (`--out`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # OpenVINO XAI's RISE draws a tqdm bar per call

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ROOT / "fvgraph" / "data" / "efficientnet_lite0.onnx"
PHOTO = ROOT / "fvgraph" / "data" / "chelsea.png"


def timed(fn, repeats):
    """(result of the last call, {first_ms, runs_ms, median_ms, min_ms}): one warm-up, then `repeats` calls."""
    t0 = time.perf_counter()
    out = fn()
    first = (time.perf_counter() - t0) * 1e3
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return out, {"first_ms": round(first, 3), "runs_ms": [round(r, 3) for r in runs],
                 "median_ms": round(statistics.median(runs), 3), "min_ms": round(min(runs), 3)}


def spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0])


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def flatten_by_zero(path) -> bytes:
    """The ONNX model with each Reshape whose shape is Concat(Unsqueeze(Gather(Shape(input))), -1), the
    `x.view(x.size(0), -1)` of a torch export, given the constant shape [0, -1] (0: the batch of its own input)
    instead: the same model for any batch, but one whose head no longer reads the image's shape. OpenVINO XAI's
    ReciproCAM needs that: it reattaches a clone of the head to the mosaic of the layer's copies, and the
    clone's flatten would read the clone's own (undeclared) image parameter."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    g = m.graph
    made = {o: n for n in g.node for o in n.output}
    patched = 0
    for n in g.node:
        if n.op_type != "Reshape":
            continue
        src = made.get(n.input[1])
        if src is None or src.op_type != "Concat":
            continue
        up = [made.get(i) for i in src.input]
        if not any(u is not None and u.op_type == "Unsqueeze" and made.get(u.input[0]) is not None
                   and made[u.input[0]].op_type == "Gather" for u in up):
            continue
        name = n.input[1] + "_zero_batch"
        g.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), name))
        n.input[1] = name
        patched += 1
    if not patched:
        raise SystemExit("no input-shaped flatten found to patch for OpenVINO XAI's ReciproCAM")
    kept = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    while True:  # drop the shape computation left without readers
        dead = [n for n in g.node if not any(o in kept for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        kept = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    onnx.checker.check_model(m)
    return m.SerializeToString()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine")
    ap.add_argument("--masks", default="169,2000", help="RISE mask counts, comma separated")
    ap.add_argument("--cells", type=int, default=8, help="RISE grid (both tools); OpenVINO XAI's default is 8")
    ap.add_argument("--p", type=float, default=0.5, help="RISE keep probability (both tools)")
    ap.add_argument("--ov-precision", choices=("f32", "default"), default="f32",
                    help="OpenVINO's INFERENCE_PRECISION_HINT: f32, or the plugin's default (bf16 on AMX CPUs)")
    ap.add_argument("--fv-batch", type=int, default=8,
                    help="also time fvgraph's RISE at the largest mask count with this batch_size (0: skip)")
    ap.add_argument("--all-classes-probe", type=int, default=10,
                    help="masks for one untimed-style probe of OpenVINO XAI's RISE with every class (0: skip)")
    ap.add_argument("--no-noise-floor", action="store_true", help="skip the seed-1 RISE runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "openvino_xai_compare.json"))
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    mask_counts = [int(m) for m in args.masks.split(",") if m.strip()]

    import onnxruntime as ort
    import openvino as ov
    import openvino_xai
    from openvino_xai.methods.black_box.rise import RISE
    from openvino_xai.methods.white_box.recipro_cam import ReciproCAM

    import fvgraph as fv
    from fvgraph.methods.cam import resize_maps

    load_start = loadavg()
    T = args.threads
    model = fv.load(str(MODEL), threads=T)
    x = np.ascontiguousarray(model.preprocessing().to_input(str(PHOTO)), np.float32)  # (1, 3, 224, 224)

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = T, 1
    sess = ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name

    core = ov.Core()
    ov_model = core.read_model(str(MODEL))
    config = {"INFERENCE_NUM_THREADS": T}
    if args.ov_precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"

    def ov_compile(m):
        return core.compile_model(m, "CPU", config)

    compiled = ov_compile(ov_model)
    ov_props = {}
    for k in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT",
              "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING"):
        try:
            ov_props[k] = str(compiled.get_property(k))
        except Exception:  # noqa: BLE001 - a property this plugin version lacks
            pass

    rows, times, corr, notes = [], {}, {}, {}

    def record(key, label, tool, fn):
        out, t = timed(fn, args.repeats)
        times[key] = {"label": label, "tool": tool, **t}
        print(f"  {label:<38} {t['median_ms']:>10.1f} ms  (first {t['first_ms']:.1f})", flush=True)
        return out

    print(f"threads={T} repeats={args.repeats} loadavg={load_start} ov={ov.__version__} "
          f"ov_precision={ov_props.get('INFERENCE_PRECISION_HINT')}", flush=True)
    # --------------------------------------------------------------- forwards (the unit)
    y_ort = record("ort_forward", "onnxruntime forward", "onnxruntime",
                   lambda: sess.run(None, {in_name: x})[0])
    y_ov = record("ov_forward", "OpenVINO forward", "openvino", lambda: compiled(x)[0])
    y_fv = record("fvgraph_forward", "fvgraph model.run", "fvgraph", lambda: model.run(x))
    cls = int(np.argmax(y_ort))
    notes["forward_max_abs_diff"] = {"openvino_vs_ort": float(np.abs(np.asarray(y_ov) - y_ort).max()),
                                     "fvgraph_vs_ort": float(np.abs(np.asarray(y_fv) - y_ort).max())}
    assert int(np.argmax(y_ov)) == cls == int(np.argmax(y_fv)), "the engines disagree on the class"

    # --------------------------------------------------------------- RISE
    def post(out):  # OpenVINO XAI's postprocess_fn: (1, classes) scores, here the softmax probabilities
        return softmax(np.asarray(out[0])).astype(np.float32)

    t0 = time.perf_counter()
    ov_rise = RISE(ov_model, postprocess_fn=post, prepare_model=False)
    ov_rise._model_compiled = ov_compile(ov_rise._model)  # threads as above (the class compiles with a bare Core)
    times["ov_rise_setup"] = {"label": "OpenVINO XAI RISE setup (compile)", "tool": "openvino_xai",
                              "once_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    rise_maps = {}
    for M in mask_counts:
        def ov_call(seed=0, M=M):
            return ov_rise.generate_saliency_map(x, target_indices=[cls], num_masks=M, num_cells=args.cells,
                                                 prob=args.p, seed=seed, scale_output=False)[cls]

        def fv_call(seed=0, M=M):
            return model.explain(x, "rise", target=cls, masks=M, cells=args.cells, p=args.p, seed=seed,
                                 score="prob").relevance[0]
        a = record(f"fvgraph_rise_{M}", f"fvgraph rise masks={M}", "fvgraph", fv_call)
        b = record(f"ov_rise_{M}", f"OpenVINO XAI RISE masks={M}", "openvino_xai", ov_call)
        rise_maps[M] = (a, b)
        corr[f"rise_{M}"] = {"fvgraph_vs_openvino_xai": spearman(a, b)}
        if not args.no_noise_floor:
            corr[f"rise_{M}"]["fvgraph_seed0_vs_seed1"] = spearman(a, fv_call(seed=1))
            corr[f"rise_{M}"]["openvino_xai_seed0_vs_seed1"] = spearman(b, ov_call(seed=1))
    if args.fv_batch and mask_counts:  # fvgraph's batch size is its memory cap's choice (64 here); a small one too
        M = max(mask_counts)
        a = record(f"fvgraph_rise_{M}_batch{args.fv_batch}", f"fvgraph rise masks={M} batch_size={args.fv_batch}",
                   "fvgraph", lambda: model.explain(x, "rise", target=cls, masks=M, cells=args.cells, p=args.p,
                                                    seed=0, score="prob", batch_size=args.fv_batch).relevance[0])
        corr[f"rise_{M}"]["fvgraph_batch_vs_default_batch"] = spearman(a, rise_maps[M][0])
        notes["fvgraph_rise_default_batch_size"] = int(model.explain(x, "rise", target=cls, masks=M, cells=args.cells,
                                                                     p=args.p).extras["batch_size"])
    if args.all_classes_probe:  # what OpenVINO XAI's RISE costs without target_indices (every class's map)
        t0 = time.perf_counter()
        ov_rise.generate_saliency_map(x, target_indices=None, num_masks=args.all_classes_probe, num_cells=args.cells,
                                      prob=args.p, seed=0, scale_output=False)
        probe = (time.perf_counter() - t0) * 1e3
        notes["ov_rise_all_classes_ms_per_mask"] = round(probe / args.all_classes_probe, 3)
        print(f"  OpenVINO XAI RISE, all classes (no target_indices): {probe / args.all_classes_probe:.1f} ms per "
              f"mask ({args.all_classes_probe} masks)", flush=True)
    if len(mask_counts) > 1:
        lo, hi = min(mask_counts), max(mask_counts)
        corr["rise_masks_lo_vs_hi"] = {"fvgraph": spearman(rise_maps[lo][0], rise_maps[hi][0]),
                                       "openvino_xai": spearman(rise_maps[lo][1], rise_maps[hi][1])}

    # --------------------------------------------------------------- ReciproCAM
    try:  # the model as exported: its flatten reads the batch from the image's shape
        ReciproCAM(ov_model, prepare_model=False).prepare_model(load_model=False)
        notes["reciprocam_on_original"] = "ok"
        rc_model = ov_model
    except Exception as err:  # noqa: BLE001 - OpenVINO XAI's own error, kept for the report
        notes["reciprocam_on_original"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
        print(f"  OpenVINO XAI ReciproCAM on the model as exported fails: {notes['reciprocam_on_original']}\n"
              "  -> given the same model with its flatten's shape [Shape(image)[0], -1] replaced by [0, -1]")
        with tempfile.TemporaryDirectory() as tmp:
            patched = Path(tmp) / "efficientnet_lite0_flatten0.onnx"
            patched.write_bytes(flatten_by_zero(MODEL))
            rc_model = core.read_model(str(patched))
        y_rc = ov_compile(rc_model)(x)[0]
        notes["reciprocam_patched_model_forward_max_abs_diff"] = float(np.abs(np.asarray(y_rc) - y_ov).max())
    t0 = time.perf_counter()
    ov_rc = ReciproCAM(rc_model, prepare_model=False)
    ov_rc.prepare_model(load_model=False)  # inserts the XAI branch (mosaic of 49 copies, batch through the head)
    ov_rc._model_compiled = ov_compile(ov_rc._model)
    times["ov_reciprocam_setup"] = {"label": "OpenVINO XAI ReciproCAM setup (insert + compile)",
                                    "tool": "openvino_xai", "once_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    fv_rc = record("fvgraph_reciprocam", "fvgraph reciprocam (score=logit)", "fvgraph",
                   lambda: model.explain(x, "reciprocam", target=cls, score="logit"))
    ov_map = record("ov_reciprocam", "OpenVINO XAI ReciproCAM", "openvino_xai",
                    lambda: np.asarray(ov_rc.generate_saliency_map(x)))
    ov_small = ov_map[0, cls].astype(np.float32)  # (7, 7), scaled 0..255 in the branch
    fv_small = fv_rc.extras["classes"][0, cls]
    fv_prob = model.explain(x, "reciprocam", target=cls, score="prob").extras["classes"][0, cls]
    raw = ReciproCAM(rc_model, embed_scaling=False, prepare_model=False)  # float maps: no uint8 output
    raw.prepare_model(load_model=False)
    raw._model_compiled = ov_compile(raw._model)
    ov_raw = np.asarray(raw.generate_saliency_map(x), np.float64)[0, cls]  # the class's logit per copy
    ov_raw = (ov_raw - ov_raw.min()) / (ov_raw.max() - ov_raw.min())
    corr["reciprocam"] = {
        "fvgraph_vs_openvino_xai_7x7": spearman(fv_small, ov_small),
        "fvgraph_vs_openvino_xai_224": spearman(fv_rc.relevance[0], resize_maps(ov_small[None], x.shape[2:])[0]),
        "fvgraph_prob_vs_openvino_xai_7x7": spearman(fv_prob, ov_small),
        "fvgraph_vs_openvino_xai_unscaled_7x7": spearman(fv_small, ov_raw),
        "max_abs_diff_7x7_vs_uint8_map": float(np.abs(fv_small - ov_small / 255.0).max()),
        "max_abs_diff_7x7_vs_unscaled_map_minmaxed": float(np.abs(fv_small - ov_raw).max()),
    }
    notes["reciprocam_layer"] = {"fvgraph": fv_rc.extras["layer"],
                                 "openvino_xai": ov_rc._target_layer or "auto (last 4-D op with 1<h<c)"}

    record("ort_forward_end", "onnxruntime forward (again, at the end)", "onnxruntime",
           lambda: sess.run(None, {in_name: x})[0])

    # --------------------------------------------------------------- table
    unit = times["ort_forward"]["median_ms"]
    pairs = {"fvgraph_forward": "ov_forward", "fvgraph_reciprocam": "ov_reciprocam",
             **{f"fvgraph_rise_{M}": f"ov_rise_{M}" for M in mask_counts}}
    print(f"\npredicted class {cls}; unit = one onnxruntime forward = {unit:.2f} ms (median)")
    print(f"{'':<40}{'ms':>10}{'x ORT fwd':>11}{'fvgraph/peer':>14}")
    for key, t in times.items():
        if "median_ms" not in t:
            continue
        t["x_ort_forward"] = round(t["median_ms"] / unit, 3)
        ratio = ""
        if key in pairs:
            t["fvgraph_over_peer"] = round(t["median_ms"] / times[pairs[key]]["median_ms"], 3)
            ratio = f"{t['fvgraph_over_peer']:.3f}"
        rows.append(key)
        print(f"{t['label']:<40}{t['median_ms']:>10.1f}{t['x_ort_forward']:>11.2f}{ratio:>14}")
    for key in ("ov_rise_setup", "ov_reciprocam_setup"):
        print(f"{times[key]['label']:<40}{times[key]['once_ms']:>10.1f}   (once)")
    print("\nSpearman rank correlation, predicted class:")
    for k, v in corr.items():
        print(f"  {k}: " + ", ".join(f"{a}={b:.4f}" for a, b in v.items()))

    load_end = loadavg()
    result = {
        "what": "fvgraph vs OpenVINO XAI: RISE and ReciproCAM on the embedded EfficientNet-Lite0 and chelsea.png",
        "command": "/work/ovxai-venv/bin/python tools/compare_openvino_xai.py " + " ".join(sys.argv[1:]),
        "settings": {"threads": T, "repeats": args.repeats, "masks": mask_counts, "cells": args.cells, "p": args.p,
                     "seed": 0, "rise_score": "prob (softmax) in both", "reciprocam_score": "logit in both",
                     "class": cls, "input_shape": list(x.shape), "ov_config": {k: str(v) for k, v in config.items()},
                     "ov_compiled_properties": ov_props},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
                     "openvino": ov.__version__, "openvino_xai": getattr(openvino_xai, "__version__", "1.1.0"),
                     "fvgraph_commit": git_commit()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": load_end},
        "times": times, "spearman": corr, "notes": notes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nloadavg {load_start} -> {load_end}; wrote {out}")


if __name__ == "__main__":
    main()
