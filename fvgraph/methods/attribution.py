"""Reverse-pass attribution (the paper's deconvolutional methods): gradient, input x gradient, deconvnet,
guided backpropagation and the LRP family, each a rules preset for the one reverse engine."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation, Unit
from ..reverse import reverse
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


def build_seed(model, tape, target, logits: str, seed_kind: str):
    """(value name, seed array on the device, target as reported) for a target specification."""
    xp = model.backend.xp
    if isinstance(target, Unit):
        name = model.resolve(target.layer)
        act = tape.values[name]
        mask = np.zeros(act.shape, dtype=bool)
        idx = [slice(None)] * act.ndim
        for axis, v, what in ((1, target.channel, "channel"), (2, target.y, "y"), (3, target.x, "x")):
            if v is None:
                continue
            if axis >= act.ndim or not 0 <= v < act.shape[axis]:
                raise InputError(f"Unit {what}={v} is out of range for layer {target.layer!r} of shape "
                                 f"{tuple(act.shape)}")
            idx[axis] = v
        mask[tuple(idx)] = True
        seed = xp.asarray(mask.astype(act.dtype))
        return name, (seed * act if seed_kind == "output" else seed), target
    y = tape.values[logits]
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        if target.shape != tuple(y.shape):
            raise InputError(f"a seed array must have the output's shape {tuple(y.shape)}, got {target.shape}")
        return logits, xp.asarray(target.astype(y.dtype)), None
    if y.ndim != 2:
        raise InputError(f"class targets need a (batch, classes) output; {logits!r} has shape {tuple(y.shape)}: "
                         "use fv.Unit(layer, channel, y, x) or a seed array")
    n, k = y.shape
    if target is None:
        classes = np.asarray(model.backend.to_host(y.argmax(axis=1)), dtype=np.int64)
    else:
        classes = np.asarray(target, dtype=np.int64).reshape(-1) if not isinstance(target, (int, np.integer)) \
            else np.full(n, int(target), np.int64)
        if classes.size == 1 and n > 1:
            classes = np.full(n, classes[0], np.int64)
        if classes.size != n:
            raise InputError(f"got {classes.size} targets for a batch of {n}: give one int, or one per sample")
        bad = classes[(classes < 0) | (classes >= k)]
        if bad.size:
            raise InputError(f"target class {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1})")
    seed = np.zeros((n, k), dtype=y.dtype)
    seed[np.arange(n), classes] = 1
    seed = xp.asarray(seed)
    return logits, (seed * y if seed_kind == "output" else seed), classes


def attribute(model, x, rules: Rules, target=None, through_softmax=False, return_layers=(), method_name=None):
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    want = [logits] + ([model.resolve(target.layer)] if isinstance(target, Unit) else [])
    keep_names = {model.resolve(l): l for l in return_layers}
    tape = model.executor.run(feeds, want, keep=True)
    seed_at, seed, reported = build_seed(model, tape, target, logits, rules.seed)
    signals, applied = reverse(model, tape, {seed_at: seed}, rules, keep=keep_names)
    first = model.graph.input_names()[0]
    xin = tape.values[first]
    rel = signals.get(first)
    rel = model.backend.xp.zeros_like(xin) if rel is None else rel
    if rules.multiply_input:
        rel = rel * xin
    host = model.backend.to_host
    layers = {ref: np.asarray(host(signals[name])) if name in signals else
              np.zeros(tuple(tape.values[name].shape), np.float32) for name, ref in keep_names.items()}
    return Explanation(np.asarray(host(rel)), reported, np.asarray(host(tape.values[logits])),
                       method_name or rules.name, applied, layers)
