"""Images in and out: load and preprocess a photo the way a model expects, and undo it for display.

A preprocessing spec is a dict (stored as JSON under the model metadata key `fvgraph.preprocess`):
- size (int, or [h, w]);
- resize: "shorter" (keep the aspect, shorter side to size + border (or size / crop_fraction), centre crop),
  "stretch" (to size + border, centre crop), or "letterbox" (keep the aspect, fit inside size, pad with
  pad_value, centred: how ultralytics feeds its detectors); border [bh, bw] and crop_fraction (MatConvNet's
  border and cropSize); interpolation ("bilinear", "bicubic", "nearest", "box", "lanczos");
- scale (pixels are multiplied by it first, e.g. 1/255), mean and std per channel;
- channels: "RGB", "BGR" or "L" (grayscale, one channel).
Without one, ultralytics exports' own metadata (imgsz) is read (letterbox, RGB, 0-1); else ImageNet's defaults
sized to the model's input (grayscale where it takes one channel).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT = {"size": 224, "resize": "shorter", "crop": "center", "scale": 1 / 255.0,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB"}
META_KEY = "fvgraph.preprocess"


GRAY = {"mean": [0.449], "std": [0.226], "channels": "L"}  # ImageNet's statistics of the luminance


def spec_from_metadata(metadata: dict, input_shape=None, **overrides) -> dict:
    """The model's preprocessing (fvgraph's metadata key, else ultralytics' imgsz), else ImageNet's defaults
    sized to the model's input."""
    spec = dict(DEFAULT)
    fixed = input_shape is not None and len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape[1:])
    if META_KEY in metadata:
        try:
            spec.update(json.loads(metadata[META_KEY]))
        except ValueError as e:
            raise InputError(f"model metadata {META_KEY!r} is not valid JSON: {e}") from None
    elif "imgsz" in metadata:
        spec.update(resize="letterbox", scale=1 / 255.0, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], channels="RGB",
                    pad_value=114, size=_ultralytics_size(metadata["imgsz"]))
    elif fixed:
        spec["size"] = [int(input_shape[2]), int(input_shape[3])]
    if input_shape is not None and len(input_shape) == 4 and input_shape[1] == 1 and META_KEY not in metadata:
        spec.update(GRAY)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return spec


def _ultralytics_size(text):
    try:
        v = json.loads(str(text).replace("(", "[").replace(")", "]"))
    except ValueError:
        raise InputError(f"model metadata imgsz={text!r} is not a size") from None
    v = [int(a) for a in (v if isinstance(v, list) else [v, v])]
    return v if len(v) == 2 else [v[0], v[0]]


def input_shape(model) -> tuple:
    """(1, C, H, W) of one image as the model takes it: its own dims where fixed, else its preprocessing's."""
    spec = model.preprocessing()
    dims = model.inputs[0].shape or ()
    h, w = _size(spec)
    c = dims[1] if len(dims) == 4 and isinstance(dims[1], int) else (1 if spec.get("channels") == "L" else 3)
    if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int):
        h, w = dims[2], dims[3]
    return (1, int(c), int(h), int(w))


def _size(spec):
    s = spec["size"]
    return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))


def read_rgb(path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


INTERPOLATION = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "box": "BOX",
                 "lanczos": "LANCZOS"}


def resize_crop(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """Resize (and centre-crop, or letterbox) an (H, W, 3) uint8 image to the spec's size."""
    from PIL import Image
    th, tw = _size(spec)
    how = spec.get("resize", "shorter")
    interp = str(spec.get("interpolation", "bilinear")).lower()
    if interp not in INTERPOLATION or how not in ("shorter", "stretch", "letterbox"):
        raise InputError(f"unknown preprocessing: resize={how!r}, interpolation={interp!r}")
    resample = getattr(Image, INTERPOLATION[interp])
    im = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    if how == "letterbox":
        k = min(th / h, tw / w)
        nh, nw = max(1, round(h * k)), max(1, round(w * k))
        canvas = Image.new("RGB", (tw, th), (int(spec.get("pad_value", 114)),) * 3)
        canvas.paste(im.resize((nw, nh), resample), ((tw - nw) // 2, (th - nh) // 2))
        return np.asarray(canvas)
    bh, bw = (list(spec.get("border", [0, 0])) + [0, 0])[:2]
    fraction = float(spec.get("crop_fraction", 1.0))
    ch, cw = round(th / fraction) + int(bh), round(tw / fraction) + int(bw)
    if how == "shorter":
        k = max(ch / h, cw / w)
        nh, nw = max(th, round(h * k)), max(tw, round(w * k))
    else:
        nh, nw = max(th, ch), max(tw, cw)
    im = im.resize((nw, nh), resample)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.asarray(im.crop((left, top, left + tw, top + th)))


def to_input(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, C, H, W) float32 normalized (C = 1 for grayscale models)."""
    if spec.get("channels", "RGB") == "L":
        from PIL import Image
        rgb = np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    x = rgb.astype(np.float32) * np.float32(spec.get("scale", 1 / 255.0))
    if spec.get("channels", "RGB") == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def load_image(path, spec: dict | None = None) -> np.ndarray:
    """Read, resize/crop and normalize an image file: (1, 3, H, W) float32."""
    spec = spec or DEFAULT
    return to_input(resize_crop(read_rgb(path), spec), spec)


def to_display(x: np.ndarray, spec: dict) -> np.ndarray:
    """Undo the normalization of one (3, H, W) input: an (H, W, 3) uint8 picture."""
    x = np.asarray(x, np.float32).transpose(1, 2, 0)
    x = x * np.asarray(spec["std"], np.float32) + np.asarray(spec["mean"], np.float32)
    if spec.get("channels", "RGB") == "BGR":
        x = x[..., ::-1]
    x = x / np.float32(spec.get("scale", 1 / 255.0))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def input_range(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of valid inputs: pixel values 0..255 after the normalization."""
    lo = (0 - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    hi = (255 * spec.get("scale", 1 / 255.0) - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    if spec.get("channels", "RGB") == "BGR":
        lo, hi = lo[::-1], hi[::-1]
    return lo.astype(np.float32), hi.astype(np.float32)


DEMO_MODEL = Path(__file__).parent / "data" / "efficientnet_lite0.onnx"  # the embedded model (see data/CREDITS.md)


def demo_images() -> list[Path]:
    d = Path(__file__).parent / "data"
    return sorted(p for p in d.iterdir() if p.suffix in (".png", ".jpg"))
