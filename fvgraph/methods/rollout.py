"""Attention rollout (Abnar & Zuidema 2020), the transformer users' baseline: how much each patch token flows into
the class token through all layers of attention, with the residual connection as half of each layer:
    A_l = fuse_heads(softmax attention of layer l), optionally the lowest `discard_ratio` of each row zeroed;
    A'_l = (A_l + I) / 2, rows renormalized;  R = A'_L ... A'_1.
The map is the class token's row of R over the patch grid (the mean over rows when there is no class token),
upsampled to the input. It has no target: the same map for every class.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation
from ..tokens import map_view

FUSIONS = {"mean": lambda a: a.mean(axis=1), "max": lambda a: a.max(axis=1), "min": lambda a: a.min(axis=1)}


def attention_layers(model, table) -> list[str]:
    """The softmax outputs (N, heads, T, T) of global self-attention, in order."""
    out = []
    for i, n in enumerate(model.graph.nodes):
        if n.op_type != "Softmax" or i in model.executor.static:
            continue
        d = table.dims.get(n.outputs[0])
        if d is not None and len(d) == 4 and isinstance(d[2], int) and d[2] == d[3] and d[2] > 1:
            out.append(n.outputs[0])
    return out


def rollout(model, x, head_fusion="mean", discard_ratio=0.0, upsample=True) -> Explanation:
    from .attribution import logits_value
    from .cam import resize_maps
    if head_fusion not in FUSIONS:
        raise InputError(f"head_fusion must be one of {', '.join(FUSIONS)}, got {head_fusion!r}")
    if not 0 <= float(discard_ratio) < 1:
        raise InputError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    feeds = model.feeds(x)
    x = feeds[model.graph.input_names()[0]]
    table = model.shape_table(feeds)
    layers = attention_layers(model, table)
    tokens = {table.dims[v][2] for v in layers}
    if not layers or len(tokens) != 1:
        raise InputError("rollout needs global self-attention: softmax maps (N, heads, T, T) with one token count T "
                         f"in every layer (found {len(layers)} attention layer(s), token counts {sorted(tokens)}); "
                         "windowed attention (Swin) has no single rollout")
    t = tokens.pop()
    view = map_view((None, t, 1), tuple(x.shape[2:]))
    if view is None:
        raise InputError(f"{t} tokens do not form a patch grid of the {x.shape[2]}x{x.shape[3]} input")
    logits = logits_value(model, False)
    got = model.run(x, outputs=layers + [logits])
    n = x.shape[0]
    eye = np.eye(t)
    R = np.broadcast_to(eye, (n, t, t)).copy()
    for v in layers:
        a = FUSIONS[head_fusion](got[v].astype(np.float64))
        if discard_ratio:
            flat = a.reshape(n, -1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                cut = np.partition(flat, k - 1, axis=1)[:, k - 1:k]
                a = np.where((a <= cut[:, :, None]) & (eye == 0), 0, a)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        R = a @ R
    rows = R[:, 0, view.prefix:] if view.prefix else R.mean(axis=1)
    maps = rows.reshape(n, *view.grid)
    maps = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-30)
    maps = maps.astype(np.float32)
    if upsample:
        maps = resize_maps(maps, x.shape[2:])
    return Explanation(maps, None, got[logits], "rollout",
                       extras={"layers": layers, "class_token": bool(view.prefix), "prefix_tokens": view.prefix})
