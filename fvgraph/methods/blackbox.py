"""Methods that only run the model forward: they serve any model, also one whose ops the reverse pass refuses.

- RISE (Petsiuk et al. 2018): `masks` random binary grids of cells x cells, each cell kept with probability p,
  upsampled bilinearly (half-pixel centres, edges clamped: ONNX Resize "linear", what the paper's skimage
  resize does) to (cells + 1) * ceil(H / cells) and cropped to H x W at a random shift in [0, ceil(H / cells));
  the saliency is sum_i score(x * M_i) M_i / (masks * p), the Monte Carlo estimate of E[score | pixel kept].
  The seed draws, in this order, the grids (rng.random((masks, cells, cells)) < p), the row shifts and the
  column shifts (rng.integers(0, cell, masks) each), so the masks do not depend on the batch size. Masked
  copies run in batches under the memory cap; score "prob" (the paper's) is the class's softmax probability.
- ReciproCAM (Byun & Lee 2022): at a layer (by default Grad-CAM's, which every path to the output passes
  through), one copy of the feature map per spatial position (i, j) that keeps only that position (or, with
  gaussian, its 3 x 3 neighbourhood weighted 1/4, 1/8, 1/16), all run as one batch through the model's tail
  (the nodes after the layer; values a skip connection carries around the layer keep their clean values, as
  in the model with the layer's output replaced by the copy), in the same graph and engine run as the
  forward (lower_reciprocam; export-explainer writes it with the scoring as a standalone model); the class's
  score on copy (i, j) is the map at
  (i, j), min-max normalized per class, then upsampled like the CAMs. Every class's map comes from the same
  batch (extras["classes"]). Token maps (N, T, C) keep their leading tokens (the class token) unmasked, as
  ViT-ReciproCAM does.
- AblationCAM (Desai & Ramaswamy 2020, as pytorch-grad-cam computes it): at a layer (Grad-CAM's by default),
  one copy of the layer's value per channel k with channel k set to 0, run in batches through the same tail;
  w_k = (y_c - y_c^k) / y_c (y_c the clean class score; the plain drop y_c - y_c^k where y_c = 0), the map
  relu(sum_k w_k A_k), upsampled like the CAMs.
- Sobol attribution (Fel et al. 2021): a g x g grid of cells, `designs` N points of a scrambled, seeded Sobol'
  sequence (scipy.stats.qmc) in 2 g^2 dimensions split into the designs A and B, and the A_B^i (A with cell i
  from B); the input times each mask, upsampled nearest (each pixel takes its cell's value), is scored
  (N (g^2 + 2) forwards); Jansen's estimator gives each cell's total index
  mean_j (f(A_j) - f(A_B^i_j))^2 / (2 Var f), the map those indices upsampled bilinearly like the CAMs.
"""
from __future__ import annotations

import functools
import math
import weakref

import numpy as np

from ..errors import InputError, OptionError
from ..explanation import Explanation, OutputTarget, Unit
from ..graph import Graph, ValueInfo
from .reconstruction import Progress

MAX_TAILS = 4  # tail graphs kept per model (each holds an onnxruntime session)
_TAILS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- RISE
def rise_grids(masks: int, cells, p: float, size, seed: int):
    """(grids (masks, ch, cw) bool, row shifts, column shifts, cell size (h, w)): what the seed draws."""
    ch, cw = _cells(cells)
    rng = np.random.default_rng(seed)
    grids = rng.random((masks, ch, cw)) < p
    cell = (math.ceil(size[0] / ch), math.ceil(size[1] / cw))
    dy = rng.integers(0, cell[0], masks)
    dx = rng.integers(0, cell[1], masks)
    return grids, dy, dx, cell


def _cells(cells):
    return (int(cells), int(cells)) if np.ndim(cells) == 0 else (int(cells[0]), int(cells[1]))


@functools.lru_cache(maxsize=16)
def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): ONNX Resize "linear" along one axis as a matrix (half-pixel centres, edges clamped);
    bilinear resizing is this matrix on each axis (R_y @ grid @ R_x^T). Made once per size (read-only)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    r = np.zeros((n_out, n_in))
    np.add.at(r, (np.arange(n_out), i0), 1 - (src - i0))
    np.add.at(r, (np.arange(n_out), i1), src - i0)
    r.flags.writeable = False
    return r


def rise_masks(grids, dy, dx, cell, size) -> np.ndarray:
    """The masks (k, H, W) of these grids: upsampled bilinearly to (cells + 1) * cell, cropped at the shifts;
    each mask is its rows' and columns' interpolation weights around its grid (only the cropped part is made)."""
    k, ch, cw = grids.shape
    H, W = size
    ry = linear_weights(ch, (ch + 1) * cell[0])[np.asarray(dy)[:, None] + np.arange(H)]  # (k, H, ch)
    rx = linear_weights(cw, (cw + 1) * cell[1])[np.asarray(dx)[:, None] + np.arange(W)]  # (k, W, cw)
    return np.matmul(np.matmul(ry, grids.astype(np.float64)), rx.transpose(0, 2, 1)).astype(np.float32)


def rise(model, x, target=None, masks=2000, cells=7, p=0.5, seed=0, batch_size=None, score="prob", memory=None,
         quiet=None, progress=None):
    """RISE saliency (N, H, W); extras: the settings and the batch size used."""
    from .memory import copies_per_batch
    from .sampling import copy_scores, fixed_target, most_rows
    if not 0 < p <= 1:
        raise OptionError(f"p of rise must be in (0, 1], got {p!r}")
    if score not in ("prob", "logit"):
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")
    x = image_batch(model, x, "rise")[1]
    N, C, H, W = x.shape
    probabilities = score == "prob"
    target = fixed_target(model, x, target)  # every masked copy explains the class predicted on x
    grids, dy, dx, cell = rise_grids(int(masks), cells, float(p), (H, W), int(seed))
    batch_size = copies_per_batch(model, x[:1], model.graph.output_names()[0], masks, batch_size, memory, most_rows(model))
    sal = np.zeros((N, H, W), np.float64)
    bar = Progress(N * masks, "rise", quiet, progress)
    done = 0
    for n in range(N):
        t = target[n:n + 1] if isinstance(target, np.ndarray) else target
        for s in range(0, masks, batch_size):
            e = min(masks, s + batch_size)
            m = rise_masks(grids[s:e], dy[s:e], dx[s:e], cell, (H, W))
            scores = copy_scores(model, x[n:n + 1] * m[:, None], t, probabilities=probabilities)
            sal[n] += np.tensordot(np.asarray(scores, np.float64), m.astype(np.float64), axes=1)
            done += e - s
            seen = e
            bar.update(done, partial=lambda n=n, seen=seen: (sal / (max(seen, 1) * p)).astype(np.float32))
    rel = (sal / (masks * p)).astype(np.float32)
    reported = target if isinstance(target, (Unit, OutputTarget)) else np.asarray(target)
    return Explanation(rel, reported, model.run(x), "rise",
                       extras={"masks": int(masks), "cells": _cells(cells), "p": float(p), "seed": int(seed),
                               "batch_size": batch_size, "score": score})


# --------------------------------------------------------------------------- ReciproCAM
GAUSSIAN = np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]], np.float32)


def position_masks(h: int, w: int, gaussian: bool = False) -> np.ndarray:
    """(h * w, h, w): position (i, j) alone, or its 3 x 3 Gaussian neighbourhood (cut at the borders)."""
    m = np.zeros((h * w, h, w), np.float32)
    for i in range(h):
        for j in range(w):
            if not gaussian:
                m[i * w + j, i, j] = 1
                continue
            for a in (-1, 0, 1):
                for b in (-1, 0, 1):
                    if 0 <= i + a < h and 0 <= j + b < w:
                        m[i * w + j, i + a, j + b] = GAUSSIAN[a + 1, b + 1]
    return m


def tail_graph(model, value: str, outputs: list):
    """(graph, values it reads from the clean forward): the nodes downstream of `value` that `outputs` need,
    as a graph whose inputs are `value`, the values computed around it that those nodes also read (a skip
    connection's: held at their clean values, as in the model with the layer's output replaced), and the
    model's input where shape computations read it (the shape computations are part of the tail)."""
    g = model.graph
    key = (value, tuple(outputs))
    kept = _TAILS.setdefault(model, {})
    if key in kept:
        return kept[key]
    static = model.executor.static
    prod = {o: i for i, n in enumerate(g.nodes) for o in n.outputs if o}
    downstream, reached = set(), {value}
    for i, n in enumerate(g.nodes):
        if any(v in reached for v in n.inputs if v):
            downstream.add(i)
            reached.update(o for o in n.outputs if o)
    needed, stack = set(), [prod[o] for o in outputs if o in prod and prod[o] in downstream]
    if len(stack) != len(outputs):
        raise InputError(f"the output does not depend on the layer {value!r}; give a layer before it")
    frontier, seen = [], set()
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        for v in g.nodes[i].inputs:
            if not v or v == value or v in g.initializers or v in seen:
                continue
            seen.add(v)
            j = prod.get(v)
            if j is not None and (j in downstream or j in static):
                stack.append(j)  # computed in the tail: what follows the layer, and shape computations
            elif j is not None or v not in g.input_names():
                frontier.append(v)
    first = g.input_names()[0]

    def info(v):
        d = g.value_info.get(v)
        return ValueInfo(v, None, d.dtype if d is not None and d.dtype is not None else np.dtype(np.float32))
    inputs = [info(value)] + [info(v) for v in frontier] + ([g.inputs[0]] if first in seen else [])
    tail = Graph([n for i, n in enumerate(g.nodes) if i in needed], g.initializers, inputs,
                 [ValueInfo(o, None, g.value_info[o].dtype if o in g.value_info else None) for o in outputs],
                 g.opset, g.producer, {}, g.value_info, g.weight_files)
    if len(kept) >= MAX_TAILS:
        kept.pop(next(iter(kept)))
    kept[key] = (tail, frontier)
    return tail, frontier


def tail_runner(model, x, value: str, logits: str):
    """(clean values, run): one clean forward of x for the layer's value, the logits and what the tail also
    reads; run(rows, n) -> the logits of the tail (tail_graph) on `rows`, copies of sample n's layer value,
    the values around the layer held at sample n's clean values (and x[n] where the tail reads the input), in
    batches of the size the model's input fixes. run.count: how many times the tail ran. Shared by the
    methods that edit a layer's value and read what follows (ReciproCAM, AblationCAM)."""
    from .sampling import in_model_batches
    tail, frontier = tail_graph(model, value, [logits])
    first = model.graph.input_names()[0]
    got = model.run(x, outputs=list(dict.fromkeys([value, logits] + frontier)))
    needs_input = first in tail.input_names()

    def once(rows, images, n):
        run.count += 1
        feed = {value: np.ascontiguousarray(rows)}
        feed.update((v, np.repeat(got[v][n:n + 1], len(rows), axis=0)) for v in frontier)  # clean, per copy
        if images is not None:
            feed[first] = np.ascontiguousarray(images)
        return np.asarray(model.engine.run(tail, feed, [logits])[logits])

    def run(rows, n):
        if needs_input:
            return in_model_batches(model, lambda r, i: once(r, i, n), rows, np.repeat(x[n:n + 1], len(rows), 0))
        return in_model_batches(model, lambda r: once(r, None, n), rows)
    run.count = 0
    return got, run


def layer_masks(view, masks: np.ndarray, tokens: int | None = None) -> np.ndarray:
    """The position masks (P, h, w) shaped to weigh a (1, ...) layer value in its own layout by broadcasting:
    (P, 1, h, w) channels first, (P, h, w, 1) channels last, (P, T, 1) tokens (the leading tokens kept)."""
    P, h, w = masks.shape
    if view.kind == "nchw":
        return masks[:, None]
    if view.kind == "nhwc":
        return masks[..., None]
    out = np.ones((P, tokens if tokens is not None else view.prefix + h * w, 1), masks.dtype)
    out[:, view.prefix:, 0] = masks.reshape(P, h * w)
    return out


def reciprocam_rows(b, model, value: str, logits: str, masks: str, rows: int) -> str:
    """Emit into `b` ReciproCAM's copies and the tail on them, for any batch N: the layer's value (N, ...)
    times `rows` masks ((rows, ...) as layer_masks shapes them), row (n, p) = sample n's value weighed by mask p,
    through a copy of the tail (tail_graph); the values around the layer and the input (where the tail reads
    it) repeated for every row of their sample; a Shape of the input computed, not read off a copy of the
    image. A tail that starts with a global average pool gets the pooled rows directly, one MatMul of the
    layer by the masks (the same sums). Returns the rows' scores (N, rows, classes)."""
    from ..graph import Node
    from .cam import layer_view
    g = model.graph
    tail, frontier = tail_graph(model, value, [logits])
    dims = tuple(b.static(value, range(1, b.rank(value))))
    dt = b.dtype(value)

    def per_row(v):  # (N, ...) -> (N * rows, ...): each sample's value once per row
        rest = b.static(v, range(1, b.rank(v)))
        wide = b.op("Unsqueeze", [v, b.ints([1])], dims=None, dtype=b.dtype(v))
        wide = b.op("Expand", [wide, b.ints([1, rows] + [1] * len(rest))], dims=None, dtype=b.dtype(v))
        return b.op("Reshape", [wide, b.ints([-1] + rest)], dims=(None, *rest), dtype=b.dtype(v))
    readers = [n for n in tail.nodes if value in n.inputs]
    nchw = layer_view(model, b.table, value).kind == "nchw"
    pooled = len(readers) == 1 and readers[0].op_type == "GlobalAveragePool" and nchw and len(dims) == 3
    if pooled:  # (N, C, hw) x (hw, rows) / hw: the pooled rows, not rows copies of the value pooled
        C, h, w = dims
        flat = b.op("Reshape", [value, b.ints([0, C, h * w])], dims=(None, C, h * w), dtype=dt)
        weigh = b.op("Transpose", [b.op("Reshape", [masks, b.ints([rows, h * w])], dims=(rows, h * w), dtype=dt)],
                     perm=[1, 0], dims=(h * w, rows), dtype=dt)
        mean = b.op("Div", [b.op("MatMul", [flat, weigh], dims=(None, C, rows), dtype=dt),
                            b.const(np.asarray(h * w, dt))], dims=(None, C, rows), dtype=dt)
        t = b.op("Transpose", [mean], perm=[0, 2, 1], dims=(None, rows, C), dtype=dt)
        renamed = {readers[0].outputs[0]: b.op("Reshape", [t, b.ints([-1, C, 1, 1])], dims=(None, C, 1, 1), dtype=dt)}
    else:
        wide = b.op("Unsqueeze", [value, b.ints([1])], dims=(None, 1) + dims, dtype=dt)
        copies = b.op("Mul", [wide, b.op("Unsqueeze", [masks, b.ints([0])], dims=None, dtype=dt)],
                      dims=(None, rows) + dims, dtype=dt)
        renamed = {value: b.op("Reshape", [copies, b.ints([-1, *dims])], dims=(None, *dims), dtype=dt)}
    first = g.input_names()[0]
    reads_input = [n for n in tail.nodes if first in n.inputs]
    for v in frontier + ([first] if any(n.op_type != "Shape" for n in reads_input) else []):
        renamed[v] = per_row(v)
    for n in tail.nodes:
        if pooled and n is readers[0]:
            continue
        if n.op_type == "Shape" and n.inputs[0] == first:  # the rows' input shape: (N * rows, ...)
            full = b.op("Mul", [b.op("Shape", [first], dims=(b.rank(first),), dtype=np.int64),
                                b.ints([rows] + [1] * (b.rank(first) - 1))], dims=(b.rank(first),), dtype=np.int64)
            start, end = n.attr("start", 0), n.attr("end", None)
            renamed[n.outputs[0]] = full if start == 0 and end is None else b.op(
                "Slice", [full, b.ints([start]), b.ints([end if end is not None else b.rank(first)])],
                dims=(None,), dtype=np.int64)
            continue
        outs = []
        for o in n.outputs:
            if o:
                renamed[o] = b.fresh("reciprocam/" + o)
            outs.append(renamed.get(o, ""))
        b.nodes.append(Node(b.fresh("reciprocam/" + n.name), n.op_type,
                            [renamed.get(v, v) if v else v for v in n.inputs], outs, dict(n.attrs)))
    return b.op("Reshape", [renamed[logits], b.ints([-1, rows, b.static(logits, [1])[0]])], dims=(None, rows, None),
                dtype=b.dtype(logits))


def _mask_dims(model, table, value, rows):
    from .cam import layer_view
    d = tuple(table.dims[value][1:])
    if layer_view(model, table, value).kind == "nchw":
        return (rows, 1) + d[1:]
    return (rows,) + d[:-1] + (1,)


def lower_reciprocam(model, table, value: str, logits: str, rows: int):
    """ReciproCAM as one graph: the model's forward and reciprocam_rows, the masks an input
    `reciprocam_masks`. Outputs: the rows' scores (N, rows, classes) and the model's own. One run replaces a
    forward, the copies' transfer and the tail's run (the copies never leave the engine)."""
    from ..builder import GraphBuilder
    from ..reverse import Lowered
    b = GraphBuilder(model.graph, table)
    masks = b.input("reciprocam_masks", _mask_dims(model, table, value, rows), b.dtype(value))
    rows_out = b.named(reciprocam_rows(b, model, value, logits, masks, rows), "reciprocam_logits")
    return Lowered(b.finish([rows_out, logits]), logits, table=b.table)


def lower_reciprocam_maps(model, table, spec, layer, gaussian=False, score="prob", upsample_maps=True,
                          all_classes=False):
    """The standalone ReciproCAM explainer (fvgraph.explainer): the map of the target class (`relevance`,
    (N, H, W)) and, with all_classes, every class's (`saliency`, (N, K, H, W)), normalized per class over the
    positions as `reciprocam` does, beside the model's outputs: the portable counterpart of OpenVINO XAI's
    insert_xai (whose default for CNNs is ReciproCAM)."""
    from ..builder import GraphBuilder
    from ..reverse import RELEVANCE, Lowered, seed_value
    from .cam import _resized, layer_view
    from .occlusion import ends_in_softmax
    logits = spec.value
    value = model.resolve(layer)
    b = GraphBuilder(model.graph, table)
    view = layer_view(model, table, value)
    h, w = view.grid
    P = h * w
    weigh = layer_masks(view, position_masks(h, w, bool(gaussian)), table.dims[value][1] if view.kind == "tokens"
                        else None).astype(b.dtype(value))
    Y = reciprocam_rows(b, model, value, logits, b.const(weigh, "reciprocam_masks"), P)  # (N, P, K)
    if score == "prob" and not ends_in_softmax(model, logits):
        Y = b.op("Softmax", [Y], axis=-1, like=Y)
    lo = b.op("ReduceMin", [Y, b.ints([1])], keepdims=1, dims=None, dtype=b.dtype(Y))
    hi = b.op("ReduceMax", [Y, b.ints([1])], keepdims=1, dims=None, dtype=b.dtype(Y))
    span = b.op("Sub", [hi, lo], dims=None, dtype=b.dtype(Y))
    flat = b.op("Greater", [span, b.scalar(0, Y)], dims=None, dtype=np.bool_)
    norm = b.op("Where", [flat, b.op("Div", [b.op("Sub", [Y, lo], like=Y),
                                             b.op("Where", [flat, span, b.scalar(1, Y)], dims=None, dtype=b.dtype(Y))],
                                     like=Y), b.scalar(0, Y)], like=Y)
    K = b.static(logits, [1])[0]
    maps = b.op("Reshape", [b.op("Transpose", [norm], perm=[0, 2, 1], dims=(None, K, P), dtype=b.dtype(Y)),
                            b.ints([0, K, h, w])], dims=(None, K, h, w), dtype=b.dtype(Y))
    seed, used, inputs = seed_value(b, spec, False)
    onehot = b.op("Reshape", [seed, b.ints([0, K, 1, 1])], dims=(None, K, 1, 1), dtype=b.dtype(Y))
    one = b.op("ReduceSum", [b.mul(maps, onehot, like=maps), b.ints([1])], keepdims=0, dims=(None, h, w),
               dtype=b.dtype(Y))
    size = tuple(b.static(model.graph.input_names()[0], [2, 3]))
    extras = {"layer": value}
    if upsample_maps:
        from .cam import upsample
        one = upsample(b, one, size)
    if all_classes:
        extras["saliency"] = b.named(_resized(b, maps, size) if upsample_maps else maps, "saliency")
    rel = b.named(one, RELEVANCE)
    graph = b.finish([o for o in [rel, logits, used] + list(extras.values())[1:] if o])
    return Lowered(graph, logits, used, {}, extras, {}, inputs, b.table)


def mosaic(a1: np.ndarray, view, masks: np.ndarray) -> np.ndarray:
    """Copies of one sample's layer value a1 (its own layout) with the positions weighted by each mask."""
    return a1[None] * layer_masks(view, masks, a1.shape[0] if view.kind == "tokens" else None)


def image_batch(model, x, name):
    """(feeds, the image batch (N, C, H, W)) of x; one line when it is not one."""
    feeds = model.feeds(x)
    x = feeds[model.graph.input_names()[0]]
    if x.ndim != 4:
        raise InputError(f"{name} needs an image batch (N, C, H, W), got shape {x.shape}")
    return feeds, x


def _class_scores_of(model, x, target, name, why):
    """(feeds, the image batch) for a method of a layer's maps that reads class scores: one line otherwise."""
    if isinstance(target, (Unit, OutputTarget)) or (isinstance(target, np.ndarray) and target.dtype.kind == "f"):
        raise InputError(f"{name} explains class scores ({why}): give a class target")
    return image_batch(model, x, name)


def reciprocam(model, x, target=None, layer=None, gaussian=False, score="prob", upsample_maps=True,
               batch_size=None, memory=None, quiet=None, progress=None):
    """ReciproCAM maps (N, H, W) (or (N, h, w) without upsampling); extras: the layer, every class's map
    before upsampling (classes), how many times the tail ran."""
    from .attribution import class_indices, logits_value, value_dims
    from .cam import default_gradcam_layer, layer_view, resize_maps
    from .memory import copies_per_batch
    from .occlusion import ends_in_softmax, probabilities
    if score not in ("prob", "logit"):
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")
    feeds, x = _class_scores_of(model, x, target, "reciprocam", "each class's map from one batch")
    N = len(x)
    logits = logits_value(model, through_softmax=(score == "prob"))
    softmax = score == "prob" and not ends_in_softmax(model, logits)
    value = model.resolve(layer) if layer is not None else default_gradcam_layer(model, feeds, logits_value(model))
    if value in model.graph.input_names():
        raise InputError("reciprocam draws at a layer inside the model, not at its input")
    dims = value_dims(model, feeds, logits)
    classes = class_indices(target, dims, N, logits)
    view = layer_view(model, model.shape_table(feeds), value)
    h, w = view.grid
    masks = position_masks(h, w, bool(gaussian))
    P = h * w
    batch_size = copies_per_batch(model, x[:1], logits, N * P, batch_size, memory)  # a forward: the tail's bound
    bar = Progress(N * P, "reciprocam", quiet, progress)
    scores, clean = [], []
    if model.batch_limit is None and P <= batch_size:  # every copy of an image in one batch: one graph, one
        table = model.shape_table(feeds)               # run per as many images as the cap holds
        first = model.graph.input_names()[0]
        lowered = model.lowered(("reciprocam", value, logits, P), {first: x[:1]},
                                lambda t: lower_reciprocam(model, t, value, logits, P))
        weigh = layer_masks(view, masks, table.dims[value][1] if view.kind == "tokens" else None)
        weigh = weigh.astype(table.dtypes.get(value) or np.float32)  # fed: one graph for every mask kind
        step, runs = max(1, batch_size // P), 0
        for n in range(0, N, step):
            out = model.engine.run(lowered.graph, {**model.feeds(x[n:n + step]), "reciprocam_masks": weigh},
                                   ["reciprocam_logits", logits])
            rows = np.asarray(out["reciprocam_logits"], np.float64)
            scores.extend(r.reshape(P, -1) for r in rows)
            clean.append(np.asarray(out[logits]))
            runs += 1
            bar.update(min(N, n + step) * P)
        clean = np.concatenate(clean)
    else:  # the layer's value comes back, its copies go through the tail graph in batches
        got, run_tail = tail_runner(model, x, value, logits)
        A, clean = got[value], np.asarray(got[logits])
        for n in range(N):
            copies = mosaic(A[n], view, masks).astype(A.dtype)
            out = []
            for s in range(0, len(copies), batch_size):
                rows = copies[s:s + batch_size]
                out.append(run_tail(rows, n))
                bar.update(n * P + s + len(rows))
            scores.append(np.concatenate(out).reshape(P, -1).astype(np.float64))
        runs = run_tail.count
    reported = np.where(classes < 0, clean.reshape(N, -1).argmax(axis=1), classes)
    if softmax:
        scores = [probabilities(y) for y in scores]
    Y = np.stack(scores)  # (N, h*w, classes)
    lo, hi = Y.min(axis=1, keepdims=True), Y.max(axis=1, keepdims=True)
    norm = np.where(hi > lo, (Y - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    all_maps = np.ascontiguousarray(norm.transpose(0, 2, 1).reshape(N, -1, h, w)).astype(np.float32)
    maps = all_maps[np.arange(N), reported]
    if upsample_maps:
        maps = resize_maps(maps, x.shape[2:])
    return Explanation(np.asarray(maps, np.float32), reported, clean, "reciprocam",
                       extras={"layer": value, "classes": all_maps, "tail_runs": runs, "batch_size": batch_size,
                               "gaussian": bool(gaussian), "score": score})


# --------------------------------------------------------------------------- AblationCAM
def ablated(a1: np.ndarray, view, channels) -> np.ndarray:
    """Copies of one sample's layer value a1 (its own layout), copy i with channel channels[i] set to 0 (in
    every position; for tokens in every token, the class token's too: the channel is gone from the layer)."""
    channels = np.asarray(channels)
    out = np.repeat(a1[None], len(channels), axis=0)
    rows = np.arange(len(channels))
    if view.kind == "nchw":
        out[rows, channels] = 0
    else:
        out[rows, ..., channels] = 0
    return out


def ablationcam(model, x, target=None, layer=None, upsample_maps=True, batch_size=None, memory=None,
                through_softmax=False, quiet=None, progress=None, flag=True):
    """AblationCAM maps (N, H, W) (or (N, h, w) without upsampling); extras: the layer, the channel weights
    (N, K), the clean class scores, how many times the tail ran."""
    from .attribution import class_indices, logits_value, value_dims
    from .cam import default_gradcam_layer, flag_degenerate, layer_view, resize_maps
    from .memory import copies_per_batch
    from ..tokens import as_map_array
    feeds, x = _class_scores_of(model, x, target, "ablationcam", "the drop of the class's score")
    N = len(x)
    logits = logits_value(model, through_softmax)
    value = model.resolve(layer) if layer is not None else default_gradcam_layer(model, feeds, logits_value(model))
    if value in model.graph.input_names():
        raise InputError("ablationcam draws at a layer inside the model, not at its input")
    classes = class_indices(target, value_dims(model, feeds, logits), N, logits)
    view = layer_view(model, model.shape_table(feeds), value)
    got, run_tail = tail_runner(model, x, value, logits)
    A, clean = got[value], np.asarray(got[logits])
    flat = clean.reshape(N, -1).astype(np.float64)
    reported = np.where(classes < 0, flat.argmax(axis=1), classes)
    K = A.shape[1] if view.kind == "nchw" else A.shape[-1]
    batch_size = copies_per_batch(model, x[:1], logits, K, batch_size, memory)  # a forward: the tail's bound
    maps_in = as_map_array(A, view).astype(np.float64)  # (N, K, h, w)
    weights = np.zeros((N, K), np.float64)
    y = flat[np.arange(N), reported]
    denom = np.where(y != 0, y, 1.0)  # a zero class score: the plain drop, not a division by zero

    def maps_of(w):
        m = np.maximum(np.einsum("nk,nkhw->nhw", w, maps_in), 0).astype(np.float32)
        return resize_maps(m, x.shape[2:]) if upsample_maps else m

    bar = Progress(N * K, "ablationcam", quiet, progress)
    for n in range(N):
        for s in range(0, K, batch_size):
            e = min(K, s + batch_size)
            scores = run_tail(ablated(A[n], view, np.arange(s, e)).astype(A.dtype), n)
            yk = np.asarray(scores, np.float64).reshape(e - s, -1)[:, reported[n]]
            weights[n, s:e] = (y[n] - yk) / denom[n]
            bar.update(n * K + e, partial=lambda: maps_of(weights))
    out = Explanation(maps_of(weights), reported, clean, "ablationcam",
                      extras={"layer": value, "weights": weights.astype(np.float32), "scores": y,
                              "tail_runs": run_tail.count, "batch_size": batch_size})
    return flag_degenerate(out, weights) if flag else out


# --------------------------------------------------------------------------- Sobol attribution
def sobol_designs(grid: int, designs: int, seed: int) -> np.ndarray:
    """(designs, grid * grid + 2, grid * grid) masks in [0, 1]: for design j, row 0 is A_j, row 1 B_j and row
    2 + i is A_j with cell i taken from B_j (A_B^i), A and B the two halves of a scrambled, seeded Sobol'
    sequence in 2 * grid * grid dimensions (scipy.stats.qmc.Sobol)."""
    import warnings

    from scipy.stats import qmc
    d = grid * grid
    with warnings.catch_warnings():  # n not a power of 2 only loosens the balance of the points
        warnings.simplefilter("ignore", UserWarning)
        points = qmc.Sobol(d=2 * d, scramble=True, seed=seed).random(designs)
    a, b = points[:, :d], points[:, d:]
    out = np.repeat(a[:, None], d + 2, axis=1)
    out[:, 1] = b
    cells = np.arange(d)
    out[:, 2 + cells, cells] = b[:, cells]
    return out


def cell_masks(cells: np.ndarray, grid: int, size) -> np.ndarray:
    """(k, g * g) cell values -> (k, H, W): each pixel takes the value of the cell it lies in (nearest
    upsampling; pixel row y lies in cell row floor(y * g / H), so the cells tile the image exactly)."""
    H, W = size
    r = (np.arange(H) * grid) // H
    c = (np.arange(W) * grid) // W
    return cells.reshape(-1, grid, grid)[:, r][:, :, c].astype(np.float32)


def jansen_total(fa: np.ndarray, fb: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """Jansen's estimator of each cell's total Sobol' index: mean_j (f(A_j) - f(A_B^i_j))^2 / (2 Var f), Var
    the variance (ddof 0) of f over the A and B designs together; zero where f does not vary."""
    var = np.var(np.concatenate([fa, fb]))
    if not var > 0:
        return np.zeros(fc.shape[1])
    return np.mean((fa[:, None] - fc) ** 2, axis=0) / (2 * var)


def sobol(model, x, target=None, grid=8, designs=32, seed=0, score="logit", batch_size=None, memory=None,
          quiet=None, progress=None):
    """Sobol attribution maps (N, H, W): each cell's total index, upsampled bilinearly (half-pixel centres,
    as the CAMs) from the g x g grid; extras: the indices (N, g, g), the settings, the batch size used."""
    from .cam import resize_maps
    from .memory import copies_per_batch
    from .sampling import copy_scores, fixed_target, most_rows
    if score not in ("prob", "logit"):
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")
    x = image_batch(model, x, "sobol")[1]
    N, C, H, W = x.shape
    grid, designs = int(grid), int(designs)
    d = grid * grid
    target = fixed_target(model, x, target)  # every masked copy explains the class predicted on x
    masks = sobol_designs(grid, designs, int(seed)).reshape(designs * (d + 2), d)  # design by design
    total = len(masks)
    batch_size = copies_per_batch(model, x[:1], model.graph.output_names()[0], total, batch_size, memory, most_rows(model))
    indices = np.zeros((N, grid, grid), np.float64)
    bar = Progress(N * total, "sobol", quiet, progress)

    def estimate(f, count):
        """The indices from the designs whose every row has been scored (the first count // (d + 2))."""
        j = count // (d + 2)
        if j < 1:
            return np.zeros((grid, grid))
        fj = f[:j * (d + 2)].reshape(j, d + 2)
        return jansen_total(fj[:, 0], fj[:, 1], fj[:, 2:]).reshape(grid, grid)

    def partial(n, f, count):
        now = indices.copy()
        now[n] = estimate(f, count)
        return resize_maps(now.astype(np.float32), (H, W))

    for n in range(N):
        t = target[n:n + 1] if isinstance(target, np.ndarray) else target
        f = np.zeros(total, np.float64)
        for s in range(0, total, batch_size):
            e = min(total, s + batch_size)
            m = cell_masks(masks[s:e], grid, (H, W))
            f[s:e] = copy_scores(model, x[n:n + 1] * m[:, None], t, probabilities=score == "prob")
            bar.update(n * total + e, partial=lambda n=n, f=f, e=e: partial(n, f, e))
        indices[n] = estimate(f, total)
    rel = resize_maps(indices.astype(np.float32), (H, W))
    reported = target if isinstance(target, (Unit, OutputTarget)) else np.asarray(target)
    return Explanation(np.asarray(rel, np.float32), reported, model.run(x), "sobol",
                       extras={"indices": indices.astype(np.float32), "grid": grid, "designs": designs,
                               "seed": int(seed), "score": score, "batch_size": batch_size})
