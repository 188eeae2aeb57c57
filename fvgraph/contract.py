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

# torchvision's normalization: the preset "imagenet", and fvgraph.image's default (one definition)
IMAGENET = {"scale": 1 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB"}
PRESETS = {
    "imagenet": IMAGENET,
    "caffe": {"scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0], "channels": "BGR"},
    "tf": {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0], "channels": "RGB"},
    "raw": {"scale": 1 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channels": "RGB"},
}
KEYS = {"size", "resize", "border", "crop_fraction", "interpolation", "scale", "mean", "std", "channels",
        "pad_value", "layout", "crop"}
CHOICES = {"resize": ("shorter", "stretch", "letterbox"), "channels": ("RGB", "BGR", "L"), "layout": ("NCHW", "NHWC")}


MAX_SIZE = 8192  # an input side; beyond it a single map would take gigabytes
FORMS = {
    "size": f"a whole number from 1 to {MAX_SIZE}, or HxW like 224x320",
    "scale": "a finite nonzero number, like 0.00392 or 1/255",
    "mean": "one finite number per channel (1 or 3), like mean=0.485,0.456,0.406",
    "std": "one finite nonzero number per channel (1 or 3), like std=0.229,0.224,0.225",
    "border": f"one or two whole numbers from 0 to {MAX_SIZE} (pixels added to h, w before the crop)",
    "crop_fraction": "a number in (0, 1], like 0.875",
    "pad_value": "a number from 0 to 255",
    "interpolation": "one of bilinear, bicubic, nearest, box, lanczos",
    "crop": "center (the only crop)",
}


def _number(text):
    text = str(text).strip()
    if "/" in text:  # a fraction, as scale=1/255 is written
        a, _, b = text.partition("/")
        a, b = _number(a), _number(b)
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b != 0 else None
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


class Preprocessing(dict):
    """The preprocessing contract as one value: how a picture becomes the model's input and back. It is the
    checked, complete spec (a dict, so every function that reads a spec reads it as it is) with the contract's
    operations: parse (--preprocess text, a preset or a dict), from and to a model's metadata, to the model's
    input, and back to a picture to display. Model.preprocessing() returns one."""

    @classmethod
    def parse(cls, text, input_shape=None) -> "Preprocessing":
        """--preprocess's text (a preset and/or key=value items), a preset name or a dict, over ImageNet's
        defaults sized to the input."""
        return cls.from_metadata({}, input_shape, **parse_preprocess(text))

    @classmethod
    def from_metadata(cls, metadata: dict, input_shape=None, **overrides) -> "Preprocessing":
        """The model's own (fvgraph's metadata key, else ultralytics' imgsz), else ImageNet's, then overrides."""
        from .image import spec_from_metadata
        return cls(spec_from_metadata(metadata, input_shape, **overrides))

    def to_metadata(self, metadata: dict | None = None) -> dict:
        """The model metadata that holds this contract (merged over `metadata`'s own)."""
        import json

        from .image import META_KEY
        meta = dict(metadata or {})
        saved = json.loads(meta.get(META_KEY, "{}") or "{}")
        meta[META_KEY] = json.dumps({**saved, **{k: v for k, v in self.items()}})
        return meta

    def to_input(self, picture) -> np.ndarray:
        """An image file, bytes or (H, W, 3) picture -> the model's input (1, C, H, W) float32."""
        from .image import load_image, to_input
        if isinstance(picture, np.ndarray):
            return to_input(picture, self)
        return load_image(picture, self)

    def to_display(self, x) -> np.ndarray:
        """One (C, H, W) input -> the (H, W, 3) uint8 picture it stands for."""
        from .image import to_display
        return to_display(np.asarray(x), self)


def parse_preprocess(spec) -> dict:
    """A preprocessing spec from a dict, a preset name or a text spec (see the module doc), checked: a bad
    item is one InputError naming it and its valid form."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        out = dict(spec)
        unknown = sorted(str(k) for k in out if k not in KEYS)
        if unknown:
            raise InputError(f"--preprocess: unknown key {unknown[0]!r} (keys: {', '.join(sorted(KEYS))})")
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
            elif key in LISTS:
                raise InputError(f"--preprocess: {key}= takes numbers, and {item!r} is not one ({key} takes "
                                 f"{FORMS[key]})")
            else:
                raise InputError(f"--preprocess: {item!r} is neither a preset ({', '.join(PRESETS)}) nor key=value")
    return check_spec(out)


LISTS = ("size", "mean", "std", "border")


def check_spec(spec: dict, where: str = "--preprocess", complete: bool = False) -> dict:
    """The spec with its values checked and normalized (choices in their case, lists as lists, sizes as
    ints); unknown keys are kept (metadata other tools wrote). `complete`: the spec a model runs with, whose
    mean/std must also match its channels."""
    out = dict(spec)

    def bad(key):
        shown = spec[key]  # as given
        if isinstance(shown, (list, tuple)):
            shown = ",".join(str(v) for v in shown)
        return InputError(f"{where}: {key}={shown} is not valid: {key} takes {FORMS[key]}")

    for k, choices in CHOICES.items():
        if k in out:
            v = str(out[k]).upper() if k != "resize" else str(out[k]).lower()
            if v not in choices:
                raise InputError(f"{where}: {k}={out[k]!r} is not one of {', '.join(choices)}")
            out[k] = v
    if "size" in out:
        out["size"] = _size_value(out["size"], bad)
    if "scale" in out:
        v = _number(out["scale"]) if isinstance(out["scale"], str) else out["scale"]
        if not _finite(v) or v == 0:
            raise bad("scale")
        out["scale"] = v
    for k in ("mean", "std"):
        if k in out:
            vals = out[k] if isinstance(out[k], (list, tuple)) else [out[k]]
            vals = [_number(v) if isinstance(v, str) else v for v in vals]
            if len(vals) not in (1, 3) or not all(_finite(v) and (k == "mean" or v != 0) for v in vals):
                raise bad(k)
            out[k] = [float(v) for v in vals]
    if "border" in out:
        vals = out["border"] if isinstance(out["border"], (list, tuple)) else [out["border"]]
        vals = [_number(v) if isinstance(v, str) else v for v in vals]
        if len(vals) not in (1, 2) or not all(_whole(v) and 0 <= v <= MAX_SIZE for v in vals):
            raise bad("border")
        out["border"] = [int(v) for v in vals] * (2 if len(vals) == 1 else 1)
    if "crop_fraction" in out:
        v = _number(out["crop_fraction"]) if isinstance(out["crop_fraction"], str) else out["crop_fraction"]
        if not _finite(v) or not 0 < v <= 1:
            raise bad("crop_fraction")
        out["crop_fraction"] = float(v)
    if "pad_value" in out:
        v = _number(out["pad_value"]) if isinstance(out["pad_value"], str) else out["pad_value"]
        if not _finite(v) or not 0 <= v <= 255:
            raise bad("pad_value")
        out["pad_value"] = v
    if "interpolation" in out:
        v = str(out["interpolation"]).lower()
        if v not in ("bilinear", "bicubic", "nearest", "box", "lanczos"):
            raise bad("interpolation")
        out["interpolation"] = v
    if "crop" in out:
        if str(out["crop"]).lower() not in ("center", "centre"):
            raise bad("crop")
        out["crop"] = "center"
    if complete:
        n = 1 if out.get("channels") == "L" else 3
        for k in ("mean", "std"):
            if k in out and len(out[k]) not in (1, n):
                raise InputError(f"{where}: channels={out.get('channels', 'RGB')} takes {n} {k} value(s), not "
                                 f"{len(out[k])} ({k}={','.join(f'{v:g}' for v in out[k])})")
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _whole(v) -> bool:
    return _finite(v) and float(v).is_integer()


def _size_value(v, bad):
    if isinstance(v, str):
        parts = v.lower().replace(" ", "").split("x")
        v = [_number(p) for p in parts]
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if len(vals) not in (1, 2) or not all(_whole(a) and 1 <= a <= MAX_SIZE for a in vals):
        raise bad("size")
    vals = [int(a) for a in vals]
    return vals[0] if len(vals) == 1 else vals


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
    `classes`/`labels` list. Always a list of strings, or None where the value is not a list of names (a number,
    a nested object, garbage): labels are informative, and a bad value must not break the commands."""
    try:
        names = _metadata_names(meta)
    except Exception:  # ValueError, SyntaxError, RecursionError, MemoryError of a hostile value
        return None
    if isinstance(names, dict):
        if any(isinstance(n, (list, tuple, dict, set)) for n in names.values()):
            return None
        try:
            names = [None if names[k] is None else names[k] for k in sorted(names, key=lambda k: int(k))]
        except (TypeError, ValueError):
            return None
    if not isinstance(names, (list, tuple)) or not names:
        return None
    if any(isinstance(n, (list, tuple, dict, set)) for n in names):
        return None
    return ["" if n is None else str(n) for n in names]


def _metadata_names(meta: dict):
    if "fvgraph.classes" in meta:
        return json.loads(meta["fvgraph.classes"])
    if "names" in meta:
        text = meta["names"]
        if len(text) > MAX_METADATA:
            return None
        return ast.literal_eval(text)
    if "character" in meta:  # PaddleOCR: the characters of its recognizer, or a classifier's labels
        return meta["character"].split("\n") if "\n" in meta["character"] else meta["character"].split()
    for key in ("classes", "labels", "class_names"):
        if key in meta:
            text = meta[key]
            if text.lstrip().startswith(("[", "{")):
                return json.loads(text)
            return [s.strip() for s in text.replace("\n", ",").split(",") if s.strip()]
    return None


MAX_METADATA = 1 << 20  # characters of a Python literal fvgraph evaluates (ast.literal_eval is recursive)


def check_metadata(meta: dict, where: str) -> None:
    """The metadata fvgraph interprets beyond labels, checked at load: ultralytics' imgsz (used when there is no
    fvgraph.preprocess) must be a size, one whole number or [h, w], or the model cannot be fed."""
    if "imgsz" not in meta or "fvgraph.preprocess" in meta:
        return
    text = meta["imgsz"]
    try:
        v = json.loads(str(text).replace("(", "[").replace(")", "]"))
    except (ValueError, RecursionError):
        v = None
    vals = v if isinstance(v, list) else [v]
    if not 1 <= len(vals) <= 2 or not all(_whole(a) and 1 <= a <= MAX_SIZE for a in vals):
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise InputError(f"{where}: model metadata imgsz={shown!r} is not an input size (ultralytics writes a "
                         f"whole number or [h, w] from 1 to {MAX_SIZE}, e.g. [640, 640]); correct the metadata")


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
