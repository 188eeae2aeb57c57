"""Transformation robustness (Olah et al. 2017; Fel et al. 2023): every step of a reconstruction looks at a batch
of randomly cropped, zoomed, rotated and noised copies of the image, run as one batch through the lowered graph,
so that what is found does not hinge on exact pixel positions.

Each copy samples the image along an affine grid (its own centre, size, angle): bilinear taps with reflection
at the borders, the same taps GridSample uses (fvgraph.ops.gridsample), so the copy is linear in the image and
its backward is the scatter-add of the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..ops.gridsample import GridTaps


@dataclass(frozen=True)
class Transforms:
    crops: int = 4              # copies per image and step
    scale: tuple = (0.5, 1.0)   # each copy's side as a fraction of the image's (uniform)
    shift: float = 0.15         # the copy's centre: standard deviation of its offset, as a fraction of the side
    rotate: float = 10.0        # degrees, uniform in [-rotate, rotate]
    noise: float = 0.05         # Gaussian plus uniform noise on the copy, in [0, 1] image units
    flip: bool = False          # mirror half of the copies

    def __post_init__(self):
        lo, hi = self.scale
        if self.crops < 1 or not 0 < lo <= hi or self.rotate < 0 or self.noise < 0 or self.shift < 0:
            raise InputError(f"bad transforms: {self}")


NONE = Transforms(crops=1, scale=(1.0, 1.0), shift=0.0, rotate=0.0, noise=0.0)
DEFAULT = Transforms()


def parse(spec) -> Transforms:
    """None or "default", "none", a Transforms, a dict, or "key=value,..." (scale=0.5:1, crops=8, ...)."""
    if spec is None or spec == "default":
        return DEFAULT
    if spec == "none" or spec is False:
        return NONE
    if isinstance(spec, Transforms):
        return spec
    if isinstance(spec, str):
        items = {}
        for item in spec.split(","):
            if "=" not in item:
                raise InputError(f"transforms take key=value items (crops, scale, shift, rotate, noise, flip), "
                                 f"got {item!r}")
            k, v = (t.strip() for t in item.split("=", 1))
            items[k] = tuple(float(a) for a in v.split(":")) if k == "scale" else \
                v.lower() in ("1", "true", "yes") if k == "flip" else int(v) if k == "crops" else float(v)
        spec = items
    if isinstance(spec, dict):
        unknown = set(spec) - set(Transforms.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown transform option(s) {sorted(unknown)}")
        spec = dict(spec)
        if "scale" in spec and not isinstance(spec["scale"], (tuple, list)):
            spec["scale"] = (float(spec["scale"]), float(spec["scale"]))
        if "scale" in spec:
            spec["scale"] = tuple(spec["scale"]) * (2 if len(spec["scale"]) == 1 else 1)
        return replace(DEFAULT, **spec)
    raise InputError(f"transforms must be 'default', 'none', a dict or fv Transforms, got {spec!r}")


class Sampling:
    """One step's copies: forward (n, c, H, W) -> (n * crops, c, h, w), backward the adjoint."""

    def __init__(self, t: Transforms, rng, n, source, out):
        H, W = source
        h, w = out
        k = n * t.crops
        self.n, self.k, self.t, self.source, self.out = n, k, t, source, out
        side = rng.uniform(t.scale[0], t.scale[1], k)
        centre = np.clip(rng.normal(0, t.shift * 2, (k, 2)), -(1 - side[:, None]), 1 - side[:, None])
        angle = np.deg2rad(rng.uniform(-t.rotate, t.rotate, k))
        flip = np.where(rng.random(k) < 0.5, -1.0, 1.0) if t.flip else np.ones(k)
        uy = (2 * np.arange(h) + 1) / h - 1
        ux = (2 * np.arange(w) + 1) / w - 1
        gy, gx = np.meshgrid(uy, ux, indexing="ij")
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        sx, sy = (side * flip)[:, None, None] * gx, side[:, None, None] * gy
        px = centre[:, 0, None, None] + cos * sx - sin * sy
        py = centre[:, 1, None, None] + sin * sx + cos * sy
        ty = GridTaps(py, H, "linear", "reflection", False).taps
        tx = GridTaps(px, W, "linear", "reflection", False).taps
        self.index = np.stack([(iy * W + ix).reshape(k, -1) for iy, _ in ty for ix, _ in tx], axis=1)
        self.weight = np.stack([(wy * wx).reshape(k, -1) for _, wy in ty for _, wx in tx], axis=1).astype(np.float32)
        self.owner = np.repeat(np.arange(n), t.crops)
        self.noise_rng = rng

    def forward(self, v):
        n, c = v.shape[:2]
        flat = v.reshape(n, c, -1).astype(np.float32)  # the network takes float32: sample in it
        out = np.empty((self.k, c, self.index.shape[2]), np.float32)
        for j in range(self.k):
            taps = flat[self.owner[j]][:, self.index[j]]                        # (c, T, h*w)
            out[j] = (taps * self.weight[j]).sum(axis=1)
        out = out.reshape(self.k, c, *self.out)
        if self.t.noise:
            r = self.noise_rng
            out = out + self.t.noise * (r.standard_normal(out.shape) + r.random(out.shape) - 0.5)
        return out

    def backward(self, g):
        c = g.shape[1]
        H, W = self.source
        out = np.zeros((self.n, c, H * W))
        gk = g.reshape(self.k, c, -1)
        for j in range(self.k):
            idx = self.index[j].ravel()
            for ch in range(c):
                out[self.owner[j], ch] += np.bincount(idx, (self.weight[j] * gk[j, ch][None]).ravel(), H * W)
        return out.reshape(self.n, c, H, W)
