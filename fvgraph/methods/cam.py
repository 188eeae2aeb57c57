"""Class Activation Maps (Zhou et al. 2015) and Grad-CAM (Selvaraju et al. 2017).

CAM: for a net ending in global average pooling then a linear layer, map_c = sum_k w_ck A_k over the pooled
feature maps A. Grad-CAM: for any 4-D layer A, alpha_k = mean over space of dy_c/dA_k and
map = relu(sum_k alpha_k A_k). Both are upsampled bilinearly with half-pixel centres (align_corners=False)
to the input's height and width unless upsample=False.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation
from ..graph import Node
from ..ops import build_kernel
from ..reverse import reverse
from ..rules import Rules
from .attribution import build_seed, logits_value

PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")


def upsample(maps, size, xp):
    """(N, h, w) -> (N, H, W), bilinear, half-pixel centres: the Resize op itself."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    k = build_kernel(Node("upsample", "Resize", ["x", "", "", "s"], ["y"], {"mode": "linear"}))
    sizes = np.array([maps.shape[0], 1, *size], np.int64)
    return k.forward(maps[:, None], None, None, sizes)[0][:, 0]


def cam_structure(model, logits: str):
    """(feature-map value, class weight matrix (classes, K)) of a GAP -> linear head, or a clear error."""
    g, c = model.graph, model.executor.constants
    prod = g.producers()
    head = prod.get(logits)
    if head is None or head.op_type not in ("Gemm", "MatMul", "Conv"):
        raise InputError(f"CAM needs the network to end in global average pooling followed by a linear layer; "
                         f"the output {logits!r} comes from {head.op_type if head else 'an input'}. Use gradcam.")
    if head.inputs[1] not in c:
        raise InputError("CAM needs constant weights in the last linear layer")
    w = model.backend.to_host(c[head.inputs[1]])
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


def default_gradcam_layer(model, tape) -> str:
    """The last 4-D value with spatial size above 1."""
    best = None
    for i in tape.nodes:
        if i in model.executor.static:
            continue
        for o in model.graph.nodes[i].outputs:
            a = tape.values.get(o)
            if a is not None and a.ndim == 4 and a.shape[2] * a.shape[3] > 1:
                best = o
    if best is None:
        raise InputError("Grad-CAM found no 4-D layer with spatial size above 1; pass layer=")
    return best


def explain_cam(model, x, method, target=None, layer=None, upsample_maps=True, through_softmax=False):
    xp = model.backend.xp
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    host = model.backend.to_host
    if method == "cam":
        fmap, w = cam_structure(model, logits)
        if layer is not None and model.resolve(layer) != fmap:
            raise InputError(f"CAM is defined on the pooled feature maps ({fmap!r}); use gradcam for other layers")
        tape = model.executor.run(feeds, [logits, fmap], keep=True)
        _, _, classes = build_seed(model, tape, target, logits, "one-hot")
        if classes is None:
            raise InputError("CAM needs class targets (ints)")
        A = tape.values[fmap]
        maps = xp.einsum("nk,nkhw->nhw", xp.asarray(w[classes]).astype(A.dtype), A)
        extras = {"layer": fmap, "weights": w[classes]}
    else:
        tape = model.executor.run(feeds, [logits], keep=True)
        fmap = model.resolve(layer) if layer is not None else default_gradcam_layer(model, tape)
        A = tape.values.get(fmap)
        if A is None or A.ndim != 4:
            raise InputError(f"Grad-CAM needs a 4-D layer (N, C, H, W); {layer!r} has shape "
                             f"{None if A is None else tuple(A.shape)}")
        seed_at, seed, classes = build_seed(model, tape, target, logits, "one-hot")
        stop = model.executor.producer_index.get(fmap, -1)
        signals, _ = reverse(model, tape, {seed_at: seed}, Rules.load("gradient"), keep={fmap}, stop_after=stop)
        grad = signals.get(fmap)
        grad = xp.zeros_like(A) if grad is None else grad
        alpha = grad.mean(axis=(2, 3))
        maps = xp.maximum(xp.einsum("nk,nkhw->nhw", alpha, A), 0)
        extras = {"layer": fmap, "alpha": np.asarray(host(alpha))}
    if upsample_maps:
        maps = upsample(maps, x_spatial(feeds, model), xp)
    return Explanation(np.asarray(host(maps)), classes, np.asarray(host(tape.values[logits])), method,
                       extras=extras)


def x_spatial(feeds, model):
    x = feeds[model.graph.input_names()[0]]
    return tuple(x.shape[2:4])
