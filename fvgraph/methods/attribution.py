"""Reverse-pass attribution (the paper's deconvolutional methods): gradient, input x gradient, deconvnet,
guided backpropagation and the LRP family, each a rules preset lowered into one graph (fvgraph.reverse) that
the model's engine runs."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explanation import Explanation, OutputTarget, Unit
from ..reverse import RELEVANCE, Target, lower, mask_input_name, rules_key
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
    """One class index per sample (-1: the predicted class), checked against a (batch, classes) value (or
    (batch, classes, 1, 1): MatConvNet's and other fully convolutional classifiers), or against the last axis of
    a value whose batch is not axis 0 (time-major (T, N, C): see time_major_seed)."""
    if batch_axis(dims) != 0:
        dims = (dims[batch_axis(dims)], dims[-1])
    if len(dims) < 2 or any(d != 1 for d in dims[2:]):
        raise InputError(f"class targets need a (batch, classes) output; {value!r} has shape "
                         f"{tuple('N' if isinstance(d, str) else d for d in dims)}: use fv.OutputTarget(index=...) "
                         "(e.g. (4 + class, anchor) for a YOLO output), fv.OutputTarget(mask=...) for a region, "
                         "fv.Unit(...) or a seed array")
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


def output_value(model, target: OutputTarget) -> str:
    """The value an OutputTarget reads: an output by name or index, or any layer."""
    names = model.graph.output_names()
    ref = target.output
    if ref is None:
        return names[0]
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        if not -len(names) <= ref < len(names):
            raise InputError(f"output index {ref} is out of range: the model has {len(names)} output(s) {names}")
        return names[ref]
    return ref if ref in names else model.resolve(ref)


def batch_axis(dims) -> int:
    """The axis of a value's dims that is the batch: 0, or the one symbolic axis after it where axis 0 is fixed
    (time-major (T, N, C) outputs of CRNN and other OCR nets, read by CTC)."""
    if dims is None or not dims or isinstance(dims[0], str):
        return 0
    symbolic = [k for k, d in enumerate(dims) if isinstance(d, str)]
    return symbolic[0] if len(symbolic) == 1 else 0


def per_sample(a: np.ndarray, axis: int) -> np.ndarray:
    """(n, everything else flattened): the batch axis first."""
    return np.moveaxis(np.asarray(a), axis, 0).reshape(np.shape(a)[axis], -1)


def time_major_predicted(out, ax: int) -> np.ndarray:
    """The predicted class per sample of a value whose batch is axis `ax`: the argmax of the class scores (last
    axis) summed over every other axis (the time steps)."""
    a = np.moveaxis(np.asarray(out, np.float64), ax, 0)
    return a.reshape(a.shape[0], -1, a.shape[-1]).sum(axis=1).argmax(axis=1)


def value_dims(model, feeds, value):
    """A value's dims for these inputs (batch symbolic), measured when inference cannot tell."""
    dims = model.shape_table(feeds).dims.get(value)
    if dims is None or not all(isinstance(d, int) for d in dims[1:]):
        dims = model.shape_table(feeds, measured=True).dims.get(value)
    if dims is None:
        raise InputError(f"the shape of {value!r} is not known for inputs of shape "
                         f"{[np.shape(v) for v in feeds.values()]}")
    return dims


def output_seed(model, feeds, target: OutputTarget, n: int) -> tuple[str, np.ndarray]:
    """(value, seed array (n, ...)): 1 at the index, or the mask, in every sample."""
    value = output_value(model, target)
    dims = value_dims(model, feeds, value)
    ax = batch_axis(dims)
    shape = tuple(n if k == ax else d for k, d in enumerate(dims))
    one = tuple(d for k, d in enumerate(shape) if k != ax)  # one sample's output
    seed = np.zeros(shape, np.float32)
    if (target.index is None) == (target.mask is None):
        raise InputError("OutputTarget needs index= (one element) or mask= (a weighted region), not "
                         f"{'both' if target.index is not None else 'neither'}")
    if target.index is not None:
        try:
            index = tuple(int(i) for i in np.atleast_1d(np.asarray(target.index)).reshape(-1))
        except (TypeError, ValueError):
            raise InputError(f"OutputTarget index must be integers, got {target.index!r}") from None
        if len(index) != len(shape) - 1 or any(not 0 <= i < d for i, d in zip(index, one)):
            raise InputError(f"OutputTarget index {index} does not fit output {value!r} of shape "
                             f"{_shown(shape, ax)} (give one index per axis but the batch)")
        seed[index[:ax] + (slice(None),) + index[ax:]] = 1
        return value, seed
    mask = np.asarray(target.mask, np.float32)
    try:
        seed[...] = mask if mask.ndim == len(shape) else np.expand_dims(mask, ax) if mask.ndim == len(one) \
            else mask[None]
    except ValueError:
        raise InputError(f"OutputTarget mask of shape {mask.shape} does not broadcast to output {value!r} of "
                         f"shape {_shown(shape, ax)}") from None
    return value, seed


def _shown(shape, ax):
    return tuple("N" if k == ax else d for k, d in enumerate(shape))


def channel_axis(model, dims, input_hw=None) -> int:
    """The channel (class) axis of a rank-4 output: 1 (N, C, H, W), or 3 where it is channels last (N, H, W, C),
    as TensorFlow exports (MTCNN's P-Net softmax) write it. Channels last when the model's labels count only the
    last axis, when the middle axes tile the input as a map (fvgraph.tokens) and the last two do not, or when the
    last axis is smaller than both middle ones (few classes over a spatial grid)."""
    if len(dims) != 4 or not all(isinstance(d, (int, np.integer)) for d in dims[1:]):
        return 1
    a, b, c = (int(d) for d in dims[1:])
    names = model.class_names()
    if names and (a == len(names)) != (c == len(names)):
        return 1 if a == len(names) else 3
    if input_hw is not None:
        from ..tokens import map_view
        view = map_view(dims, input_hw)
        if view is not None and view.kind == "nhwc":
            return 3
    return 3 if c < a and c < b else 1


def output_mask(model, source, output=None, channel=None) -> np.ndarray:
    """An OutputTarget mask from a file: a .npy weight array as it is, or a grayscale image (0..255 -> 0..1)
    resized (nearest) to the output's height and width, in one channel or all. A channels-last output (N, H, W, C)
    takes the image over its axes 1, 2 and `channel` along its last axis (see channel_axis)."""
    from ..image import input_shape
    shape = input_shape(model)
    value = output_value(model, OutputTarget(output=output, index=0))
    dims = value_dims(model, {model.graph.input_names()[0]: np.zeros(shape, np.float32)}, value)
    axis = channel_axis(model, dims, tuple(shape[2:]))
    if str(source).lower().endswith(".npy"):
        try:
            mask = np.load(source, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise InputError(f"{source}: not a readable .npy array ({e})") from None
    else:
        from PIL import Image
        from ..image import read_rgb
        if len(dims) != 4:
            raise InputError(f"an image mask needs a (batch, channels, height, width) output; {value!r} has shape "
                             f"{tuple(dims)}: give a .npy array")
        h, w = (dims[2], dims[3]) if axis == 1 else (dims[1], dims[2])
        gray = Image.fromarray(read_rgb(source)).convert("L").resize((w, h), Image.NEAREST)
        mask = np.asarray(gray, np.float32) / 255.0
        mask = mask[None] if axis == 1 else mask[..., None]  # broadcast over the channels
    if channel is not None:
        if len(dims) < 2 or not 0 <= channel < dims[axis]:
            raise InputError(f"--target-channel {channel} is out of range for output {value!r} of shape {tuple(dims)}")
        full = np.zeros(tuple(dims[1:]), np.float32)
        plane = tuple(d for k, d in enumerate(full.shape) if k != axis - 1)
        if mask.size == int(np.prod(plane)):
            mask = mask.reshape(plane)
        elif mask.shape == full.shape:
            mask = np.take(mask, channel, axis=axis - 1)
        else:
            raise InputError(f"a mask of shape {mask.shape} does not fit one channel {plane} of output {value!r} "
                             f"of shape {tuple(dims)}")
        index = [slice(None)] * full.ndim
        index[axis - 1] = channel
        full[tuple(index)] = mask
        mask = full
    return mask


def top_classes(model, logits: np.ndarray, k: int = 1) -> list | None:
    """The k most probable (class, label, probability) of one sample's first output when it holds class
    scores ((classes,), or (classes, 1, 1) from a fully convolutional classifier), else None."""
    if logits.ndim > 1 and all(d == 1 for d in logits.shape[1:]):
        logits = logits.reshape(-1)
    if logits.ndim != 1:
        return None
    p = np.exp(logits - logits.max())
    p /= p.sum()
    names = model.class_names()
    return [(int(c), names[c] if names and c < len(names) else str(int(c)), float(p[c]))
            for c in np.argsort(-p, kind="stable")[:k]]


def prediction(model, logits: np.ndarray):
    """(class, label, probability) of one sample's first output when it holds class scores, else
    (None, a description, None): detectors and segmenters have no single class."""
    top = top_classes(model, logits)
    return top[0] if top else (None, f"output {tuple(logits.shape)}", None)


def seed_for(model, feeds, target, value: str):
    """(Target, seed feeds, target as reported or None) for a target specification on `value`."""
    n = int(np.shape(next(iter(feeds.values())))[0])
    if isinstance(target, OutputTarget):
        at, seed = output_seed(model, feeds, target, n)
        return Target("array", at), {"seed": seed.astype(model.shape_table(feeds).dtypes.get(at, np.float32))}, target
    dims = model.shape_table(feeds).dims.get(value)
    if isinstance(target, Unit):
        at = model.resolve(target.layer)
        mask = unit_mask(model, target, value_dims(model, feeds, at), n).astype(
            model.shape_table(feeds).dtypes.get(at, np.float32))
        return Target("array", at), {"seed": mask}, target
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        if dims is None or any(isinstance(d, int) and d != s for d, s in zip(dims[1:], target.shape[1:])) \
                or len(dims) != target.ndim or target.shape[0] != n:
            shape = tuple([n] + list(dims[1:])) if dims else "?"
            raise InputError(f"a seed array must have the output's shape {shape}, got {target.shape}")
        return Target("array", value), {"seed": target.astype(np.float32)}, None
    if dims is None or not all(isinstance(d, int) for d in dims[1:]):
        dims = value_dims(model, feeds, value)
    ax = batch_axis(dims)
    if ax != 0:
        return time_major_seed(model, feeds, target, dims, ax, n, value)
    classes = class_indices(target, dims, n, value)
    return Target("class", value), {"target": classes}, classes


def time_major_seed(model, feeds, target, dims, ax, n, value):
    """A class target on an output whose batch is not axis 0 ((T, N, C), time-major): the class axis is the last,
    and class c's score is the sum of its scores over the other axes (every time step); the predicted class is
    the argmax of those sums. One step is fv.OutputTarget(index=(t, c)) (the index leaves out the batch axis)."""
    shape = tuple(n if k == ax else d for k, d in enumerate(dims))
    if not all(isinstance(d, int) for d in shape):
        raise InputError(f"the shape of {value!r} is not known for inputs of shape "
                         f"{[np.shape(v) for v in feeds.values()]}")
    classes = class_indices(target, dims, n, value)
    if np.any(classes < 0):
        classes = np.where(classes < 0, time_major_predicted(model.run(feeds, outputs=[value])[value], ax), classes)
    hot = (np.arange(shape[-1]) == classes.reshape((1,) * ax + (n,) + (1,) * (len(shape) - ax - 1)))
    seed = np.broadcast_to(hot, shape).astype(model.shape_table(feeds).dtypes.get(value, np.float32))
    return Target("array", value), {"seed": np.ascontiguousarray(seed)}, classes


def target_scores(model, x, target, through_softmax=False, probabilities=False):
    """(the target's score per sample, the value it is read from): a class's logit (or, with probabilities,
    its softmax probability), a unit's mean, an OutputTarget's element or masked sum."""
    feeds = model.feeds(x)
    n = len(next(iter(feeds.values())))
    spec, seed, reported = seed_for(model, feeds, target, logits_value(model, through_softmax))
    out = model.run(x, outputs=[spec.value])[spec.value]
    ax = batch_axis(model.shape_table(feeds).dims.get(spec.value))
    if ax != 0 and isinstance(reported, np.ndarray) and reported.dtype.kind == "i":  # a class, time-major:
        a = np.moveaxis(np.asarray(out, np.float64), ax, 0)  # its scores summed over time (time_major_seed)
        flat = a.reshape(n, -1, a.shape[-1]).sum(axis=1)
        if probabilities:
            flat = np.exp(flat - flat.max(axis=1, keepdims=True))
            flat /= flat.sum(axis=1, keepdims=True)
        return flat[np.arange(n), reported], out
    if spec.kind == "class":
        flat = out.reshape(n, -1).astype(np.float64)
        classes = np.where(seed["target"] < 0, flat.argmax(axis=1), seed["target"])
        if probabilities:
            flat = np.exp(flat - flat.max(axis=1, keepdims=True))
            flat /= flat.sum(axis=1, keepdims=True)
        return flat[np.arange(n), classes], out
    weights = seed["seed"].astype(np.float64)
    if isinstance(target, Unit):
        weights = weights / np.maximum(weights.reshape(n, -1).sum(axis=1), 1).reshape((n,) + (1,) * (weights.ndim - 1))
    return per_sample(out * weights, ax).sum(axis=1), out


def attribute(model, x, rules: Rules, target=None, through_softmax=False, return_layers=(), method_name=None,
              masks=None):
    """The preset's reverse pass on x in one lowered graph. masks: {layer: (batch, channels) array}: the signal
    at each layer multiplied by its row per sample and channel (concept relevance, fvgraph.methods.concepts)."""
    feeds = model.feeds(x)
    logits = logits_value(model, through_softmax)
    spec, seed, reported = seed_for(model, feeds, target, logits)
    keep = {model.resolve(l): l for l in return_layers}
    masked = {model.resolve(l): m for l, m in (masks or {}).items()}
    key = ("explain", rules_key(rules, with_values=False), spec, tuple(keep)) + \
        ((("masks",) + tuple(masked),) if masked else ())
    lowered = model.lowered(key, feeds, lambda table: lower(model, rules, spec, table, keep=tuple(keep),
                                                            masks=tuple(masked)))
    if masked:
        types = model.shape_table(feeds).dtypes
        seed = dict(seed)
        for k, (v, m) in enumerate(masked.items()):  # the value's float type (float32 for integer values)
            dtype = np.dtype(types.get(v, np.float32))
            seed[mask_input_name(k, v)] = np.ascontiguousarray(m, dtype=dtype if dtype.kind == "f" else np.float32)
    out = model.engine.run(lowered.graph, {**feeds, **seed, **lowered.param_feeds(rules)}, lowered.outputs)
    if lowered.target is not None:
        reported = out[lowered.target]
    layers = {ref: out[lowered.layers[name]] for name, ref in keep.items()}
    return Explanation(out[RELEVANCE], reported, out[lowered.output], method_name or rules.name, lowered.applied,
                       layers)


def default_target(model, say=None):
    """The target when none is asked for: None (the predicted class) on a classifier or a detector's
    (N, 4 + classes, anchors), which ask for an OutputTarget themselves; the sum of the whole first output on a
    model whose output is a dense map (a text detector's probability map, a segmenter's (N, classes, H, W)),
    told to `say` in one line. The model runs once at the size its preprocessing implies, so an input size that
    does not fit the model is named here, with what to do."""
    if len(model.inputs) != 1:
        return None
    from ..errors import FvGraphError
    from ..image import input_shape
    shape = input_shape(model)
    try:
        dims = value_dims(model, {model.graph.input_names()[0]: np.zeros(shape, np.float32)}, logits_value(model))
    except FvGraphError as e:
        declared = model.inputs[0].shape or ()
        if len(declared) == 4 and not all(isinstance(d, int) for d in declared[2:]):
            raise InputError(f"the model does not run at {shape[2]}x{shape[3]}, the size its preprocessing implies "
                             f"(its input size is not declared): give it, e.g. --preprocess size=48x320 ({e})") \
                from None
        raise
    if len(dims) != 4 or dims[2:] == (1, 1):
        return None
    if say is not None:
        say(f"note: the output has shape {tuple(['N'] + list(dims[1:]))}, not (N, classes): explaining the sum "
            "of the whole output (--target-index or --target-mask choose a part)")
    return OutputTarget(mask=np.float32(1.0))
