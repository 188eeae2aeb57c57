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
