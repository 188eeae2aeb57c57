"""Sanity checks for maps (Adebayo et al. 2018): does the map change when what the model learned is destroyed?

- Model-parameter randomization: the weighted layers' parameters are re-drawn inside a copy of fvgraph's graph
  (the model's file and graph are never touched; each step is a new Model over a graph sharing every other
  array), from the output down (order="cascade": step k has the top k layers re-drawn) or one at a time
  (order="independent": step k has layer k alone re-drawn, in the same top-down order). A map that stays the
  same (guided backpropagation, as the paper found) does not depend on what the model learned.
- Data randomization: the map of a second model (trained on shuffled labels) against the first's.

What is re-drawn (a choice, documented): a weighted layer is a Conv, ConvTranspose, Gemm or MatMul node with a
constant weight: its weight and bias, with the scale and bias of a BatchNormalization that directly follows it
(or the constant of an Add that does: an exporter's MatMul + Add); a BatchNormalization after no weighted layer
is a layer of its own (scale and bias). Running means and variances are statistics, not learned parameters,
and stay. Each tensor is re-drawn i.i.d. from a normal distribution with its own mean and standard deviation
(the scale of the trained layer kept, so activations neither vanish nor explode; a constant tensor stays
constant), seeded per layer by (seed, the layer's position from the top), so every order draws the same values.

Every step explains x with the same target: the class the original model predicts (or the target given).
Similarity to the original map, per step and image, of a = sum over channels of |map| (a CAM's map as is):
- spearman: Spearman's rank correlation of a (ties get their average rank);
- ssim: the structural similarity (Wang et al. 2004) of a scaled to [0, 1] (min-max per map), with a Gaussian
  window of sigma 1.5 truncated at 3.5 sigma (scipy.ndimage.gaussian_filter, reflected edges), C1 = (0.01)^2,
  C2 = (0.03)^2, population (co)variances, averaged over the map;
- hog: Pearson's correlation of histogram-of-oriented-gradients features of the scaled maps (Dalal and
  Triggs 2005: [-1, 0, 1] gradients, 9 unsigned orientation bins over 0-180 degrees with linear votes between
  the two nearest bins, 8 x 8 pixel cells, blocks of 2 x 2 cells L2-Hys normalized (clipped at 0.2); maps
  smaller than two cells use what fits).
Two identical maps give 1.0 exactly on every metric; a constant map against another gives 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
METRICS = ("spearman", "ssim", "hog")


@dataclass
class RandomizationResult:
    """layers: the layers re-drawn, in order (step k: the first k of them for cascade, the k-th for
    independent); similarity: metric -> (steps, N) array; maps: each step's relevance; original: the original
    model's relevance; target: the classes explained at every step."""
    method: str
    order: str
    layers: list
    similarity: dict
    maps: list
    original: np.ndarray
    target: object = None
    extras: dict = field(default_factory=dict)

    def curve(self, metric: str = "spearman") -> np.ndarray:
        """The metric per step, averaged over the images."""
        return np.asarray(self.similarity[metric]).mean(axis=1)

    def to_dict(self) -> dict:
        """What a JSON file of the curves holds (no maps)."""
        return {"method": self.method, "order": self.order, "layers": list(self.layers),
                "similarity": {k: np.asarray(v).tolist() for k, v in self.similarity.items()},
                "target": np.asarray(self.target).tolist() if isinstance(self.target, np.ndarray) else None}


# --------------------------------------------------------------------------- the layers and their parameters
@dataclass(frozen=True)
class WeightedLayer:
    name: str                 # the weighted node's name (a BatchNormalization's of its own)
    op_type: str
    params: tuple             # initializer names re-drawn


def weighted_layers(graph) -> list[WeightedLayer]:
    """The weighted layers in graph order (input to output), each with the parameters it re-draws."""
    c = graph.initializers
    consumers = graph.consumers()
    static = _static(graph)

    def const(v):
        return bool(v) and v in c and c[v].dtype.kind == "f" and c[v].ndim >= 1

    out, claimed = [], set()
    for i, n in enumerate(graph.nodes):
        if i in static:
            continue
        params = []
        if n.op_type in WEIGHTED and len(n.inputs) > 1 and const(n.inputs[1]):
            params = [n.inputs[1]] + ([n.inputs[2]] if len(n.inputs) > 2 and const(n.inputs[2]) else [])
            users = consumers.get(n.outputs[0], [])
            if len(users) == 1:
                u = users[0]
                if u.op_type == "BatchNormalization":
                    params += [v for v in u.inputs[1:3] if const(v)]
                    claimed.add(id(u))
                elif u.op_type == "Add" and not params[1:]:
                    params += [v for v in u.inputs if v != n.outputs[0] and const(v)]
        elif n.op_type == "BatchNormalization" and id(n) not in claimed:
            params = [v for v in n.inputs[1:3] if const(v)]
        if params:
            out.append(WeightedLayer(n.name, n.op_type, tuple(dict.fromkeys(params))))
    return out


def _static(graph):
    from ..executor import shape_only_nodes
    return shape_only_nodes(graph)


def redraw(array: np.ndarray, rng) -> np.ndarray:
    """i.i.d. normal values with the tensor's own mean and standard deviation, in its dtype."""
    a = np.asarray(array, np.float64)
    return (a.mean() + a.std() * rng.standard_normal(a.shape)).astype(array.dtype)


def layer_draws(graph, top_down, seed: int) -> dict:
    """name -> re-drawn array for every parameter of the layers (top first), seeded by (seed, position)."""
    draws = {}
    for k, l in enumerate(top_down):
        rng = np.random.default_rng([int(seed), k])
        draws.update((p, redraw(graph.initializers[p], rng)) for p in l.params)
    return draws


def randomized_graph(graph, layers, draws: dict):
    """A copy of the graph with the layers' parameters replaced by `draws` (name -> array): new initializer
    and weight-file dicts, the nodes and every other array shared; the re-drawn weights no longer point into
    the model's file."""
    from dataclasses import replace
    names = {p for l in layers for p in l.params}
    inits = dict(graph.initializers)
    inits.update({k: draws[k] for k in names})
    return replace(graph, initializers=inits, inputs=list(graph.inputs), outputs=list(graph.outputs),
                   weight_files={k: v for k, v in graph.weight_files.items() if k not in names},
                   value_info=dict(graph.value_info), metadata=dict(graph.metadata))


def model_over(model, graph):
    """A Model over a modified graph with the original's engine, device, preprocessing and labels (no disk
    cache: its weights are not the file's)."""
    from ..engines import ExecutorEngine, OrtEngine
    from ..model import Model
    if isinstance(model.engine, ExecutorEngine):
        engine = model.engine.name
    else:
        engine = "onnxruntime" if isinstance(model.engine, OrtEngine) and model.engine.fallback is None else "auto"
    threads = getattr(model.engine, "threads", None)
    spec = {k: v for k, v in (getattr(model, "_preprocess", None) or {}).items() if k != "layout"}
    new = Model(graph, device=model.device, source="", engine=engine, threads=threads, preprocess=spec or None,
                labels=getattr(model, "_labels", None))
    new.disk_cache = False
    return new


# --------------------------------------------------------------------------- similarity
def as_2d(rel: np.ndarray) -> np.ndarray:
    """One sample's map as a 2-D magnitude: |map| summed over channels for (C, H, W), |map| for (H, W)."""
    a = np.abs(np.asarray(rel, np.float64))
    if a.ndim == 3:
        return a.sum(axis=0)
    if a.ndim == 2:
        return a
    return a.reshape(1, -1)


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    da, db = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(da * da) * np.sum(db * db))
    if not den > 0:
        return 0.0
    return float(np.clip(np.sum(da * db) / den, -1.0, 1.0))


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's of the ranks."""
    from scipy.stats import rankdata
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    return _pearson(rankdata(a), rankdata(b))


def _constant(a) -> bool:
    a = np.asarray(a)
    return a.size == 0 or bool(a.min() == a.max())


def unit_range(a) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant map: zeros)."""
    a = np.asarray(a, np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


SSIM_SIGMA, SSIM_TRUNCATE, K1, K2 = 1.5, 3.5, 0.01, 0.03


def _trivial(x, y, a, b):
    """1 for identical maps, 0 when one is constant (no structure to compare), else None."""
    if np.array_equal(x, y):
        return 1.0
    if _constant(a) or _constant(b):
        return 0.0
    return None


def ssim(a, b) -> float:
    """Mean structural similarity of two 2-D maps, each scaled to [0, 1] (data range 1)."""
    from scipy.ndimage import gaussian_filter
    x, y = unit_range(a), unit_range(b)
    known = _trivial(x, y, a, b)
    if known is not None:
        return known

    def g(v):
        return gaussian_filter(v, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")
    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx * mx, g(y * y) - my * my, g(x * y) - mx * my
    c1, c2 = K1 ** 2, K2 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def hog(image, orientations: int = 9, cell: int = 8, block: int = 2) -> np.ndarray:
    """Histogram-of-oriented-gradients features of a 2-D image (see the module's docstring)."""
    im = np.asarray(image, np.float64)
    gy, gx = np.zeros_like(im), np.zeros_like(im)
    gy[1:-1] = im[2:] - im[:-2]
    gx[:, 1:-1] = im[:, 2:] - im[:, :-2]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    width = 180.0 / orientations
    pos = ang / width - 0.5  # bin centres at (k + 0.5) * width
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    ch, cw = max(1, min(cell, im.shape[0])), max(1, min(cell, im.shape[1]))
    ny, nx = max(1, im.shape[0] // ch), max(1, im.shape[1] // cw)
    hist = np.zeros((ny, nx, orientations))
    rows, cols = np.arange(ny * ch) // ch, np.arange(nx * cw) // cw
    r, c = np.meshgrid(rows, cols, indexing="ij")
    m, l, f = mag[:ny * ch, :nx * cw], lo[:ny * ch, :nx * cw], frac[:ny * ch, :nx * cw]
    np.add.at(hist, (r, c, l % orientations), m * (1 - f))
    np.add.at(hist, (r, c, (l + 1) % orientations), m * f)
    by, bx = min(block, ny), min(block, nx)
    feats = []
    for i in range(ny - by + 1):
        for j in range(nx - bx + 1):
            v = hist[i:i + by, j:j + bx].ravel()
            v = v / np.sqrt(np.sum(v * v) + 1e-10)
            v = np.minimum(v, 0.2)
            feats.append(v / np.sqrt(np.sum(v * v) + 1e-10))
    return np.concatenate(feats)


def hog_similarity(a, b) -> float:
    x, y = unit_range(a), unit_range(b)
    known = _trivial(x, y, a, b)
    return known if known is not None else _pearson(hog(x), hog(y))


def similarities(original, other) -> dict:
    """metric -> (N,) similarity of each sample's map in `other` to its map in `original`."""
    out = {k: [] for k in METRICS}
    for a, b in zip(original, other):
        a2, b2 = as_2d(a), as_2d(b)
        out["spearman"].append(spearman(a2, b2))
        out["ssim"].append(ssim(a2, b2))
        out["hog"].append(hog_similarity(a2, b2))
    return {k: np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------- the tests
def _explain(model, x, method, target, options):
    return np.asarray(model.explain(x, method, target=target, **options).relevance)


def _fixed(model, x, target):
    from ..explanation import OutputTarget, Unit
    from .sampling import fixed_target
    if isinstance(target, (Unit, OutputTarget)):
        return target
    return fixed_target(model, x, target)


def randomization(model, x, method="gradient", target=None, order="cascade", seed=0, layers=None, progress=None,
                  **options) -> RandomizationResult:
    """The model-parameter randomization test (see the module's docstring). layers: the weighted layers to
    re-draw (names or indices of model.layers; default all), taken from the output down."""
    if order not in ("cascade", "independent"):
        raise InputError(f"order must be 'cascade' or 'independent', got {order!r}")
    xs = model.feeds(x)  # channels first, as the graph the steps run takes it
    found = weighted_layers(model.graph)
    if not found:
        raise InputError("the model has no weighted layer (Conv, Gemm, MatMul or BatchNormalization with constant "
                         "parameters) to randomize")
    if layers is not None:
        by_name = {l.name: l for l in found}
        picked = []
        for ref in ([layers] if isinstance(layers, (str, int)) else layers):
            name = ref if isinstance(ref, str) and ref in by_name else _layer_name(model, ref)
            if name not in by_name:
                raise InputError(f"{ref!r} is not a weighted layer; the weighted layers are "
                                 f"{', '.join(list(by_name)[:8])}{', ...' if len(by_name) > 8 else ''}")
            picked.append(name)
        found = [l for l in found if l.name in set(picked)]
    top_down = found[::-1]
    target = _fixed(model, x, target)
    original = _explain(model, x, method, target, options)
    draws = layer_draws(model.graph, top_down, seed)
    sims, maps = {m: [] for m in METRICS}, []
    for k in range(len(top_down)):
        chosen = top_down[:k + 1] if order == "cascade" else [top_down[k]]
        step = model_over(model, randomized_graph(model.graph, chosen, draws))
        rel = _explain(step, xs, method, target, options)
        maps.append(rel)
        for m, v in similarities(original, rel).items():
            sims[m].append(v)
        if progress is not None:
            progress(k + 1, len(top_down), None)
    return RandomizationResult(method if isinstance(method, str) else getattr(method, "name", str(method)), order,
                               [l.name for l in top_down], {m: np.stack(v) for m, v in sims.items()}, maps,
                               original, target, extras={"params": {l.name: list(l.params) for l in top_down},
                                                         "seed": int(seed)})


def _layer_name(model, ref):
    """The node name behind a layer reference (a Layer's name is its node's, ':k' for later outputs)."""
    value = model.resolve(ref)
    for l in model.layers:
        if l.output == value:
            return l.name.split(":")[0]
    return None


def data_randomization(model, other_model, x, method="gradient", target=None, **options) -> RandomizationResult:
    """The data randomization test: the map of `other_model` (the same architecture trained on shuffled labels;
    a Model or a path) against `model`'s, for the class `model` predicts."""
    if not hasattr(other_model, "explain"):
        from ..model import load
        other_model = load(other_model)
    target = _fixed(model, x, target)
    original = _explain(model, x, method, target, options)
    rel = _explain(other_model, x, method, target, options)
    sims = similarities(original, rel)
    return RandomizationResult(method if isinstance(method, str) else getattr(method, "name", str(method)), "data",
                               ["data"], {m: v[None] for m, v in sims.items()}, [rel], original, target)
