"""Class activation maps, from the activations A (N, K, h, w) of one layer and the target's gradient G there.

- CAM (Zhou et al. 2015): a net ending in global average pooling then a linear layer: sum_k w_ck A_k.
- Grad-CAM (Selvaraju et al. 2017): relu(sum_k mean_ij(G_k) A_k), lowered into one graph with its reverse pass
  going only down to A (so it exports).
- Grad-CAM++ (Chattopadhay et al. 2018), as pytorch-grad-cam computes it: a_ij = G^2 / (2 G^2 + sum_ij(A) G^3
  + 1e-6) (0 where G = 0), w_k = sum_ij relu(G) a_ij; LayerCAM (Jiang et al. 2021): relu(sum_k relu(G) A);
  XGrad-CAM (Fu et al. 2020): w_k = sum_ij(G A) / (sum_ij A + 1e-7); HiResCAM (Draelos & Carin 2020):
  relu(sum_k G A). These read A and G from the Grad-CAM graph.
- Score-CAM (Wang et al. 2020): each channel, upsampled (align_corners) and scaled to [0, 1], masks the input;
  the target's scores on the masked inputs (batched forward passes), softmaxed over channels, weigh A.
- Eigen-CAM (Muhammad & Yeasin 2020): no target: the first principal component of the layer (the centred
  (h*w, K) activations projected on their first right singular vector, its sign chosen to agree with the
  summed activations).
Every map but CAM's and Eigen-CAM's raw projection goes through a ReLU (as pytorch-grad-cam does for all), and
is upsampled bilinearly with half-pixel centres (align_corners=False, ONNX Resize "linear") to the input's
height and width unless upsample=False. The default layer is the last 4-D map every path to the target
passes through.
"""
from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..errors import InputError
from ..explanation import Explanation
from ..reverse import RELEVANCE, Lowered, Target, propagate, seed_value
from ..rules import Rules
from ..tokens import as_map, as_map_array, map_view
from .attribution import logits_value, seed_for

PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")


def cam_structure(model, logits: str):
    """(feature-map value, class weight matrix (classes, K)) of a GAP -> linear head, or a clear error."""
    g = model.graph
    c = g.initializers
    prod = g.producers()
    head = prod.get(logits)
    if head is None or head.op_type not in ("Gemm", "MatMul", "Conv"):
        raise InputError(f"CAM needs the network to end in global average pooling followed by a linear layer; "
                         f"the output {logits!r} comes from {head.op_type if head else 'an input'}. Use gradcam.")
    if head.inputs[1] not in c:
        raise InputError("CAM needs constant weights in the last linear layer")
    w = np.asarray(c[head.inputs[1]])
    if head.op_type == "Gemm":
        w = w if head.attr("transB", 0) else w.T
    elif head.op_type == "MatMul":
        w = w.T
    else:
        w = w.reshape(w.shape[0], -1)
    v = head.inputs[0]
    node = prod.get(v)
    while node is not None and node.op_type in PASS_THROUGH:
        v = node.inputs[0]
        node = prod.get(v)
    spatial_mean = node is not None and node.op_type == "ReduceMean"
    if node is None or not (node.op_type == "GlobalAveragePool" or spatial_mean):
        raise InputError(f"CAM needs global average pooling right before the last linear layer "
                         f"({head.name!r}); found {node.op_type if node else 'the input'} there. Use gradcam.")
    return node.inputs[0], np.asarray(w, np.float32)


def default_gradcam_layer(model, feeds, target_value: str) -> str:
    """The layer Grad-CAM reads by default, chosen once per model, target value and input size:
    - CNNs: the last map (N, C, h, w) every path from the input to the target passes through: the last conv block
      of a classifier; for a detector, the last backbone map all its heads read;
    - transformers (maps after it that are tokens (N, T, C) or channels last (N, h, w, C)): the last of those at
      which the target's gradient reaches the patch grid (a class-token ViT: the last block's first norm, as
      pytorch-grad-cam users pick; Swin, ConvNeXt: the last stage's output), among values of the residual
      stream's width, found by one gradient pass."""
    from ..shapes import signature_dims
    key = ("gradcam-layer", target_value, tuple((k, signature_dims(np.shape(v))) for k, v in sorted(feeds.items())))
    if key in model.choices:
        return model.choices[key]
    table = model.shape_table(feeds)
    g, static = model.graph, model.executor.static
    hw = tuple(b for b in table.dims[g.input_names()[0]][2:4])
    candidates = []
    for i, n in enumerate(g.nodes):
        if i in static:
            continue
        for o in n.outputs:
            view = map_view(table.dims.get(o), hw) if o else None
            if view is not None and view.grid[0] * view.grid[1] > 1 and o != target_value:
                candidates.append((o, view))
    pick = None
    for k in range(len(candidates) - 1, -1, -1):
        v, view = candidates[k]
        if view.kind == "nchw" and not _reaches(g, static, g.input_names()[0], target_value, blocked=v):
            pick = k
            break
    later = [c for c in candidates[(pick + 1 if pick is not None else 0):] if c[1].kind != "nchw"]
    if not _transformer_like(model, table):  # a detector's (N, 4, anchors) is no token map
        later = []
    if later:  # the residual stream's width (the last one's): not a block's wider qkv or MLP values
        width = table.dims[later[-1][0]][-1]
        later = [c for c in later if table.dims[c[0]][-1] == width]
    choice = _last_reached(model, feeds, table, target_value, later) if later else None
    if choice is None and pick is not None:
        choice = candidates[pick][0]
    if choice is None:
        raise InputError("Grad-CAM found no map-shaped layer (N, C, h, w), (N, h, w, C) or tokens (N, T, C) on a "
                         "patch grid that the target depends on; pass layer=")
    model.choices[key] = choice
    return choice


def _transformer_like(model, table) -> bool:
    """Whether the model normalizes over its last axis (LayerNorm, or the ReduceMean of its decomposed form):
    what transformers, Swin and ConvNeXt do to their token and channels-last maps, and CNNs do not."""
    g = model.graph
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            return True
        if n.op_type == "ReduceMean" and len(n.inputs) > 1 and n.inputs[1]:
            axes = g.initializers.get(n.inputs[1])
            d = table.dims.get(n.inputs[0])
            if axes is not None and d is not None and [int(a) % len(d) for a in np.asarray(axes).reshape(-1)] == \
                    [len(d) - 1] and len(d) >= 3:
                return True
    return False


def _last_reached(model, feeds, table, target_value, candidates):
    """The last candidate at whose patch grid the gradient of the sum of the target value is non-zero."""
    from ..reverse import lower
    keep = tuple(v for v, _ in candidates)
    lowered = model.lowered(("gradcam-probe", target_value, keep), feeds,
                            lambda t: lower(model, Rules.load("gradient"), Target("array", target_value), t, keep=keep))
    n = np.shape(next(iter(feeds.values())))[0]
    seed = np.ones([d if isinstance(d, int) else n for d in lowered.table.dims[target_value]],
                   lowered.table.dtypes.get(target_value, np.float32))
    out = model.engine.run(lowered.graph, {**feeds, **dict(zip(lowered.seed_inputs, [seed]))},
                           list(lowered.layers.values()))
    for v, view in reversed(candidates):
        if np.any(as_map_array(out[lowered.layers[v]], view)):
            return v
    return None


def _reaches(g, static, source, sink, blocked) -> bool:
    reached = {source}
    for i, n in enumerate(g.nodes):
        if i not in static and any(v in reached for v in n.inputs if v):
            reached.update(o for o in n.outputs if o and o != blocked)
    return sink in reached


def upsample(b: GraphBuilder, maps: str, size) -> str:
    """(N, h, w) -> (N, H, W), bilinear with half-pixel centres: the Resize op itself."""
    d = b.dims(maps)
    if tuple(d[1:]) == tuple(size):
        return maps
    four = b.op("Unsqueeze", [maps, b.ints([1])], dims=(d[0], 1) + tuple(d[1:]), dtype=b.dtype(maps))
    return b.op("Squeeze", [_resized(b, four, size), b.ints([1])], dims=(d[0],) + tuple(size), dtype=b.dtype(maps))


def layer_view(model, table, value):
    """How the Grad-CAM layer reads as (N, C, h, w); a clear error when it does not."""
    g = model.graph
    d = table.dims.get(value)
    view = map_view(d, tuple(table.dims[g.input_names()[0]][2:4]))
    if view is None and d is not None and len(d) == 4:
        from ..tokens import MapView
        view = MapView("nchw", tuple(d[2:]))
    if view is None:
        raise InputError(f"the CAM family needs a map-shaped layer: (N, C, h, w), (N, h, w, C), or tokens (N, T, C) "
                         f"on a patch grid of the input; {value!r} has shape {d}")
    return view


def lower_cam(model, method: str, table, spec: Target, layer, upsample_maps: bool, all_classes=False) -> Lowered:
    """The CAM or Grad-CAM graph: inputs the model's and the target's (a class index per sample, or a seed
    for Grad-CAM), outputs the map, the target value, the class used and the per-channel weights (CAM's class
    weights, Grad-CAM's alpha); with all_classes (CAM), also `saliency`: every class's map (N, K, H, W), the
    pooled maps times the whole classifier."""
    logits = spec.value
    g = model.graph
    b = GraphBuilder(g, table)
    first = g.input_names()[0]
    size = tuple(b.static(first, [2, 3]))
    if method == "cam":
        fmap, w = cam_structure(model, logits)
        if layer is not None and model.resolve(layer) != fmap:
            raise InputError(f"CAM is defined on the pooled feature maps ({fmap!r}); use gradcam for other layers")
        if spec.kind != "class":
            raise InputError("CAM weighs the pooled maps by one class's weights: give a class target "
                             "(use gradcam for units, output elements or regions)")
        _, used, inputs = seed_value(b, spec, False)
        n = b.dims(logits)[0]
        weights = b.op("Gather", [b.const(w.astype(b.dtype(fmap)), "cam_weights"), used], axis=0,
                       dims=(n, w.shape[1]), dtype=b.dtype(fmap))
        applied = {}
    else:
        value = model.resolve(layer)
        view = layer_view(model, table, value)
        seed, used, inputs = seed_value(b, spec, False)
        signals, applied = propagate(model, b, Rules.load("gradient"), {logits: seed}, [value], keep=(value,))
        fmap = as_map(b, value, view)
        grad = as_map(b, signals.get(value) or b.zeros(value), view)
        weights = b.op("ReduceMean", [grad, b.ints([2, 3])], keepdims=0, dims=b.dims(fmap)[:2], dtype=b.dtype(fmap))
    d = b.dims(fmap)
    wide = b.op("Unsqueeze", [weights, b.ints([2, 3])], dims=d[:2] + (1, 1), dtype=b.dtype(fmap))
    maps = b.op("ReduceSum", [b.mul(fmap, wide, like=fmap), b.ints([1])], keepdims=0, dims=(d[0],) + d[2:],
                dtype=b.dtype(fmap))
    if method == "gradcam":
        maps = b.op("Relu", [maps], like=maps)
    if upsample_maps:
        maps = upsample(b, maps, size)
    rel = b.named(maps, RELEVANCE)
    extras = {"layer": fmap if method == "cam" else value, "weights": b.named(weights, "weights")}
    if method == "gradcam":  # what the other gradient-weighted CAMs are computed from
        extras.update(activations=b.named(fmap, "activations"), gradients=b.named(grad, "gradients"))
    if all_classes:
        if method != "cam":
            raise InputError("every class's map in one graph is CAM's (the pooled maps times the classifier)")
        extras["saliency"] = b.named(_all_class_maps(b, fmap, w, size if upsample_maps else None), "saliency")
    graph = b.finish([o for o in [rel, logits, used] + list(extras.values())[1:] if o])
    return Lowered(graph, logits, used, {}, extras, applied, inputs, b.table)


def _all_class_maps(b: GraphBuilder, fmap: str, w: np.ndarray, size) -> str:
    """(N, C, h, w) maps and (K, C) class weights -> (N, K, h, w) (or (N, K, H, W) at `size`): one MatMul."""
    n, c, h, wd = b.dims(fmap)
    k = w.shape[0]
    dt = b.dtype(fmap)
    flat = b.op("Reshape", [fmap, b.ints([0, c, h * wd])], dims=(n, c, h * wd), dtype=dt)
    per = b.op("MatMul", [b.const(w.astype(dt), "class_weights"), flat], dims=(n, k, h * wd), dtype=dt)
    maps = b.op("Reshape", [per, b.ints([0, k, h, wd])], dims=(n, k, h, wd), dtype=dt)
    return maps if size is None else _resized(b, maps, size)


def _resized(b: GraphBuilder, maps: str, size) -> str:
    """(N, K, h, w) -> (N, K, H, W), bilinear with half-pixel centres (the Resize op itself)."""
    n, k, h, wd = b.dims(maps)
    if (h, wd) == tuple(size):
        return maps
    lead = b.op("Slice", [b.op("Shape", [maps], dims=(4,), dtype=np.int64), b.ints([0]), b.ints([2])], dims=(2,),
                dtype=np.int64)
    sizes = b.op("Concat", [lead, b.ints(list(size))], axis=0, dims=(4,), dtype=np.int64)
    return b.op("Resize", [maps, "", "", sizes], mode="linear", dims=(n, k) + tuple(size), dtype=b.dtype(maps))


def _relu_sum(A, weights):
    return np.maximum((A * weights).sum(axis=1), 0)


def gradcam_plus_plus(A, G):
    g2 = G * G
    aij = g2 / (2 * g2 + A.sum(axis=(2, 3), keepdims=True) * g2 * G + 1e-6)
    aij = np.where(G != 0, aij, 0)
    return _relu_sum(A, (np.maximum(G, 0) * aij).sum(axis=(2, 3), keepdims=True))


GRADIENT_CAMS = {
    "gradcam++": gradcam_plus_plus,
    "layercam": lambda A, G: _relu_sum(A, np.maximum(G, 0)),
    "xgradcam": lambda A, G: _relu_sum(A, (G * A).sum(axis=(2, 3), keepdims=True)
                                       / (A.sum(axis=(2, 3), keepdims=True) + 1e-7)),
    "hirescam": lambda A, G: _relu_sum(A, G),
}
CAM_METHODS = ("cam", "gradcam", *GRADIENT_CAMS, "scorecam", "eigencam")


def resize_maps(maps, size, align_corners=False):
    """(N, h, w) -> (N, H, W) bilinear, with fvgraph's Resize kernel."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    from ..graph import Node
    from ..ops import build_kernel
    coord = "align_corners" if align_corners else "half_pixel"
    k = build_kernel(Node("upsample", "Resize", ["x", "", "", "s"], ["y"],
                          {"mode": "linear", "coordinate_transformation_mode": coord}))
    sizes = np.array([maps.shape[0], 1, *size], np.int64)
    return np.asarray(k.forward(maps[:, None].astype(np.float32), None, None, sizes)[0][:, 0])


def eigencam(A):
    """The maps' first principal component per sample, from the smaller of the two Gram matrices (positions x
    positions or channels x channels, whichever is smaller): the same projection as the SVD's first singular
    vector, at O(min(hw, C)^3) instead of a full SVD of the (hw, C) matrix."""
    maps = []
    for a in A.astype(np.float64):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        if not np.any(flat):
            maps.append(np.zeros(a.shape[1:]))
            continue
        if flat.shape[0] <= flat.shape[1]:  # fewer positions than channels: u s = top eigenvector of F F^T
            values, vectors = np.linalg.eigh(flat @ flat.T)
            projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        else:
            projection = flat @ np.linalg.eigh(flat.T @ flat)[1][:, -1]
        if np.dot(projection, a.sum(axis=0).reshape(-1)) < 0:
            projection = -projection
        maps.append(np.maximum(projection, 0).reshape(a.shape[1:]))
    return np.stack(maps).astype(np.float32)


def scorecam(model, x, A, target, through_softmax):
    """Softmax over channels of the target's scores on the input masked by each upsampled, [0, 1]-scaled channel.
    A constant channel (its upsampled map too: bilinear weights are a convex combination) masks the image to
    zero: the blank image is scored once for all of them. The masks are made per batch of channels (not all
    at once: 1280 channels at 224 x 224 are 257 MB)."""
    from .sampling import copy_scores, fixed_target, rows_per_batch
    n, k = A.shape[:2]
    flat = A.reshape(n, k, -1)
    varies = flat.max(axis=2) > flat.min(axis=2)
    target = fixed_target(model, x, target, through_softmax)
    scores = np.zeros((n, k))
    step = rows_per_batch(model, x[:1])
    for i in range(n):
        t = target[i:i + 1] if isinstance(target, np.ndarray) else target
        live = np.flatnonzero(varies[i])
        if len(live) < k:
            scores[i] = copy_scores(model, np.zeros_like(x[i:i + 1]), t, through_softmax)[0]
        for c0 in range(0, len(live), step):
            c = live[c0:c0 + step]
            up = resize_maps(A[i, c], x.shape[2:], align_corners=True)
            lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
            norm = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
            scores[i, c] = copy_scores(model, x[i:i + 1] * norm[:, None], t, through_softmax)
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return _relu_sum(A, w[:, :, None, None].astype(A.dtype)), w


def flag_degenerate(e: Explanation, weights=None) -> Explanation:
    """A map that is zero everywhere (or not finite) is no explanation: one FvGraphWarning says why and what to try,
    and e.extras["degenerate"] lists the samples (PReLU nets' Grad-CAM: every channel weight negative)."""
    import warnings
    from ..errors import FvGraphWarning
    maps = np.asarray(e.relevance)
    flat = maps.reshape(len(maps), -1)
    bad = [i for i in range(len(flat)) if not np.all(np.isfinite(flat[i])) or not np.any(flat[i])]
    if not bad:
        return e
    e.extras["degenerate"] = bad
    if not all(np.all(np.isfinite(flat[i])) for i in bad):
        why = "it holds non-finite values (the layer or its gradient overflowed)"
    elif weights is not None and all(np.all(np.asarray(weights)[i] <= 0) for i in bad):
        why = "every channel weight is negative or zero, so the ReLU removed the whole weighted sum"
    elif e.method in ("gradcam", "hirescam", "xgradcam"):
        why = "the weighted sum of the channels is negative everywhere and the ReLU removed it"
    else:
        why = "the layer's activations (or the target's gradient there) are zero everywhere"
    layer = e.extras.get("layer")
    warnings.warn(FvGraphWarning(
        f"{e.method}: the map of sample(s) {bad} is {'zero everywhere' if 'finite' not in why else 'not finite'}: {why}; try another layer= (the one used: "
        f"{layer!r}; `fvgraph info MODEL` lists them) or the methods gradcam++ / layercam, which weigh positive "
        "gradients only"))
    return e


def explain_cam(model, x, method, target=None, layer=None, upsample_maps=True, through_softmax=False, flag=True):
    """One CAM-family explanation; `flag`: say so when a map is zero (off for the noisy copies of SmoothGrad,
    whose average is what is flagged)."""
    e = _explain_cam(model, x, method, target, layer, upsample_maps, through_softmax)
    if not flag:
        return e
    return flag_degenerate(e, e.extras.get("alpha", e.extras.get("weights")) if method in ("gradcam", "cam") else None)


def _explain_cam(model, x, method, target=None, layer=None, upsample_maps=True, through_softmax=False):
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    first = model.graph.input_names()[0]
    x = feeds[first]
    if np.ndim(x) != 4:
        raise InputError(f"{method} needs an image batch (N, C, H, W), got shape {np.shape(x)}")
    if method != "cam" and layer is None:
        layer = default_gradcam_layer(model, feeds, logits)
    if method in ("scorecam", "eigencam"):
        fmap = model.resolve(layer)
        got = model.run(x, outputs=[fmap, logits])  # one forward for the layer and the reported output
        A = as_map_array(got[fmap], layer_view(model, model.shape_table(feeds), fmap))
        if method == "eigencam":
            maps, extras, reported = eigencam(A), {"layer": fmap}, None
        else:
            maps, w = scorecam(model, x, A, target, through_softmax)
            extras, reported = {"layer": fmap, "weights": w}, target
        if upsample_maps:
            maps = resize_maps(maps, x.shape[2:])
        return Explanation(maps, reported, got[logits], method, extras=extras)
    spec, seed, reported = seed_for(model, feeds, target, logits)
    ref = model.resolve(layer) if layer is not None else None
    graph_method = "cam" if method == "cam" else "gradcam"
    lowered = model.lowered((graph_method, ref, bool(upsample_maps), spec), feeds,
                            lambda table: lower_cam(model, graph_method, table, spec, layer, upsample_maps))
    out = model.engine.run(lowered.graph, {**feeds, **seed}, lowered.outputs)
    weights = out[lowered.extras["weights"]]
    extras = {"layer": lowered.extras["layer"], "weights" if method == "cam" else "alpha": weights}
    maps = out[RELEVANCE]
    if method in GRADIENT_CAMS:
        maps = GRADIENT_CAMS[method](out[lowered.extras["activations"]], out[lowered.extras["gradients"]])
        maps = resize_maps(maps, x.shape[2:]) if upsample_maps else maps
        extras = {"layer": lowered.extras["layer"]}
    return Explanation(maps, out[lowered.target] if lowered.target else reported, out[lowered.output],
                       method, lowered.applied, extras=extras)
