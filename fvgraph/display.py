"""Results as pictures, for notebooks and scripts: what `Explanation.heatmap()`/`.overlay()`/`.save()`,
`Reconstruction.show()` and `Evaluation.plot()` return (PIL images), and the `_repr_png_` that makes a bare
result show itself in Jupyter (a row of pictures, one per sample). Built on fvgraph.render."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import InputError, refuse_overwrite


def pil(rgb):
    from PIL import Image
    return Image.fromarray(np.ascontiguousarray(np.asarray(rgb, np.uint8)))


def png_bytes(rgb) -> bytes:
    buf = io.BytesIO()
    pil(rgb).save(buf, format="PNG")
    return buf.getvalue()


def row(pictures, cell=224, pad=4):
    """Pictures side by side at one height (the grid of fvgraph.render, one row)."""
    from .render import grid
    pictures = list(pictures)
    return grid([pictures], cell=cell, pad=pad) if len(pictures) > 1 else np.asarray(pictures[0], np.uint8)


def as_rgb(image, size=None) -> np.ndarray:
    """An (H, W, 3) uint8 picture from a path, bytes, a PIL image (read at its true scale, within the image
    limits: fvgraph.image.read_rgb), or an array ((H, W, 3) uint8, or (3, H, W); other dtypes stretched to
    0..255, NaN and inf shown as 0 with a warning); resized to `size` (h, w) when given."""
    from PIL import Image
    if isinstance(image, (str, Path, bytes, bytearray, Image.Image)):
        from .image import read_rgb
        image = read_rgb(image)
    a = np.asarray(image)
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        raise InputError(f"a picture is an array of numbers, not of {a.dtype}")
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputError(f"a picture is (H, W), (H, W, 3) or (3, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        from .render import finite
        a = finite(a, "the picture")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2 or a.shape[-1] == 1:
        a = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo if hi > lo else 1) * 255).astype(np.uint8)
    if size is not None and tuple(a.shape[:2]) != tuple(size):
        a = np.asarray(Image.fromarray(a).resize((int(size[1]), int(size[0])), Image.BILINEAR))
    return a


def save_picture(path, rgb, overwrite=False, array=None):
    """A .png of the picture, or a .npy of `array`; never over an existing file unless asked."""
    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        if array is None:
            raise InputError(f"{path}: this result has no array to save as .npy")
        np.save(path, array)
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        pil(rgb).save(path)
    else:
        raise InputError(f"{path}: save as .png (the picture) or .npy (the array)")
    return path
