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

Reading (`open_image`, and `read_rgb`/`load_image` on top of it) takes a path, bytes or a PIL image and never
decodes before the header's size passed the limits (`ImageLimits`): at most 50 megapixels
(`FVGRAPH_MAX_IMAGE_PIXELS`, `set_image_limits(max_pixels=)`, the CLI's `--max-image-pixels`), the long side at
most 32 times the short one (`FVGRAPH_MAX_IMAGE_ASPECT`), and the picture the preprocessing's resize would make
at most max_pixels too. Pixels come at their true scale, as 0..1: 8-bit modes (1-bit, L, P, LA, RGB(A), CMYK,
YCbCr) through Pillow's conversion to RGB; 16-bit (I;16*) / 65535; 32-bit integer (I) by its declared range
(TIFF: its BitsPerSample and SampleFormat, 2**31 - 1 for int32; other formats' I is 16-bit data: 65535);
float (F): taken as 0..1 when its maximum is at most 1, else as 0..255 when at most 255, else as 0..65535 when
at most 65535, else divided by its maximum (with a warning); negatives become 0, NaN/inf are refused. 16-bit
RGB(A) PNGs Pillow reads as 8-bit (their high byte, within 1/255 of the true value). Alpha is dropped (as
torchvision's convert("RGB") does), the EXIF orientation applied, an animation's first frame taken, and EPS
(which would run Ghostscript) refused. Pillow's own bomb check (Image.MAX_IMAGE_PIXELS) is raised to
max_pixels where that is higher, so that fvgraph's limit is the one that holds.
"""
from __future__ import annotations

import math

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import IMAGENET
from .errors import FvGraphWarning, InputError

DEFAULT = {"size": 224, "resize": "shorter", "crop": "center", **IMAGENET}
META_KEY = "fvgraph.preprocess"


GRAY = {"mean": [0.449], "std": [0.226], "channels": "L"}  # ImageNet's statistics of the luminance


def spec_from_metadata(metadata: dict, input_shape=None, **overrides) -> dict:
    """The model's preprocessing (fvgraph's metadata key, else ultralytics' imgsz), else ImageNet's defaults
    sized to the model's input."""
    from .contract import check_spec
    spec = dict(DEFAULT)
    fixed = input_shape is not None and len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape[1:])
    if META_KEY in metadata:
        try:
            saved = json.loads(metadata[META_KEY])
        except ValueError as e:
            raise InputError(f"model metadata {META_KEY!r} is not valid JSON: {e}") from None
        if not isinstance(saved, dict):
            raise InputError(f"model metadata {META_KEY!r} is not a JSON object of preprocessing settings")
        given = {k for k, v in overrides.items() if v is not None}  # what the caller overrides needs no check
        spec.update(saved)
        spec.update(check_spec({k: v for k, v in saved.items() if k not in given},
                               f"model metadata {META_KEY!r} (override it with --preprocess)"))
    elif "imgsz" in metadata:
        spec.update(resize="letterbox", scale=1 / 255.0, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], channels="RGB",
                    pad_value=114, size=_ultralytics_size(metadata["imgsz"]))
    elif fixed:
        spec["size"] = [int(input_shape[2]), int(input_shape[3])]
    if input_shape is not None and len(input_shape) == 4 and input_shape[1] == 1 and META_KEY not in metadata:
        spec.update(GRAY)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return check_spec(spec, "preprocessing", complete=True)


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


def _env_number(var, default, kind):
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    try:
        v = kind(float(text))
    except ValueError:
        v = 0
    if not v > 0:
        raise InputError(f"{var}={text!r} is not a positive number")
    return v


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be before it is decoded: a bound on memory and time that real photos, panoramas and
    document scans stay within, and that decompression bombs and 1-pixel strips do not."""
    max_pixels: int = 50_000_000  # width x height of the file, and of the picture the resize would make
    max_aspect: float = 32.0  # long side / short side

    def check(self, w: int, h: int, name: str = "the image"):
        if w <= 0 or h <= 0:
            raise InputError(f"{name}: the image is {w}x{h} pixels (empty)")
        if w * h > self.max_pixels:
            raise InputError(f"{name}: the image is {w}x{h} pixels ({w * h / 1e6:.1f} megapixels), over the limit "
                             f"of {_mp(self.max_pixels)}; {RAISE_PIXELS}")
        if max(w, h) > self.max_aspect * min(w, h):
            raise InputError(f"{name}: the image is {w}x{h} pixels, its long side {max(w, h) / min(w, h):.0f} times "
                             f"its short one, over the limit of {self.max_aspect:g} (resizing such a strip blows "
                             "it up); crop it, or raise the limit with --max-image-aspect N (or "
                             "FVGRAPH_MAX_IMAGE_ASPECT, or fvgraph.image.set_image_limits(max_aspect=N))")


RAISE_PIXELS = ("raise it with --max-image-pixels N (or FVGRAPH_MAX_IMAGE_PIXELS, or "
                "fvgraph.image.set_image_limits(max_pixels=N)) if you trust the image")
_SET: dict = {}  # what set_image_limits said; it wins over the environment


def _mp(n):
    return f"{n / 1e6:g} megapixels"


def image_limits() -> ImageLimits:
    """The limits in force: set_image_limits', else the environment's, else the defaults."""
    d = ImageLimits()
    return ImageLimits(
        max_pixels=_SET.get("max_pixels") or _env_number("FVGRAPH_MAX_IMAGE_PIXELS", d.max_pixels, int),
        max_aspect=_SET.get("max_aspect") or _env_number("FVGRAPH_MAX_IMAGE_ASPECT", d.max_aspect, float))


def set_image_limits(max_pixels=None, max_aspect=None) -> ImageLimits:
    """Set the process's limits (what --max-image-pixels calls); None keeps one as it is. Returns them."""
    for key, v, kind in (("max_pixels", max_pixels, int), ("max_aspect", max_aspect, float)):
        if v is None:
            continue
        given = v
        try:
            f = float(v)
            v = kind(f) if math.isfinite(f) else 0
        except (TypeError, ValueError, OverflowError):
            v = 0
        if not v > 0:
            raise InputError(f"{key}={given!r}: the image limit must be a positive finite number")
        _SET[key] = v
    return image_limits()


def _limits(limits) -> ImageLimits:
    if limits is None:
        return image_limits()
    if isinstance(limits, ImageLimits):
        return limits
    return ImageLimits(max_pixels=int(limits), max_aspect=image_limits().max_aspect)


_EXT_OK = None


def _formats():
    """Every raster format Pillow reads, less EPS (Ghostscript would run on it)."""
    global _EXT_OK
    if _EXT_OK is None:
        from PIL import Image
        Image.init()
        _EXT_OK = [f for f in Image.OPEN if f != "EPS"]
    return _EXT_OK


def _sniff_empty(head: bytes):
    """A PNG or PNM header that declares a zero side (Pillow only says it cannot identify those)."""
    import struct
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    parts = head[:64].split()
    if len(parts) >= 3 and parts[0] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and parts[1].isdigit() \
            and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


def _open(source, name, limits):
    """A lazily opened PIL image (only its header read) and whether it is ours to close."""
    import io

    from PIL import Image, UnidentifiedImageError
    if isinstance(source, Image.Image):
        return source, False
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError(f"{name}: empty (0 bytes), not an image")
        fp, head = io.BytesIO(data), data[:64]
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if path.is_dir():
                raise InputError(f"{name}: is a folder, not an image file")
            if path.stat().st_size == 0:
                raise InputError(f"{name}: empty file (0 bytes), not an image")
            with open(path, "rb") as f:
                head = f.read(64)
        except FileNotFoundError:
            raise InputError(f"{name}: no such image file") from None
        except PermissionError:
            raise InputError(f"{name}: cannot read it (permission denied)") from None
        fp = path  # Pillow opens it, and closes it with the image
    elif hasattr(source, "read"):
        fp, head = source, b""
    else:
        raise InputError(f"an image is a path, bytes or a PIL image, not {type(source).__name__}")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels  # Pillow's own bomb check never stricter than ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=_formats()), True
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(found.group(1)) / 1e6:.1f} megapixels)" if found else ""
        _close(fp, source)
        raise InputError(f"{name}: the image{size} is over the limit of {_mp(limits.max_pixels)}; "
                         f"{RAISE_PIXELS}") from None
    except UnidentifiedImageError:
        _close(fp, source)
        empty = _sniff_empty(head)
        if empty is not None and 0 in empty:
            raise InputError(f"{name}: the image is {empty[0]}x{empty[1]} pixels (empty)") from None
        raise InputError(f"{name}: not an image fvgraph can read (unknown format, or a damaged header; PNG, JPEG, "
                         "TIFF, BMP, GIF, WebP and the other formats Pillow reads are)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        _close(fp, source)
        raise InputError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


def _close(fp, source):
    if fp is not source and hasattr(fp, "close"):  # our BytesIO; a path Pillow closed itself
        fp.close()


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block: the picture as stored
        return 1


def _decode(source, spec=None, limits=None, name=None) -> np.ndarray:
    """(H, W, 3): uint8 for 8-bit sources (exactly what Pillow gives), float32 0..1 for deeper ones. The
    header's size is checked against the limits (and, given a spec, the size its resize would make) before
    anything is decoded."""
    from PIL import ImageOps
    limits = _limits(limits)
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    im, ours = _open(source, name, limits)
    try:
        w, h = im.size
        limits.check(w, h, name)
        orientation = _orientation(im)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        if spec is not None:
            check_resize(h, w, spec, limits, name)
        try:
            im.load()  # a file just opened is at its first frame (an animation's); a caller's image at its own
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{name}: not enough memory to decode its {w}x{h} pixels (lower the image limit, "
                             "or free memory)") from None
        except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, struct.error, ... on bad data
            raise InputError(f"{name}: the image data is truncated or corrupt ({type(e).__name__}: {e})") from None
        return _pixels(im, name)
    finally:
        if ours:
            im.close()


def _pixels(im, name) -> np.ndarray:
    mode, fmt = im.mode, im.format
    if mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.float32) / np.float32(65535)
    elif mode == "I":
        a = np.asarray(im).astype(np.int64)
        top = _int_range(im, a)
        if a.size and a.max() < top / 256:
            warnings.warn(f"{name}: a 32-bit integer image whose pixels use under 1/256 of its declared range "
                          f"0..{top}: it reads as nearly black (save it as 8 or 16-bit to be read as you see it)",
                          FvGraphWarning, stacklevel=3)
        grey = (np.clip(a, 0, top) / top).astype(np.float32)
    elif mode == "F":
        grey = _float_scale(np.asarray(im, np.float32), name)
    else:
        try:
            if mode == "1":
                im = im.convert("L")
            elif mode in ("P", "PA"):
                im = im.convert("RGBA")
            if im.mode != "RGB":
                im = im.convert("RGB")
        except (ValueError, OSError) as e:
            raise InputError(f"{name}: its pixel mode {mode} ({fmt}) cannot be read as RGB ({e})") from None
        return np.asarray(im)
    return np.repeat(grey[..., None], 3, axis=2)


def _int_range(im, a) -> int:
    """The top of a mode-I image's declared range: a TIFF's sample type, else 16-bit (PNG, PNM)."""
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258, (32,))
        fmt = tags.get(339, (1,))
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
        return 2 ** (bits - signed) - 1
    return 65535 if not a.size or a.max() <= 65535 else 2 ** 31 - 1


def _float_scale(a, name) -> np.ndarray:
    """A float image as 0..1 (the rule in the module's doc)."""
    bad = ~np.isfinite(a)
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} of its {a.size} pixels are NaN or infinite")
    top = float(a.max()) if a.size else 0.0
    for bound in (1.0, 255.0, 65535.0):
        if top <= bound:
            break
    else:
        bound = top
        warnings.warn(f"{name}: a float image up to {top:g}, beyond 0..65535: shown divided by its maximum",
                      FvGraphWarning, stacklevel=4)
    return np.clip(a / np.float32(bound), 0, 1).astype(np.float32)


def open_image(source, spec: dict | None = None, limits=None, name: str | None = None) -> np.ndarray:
    """Any image (a path, bytes or a PIL image) as an (H, W, 3) float32 RGB array in 0..1 at its true scale,
    checked against the limits (an ImageLimits, or max pixels as a number; default `image_limits()`) before it
    is decoded; with a spec, the size its resize would make is checked too. Bad input: one InputError."""
    a = _decode(source, spec, limits, name)
    return a.astype(np.float32) / np.float32(255) if a.dtype == np.uint8 else a


def read_rgb(path, limits=None, name: str | None = None) -> np.ndarray:
    """An image (path, bytes or PIL image) as an (H, W, 3) uint8 RGB array: open_image's, rounded to 8 bits."""
    a = _decode(path, None, limits, name)
    return a if a.dtype == np.uint8 else (a * 255 + 0.5).astype(np.uint8)


INTERPOLATION = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "box": "BOX",
                 "lanczos": "LANCZOS"}


def _resized(h, w, spec):
    """(how, interpolation, (nh, nw) the image is resized to, (th, tw) the size it ends at)."""
    th, tw = _size(spec)
    how = spec.get("resize", "shorter")
    interp = str(spec.get("interpolation", "bilinear")).lower()
    if interp not in INTERPOLATION or how not in ("shorter", "stretch", "letterbox"):
        raise InputError(f"unknown preprocessing: resize={how!r}, interpolation={interp!r}")
    if how == "letterbox":
        k = min(th / h, tw / w)
        return how, interp, (max(1, round(h * k)), max(1, round(w * k))), (th, tw)
    bh, bw = (list(spec.get("border", [0, 0])) + [0, 0])[:2]
    fraction = float(spec.get("crop_fraction", 1.0))
    ch, cw = round(th / fraction) + int(bh), round(tw / fraction) + int(bw)
    if how == "shorter":
        k = max(ch / h, cw / w)
        return how, interp, (max(th, round(h * k)), max(tw, round(w * k))), (th, tw)
    return how, interp, (max(th, ch), max(tw, cw)), (th, tw)


def check_resize(h, w, spec, limits=None, name="the image"):
    """Refuse, before any work, a resize that would make a picture over the pixel limit (a 1 x 20000 strip
    whose short side goes to 224)."""
    limits = _limits(limits)
    how, _, (nh, nw), (th, tw) = _resized(h, w, spec)
    if max(nh * nw, th * tw) > limits.max_pixels:
        raise InputError(f"{name}: resizing its {w}x{h} pixels (resize={how}, size {th}x{tw}) would make a "
                         f"{nw}x{nh} picture, over the limit of {_mp(limits.max_pixels)}; crop the image first, "
                         f"use resize=letterbox or stretch, or {RAISE_PIXELS}")


def resize_crop(rgb: np.ndarray, spec: dict, limits=None) -> np.ndarray:
    """Resize (and centre-crop, or letterbox) an (H, W, 3) image, uint8 or float (kept as it is), to the spec's
    size; a resize over the pixel limit is refused before it is done."""
    from PIL import Image
    h, w = rgb.shape[:2]
    check_resize(h, w, spec, limits)
    how, interp, (nh, nw), (th, tw) = _resized(h, w, spec)
    resample = getattr(Image, INTERPOLATION[interp])
    if rgb.dtype != np.uint8:
        return _resize_float(np.asarray(rgb, np.float32), how, resample, (nh, nw), (th, tw), spec)
    im = Image.fromarray(rgb)
    if how == "letterbox":
        canvas = Image.new("RGB", (tw, th), (int(spec.get("pad_value", 114)),) * 3)
        canvas.paste(im.resize((nw, nh), resample), ((tw - nw) // 2, (th - nh) // 2))
        return np.asarray(canvas)
    im = im.resize((nw, nh), resample)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.asarray(im.crop((left, top, left + tw, top + th)))


def _resize_float(a, how, resample, new, target, spec):
    """resize_crop of a float (0..1) image, channel by channel in Pillow's float mode (no rounding to 8 bits)."""
    from PIL import Image
    (nh, nw), (th, tw) = new, target
    r = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize((nw, nh), resample))
                  for c in range(a.shape[2])], axis=2)
    if how == "letterbox":
        out = np.full((th, tw, a.shape[2]), float(spec.get("pad_value", 114)) / 255, np.float32)
        y, x = (th - nh) // 2, (tw - nw) // 2
        out[y:y + nh, x:x + nw] = r
        return out
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(r[top:top + th, left:left + tw])


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, Pillow's convert("L")


def to_input(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 (0..255), or float (0..1, as open_image gives) -> (1, C, H, W) float32 normalized
    (C = 1 for grayscale models)."""
    scale = np.float32(spec.get("scale", 1 / 255.0))
    if rgb.dtype == np.uint8:
        if spec.get("channels", "RGB") == "L":
            from PIL import Image
            rgb = np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
        x = rgb.astype(np.float32) * scale
    else:
        x = np.asarray(rgb, np.float32)
        if spec.get("channels", "RGB") == "L":
            x = (x @ LUMA)[..., None]
        x = x * (np.float32(255) * scale)
    if spec.get("channels", "RGB") == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def load_image(path, spec: dict | None = None, limits=None) -> np.ndarray:
    """Read (at the image's true scale), resize/crop and normalize an image (path, bytes or PIL image):
    (1, C, H, W) float32. The size limits are checked before anything is decoded."""
    spec = spec or DEFAULT
    return to_input(resize_crop(_decode(path, spec, limits), spec, limits), spec)


def load_with_picture(path, spec: dict | None = None, limits=None) -> tuple[np.ndarray, np.ndarray]:
    """(load_image's input (1, C, H, W), the picture as shown (H, W, 3) uint8), from one decode of the file:
    the input at the image's true scale, as load_image gives it."""
    spec = spec or DEFAULT
    framed = resize_crop(_decode(path, spec, limits), spec, limits)
    shown = framed if framed.dtype == np.uint8 else (np.clip(framed, 0, 1) * 255 + 0.5).astype(np.uint8)
    return to_input(framed, spec), shown


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
