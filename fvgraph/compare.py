"""Numeric comparison of explanations, for CI: record reference explanations, recompute and compare them,
compare two models, and find the first layer where fvgraph and onnxruntime diverge.

Metrics per method (over all images): max absolute error, relative L2 error ||a - b|| / ||b||, Pearson
correlation, and top-k overlap: the share of the k most relevant pixels (by |relevance| summed over channels,
k = 1% of the pixels) that both maps agree on. A method agrees when max_abs <= atol + rtol * max|b|.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from . import __version__
from .errors import InputError, refuse_overwrite
from .engines import host_array
from .files import sha256_file
from .methods.registry import run_spec

SCHEMA = "fvgraph.check/1"


@dataclass
class Comparison:
    name: str
    max_abs: float
    rel_l2: float
    correlation: float
    topk_overlap: float
    ok: bool
    tolerance: float


def metrics(name, got, ref, rtol=1e-4, atol=1e-6, topk=0.01) -> Comparison:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return Comparison(name, float("inf"), float("inf"), float("nan"), 0.0, False, 0.0)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(got - ref) / norm) if norm > 0 else (0.0 if max_abs == 0 else float("inf"))
    a, b = got.reshape(-1), ref.reshape(-1)
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else \
        (1.0 if np.array_equal(a, b) else 0.0)
    overlap = topk_overlap(got, ref, topk)
    tol = atol + rtol * float(np.abs(ref).max() if ref.size else 0.0)
    return Comparison(name, max_abs, rel, corr, overlap, bool(max_abs <= tol and np.isfinite(max_abs)), tol)


def topk_overlap(got, ref, fraction=0.01) -> float:
    """Share of the top-k pixels (per image) that both maps select; maps of (N, C, H, W) are summed over C."""
    def pixels(a):
        a = np.abs(np.asarray(a, np.float64))
        if a.ndim == 4:
            a = a.sum(axis=1)
        return a.reshape(len(a), -1) if a.ndim >= 2 else a.reshape(1, -1)
    g, r = pixels(got), pixels(ref)
    k = max(1, int(round(fraction * g.shape[1])))
    scores = []
    for gi, ri in zip(g, r):
        a, b = set(np.argpartition(-gi, k - 1)[:k]), set(np.argpartition(-ri, k - 1)[:k])
        scores.append(len(a & b) / k)
    return float(np.mean(scores))


# --------------------------------------------------------------------------- record / compare
def _target_record(target, arrays) -> dict | None:
    """How a target is stored in a reference: a class (ints), or an OutputTarget (index, output; the mask as
    an array in the file)."""
    from .explanation import OutputTarget
    if target is None:
        return None
    if isinstance(target, OutputTarget):
        if target.mask is not None:
            arrays["target/mask"] = np.asarray(target.mask, np.float32)
        return {"kind": "output", "output": target.output,
                "index": None if target.index is None else [int(i) for i in np.asarray(target.index).reshape(-1)]}
    return {"kind": "class", "value": np.asarray(target).tolist()}


def _target_from(record, data):
    from .explanation import OutputTarget
    if not record:
        return None
    if record["kind"] == "output":
        return OutputTarget(index=record["index"], output=record["output"], mask=data.get("target/mask"))
    return record["value"]


def record(model, model_path, images, methods, out, overwrite=False, target=None):
    from .image import load_image
    out = Path(out)
    refuse_overwrite(out, overwrite)
    spec = model.preprocessing()
    x = np.concatenate([load_image(p, spec) for p in images])
    arrays = {"input": x, "output": model.run(x)}
    for m in methods:
        arrays[f"method/{m}"] = run_spec(model, x, m, target).relevance
    meta = {"schema": SCHEMA, "fvgraph": __version__, "model_sha256": sha256_file(model_path),
            "model": str(model_path), "images": [str(p) for p in images], "methods": list(methods),
            "preprocess": spec, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "target": _target_record(target, arrays)}
    out.parent.mkdir(parents=True, exist_ok=True)
    from .files import write_atomic

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, __meta__=np.array(json.dumps(meta)), **arrays)
    write_atomic(out, save)  # a reference is whole or absent, never half written
    return meta


def load_reference(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("__meta__")))
    except Exception as e:
        raise InputError(f"{path}: not an fvgraph reference file ({type(e).__name__}: {e})") from None
    if meta.get("schema") != SCHEMA:
        raise InputError(f"{path}: unknown reference schema {meta.get('schema')!r}")
    return meta, data


def compare(model, model_path, ref_path, rtol=1e-4, atol=1e-6):
    """Recompute what a reference file holds (same inputs, methods, parameters) and compare."""
    meta, data = load_reference(ref_path)
    x = data["input"]
    target = _target_from(meta.get("target"), data)
    rows = [metrics("output", model.run(x), data["output"], rtol, atol)]
    for m in meta["methods"]:
        rows.append(metrics(m, run_spec(model, x, m, target).relevance,
                            data[f"method/{m}"], rtol, atol))
    info = {"reference": str(ref_path), "model": str(model_path), "model_sha256": sha256_file(model_path),
            "reference_model_sha256": meta["model_sha256"], "fvgraph": __version__,
            "reference_fvgraph": meta["fvgraph"]}
    return rows, info


def diff(model_a, model_b, images, methods, rtol=1e-4, atol=1e-6):
    """The same images and methods on two models (an original and its converted or quantized copy)."""
    from .image import load_image
    spec = model_a.preprocessing()
    x = np.concatenate([load_image(p, spec) for p in images])
    rows = [metrics("output", model_b.run(x), model_a.run(x), rtol, atol)]
    for m in methods:
        rows.append(metrics(m, run_spec(model_b, x, m).relevance, run_spec(model_a, x, m).relevance, rtol, atol))
    return rows


def parity_report(model, model_path, image=None, rtol=1e-4) -> tuple[str, str | None]:
    """`check parity`: (the table of every layer's error against onnxruntime, the first divergence or None),
    on the image or, without one, seeded noise of the model's input shape."""
    import onnx

    from .image import load_image
    from .summary import source
    proto = onnx.load(model_path) if not str(model_path).endswith(".mat") else source(model_path)
    if image:
        x = load_image(image, model.preprocessing())
    else:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.inputs[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rows, first = parity(model, proto, x, rtol)
    lines = [f"{'layer':<40} {'op':<20} {'rel L2 vs onnxruntime':>22}"]
    lines += [f"{name[:40]:<40} {op:<20} {err:>22.3g}{'' if ok else '  <- differs'}" for name, op, err, ok in rows]
    lines.append(f"first divergence: {first}" if first else f"all {len(rows)} layers agree within {rtol:g}")
    return "\n".join(lines), first


def parity(model, proto, x, rtol=1e-4):
    """Every intermediate value, fvgraph's own executor against onnxruntime: [(layer, op, rel_l2, ok)], and the
    first divergence."""
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    except Exception:
        inferred = {}
    have = {o.name for o in m.graph.output}
    layers = [l for l in model.layers if l.output in inferred or l.output in have]
    for l in layers:
        if l.output not in have:
            m.graph.output.append(inferred[l.output])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = {model.graph.input_names()[0]: x}
    ref = dict(zip(names, sess.run(None, feeds)))
    tape = model.forward(x, [l.output for l in layers])  # fvgraph's own executor, whatever the model's engine
    got = {k: host_array(model.backend.to_host(v)) for k, v in tape.values.items()}
    rows, first = [], None
    for l in layers:
        if l.output not in ref:
            continue
        r = metrics(l.name, got[l.output], ref[l.output], rtol=rtol, atol=0)
        ok = r.rel_l2 <= rtol
        rows.append((l.name, l.op_type, r.rel_l2, ok))
        if not ok and first is None:
            first = l.name
    return rows, first


# --------------------------------------------------------------------------- reports
def table(rows) -> str:
    lines = [f"{'what':<28} {'max abs':>10} {'rel L2':>10} {'corr':>8} {'top-1% overlap':>15}  result"]
    for r in rows:
        lines.append(f"{r.name[:28]:<28} {r.max_abs:>10.3g} {r.rel_l2:>10.3g} {r.correlation:>8.4f} "
                     f"{r.topk_overlap:>15.3f}  {'ok' if r.ok else 'DIFFERS'}")
    return "\n".join(lines)


def write_json(path, rows, info):
    Path(path).write_text(json.dumps({"schema": SCHEMA, "info": info, "ok": all(r.ok for r in rows),
                                      "results": [asdict(r) for r in rows]}, indent=2))


def write_junit(path, rows, suite="fvgraph.check"):
    """JUnit XML: one test case per compared output or method, a failure where it differs."""
    ts = ET.Element("testsuite", name=suite, tests=str(len(rows)), failures=str(sum(not r.ok for r in rows)))
    for r in rows:
        case = ET.SubElement(ts, "testcase", classname=suite, name=r.name)
        if not r.ok:
            f = ET.SubElement(case, "failure", message=f"max abs error {r.max_abs:.3g} > tolerance {r.tolerance:.3g}")
            f.text = (f"max_abs={r.max_abs:.6g} rel_l2={r.rel_l2:.6g} correlation={r.correlation:.6f} "
                      f"topk_overlap={r.topk_overlap:.4f}")
    ET.ElementTree(ts).write(path, encoding="utf-8", xml_declaration=True)
