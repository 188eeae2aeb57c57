"""A model's contract: how its input is made from a picture (preprocessing and layout) and what its outputs mean
(labels). Read from the model's metadata, overridable by `fv.load(..., preprocess=, labels=)` and
`--preprocess/--labels`, and written back into a model by `fvgraph preprocess`.

Preprocessing is the spec of fvgraph.image (size, resize, scale, mean, std, channels, ...) plus `layout`
("NCHW" or "NHWC"). Named presets:
- imagenet: torchvision's (0..1, ImageNet mean and std, RGB);
- caffe: Keras' VGG/ResNet50 and Caffe nets (BGR, 0..255 minus 103.939, 116.779, 123.68);
- tf: Keras' MobileNet/Inception family (-1..1, RGB);
- raw: 0..1, RGB.
A text spec is items separated by commas, each a preset or key=value, e.g.
"caffe,size=227" or "imagenet,mean=0.5,0.5,0.5,std=0.5,0.5,0.5" (numbers after a list's first belong to it).

Labels: a text file (one per line), a JSON list or dict ({"0": "cat", ...}), or "imagenet" (built in). From
metadata: fvgraph's `fvgraph.classes`, ultralytics' `names`, PaddleOCR's `character` (space or newline
separated), and `classes`/`labels` lists as other exporters write them.

Layout: an NHWC image input (tf2onnx, Keras, TFLite converted) is recognized from the graph (a rank-4 input
of 1 or 3 channels last, transposed to channels first before it is used); fvgraph then puts a Transpose in front
so that everything it does (maps, occlusion boxes, reconstruction, serve) sees the channels-first image it sees
for every other model. `Model.run` and `feeds` take arrays in the model's own layout too.
"""
from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import InputError

PRESETS = {
    "imagenet": {"scale": 1 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB"},
    "caffe": {"scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0], "channels": "BGR"},
    "tf": {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0], "channels": "RGB"},
    "raw": {"scale": 1 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channels": "RGB"},
}
KEYS = {"size", "resize", "border", "crop_fraction", "interpolation", "scale", "mean", "std", "channels",
        "pad_value", "layout", "crop"}
CHOICES = {"resize": ("shorter", "stretch", "letterbox"), "channels": ("RGB", "BGR", "L"), "layout": ("NCHW", "NHWC")}


def _number(text):
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def parse_preprocess(spec) -> dict:
    """A preprocessing spec from a dict, a preset name or a text spec (see the module doc)."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        out = dict(spec)
    else:
        out = {}
        items = [t.strip() for t in str(spec).split(",") if t.strip()]
        key = None
        for item in items:
            if "=" in item:
                key, value = (s.strip() for s in item.split("=", 1))
                if key not in KEYS:
                    raise InputError(f"--preprocess: unknown key {key!r} (keys: {', '.join(sorted(KEYS))})")
                if not value:
                    raise InputError(f"--preprocess: {key}= has no value")
                n = _number(value)
                out[key] = n if n is not None else value
            elif item.lower() in PRESETS:
                out.update(PRESETS[item.lower()])
                key = None
            elif key is not None and _number(item) is not None:  # more numbers of a list
                prev = out[key]
                out[key] = (prev if isinstance(prev, list) else [prev]) + [_number(item)]
            else:
                raise InputError(f"--preprocess: {item!r} is neither a preset ({', '.join(PRESETS)}) nor key=value")
    for k, choices in CHOICES.items():
        if k in out:
            v = str(out[k]).upper() if k != "resize" else str(out[k]).lower()
            if v not in choices:
                raise InputError(f"--preprocess: {k}={out[k]!r} is not one of {', '.join(choices)}")
            out[k] = v
    for k in ("mean", "std"):
        if k in out and not isinstance(out[k], list):
            out[k] = [out[k]]
    if "size" in out and isinstance(out["size"], str):
        try:
            out["size"] = [int(v) for v in out["size"].lower().split("x")]
        except ValueError:
            raise InputError(f"--preprocess: size={out['size']!r} is not a size (224, or 224x320)") from None
    return out


def load_labels(source) -> list[str]:
    """Class names from a list, "imagenet", a text file (one per line) or a JSON list/dict file."""
    if source is None:
        return None
    if isinstance(source, (list, tuple)):
        return [str(v) for v in source]
    if isinstance(source, dict):
        return _from_dict(source)
    if str(source).lower() == "imagenet":
        return json.loads((Path(__file__).parent / "data" / "imagenet_classes.json").read_text())
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such labels file (a text file with one label per line, a JSON list or "
                         "dict, or 'imagenet')")
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith(("[", "{")):
        try:
            v = json.loads(text)
        except ValueError as e:
            raise InputError(f"{source}: not valid JSON ({e})") from None
        return _from_dict(v) if isinstance(v, dict) else [str(x) for x in v]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_dict(d: dict) -> list[str]:
    try:
        keys = sorted(d, key=lambda k: int(k))
    except (TypeError, ValueError):
        raise InputError("a labels dict maps class indices to names, e.g. {\"0\": \"cat\"}") from None
    return [str(d[k]) for k in keys]


def labels_from_metadata(meta: dict) -> list[str] | None:
    """The class names an export carries: fvgraph's, ultralytics' `names`, PaddleOCR's `character`, or a
    `classes`/`labels` list."""
    try:
        if "fvgraph.classes" in meta:
            return json.loads(meta["fvgraph.classes"])
        if "names" in meta:
            names = ast.literal_eval(meta["names"])
            return _from_dict(names) if isinstance(names, dict) else [str(n) for n in names]
        if "character" in meta:  # PaddleOCR: the characters of its recognizer, or a classifier's labels
            return meta["character"].split("\n") if "\n" in meta["character"] else meta["character"].split()
        for key in ("classes", "labels", "class_names"):
            if key in meta:
                text = meta[key]
                v = json.loads(text) if text.lstrip().startswith(("[", "{")) else None
                if v is None:
                    return [s.strip() for s in text.replace("\n", ",").split(",") if s.strip()]
                return _from_dict(v) if isinstance(v, dict) else [str(x) for x in v]
    except (ValueError, SyntaxError, TypeError, KeyError, InputError):
        return None
    return None


# ----------------------------------------------------------------------------------------------- layout
def detect_layout(graph) -> str:
    """ "NHWC" for a rank-4 image input with 1 or 3 channels last that the graph transposes to channels first
    (perm 0, 3, 1, 2), possibly after elementwise preprocessing; else "NCHW"."""
    if len(graph.inputs) != 1:
        return "NCHW"
    v = graph.inputs[0]
    if not v.shape or len(v.shape) != 4 or v.shape[3] not in (1, 3) or v.shape[1] in (1, 3):
        return "NCHW"
    consumers = graph.consumers()
    frontier, seen = [v.name], set()
    while frontier:
        value = frontier.pop()
        for n in consumers.get(value, []):
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type == "Transpose" and list(n.attr("perm") or []) == [0, 3, 1, 2]:
                return "NHWC"
            if n.op_type in ("Mul", "Add", "Sub", "Div", "Cast", "Identity"):
                frontier.extend(o for o in n.outputs if o)
    return "NCHW"


def channels_first(graph):
    """(graph with an NCHW input named as before, feeding the model through a Transpose to NHWC, the original
    NHWC input) for an NHWC model, else (graph, None)."""
    from .graph import Node
    v = graph.inputs[0]
    inner = f"{v.name}::nhwc"
    nodes = [Node(f"{v.name}::to_nhwc", "Transpose", [v.name], [inner], {"perm": [0, 2, 3, 1]})]
    for n in graph.nodes:
        nodes.append(replace(n, inputs=[inner if i == v.name else i for i in n.inputs]))
    n, h, w, c = v.shape
    outputs = [replace(o, name=inner) if o.name == v.name else o for o in graph.outputs]
    out = replace(graph, nodes=nodes, inputs=[replace(v, shape=(n, c, h, w))] + list(graph.inputs[1:]),
                  outputs=outputs)
    out.value_info = dict(graph.value_info)
    out.weight_files = graph.weight_files
    return out, v


def as_channels_first(a: np.ndarray, nhwc_input) -> np.ndarray:
    """An array given in the model's own NHWC layout, transposed to the channels-first input fvgraph shows;
    others as they are."""
    shape = nhwc_input.shape
    if a.ndim == 4 and a.shape[3] == shape[3] and all(not isinstance(d, int) or d == s for d, s in
                                                      zip(shape[1:3], a.shape[1:3])) and a.shape[1] != shape[3]:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return a
