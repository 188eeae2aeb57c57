"""How a reconstructed image is represented while it is optimized (the parameterization), with its gradient.

Every parameterization maps its parameters p to an image v in [0, 1] (RGB, or one channel), which the
reconstruction loop maps into the model's input range; `backward(g)` turns dL/dv into dL/dp for the step
just taken.

- "pixel": v itself, kept in [0, 1] (the paper's gradient ascent; priors Lp and TV apply).
- "fourier" (Olah et al. 2017, Lucid): the image's spectrum, scaled by 1 / max(f, 1/size)^decay so that
  the optimizer works on decorrelated spatial frequencies; back in space its colours are recorrelated (the
  square root of ImageNet's colour covariance) and it is squashed by a sigmoid.
- "maco" (Fel et al. 2023): only the phase of the spectrum is optimized; its magnitude is fixed to a natural
  image's (the spatial image is standardized, as MACO does), derived here from the photographs fvgraph ships (colour-decorrelated, averaged over crops and
  flips, and averaged over rings of equal frequency so that no photo's own structure remains).

The colour matrix is the square root of ImageNet's RGB covariance in its SVD form, as Lucid publishes it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import InputError

COLOR_SQRT = np.array([[0.56282854, 0.58447580, 0.58447580],
                       [0.19482528, 0.00000000, -0.19482528],
                       [0.04329450, -0.10823626, 0.06494176]])  # rows: decorrelated -> RGB contributions
COLOR = COLOR_SQRT / np.linalg.norm(COLOR_SQRT, axis=0).max()  # scaled: the largest column norm is 1
STD_EPS = 1e-4


def _standardize(x):
    """(x - mean) / std per sample, and what its backward needs."""
    axes = tuple(range(1, x.ndim))
    m = x.mean(axis=axes, keepdims=True)
    s = np.sqrt(((x - m) ** 2).mean(axis=axes, keepdims=True)) + STD_EPS
    y = (x - m) / s
    return y, s


def _standardize_back(g, y, s):
    axes = tuple(range(1, g.ndim))
    sd = np.maximum(s - STD_EPS, 1e-30)  # the standard deviation itself
    return (g - g.mean(axis=axes, keepdims=True) - y * (s / sd) * (g * y).mean(axis=axes, keepdims=True)) / s


def _irfft2_back(g, width):
    """The adjoint of numpy's irfft2 (the last two axes; width the output's): dL/d(Re, Im) of the half spectrum,
    as a complex array. Columns that stand for two conjugate bins count twice."""
    h = g.shape[-2]
    spec = np.fft.rfft2(g) / (h * width)
    weight = np.full(spec.shape[-1], 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return spec * weight


def frequencies(h, w):
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class Parameterization:
    name = ""

    def __init__(self, n, channels, size, rng, **options):
        self.n, self.c, (self.h, self.w) = n, channels, size
        self.rng = rng
        self.setup(**options)

    def setup(self, **options):
        if options:
            raise InputError(f"unknown option(s) {sorted(options)} for param={self.name!r}")

    def image(self) -> np.ndarray:
        """v in [0, 1], (n, c, h, w)."""
        raise NotImplementedError

    def backward(self, g) -> np.ndarray:
        raise NotImplementedError

    def set_image(self, v):
        """Start from an image v in [0, 1] where the parameterization can (pixel); others ignore it."""
        raise InputError(f"param={self.name!r} starts from its own random spectrum; init= needs param='pixel'")


class Pixel(Parameterization):
    name = "pixel"

    def setup(self, init_std=0.05):
        self.params = np.clip(0.5 + init_std * self.rng.standard_normal((self.n, self.c, self.h, self.w)), 0, 1)

    def image(self):
        return self.params

    def backward(self, g):
        return g

    def after_step(self):
        np.clip(self.params, 0, 1, out=self.params)

    def set_image(self, v):
        self.params = np.clip(np.asarray(v, np.float64), 0, 1)


class Spectral(Parameterization):
    """Shared by fourier and maco: spectrum -> image -> [standardize] -> recorrelate colours -> sigmoid."""
    standardize = True

    def to_image(self, spectrum):
        z = np.fft.irfft2(spectrum, s=(self.h, self.w))
        if self.standardize:
            y, s = _standardize(z)
            self._std = (y, s)
        else:
            y = z
        if self.c == 3:
            y = np.einsum("nchw,cd->ndhw", y, COLOR)
        v = 1 / (1 + np.exp(-y))
        self._v = v
        return v

    def spectrum_grad(self, g):
        """dL/dv -> dL/d(spectrum) (complex: real and imaginary parts)."""
        v = self._v
        g = g * v * (1 - v)
        if self.c == 3:
            g = np.einsum("ndhw,cd->nchw", g, COLOR)
        if self.standardize:
            g = _standardize_back(g, *self._std)
        return _irfft2_back(g, self.w)


class Fourier(Spectral):
    """Lucid's form: the spectrum's scale is the image's contrast (no standardization), so the search can reach
    bright, dark or flat pictures too (a unit that needs them is not locked out)."""
    name = "fourier"
    standardize = False

    def setup(self, decay=1.0, init_std=0.01):
        shape = (self.n, self.c, self.h, self.w // 2 + 1)
        self.params = init_std * self.rng.standard_normal(shape + (2,))
        f = frequencies(self.h, self.w)
        self.scale = (1.0 / np.maximum(f, 1.0 / max(self.h, self.w)) ** float(decay)) * np.sqrt(self.h * self.w)

    def image(self):
        spectrum = (self.params[..., 0] + 1j * self.params[..., 1]) * self.scale
        return self.to_image(spectrum)

    def backward(self, g):
        d = self.spectrum_grad(g) * self.scale
        return np.stack([d.real, d.imag], axis=-1)


class Maco(Spectral):
    name = "maco"

    def setup(self, init_std=1.0):
        self.params = init_std * self.rng.standard_normal((self.n, self.c, self.h, self.w // 2 + 1))
        self.magnitude = natural_magnitude(self.c, self.h, self.w)

    def image(self):
        phase, s = _standardize(self.params)
        self._phase = (phase, s)
        return self.to_image(self.magnitude * np.exp(1j * phase))

    def backward(self, g):
        d = self.spectrum_grad(g)
        phase, s = self._phase
        # d/dphase of m (cos + i sin): m (-sin dRe + cos dIm)
        dphase = self.magnitude * (-np.sin(phase) * d.real + np.cos(phase) * d.imag)
        return _standardize_back(dphase, phase, s)


PARAMS = {p.name: p for p in (Pixel, Fourier, Maco)}


def make(name, n, channels, size, rng, **options) -> Parameterization:
    if name not in PARAMS:
        raise InputError(f"param must be one of {', '.join(PARAMS)}, got {name!r}")
    return PARAMS[name](n, channels, size, rng, **options)


@lru_cache(maxsize=8)
def natural_magnitude(channels, h, w) -> np.ndarray:
    """A natural image's spectral magnitude at h x w (per colour-decorrelated channel), from the photographs
    fvgraph ships: crops and flips of each, averaged, then averaged over rings of equal frequency."""
    from PIL import Image

    from ..image import demo_images, read_rgb
    rng = np.random.default_rng(0)
    inverse = np.linalg.inv(COLOR)
    total = np.zeros((channels, h, w // 2 + 1))
    count = 0
    for path in demo_images():
        rgb = read_rgb(path).astype(np.float64) / 255  # the safe reader: its size limits, its one error line
        for _ in range(8):
            side = int(min(rgb.shape[:2]) * rng.uniform(0.5, 1.0))
            y0, x0 = rng.integers(0, rgb.shape[0] - side + 1), rng.integers(0, rgb.shape[1] - side + 1)
            crop = np.asarray(Image.fromarray((rgb[y0:y0 + side, x0:x0 + side] * 255).astype(np.uint8)).resize(
                (w, h), Image.BILINEAR), np.float64) / 255
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if channels == 1:
                planes = crop.mean(axis=2)[None]
            else:
                planes = np.einsum("hwc,cd->dhw", crop, inverse)
            planes, _ = _standardize(planes[None])
            total += np.abs(np.fft.rfft2(planes[0]))
            count += 1
    mag = total / count
    f = frequencies(h, w)
    rings = np.round(f * max(h, w)).astype(int)
    out = np.empty_like(mag)
    for c in range(channels):
        sums = np.bincount(rings.ravel(), mag[c].ravel())
        counts = np.maximum(np.bincount(rings.ravel()), 1)
        out[c] = (sums / counts)[rings]
    return out
