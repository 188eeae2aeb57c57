"""Arrays to pictures: heatmaps (signed, positive, the paper's black-and-white absolute map), overlays, grids.

Maps are scaled by a percentile of their magnitude (default the 99.5th) so that a few extreme pixels do
not wash out the rest; values beyond it saturate. Signed maps use a diverging blue-white-red scale centred
at zero; positive maps (CAM, Grad-CAM, occlusion) a black-red-yellow-white heat scale.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import FvGraphWarning, InputError, refuse_overwrite
from .files import write_atomic

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz

DIVERGING = np.array([[0, 0, 160], [60, 110, 255], [255, 255, 255], [255, 80, 60], [170, 0, 0]], np.float32)
HEAT = np.array([[0, 0, 0], [170, 20, 0], [255, 120, 0], [255, 230, 60], [255, 255, 255]], np.float32)


def _lut(stops, t):
    """Piecewise-linear colour map over t in [0, 1]."""
    t = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def finite(rel, what: str = "the map") -> np.ndarray:
    """The map as float32 with NaN and inf shown as 0 (and a warning saying how many); all of them
    non-finite is an InputError: there is nothing to show, and a black picture would say nothing."""
    rel = np.asarray(rel, np.float32)
    ok = np.isfinite(rel)
    if ok.all():
        return rel
    if not ok.any():
        raise InputError(f"{what} is all NaN or infinite ({rel.size} values): nothing to show; the method's "
                         "result did not come out finite (try float32 or another method)")
    warnings.warn(f"{what} has {int(rel.size - ok.sum())} of {rel.size} values NaN or infinite; shown as 0",
                  FvGraphWarning, stacklevel=3)
    return np.where(ok, rel, np.float32(0))


def to_2d(rel: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """One map per pixel from (C, H, W) relevance: "sum" over channels (signed), or "absmax" (the
    saliency convention: the largest magnitude over channels)."""
    rel = finite(rel)
    if rel.ndim == 2:
        return rel
    if rel.ndim != 3:
        raise InputError(f"a map must be (H, W) or (C, H, W), got shape {rel.shape}")
    return rel.sum(axis=0) if reduce == "sum" else np.abs(rel).max(axis=0)


def scale(m: np.ndarray, percentile: float = 99.5) -> float:
    v = float(np.percentile(np.abs(m), percentile)) if m.size else 0.0
    return v if v > 0 else (float(np.abs(m).max()) or 1.0)


def signed_map(m, percentile=99.5) -> np.ndarray:
    m = finite(m)
    return _lut(DIVERGING, 0.5 + 0.5 * m / scale(m, percentile))


def heat_map(m, percentile=99.5) -> np.ndarray:
    m = np.maximum(finite(m), 0)
    return _lut(HEAT, m / scale(m, percentile))


def abs_map(m, percentile=99.5) -> np.ndarray:
    """The paper's black-and-white map: magnitude as brightness."""
    m = finite(m)
    g = np.clip(np.abs(m) / scale(m, percentile), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def rgb_map(rel, percentile=99.5) -> np.ndarray:
    """A (3, H, W) signal shown as an image around grey (how guided backprop pictures are usually shown);
    each channel's median is taken as grey, so a constant offset (deconvnet's) does not hide the pattern."""
    rel = finite(rel)
    rel = rel - np.median(rel, axis=(1, 2), keepdims=True)
    return np.clip(128 + 127 * rel.transpose(1, 2, 0) / scale(rel, percentile), 0, 255).astype(np.uint8)


KINDS = ("signed", "heat", "abs", "rgb")


def picture(rel, kind="signed", percentile=99.5, image=None, alpha=0.5) -> np.ndarray:
    """An (H, W, 3) uint8 picture of a relevance map: kind "signed", "heat", "abs" or "rgb"; with `image`
    (H, W, 3), heat maps are laid over it."""
    if kind not in KINDS:
        raise InputError(f"unknown map kind {kind!r}: use one of {', '.join(KINDS)}")
    rel = finite(rel)
    if kind == "rgb" and rel.ndim == 3 and rel.shape[0] == 3:
        return rgb_map(rel, percentile)
    m = to_2d(rel, "absmax" if kind == "abs" else "sum")
    pic = {"signed": signed_map, "heat": heat_map, "abs": abs_map, "rgb": signed_map}[kind](m, percentile)
    if image is None or kind != "heat":
        return pic
    if pic.shape[:2] != np.shape(image)[:2]:  # a map at a layer's size (a CAM not upsampled): drawn over it all
        from PIL import Image
        pic = np.asarray(Image.fromarray(pic).resize(np.shape(image)[1::-1], Image.NEAREST))
    return overlay(image, pic, alpha)


def grid(rows: list[list[np.ndarray]], titles: list[str] | None = None, row_labels: list[str] | None = None,
         cell: int = 160, pad: int = 4) -> np.ndarray:
    """Pictures in rows and columns (resized to cell x cell), optional column titles and row labels."""
    from PIL import Image, ImageDraw
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    top = 22 if titles else 0
    W = n_cols * (cell + pad) + pad
    H = top + n_rows * (cell + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, t in enumerate(titles or []):
        draw.text((pad + c * (cell + pad) + 2, 4), str(t)[:26], fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, np.uint8)).resize((cell, cell), Image.BILINEAR)
            canvas.paste(tile, (pad + c * (cell + pad), top + pad + r * (cell + pad)))
        if row_labels:
            x0, y0 = pad + 2, top + pad + r * (cell + pad) + cell - 14
            label = str(row_labels[r])[:26]
            draw.rectangle((x0 - 2, y0 - 1, x0 + 6 * len(label) + 2, y0 + 11), fill=(255, 255, 255))
            draw.text((x0, y0), label, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(path, rgb: np.ndarray, overwrite: bool = False) -> Path:
    from PIL import Image
    path = Path(path)
    refuse_overwrite(path, overwrite, other_out=True)
    picture = Image.fromarray(np.asarray(rgb, np.uint8))
    return write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))  # a kill leaves no half a PNG


def save_npy(path, a: np.ndarray, overwrite: bool = False) -> Path:
    path = Path(path)
    refuse_overwrite(path, overwrite, other_out=True)
    a = np.asarray(a)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save adds no second ".npy"
            np.save(f, a)
    return write_atomic(path, write)  # a kill leaves no half an array


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def curves(panels: dict, width: int = 420, height: int = 300) -> np.ndarray:
    """Line charts side by side, one panel per title: {title: {label: (x, y)}}, x and y in [0, 1], each panel
    with axes, ticks and a legend (the labels and their areas under the curve)."""
    from PIL import Image, ImageDraw
    left, right, top, bottom = 44, 150, 26, 34
    im = Image.new("RGB", (width * len(panels), height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for p, (title, lines) in enumerate(panels.items()):
        x0, x1, y0, y1 = p * width + left, p * width + width - right, top, height - bottom
        d.text((x0, 6), title, fill=(0, 0, 0))
        d.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        for t in (0, 0.25, 0.5, 0.75, 1):
            gx, gy = x0 + t * (x1 - x0), y1 - t * (y1 - y0)
            d.line((gx, y1, gx, y1 + 4), fill=(0, 0, 0))
            d.text((gx - 8, y1 + 6), f"{t:g}", fill=(0, 0, 0))
            d.line((x0 - 4, gy, x0, gy), fill=(0, 0, 0))
            d.text((x0 - 30, gy - 6), f"{t:g}", fill=(0, 0, 0))
        d.text(((x0 + x1) // 2 - 40, height - 14), "fraction of pixels", fill=(0, 0, 0))
        for k, (label, (xs, ys)) in enumerate(lines.items()):
            colour = PALETTE[k % len(PALETTE)]
            xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
            ok = np.isfinite(xs) & np.isfinite(ys)  # a NaN point is left out of the line and its area
            if not ok.all():
                warnings.warn(f"{title}: {label} has {int((~ok).sum())} NaN or infinite point(s); left out",
                              FvGraphWarning, stacklevel=2)
            xs, ys = xs[ok], ys[ok]
            pts = [(x0 + float(a) * (x1 - x0), y1 - float(np.clip(b, 0, 1)) * (y1 - y0)) for a, b in zip(xs, ys)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            ly = top + 6 + 14 * k
            d.line((x1 + 8, ly + 6, x1 + 24, ly + 6), fill=colour, width=3)
            area = f"{float(trapezoid(ys, xs)):.3f}" if len(pts) > 1 else "n/a"
            d.text((x1 + 28, ly), f"{label[:14]} {area}", fill=(0, 0, 0))
    return np.asarray(im)
