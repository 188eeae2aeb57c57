"""Class Activation Maps (Zhou et al. 2015) and Grad-CAM (Selvaraju et al. 2017), lowered into one graph.

CAM: for a net ending in global average pooling then a linear layer, map_c = sum_k w_ck A_k over the pooled
feature maps A. Grad-CAM: for any 4-D layer A, alpha_k = mean over space of dy_c/dA_k and
map = relu(sum_k alpha_k A_k), the reverse pass going only down to A. Both are upsampled bilinearly with
half-pixel centres (align_corners=False, ONNX Resize "linear") to the input's height and width unless
upsample=False.
"""
from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..errors import InputError
from ..explanation import Explanation
from ..reverse import RELEVANCE, Lowered, Target, propagate, seed_value
from ..rules import Rules
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


def default_gradcam_layer(model, table, target_value: str) -> str:
    """The last 4-D value with spatial size above 1 that every path from the input to the target passes
    through: the last conv block of a classifier; for a detector, the last backbone map that all its heads
    read (a head's own maps would give a detection of another level an all-zero map)."""
    g, static = model.graph, model.executor.static
    candidates = []
    for i, n in enumerate(g.nodes):
        if i in static:
            continue
        for o in n.outputs:
            d = table.dims.get(o)
            if d is not None and len(d) == 4 and all(isinstance(v, int) for v in d[2:]) and d[2] * d[3] > 1:
                candidates.append(o)
    for v in reversed(candidates):
        if not _reaches(g, static, g.input_names()[0], target_value, blocked=v):
            return v
    raise InputError("Grad-CAM found no 4-D layer with spatial size above 1 that the target depends on; pass layer=")


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
    lead = b.op("Slice", [b.op("Shape", [four], dims=(4,), dtype=np.int64), b.ints([0]), b.ints([2])], dims=(2,),
                dtype=np.int64)
    sizes = b.op("Concat", [lead, b.ints(list(size))], axis=0, dims=(4,), dtype=np.int64)
    up = b.op("Resize", [four, "", "", sizes], mode="linear", dims=(d[0], 1) + tuple(size), dtype=b.dtype(maps))
    return b.op("Squeeze", [up, b.ints([1])], dims=(d[0],) + tuple(size), dtype=b.dtype(maps))


def lower_cam(model, method: str, table, spec: Target, layer, upsample_maps: bool) -> Lowered:
    """The CAM or Grad-CAM graph: inputs the model's and the target's (a class index per sample, or a seed
    for Grad-CAM), outputs the map, the target value, the class used and the per-channel weights (CAM's class
    weights, Grad-CAM's alpha)."""
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
        fmap = model.resolve(layer) if layer is not None else default_gradcam_layer(model, table, logits)
        d = table.dims.get(fmap)
        if d is None or len(d) != 4:
            raise InputError(f"Grad-CAM needs a 4-D layer (N, C, H, W); {layer!r} has shape {d}")
        seed, used, inputs = seed_value(b, spec, False)
        signals, applied = propagate(model, b, Rules.load("gradient"), {logits: seed}, [fmap])
        grad = signals.get(fmap) or b.zeros(fmap)
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
    extra = b.named(weights, "weights")
    graph = b.finish([o for o in (rel, logits, used, extra) if o])
    return Lowered(graph, logits, used, {}, {"layer": fmap, "weights": extra}, applied, inputs, b.table)


def explain_cam(model, x, method, target=None, layer=None, upsample_maps=True, through_softmax=False):
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    first = model.graph.input_names()[0]
    if np.ndim(feeds[first]) != 4:
        raise InputError(f"{method} needs an image batch (N, C, H, W), got shape {np.shape(feeds[first])}")
    spec, seed, reported = seed_for(model, feeds, target, logits)
    ref = model.resolve(layer) if layer is not None else None
    lowered = model.lowered((method, ref, bool(upsample_maps), spec), feeds,
                            lambda table: lower_cam(model, method, table, spec, layer, upsample_maps))
    out = model.engine.run(lowered.graph, {**feeds, **seed}, lowered.outputs)
    weights = out[lowered.extras["weights"]]
    extras = {"layer": lowered.extras["layer"], "weights" if method == "cam" else "alpha": weights}
    return Explanation(out[RELEVANCE], out[lowered.target] if lowered.target else reported, out[lowered.output],
                       method, lowered.applied, extras=extras)
