"""Incremental inference for occlusion: recompute only what an occluding box changes.

The clean image's values are computed once. For a batch of boxes, every value is held as

- unchanged (the clean value),
- a *patch*: (B, C, ph, pw) plus per-box offsets, where it differs from the clean value, or
- *full*: (B, ...) once the changed window covers most of the value, or after an op that mixes space.

A spatial op (Conv, MaxPool, AveragePool) maps its input's changed window through its receptive field: the
output rows [r0, r1) touched by input rows [a, a + h) are r0 = floor((a + pb - k) / s) + 1 and
r1 = floor((a + h + pb - 1) / s) + 1; it runs, unpadded, on the clean padded input's window with the patch
laid over it. Pointwise ops (activations, BatchNorm, LRN, Add/Mul/Concat of maps) run on the union window.
Anything else runs on full tensors. Windows have one size per batch (the largest), shifted inward at the
edges, so every box runs in one batched call. Results equal full recomputation to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Node
from ..shapes import BATCH
from ..ops import build_kernel

SPATIAL = {"Conv", "MaxPool", "AveragePool"}
POINTWISE = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
             "Tanh", "Softplus", "Gelu", "Erf", "Abs", "Neg", "Exp", "Sqrt", "Identity", "Dropout",
             "BatchNormalization", "LRN", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "Cast"}
FULL_FRACTION = 0.5  # beyond this share of a layer's area, compute the rest in full


def fit(o, size, limit):
    """Windows of `size` starting at o, shifted inward so that each lies within [0, limit)."""
    return np.clip(o, 0, limit - size)


def touched(oy, ox, h, w, geo):
    """(r0, r1, c0, c1): the output rows [r0, r1) and columns [c0, c1) of a spatial op that input windows
    (h, w) at (oy, ox) change (per box)."""
    Ho, Wo = geo.out
    r0 = np.maximum(0, (oy + geo.pb[0] - geo.keff[0]) // geo.s[0] + 1)
    r1 = np.minimum(Ho, (oy + h + geo.pb[0] - 1) // geo.s[0] + 1)
    c0 = np.maximum(0, (ox + geo.pb[1] - geo.keff[1]) // geo.s[1] + 1)
    c1 = np.minimum(Wo, (ox + w + geo.pb[1] - 1) // geo.s[1] + 1)
    return r0, r1, c0, c1


def input_span(h, w, geo):
    """The input rows and columns (padded) that an (h, w) output window reads."""
    return (h - 1) * geo.s[0] + geo.keff[0], (w - 1) * geo.s[1] + geo.keff[1]


def padded_input(x, op_type, geo):
    """A spatial op's clean input with its padding laid on (MaxPool's -inf, else 0; ceil_mode's extra rows)."""
    pe = [e + x_ for e, x_ in zip(geo.pe, geo.extra)]
    pad = [(0, 0), (0, 0)] + [(b, e) for b, e in zip(geo.pb, pe)]
    return np.pad(np.asarray(x), pad, constant_values=-np.inf if op_type == "MaxPool" else 0.0)


@dataclass
class Patch:
    data: np.ndarray      # (B, C, ph, pw)
    oy: np.ndarray        # (B,) top row of each box's window
    ox: np.ndarray        # (B,) left column


class IncrementalRunner:
    def __init__(self, model, value: str):
        self.model, self.value = model, value
        self.ex = model.executor
        self.steps = [i for i, _ in self.ex.plan((value,))[0]]
        g = model.graph
        self.dynamic = set(g.input_names()) | {o for i in self.steps if i not in self.ex.static
                                                for o in g.nodes[i].outputs}
        self.valid = {}  # node index -> the same op without padding (runs on windows): its kernel, its node
        self.valid_nodes = {}
        for i in self.steps:
            n = model.graph.nodes[i]
            if n.op_type in SPATIAL and not (n.op_type == "AveragePool" and not n.attr("count_include_pad", 0)
                                             and (any(n.attr("pads") or []) or n.attr("auto_pad", "NOTSET")
                                                  not in ("NOTSET", "VALID"))):
                attrs = {k: v for k, v in n.attrs.items() if k not in ("pads", "auto_pad", "ceil_mode")}
                if n.op_type == "AveragePool":
                    attrs["count_include_pad"] = 1
                self.valid_nodes[i] = Node(n.name, n.op_type, n.inputs, n.outputs[:1], attrs)
                self.valid[i] = build_kernel(self.valid_nodes[i])

    def shapes_of(self, x1, measured=False):
        """What `work` needs, from shapes alone (zero-strided stand-ins for the values, no forward pass): the
        cost model's first look. Returns False where the shapes are not all known (then set_image, or
        measured: the dims measured on a forward)."""
        feeds = self.model.feeds(x1)
        table = self.model.shape_table(feeds, measured=measured)
        stand_in = {}
        for k, d in table.dims.items():
            if d is None or not all(isinstance(v, (int, np.integer)) or v == BATCH for v in d):
                continue
            stand_in[k] = np.broadcast_to(np.zeros((), table.dtypes.get(k, np.float32)),
                                          tuple(1 if isinstance(v, str) else int(v) for v in d))
        stand_in.update(self.ex.constants)
        self.clean, self.padded = stand_in, {}
        for i in self.valid:
            n = self.model.graph.nodes[i]
            if n.inputs[0] not in stand_in:
                return False
            x = stand_in[n.inputs[0]]
            w = stand_in.get(n.inputs[1]) if n.op_type == "Conv" else None
            geo = self.ex.kernels[i].geometry(x, w) if n.op_type == "Conv" else self.ex.kernels[i].geometry(x)
            self.padded[i] = (None, geo)
        return True

    def set_image(self, x1):
        self.clean = self.model.forward(x1, [self.value], keep=True).values
        self.padded = {}
        for i, k in self.valid.items():
            n = self.model.graph.nodes[i]
            x = self.clean[n.inputs[0]]
            w = self.clean.get(n.inputs[1]) if n.op_type == "Conv" else None
            geo = self.ex.kernels[i].geometry(x, w) if n.op_type == "Conv" else self.ex.kernels[i].geometry(x)
            self.padded[i] = (padded_input(x, n.op_type, geo), geo)

    # ------------------------------------------------------------------ the cost model
    def work(self, box) -> tuple[float, float]:
        """(Conv/Gemm multiply-adds of one box's incremental pass, of a full forward), following the windows
        `run` computes for a box in the image's interior: how occlusion chooses between the two (after
        set_image)."""
        g = self.model.graph
        state = {g.input_names()[0]: tuple(box)}
        inc = full = 0.0
        for i in self.steps:
            if i in self.ex.static:
                continue
            n = g.nodes[i]
            cost = self._macs(n)
            full += cost
            ins = [state.get(v) for v in n.inputs if v]
            if all(s is None for s in ins):
                continue
            out, share = "full", 1.0
            if i in self.valid and isinstance(ins[0], tuple) and all(s is None for s in ins[1:]):
                geo = self.padded[i][1]
                h = min(geo.out[0], (ins[0][0] + geo.keff[0] - 2) // geo.s[0] + 1)
                w = min(geo.out[1], (ins[0][1] + geo.keff[1] - 2) // geo.s[1] + 1)
                if h * w <= FULL_FRACTION * geo.out[0] * geo.out[1]:
                    out, share = (h, w), h * w / (geo.out[0] * geo.out[1])
            elif n.op_type in POINTWISE and all(isinstance(s, tuple) or s is None for s in ins):
                out = (max(s[0] for s in ins if s), max(s[1] for s in ins if s))
            inc += cost * share
            for o in n.outputs:
                if o:
                    state[o] = out
        return inc, full

    def _macs(self, n) -> float:
        y = self.clean.get(n.outputs[0])
        if y is None or n.op_type not in ("Conv", "Gemm", "MatMul"):
            return 0.0
        w = self.clean.get(n.inputs[1])
        return float(np.prod(np.shape(y)) * (np.prod(np.shape(w)[1:]) if n.op_type == "Conv" else np.shape(w)[0]))

    # ------------------------------------------------------------------ states
    def full(self, name, state, B):
        """A value's per-box tensors (B, ...)."""
        clean = np.asarray(self.clean[name])
        if state is None:
            return np.broadcast_to(clean, (B,) + clean.shape[1:])
        if not isinstance(state, Patch):
            return state
        out = np.repeat(clean, B, axis=0)
        ph, pw = state.data.shape[2:]
        for b in range(B):
            out[b, :, state.oy[b]:state.oy[b] + ph, state.ox[b]:state.ox[b] + pw] = state.data[b]
        return out

    def window(self, name, state, B, oy, ox, h, w, source=None, shift=(0, 0)):
        """Each box's (h, w) window of a value at (oy, ox) (in `source` coordinates; `source` defaults to the
        clean value), with the box's patch laid over it (its coordinates shifted by `shift`)."""
        src = np.asarray(self.clean[name] if source is None else source)
        out = np.empty((B, src.shape[1], h, w), src.dtype)
        for b in range(B):
            out[b] = src[0, :, oy[b]:oy[b] + h, ox[b]:ox[b] + w]
        if isinstance(state, Patch):
            ph, pw = state.data.shape[2:]
            for b in range(B):
                py, px = state.oy[b] + shift[0], state.ox[b] + shift[1]
                y0, y1 = max(py, oy[b]), min(py + ph, oy[b] + h)
                x0, x1 = max(px, ox[b]), min(px + pw, ox[b] + w)
                if y0 < y1 and x0 < x1:
                    out[b, :, y0 - oy[b]:y1 - oy[b], x0 - ox[b]:x1 - ox[b]] = \
                        state.data[b, :, y0 - py:y1 - py, x0 - px:x1 - px]
        return out

    # ------------------------------------------------------------------ running
    def run(self, boxes, box, patches):
        B = len(boxes)
        x_name = self.model.graph.input_names()[0]
        states = {x_name: Patch(np.ascontiguousarray(patches), np.array([b[0] for b in boxes]),
                                np.array([b[1] for b in boxes]))}
        g = self.model.graph
        exact = {}  # non-batched values recomputed for this batch (shapes of batched tensors)
        for i in self.steps:
            n = g.nodes[i]
            ins = [states.get(v) if v else None for v in n.inputs]
            if i in self.ex.static:  # shape arithmetic: redo it when it reads a changed (batched) value
                if any(s is not None for s in ins) or any(v in exact for v in n.inputs):
                    args = [self.full(v, s, B) if s is not None else exact.get(v, self.clean.get(v)) if v else None
                            for v, s in zip(n.inputs, ins)]
                    for o, val in zip(n.outputs, self._call(i, n, args)):
                        if o:
                            exact[o] = val
                continue
            if all(s is None for s in ins) and not any(v in exact for v in n.inputs):
                continue
            out = None
            if i in self.valid and isinstance(ins[0], Patch) and all(s is None for s in ins[1:]):
                out = self.spatial(i, n, ins[0], B)
            elif n.op_type in POINTWISE and not any(s is not None and not isinstance(s, Patch) for s in ins):
                out = self.pointwise(i, n, ins, B)
            if out is None:
                args = [exact[v] if v in exact else self.full(v, s, B) if v in self.dynamic else
                        self.clean.get(v) if v else None for v, s in zip(n.inputs, ins)]
                out = np.asarray(self._call(i, n, args)[0])
            states[n.outputs[0]] = out
        return self.full(self.value, states.get(self.value), B)

    def _call(self, i, n, args):
        from ..errors import ExecutionError
        try:
            return self.ex.kernels[i].forward(*args)
        except Exception as e:
            raise ExecutionError(f"incremental occlusion failed at node {n.name!r} ({n.op_type}): "
                                 f"{type(e).__name__}: {e}; incremental=False recomputes in full") from None

    def spatial(self, i, n, p: Patch, B):
        padded, geo = self.padded[i]
        Ho, Wo = geo.out
        r0, r1, c0, c1 = touched(p.oy, p.ox, *p.data.shape[2:], geo)
        h, w = int((r1 - r0).max()), int((c1 - c0).max())
        if h * w > FULL_FRACTION * Ho * Wo:
            return None
        r0, c0 = fit(r0, h, Ho), fit(c0, w, Wo)
        ih, iw = input_span(h, w, geo)
        win = self.window(n.inputs[0], p, B, r0 * geo.s[0], c0 * geo.s[1], ih, iw, source=padded,
                          shift=(geo.pb[0], geo.pb[1]))
        args = [win] + [self.clean[v] if v else None for v in n.inputs[1:]]
        y = np.asarray(self.valid[i].forward(*args)[0])
        return Patch(np.ascontiguousarray(y), r0, c0)

    def pointwise(self, i, n, ins, B):
        patches = [s for s in ins if isinstance(s, Patch)]
        H, W = np.asarray(self.clean[n.outputs[0]]).shape[2:] if np.asarray(self.clean[n.outputs[0]]).ndim == 4 \
            else (None, None)
        if H is None:
            return None
        oy = np.min([p.oy for p in patches], axis=0)
        ox = np.min([p.ox for p in patches], axis=0)
        y1 = np.max([p.oy + p.data.shape[2] for p in patches], axis=0)
        x1 = np.max([p.ox + p.data.shape[3] for p in patches], axis=0)
        h, w = int((y1 - oy).max()), int((x1 - ox).max())
        if h * w > FULL_FRACTION * H * W:
            return None
        oy, ox = fit(oy, h, H), fit(ox, w, W)
        args = []
        for v, s in zip(n.inputs, ins):
            if not v:
                args.append(None)
                continue
            c = np.asarray(self.clean[v])
            if c.ndim == 4 and c.shape[2:] == (H, W):
                args.append(self.window(v, s, B, oy, ox, h, w))
            elif c.ndim == 4 and c.shape[2] * c.shape[3] > 1 or s is not None:
                return None  # broadcast against a changed or spatial operand of another size: do it in full
            else:
                args.append(c)
        y = np.asarray(self.ex.kernels[i].forward(*args)[0])
        return Patch(np.ascontiguousarray(y), oy, ox)
