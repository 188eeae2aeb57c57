"""What explanation methods return, and how a user names what to explain."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Unit:
    """An activation of interest anywhere in the network: a layer (name, value name or index), optionally
    one channel, and optionally one spatial position (y, x). Unset parts mean "all" (summed)."""
    layer: Any
    channel: int | None = None
    y: int | None = None
    x: int | None = None


@dataclass(frozen=True)
class Concept:
    """Channels of one layer taken together as a concept (concept relevance propagation, Achtibat et al.
    2023): a conditional map is the input relevance that flows through these channels of `layer` only.
    layer: a name, value name or index; channels: one int or several (kept as a tuple, so it hashes)."""
    layer: Any
    channels: Any = ()

    def __post_init__(self):
        chans = self.channels
        if isinstance(chans, (int, np.integer)) and not isinstance(chans, bool):
            chans = (chans,)
        try:
            arr = np.asarray(chans)
            chans = tuple(int(c) for c in arr.reshape(-1)) if arr.dtype.kind in "iu" else None
        except (TypeError, ValueError):
            chans = None
        if not chans:
            from .errors import InputError
            raise InputError(f"Concept channels must be one or more channel indices, got {self.channels!r}")
        object.__setattr__(self, "channels", chans)


@dataclass(frozen=True, eq=False)
class OutputTarget:
    """A score read from any output, for detectors and segmenters: one element per sample (`index`, without
    the batch axis, e.g. (4 + k, a) for class k of anchor a in a YOLO (batch, 4 + classes, anchors) output),
    or the sum of the output times `mask` (broadcast to one sample's output, or with a batch axis: class c
    over a region of a segmentation map). `output`: an output's name or index (default: the first)."""
    index: Any = None
    output: Any = None
    mask: Any = None

    def __repr__(self):
        what = f"index={tuple(self.index)}" if self.index is not None else \
            f"mask of shape {np.shape(self.mask)}" if self.mask is not None else "nothing"
        return f"OutputTarget({what}{f', output={self.output!r}' if self.output is not None else ''})"


@dataclass
class Explanation:
    relevance: np.ndarray          # shape of the input for reverse-pass methods; (N, H, W) for maps
    target: Any                    # the class per sample (np.ndarray of ints), or the Unit
    output: np.ndarray             # the scores the target was read from (logits by default)
    method: str
    rules_used: dict = field(default_factory=dict)   # node name -> rule applied
    layers: dict = field(default_factory=dict)       # return_layers: layer -> relevance there
    extras: dict = field(default_factory=dict)       # method-specific (cam weights, occlusion counts, ...)

    def __repr__(self):
        return (f"<Explanation {self.method}: relevance {tuple(self.relevance.shape)}, "
                f"target {np.asarray(self.target).tolist() if not isinstance(self.target, Unit) else self.target}>")

    # pictures (fvgraph.display): for notebooks and scripts
    def _kind(self, kind):
        from .methods.registry import map_kind
        return kind or map_kind(self.method)

    def heatmap(self, index: int = 0, kind: str | None = None, percentile: float = 99.5):
        """Sample `index`'s map as a PIL image, coloured as the method's maps are by default ("signed",
        "heat", "abs", "rgb")."""
        from .display import pil
        from .render import picture
        return pil(picture(self.relevance[index], self._kind(kind), percentile))

    def overlay(self, image, index: int = 0, alpha: float = 0.5, kind: str = "heat", percentile: float = 99.5):
        """The map laid over `image` (a path, a PIL image or an array; resized to the map) as a PIL image."""
        from .display import as_rgb, pil
        from .render import overlay, picture
        rel = self.relevance[index]
        shown = as_rgb(image, rel.shape[-2:])
        return pil(overlay(shown, picture(rel, kind, percentile), alpha))

    def save(self, path, index: int = 0, kind: str | None = None, overwrite: bool = False):
        """The heatmap as .png, or the relevance as .npy (the whole batch)."""
        from .display import save_picture
        return save_picture(path, np.asarray(self.heatmap(index, kind)), overwrite, array=self.relevance)

    def _repr_png_(self):
        from .display import png_bytes, row
        return png_bytes(row([np.asarray(self.heatmap(i)) for i in range(min(len(self.relevance), 8))]))
