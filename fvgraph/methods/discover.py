"""What a layer has learned, found across a data set: concept discovery by non-negative matrix factorization
of activations (Lucid's channel reducer, Olah et al. 2018; CRAFT, Fel et al. 2023).

A layer's activations over the images are samples of its channel space: every spatial position of every
image is one sample of C features (ReLU'd: negative parts, where a layer has them, are set to 0, as NMF
needs). At most `max_samples` positions are kept, the same share drawn at random from each image (so memory
stays bounded). NMF (scikit-learn) writes them as A ~ U D: the k rows of D are the concept directions (unit
length, non-negative), U >= 0 how much of each sits at each position. Then, per concept:

- its top images and patches: the positions with the largest coefficient in U (the coefficients of an
  image's positions for the fixed D, by non-negative least squares), with the receptive field of the
  position as the patch (fvgraph.receptive, as fvgraph.methods.examples crops its patches);
- `heatmap(model, x, direction, layer)`: the input attribution of the direction, the gradient (or another
  rule preset's reverse pass) of the sum over positions of <activation, direction>;
- its share of a class's relevance: the relevance at the layer (method=, LRP-epsilon by default) split over
  the concepts in proportion to their part of the reconstructed activation, channel by channel and position
  by position (U_k D_kc / sum_j U_j D_jc), which is how the LRP z-rule would pass relevance down through
  A = U D taken as a layer: the shares and the part no concept explains (the residual) add up to the total;
- `visualize`: a feature visualization of each direction (fvgraph reconstruct, fv.Objective.direction).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .examples import Example


@dataclass
class DiscoveredConcept:
    index: int
    direction: np.ndarray        # (C,), unit length, non-negative
    top: list                    # Example (image, coefficient, position, box), best first
    weight: float = 0.0          # its share of the sampled activation (sum of U_k |D_k|) over all concepts
    share: dict = field(default_factory=dict)   # {class: share of that class's relevance at the layer}


@dataclass
class Discovery:
    layer: str                   # the layer's value name
    concepts: list               # DiscoveredConcept, by weight (largest first)
    samples: int                 # positions factorized
    error: float                 # relative reconstruction error ||A - UD|| / ||A|| of the samples
    relevance: dict = field(default_factory=dict)  # {class: {"images", "total", "residual"}}
    method: str | None = None    # the relevance method of the shares
    preprocess: dict = field(default_factory=dict)  # the model's preprocessing (the boxes are in its pixels)
    failed: dict = field(default_factory=dict)
    pictures: dict = field(default_factory=dict)   # {concept index: feature visualization (H, W, 3)}

    @property
    def directions(self) -> np.ndarray:
        return np.stack([c.direction for c in self.concepts])

    def heatmap(self, model, x, concept: int, method="gradient"):
        return heatmap(model, x, self.concepts[concept].direction, self.layer, method)

    def to_json(self) -> dict:
        return {"layer": self.layer, "samples": self.samples, "error": self.error, "method": self.method,
                "relevance": {str(k): v for k, v in self.relevance.items()},
                "concepts": [{"index": c.index, "weight": c.weight, "direction": [float(v) for v in c.direction],
                              "share": {str(k): v for k, v in c.share.items()},
                              "top": [{"image": e.image, "score": e.score, "position": list(e.position),
                                       "box": list(e.box)} for e in c.top]} for c in self.concepts],
                "failed": {str(k): str(v) for k, v in self.failed.items()}}


# ------------------------------------------------------------------------------------------ arrays
def _as_maps(a: np.ndarray, input_hw, value="the layer") -> np.ndarray:
    """A layer's array as (N, C, h, w) (through its map view; a (N, C) vector as (N, C, 1, 1))."""
    from ..tokens import as_map_array, map_view
    if a.ndim == 2:
        return a[:, :, None, None]
    view = map_view((None,) + a.shape[1:], input_hw)
    if view is None:
        raise InputError(f"layer {value!r} of shape {a.shape} is not a map of channels")
    return as_map_array(a, view)


def positions(maps: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N * h * w, C): each position a sample, channels its features."""
    n, c = maps.shape[:2]
    return np.asarray(maps).transpose(0, 2, 3, 1).reshape(-1, c)


def factorize(samples, k, seed=0, max_iter=400):
    """NMF of non-negative (samples, C) activations into k directions: (D (k, C) with unit rows, U (samples,
    k), relative error). Negative values are set to 0 first (a ReLU)."""
    from sklearn.decomposition import NMF
    A = np.maximum(np.asarray(samples, np.float64), 0)
    if A.ndim != 2 or not len(A):
        raise InputError(f"no activations to factorize (shape {A.shape})")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= A.shape[1]:
        raise InputError(f"k must be between 1 and the layer's {A.shape[1]} channels, got {k!r}")
    if not A.any():
        raise InputError("the layer's activations are all 0 (after ReLU) on these images: nothing to factorize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the error is reported instead
        nmf = NMF(n_components=int(k), init="nndsvda", random_state=seed, max_iter=max_iter, tol=1e-5)
        U = nmf.fit_transform(A)
        D = nmf.components_
    norms = np.linalg.norm(D, axis=1)
    norms = np.where(norms > 0, norms, 1.0)
    D, U = D / norms[:, None], U * norms[None, :]
    err = float(np.linalg.norm(A - U @ D) / max(np.linalg.norm(A), 1e-300))
    return D, U, err


def coefficients(samples, directions) -> np.ndarray:
    """U >= 0 minimizing ||A - U D|| for fixed directions D (non-negative least squares per sample)."""
    from sklearn.decomposition import non_negative_factorization
    A = np.maximum(np.asarray(samples, np.float64), 0)
    D = np.asarray(directions, np.float64)
    if not A.any():
        return np.zeros((len(A), len(D)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        U, _, _ = non_negative_factorization(A, H=D, n_components=len(D), init="custom", update_H=False,
                                             max_iter=400, tol=1e-6)
    return U


def split_relevance(relevance, U, directions) -> tuple[np.ndarray, float]:
    """(relevance of each concept (k,), residual): relevance (P, C) at the layer's positions split by each
    concept's part of the reconstruction U D, channel by channel; where the reconstruction is 0 it stays
    in the residual."""
    R = np.asarray(relevance, np.float64)
    D = np.asarray(directions, np.float64)
    parts = U[:, :, None] * D[None, :, :]          # (P, k, C)
    recon = parts.sum(axis=1)                        # (P, C)
    ok = recon > 1e-12 * max(float(recon.max(initial=0)), 1e-300)
    frac = np.where(ok[:, None, :], parts / np.where(ok, recon, 1.0)[:, None, :], 0.0)
    per = (frac * R[:, None, :]).sum(axis=(0, 2))
    return per, float(R.sum() - per.sum())


# ------------------------------------------------------------------------------------------ the heatmap
def heatmap(model, x, direction, layer, method="gradient") -> np.ndarray:
    """The input attribution (N, C, H, W) of a direction at a layer: the reverse pass of `method` (a rule
    preset: "gradient" by default, "lrp-epsilon", ...) seeded at the layer by the direction at every position,
    which for the gradient is d/dx of sum over positions of <activation, direction>."""
    from ..reverse import RELEVANCE, Target, lower, rules_key
    from ..rules import Rules
    from ..tokens import map_view
    from .reconstruction import _from_map
    value = model.resolve(layer)
    feeds = model.feeds(x)
    first = model.graph.input_names()[0]
    xin = feeds[first]
    a = model.run(feeds, outputs=[value])[value]
    maps = _as_maps(a, xin.shape[2:], value)
    v = np.asarray(direction, np.float64).reshape(-1)
    if v.size != maps.shape[1]:
        raise InputError(f"a direction of {v.size} values for layer {value!r} with {maps.shape[1]} channels")
    seed = np.broadcast_to(v[None, :, None, None], maps.shape)
    if a.ndim == 2:
        seed = seed[:, :, 0, 0]
    else:
        view = map_view((None,) + a.shape[1:], xin.shape[2:])
        seed = seed if view.kind == "nchw" else _from_map(seed, view, a.shape)
    rules = Rules.load(method)
    spec = (Target("array", value),)
    lowered = model.lowered(("direction", rules_key(rules, with_values=False), spec), feeds,
                            lambda table: lower(model, rules, spec, table))
    dtype = model.shape_table(feeds).dtypes.get(value, np.float32)
    dtype = dtype if np.dtype(dtype).kind == "f" else np.float32
    run = {**feeds, lowered.seed_inputs[0]: np.ascontiguousarray(seed, dtype), **lowered.param_feeds(rules)}
    return model.engine.run(lowered.graph, run, lowered.outputs)[RELEVANCE]


# ------------------------------------------------------------------------------------------ the data set
def _sample_job(model, job):
    """A worker's batch, pass 1: (readable paths, sampled positions (m, C) float32, {path: why unreadable})."""
    from .examples import _readable_batch
    paths, start, value, per_image, seed = job
    x, ok, failed = _readable_batch(model, paths)
    if x is None:
        return ok, None, failed
    maps = _as_maps(model.run(x, outputs=[value])[value], x.shape[2:], value)
    out = []
    for j in range(len(ok)):
        p = np.maximum(positions(maps[j:j + 1]), 0)
        if len(p) > per_image:  # the same draw whatever the batch or worker: seeded by the image's index
            p = p[np.random.default_rng([seed, start + j]).choice(len(p), per_image, replace=False)]
        out.append(p.astype(np.float32))
    return ok, np.concatenate(out), failed


def _concept_job(model, job):
    """A worker's batch, pass 2: (readable paths, top coefficient (n, k) and where (n, k, 2), per image
    (class, total relevance, per concept (k,), residual) or None, {path: why unreadable})."""
    from .examples import _readable_batch
    paths, value, D, method, target = job
    x, ok, failed = _readable_batch(model, paths)
    k = len(D)
    if x is None:
        return ok, np.zeros((0, k)), np.zeros((0, k, 2), np.int64), [], failed
    maps = _as_maps(model.run(x, outputs=[value])[value], x.shape[2:], value)
    n, _, h, w = maps.shape
    U = coefficients(positions(maps), D).reshape(n, h * w, k)
    where = U.argmax(axis=1)                                      # (n, k)
    scores = np.take_along_axis(U, where[:, None, :], axis=1)[:, 0, :]
    pos = np.stack(np.unravel_index(where, (h, w)), axis=-1)
    shares = []
    if method is not None:
        from .registry import lookup, parse_spec
        name, own = parse_spec(method)
        m = lookup(name)
        e = model.explain(x, m, target=target, return_layers=(value,), **m.parse(own))
        rel = _as_maps(e.layers[value], x.shape[2:], value)
        classes = np.asarray(e.target).reshape(-1) if isinstance(e.target, np.ndarray) else np.full(n, -1)
        for j in range(n):
            R = positions(rel[j:j + 1])
            per, residual = split_relevance(R, U[j], D)
            shares.append((int(classes[j]), float(R.sum()), per, residual))
    return ok, scores, pos, shares, failed


def discover(model, images, layer, k=8, seed=0, top=9, max_samples=50_000, method="lrp-epsilon", target=None,
             batch=16, workers=1, ray_address=None, quiet=None, model_path=None, load_options=None,
             failed=None, max_iter=400) -> Discovery:
    """k concept directions of `layer` over `images` (files and folders, fvgraph.batch.image_files), with
    each one's `top` images and patches and its share of each class's relevance (method: a reverse-pass
    method of the registry, None to skip the relevance; target: a class index, or None for each image's
    predicted class). Two passes over the images (sample and factorize, then coefficients and relevance);
    workers/ray_address as fvgraph.batch.map_jobs. Unreadable images are skipped: `failed` receives
    {image: reason}, else one warning lists them."""
    from ..batch import image_files, map_jobs
    from ..receptive import WHOLE, receptive_field
    from .examples import TopK, _readable_batch, _report_failed
    from .reconstruction import Progress
    value = model.resolve(layer)
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be at least 1, got {top!r}")
    if method is not None:
        from .registry import lookup, parse_spec
        m = lookup(parse_spec(method)[0])
        if m.family != "rules":
            raise InputError(f"the relevance shares need a reverse-pass method (the LRP family, gradient, ...); "
                             f"{m.name} gives no relevance at a layer")
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    files = [str(f) for f, _ in image_files(inputs)]
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    per_image = max(1, int(max_samples) // len(files))
    source = model_path or model.source

    def run(jobs, func):
        return map_jobs(source, jobs, func, workers, ray_address, load_options) if (workers > 1 or ray_address) \
            else (func(model, j) for j in jobs)
    # pass 1: sampled positions, in the files' order whatever order the workers finish in
    jobs = [(files[i:i + batch], i, value, per_image, seed) for i in range(0, len(files), batch)]
    got, bad = {}, {}
    bar = Progress(2 * len(files), "discover", quiet)
    count = 0
    for ok, samples, why in run(jobs, _sample_job):
        bad.update(why)
        if samples is not None:
            got[ok[0]] = samples
        count += len(ok) + len(why)
        bar.update(count)
    readable = [f for f in files if f not in bad]
    if not got:
        from ..files import failure_line
        raise InputError(f"no readable images in {', '.join(map(str, inputs))}: {failure_line(bad)}")
    A = np.concatenate([got[f] for f in files if f in got])
    D, U, err = factorize(A, k, seed, max_iter)
    weight = (U * np.linalg.norm(D, axis=1)[None]).sum(axis=0)
    order = np.argsort(-weight, kind="stable")
    D, weight = D[order], weight[order] / max(weight.sum(), 1e-300)
    # pass 2: coefficients per image, top positions, relevance shares
    jobs = [(readable[i:i + batch], value, D, method, target) for i in range(0, len(readable), batch)]
    tops = TopK(list(range(len(D))), top)
    index = {f: i for i, f in enumerate(files)}
    per_class = {}
    for ok, scores, pos, shares, why in run(jobs, _concept_job):
        bad.update(why)
        for j, p in enumerate(ok):
            tops.add(index[p], p, scores[j], pos[j])
            if j < len(shares) and shares[j] is not None:
                cls, total, per, residual = shares[j]
                acc = per_class.setdefault(cls, [0, 0.0, np.zeros(len(D)), 0.0])
                acc[0] += 1
                acc[1] += total
                acc[2] += per
                acc[3] += residual
        count += len(ok) + len(why)
        bar.update(count)
    _report_failed(bad, failed)
    probe, _, _ = _readable_batch(model, [next(f for f in files if f in got)])
    hw = probe.shape[2:]
    a = model.run(probe, outputs=[value])[value]
    field_ = receptive_field(model, value, model.shape_table(model.feeds(probe))) if a.ndim == 4 else WHOLE
    concepts = []
    for i, d in enumerate(D):
        rows = [Example(path, score, pos, [0, 0, int(hw[0]), int(hw[1])] if field_ == WHOLE
                        else field_.box(pos[0], pos[1], hw)) for score, _, path, pos in tops.rows[i]]
        share = {cls: float(acc[2][i] / acc[1]) if acc[1] else 0.0 for cls, acc in per_class.items()}
        concepts.append(DiscoveredConcept(i, d.astype(np.float64), rows, float(weight[i]), share))
    relevance = {cls: {"images": acc[0], "total": float(acc[1]), "residual": float(acc[3] / acc[1]) if acc[1]
                       else 0.0} for cls, acc in sorted(per_class.items())}
    return Discovery(value, concepts, int(len(A)), err, relevance, None if method is None else str(method),
                     dict(model.preprocessing()), dict(bad))


def visualize(model, result: Discovery, steps=128, **options) -> dict:
    """{concept index: picture (H, W, 3)}: activation maximization of each direction (fvgraph reconstruct
    with fv.Objective.direction; options as reconstruct takes them). Also kept in result.pictures."""
    from .objectives import Objective
    from .reconstruction import reconstruct
    objectives = [Objective.direction(result.layer, c.direction) for c in result.concepts]
    r = reconstruct(model, objectives, steps=steps, **options)
    if r.picture is None:
        return {}
    result.pictures = {c.index: np.asarray(p) for c, p in zip(result.concepts, r.picture)}
    return result.pictures


# ------------------------------------------------------------------------------------------ pictures
def concept_picture(result: Discovery, concept: DiscoveredConcept, side=80) -> np.ndarray:
    """A concept's row: its feature visualization (when made), then its top patches, and below each patch
    the whole image with the patch's box."""
    from PIL import Image, ImageDraw

    from ..image import read_rgb, resize_crop
    pad, title = 4, 16
    vis = result.pictures.get(concept.index)
    tiles = len(concept.top) + (1 if vis is not None else 0)
    canvas = Image.new("RGB", (pad + tiles * (side + pad), title + pad + 2 * side + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shares = ", ".join(f"class {c}: {100 * s:.1f}%" for c, s in sorted(concept.share.items()))
    draw.text((pad, 2), f"concept {concept.index} ({100 * concept.weight:.1f}% of the activation)"
              + (f"; relevance {shares}" if shares else ""), fill=(0, 0, 0))
    x = pad
    if vis is not None:
        canvas.paste(Image.fromarray(np.ascontiguousarray(vis)).resize((side, side)), (x, title + pad))
        x += side + pad
    for e in concept.top:
        try:
            shown = resize_crop(read_rgb(e.image), result.preprocess)
        except Exception:  # gone or changed since: a grey tile
            shown = np.full((side, side, 3), 0.5)
        shown = np.clip(np.round(np.asarray(shown, np.float64) * (255 if np.asarray(shown).dtype != np.uint8
                                                                   else 1)), 0, 255).astype(np.uint8)
        y0, x0, y1, x1 = e.box
        patch = shown[y0:y1, x0:x1] if y1 > y0 and x1 > x0 else shown
        canvas.paste(Image.fromarray(np.ascontiguousarray(patch)).resize((side, side), Image.NEAREST),
                     (x, title + pad))
        whole = Image.fromarray(shown)
        sy, sx = side / shown.shape[0], side / shown.shape[1]
        whole = whole.resize((side, side), Image.BILINEAR)
        ImageDraw.Draw(whole).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(255, 0, 0))
        canvas.paste(whole, (x, title + 2 * pad + side))
        x += side + pad
    return np.asarray(canvas)


def write_discovery(result: Discovery, out, overwrite=False) -> list:
    """discovery.json, directions.npy (k, C) and concept_NN.png per concept, each written atomically; an
    existing file is refused (before any is written) unless overwrite. Returns the paths written."""
    from PIL import Image

    from ..errors import refuse_overwrite
    from ..files import write_atomic, write_text
    out = Path(out)
    planned = [out / "discovery.json", out / "directions.npy"] + \
        [out / f"concept_{c.index:02d}.png" for c in result.concepts]
    for p in planned:
        refuse_overwrite(p, overwrite, other_out=True)
    out.mkdir(parents=True, exist_ok=True)
    for c in result.concepts:
        pic = concept_picture(result, c)
        write_atomic(out / f"concept_{c.index:02d}.png", lambda t, p=pic: Image.fromarray(p).save(t, format="PNG"))
    write_atomic(out / "directions.npy", lambda t: np.save(t, result.directions))
    write_text(out / "discovery.json", json.dumps(result.to_json(), indent=1))
    return planned
