"""Input reconstruction (the paper's third class): gradient descent in input space.

- Activation maximization (Simonyan et al. 2013): maximize a class score or any unit a(x). A unit that is dead
  where the search starts (a ReLU output with zero activation and gradient) is redirected, as Lucid's
  redirected ReLU does: its pre-activation is climbed until the unit turns on (history["redirected"] counts
  the redirected samples per step); one that stays dead is named in history["dead"] and in a warning.
- Inversion (Mahendran & Vedaldi 2015): find x whose representation at a layer matches that of an image,
  with the normalized distance ||phi(x) - phi0||^2 / ||phi0||^2.

Both add natural-image priors: lambda_p * mean |x|^p (the Lp norm; Simonyan et al. use p = 2, Mahendran &
Vedaldi p = 6) and lambda_tv * TV_beta(x), the mean over pixels of ((x[i, j+1] - x[i, j])^2 +
(x[i+1, j] - x[i, j])^2)^(beta / 2). Means rather than sums, so that the weights do not depend on the
image size. The input stays within the range the model's preprocessing allows.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import FvGraphWarning, InputError
from ..explanation import OutputTarget, Unit
from ..reverse import RELEVANCE, Target, lower
from ..rules import Rules

TV_EPS = 1e-8  # keeps the TV gradient finite where the image is flat (beta < 2)


@dataclass
class Reconstruction:
    image: np.ndarray                       # (N, C, H, W) in the model's input space
    picture: np.ndarray                     # (N, H, W, 3) uint8, de-normalized for display
    history: dict = field(default_factory=dict)   # term -> per-step values (means over the batch)
    target: object = None


def lp_term(x, p):
    """sum |x|^p and its gradient."""
    a = np.abs(x)
    return float(np.sum(a ** p)), p * a ** (p - 1) * np.sign(x)


def tv_term(x, beta):
    """TV_beta over the last two axes and its gradient."""
    d1 = x[..., :-1, 1:] - x[..., :-1, :-1]
    d2 = x[..., 1:, :-1] - x[..., :-1, :-1]
    n = d1 * d1 + d2 * d2 + TV_EPS
    value = float(np.sum(n ** (beta / 2)))
    s = beta * n ** (beta / 2 - 1)
    g = np.zeros_like(x)
    g[..., :-1, :-1] -= s * (d1 + d2)
    g[..., :-1, 1:] += s * d1
    g[..., 1:, :-1] += s * d2
    return value, g


class _Adam:
    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, b1, b2, eps, 0, 0.0, 0.0

    def step(self, x, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh, vh = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
        return x - self.lr * mh / (np.sqrt(vh) + self.eps)


class _Momentum:
    def __init__(self, lr, mu=0.9):
        self.lr, self.mu, self.v = lr, mu, 0.0

    def step(self, x, g):
        self.v = self.mu * self.v - self.lr * g
        return x + self.v


class Progress:
    """A one-line progress bar on a terminal; silent otherwise or when quiet. `callback(done, total, partial)`
    hears every update, `partial()` giving the result so far (how `fvgraph serve` fills maps in as they grow;
    raising in the callback stops the work)."""

    def __init__(self, total, label, quiet=None, callback=None):
        self.total, self.label, self.callback = total, label, callback
        self.on = (not quiet) and sys.stderr.isatty() if quiet is not None else sys.stderr.isatty()

    def update(self, k, note="", partial=None):
        if self.callback is not None:
            self.callback(k, self.total, partial)
        if self.on and (k % max(1, self.total // 50) == 0 or k == self.total):
            done = int(30 * k / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * done}{'.' * (30 - done)}] {k}/{self.total} {note}")
            if k == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _check_reg(name, v):
    if v is None:
        return None
    try:
        a, w = float(v[0]), float(v[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{name} must be a pair (exponent, weight), got {v!r}") from None
    if a <= 0 or w < 0:
        raise InputError(f"{name} needs a positive exponent and a non-negative weight, got {v!r}")
    return a, w


def optimize(model, objective, shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet, label, progress=None):
    """The shared loop: `objective(x) -> (value per sample, gradient)` is maximized under the priors."""
    from ..image import to_display
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if optimizer not in ("adam", "momentum"):
        raise InputError(f"optimizer must be 'adam' or 'momentum', got {optimizer!r}")
    lp, tv = _check_reg("lp", lp), _check_reg("tv", tv)
    spec = model.preprocessing()
    from ..image import input_range
    lo, hi = (a.reshape(1, -1, 1, 1) for a in input_range(spec))
    if lo.shape[1] != shape[1]:
        lo, hi = np.full((1, shape[1], 1, 1), lo.min(), np.float32), np.full((1, shape[1], 1, 1), hi.max(), np.float32)
    rng = np.random.default_rng(seed)
    if init is None:
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        x = (mid + 0.1 * half * rng.standard_normal(shape)).astype(np.float64)
    else:
        x = np.array(init, dtype=np.float64).reshape(shape)
    span = float(np.mean(hi - lo))
    opt = (_Adam if optimizer == "adam" else _Momentum)(lr if lr is not None else 0.02 * span)
    history = {"objective": [], "lp": [], "tv": [], "total": []}
    bar = Progress(steps, label, quiet, progress)
    for k in range(steps):
        shift = tuple(int(s) for s in rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
        xs = np.roll(x, shift, axis=(2, 3)) if jitter else x
        value, g = objective(xs.astype(np.float32))
        g = np.asarray(g, np.float64)
        if jitter:
            g = np.roll(g, (-shift[0], -shift[1]), axis=(2, 3))
        total = -float(np.mean(value))
        grad = -g
        lp_v = tv_v = 0.0
        per_image = x[0].size  # priors are means over each image's elements
        if lp and lp[1]:
            lp_v, lg = lp_term(x, lp[0])
            lp_v /= per_image * shape[0]
            grad = grad + lp[1] / per_image * lg
            total += lp[1] * lp_v
        if tv and tv[1]:
            tv_v, tg = tv_term(x, tv[0])
            tv_v /= per_image * shape[0]
            grad = grad + tv[1] / per_image * tg
            total += tv[1] * tv_v
        history["objective"].append(float(np.mean(value)))
        history["lp"].append(lp_v)
        history["tv"].append(tv_v)
        history["total"].append(total)
        x = np.clip(opt.step(x, grad), lo, hi)
        bar.update(k + 1, f"objective {np.mean(value):.4g}", partial=lambda: x.astype(np.float32))
    x = x.astype(np.float32)
    pictures = np.stack([to_display(xi, spec) for xi in x]) if shape[1] == 3 else None
    return x, pictures, history


def reconstruct(model, target, shape=None, steps=200, lr=None, lp=(2, 1e-2), tv=(2, 0.1), jitter=0,
                optimizer="adam", seed=0, init=None, quiet=None, progress=None):
    """Activation maximization of a class (int), a unit (fv.Unit), or a list of them (one image each)."""
    targets = target if isinstance(target, (list, tuple)) else [target]
    n = len(targets)
    if shape is None:
        s = model.inputs[0].shape
        if s is None or not all(isinstance(d, int) and d > 0 for d in s[1:]):
            raise InputError(f"the model's input shape {model.inputs[0].describe()} is not fixed: pass shape=")
        shape = (n,) + tuple(s[1:])
    shape = (n,) + tuple(shape[1:])
    from .attribution import logits_value, output_seed, output_value, unit_mask, value_dims
    logits = logits_value(model)
    seeds_at = []
    for t in targets:
        if isinstance(t, Unit):
            seeds_at.append(model.resolve(t.layer))
        elif isinstance(t, OutputTarget):
            seeds_at.append(output_value(model, t))
        elif isinstance(t, (int, np.integer)):
            seeds_at.append(logits)
        else:
            raise InputError(f"reconstruct targets are class indices, fv.Unit(...) or fv.OutputTarget(...), "
                             f"got {t!r}")
    pre = {i: _preactivation(model, at) for i, (t, at) in enumerate(zip(targets, seeds_at)) if isinstance(t, Unit)}
    pre = {i: v for i, v in pre.items() if v is not None}
    wanted = list(dict.fromkeys(seeds_at + list(pre.values())))
    probe = {model.graph.input_names()[0]: np.zeros((n,) + tuple(shape[1:]), np.float32)}
    seeds = {}  # one seed per layer, a row per sample: the mean over each sample's selected activations
    for at in wanted:
        seeds[at] = np.zeros([n] + list(value_dims(model, probe, at)[1:]), np.float32)
    rows = {}  # sample -> (value, its seed row), and for redirectable units the pre-activation's
    for i, (t, at) in enumerate(zip(targets, seeds_at)):
        row = np.zeros((1,) + seeds[at].shape[1:], np.float32)
        if isinstance(t, Unit):
            mask = unit_mask(model, t, seeds[at].shape, 1)
            row += mask / max(mask.sum(), 1)
        elif isinstance(t, OutputTarget):
            row += output_seed(model, probe, t, 1)[1]
        else:
            if row.ndim != 2 or not 0 <= t < row.shape[1]:
                shape = tuple(["N"] + list(row.shape[1:]))
                raise InputError(f"class {t} is out of range for an output of shape {shape}")
            row[0, t] = 1.0
        rows[i] = row
        seeds[at][i:i + 1] = row
    specs = tuple(Target("array", at) for at in wanted)
    lowered = model.lowered(("reconstruct", specs), probe,
                            lambda table: lower(model, Rules.load("gradient"), specs, table))
    redirected = np.zeros(n, bool)
    history_redirected = []

    def objective(x):
        feeds = dict(zip(lowered.seed_inputs, [seeds[at] for at in wanted]))
        out = model.engine.run(lowered.graph, {model.graph.input_names()[0]: x, **feeds}, lowered.outputs)
        values = np.array([float(np.sum(out[at][i] * rows[i][0])) for i, at in enumerate(seeds_at)])
        grad = out[RELEVANCE]
        for i, p in pre.items():  # a dead unit (zero activation and gradient): climb its pre-activation
            dead = values[i] == 0 and not np.any(grad[i])
            if dead != redirected[i] and (dead or values[i] > 0):
                redirected[i] = dead
                seeds[seeds_at[i]][i:i + 1] = 0 if dead else rows[i]
                seeds[p][i:i + 1] = rows[i] if dead else 0
        history_redirected.append(int(redirected.sum()))
        return values, grad

    x, pic, hist = optimize(model, objective, shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet,
                            "reconstruct", progress)
    if pre:
        hist["redirected"] = history_redirected
        final, _ = objective(x)
        hist["dead"] = [i for i in pre if final[i] == 0]
        for i in hist["dead"]:
            warnings.warn(FvGraphWarning(f"unit {targets[i]} stayed dead: its activation is 0 for every input the "
                                         f"optimization reached ({steps} steps climbing its pre-activation); try more "
                                         "steps, a larger lr, or another unit"))
    return Reconstruction(x, pic, hist, targets if isinstance(target, (list, tuple)) else target)


def _preactivation(model, value: str):
    """The input of the ReLU (or ReLU6) that produces `value`, or None: where a dead unit is redirected."""
    node = model.graph.producers().get(value)
    if node is None:
        return None
    if node.op_type == "Relu":
        return node.inputs[0]
    if node.op_type == "Clip" and len(node.inputs) > 1 and node.inputs[1] in model.graph.initializers \
            and float(np.asarray(model.graph.initializers[node.inputs[1]]).reshape(-1)[0]) == 0.0:
        return node.inputs[0]
    return None


def invert(model, x, layer, steps=200, lr=None, lp=(2, 1e-2), tv=(2, 0.1), jitter=0, optimizer="adam", seed=0,
           init=None, quiet=None):
    """Find an input whose representation at `layer` matches that of x (normalized squared distance)."""
    value = model.resolve(layer)
    x = np.asarray(x, np.float32)
    phi0 = model.run(x, outputs=[value])[value].astype(np.float64)
    norm = np.sum(phi0.reshape(len(phi0), -1) ** 2, axis=1).reshape((-1,) + (1,) * (phi0.ndim - 1))
    norm = np.maximum(norm, 1e-12)
    spec = Target("affine", value)
    feeds = {model.graph.input_names()[0]: x}
    lowered = model.lowered(("invert", spec), feeds, lambda table: lower(model, Rules.load("gradient"), spec, table))
    scale, offset = (-2 / norm).astype(np.float32), (2 * phi0 / norm).astype(np.float32)  # d(-distance)/d(phi)

    def objective(xx):
        out = model.engine.run(lowered.graph, {model.graph.input_names()[0]: xx, "seed_scale": scale,
                                               "seed_offset": offset}, lowered.outputs)
        phi = out[value].astype(np.float64)
        dist = np.sum(((phi - phi0) ** 2 / norm).reshape(len(phi), -1), axis=1)
        return -dist, out[RELEVANCE]

    xr, pic, hist = optimize(model, objective, x.shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet,
                             "invert")
    hist["distance"] = [-v for v in hist.pop("objective")]
    return Reconstruction(xr, pic, hist, layer)
