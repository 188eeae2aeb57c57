"""Faithfulness: does a map rank first the pixels the model relies on?

- deletion (Petsiuk et al. 2018; pixel flipping, Samek et al. 2017): square regions of `patch` pixels are
  removed most relevant first, in `steps` equal chunks, each replaced by `fill` (default "blur": the image
  blurred; or a number, one per channel, "mean"); the target's score falls fast for a faithful map: lower AUC
  is better. Blurred content rather than Petsiuk's constant: grey patches scattered over an image push it out
  of the training distribution, so any ordering, random included, kills the score at once (on the embedded
  EfficientNet, random regions deleted with grey gave lower AUCs than occlusion's own ranking);
- insertion: the regions are put back most relevant first onto a canvas (`fill`, default "blur": the image
  blurred with a Gaussian of sigma = size / 10, as Petsiuk et al.); the score rises fast: higher AUC is better.

A pixel's relevance is the sum over channels of the map (maps at another resolution, CAMs with
upsample=False, are resized first), a region's the sum over its pixels. The score is the target's softmax
probability for class targets, otherwise the target's score divided by the clean image's; the AUC (trapezoid
rule over the fraction of pixels 0..1) is then in [0, 1] for probabilities. All steps of an image run as
batches on the model's engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

METRICS = ("deletion", "insertion")


@dataclass
class Evaluation:
    metric: str
    auc: np.ndarray          # (N,)
    scores: np.ndarray       # (N, steps + 1): the curve
    fractions: np.ndarray    # (steps + 1,): share of pixels removed (deletion) or inserted (insertion)
    extras: dict = field(default_factory=dict)

    def __repr__(self):
        return f"<Evaluation {self.metric}: AUC {np.round(self.auc, 4).tolist()}>"

    def plot(self):
        """The curves (one per sample, with their AUC) as a PIL image."""
        from ..display import pil
        from ..render import curves
        lines = {f"image {i}": (self.fractions, self.scores[i]) for i in range(len(self.scores))}
        return pil(curves({self.metric: lines}))

    def save(self, path, overwrite: bool = False):
        """The curves as .png, or the scores as .npy."""
        from ..display import save_picture
        return save_picture(path, np.asarray(self.plot()), overwrite, array=self.scores)

    def _repr_png_(self):
        from ..display import png_bytes
        return png_bytes(np.asarray(self.plot()))


def pixel_relevance(relevance, size) -> np.ndarray:
    """(N, C, H, W) or (N, h, w) maps -> (N, H, W) per-pixel relevance at the input's size."""
    r = np.asarray(relevance, np.float32)
    if r.ndim == 4:
        r = r.sum(axis=1)
    if r.ndim != 3:
        raise InputError(f"relevance must be (N, C, H, W) or (N, H, W), got shape {r.shape}")
    if tuple(r.shape[1:]) != tuple(size):
        from .cam import resize_maps
        r = resize_maps(r, size)
    return r


def canvas(model, x, fill) -> np.ndarray:
    """What removed pixels become: a constant, one value per channel, the image mean, or the blurred image."""
    if isinstance(fill, str):
        if fill == "blur":
            from .sampling import baseline_of
            return baseline_of(model, x, "blur")
        if fill == "mean":
            return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).astype(x.dtype)
        raise InputError(f"fill must be a number, one number per channel, 'mean' or 'blur'; got {fill!r}")
    v = np.asarray(fill, x.dtype).reshape(-1)
    if v.size not in (1, x.shape[1]):
        raise InputError(f"fill has {v.size} values; give one, or one per channel ({x.shape[1]})")
    return np.broadcast_to(v.reshape(1, -1, 1, 1), x.shape).astype(x.dtype)


def evaluate(model, x, relevance, metric="deletion", target=None, steps=16, fill="blur", through_softmax=False,
             patch=None):
    """The deletion or insertion curve and its AUC for each image of the batch x and its map. patch: the side
    of the square regions removed together (default size / 14: 16 pixels at 224), ranked by their summed
    relevance, as pixel flipping removes regions (Samek et al. 2017): single pixels scattered at random
    destroy an image like noise, which measures a model's robustness to noise rather than a map's ranking."""
    from .attribution import target_scores
    from .sampling import copy_scores, fixed_target, rows_per_batch
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    x = model.feeds(x)[model.graph.input_names()[0]]
    if x.ndim != 4:
        raise InputError(f"faithfulness needs an image batch (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    r = pixel_relevance(relevance, (h, w))
    if len(r) != n:
        raise InputError(f"got {len(r)} maps for a batch of {n} images")
    patch = max(1, round(max(h, w) / 14)) if patch is None else int(patch)
    if patch < 1:
        raise InputError(f"patch must be a positive integer, got {patch!r}")
    ph, pw = -(-h // patch), -(-w // patch)  # regions per axis (the last ones may be smaller)
    region = (np.arange(h)[:, None] // patch) * pw + np.arange(w)[None, :] // patch
    base = canvas(model, x, fill)
    target = fixed_target(model, x, target, through_softmax)
    is_class = isinstance(target, np.ndarray) and target.dtype.kind in "iu"
    fractions = np.linspace(0, 1, steps + 1)
    counts = np.round(fractions * ph * pw).astype(int)
    scores = np.zeros((n, steps + 1))
    per_batch = max(1, rows_per_batch(model, x[:1]) * 3)  # forward passes only
    for i in range(n):
        sums = np.bincount(region.reshape(-1), weights=r[i].reshape(-1), minlength=ph * pw)
        rank = np.empty(ph * pw, int)
        rank[np.argsort(-sums, kind="stable")] = np.arange(ph * pw)
        pixel_rank = rank[region]  # each pixel takes its region's place in the order
        start, goal = (x[i], base[i]) if metric == "deletion" else (base[i], x[i])
        images = np.empty((steps + 1, c, h, w), x.dtype)
        for k, m in enumerate(counts):
            images[k] = np.where(pixel_rank < m, goal, start)
        t = target[i:i + 1] if isinstance(target, np.ndarray) else target
        for b0 in range(0, steps + 1, per_batch):
            chunk = images[b0:b0 + per_batch]
            scores[i, b0:b0 + len(chunk)] = copy_scores(model, chunk, t, through_softmax, probabilities=is_class)
    if not is_class:
        clean = target_scores(model, x, target, through_softmax)[0]
        scores = scores / np.where(clean == 0, 1, clean)[:, None]
    auc = (getattr(np, "trapezoid", None) or np.trapz)(scores, fractions, axis=1)  # numpy < 2.0: trapz
    shown_fill = fill if isinstance(fill, str) else np.asarray(fill).tolist()
    return Evaluation(metric, auc, scores, fractions, {"fill": shown_fill, "steps": steps, "patch": patch})


def evaluate_methods(model, images, methods, metrics=METRICS, target=None, steps=16) -> dict:
    """Each method's map (names as `fvgraph check` takes them, e.g. 'lrp-epsilon:epsilon=0.01') on each image
    file, scored by each metric: {"results": [{image, method, metric, auc, curve, fractions}, ...],
    "mean_auc": {method: {metric: mean AUC over the images}}}."""
    from .registry import run_spec
    from ..image import load_image
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise InputError(f"unknown metric(s) {bad}: use {', '.join(METRICS)}")
    spec = model.preprocessing()
    results = []
    for path in images:
        x = load_image(path, spec)
        for meth in methods:
            rel = run_spec(model, x, meth, target).relevance
            for metric in metrics:
                ev = evaluate(model, x, rel, metric, target=target, steps=steps)
                results.append({"image": str(path), "method": meth, "metric": metric, "auc": float(ev.auc[0]),
                                "curve": [float(v) for v in ev.scores[0]],
                                "fractions": [float(v) for v in ev.fractions]})
    mean = {meth: {metric: float(np.mean([r["auc"] for r in results if r["method"] == meth and r["metric"] == metric]))
                   for metric in metrics} for meth in methods}
    return {"results": results, "mean_auc": mean}


def mean_curves(found: dict, methods, metrics, steps: int) -> dict:
    """evaluate_methods' curves averaged over the images, as fvgraph.render.curves draws them: one panel per
    metric, titled with which way is better, one (fractions, mean score) line per method."""
    fractions = np.linspace(0, 1, steps + 1)
    return {f"{metric} ({'lower' if metric == 'deletion' else 'higher'} is better)":
            {meth: (fractions, np.mean([r["curve"] for r in found["results"]
                                        if r["metric"] == metric and r["method"] == meth], axis=0))
             for meth in methods} for metric in metrics}


def write_evaluation(out, found: dict, model_path, images, methods, metrics, steps: int, overwrite=False):
    """evaluation.json (every curve and AUC, and what was run) and evaluation.png (the mean curves) in the
    folder `out`, each written whole; neither replaces a file without overwrite (both checked first)."""
    import json
    from pathlib import Path

    from ..errors import refuse_overwrite
    from ..files import write_text
    from ..render import curves, save_png
    out = Path(out)
    for f in evaluation_files(out):
        refuse_overwrite(f, overwrite, other_out=True)
    write_text(out / "evaluation.json", json.dumps(
        {"model": str(model_path), "images": [str(p) for p in images], "methods": list(methods),
         "metrics": list(metrics), "steps": steps, "better": {"deletion": "lower", "insertion": "higher"}, **found},
        indent=1))
    save_png(out / "evaluation.png", curves(mean_curves(found, methods, metrics, steps)), overwrite=True)
    return evaluation_files(out)


def evaluation_files(out):
    """The files write_evaluation writes into `out`: checked before the work, so a refusal costs nothing."""
    from pathlib import Path
    return Path(out) / "evaluation.json", Path(out) / "evaluation.png"
