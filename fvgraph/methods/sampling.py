"""Methods that average many reverse passes over changed copies of the input, batched on the engine:

- integrated gradients (Sundararajan et al. 2017): (x - baseline) times the weighted sum of gradients at points
  baseline + alpha (x - baseline), with Captum's points and weights ("gausslegendre": Gauss-Legendre nodes on
  [0, 1]; "riemann_left/right/middle/trapezoid"). The completeness gap, sum(attribution) - (f(x) - f(baseline)),
  is reported per sample in extras["completeness_gap"]: it shrinks as steps grow where f is smooth;
- SmoothGrad (Smilkov et al. 2017) for any method: the maps of copies of x with Gaussian noise of standard
  deviation sigma * (max(x) - min(x)) per image, reduced by their mean (SmoothGrad), mean of squares
  (SmoothGrad^2) or variance (VarGrad, Adebayo et al. 2018). sigma = 0 is the plain method.

Copies run as batches under a memory cap; class targets are fixed at the clean input (the predicted class of
x, not of each copy).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation, OutputTarget, Unit

MAX_ROWS = 64  # copies per batch at most (reverse passes: ResNet-18's integrated gradients 10% slower at 8)
CPU_ROWS = 8   # forward-only copies on a CPU: onnxruntime's time per image is lowest at batch 4-8 and rises
               # beyond (EfficientNet-Lite0, 2 threads: 3.3-3.5 ms at 4-8, 3.7 at 16, 4.1 at 64)


def most_rows(model) -> int:
    """Forward-only copies per batch at most on the model's device (RISE, Sobol)."""
    return CPU_ROWS if model.device == "cpu" else MAX_ROWS


def path_points(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of the path integral, as Captum's approximation_parameters defines them."""
    n = int(steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 1.0 / (2 * (n - 1))
        return np.linspace(0, 1, n), w
    starts = {"riemann_left": (0.0, 1 - 1 / n), "riemann_right": (1 / n, 1.0),
              "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n))}[method]
    return np.linspace(*starts, n), np.full(n, 1.0 / n)


def baseline_of(model, x: np.ndarray, baseline, seed: int = 0) -> np.ndarray:
    """'zero', 'blur' (each channel blurred with a Gaussian of sigma = size / 10), 'uniform' (seeded, over the
    preprocessing's input range), or an array broadcast to x."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.zeros_like(x)
        if baseline == "blur":
            from scipy.ndimage import gaussian_filter
            sigma = max(x.shape[2:]) / 10.0 if x.ndim == 4 else 0.0
            return gaussian_filter(x, sigma=(0, 0) + (sigma,) * (x.ndim - 2)).astype(x.dtype)
        lo, hi = (a.reshape((1, -1) + (1,) * (x.ndim - 2)) for a in model.input_bounds())
        if lo.shape[1] != x.shape[1]:
            lo, hi = lo.min(), hi.max()
        return (lo + (hi - lo) * np.random.default_rng(seed).random(x.shape)).astype(x.dtype)
    try:
        return np.broadcast_to(np.asarray(baseline, x.dtype), x.shape).copy()
    except ValueError:
        raise InputError(f"a baseline array must broadcast to the input's shape {x.shape}, got "
                         f"{np.shape(baseline)}") from None


def fixed_target(model, x, target, through_softmax=False):
    """The target with classes resolved at x (so that every copy explains the same class)."""
    if isinstance(target, (Unit, OutputTarget)) or (isinstance(target, np.ndarray) and target.dtype.kind == "f"):
        return target
    from .attribution import batch_axis, class_indices, logits_value, time_major_predicted, value_dims
    feeds = model.feeds(x)
    value = logits_value(model, through_softmax)
    dims = value_dims(model, feeds, value)
    classes = class_indices(target, dims, len(x), value)
    if (classes < 0).any():
        out = model.run(x, outputs=[value])[value]
        ax = batch_axis(dims)  # a time-major (T, N, C) output: the argmax of the class scores summed over time
        predicted = time_major_predicted(out, ax) if ax != 0 else out.reshape(len(x), -1).argmax(axis=1)
        classes = np.where(classes < 0, predicted, classes)
    return classes


def _tile(target, copies: int):
    """A per-sample target for `copies` stacked copies of the batch."""
    if isinstance(target, np.ndarray):
        return np.concatenate([target] * copies)
    return target


def rows_per_batch(model, x) -> int:
    """Copies per batch under the memory cap (a reverse pass holds about three forwards' values)."""
    from .memory import available_memory, bytes_per_sample
    first = model.graph.input_names()[0]
    per = 3 * bytes_per_sample(model, x[:1], model.graph.output_names()[0]) if first else 1
    return int(max(1, min(MAX_ROWS, model.batch_limit or MAX_ROWS, available_memory() // 4 // max(per, 1))))


def in_model_batches(model, fn, x, *per_row):
    """fn(rows of x, the same rows of each per-row argument) -> an array per row, run in batches of exactly the
    size the model's input fixes (the last one padded with repeats of its last row), or all at once."""
    limit = model.batch_limit
    if limit is None or len(x) == limit:
        return fn(x, *per_row)
    outs = []
    for s in range(0, len(x), limit):
        parts = [a[s:s + limit] if isinstance(a, np.ndarray) else a for a in (x,) + per_row]
        pad = limit - len(parts[0])
        if pad:
            parts = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if isinstance(a, np.ndarray) else a
                     for a in parts]
        outs.append(fn(*parts)[:limit - pad])
    return np.concatenate(outs)


def copy_scores(model, copies, target, through_softmax=False, probabilities=False) -> np.ndarray:
    """The target's score on each row of `copies`, variants of one image whose target is `target` (its class
    as a 1-element array, a Unit or an OutputTarget): Score-CAM's masked inputs, the faithfulness curves."""
    from .attribution import target_scores
    return in_model_batches(model, lambda rows, t: target_scores(model, rows, t, through_softmax, probabilities)[0],
                            copies, _tile(target, len(copies)))


def _in_batches(model, copies: list, x, explain_batch):
    """explain_batch(stacked copies, number of copies) for the copies in memory-capped groups; yields the
    per-copy maps (copies, N, ...)."""
    n = len(x)
    # a model whose input fixes the batch took x, so the batch is that size: one copy per call
    step = 1 if model.batch_limit else max(1, rows_per_batch(model, x) // n)
    for k in range(0, len(copies), step):
        group = copies[k:k + step]
        maps = explain_batch(np.concatenate(group), len(group))
        yield maps.reshape((len(group), n) + maps.shape[1:])


def integrated_gradients(model, x, rules, target, settings, through_softmax=False, method_name=None):
    from dataclasses import replace

    from .attribution import attribute, target_scores
    x = model.feeds(x)[model.graph.input_names()[0]]
    base = baseline_of(model, x, settings["baseline"], 0)
    alphas, weights = path_points(settings["integration"], settings["steps"])
    target = fixed_target(model, x, target, through_softmax)
    gradient = replace(rules, integrate=None, smooth=None, multiply_input=False)
    total = np.zeros(x.shape, np.float64)
    step = x - base  # points in x's own precision, as Captum forms them (float32 rounding of the path matters:
    points = [base + x.dtype.type(a) * step for a in alphas]  # a ReLU net's gradient jumps where gates flip)
    done = 0
    for maps in _in_batches(model, points, x, lambda xs, c: attribute(
            model, xs, gradient, _tile(target, c), through_softmax=through_softmax).relevance):
        total += np.tensordot(weights[done:done + len(maps)], maps.astype(np.float64), axes=1)
        done += len(maps)
    attribution = (total * (x - base)).astype(x.dtype)
    f_x, out = target_scores(model, x, target, through_softmax)
    f_b, _ = target_scores(model, base, target, through_softmax)
    gap = attribution.reshape(len(x), -1).sum(axis=1) - (f_x - f_b)
    reported = target if isinstance(target, (Unit, OutputTarget)) else np.asarray(target)
    return Explanation(attribution, reported, out, method_name or rules.name, {},
                       extras={"completeness_gap": gap, "baseline": base, "alphas": alphas, "weights": weights})


def smoothed(model, x, explain_once, target, settings, through_softmax=False):
    """explain_once(x, target) -> Explanation, averaged over noisy copies of x."""
    x = model.feeds(x)[model.graph.input_names()[0]]
    if float(settings["sigma"]) == 0:
        return explain_once(x, target)
    target = fixed_target(model, x, target, through_softmax)
    n = len(x)
    spread = (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1)).reshape((n,) + (1,) * (x.ndim - 1))
    rng = np.random.default_rng(int(settings["seed"]))
    copies = [(x + rng.standard_normal(x.shape) * float(settings["sigma"]) * spread).astype(x.dtype)
              for _ in range(int(settings["samples"]))]
    total = total_sq = None
    for maps in _in_batches(model, copies, x, lambda xs, c: explain_once(xs, _tile(target, c)).relevance):
        m = maps.astype(np.float64)
        total = m.sum(axis=0) if total is None else total + m.sum(axis=0)
        total_sq = (m * m).sum(axis=0) if total_sq is None else total_sq + (m * m).sum(axis=0)
    k = len(copies)
    mean, mean_sq = total / k, total_sq / k
    kind = settings["kind"]
    rel = mean if kind == "mean" else mean_sq if kind == "mean-of-squares" else mean_sq - mean * mean
    clean = explain_once(x, target)  # the outputs and target as reported for the clean input
    return Explanation(rel.astype(x.dtype), clean.target, clean.output, clean.method, clean.rules_used,
                       clean.layers, {**clean.extras, "smooth": dict(settings)})
