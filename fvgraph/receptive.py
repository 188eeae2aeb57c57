"""Receptive fields: which input pixels a position of a layer sees.

Per spatial axis a value carries (size, jump, start): position i of the value sees input pixels
[start + i * jump, start + i * jump + size). The input has (1, 1, 0). Windowed ops (Conv, MaxPool, AveragePool,
ConvTranspose's inverse is not needed) grow it: size += (k_eff - 1) * jump, start -= pad_begin * jump,
jump *= stride; a zero Pad moves start; elementwise ops and those that keep the spatial size keep it; where
branches meet (Add, Concat, Mul of maps) it is the union. Gates broadcast from a (N, C, 1, 1) value (squeeze-
excitation) are ignored, as is common: they rescale channels without moving the window. Ops that mix all
positions (global pooling, attention, reshapes to tokens) make it the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOWED = {"Conv", "MaxPool", "AveragePool", "LpPool"}


@dataclass(frozen=True)
class Field:
    size: tuple   # (h, w) in input pixels
    jump: tuple   # input pixels between neighbouring positions
    start: tuple  # the first position's top-left, in input pixels (may be negative: padding)

    def box(self, y, x, image_hw):
        """[y0, x0, y1, x1) of position (y, x), clipped to the image."""
        y0, x0 = self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]
        return [int(max(0, np.floor(y0))), int(max(0, np.floor(x0))),
                int(min(image_hw[0], np.ceil(y0 + self.size[0]))), int(min(image_hw[1], np.ceil(x0 + self.size[1])))]


WHOLE = "whole image"


def _union(fields):
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    if any(f == WHOLE for f in fields):
        return WHOLE
    jump = tuple(max(f.jump[a] for f in fields) for a in (0, 1))
    start = tuple(min(f.start[a] for f in fields) for a in (0, 1))
    end = tuple(max(f.start[a] + f.size[a] for f in fields) for a in (0, 1))
    return Field(tuple(e - s for s, e in zip(start, end)), jump, start)


def receptive_field(model, value: str, table) -> Field | str:
    """The receptive field of `value` (a Field, or WHOLE), from the graph and its shapes (`table`)."""
    g = model.graph
    first = g.input_names()[0]
    fields = {first: Field((1, 1), (1, 1), (0, 0))}
    for i, n in enumerate(g.nodes):
        if i in model.executor.static or not any(fields.get(v) is not None for v in n.inputs if v):
            continue
        maps = [fields[v] for v in n.inputs if v and fields.get(v) is not None and _is_map(table, v)]
        out_dims = table.dims.get(n.outputs[0]) if n.outputs and n.outputs[0] else None
        if n.op_type in WINDOWED and maps:
            result = WHOLE if maps[0] == WHOLE else _windowed(n, maps[0], table)
        elif n.op_type == "Pad" and maps:
            result = WHOLE if maps[0] == WHOLE else _padded(model, n, maps[0], table)
        elif maps and _is_map_dims(out_dims) and all(_same_grid(table.dims[v], out_dims) for v in n.inputs
                                                     if v and fields.get(v) is not None and _is_map(table, v)):
            result = _union(maps)  # elementwise, normalization, Concat, gated by (N, C, 1, 1) values
        else:
            result = WHOLE         # the grid changed in a way not modelled here, or all positions mixed
        for o in n.outputs:
            if o:
                fields[o] = result
    f = fields.get(value)
    return WHOLE if f is None else f


def _is_map_dims(d):
    return d is not None and len(d) == 4 and all(isinstance(v, (int, np.integer)) for v in d[2:])


def _is_map(table, v):
    d = table.dims.get(v)
    return _is_map_dims(d) and d[2] * d[3] > 1


def _same_grid(a, b):
    return tuple(a[2:]) == tuple(b[2:])


def _windowed(node, f: Field, table):
    d_in = table.dims.get(node.inputs[0])
    k = list(node.attr("kernel_shape") or [])
    if node.op_type == "Conv" and not k:
        w = table.dims.get(node.inputs[1])
        k = list(w[2:]) if w is not None else [1, 1]
    strides = list(node.attr("strides") or [1, 1])
    dil = list(node.attr("dilations") or [1, 1])
    pads = list(node.attr("pads") or [0, 0, 0, 0])
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and d_in is not None:
        pads = []
        for a in (0, 1):
            size = int(d_in[2 + a])
            eff = dil[a] * (k[a] - 1) + 1
            total = max((-(-size // strides[a]) - 1) * strides[a] + eff - size, 0)
            pads.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        pads += [0, 0]
    size, jump, start = [], [], []
    for a in (0, 1):
        eff = dil[a] * (k[a] - 1) + 1
        size.append(f.size[a] + (eff - 1) * f.jump[a])
        start.append(f.start[a] - pads[a] * f.jump[a])
        jump.append(f.jump[a] * strides[a])
    return Field(tuple(size), tuple(jump), tuple(start))


def _padded(model, node, f: Field, table):
    pads = model.executor.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        pads = table.constants.get(node.inputs[1]) if table.constants else None
    if pads is None:
        return f
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    rank = len(p) // 2
    if rank != 4:
        return f
    return Field(f.size, f.jump, (f.start[0] - p[2] * f.jump[0], f.start[1] - p[3] * f.jump[1]))
