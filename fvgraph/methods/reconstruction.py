"""Input reconstruction (the paper's third class): gradient ascent in input space, as one loop of three
orthogonal pieces (`search`): how the picture is represented (methods/param.py: pixel, fourier, maco), which
random transforms each step sees (methods/transforms.py), and what is maximized (methods/objectives.py).

- Activation maximization (Simonyan et al. 2013; Olah et al. 2017): a class score, a unit, a direction or any
  combination of them. A unit that is dead where the search starts (a ReLU output with zero activation and
  gradient) is redirected, as Lucid's redirected ReLU does: its pre-activation is climbed until the unit turns
  on (history["redirected"] counts the redirected samples per step), with the priors off meanwhile; one still
  dead at the end gets a plain climb in pixel space, and only one that stays dead is named in history["dead"]
  and a warning.
- Inversion (Mahendran & Vedaldi 2015): find x whose representation at a layer matches that of an image,
  with the normalized distance ||phi(x) - phi0||^2 / ||phi0||^2.

The pixel parameterization adds the paper's natural-image priors: lambda_p * mean |x|^p (Simonyan et al. use
p = 2, Mahendran & Vedaldi p = 6) and lambda_tv * TV_beta(x), the mean over pixels of ((x[i, j+1] - x[i, j])^2
+ (x[i+1, j] - x[i, j])^2)^(beta / 2): means rather than sums, so that the weights do not depend on the image
size. The spectral parameterizations carry their prior in the representation. The picture always stays within
the range the model's preprocessing allows.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import FvGraphWarning, InputError
from ..reverse import RELEVANCE, Target, lower
from ..rules import Rules

TV_EPS = 1e-8  # keeps the TV gradient finite where the image is flat (beta < 2)


@dataclass
class Reconstruction:
    image: np.ndarray                       # (N, C, H, W) in the model's input space
    picture: np.ndarray                     # (N, H, W, 3) uint8, de-normalized for display
    history: dict = field(default_factory=dict)   # term -> per-step values (means over the batch)
    target: object = None
    transparency: np.ndarray = None         # (N, H, W) in [0, 1]: where the objective looked (MACO's map)

    def show(self, index: int = 0, transparency: bool = False):
        """Picture `index` as a PIL image; with transparency, MACO's view: the picture faded where the
        objective did not look."""
        from ..display import pil
        pic = self.picture[index] if self.picture is not None else None
        if pic is None:
            raise InputError("the model's input is no picture (not 1 or 3 channels); use .image")
        if transparency and self.transparency is not None:
            a = self.transparency[index][..., None]
            pic = (pic * a + 255 * (1 - a)).astype(np.uint8)
        return pil(pic)

    def save(self, path, index: int = 0, overwrite: bool = False):
        """Picture `index` as .png, or the images (model space) as .npy."""
        from ..display import save_picture
        return save_picture(path, np.asarray(self.show(index)), overwrite, array=self.image)

    def _repr_png_(self):
        from ..display import png_bytes, row
        return png_bytes(row([self.picture[i] for i in range(min(len(self.picture), 8))])) \
            if self.picture is not None else None


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


PIXEL_PRIORS = {"lp": (2, 1e-2), "tv": (2, 0.1)}  # the paper's priors, for the pixel parameterization
DEFAULTS = {"param": "fourier", "steps": 256, "lr": None, "transforms": "default"}
LR = {"pixel": None, "fourier": 0.05, "maco": 0.5}   # Adam's step in the parameters' units (pixel: 2% of range)


def _bounds(model, channels):
    from ..image import input_range
    lo, hi = (a.reshape(1, -1, 1, 1).astype(np.float64) for a in input_range(model.preprocessing()))
    if lo.shape[1] != channels:
        lo, hi = np.full((1, channels, 1, 1), lo.min()), np.full((1, channels, 1, 1), hi.max())
    return lo, hi


def search(model, objective, shape, steps=256, param="fourier", transforms=None, lr=None, lp=None, tv=None,
           jitter=0, optimizer="adam", seed=0, init=None, quiet=None, label="reconstruct", progress=None,
           param_options=None, relax=None):
    """The shared loop: parameterization x transforms x objective. `objective(xb, owner) -> (value per copy,
    d value / d xb)` on the model-space copies xb (owner: the picture each copy comes from) is maximized; the
    picture v in [0, 1] comes from the parameterization and maps linearly into the input range the
    preprocessing allows. `relax()` -> per-picture factors (0 or 1) for the priors (dead units being redirected).
    Returns (x, pictures, history, transparency)."""
    from ..image import to_display
    from . import param as params
    from .transforms import NONE, Sampling, parse
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if optimizer not in ("adam", "momentum"):
        raise InputError(f"optimizer must be 'adam' or 'momentum', got {optimizer!r}")
    lp, tv = _check_reg("lp", lp), _check_reg("tv", tv)
    t = parse(transforms) if transforms is not None else NONE
    n, c, h, w = shape
    lo, hi = _bounds(model, c)
    span = hi - lo
    rng = np.random.default_rng(seed)
    P = params.make(param, n, c, (h, w), rng, **(param_options or {}))
    if init is not None:
        P.set_image((np.asarray(init, np.float64).reshape(shape) - lo) / span)
    step = lr if lr is not None else LR.get(param) or 0.02
    opt = (_Adam if optimizer == "adam" else _Momentum)(step)
    history = {"objective": [], "lp": [], "tv": [], "total": []}
    transparency = np.zeros((n, h, w))
    bar = Progress(steps, label, quiet, progress)
    per_image = c * h * w  # priors are means over each image's elements

    def picture():
        return lo + span * P.image()
    for k in range(steps):
        v = P.image()
        shift = tuple(int(a) for a in rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
        vs = np.roll(v, shift, axis=(2, 3)) if jitter else v
        sampling = Sampling(t, rng, n, (h, w), (h, w)) if t is not NONE else None
        vb = sampling.forward(vs) if sampling is not None else vs
        owner = sampling.owner if sampling is not None else np.arange(n)
        values, g = objective((lo + span * vb).astype(np.float32), owner)
        gv = np.asarray(g, np.float64) * span
        if sampling is not None:
            gv = sampling.backward(gv) / t.crops
        if jitter:
            gv = np.roll(gv, (-shift[0], -shift[1]), axis=(2, 3))
        per_sample = np.bincount(owner, np.asarray(values, np.float64), n) / np.bincount(owner, minlength=n)
        transparency += np.abs(gv).sum(axis=1)
        grad = -gv  # the optimizer minimizes
        total = -float(np.mean(per_sample))
        lp_v = tv_v = 0.0
        factor = (relax() if relax is not None else np.ones(n)).reshape(n, 1, 1, 1)
        x = lo + span * v
        if lp and lp[1]:
            lp_v, lg = lp_term(x, lp[0])
            lp_v /= per_image * n
            grad = grad + factor * lp[1] / per_image * lg * span
            total += lp[1] * lp_v
        if tv and tv[1]:
            tv_v, tg = tv_term(x, tv[0])
            tv_v /= per_image * n
            grad = grad + factor * tv[1] / per_image * tg * span
            total += tv[1] * tv_v
        history["objective"].append(float(np.mean(per_sample)))
        history["lp"].append(lp_v)
        history["tv"].append(tv_v)
        history["total"].append(total)
        P.params = opt.step(P.params, P.backward(grad))
        if hasattr(P, "after_step"):
            P.after_step()
        bar.update(k + 1, f"objective {np.mean(per_sample):.4g}", partial=lambda: picture().astype(np.float32))
    x = picture().astype(np.float32)
    pictures = np.stack([to_display(xi, model.preprocessing()) for xi in x]) if c in (1, 3) else None
    top = transparency.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    return x, pictures, history, (transparency / np.maximum(top, 1e-30)).astype(np.float32)


def _picture_shape(model, n, shape):
    if shape is None:
        s = model.inputs[0].shape
        if s is None or not all(isinstance(d, int) and d > 0 for d in s[1:]):
            from ..image import input_shape
            s = input_shape(model)
        shape = (n,) + tuple(s[1:])
    return (n,) + tuple(shape[1:])


def reconstruct(model, target, shape=None, steps=None, lr=None, lp="auto", tv="auto", jitter=0, optimizer="adam",
                seed=0, init=None, quiet=None, progress=None, param=None, transforms="auto", param_options=None,
                diversity=0.0):
    """Activation maximization: one picture per target (a class index, fv.Unit, fv.OutputTarget or fv.Objective,
    or a list of them). param: "fourier" (the default), "maco" or "pixel"; transforms: "default", "none", a
    dict or fv Transforms (the default: random crops, zooms, rotations and noise, except for pixel);
    diversity: Lucid's diversity weight across the pictures, at the layer of the first unit term (or give it
    in an Objective). Returns a Reconstruction (image, picture, history, target, transparency)."""
    from .attribution import logits_value, output_value, value_dims
    from .objectives import Objective, diversity as diversity_term
    from ..tokens import map_view
    targets = list(target) if isinstance(target, (list, tuple)) else [target]
    objectives = [Objective.of(t) for t in targets]
    n = len(objectives)
    param = param or DEFAULTS["param"]
    steps = steps if steps is not None else DEFAULTS["steps"]
    if transforms == "auto":
        transforms = None if param == "pixel" else DEFAULTS["transforms"]
    lp = (PIXEL_PRIORS["lp"] if param == "pixel" else None) if isinstance(lp, str) and lp == "auto" else lp
    tv = (PIXEL_PRIORS["tv"] if param == "pixel" else None) if isinstance(tv, str) and tv == "auto" else tv
    shape = _picture_shape(model, n, shape)
    probe = {model.graph.input_names()[0]: np.zeros((1,) + tuple(shape[1:]), np.float32)}
    hw = tuple(shape[2:])
    logits = logits_value(model)
    if diversity:
        layer = next((t.layer for o in objectives for t in o.terms if t.layer is not None), None)
        if layer is None:
            raise InputError("diversity needs a layer: maximize a unit, or add fv.Objective.diversity(layer, w)")
        objectives = [o + Objective.diversity(layer, diversity) for o in objectives]

    def value_of(term):
        if term.kind == "class":
            return logits
        if term.kind == "output":
            return output_value(model, term.target)
        return model.resolve(term.layer)
    linear_values = list(dict.fromkeys(value_of(t) for o in objectives for t in o.linear))
    div_values = list(dict.fromkeys(value_of(t) for o in objectives for t in o.nonlinear))
    dims = {v: tuple(value_dims(model, probe, v)[1:]) for v in linear_values + div_values}
    rows = {v: np.zeros((n,) + dims[v]) for v in linear_values}
    units = {}  # picture -> (value, its seed row): a single unit term, redirected while dead
    for i, o in enumerate(objectives):
        for term in o.linear:
            v = value_of(term)
            rows[v][i] += term.weight * _term_seed(model, term, dims[v], hw, probe)
        if len(o.linear) == 1 and o.linear[0].kind in ("channel", "neuron"):
            units[i] = value_of(o.linear[0])
    pre = {i: _preactivation(model, v) for i, v in units.items()}
    pre = {i: p for i, p in pre.items() if p is not None}
    for p in set(pre.values()):
        dims.setdefault(p, tuple(value_dims(model, probe, p)[1:]))
    wanted = list(dict.fromkeys(linear_values + div_values + list(pre.values())))
    specs = tuple(Target("array", v) for v in wanted)
    lowered = model.lowered(("reconstruct", specs), probe,
                            lambda table: lower(model, Rules.load("gradient"), specs, table))
    redirected = np.zeros(n, bool)
    history_redirected = []
    weights = {v: [t.weight for o in objectives for t in o.nonlinear if value_of(t) == v][0] for v in div_values}

    def objective(xb, owner):
        k = len(xb)
        seeds = {v: np.zeros((k,) + dims[v], np.float32) for v in wanted}
        for v in linear_values:
            seeds[v][:] = rows[v][owner]
        for i, p in pre.items():
            if redirected[i]:
                mine = owner == i
                seeds[p][mine] = rows[units[i]][i]
                seeds[units[i]][mine] = 0
        extra = 0.0
        if div_values:  # the diversity seed needs this batch's activations
            acts = model.run(xb, outputs=div_values)
            for v in div_values:
                a = acts[v]
                view = map_view((None,) + dims[v], hw)
                if view is not None and view.kind != "nchw":
                    from ..tokens import as_map_array
                    a = as_map_array(a, view)
                value, grad = diversity_term(a, owner)
                if view is not None and view.kind != "nchw":
                    grad = _from_map(grad, view, acts[v].shape)
                seeds[v] += (weights[v] * grad).astype(np.float32)
                extra += weights[v] * value
        feeds = dict(zip(lowered.seed_inputs, [seeds[v] for v in wanted]))
        out = model.engine.run(lowered.graph, {model.graph.input_names()[0]: xb, **feeds}, lowered.outputs)
        values = np.zeros(k)
        for v in linear_values:
            values += (out[v].reshape(k, -1).astype(np.float64) * rows[v][owner].reshape(k, -1)).sum(axis=1)
        grad = out[RELEVANCE]
        for i, p in pre.items():  # a dead unit (zero activation and gradient): climb its pre-activation
            mine = owner == i
            dead = not np.any(values[mine]) and not np.any(grad[mine])
            if dead != redirected[i] and (dead or values[mine].mean() > 0):
                redirected[i] = dead
        history_redirected.append(int(redirected.sum()))
        return values + extra, grad

    def relax():  # the priors would fight the climb of a redirected (dead) unit: off while it is
        return (~redirected).astype(np.float64)
    x, pic, hist, transparency = search(model, objective, shape, steps, param, transforms, lr, lp, tv, jitter,
                                        optimizer, seed, init, quiet, "reconstruct", progress, param_options, relax)
    if pre:
        hist["redirected"] = history_redirected
        final, _ = objective(x, np.arange(n))
        still = [i for i in pre if final[i] == 0]
        for i in still:  # a last resort: plain gradient ascent on the pre-activation, from the picture found
            x[i:i + 1] = _climb(model, lowered, wanted, dims, rows[units[i]][i], units[i], pre[i], x[i:i + 1], steps)
        final, _ = objective(x, np.arange(n))
        hist["dead"] = [i for i in pre if final[i] == 0]
        if still:
            from ..image import to_display
            pic = np.stack([to_display(xi, model.preprocessing()) for xi in x]) if shape[1] in (1, 3) else None
        for i in hist["dead"]:
            warnings.warn(FvGraphWarning(f"unit {targets[i]} stayed dead: its activation is 0 for every input the "
                                         f"optimization reached ({steps} steps climbing its pre-activation); try more "
                                         "steps, a larger lr, or another unit"))
    r = Reconstruction(x, pic, hist, targets if isinstance(target, (list, tuple)) else target)
    r.transparency = transparency
    return r


def _climb(model, lowered, wanted, dims, row, value, pre, x, steps):
    """Gradient ascent on a dead unit's pre-activation in pixel space, with no priors and no transforms, until
    the unit turns on: what is left when the picture's own search could not wake it."""
    lo, hi = _bounds(model, x.shape[1])
    opt = _Adam(0.05 * float(np.mean(hi - lo)))
    xx = x.astype(np.float64)
    for _ in range(steps):
        seeds = {v: np.zeros((1,) + dims[v], np.float32) for v in wanted}
        seeds[pre][0] = row
        out = model.engine.run(lowered.graph, {model.graph.input_names()[0]: xx.astype(np.float32),
                                               **dict(zip(lowered.seed_inputs, [seeds[v] for v in wanted]))},
                               lowered.outputs)
        if np.sum(out[value][0] * (row != 0)) > 0:
            break
        xx = np.clip(opt.step(xx, -out[RELEVANCE].astype(np.float64)), lo, hi)
    return xx.astype(np.float32)


def _from_map(grad, view, shape):
    """A gradient on the (N, C, h, w) map view back to the layer's own layout."""
    if view.kind == "nhwc":
        return grad.transpose(0, 2, 3, 1)
    out = np.zeros(shape)
    out[:, view.prefix:] = grad.transpose(0, 2, 3, 1).reshape(shape[0], -1, shape[-1])
    return out


def _term_seed(model, term, dims, hw, probe):
    """One picture's seed row for a linear term at its value (dims without the batch)."""
    from .attribution import output_seed
    from ..tokens import map_view
    seed = np.zeros(dims)
    if term.kind == "class":
        if len(dims) not in (1, 3) or not 0 <= term.index < dims[0]:
            raise InputError(f"class {term.index} is out of range for an output of shape {('N',) + dims}")
        seed[(term.index,) + (0,) * (len(dims) - 1)] = 1.0
        return seed
    if term.kind == "output":
        return output_seed(model, probe, term.target, 1)[1][0]
    view = map_view((None,) + dims, hw)
    channel_axis = 0 if view is None or view.kind == "nchw" else len(dims) - 1
    channels = dims[channel_axis]
    if term.kind == "channel" and term.index is None:  # a whole layer
        seed[:] = 1.0 / seed.size
        return seed
    if term.kind in ("channel", "neuron") and not 0 <= term.index < channels:
        raise InputError(f"channel {term.index} is out of range for layer {term.layer!r} of shape {('N',) + dims}")
    spatial = [a for a in range(len(dims)) if a != channel_axis]
    if view is not None and view.kind == "tokens":
        spatial_shape = view.grid
        offset = view.prefix
    else:
        spatial_shape, offset = tuple(dims[a] for a in spatial), 0
    count = int(np.prod(spatial_shape)) if spatial_shape else 1
    if term.kind == "channel":
        sl = [slice(None)] * len(dims)
        sl[channel_axis] = term.index
        if view is not None and view.kind == "tokens":
            sl[0] = slice(offset, None)
        seed[tuple(sl)] = 1.0 / count
        return seed
    if term.kind == "direction":
        vec = np.asarray(term.vector)
        if vec.size != channels:
            raise InputError(f"a direction of {vec.size} values for layer {term.layer!r} with {channels} channels")
        shape = [1] * len(dims)
        shape[channel_axis] = channels
        seed = np.broadcast_to(vec.reshape(shape), dims).copy() / count
        if view is not None and view.kind == "tokens":
            seed[:offset] = 0
        return seed
    # a neuron: the channel at one position (the centre of the grid by default)
    y, x = term.position if term.position is not None else (spatial_shape[0] // 2 if spatial_shape else 0,
                                                            spatial_shape[1] // 2 if len(spatial_shape) > 1 else 0)
    if len(spatial_shape) != 2 or not (0 <= y < spatial_shape[0] and 0 <= x < spatial_shape[1]):
        raise InputError(f"neuron position {(y, x)} is out of range for layer {term.layer!r} of shape "
                         f"{('N',) + dims}")
    index = [0] * len(dims)
    index[channel_axis] = term.index
    if view is not None and view.kind == "tokens":
        index[0] = offset + y * spatial_shape[1] + x
    else:
        index[spatial[0]], index[spatial[1]] = y, x
    seed[tuple(index)] = 1.0
    return seed


def _preactivation(model, value: str):
    """The input of the ReLU (or ReLU6) that produces `value`, or None: where a dead unit is redirected."""
    node = model.graph.producers().get(value)
    if node is None:
        return None
    from ..ops.activation import relu_like
    return node.inputs[0] if relu_like(node, model.graph.initializers.get) else None


def invert(model, x, layer, steps=200, lr=None, lp=(2, 1e-2), tv=(2, 0.1), jitter=0, optimizer="adam", seed=0,
           init=None, quiet=None, param="pixel", param_options=None):
    """Find an input whose representation at `layer` matches that of x (normalized squared distance), in any
    parameterization (the whole picture is compared: no random transforms)."""
    value = model.resolve(layer)
    x = np.asarray(x, np.float32)
    phi0 = model.run(x, outputs=[value])[value].astype(np.float64)
    norm = np.sum(phi0.reshape(len(phi0), -1) ** 2, axis=1).reshape((-1,) + (1,) * (phi0.ndim - 1))
    norm = np.maximum(norm, 1e-12)
    spec = Target("affine", value)
    feeds = {model.graph.input_names()[0]: x}
    lowered = model.lowered(("invert", spec), feeds, lambda table: lower(model, Rules.load("gradient"), spec, table))
    scale, offset = (-2 / norm).astype(np.float32), (2 * phi0 / norm).astype(np.float32)  # d(-distance)/d(phi)

    def objective(xx, owner):
        out = model.engine.run(lowered.graph, {model.graph.input_names()[0]: xx, "seed_scale": scale[owner],
                                               "seed_offset": offset[owner]}, lowered.outputs)
        phi = out[value].astype(np.float64)
        dist = np.sum(((phi - phi0[owner]) ** 2 / norm[owner]).reshape(len(phi), -1), axis=1)
        return -dist, out[RELEVANCE]

    xr, pic, hist, transparency = search(model, objective, x.shape, steps, param, None, lr, lp, tv, jitter, optimizer,
                                         seed, init, quiet, "invert", param_options=param_options)
    hist["distance"] = [-v for v in hist.pop("objective")]
    r = Reconstruction(xr, pic, hist, layer)
    r.transparency = transparency
    return r
