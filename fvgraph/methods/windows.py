"""Occlusion's incremental windows as one graph the model's engine (onnxruntime) runs.

The idea is fvgraph.methods.incremental's: a box changes a window of each layer, which grows with the layers'
receptive fields; only that window is recomputed, from the clean image's values around it. Here the windows
are lowered into one graph per box geometry, so they run at the engine's speed rather than the executor's:

- `plan` walks the model once for every box of the image (vectorized over boxes) with the incremental
  runner's arithmetic and fixes each layer's window size (the largest over the boxes, shifted inward at the
  edges) and whether the layer is computed on windows or in full (beyond FULL_FRACTION of its area, or an op
  that mixes space);
- the graph takes the boxes' patches (B, C, h, w) and, for every window a layer reads, one index vector:
  the window of each box is one Gather from [the changed patch of every box, the clean (padded) value]
  flattened per channel, so a patch laid over the clean values at per-box offsets is plain data;
- a spatial op (Conv, MaxPool, AveragePool) runs unpadded on its gathered input windows; a pointwise op runs
  on its operands' union window (directly on the patch when it has one operand); anything else runs on full
  tensors (the patches gathered into the whole map), as in the model.

The indices are the only per-batch work on the host; the clean values are fed once per image. Maps equal the
full passes to float rounding (tests/test_windows.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import weakref

from ..graph import Graph, Node, ValueInfo
from .incremental import FULL_FRACTION, POINTWISE, fit, input_span, padded_input, touched

MAX_PLANS = 4  # window graphs kept per model (each holds an onnxruntime session)
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

BROADCASTS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Less",
              "Greater", "And", "Or"}  # full-mode ops whose clean (batch 1) operands broadcast over the boxes


@dataclass
class Window:
    oy: np.ndarray    # (B,) top row of each box's window, in the value's coordinates
    ox: np.ndarray    # (B,) left column
    h: int
    w: int


class WindowPlan:
    """Which layers run on windows, of what size, for one box size and the boxes of one image size; `walk`
    gives every window's offsets for a batch of boxes, `graph` the lowered graph, `feeds` a batch's indices."""

    def __init__(self, runner, box, boxes, full_fraction=FULL_FRACTION):
        self.runner, self.box, self.full_fraction = runner, tuple(box), full_fraction
        self.model, g = runner.model, runner.model.graph
        self.nodes, self.first = g.nodes, g.input_names()[0]
        self.dims = dict(runner.clean)  # stand-ins from runner.shapes_of: shapes and dtypes
        self.modes: dict = {}   # node index -> "spatial" | "point" | "direct" | "full" | "static"
        self.sizes: dict = {}   # node index -> (h, w) of its output window
        self._walk(boxes, decide=True)

    # ------------------------------------------------------------------ the windows
    def shape(self, v):
        """A value's dims; () where shapes alone do not say (then no window is drawn through it)."""
        return np.shape(self.dims[v]) if v in self.dims else ()

    def _walk(self, boxes, decide=False):
        """Each windowed value's Window for these boxes (decide: also fix the modes and sizes, from all boxes)."""
        r = self.runner
        boxes = np.asarray(boxes).reshape(-1, 2)
        state = {self.first: Window(boxes[:, 0], boxes[:, 1], *self.box)}
        gathers = {}  # node index -> per input: the Window its operand is gathered into (None: used as it is)
        for i in r.steps:
            n = self.nodes[i]
            ins = [state.get(v) if v else None for v in n.inputs]
            mode = self.modes.get(i) if not decide else None
            if i in r.ex.static:
                if decide and any(s is not None for s in ins):
                    self.modes[i] = "static"
                if self.modes.get(i) == "static":
                    for o in n.outputs:
                        if o:
                            state[o] = "full"
                continue
            if all(s is None for s in ins):
                continue
            if decide:
                mode = self._decide(i, n, ins)
            out = "full"
            if mode == "spatial":
                out, gathers[i] = self._spatial(i, ins[0])
            elif mode in ("point", "direct"):
                out, gathers[i] = self._pointwise(i, n, ins)
            if decide:
                self.modes[i] = mode
                if out != "full":
                    self.sizes[i] = (out.h, out.w)
            for o in n.outputs:
                if o:
                    state[o] = out
        return state, gathers

    def _decide(self, i, n, ins):
        r = self.runner
        if i in r.valid and isinstance(ins[0], Window) and all(s is None for s in ins[1:]):
            geo = r.padded[i][1]
            out, _ = self._spatial(i, ins[0], largest=True)
            return "spatial" if out.h * out.w <= self.full_fraction * geo.out[0] * geo.out[1] else "full"
        if n.op_type not in POINTWISE or any(s == "full" for s in ins) or len(self.shape(n.outputs[0])) != 4:
            return "full"
        H, W = self.shape(n.outputs[0])[2:]
        for v, s in zip(n.inputs, ins):
            if not v or s is not None or v in self.model.graph.initializers:
                continue
            d = self.shape(v)
            if len(d) != 4 and v in self.runner.dynamic or len(d) == 4 and d[2:] != (H, W) and d[2] * d[3] > 1:
                return "full"  # broadcast against a spatial operand of another size
        wins = [s for s in ins if isinstance(s, Window)]
        out, _ = self._pointwise(i, n, ins, largest=True)
        if out.h * out.w > self.full_fraction * H * W:
            return "full"
        spatial_clean = any(s is None and v and len(self.shape(v)) == 4 and self.shape(v)[2:] == (H, W)
                            for v, s in zip(n.inputs, ins))
        same = all(w.h == out.h and w.w == out.w and np.array_equal(w.oy, out.oy) and np.array_equal(w.ox, out.ox)
                   for w in wins)
        return "direct" if same and not spatial_clean else "point"

    def _spatial(self, i, p: Window, largest=False):
        geo = self.runner.padded[i][1]
        Ho, Wo = geo.out
        r0, r1, c0, c1 = touched(p.oy, p.ox, p.h, p.w, geo)
        h, w = (int((r1 - r0).max()), int((c1 - c0).max())) if largest or i not in self.sizes else self.sizes[i]
        r0, c0 = fit(r0, h, Ho), fit(c0, w, Wo)
        out = Window(r0, c0, h, w)
        ih, iw = input_span(h, w, geo)
        # the input window in padded coordinates; the patch sits at its own offsets plus the leading pads
        src = Window(p.oy + geo.pb[0], p.ox + geo.pb[1], p.h, p.w)
        return out, [(src, Window(r0 * geo.s[0], c0 * geo.s[1], ih, iw))]

    def _pointwise(self, i, n, ins, largest=False):
        wins = [s for s in ins if isinstance(s, Window)]
        H, W = self.shape(n.outputs[0])[2:]
        oy = np.min([p.oy for p in wins], axis=0)
        ox = np.min([p.ox for p in wins], axis=0)
        y1 = np.max([p.oy + p.h for p in wins], axis=0)
        x1 = np.max([p.ox + p.w for p in wins], axis=0)
        h, w = (int((y1 - oy).max()), int((x1 - ox).max())) if largest or i not in self.sizes else self.sizes[i]
        out = Window(fit(oy, h, H), fit(ox, w, W), h, w)
        plan = []
        for v, s in zip(n.inputs, ins):
            spatial = v and len(self.shape(v)) == 4 and self.shape(v)[2:] == (H, W)
            plan.append((s, out) if isinstance(s, Window) or (s is None and spatial) else None)
        return out, plan

    # ------------------------------------------------------------------ the cost
    def work(self) -> tuple[float, float]:
        """(multiply-adds of the windows for one box, of a full forward): Conv/Gemm/MatMul only."""
        r = self.runner
        inc = full = 0.0
        for i in r.steps:
            if i in r.ex.static:
                continue
            cost = r._macs(self.nodes[i])
            full += cost
            mode = self.modes.get(i)
            if mode is None:
                continue
            if i in self.sizes:
                d = self.shape(self.nodes[i].outputs[0])
                cost *= self.sizes[i][0] * self.sizes[i][1] / (d[2] * d[3])
            inc += cost
        return inc, full

    # ------------------------------------------------------------------ the graph
    def lower(self):
        """The graph: inputs `windows/patches` (B, C, h, w), one index vector per gather, and the clean values
        it reads (the padded ones per spatial op: `windows/padded/<node>`); output `windows/out` (B, ...)."""
        r, g = self.runner, self.model.graph
        self._nodes, self._inputs, self._count = [], {}, 0
        self.gathers, self.padded, self.clean_reads = [], {}, set()
        self._flat, self._full, self._consts = {}, {}, {}
        names = {self.first: "windows/patches"}
        state, _ = self._walk(np.zeros((1, 2), np.int64))  # which values are windows, full or clean
        for i in r.steps:
            mode = self.modes.get(i)
            if mode is None:
                continue
            n = self.nodes[i]
            args = []
            if mode == "spatial":
                v = n.inputs[0]
                pv = self.padded.setdefault(i, f"windows/padded/{i}")
                self._input(pv, self._dtype(v))
                src = [self._flat_patch(names[v], v), self._flat_clean(pv, v)]
                geo = r.padded[i][1]
                h, w = self.sizes[i]
                ih, iw = input_span(h, w, geo)
                weights = [u if not u or u in g.initializers else self._input(u) for u in n.inputs[1:]]
                args = [self._gather(src, ("op", i, 0), self.shape(v)[1], ih, iw)] + weights
                node = r.valid_nodes[i]  # the op unpadded
            else:
                node = n
                for k, v in enumerate(n.inputs):
                    s = state.get(v) if v else None
                    if not v:
                        args.append(v)
                    elif mode == "point" and (isinstance(s, Window) or s is None and self._spatial_operand(n, v)):
                        src = ([self._flat_patch(names[v], v)] if isinstance(s, Window) else []) \
                            + [self._flat_clean(self._input(v), v)]
                        h, w = self.sizes[i]
                        args.append(self._gather(src, ("op", i, k), self.shape(v)[1], h, w))
                    elif isinstance(s, Window):
                        args.append(names[v] if mode == "direct" else self._to_full(v, names[v]))
                    elif s == "full":
                        args.append(names[v])
                    elif v in g.initializers:
                        args.append(v)
                    else:
                        self._input(v)
                        args.append(self._expanded(v) if mode == "full" and v in r.dynamic
                                    and n.op_type not in BROADCASTS else v)
            outs = []
            for o in n.outputs:
                if o:
                    names[o] = self._fresh(o)
                outs.append(names.get(o, "") if o else "")
            self._nodes.append(Node(self._fresh(n.name), node.op_type, args, outs, dict(node.attrs)))
        out = self.runner.value
        s = state.get(out)
        final = self._to_full(out, names[out]) if isinstance(s, Window) else names[out] if s == "full" else None
        if final is None:
            raise ValueError("the boxes do not change the scored value")
        self._nodes.append(Node("windows/out_identity", "Identity", [final], ["windows/out"], {}))
        inits = {v: g.initializers[v] for nd in self._nodes for v in nd.inputs if v in g.initializers}
        inits.update(self._consts)
        inputs = [ValueInfo("windows/patches", None, self._dtype(self.first))] + \
            [ValueInfo(k, None, dt) for k, dt in self._inputs.items()]
        self.graph = Graph(self._nodes, inits, inputs, [ValueInfo("windows/out", None, self._dtype(out))],
                           g.opset, g.producer)
        return self.graph

    def _dtype(self, v):
        d = self.dims.get(v)
        return np.dtype(d.dtype) if d is not None else np.dtype(np.float32)

    def _fresh(self, base):
        self._count += 1
        return f"windows/{base}~{self._count}"

    def _input(self, v, dtype=None):
        if v not in self._inputs:
            self._inputs[v] = dtype or self._dtype(v)
            if not v.startswith("windows/"):
                self.clean_reads.add(v)
        return v

    def _spatial_operand(self, n, v):
        d, o = self.shape(v), self.shape(n.outputs[0])
        return len(d) == 4 and d[2:] == o[2:]

    def _emit(self, op, inputs, **attrs):
        out = self._fresh(op.lower())
        self._nodes.append(Node(self._fresh(op), op, list(inputs), [out], attrs))
        return out

    def _flat_patch(self, name, v):
        """(B, C, h, w) -> (C, B*h*w)."""
        if name not in self._flat:
            t = self._emit("Transpose", [name], perm=[1, 0, 2, 3])
            self._flat[name] = self._emit("Reshape", [t, self._shape_const([self.shape(v)[1], -1])])
        return self._flat[name]

    def _flat_clean(self, name, v):
        """(1, C, H, W) -> (C, H*W)."""
        if name not in self._flat:
            self._flat[name] = self._emit("Reshape", [name, self._shape_const([self.shape(v)[1], -1])])
        return self._flat[name]

    def _shape_const(self, values):
        name = f"windows/ints/{'_'.join(str(v) for v in values)}"
        self._consts[name] = np.asarray(values, np.int64)
        return name

    def _gather(self, sources, key, C, h, w):
        """The windows (B, C, h, w) gathered from the sources by the index input of `key`."""
        idx = f"windows/idx/{len(self.gathers)}"
        self.gathers.append(key)
        self._input(idx, np.dtype(np.int64))
        src = sources[0] if len(sources) == 1 else self._emit("Concat", sources, axis=1)
        got = self._emit("Gather", [src, idx], axis=1)
        t = self._emit("Reshape", [got, self._shape_const([C, -1, h, w])])
        return self._emit("Transpose", [t], perm=[1, 0, 2, 3])

    def _to_full(self, v, name):
        if v not in self._full:
            self._input(v)
            H, W = self.shape(v)[2:]
            self._full[v] = self._gather([self._flat_patch(name, v), self._flat_clean(v, v)], ("full", v),
                                         self.shape(v)[1], H, W)
        return self._full[v]

    def _expanded(self, v):
        """A clean (batch 1) value repeated for every box: for ops that do not broadcast (Concat)."""
        key = ("expand", v)
        if key not in self._flat:
            rank = len(self.shape(v))
            batch = self._emit("Slice", [self._emit("Shape", ["windows/patches"]), self._shape_const([0]),
                                         self._shape_const([1])])
            shape = self._emit("Concat", [batch, self._shape_const([1] * (rank - 1))], axis=0)
            self._flat[key] = self._emit("Expand", [v, shape])
        return self._flat[key]

    def fold_static(self, x1):
        """The shape arithmetic the graph reads (the same for every image of this size) as its constants, not
        inputs: onnxruntime then folds it and fuses what it feeds (a Pad's pads into the Conv after it)."""
        prod = {o: i for i, n in enumerate(self.nodes) for o in n.outputs if o}
        static = sorted(v for v in self.clean_reads if prod.get(v) in self.runner.ex.static)
        if not static:
            return
        got = self.model.run(x1, outputs=static)
        for v in static:
            self.graph.initializers[v] = np.asarray(got[v])
            self.clean_reads.discard(v)
        self.graph.inputs = [vi for vi in self.graph.inputs if vi.name not in static]

    # ------------------------------------------------------------------ feeding it
    def clean_feeds(self, x1) -> dict:
        """The clean values the graph reads, for one image (1, C, H, W): one forward on the model's engine."""
        r = self.runner
        wanted = sorted(self.clean_reads | {self.nodes[i].inputs[0] for i in self.padded})
        got = self.model.run(x1, outputs=wanted) if wanted else {}
        feeds = {v: np.asarray(got[v]) for v in self.clean_reads}
        for i, name in self.padded.items():
            n = self.nodes[i]
            feeds[name] = padded_input(got[n.inputs[0]], n.op_type, r.padded[i][1])
        return feeds

    def feeds(self, boxes, patches) -> dict:
        """A batch's patches and the index vector of every gather."""
        state, gathers = self._walk(boxes)
        B = len(boxes)
        out = {"windows/patches": np.ascontiguousarray(patches)}
        for k, key in enumerate(self.gathers):
            if key[0] == "op":
                _, i, pos = key
                src, tgt = gathers[i][pos]
                v = self.nodes[i].inputs[pos]
                hw = self.runner.padded[i][1] if self.modes[i] == "spatial" else None
                hw = tuple(b + s + e + x_ for b, s, e, x_ in zip(hw.pb, self.shape(v)[2:], hw.pe, hw.extra)) \
                    if hw is not None else self.shape(v)[2:]
            else:
                v = key[1]
                src, hw = state[v], self.shape(v)[2:]
                tgt = Window(np.zeros(B, np.int64), np.zeros(B, np.int64), *hw)
            out[f"windows/idx/{k}"] = indices(src if isinstance(src, Window) else None, tgt, hw, B)
        return out


def window_plan(model, value, box, boxes, x1):
    """The lowered windows for this value, box size and set of boxes (kept per model), or None where the
    model's shapes cannot be known."""
    from .incremental import IncrementalRunner
    key = (value, tuple(box), tuple(map(tuple, boxes)), tuple(x1.shape[1:]), str(x1.dtype))
    kept = _PLANS.setdefault(model, {})
    if key not in kept:
        runner = IncrementalRunner(model, value)
        if not runner.shapes_of(x1) and not runner.shapes_of(x1, measured=True):
            return None
        plan = WindowPlan(runner, box, boxes)
        plan.lower()
        plan.fold_static(x1)
        if len(kept) >= MAX_PLANS:
            kept.pop(next(iter(kept)))
        kept[key] = plan
    return kept[key]


def indices(src: Window | None, tgt: Window, clean_hw, B: int) -> np.ndarray:
    """Where each element of the target windows (B, h, w) lies in [patches (B, ph, pw) flattened, clean (H, W)
    flattened]: in the box's patch where `src` (its placement) covers it, else in the clean value."""
    ys = tgt.oy[:, None] + np.arange(tgt.h)
    xs = tgt.ox[:, None] + np.arange(tgt.w)
    base = B * src.h * src.w if src is not None else 0
    idx = base + ys[:, :, None] * clean_hw[1] + xs[:, None, :]
    if src is not None:
        py, px = ys - src.oy[:, None], xs - src.ox[:, None]
        inside = ((py >= 0) & (py < src.h))[:, :, None] & ((px >= 0) & (px < src.w))[:, None, :]
        own = np.arange(B)[:, None, None] * (src.h * src.w) + py[:, :, None] * src.w + px[:, None, :]
        idx = np.where(inside, own, idx)
    return idx.reshape(-1).astype(np.int64)
