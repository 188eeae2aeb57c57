"""Occlusion (the paper's input modification class; Zeiler & Fergus 2013, Zhou et al. 2014).

A box slides over the input; each occluded copy is scored and each pixel gets the mean, over the boxes that
cover it, of the drop in the target's score (clean score minus occluded score). Box size and stride are set
per axis; positions start at 0 and step by the stride, and when the last step does not reach the bottom or
right edge one more box flush with that edge is added, so every pixel is covered when stride <= box (when
the steps fit exactly, the positions are exactly 0, s, 2s, ...; with stride > box the gaps get 0).
score="prob" scores a class target by its softmax probability: the model's own trailing Softmax, or a softmax
over the class axis of its output where it ends in logits (units and output targets are scored on their values).

Occluded copies run in batches under a memory cap, in one of three ways:
- windows as one graph on the model's engine (onnxruntime): each batch recomputes only the window of every
  layer that the boxes change, gathered from the clean values at per-box offsets given as data
  (fvgraph.methods.windows);
- the same windows on fvgraph's executor (engine="numpy"; fvgraph.methods.incremental);
- full passes of every occluded copy on the model's engine.
`incremental="auto"` (the default) takes the windows where their multiply-adds for one box are below
WINDOWS_ON_ENGINE_BELOW (0.55) of a full pass's and, timed on PROBE_BOXES boxes both ways (jobs of PROBE_FROM
boxes or more), they are faster (the multiply-adds do not see the gathers, which dominate small and
depthwise nets). Measured against plain batched passes (benchmarks/occlusion.py): VGG-16
box 16/8 0.17 of the work, 4.3x faster; 32/16 0.21, 3.5x; ResNet-18 16/8 0.49, 1.6x; 32/16 0.52, 1.4x.
Large boxes, or nets whose early strided layers spread a box over most of every map, get full passes. incremental=True forces the windows, False full passes. Models whose batch is
fixed in the file, or whose scored value is time-major, keep the executor's windows or full passes.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import FvGraphError, InputError
from ..explanation import Explanation, OutputTarget, Unit
from .memory import copies_per_batch
from .reconstruction import Progress

log = logging.getLogger(__name__)


def positions(size: int, box: int, stride: int) -> list[int]:
    """Box origins along one axis, with one extra box flush with the far edge when the steps fall short."""
    if box > size:
        raise InputError(f"box size {box} is larger than the input ({size})")
    pos = list(range(0, size - box + 1, stride))
    if pos[-1] + box < size:
        pos.append(size - box)
    return pos


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an int or a pair (height, width), got {v!r}") from None
    if a <= 0 or b <= 0:
        raise InputError(f"{name} must be positive, got {v!r}")
    return a, b


def make_fill(x1, fill, box, count, rng):
    """The patches that replace the boxes, (count, C, h, w), for one image x1 (C, H, W)."""
    C = x1.shape[0]
    h, w = box
    if isinstance(fill, str):
        if fill == "mean":
            return np.broadcast_to(x1.mean(axis=(1, 2)).reshape(1, C, 1, 1), (count, C, h, w))
        if fill == "random":  # seeded uniform values spanning each channel's range (Zhou et al. 2014)
            lo = x1.min(axis=(1, 2)).reshape(1, C, 1, 1)
            hi = x1.max(axis=(1, 2)).reshape(1, C, 1, 1)
            return (lo + (hi - lo) * rng.random((count, C, h, w))).astype(x1.dtype)
        raise InputError(f"fill must be a number, one number per channel, 'mean' or 'random'; got {fill!r}")
    try:
        v = np.asarray(fill, dtype=x1.dtype).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"fill must be a number, one number per channel, 'mean' or 'random'; got {fill!r}") from None
    if v.size not in (1, C):
        raise InputError(f"fill has {v.size} values; give one, or one per channel ({C})")
    return np.broadcast_to(v.reshape(1, -1, 1, 1), (count, C, h, w))


def occlusion(model, x, box=(32, 32), stride=(16, 16), fill=0.0, target=None, batch_size=None, memory=None,
              seed=0, score="logit", incremental="auto", quiet=None, progress=None):
    from .attribution import (batch_axis, class_indices, logits_value, output_seed, output_value, time_major_predicted,
                              unit_mask, value_dims)
    from .sampling import in_model_batches
    if score not in ("logit", "prob"):
        raise InputError(f"score must be 'logit' or 'prob', got {score!r}")
    box, stride = _pair(box, "box"), _pair(stride, "stride")
    first = model.graph.input_names()[0]
    x = model.feeds(x)[first]
    if x.ndim != 4:
        raise InputError(f"occlusion needs an image batch (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    ys, xs = positions(H, box[0], stride[0]), positions(W, box[1], stride[1])
    boxes = [(y, xx) for y in ys for xx in xs]
    logits = logits_value(model, through_softmax=(score == "prob"))
    # score="prob" on a model without a trailing softmax: the class scores are softmaxed here
    softmax = score == "prob" and not ends_in_softmax(model, logits)
    value = model.resolve(target.layer) if isinstance(target, Unit) else \
        output_value(model, target) if isinstance(target, OutputTarget) else logits
    if incremental not in (True, False, "auto"):
        raise InputError(f"incremental must be True, False or 'auto', got {incremental!r}")
    native = model.run(x, outputs=[value])[value]
    dims = value_dims(model, {first: x}, value)
    ax = batch_axis(dims)  # time-major (T, N, C) values are scored batch first
    clean = np.moveaxis(native, ax, 0)
    if softmax and value == logits:
        classes = class_indices(target, dims, N, value)  # checks the (batch, classes) shape
    else:
        softmax = False  # probabilities are of class scores: units and output targets read their values
    if isinstance(target, Unit):
        mask = unit_mask(model, target, clean.shape, N)
        mask = mask / max(1, int(mask[0].sum()))
        reported = target
    elif isinstance(target, OutputTarget):
        mask, reported = np.moveaxis(output_seed(model, {first: x}, target, N)[1], ax, 0), target
    elif ax != 0:  # a class's score: its scores summed over the time steps (fvgraph.methods.attribution)
        classes = class_indices(target, dims, N, value)
        reported = np.where(classes < 0, time_major_predicted(clean, 0), classes)
        mask = np.zeros(clean.shape, np.float32)
        for n in range(N):
            mask[n, ..., reported[n]] = 1
    else:
        classes = class_indices(target, dims, N, value)
        reported = np.where(classes < 0, clean.reshape(N, -1).argmax(axis=1), classes)
        mask = np.zeros(clean.shape, np.float32)
        mask.reshape(N, -1)[np.arange(N), reported] = 1

    def score_of(values, n):
        if softmax and ax != 0:  # time-major: the probability of the class scores summed over time
            sums = np.asarray(values, np.float64).reshape(len(values), -1, values.shape[-1]).sum(axis=1)
            return probabilities(sums)[:, reported[n]]
        if softmax:
            values = probabilities(values)
        return np.sum((values * mask[n]).reshape(len(values), -1), axis=1)

    batch_size = copies_per_batch(model, x[:1], value, len(boxes), batch_size, memory, model.batch_limit)
    rng = np.random.default_rng(seed)
    drops = np.zeros((N, H, W), np.float64)
    counts = np.zeros((H, W), np.int64)
    for (y, xx) in boxes:
        counts[y:y + box[0], xx:xx + box[1]] += 1
    runner, key, windows, chosen = None, None, None, incremental == "auto"
    from ..engines import ExecutorEngine
    if incremental and ax == 0 and model.batch_limit is None and not isinstance(model.engine, ExecutorEngine):
        # the windows as one graph on the model's engine (fvgraph.methods.windows)
        from .windows import window_plan
        key = ("occlusion-windows", value, box, stride, x.shape[1:])
        if incremental is True or model.choices.get(key, True):
            windows = window_plan(model, value, box, boxes, x[:1])
        if windows is not None and incremental == "auto":
            if key not in model.choices:
                model.choices[key] = windows_pay(windows) and (len(boxes) < PROBE_FROM
                                                               or windows_faster(model, windows, x[:1], boxes, box, value))
            windows = windows if model.choices[key] else None
        incremental = False if windows is not None or incremental == "auto" else incremental
    if incremental is True and model.executor.unsupported:
        raise InputError("incremental occlusion runs on fvgraph's executor, which cannot run this model: use "
                         f"incremental='no' (full passes on onnxruntime)\n{model.executor.unsupported}")
    if incremental and not model.executor.unsupported and model.executor.backend.device == "cpu" and ax == 0:
        # the incremental runner works on host arrays
        from .incremental import IncrementalRunner
        runner = IncrementalRunner(model, value)
        if incremental == "auto":  # decided once per model, target value, box and input size: repeated calls
            key = ("occlusion", value, box, x.shape[1:])  # give identical maps
            if key not in model.choices:
                model.choices[key] = incremental_pays(model, runner, x[:1], value, box)
            runner = runner if model.choices[key] else None

    def full_passes(n, chunk, patches, b0):
        batch = np.repeat(x[n:n + 1], len(chunk), axis=0)
        for k, (y, xx) in enumerate(chunk):
            batch[k, :, y:y + box[0], xx:xx + box[1]] = patches[b0 + k]
        return in_model_batches(model, lambda rows: np.moveaxis(model.run(rows, outputs=[value])[value], ax, 0), batch)
    bar = Progress(N * len(boxes), "occlusion", quiet, progress)
    done = 0
    seen = np.zeros((N, H, W), np.int64)  # boxes done so far over each pixel: the partial map's divisor
    for n in range(N):
        base = score_of(clean[n:n + 1], n)[0]
        patches = make_fill(x[n], fill, box, len(boxes), rng)
        if runner is not None:
            runner.set_image(x[n:n + 1])
        clean_values = windows.clean_feeds(x[n:n + 1]) if windows is not None else None
        for b0 in range(0, len(boxes), batch_size):
            chunk = boxes[b0:b0 + batch_size]
            out = None
            if windows is not None:
                feeds = {**clean_values, **windows.feeds(chunk, patches[b0:b0 + len(chunk)])}
                try:
                    out = model.engine.run(windows.graph, feeds, ["windows/out"])["windows/out"]
                except FvGraphError as e:
                    if not chosen:
                        raise
                    log.debug("occlusion windows refused by the engine (%s): full passes", e)
                    windows, model.choices[key] = None, False  # auto: full passes give the same map
            if out is None and runner is not None:
                out = runner.run(chunk, box, patches[b0:b0 + len(chunk)])
            elif out is None:
                out = full_passes(n, chunk, patches, b0)
            s = score_of(np.asarray(out, np.float64), n)
            for k, (y, xx) in enumerate(chunk):
                drops[n, y:y + box[0], xx:xx + box[1]] += base - s[k]
                seen[n, y:y + box[0], xx:xx + box[1]] += 1
            done += len(chunk)
            bar.update(done, partial=lambda: (drops / np.maximum(seen, 1)).astype(np.float32))
    choice = "windows" if windows is not None else "incremental" if runner is not None else "full passes"
    rel = (drops / np.maximum(counts, 1)).astype(np.float32)  # pixels no box covers (stride > box) get 0
    return Explanation(rel, reported, np.asarray(native), "occlusion",
                       extras={"boxes": boxes, "counts": counts, "box": box, "stride": stride,
                               "batch_size": batch_size, "way": choice})


def ends_in_softmax(model, value: str) -> bool:
    """Whether `value` is a Softmax's output (through Identity nodes): then its scores are probabilities already."""
    from .attribution import SOFTMAX_OPS
    prod = model.graph.producers()
    node = prod.get(value)
    while node is not None and node.op_type == "Identity":
        node = prod.get(node.inputs[0])
    return node is not None and node.op_type in SOFTMAX_OPS[:1]


def probabilities(values, axis: int = 1):
    """Softmax over the class axis (1 of (n, classes, ...) scores), in float64."""
    v = np.asarray(values, np.float64)
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


WINDOWS_ON_ENGINE_BELOW = 0.55  # windows in one graph on the model's engine: taken where their multiply-adds are
                                # below this share of a full pass (ResNet-18: 0.52 at box 32/16 1.4x faster,
                                # 0.63 at 64/32 slower than passes at the batch the memory cap allows)
WINDOWS_BELOW = 0.6  # the estimated cost ratio (windows / passes) under which windows are taken
EXECUTOR_SLOWER = 1.5  # fvgraph's executor per forward against onnxruntime's, at least (measured 1.7-2x): the
                       # bound that lets the estimate skip timing where windows cannot win


def windows_pay(plan) -> bool:
    """The cost model of the windows on the model's engine: the same kernels either way, so their share of a
    full pass's multiply-adds decides (WINDOWS_ON_ENGINE_BELOW leaves room for the gathers)."""
    inc, total = plan.work()
    return total > 0 and inc / total < WINDOWS_ON_ENGINE_BELOW


PROBE_BOXES = 4  # boxes each way is timed on, once per model and geometry (per process: kept small, as the
                 # command line pays it at every start)
PROBE_FROM = 160  # jobs of fewer boxes go by the work alone (timing would cost more than a wrong choice)


def windows_faster(model, plan, x1, boxes, box, value) -> bool:
    """Where the work says windows pay, the clock decides: the same boxes (blank patches: the time does not
    depend on them) as windows and as plain passes, each run twice to warm up (onnxruntime settles a new
    batch shape over 2-3 runs) and then timed, the best of two. Multiply-adds miss what the windows'
    gathers cost, which dominates small or depthwise nets (a MobileNet-shaped net at 224 x 224, box 64/32:
    0.17 of the work, 2.7x slower as windows)."""
    import time
    chunk = boxes[:PROBE_BOXES]
    patches = np.zeros((len(chunk), x1.shape[1]) + tuple(box), x1.dtype)
    clean = plan.clean_feeds(x1)
    batch = np.repeat(x1, len(chunk), axis=0)
    for k, (y, xx) in enumerate(chunk):
        batch[k, :, y:y + box[0], xx:xx + box[1]] = 0

    def clock(fn):
        fn()
        fn()
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best
    try:
        t_windows = clock(lambda: model.engine.run(plan.graph, {**clean, **plan.feeds(chunk, patches)}, ["windows/out"]))
    except FvGraphError as e:
        log.debug("occlusion windows refused by the engine (%s): full passes", e)
        return False
    return t_windows < clock(lambda: model.run(batch, outputs=[value]))


def incremental_pays(model, runner, x1, value, box) -> bool:
    """The cost model: one box's windows on the executor against one full pass on the engine, each engine's
    speed taken from its own (warm) forward of the clean image. Windows are taken only where they estimate clearly cheaper (WINDOWS_BELOW): the estimate
    cannot see the windows' bookkeeping and memory traffic (measured on ResNet-18 at box 32, stride 16 it said
    0.88 where windows were 6% slower; at box 16, stride 8 it said 0.44 where they were 13% faster), and full
    passes are the baseline `auto` must never lose to."""
    import time
    from ..engines import ExecutorEngine
    if isinstance(model.engine, ExecutorEngine):
        return True  # the same kernels either way: windows are never more work
    if runner.shapes_of(x1):  # from shapes alone: where the windows' share of the work is too large for an
        inc, full = runner.work(box)  # executor no faster than EXECUTOR_SLOWER times onnxruntime, no pass is
        if full <= 0 or EXECUTOR_SLOWER * inc / full >= WINDOWS_BELOW:  # spent on timing the two engines
            return False
    runner.set_image(x1)  # the windows need it anyway; its first run also makes one-time copies: not timed
    start = time.perf_counter()
    model.forward(x1, [value])
    t_executor = time.perf_counter() - start
    model.run(x1, outputs=[value])  # warm (sessions are built on first use)
    start = time.perf_counter()
    model.run(x1, outputs=[value])
    t_engine = time.perf_counter() - start
    inc, full = runner.work(box)
    return full > 0 and t_executor * inc / full < WINDOWS_BELOW * t_engine
