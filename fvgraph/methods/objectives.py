"""What a reconstruction maximizes: objective values that add, subtract and scale (Olah et al. 2017).

    fv.Objective.class_(309)                       a class's logit
    fv.Objective.channel("conv3", 5)               a channel's mean activation
    fv.Objective.neuron("conv3", 5, y=7, x=7)      one position of a channel (the centre by default)
    fv.Objective.direction("conv3", v)             the mean over positions of <activation, v>
    fv.Objective.diversity("conv3", 10.0)          Lucid's diversity: minus the mean cosine similarity of the
                                                   Gram matrices of a batch's pictures (pushes them apart)
    wheel_minus_car = fv.Objective.class_(479) - 0.5 * fv.Objective.class_(817)

Linear terms are constant seeds on their layers (the lowered gradient graph takes them as inputs); the
diversity term's seed is computed from the batch's activations at each step. Channels are read through the
map view of fvgraph.tokens, so a channel of a token or channels-last layer is its last axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import InputError
from ..explanation import OutputTarget, Unit


@dataclass(frozen=True)
class Term:
    kind: str                     # "class" | "channel" | "neuron" | "direction" | "output" | "diversity"
    weight: float = 1.0
    layer: object = None
    index: object = None          # class index, or channel
    position: tuple = None        # (y, x) of a neuron; None: the centre
    vector: tuple = None          # a direction
    target: object = field(default=None, compare=False)  # an OutputTarget


class Objective:
    def __init__(self, terms):
        self.terms = tuple(terms)

    # constructors ---------------------------------------------------------------------------------------
    @classmethod
    def class_(cls, k: int):
        return cls([Term("class", index=int(k))])

    @classmethod
    def channel(cls, layer, c: int):
        return cls([Term("channel", layer=layer, index=int(c))])

    @classmethod
    def neuron(cls, layer, c: int, y: int | None = None, x: int | None = None):
        return cls([Term("neuron", layer=layer, index=int(c),
                         position=None if y is None and x is None else (int(y), int(x)))])

    @classmethod
    def direction(cls, layer, vector):
        v = np.asarray(vector, np.float64).reshape(-1)
        if not np.any(v):
            raise InputError("a direction needs a non-zero vector")
        return cls([Term("direction", layer=layer, vector=tuple(v.tolist()))])

    @classmethod
    def diversity(cls, layer, weight: float = 1.0):
        return cls([Term("diversity", weight=float(weight), layer=layer)])

    @classmethod
    def of(cls, target) -> "Objective":
        """A class index, an fv.Unit, an fv.OutputTarget or an Objective, as an Objective."""
        if isinstance(target, Objective):
            return target
        if isinstance(target, bool):
            raise InputError(f"not an objective: {target!r}")
        if isinstance(target, (int, np.integer)):
            return cls.class_(int(target))
        if isinstance(target, Unit):
            if target.channel is None:  # the whole layer: the mean of all its activations
                return cls([Term("channel", layer=target.layer, index=None)])
            if target.y is not None or target.x is not None:
                return cls.neuron(target.layer, target.channel, target.y, target.x)
            return cls.channel(target.layer, target.channel)
        if isinstance(target, OutputTarget):
            return cls([Term("output", target=target)])
        raise InputError(f"reconstruct targets are class indices, fv.Unit(...), fv.OutputTarget(...) or "
                         f"fv.Objective values, got {target!r}")

    # arithmetic -----------------------------------------------------------------------------------------
    def __add__(self, other):
        return Objective(self.terms + Objective.of(other).terms)

    __radd__ = __add__

    def __mul__(self, k):
        if not isinstance(k, (int, float, np.integer, np.floating)):
            return NotImplemented
        return Objective([replace(t, weight=t.weight * float(k)) for t in self.terms])

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-Objective.of(other))

    def __truediv__(self, k):
        return self * (1.0 / float(k))

    def __repr__(self):
        parts = []
        for t in self.terms:
            what = {"class": f"class {t.index}", "channel": f"{t.layer}[{t.index}]",
                    "neuron": f"{t.layer}[{t.index}]@{t.position or 'centre'}",
                    "direction": f"{t.layer}.direction", "output": "output", "diversity": f"diversity({t.layer})"}
            parts.append(f"{t.weight:g} * {what[t.kind]}")
        return "Objective(" + " + ".join(parts) + ")"

    @property
    def linear(self):
        return [t for t in self.terms if t.kind != "diversity"]

    @property
    def nonlinear(self):
        return [t for t in self.terms if t.kind == "diversity"]


def parse(text: str) -> Objective:
    """A CLI objective: terms joined by " + " and " - " (spaces around them: layer names may hold dashes), each
    [WEIGHT*]KIND:ARGS, e.g. "class:479 - 0.5*class:817", "channel:conv3:5 + 2*neuron:conv3:5:7:7",
    "diversity:conv3"."""
    import re
    parts = re.split(r"\s([+-])\s", " " + text.strip() + " ")
    total = None
    for k in range(0, len(parts), 2):
        body = parts[k].strip()
        sign = -1.0 if k and parts[k - 1] == "-" else 1.0
        if body.startswith("-"):
            sign, body = -sign, body[1:].strip()
        if not body:
            raise InputError(f"cannot read the objective {text!r}")
        weight = 1.0
        if "*" in body:
            w, body = (t.strip() for t in body.split("*", 1))
            try:
                weight = float(w)
            except ValueError:
                raise InputError(f"objective term {body!r}: {w!r} is not a weight") from None
        kind, _, args = body.partition(":")
        a = args.split(":") if args else []
        try:
            if kind == "class":
                term = Objective.class_(int(a[0]))
            elif kind == "channel":
                term = Objective.channel(a[0], int(a[1]))
            elif kind == "neuron":
                term = Objective.neuron(a[0], int(a[1]), int(a[2]), int(a[3])) if len(a) >= 4 else \
                    Objective.neuron(a[0], int(a[1]))
            elif kind == "diversity":
                term = Objective.diversity(a[0])
            else:
                raise InputError(f"unknown objective kind {kind!r} (class, channel, neuron, diversity)")
        except (IndexError, ValueError):
            raise InputError(f"objective term {body!r}: expected class:K, channel:LAYER:C, "
                             "neuron:LAYER:C[:Y:X] or diversity:LAYER") from None
        term = term * (sign * weight)
        total = term if total is None else total + term
    return total


def index_list(text):
    """'0-3,7' -> [0, 1, 2, 3, 7] (classes or channels); None for none."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def reconstruction_targets(model, classes=None, layer=None, channels=None, neuron=None, direction=None,
                           objective=None, output_target=None, copies=None) -> tuple[list, list[str]]:
    """What `fvgraph reconstruct` maximizes, one way: an objective text (see parse), an OutputTarget, a
    direction (an array or .npy file) in a layer's channel space, channels of a layer (each whole, or at one
    neuron "Y,X"), or classes; with each picture's label. copies: pictures per direction or unit."""
    if objective:
        return [parse(objective)], ["objective"]
    if output_target is not None:
        return [output_target], ["output_target"]
    if direction is not None:
        if not layer:
            raise InputError("--direction needs --layer (the layer whose channel space it points in)")
        if not isinstance(direction, np.ndarray):
            try:
                direction = np.load(direction)
            except (OSError, ValueError) as e:
                raise InputError(f"{direction}: not a readable .npy file ({e})") from None
        count = copies or 1
        return [Objective.direction(layer, direction)] * count, [f"{layer}_direction"] * count
    if layer is not None:
        chans = channels or [None]
        if neuron:
            try:
                y, x = (int(v) for v in neuron.split(",")) if isinstance(neuron, str) else neuron
            except ValueError:
                raise InputError(f"--neuron takes Y,X (a position of the layer), got {neuron!r}") from None
            targets = [Objective.neuron(layer, c, y, x) for c in chans]
        else:
            targets = [Unit(layer, c) for c in chans]
        labels = [f"{layer}_c{c}" if c is not None else layer for c in chans]
        if copies and copies > 1:  # one unit, several pictures (with diversity: different ones)
            targets, labels = targets * copies, [f"{l}_{k}" for k in range(copies) for l in labels]
        return targets, labels
    if not classes:
        raise InputError("say what to maximize: --target CLASS[,CLASS...], --layer L [--channel C[-D]], or "
                         "--objective EXPR")
    names = model.class_names()
    return list(classes), [f"{c}_{names[c]}" if names and 0 <= c < len(names) else str(c) for c in classes]


def diversity(acts, owner):
    """Lucid's diversity over copies with different owners: (value, d value / d acts), acts (k, C, ...)."""
    k, c = acts.shape[:2]
    A = acts.reshape(k, c, -1).astype(np.float64)
    p = A.shape[2]
    G = A @ A.transpose(0, 2, 1) / p
    norms = np.sqrt((G * G).sum(axis=(1, 2))) + 1e-12
    U = G / norms[:, None, None]
    cos = np.einsum("icd,jcd->ij", U, U)
    other = owner[:, None] != owner[None, :]
    pairs = max(int(other.sum()), 1)
    value = -float((cos * other).sum()) / pairs
    # d(-sum_{i != j} cos_ij) / dG_i = -(2 / |G_i|) sum_j (U_j - cos_ij U_i), for the ordered pairs
    dU = -2 * np.einsum("ij,jcd->icd", other.astype(np.float64), U) / pairs
    dG = (dU - (dU * U).sum(axis=(1, 2))[:, None, None] * U) / norms[:, None, None]
    dA = (dG + dG.transpose(0, 2, 1)) @ A / p
    return value, dA.reshape(acts.shape)
