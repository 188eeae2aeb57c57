"""Input reconstruction (the paper's third class): gradient descent in input space.

- Activation maximization (Simonyan et al. 2013): maximize a class score or any unit a(x).
- Inversion (Mahendran & Vedaldi 2015): find x whose representation at a layer matches that of an image,
  with the normalized distance ||phi(x) - phi0||^2 / ||phi0||^2.

Both add natural-image priors: lambda_p * mean |x|^p (the Lp norm; Simonyan et al. use p = 2, Mahendran &
Vedaldi p = 6) and lambda_tv * TV_beta(x), the mean over pixels of ((x[i, j+1] - x[i, j])^2 +
(x[i+1, j] - x[i, j])^2)^(beta / 2). Means rather than sums, so that the weights do not depend on the
image size. The input stays within the range the model's preprocessing allows.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..explanation import Unit
from ..reverse import reverse
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
    """A one-line progress bar on a terminal; silent otherwise or when quiet."""

    def __init__(self, total, label, quiet=None):
        self.total, self.label = total, label
        self.on = (not quiet) and sys.stderr.isatty() if quiet is not None else sys.stderr.isatty()

    def update(self, k, note=""):
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


def optimize(model, objective, shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet, label):
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
    bar = Progress(steps, label, quiet)
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
        bar.update(k + 1, f"objective {np.mean(value):.4g}")
    x = x.astype(np.float32)
    pictures = np.stack([to_display(xi, spec) for xi in x]) if shape[1] == 3 else None
    return x, pictures, history


def reconstruct(model, target, shape=None, steps=200, lr=None, lp=(2, 1e-2), tv=(2, 0.1), jitter=0,
                optimizer="adam", seed=0, init=None, quiet=None):
    """Activation maximization of a class (int), a unit (fv.Unit), or a list of them (one image each)."""
    targets = target if isinstance(target, (list, tuple)) else [target]
    n = len(targets)
    if shape is None:
        s = model.inputs[0].shape
        if s is None or not all(isinstance(d, int) and d > 0 for d in s[1:]):
            raise InputError(f"the model's input shape {model.inputs[0].describe()} is not fixed: pass shape=")
        shape = (n,) + tuple(s[1:])
    shape = (n,) + tuple(shape[1:])
    from .attribution import logits_value
    logits = logits_value(model)
    seeds_at = []
    for t in targets:
        if isinstance(t, Unit):
            seeds_at.append(model.resolve(t.layer))
        elif isinstance(t, (int, np.integer)):
            seeds_at.append(logits)
        else:
            raise InputError(f"reconstruct targets are class indices or fv.Unit(...), got {t!r}")
    wanted = list(dict.fromkeys(seeds_at))
    gradient_rules = Rules.load("gradient")

    def objective(x):
        tape = model.forward(x, wanted, keep=True)
        seeds, values = {}, np.zeros(n)
        host = {at: model.backend.to_host(tape.values[at]) for at in wanted}
        for i, (t, at) in enumerate(zip(targets, seeds_at)):
            a = host[at]
            seed = seeds.setdefault(at, np.zeros(a.shape, np.float32))  # one seed per layer, a row per sample
            if isinstance(t, Unit):
                idx = [i] + [slice(None)] * (a.ndim - 1)
                for axis, v in ((1, t.channel), (2, t.y), (3, t.x)):
                    if v is not None:
                        if axis >= a.ndim or not 0 <= v < a.shape[axis]:
                            raise InputError(f"{t} is out of range for a layer of shape {a.shape}")
                        idx[axis] = v
                idx = tuple(idx)
                seed[idx] = 1.0 / max(seed[idx].size, 1)  # the mean over the selected activations
                values[i] = float(np.mean(a[idx]))
            else:
                if a.ndim != 2 or not 0 <= t < a.shape[1]:
                    raise InputError(f"class {t} is out of range for an output of shape {a.shape}")
                seed[i, t] = 1.0
                values[i] = float(a[i, t])
        seeds = {k: model.backend.xp.asarray(v) for k, v in seeds.items()}
        signals, _ = reverse(model, tape, seeds, gradient_rules)
        g = signals.get(model.graph.input_names()[0])
        return values, (np.zeros(x.shape, np.float32) if g is None else model.backend.to_host(g))

    x, pic, hist = optimize(model, objective, shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet,
                            "reconstruct")
    return Reconstruction(x, pic, hist, targets if isinstance(target, (list, tuple)) else target)


def invert(model, x, layer, steps=200, lr=None, lp=(2, 1e-2), tv=(2, 0.1), jitter=0, optimizer="adam", seed=0,
           init=None, quiet=None):
    """Find an input whose representation at `layer` matches that of x (normalized squared distance)."""
    value = model.resolve(layer)
    x = np.asarray(x, np.float32)
    phi0 = model.backend.to_host(model.forward(x, [value]).values[value]).astype(np.float64)
    norm = np.sum(phi0.reshape(len(phi0), -1) ** 2, axis=1).reshape((-1,) + (1,) * (phi0.ndim - 1))
    norm = np.maximum(norm, 1e-12)
    gradient_rules = Rules.load("gradient")

    def objective(xx):
        tape = model.forward(xx, [value], keep=True)
        phi = model.backend.to_host(tape.values[value]).astype(np.float64)
        diff = phi - phi0
        dist = np.sum((diff ** 2 / norm).reshape(len(phi), -1), axis=1)
        seed = model.backend.xp.asarray((-2 * diff / norm).astype(np.float32))  # d(-distance)/d(phi)
        signals, _ = reverse(model, tape, {value: seed}, gradient_rules)
        g = signals.get(model.graph.input_names()[0])
        return -dist, (np.zeros(xx.shape, np.float32) if g is None else model.backend.to_host(g))

    xr, pic, hist = optimize(model, objective, x.shape, steps, lr, lp, tv, jitter, optimizer, seed, init, quiet,
                             "invert")
    hist["distance"] = [-v for v in hist.pop("objective")]
    return Reconstruction(xr, pic, hist, layer)
