"""The field's metrics for a map, per image (#24): is it faithful (ROAD, faithfulness correlation), does it
point at the object (pointing game, energy-based pointing), is it stable (max-sensitivity), is it concise
(sparseness, complexity), and the CAM papers' ADCC (average drop, coherency, complexity)?

Every metric works on a batch x (N, C, H, W) and maps (N, C, H, W) or (N, h, w). Unless said otherwise a
pixel's relevance is the sum of the map over channels, at the input's size (faithfulness.pixel_relevance:
maps at another resolution are resized bilinearly first), so that maps of different methods compare on the
same grid. Scores are read as deletion/insertion read them: the target's softmax probability for class
targets (softmax=False: its logit), otherwise the target's score. Model runs go in batches on the model's
engine. Formulas and sources are in each function's docstring; tools/compare_quantus.py checks them
against Quantus (Hedstroem et al. 2023) on the same maps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .faithfulness import Evaluation, canvas, pixel_relevance

METRICS = ("road-morf", "road-lerf", "faithfulness-correlation", "pointing-game", "energy-pointing",
           "max-sensitivity", "sparseness", "complexity", "adcc")
# MuFidelity (Xplique) is Bhatt et al.'s faithfulness correlation under another name: the same function
ALIASES = {"mufidelity": "faithfulness-correlation"}
BETTER = {"road-morf": "lower", "road-lerf": "higher", "faithfulness-correlation": "higher",
          "pointing-game": "higher", "energy-pointing": "higher", "max-sensitivity": "lower",
          "sparseness": "higher", "complexity": "lower", "adcc": "higher"}
NEEDS_REGIONS = ("pointing-game", "energy-pointing")
FRACTIONS = tuple(np.round(np.arange(1, 10) / 10, 1))

# ROAD's neighbour weights (Rong et al. 2022): direct neighbours 1/6, diagonal ones 1/12 (they sum to 1)
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


# --------------------------------------------------------------------------- shared pieces
def _batch(model, x) -> np.ndarray:
    x = model.feeds(x)[model.graph.input_names()[0]]
    if x.ndim != 4:
        raise InputError(f"the metrics need an image batch (N, C, H, W), got shape {x.shape}")
    return x


def _pixels(relevance, x) -> np.ndarray:
    r = pixel_relevance(relevance, x.shape[2:]).astype(np.float64)
    if len(r) != len(x):
        raise InputError(f"got {len(r)} maps for a batch of {len(x)} images")
    return r


def _target(model, x, target, through_softmax):
    """The target with classes resolved at the clean x (every copy is scored on the same class)."""
    from .sampling import fixed_target
    t = fixed_target(model, x, target, through_softmax)
    return t, isinstance(t, np.ndarray) and t.dtype.kind in "iu"


def _row(t, i):
    return t[i:i + 1] if isinstance(t, np.ndarray) else t


def _scores(model, copies, t, through_softmax, probabilities, top=False):
    """The target's score on each copy (variants of one image), in memory-capped batches; with top, also
    whether each copy's predicted class is still the target's (nan where the output is not (N, classes))."""
    from .attribution import target_scores
    from .sampling import _tile, in_model_batches, rows_per_batch

    def one(rows, tt):
        s, out = target_scores(model, rows, tt, through_softmax, probabilities)
        out = np.asarray(out)
        kept = (out.reshape(len(rows), -1).argmax(axis=1) == tt).astype(float) \
            if top and out.ndim == 2 and len(out) == len(rows) and isinstance(tt, np.ndarray) \
            and tt.dtype.kind in "iu" else \
            np.full(len(rows), np.nan)
        return np.stack([s, kept], axis=1)

    per = max(1, rows_per_batch(model, copies[:1]) * 3)  # forward passes only
    got = np.concatenate([in_model_batches(model, one, copies[b:b + per], _tile(t, len(copies[b:b + per])))
                          for b in range(0, len(copies), per)])
    return (got[:, 0], got[:, 1]) if top else got[:, 0]


def pearson(a, b) -> float:
    """Pearson's r = cov(a, b) / (std a std b); nan when either is constant."""
    a, b = np.asarray(a, np.float64) - np.mean(a), np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------- ROAD
def impute(image, removed, noise=0.0, rng=None) -> np.ndarray:
    """Noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
    Attribution Methods", ICML): every removed pixel v_i is the weighted mean of its 8 neighbours,
    v_i = sum_j w_j v_j / sum_j w_j (w = 1/6 for the 4 direct neighbours, 1/12 for the diagonal ones, the sum
    over the neighbours inside the image), one sparse linear system for all removed pixels (known neighbours
    go to the right-hand side), solved with scipy.sparse.linalg.spsolve for every channel at once; then
    Gaussian noise of std `noise` (in the input's units; ROAD's default 0.01) is added to the removed pixels
    only. image (C, H, W), removed (H, W) bool; the removed pixels must not be the whole image. Removing
    pixels by any constant leaks the ranking through the mask's shape; imputing from the neighbours does not
    (ROAD's argument), and the symmetric weights reproduce any plane exactly away from the border."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve
    image = np.asarray(image)
    c, h, w = image.shape
    removed = np.asarray(removed, bool)
    rows, cols = np.nonzero(removed)
    m = len(rows)
    if m == 0:
        return image.copy()
    if m == h * w:
        raise InputError("imputation needs at least one pixel kept")
    var = -np.ones((h, w), np.int64)
    var[rows, cols] = np.arange(m)
    flat = image.reshape(c, -1).astype(np.float64)
    diag, rhs = np.zeros(m), np.zeros((m, c))
    ii, jj, vv = [np.arange(m)], [np.arange(m)], []
    for dr, dc, wt in NEIGHBOURS:
        r2, c2 = rows + dr, cols + dc
        inside = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        src, r2, c2 = np.nonzero(inside)[0], r2[inside], c2[inside]
        diag[src] += wt
        nb = var[r2, c2]
        unknown = nb >= 0
        ii.append(src[unknown])
        jj.append(nb[unknown])
        vv.append(np.full(int(unknown.sum()), -wt))
        rhs[src[~unknown]] += wt * flat[:, r2[~unknown] * w + c2[~unknown]].T  # src is unique per offset
    a = coo_matrix((np.concatenate([diag] + vv), (np.concatenate(ii), np.concatenate(jj))), shape=(m, m)).tocsc()
    sol = np.asarray(spsolve(a, rhs)).reshape(m, c)
    if noise:
        sol = sol + noise * (rng if rng is not None else np.random.default_rng(0)).standard_normal((m, c))
    out = flat.copy()
    out[:, rows * w + cols] = sol.T
    return out.reshape(c, h, w).astype(image.dtype)


def road(model, x, relevance, order="morf", target=None, fractions=FRACTIONS, noise=0.01, seed=0,
         through_softmax=False, softmax=True) -> Evaluation:
    """ROAD, RemOve And Debias (Rong et al. 2022): for each fraction p (default 0.1..0.9) the round(p H W)
    most relevant pixels (order='morf', most relevant first) or least relevant (order='lerf') are removed
    from all channels and filled by noisy linear imputation (impute; the k-th fraction's noise drawn from
    numpy's default_rng((seed, k)), the same for every image, so an image's curve does not depend on its
    batch); the curve is the target's score at each fraction (softmax probability for class targets, else the
    score over the clean image's), the AUC the trapezoid rule over the fractions given (0.1..0.9: at most 0.8
    for probabilities). MoRF: lower is better; LeRF: higher is better. extras["kept"]: whether the predicted
    class is still the target at each fraction (the accuracy ROAD and Quantus report), for class targets."""
    from .attribution import target_scores
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    fractions = np.asarray(fractions, np.float64).reshape(-1)
    if not len(fractions) or (fractions < 0).any() or (fractions >= 1).any():
        raise InputError(f"ROAD's fractions must lie in [0, 1), got {fractions.tolist()}")
    x = _batch(model, x)
    n, c, h, w = x.shape
    r = _pixels(relevance, x)
    t, is_class = _target(model, x, target, through_softmax)
    probs = is_class and softmax
    counts = np.round(fractions * h * w).astype(int)
    scores, kept = np.zeros((n, len(fractions))), np.zeros((n, len(fractions)))
    for i in range(n):
        key = -r[i].reshape(-1) if order == "morf" else r[i].reshape(-1)
        rank = np.empty(h * w, np.int64)
        rank[np.argsort(key, kind="stable")] = np.arange(h * w)
        rank = rank.reshape(h, w)
        copies = np.stack([impute(x[i], rank < k, noise, np.random.default_rng((seed, j)))
                           for j, k in enumerate(counts)])
        scores[i], kept[i] = _scores(model, copies, _row(t, i), through_softmax, probs, top=True)
    if not is_class:
        clean = target_scores(model, x, t, through_softmax)[0]
        scores = scores / np.where(clean == 0, 1, clean)[:, None]
    auc = (getattr(np, "trapezoid", None) or np.trapz)(scores, fractions, axis=1)
    return Evaluation(f"road-{order}", auc, scores, fractions,
                      {"kept": kept, "noise": noise, "seed": seed, "order": order})


# --------------------------------------------------------------------------- faithfulness correlation
def faithfulness_correlation(model, x, relevance, target=None, subset=None, draws=100, baseline=0.0, seed=0,
                             through_softmax=False, softmax=True, return_samples=False):
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating Feature-based Model
    Explanations", IJCAI): mu_F = corr_S( sum_{i in S} g_i , f(x) - f(x with x_S = baseline) ) over `draws`
    random subsets S of `subset` pixels (all channels of a pixel together; an int, or a fraction of the H W
    pixels; default min(224, H W / 2), Quantus's 224), Pearson's r. The subsets come from numpy's
    default_rng(seed), `draws` calls of choice(H W, subset, replace=False), the same for every image.
    baseline: a number, one per channel, 'mean' or 'blur' (as deletion's fill). f: the target's softmax
    probability for class targets (softmax=False: the logit), else its score. Higher is better (1: the map's
    sums predict the drops linearly). MuFidelity (Xplique) is this same quantity under another name.
    Returns (N,) values; with return_samples also the (N, draws) relevance sums and score drops."""
    from .attribution import target_scores
    if not isinstance(draws, (int, np.integer)) or draws < 2:
        raise InputError(f"draws must be an integer of at least 2, got {draws!r}")
    x = _batch(model, x)
    n, c, h, w = x.shape
    r = _pixels(relevance, x)
    s = _subset_size(subset, h * w)
    base = canvas(model, x, baseline)
    t, is_class = _target(model, x, target, through_softmax)
    probs = is_class and softmax
    rng = np.random.default_rng(seed)
    subsets = np.stack([rng.choice(h * w, s, replace=False) for _ in range(draws)])
    clean = target_scores(model, x, t, through_softmax, probs)[0]
    sums, drops, values = np.zeros((n, draws)), np.zeros((n, draws)), np.zeros(n)
    for i in range(n):
        copies = np.repeat(x[i:i + 1], draws, axis=0).reshape(draws, c, h * w)
        b = base[i].reshape(c, h * w)
        for k, sub in enumerate(subsets):
            copies[k][:, sub] = b[:, sub]
        drops[i] = clean[i] - _scores(model, copies.reshape(draws, c, h, w), _row(t, i), through_softmax, probs)
        sums[i] = r[i].reshape(-1)[subsets].sum(axis=1)
        values[i] = pearson(sums[i], drops[i])
    return (values, sums, drops) if return_samples else values


mufidelity = faithfulness_correlation  # the same quantity (Xplique's name): one function


def _subset_size(subset, pixels: int) -> int:
    if subset is None:
        return max(1, min(224, pixels // 2))
    s = round(subset * pixels) if isinstance(subset, float) and 0 < subset < 1 else subset
    if not isinstance(s, (int, np.integer)) or not 1 <= s < pixels:
        raise InputError(f"subset must be a pixel count in [1, {pixels}) or a fraction in (0, 1), got {subset!r}")
    return int(s)


# --------------------------------------------------------------------------- localisation
def box_mask(boxes, size) -> np.ndarray:
    """(H, W) bool: the union of boxes (x0, y0, x1, y1) in the input's pixels, x to the right and y down,
    x1 and y1 exclusive as in slices (a box covers columns floor(x0) .. ceil(x1) - 1); refuses a box outside
    the input or empty."""
    h, w = size
    b = np.asarray(boxes, np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or not len(b):
        raise InputError(f"boxes must be (x0, y0, x1, y1) or a list of them, got shape {np.shape(boxes)}")
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in b:
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if not (x1 > x0 and y1 > y0) or c1 <= c0 or r1 <= r0:
            raise InputError(f"box {[float(v) for v in (x0, y0, x1, y1)]} does not lie in the {w}x{h} input "
                             f"(x0 < x1 and y0 < y1 in the input's pixels)")
        mask[r0:r1, c0:c1] = True
    return mask


def _resize_mask(mask, size) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
    if mask.ndim != 2:
        raise InputError(f"a mask must be (H, W), got shape {mask.shape}")
    m = mask > (mask.max() / 2 if mask.dtype.kind in "iuf" and mask.max() > 1 else 0)
    if m.shape != tuple(size):
        from PIL import Image
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 127
    if not m.any():
        raise InputError("the mask is empty (no pixel inside the region)")
    return m


def region_mask(region, size, name=None) -> np.ndarray:
    """One image's region as an (H, W) bool mask: a mask array (nonzero inside; 0/255 images: above half
    their maximum; resized to the input by nearest neighbour), a box (x0, y0, x1, y1), a list of boxes, or a
    file (load_regions)."""
    if isinstance(region, (str, Path)):
        return load_regions(region, size, name)
    if isinstance(region, np.ndarray) and region.ndim >= 2 and region.shape[-1] != 4 or \
            isinstance(region, np.ndarray) and region.ndim >= 2 and region.dtype == bool:
        return _resize_mask(region, size)
    return box_mask(region, size)


def load_regions(path, size, name=None) -> np.ndarray:
    """Regions from a file, as an (H, W) bool mask at the input's size:
    - .json: a box [x0, y0, x1, y1], a list of boxes, {"boxes": [...], "size": [W, H]} (boxes given in an
      image of that size, scaled to the input; without "size" they are in the input's pixels), or an object
      keyed by image file name ({"cat.jpg": boxes or that object}; `name` picks the entry);
    - .npy: a 2-D array, nonzero inside;
    - an image (.png, ...): grey levels, inside above half the maximum.
    Masks are resized whole to the input (no crop): give them for the picture as the model sees it."""
    import json
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no region file {path}")
    h, w = size
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not JSON ({e})") from None
        if isinstance(data, dict) and "boxes" not in data:
            key = next((k for k in (name, Path(str(name)).name if name else None) if k and k in data), None)
            if key is None:
                raise InputError(f"{path} has no boxes for image {name!r} (it has {', '.join(map(str, data))})")
            data = data[key]
        src = None
        if isinstance(data, dict):
            src, data = data.get("size"), data.get("boxes")
        try:
            boxes = np.asarray(data, np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            raise InputError(f"{path}: boxes must be [x0, y0, x1, y1] numbers") from None
        if src is not None:
            sw, sh = (float(v) for v in src)
            boxes = boxes * np.array([w / sw, h / sh, w / sw, h / sh])
        try:
            return box_mask(boxes, size)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    if path.suffix.lower() == ".npy":
        return _resize_mask(np.load(path, allow_pickle=False), size)
    from PIL import Image
    try:
        im = Image.open(path).convert("L")
    except OSError as e:
        raise InputError(f"{path}: not a mask image ({e})") from None
    return _resize_mask(np.asarray(im), size)


def _regions(regions, n, size, names=None) -> list:
    if isinstance(regions, (str, Path)) or (n == 1 and _is_one(regions)):
        regions = [regions] * n if isinstance(regions, (str, Path)) else [regions]
    if isinstance(regions, np.ndarray) and regions.ndim == 3 and len(regions) == n:
        regions = list(regions)
    if n == 1 and len(regions) != 1 and _boxes_shape(regions):
        regions = [regions]  # one image's several boxes
    if len(regions) != n:
        raise InputError(f"got regions for {len(regions)} images, the batch has {n}")
    return [region_mask(g, size, names[i] if names else None) for i, g in enumerate(regions)]


def _is_one(region) -> bool:
    """A single image's region rather than one per image: a mask, or one box (4 numbers)."""
    if isinstance(region, np.ndarray) and region.ndim == 2 and region.shape[-1] != 4:
        return True
    try:
        return np.asarray(region, np.float64).shape == (4,)
    except (TypeError, ValueError):
        return False


def _boxes_shape(region) -> bool:
    try:
        a = np.asarray(region, np.float64)
    except (TypeError, ValueError):
        return False
    return a.ndim == 2 and a.shape[1] == 4 and not (isinstance(region, np.ndarray) and region.dtype == bool)


def pointing_game(relevance, regions, size=None, tolerance=15) -> np.ndarray:
    """Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop", IJCV): 1 (a hit)
    when the map's maximum lies within `tolerance` pixels (Euclidean, in the input's pixels; the paper's 15)
    of the region, else 0. Ties: a hit only when every tied maximum is (a flat map does not hit by chance;
    Quantus counts any). regions: per image a mask, a box, boxes or a file (region_mask); size: the input's
    (H, W), default the map's own."""
    from scipy.ndimage import distance_transform_edt
    r = np.asarray(relevance)
    size = tuple(size or r.shape[-2:])
    r = pixel_relevance(r, size).astype(np.float64)
    hits = np.zeros(len(r))
    for i, m in enumerate(_regions(regions, len(r), size)):
        near = distance_transform_edt(~m) <= tolerance
        hits[i] = float(near[r[i] == r[i].max()].all())
    return hits


def energy_pointing(relevance, regions, size=None) -> np.ndarray:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, CVPR workshops, Sec. 4.2): the share of the
    map's positive energy inside the region, sum_{inside} max(L, 0) / sum_{all} max(L, 0) (L the per-pixel
    relevance); nan for a map with no positive value. Higher is better; a uniform map scores the region's
    area share."""
    r = np.asarray(relevance)
    size = tuple(size or r.shape[-2:])
    r = np.maximum(pixel_relevance(r, size).astype(np.float64), 0)
    out = np.zeros(len(r))
    for i, m in enumerate(_regions(regions, len(r), size)):
        total = r[i].sum()
        out[i] = r[i][m].sum() / total if total > 0 else np.nan
    return out


# --------------------------------------------------------------------------- robustness
def max_sensitivity(model, x, explain, radius=0.02, draws=10, seed=0, target=None, input_range=None,
                    through_softmax=False) -> np.ndarray:
    """Max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations", NeurIPS),
    relative as Quantus computes it: max_k ||e(x + d_k) - e(x)|| / ||e(x)|| (Frobenius norms over each map as
    the method returns it) over `draws` perturbations d_k uniform in the L-inf ball of radius
    radius * (hi - lo), (lo, hi) the input's range (input_range, default the model's preprocessing range,
    per channel where it has one per channel). d_k = radius * (hi - lo) * U(-1, 1) of x's shape, drawn in
    order k = 1..draws from numpy's default_rng(seed). explain: a function (model, x) -> relevance, or a
    method as text ('gradient', 'lrp-epsilon:epsilon=0.01'), run with the target fixed at x's classes. Lower
    is better; 0 for a map that does not depend on x; inf when e(x) = 0 and a perturbed map is not."""
    x = _batch(model, x)
    if not isinstance(draws, (int, np.integer)) or draws < 1:
        raise InputError(f"draws must be a positive integer, got {draws!r}")
    if isinstance(explain, str):
        from .registry import run_spec
        t, _ = _target(model, x, target, through_softmax)
        spec = explain
        explain = lambda m, xx: run_spec(m, xx, spec, t).relevance  # noqa: E731
    lo, hi = input_range if input_range is not None else model.input_bounds()
    lo, hi = np.asarray(lo, np.float64).reshape(1, -1, 1, 1), np.asarray(hi, np.float64).reshape(1, -1, 1, 1)
    if lo.shape[1] not in (1, x.shape[1]):
        lo, hi = lo.min(), hi.max()
    span = radius * (hi - lo)
    e0 = np.asarray(explain(model, x), np.float64).reshape(len(x), -1)
    den = np.linalg.norm(e0, axis=1)
    rng = np.random.default_rng(seed)
    worst = np.zeros(len(x))
    for _ in range(draws):
        d = span * rng.uniform(-1.0, 1.0, x.shape)
        e = np.asarray(explain(model, (x + d).astype(x.dtype)), np.float64).reshape(len(x), -1)
        num = np.linalg.norm(e - e0, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, 0.0))
        worst = np.maximum(worst, ratio)
    return worst


# --------------------------------------------------------------------------- conciseness
def _abs_pixels(relevance, size):
    r = np.asarray(relevance)
    return np.abs(pixel_relevance(r, tuple(size or r.shape[-2:])).astype(np.float64)).reshape(len(r), -1)


def sparseness(relevance, size=None) -> np.ndarray:
    """Sparseness as the Gini index of |map| (Chalasani et al. 2020, "Concise Explanations of Neural Networks
    using Adversarial Training", ICML): with a_(1) <= ... <= a_(n) the sorted |pixel relevance|,
    G = sum_i (2i - n - 1) a_(i) / (n sum_i a_i): 0 for a uniform map, 1 - 1/n for one nonzero pixel; nan for
    a zero map. Higher is more concise. (Quantus adds 1e-7 to every entry first.) size: the input's (H, W),
    default the map's own."""
    a = np.sort(_abs_pixels(relevance, size), axis=1)
    n = a.shape[1]
    total = a.sum(axis=1)
    g = ((2 * np.arange(1, n + 1) - n - 1) * a).sum(axis=1)
    return np.where(total > 0, g / (n * np.where(total > 0, total, 1)), np.nan)


def complexity(relevance, size=None) -> np.ndarray:
    """Complexity (Bhatt, Weller & Moura 2020): the entropy of the fractional contributions
    p_i = |g_i| / sum_j |g_j|, H = -sum_i p_i ln p_i (0 ln 0 = 0), in nats: ln n for a uniform map, 0 for one
    nonzero pixel; nan for a zero map. Lower is more concise."""
    a = _abs_pixels(relevance, size)
    total = a.sum(axis=1, keepdims=True)
    p = a / np.where(total > 0, total, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(axis=1)
    return np.where(total[:, 0] > 0, h, np.nan)


# --------------------------------------------------------------------------- ADCC
def unit_scaled(relevance, size) -> np.ndarray:
    """Pixel relevance (N, H, W) min-max scaled to [0, 1] per map (left as it is when already within [0, 1];
    0 for a constant map), as the CAM metrics read a map."""
    r = pixel_relevance(np.asarray(relevance), tuple(size)).astype(np.float64)
    out = np.empty_like(r)
    for i, m in enumerate(r):
        lo, hi = m.min(), m.max()
        out[i] = m if lo >= 0 and hi <= 1 else (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return out


def adcc(model, x, relevance, explain, target=None, through_softmax=False, softmax=True) -> dict:
    """ADCC (Poppi et al. 2021, "Revisiting the Evaluation of Class Activation Mapping for Explainability",
    CVPR workshops), the harmonic mean of three scores of the map S (unit_scaled):
    average drop AD = max(0, y - o) / y, y the target's score on x and o on the explanation map x * S (the
    picture times S, then preprocessed: lo + (x - lo) S, lo the input of a black pixel, so that masked pixels
    go black as in the paper); coherency (1 + r) / 2, r Pearson's correlation of S with the map of the same
    method and target on x * S; complexity mean(S). ADCC = 3 / (1 / coherency + 1 / (1 - complexity) +
    1 / (1 - AD)), 0 where a term is 0. Higher is better. explain: as max_sensitivity's. Scores are
    probabilities for class targets (softmax=False: logits). Returns {adcc, coherency, complexity,
    average_drop}: arrays (N,)."""
    x = _batch(model, x)
    t, is_class = _target(model, x, target, through_softmax)
    if isinstance(explain, str):
        from .registry import run_spec
        spec = explain
        explain = lambda m, xx: run_spec(m, xx, spec, t).relevance  # noqa: E731
    S = unit_scaled(relevance, x.shape[2:])
    if len(S) != len(x):
        raise InputError(f"got {len(S)} maps for a batch of {len(x)} images")
    lo = np.asarray(model.input_bounds()[0], np.float64).reshape(1, -1, 1, 1)
    masked = (lo + (x - lo) * S[:, None]).astype(x.dtype)
    probabilities = softmax and is_class
    out = {k: np.zeros(len(x)) for k in ("adcc", "coherency", "complexity", "average_drop")}
    again = unit_scaled(explain(model, masked), x.shape[2:])
    for i in range(len(x)):
        y, o = _scores(model, np.concatenate([x[i:i + 1], masked[i:i + 1]]), _row(t, i), through_softmax,
                       probabilities)  # the image and its explanation map in one run
        ad = max(0.0, y - o) / y if y != 0 else 0.0
        r = pearson(S[i].ravel(), again[i].ravel())
        coh = (1 + r) / 2 if np.isfinite(r) else 0.0
        com = float(S[i].mean())
        terms = (coh, 1 - com, 1 - ad)
        out["adcc"][i] = 3 / sum(1 / v for v in terms) if min(terms) > 0 else 0.0
        out["coherency"][i], out["complexity"][i], out["average_drop"][i] = coh, com, ad
    return out


# --------------------------------------------------------------------------- all of them
def metric_name(name: str) -> str:
    """A metric's canonical name (aliases such as 'mufidelity' resolved); refuses unknown names."""
    name = ALIASES.get(name, name)
    if name not in METRICS:
        raise InputError(f"unknown metric {name!r}: use one of {', '.join(METRICS + tuple(ALIASES))}")
    return name


def evaluate_metrics(model, images, methods, metrics=METRICS, target=None, boxes=None, *, fractions=FRACTIONS,
                     noise=0.01, subset=None, draws=100, baseline=0.0, tolerance=15, radius=0.02,
                     sensitivity_draws=10, seed=0, through_softmax=False, softmax=True) -> dict:
    """Each method's map (text as `fvgraph check` takes it, e.g. 'lrp-epsilon:epsilon=0.01', run through
    registry.run_spec) on each image, scored by each metric (names of METRICS or ALIASES). images: image
    files (loaded with the model's preprocessing) or an (N, C, H, W) array. boxes (needed by the pointing
    metrics): one region per image (a mask, a box, a list of boxes, a file: region_mask), or a dict keyed by
    image path or file name, or one .json file keyed by file names (load_regions). The target is resolved
    per image at the clean image (the same class for every perturbed copy). Returns {"results": [{image,
    method, metric, value} (+ curve, fractions and kept for ROAD), ...], "mean": {method: {metric: mean over
    the images, nan ignored}}, "better": {metric: 'higher' | 'lower'}}."""
    from .registry import run_spec
    metrics = [metric_name(m) for m in ([metrics] if isinstance(metrics, str) else metrics)]
    if not metrics:
        raise InputError(f"no metric given: use {', '.join(METRICS)}")
    if isinstance(methods, str):
        methods = [methods]
    if any(m in NEEDS_REGIONS for m in metrics) and boxes is None:
        raise InputError("the pointing metrics need boxes or masks (boxes=, or --boxes FILE)")
    items = _images(model, images)
    found = []
    for k, (name, x) in enumerate(items):
        region = None
        if boxes is not None and any(m in NEEDS_REGIONS for m in metrics):
            region = _regions([_region_for(boxes, k, name, len(items))], 1, x.shape[2:], [name])
        t, _ = _target(model, x, target, through_softmax)
        for meth in methods:
            rel = run_spec(model, x, meth, t).relevance
            for metric in metrics:
                row = {"image": name, "method": meth, "metric": metric}
                if metric.startswith("road-"):
                    ev = road(model, x, rel, metric[5:], t, fractions, noise, seed, through_softmax, softmax)
                    row.update(value=float(ev.auc[0]), curve=[float(v) for v in ev.scores[0]],
                               fractions=[float(v) for v in ev.fractions],
                               kept=[float(v) for v in ev.extras["kept"][0]])
                elif metric == "faithfulness-correlation":
                    row["value"] = float(faithfulness_correlation(model, x, rel, t, subset, draws, baseline, seed,
                                                                  through_softmax, softmax)[0])
                elif metric == "pointing-game":
                    row["value"] = float(pointing_game(rel, region, x.shape[2:], tolerance)[0])
                elif metric == "energy-pointing":
                    row["value"] = float(energy_pointing(rel, region, x.shape[2:])[0])
                elif metric == "max-sensitivity":
                    row["value"] = float(max_sensitivity(model, x, meth, radius, sensitivity_draws, seed, t,
                                                         through_softmax=through_softmax)[0])
                elif metric == "sparseness":
                    row["value"] = float(sparseness(rel, x.shape[2:])[0])
                elif metric == "adcc":
                    got = adcc(model, x, rel, meth, t, through_softmax, softmax)
                    row.update(value=float(got["adcc"][0]),
                               **{k: float(got[k][0]) for k in ("coherency", "complexity", "average_drop")})
                else:
                    row["value"] = float(complexity(rel, x.shape[2:])[0])
                found.append(row)
    mean = {}
    for meth in methods:
        mean[meth] = {}
        for metric in metrics:
            v = np.array([r["value"] for r in found if r["method"] == meth and r["metric"] == metric])
            mean[meth][metric] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return {"results": found, "mean": mean, "better": {m: BETTER[m] for m in metrics}}


def _images(model, images) -> list:
    """[(name, (1, C, H, W) input)] from files or an array batch."""
    if isinstance(images, np.ndarray):
        x = _batch(model, images)
        return [(str(i), x[i:i + 1]) for i in range(len(x))]
    from ..image import load_image
    if isinstance(images, (str, Path)):
        images = [images]
    spec = model.preprocessing()
    return [(str(p), _batch(model, load_image(p, spec))) for p in images]


def _region_for(boxes, k, name, n):
    if isinstance(boxes, (str, Path)):
        return boxes  # one file: keyed by image name if it is an object (load_regions picks the entry)
    if isinstance(boxes, dict):
        for key in (name, Path(name).name):
            if key in boxes:
                return boxes[key]
        raise InputError(f"no boxes for image {name}")
    if n == 1 and _is_one(boxes):
        return boxes
    if isinstance(boxes, np.ndarray) and boxes.ndim == 3 or isinstance(boxes, (list, tuple)):
        if len(boxes) != n:
            raise InputError(f"got boxes for {len(boxes)} images, there are {n}")
        return boxes[k]
    raise InputError(f"boxes must be a file, a dict by image, or one entry per image; got {type(boxes).__name__}")


def metric_curves(found: dict, methods) -> dict:
    """ROAD's curves of evaluate_metrics averaged over the images, as fvgraph.render.curves draws them: one
    panel per ROAD order, one (fractions, mean score) line per method."""
    panels = {}
    for metric in ("road-morf", "road-lerf"):
        rows = [r for r in found["results"] if r["metric"] == metric]
        if rows:
            panels[f"{metric} ({BETTER[metric]} is better)"] = {
                meth: (np.asarray(rows[0]["fractions"]),
                       np.mean([r["curve"] for r in rows if r["method"] == meth], axis=0))
                for meth in methods if any(r["method"] == meth for r in rows)}
    return panels
