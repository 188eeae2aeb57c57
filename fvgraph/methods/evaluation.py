"""What `fvgraph evaluate` runs: any mix of the faithfulness curves (deletion, insertion: faithfulness.py),
the field's metrics (ROAD, faithfulness correlation, pointing, max-sensitivity, sparseness, complexity, ADCC:
metrics.py) and the parameter randomization test (randomization.py), over images and methods, written as
one JSON with a plot per family."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

CURVES = ("deletion", "insertion")
RANDOMIZATION = "randomization"


def known_metrics() -> tuple:
    from .metrics import ALIASES, METRICS
    return CURVES + tuple(METRICS) + tuple(ALIASES) + (RANDOMIZATION,)


def split(metrics) -> tuple[list, list, bool]:
    """(curves, metrics.py's names, whether the randomization test is asked), one line for an unknown name."""
    from .metrics import metric_name
    names = [m.strip() for m in metrics if m.strip()]
    bad = [m for m in names if m not in known_metrics()]
    if bad or not names:
        raise InputError(f"unknown metric(s) {bad}: use {', '.join(known_metrics())}")
    return ([m for m in names if m in CURVES], [metric_name(m) for m in names if m not in CURVES + (RANDOMIZATION,)],
            RANDOMIZATION in names)


def files(out, metrics) -> list[Path]:
    """The files `write` makes for these metrics: checked before the work, so a refusal costs nothing."""
    curves, others, randomized = split(metrics)
    out = Path(out)
    plotted = curves or any(m.startswith("road") for m in others)
    return ([out / "evaluation.json"] if curves or others else []) + ([out / "evaluation.png"] if plotted else []) \
        + ([out / "randomization.json", out / "randomization.png"] if randomized else [])


def evaluate(model, images, methods, metrics, target=None, steps=16, boxes=None, order="cascade", seed=0) -> dict:
    """{"curves": faithfulness.evaluate_methods' result or None, "metrics": metrics.evaluate_metrics' or None,
    "randomization": {method: [per image RandomizationResult.to_dict()]} or None}."""
    from .faithfulness import evaluate_methods
    from .metrics import evaluate_metrics
    curves, others, randomized = split(metrics)
    out = {"curves": evaluate_methods(model, images, methods, curves, target, steps) if curves else None,
           "metrics": evaluate_metrics(model, images, methods, others, target, boxes) if others else None,
           "randomization": None}
    if randomized:
        from ..image import load_image
        from .registry import lookup, parse_spec
        spec = model.preprocessing()
        found = {}
        for meth in methods:
            name, own = parse_spec(meth)
            m = lookup(name)
            runs = []
            for path in images:
                x = load_image(path, spec)
                r = model.randomization(x, name, target, order, seed, **m.parse(own))
                runs.append({"image": str(path), **r.to_dict()})
            found[meth] = runs
        out["randomization"] = found
    return out


def write(out, found: dict, model_path, images, methods, metrics, steps=16, overwrite=False) -> list[Path]:
    """evaluation.json/.png for the curves and metrics (faithfulness.write_evaluation's, the metrics' values
    added), randomization.json/.png (the similarity per step, averaged over the images) for the test."""
    from ..errors import refuse_overwrite
    from ..files import write_text
    from ..render import curves as draw, save_png
    from .faithfulness import mean_curves
    from .metrics import BETTER, metric_curves
    out = Path(out)
    written = files(out, metrics)
    for f in written:
        refuse_overwrite(f, overwrite, other_out=True)
    curves, others, _ = split(metrics)
    if curves or others:
        record = {"model": str(model_path), "images": [str(p) for p in images], "methods": list(methods),
                  "metrics": list(metrics), "steps": steps,
                  "better": {"deletion": "lower", "insertion": "higher", **BETTER}}
        panels = {}
        if found["curves"]:
            record.update(found["curves"])
            panels.update(mean_curves(found["curves"], methods, curves, steps))
        if found["metrics"]:
            record["metric_results"], record["metric_means"] = found["metrics"]["results"], found["metrics"]["mean"]
            panels.update(metric_curves(found["metrics"], methods) or {})
        write_text(out / "evaluation.json", json.dumps(record, indent=1, default=_plain))
        if panels:
            save_png(out / "evaluation.png", draw(panels), overwrite=True)
    if found["randomization"]:
        rnd = found["randomization"]
        write_text(out / "randomization.json", json.dumps({"model": str(model_path), "methods": rnd}, indent=1,
                                                          default=_plain))
        save_png(out / "randomization.png", draw(randomization_panels(rnd)), overwrite=True)
    return written


def randomization_panels(rnd: dict) -> dict:
    """One panel per similarity measure: per method, the mean over images at each randomization step."""
    panels = {}
    for meth, runs in rnd.items():
        for measure in runs[0]["similarity"]:
            ys = np.mean([np.mean(np.asarray(r["similarity"][measure], np.float64), axis=-1) for r in runs], axis=0)
            title = f"{measure} to the original (x: share of layers randomized)"
            steps = np.linspace(0, 1, len(ys)) if len(ys) > 1 else np.zeros(1)
            panels.setdefault(title, {})[meth] = (steps, np.clip(ys, 0, 1))
    return panels


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def table(found: dict, methods) -> str:
    """The mean value of each metric per method (curves: their AUC; randomization: the similarity with every
    layer randomized), one row per method."""
    cols = {}
    if found["curves"]:
        for meth in methods:
            for metric, v in found["curves"]["mean_auc"][meth].items():
                cols.setdefault(f"{metric} AUC", {})[meth] = v
    if found["metrics"]:
        for meth in methods:
            for metric, v in found["metrics"]["mean"][meth].items():
                cols.setdefault(metric, {})[meth] = v
    if found["randomization"]:
        for meth, runs in found["randomization"].items():
            for measure in runs[0]["similarity"]:
                cols.setdefault(f"{measure} (all random)", {})[meth] = float(np.mean(
                    [np.mean(r["similarity"][measure][-1]) for r in runs]))
    width = max([24] + [len(c) + 2 for c in cols])
    lines = [f"{'method':<24}" + "".join(f"{c:>{width}}" for c in cols)]
    for meth in methods:
        lines.append(f"{meth[:24]:<24}" + "".join(f"{cols[c].get(meth, float('nan')):>{width}.4f}" for c in cols))
    return "\n".join(lines)
