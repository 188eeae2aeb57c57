"""Images in and out: load and preprocess a photo the way a model expects, and undo it for display.

A preprocessing spec is a dict (stored as JSON under the model metadata key `fvgraph.preprocess`):
size (int, or [h, w]), resize ("shorter": shorter side to size then centre crop; "stretch": to size x size),
scale (pixels are multiplied by it first, e.g. 1/255), mean and std per channel, channels ("RGB" or "BGR").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT = {"size": 224, "resize": "shorter", "crop": "center", "scale": 1 / 255.0,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB"}
META_KEY = "fvgraph.preprocess"


def spec_from_metadata(metadata: dict, input_shape=None, **overrides) -> dict:
    """The model's preprocessing (metadata), else ImageNet's defaults sized to the model's input."""
    spec = dict(DEFAULT)
    if META_KEY in metadata:
        try:
            spec.update(json.loads(metadata[META_KEY]))
        except ValueError as e:
            raise InputError(f"model metadata {META_KEY!r} is not valid JSON: {e}") from None
    elif input_shape is not None and len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape[2:]):
        spec["size"] = [int(input_shape[2]), int(input_shape[3])]
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return spec


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


def resize_crop(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """Resize (and centre-crop) an (H, W, 3) uint8 image to the spec's size."""
    from PIL import Image
    th, tw = _size(spec)
    im = Image.fromarray(rgb)
    if spec.get("resize", "shorter") == "shorter":
        h, w = rgb.shape[:2]
        k = max(th / h, tw / w)
        nh, nw = max(th, round(h * k)), max(tw, round(w * k))
        im = im.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - th) // 2, (nw - tw) // 2
        im = im.crop((left, top, left + tw, top + th))
    else:
        im = im.resize((tw, th), Image.BILINEAR)
    return np.asarray(im)


def to_input(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 normalized."""
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
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def input_range(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of valid inputs: pixel values 0..255 after the normalization."""
    lo = (0 - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    hi = (255 * spec.get("scale", 1 / 255.0) - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    if spec.get("channels", "RGB") == "BGR":
        lo, hi = lo[::-1], hi[::-1]
    return lo.astype(np.float32), hi.astype(np.float32)


def demo_images() -> list[Path]:
    d = Path(__file__).parent / "data"
    return sorted(p for p in d.iterdir() if p.suffix in (".png", ".jpg"))
