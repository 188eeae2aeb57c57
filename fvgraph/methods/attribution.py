"""Reverse-pass attribution (the paper's deconvolutional methods): gradient, input x gradient, deconvnet,
guided backpropagation and the LRP family, each a rules preset lowered into one graph (fvgraph.reverse) that
the model's engine runs."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation, Unit
from ..reverse import RELEVANCE, Target, lower, rules_key
from ..rules import Rules

SOFTMAX_OPS = ("Softmax", "LogSoftmax")


def logits_value(model, through_softmax=False) -> str:
    """The value targets are read from: the first graph output, or the input of a trailing Softmax."""
    name = model.graph.output_names()[0]
    if through_softmax:
        return name
    prod = model.graph.producers()
    node = prod.get(name)
    while node is not None and node.op_type in ("Identity",):
        name = node.inputs[0]
        node = prod.get(name)
    if node is not None and node.op_type in SOFTMAX_OPS:
        return node.inputs[0]
    return name


def class_indices(target, dims, n: int, value: str) -> np.ndarray:
    """One class index per sample (-1: the predicted class), checked against a (batch, classes) value."""
    if len(dims) != 2:
        raise InputError(f"class targets need a (batch, classes) output; {value!r} has shape "
                         f"{tuple(dims)}: use fv.Unit(layer, channel, y, x) or a seed array")
    k = dims[1]
    if target is None:
        return np.full(n, -1, np.int64)
    try:
        classes = np.asarray(target, dtype=np.int64).reshape(-1) if not isinstance(target, (int, np.integer)) \
            else np.full(n, int(target), np.int64)
    except (TypeError, ValueError):
        raise InputError(f"target must be None, an int, one int per sample, fv.Unit(...) or a seed array; "
                         f"got {target!r}") from None
    if classes.size == 1 and n > 1:
        classes = np.full(n, classes[0], np.int64)
    if classes.size != n:
        raise InputError(f"got {classes.size} targets for a batch of {n}: give one int, or one per sample")
    if isinstance(k, int):
        bad = classes[(classes < 0) | (classes >= k)]
        if bad.size:
            raise InputError(f"target class {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1})")
    return classes


def unit_mask(model, unit: Unit, dims, n: int) -> np.ndarray:
    """The 0/1 mask selecting a unit (channel, y, x; None = all) in a layer of the given dims."""
    shape = [n] + [d for d in dims[1:]]
    if not all(isinstance(d, int) for d in shape):
        raise InputError(f"the shape of layer {unit.layer!r} is not known before running; use a seed array")
    mask = np.zeros(shape, np.float32)
    idx = [slice(None)] * len(shape)
    for axis, v, what in ((1, unit.channel, "channel"), (2, unit.y, "y"), (3, unit.x, "x")):
        if v is None:
            continue
        if axis >= len(shape) or not 0 <= v < shape[axis]:
            raise InputError(f"Unit {what}={v} is out of range for layer {unit.layer!r} of shape "
                             f"{tuple(['N'] + shape[1:])}")
        idx[axis] = v
    mask[tuple(idx)] = 1
    return mask


def seed_for(model, feeds, target, value: str):
    """(Target, seed feeds, target as reported or None) for a target specification on `value`."""
    n = int(np.shape(next(iter(feeds.values())))[0])
    dims = model.shape_table(feeds).dims.get(value)
    if isinstance(target, Unit):
        at = model.resolve(target.layer)
        table = model.shape_table(feeds)
        layer_dims = table.dims.get(at)
        if layer_dims is None or not all(isinstance(d, int) for d in layer_dims[1:]):
            layer_dims = model.shape_table(feeds, measured=True).dims.get(at)
        mask = unit_mask(model, target, layer_dims, n).astype(model.shape_table(feeds).dtypes.get(at, np.float32))
        return Target("array", at), {"seed": mask}, target
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        if dims is None or any(isinstance(d, int) and d != s for d, s in zip(dims[1:], target.shape[1:])) \
                or len(dims) != target.ndim or target.shape[0] != n:
            shape = tuple([n] + list(dims[1:])) if dims else "?"
            raise InputError(f"a seed array must have the output's shape {shape}, got {target.shape}")
        return Target("array", value), {"seed": target.astype(np.float32)}, None
    if dims is None:
        dims = model.shape_table(feeds, measured=True).dims.get(value)
    classes = class_indices(target, dims, n, value)
    return Target("class", value), {"target": classes}, classes


def attribute(model, x, rules: Rules, target=None, through_softmax=False, return_layers=(), method_name=None):
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    spec, seed, reported = seed_for(model, feeds, target, logits)
    keep = {model.resolve(l): l for l in return_layers}
    lowered = model.lowered(("explain", rules_key(rules), spec, tuple(keep)), feeds,
                            lambda table: lower(model, rules, spec, table, keep=tuple(keep)))
    out = model.engine.run(lowered.graph, {**feeds, **seed}, lowered.outputs)
    if lowered.target is not None:
        reported = out[lowered.target]
    layers = {ref: out[lowered.layers[name]] for name, ref in keep.items()}
    return Explanation(out[RELEVANCE], reported, out[lowered.output], method_name or rules.name, lowered.applied,
                       layers)
