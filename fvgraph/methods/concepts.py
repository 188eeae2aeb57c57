"""Concept relevance propagation (CRP; Achtibat et al., Nature Machine Intelligence 2023), the semantics of
zennit-crp's CondAttribution, for every reverse-pass rule method (the LRP family, gradient, guided,
input x gradient, ...).

- `conditional`: the input relevance that flows through some channels of a layer only. The reverse pass
  starts at the output as the method's own does; at the layer the signal of every other channel is set to
  zero; the rest goes on down to the input. k concepts are one batch through one lowered graph: the input is
  tiled k times and the mask is a (batch, channels) graph input (fvgraph.reverse), so k maps cost one pass
  of a k-times batch, not k lowerings or k sessions.
- `atlas`: the channels of a layer ranked by their relevance to one decision (the relevance at the layer
  summed over every axis but the channels), their share, each one's conditional heatmap (one batch) and,
  with a lower layer, zennit-crp's attribution graph one level down: for each top channel the lower layer's
  channels ranked by the relevance that flows from it.
- `layer_relevance`: a layer's relevance per sample, as the atlas and relevance maximization
  (fvgraph.methods.examples, by="relevance") rank channels by it.

The relevance at a layer is the signal of the reverse pass there for presets that seed with the output (the
LRP family: relevance is what flows); for the gradient-type presets it is the signal times the activation
(the first-order share of the score, as input x gradient reads it at the input), so a gradient's channels
are ranked by their contribution, not by their raw sensitivity. Channels are axis 1 of the layer's value
((N, C, ...) maps and (N, C) vectors).

The maps of all channels of a layer sum to the unconditional map for every rule linear in the signal (LRP,
the gradient, input x gradient) where the layer is a cut of the graph (every path from the input to the
target passes it); relevance on a skip connection around the layer is in every map, as in zennit-crp.
Guided backpropagation and deconvnet rectify the signal at each ReLU, so their maps do not add up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..explanation import Concept, Explanation, OutputTarget, Unit


# --------------------------------------------------------------------------- methods and options
def rule_method(model, method, options: dict):
    """(Method, fv.Rules with the options applied) of a reverse-pass rule method, checked; integrated
    gradients (many passes on a path) is refused by name."""
    from .registry import _rules_with, lookup
    m = lookup(method)
    if m.family != "rules":
        raise InputError(f"concept relevance needs a reverse-pass rule method (lrp-epsilon, gradient, guided, "
                         f"input-x-gradient, ...); {m.name} is a {m.family} method")
    checked = m.check({k: v for k, v in options.items() if k != "concept"})
    rules = _rules_with(model, m.rules, checked)
    if rules.integrate:
        raise InputError(f"{m.name} integrates over a path of many passes; concept relevance is for one-pass "
                         "reverse methods")
    return m, rules


def _concepts(concepts) -> list[Concept]:
    if isinstance(concepts, Concept):
        return [concepts]
    if isinstance(concepts, (list, tuple)) and concepts and all(isinstance(c, Concept) for c in concepts):
        return list(concepts)
    raise InputError(f"concept must be fv.Concept(layer, channels=[...]) or a list of them, got {concepts!r}")


def _first(model, x) -> np.ndarray:
    return model.feeds(x)[model.graph.input_names()[0]]


def _tile(x, k: int):
    """Each sample repeated k times in a row (sample-major: image i's k copies at i*k .. i*k + k - 1)."""
    if isinstance(x, dict):
        return {name: np.repeat(np.asarray(v), k, axis=0) for name, v in x.items()}
    return np.repeat(np.asarray(x), k, axis=0)


def _tile_target(target, n: int, k: int):
    if target is None or isinstance(target, (Unit, OutputTarget, int, np.integer)):
        return target
    arr = np.asarray(target)
    if arr.dtype.kind == "f" and arr.ndim >= 1 and arr.shape[0] == n:  # a seed array per sample
        return np.repeat(arr, k, axis=0)
    flat = arr.reshape(-1)
    if flat.size == 1:
        return int(flat[0])
    if flat.size != n:
        raise InputError(f"got {flat.size} targets for a batch of {n}: give one int, or one per sample")
    return np.repeat(flat.astype(np.int64), k)


def channel_count(model, feeds, value: str, layer) -> int:
    """The size of the layer's channel axis (axis 1), or one InputError line when it has none."""
    from .attribution import value_dims
    dims = value_dims(model, feeds, value)
    if len(dims) < 2 or not isinstance(dims[1], (int, np.integer)):
        raise InputError(f"layer {layer!r} ({value!r}) of shape {tuple(dims)} has no channels: concepts need a "
                         "(batch, channels, ...) layer")
    return int(dims[1])


def concept_masks(model, feeds, concepts: list[Concept], n: int) -> dict:
    """{layer value: (n * k, channels) mask}: row i*k + j keeps concept j's channels at its layer and every
    channel of the other layers (a concept conditions only its own layer)."""
    k = len(concepts)
    values = [model.resolve(c.layer) for c in concepts]
    masks = {}
    for v, c in zip(values, concepts):
        if v not in masks:
            masks[v] = np.ones((k, channel_count(model, feeds, v, c.layer)), np.float32)
    for j, (v, c) in enumerate(zip(values, concepts)):
        size = masks[v].shape[1]
        bad = [ch for ch in c.channels if not 0 <= ch < size]
        if bad:
            raise InputError(f"concept channel(s) {bad} out of range: layer {c.layer!r} has {size} channels "
                             f"(0..{size - 1})")
        masks[v][j] = 0
        masks[v][j, list(c.channels)] = 1
    return {v: np.tile(m, (n, 1)) for v, m in masks.items()}


# --------------------------------------------------------------------------- conditional maps
def conditional(model, x, method, target=None, concepts=None, *, through_softmax=False, return_layers=(),
                **options) -> Explanation:
    """Concept-conditional maps: for each of the k concepts (fv.Concept or a list of them) the input relevance
    that flows through its channels only. relevance has shape (N * k, ...) (image i's maps at i*k .. i*k+k-1;
    (k, ...) for one image); extras["concepts"] lists the concepts, extras["images"] is N."""
    m, rules = rule_method(model, method, options)
    return conditional_rules(model, x, rules, target, concepts, through_softmax, return_layers, m.name)


def conditional_rules(model, x, rules, target, concepts, through_softmax=False, return_layers=(),
                      method_name=None) -> Explanation:
    """`conditional` for a preset with its options applied (the method table's compute calls this)."""
    from .attribution import attribute
    concepts = _concepts(concepts)
    feeds = model.feeds(x)
    n, k = len(_first(model, x)), len(concepts)
    masks = concept_masks(model, feeds, concepts, n)
    e = attribute(model, _tile(x, k), rules, _tile_target(target, n, k), through_softmax, tuple(return_layers),
                  method_name or rules.name, masks=masks)
    e.extras.update(concepts=concepts, images=n)
    return e


# --------------------------------------------------------------------------- relevance at a layer
def _per_channel(rel: np.ndarray) -> np.ndarray:
    """(N, C): a layer's relevance summed over every axis but the batch and the channels."""
    rel = np.asarray(rel, np.float64)
    return rel.reshape(rel.shape[0], rel.shape[1], -1).sum(axis=2)


def _as_relevance(model, x, rules, signals: dict) -> dict:
    """{value: relevance}: the signal itself for output-seeded presets (LRP), else times the activation."""
    if rules.seed == "output":
        return signals
    acts = model.run(x, outputs=list(signals))
    return {v: np.asarray(s) * np.asarray(acts[v]) for v, s in signals.items()}


def layer_relevance(model, x, method, layer, target=None, through_softmax=False, **options) -> tuple:
    """(relevance at the layer (N, ...), the Explanation of the unconditional pass)."""
    _, rules = rule_method(model, method, options)
    return _layer_relevance(model, x, rules, layer, target, through_softmax)


def _layer_relevance(model, x, rules, layer, target, through_softmax=False, method_name=None):
    from .attribution import attribute
    value = model.resolve(layer)
    e = attribute(model, x, rules, target, through_softmax, (value,), method_name or rules.name)
    rel = _as_relevance(model, x, rules, {value: e.layers[value]})[value]
    return rel, e


@dataclass
class Atlas:
    """The concepts of one decision at a layer (see `atlas`)."""
    layer: str                     # the layer's value
    method: str
    target: object                 # the class used (or the caller's target)
    channels: np.ndarray           # the top channels, most relevant first
    relevance: np.ndarray          # their relevance (summed over the layer's other axes)
    share: np.ndarray              # relevance / the sum of |relevance| over all channels (zennit-crp's abs_norm)
    total: float                   # the layer's relevance, all channels together
    per_channel: np.ndarray        # every channel's relevance (C,)
    maps: np.ndarray               # (top, ...) each top channel's conditional input relevance
    output: np.ndarray = None      # the scores
    lower_layer: str | None = None
    children: dict | None = None   # channel -> [(lower channel, relevance, share), ...] most relevant first
    extras: dict = field(default_factory=dict)

    def concepts(self) -> list[Concept]:
        return [Concept(self.layer, [int(c)]) for c in self.channels]

    def to_json(self) -> dict:
        out = {"layer": self.layer, "method": self.method, "total": self.total,
               "target": np.asarray(self.target).tolist() if not isinstance(self.target, (Unit, OutputTarget))
               else repr(self.target),
               "concepts": [{"channel": int(c), "relevance": float(r), "share": float(s)}
                            for c, r, s in zip(self.channels, self.relevance, self.share)]}
        if self.children is not None:
            out["lower_layer"] = self.lower_layer
            for item in out["concepts"]:
                item["children"] = [{"channel": int(c), "relevance": float(r), "share": float(s)}
                                    for c, r, s in self.children[item["channel"]]]
        return out


def atlas(model, x, method, layer, target=None, top=5, *, lower_layer=None, children=5, through_softmax=False,
          **options) -> Atlas:
    """The layer's channels ranked by their relevance to the decision on one image x (1, ...), with each top
    channel's conditional map (all computed as one batch); with `lower_layer`, each top channel's `children`
    most relevant channels there (the relevance that flows from it, summed over space)."""
    m, rules = rule_method(model, method, options)
    n = len(_first(model, x))
    if n != 1:
        raise InputError(f"a concept atlas explains one image; got a batch of {n}")
    if top is None or int(top) < 1:
        raise InputError(f"top must be at least 1, got {top!r}")
    value = model.resolve(layer)
    channel_count(model, model.feeds(x), value, layer)
    rel, e = _layer_relevance(model, x, rules, value, target, through_softmax, m.name)
    per = _per_channel(rel)[0]
    order = np.argsort(-per, kind="stable")[:int(top)]
    norm = np.abs(per).sum()
    share = per / norm if norm > 0 else np.zeros_like(per)
    lower = model.resolve(lower_layer) if lower_layer is not None else None
    target_used = e.target if isinstance(e.target, np.ndarray) else target
    cond = conditional_rules(model, x, rules, target_used, [Concept(value, [int(c)]) for c in order],
                             through_softmax, (lower,) if lower else (), m.name)
    kids = None
    if lower is not None:
        low = _per_channel(_as_relevance(model, _tile(x, len(order)), rules, {lower: cond.layers[lower]})[lower])
        kids = {}
        for j, c in enumerate(order):
            row = low[j]
            total = np.abs(row).sum()
            best = np.argsort(-row, kind="stable")[:int(children)]
            kids[int(c)] = [(int(b), float(row[b]), float(row[b] / total) if total > 0 else 0.0) for b in best]
    return Atlas(value, m.name, e.target, order.astype(np.int64), per[order], share[order], float(per.sum()), per,
                 cond.relevance, e.output, lower, kids)


def concept_examples(model, images, atlas_: Atlas, target=None, k=4, **options) -> dict:
    """Each atlas channel's top dataset examples by its relevance to the decision's class (RelMax) among
    `images` (paths or folders): {channel: [Example, ...]}, streamed like fvgraph examples."""
    from .examples import top_examples
    cls = target if target is not None else (int(np.ravel(atlas_.target)[0]) if atlas_.target is not None else None)
    return top_examples(model, images, atlas_.layer, [int(c) for c in atlas_.channels], k, by="relevance",
                        target=cls, method=atlas_.method, **options)


def write_atlas(atlas_: Atlas, shown, out, examples=None, spec=None, overwrite=False, alpha=0.5) -> list:
    """The atlas as OUT/concepts.png (a row per concept: its conditional heatmap over the photo, its share,
    and with `examples` its top images and their relevance-cropped patches) and OUT/concepts.json (the same,
    with the examples' files and boxes). Every file is checked before the first is written; writes are
    atomic."""
    import json
    from pathlib import Path

    from PIL import Image

    from ..errors import refuse_overwrite
    from ..files import write_atomic, write_text
    from ..render import grid, picture
    out = Path(out)
    files = [out / "concepts.png", out / "concepts.json"]
    for f in files:
        refuse_overwrite(f, overwrite, other_out=True)
    rows, labels, record = [], [], atlas_.to_json()
    for j, item in enumerate(record["concepts"]):
        row = [picture(atlas_.maps[j], "heat", image=shown, alpha=alpha)]
        for e in (examples or {}).get(item["channel"], []):
            if spec is not None:
                from ..image import read_rgb, resize_crop
                photo = resize_crop(read_rgb(e.image), spec)
                y0, x0, y1, x1 = e.box
                row += [photo, np.ascontiguousarray(photo[y0:y1, x0:x1])]
        item["examples"] = [{"image": str(e.image), "score": float(e.score), "box": [int(v) for v in e.box]}
                            for e in (examples or {}).get(item["channel"], [])]
        rows.append(row)
        labels.append(f"#{item['channel']} {100 * item['share']:.0f}%")
    width = max(len(r) for r in rows)
    titles = ["conditional map"] + (["example", "patch"] * ((width - 1) // 2))
    pic = grid(rows, titles, labels)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(files[0], lambda t: Image.fromarray(pic).save(t, format="PNG"))
    write_text(files[1], json.dumps(record, indent=1))
    return files
