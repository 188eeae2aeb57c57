"""The method table: every visualization method, registered once, and read by every way in.

A `Method` holds its name, the kind of map it returns (fvgraph.render kinds), its typed options (`Option`:
name, type, default, range or choices, one line of help, and the slider serve's page shows), whether it takes
the layer its map is drawn at (the CAMs), whether it lowers into one graph (and so exports), how many passes
a call takes (serve's budget), and the function that computes it. `Model.explain`, the command line (`explain`,
`--help`, `fvgraph methods`, `check`, `figure`, `evaluate`, `export-explainer`) and `serve` all look methods up
here, so an option means the same and is checked the same everywhere (one OptionError line naming the valid
choices and ranges).

The rule presets under rules/*.toml register themselves: their options are the parameters their rules read
(fvgraph.propagation), their integration settings, and noise averaging, with the preset's own values as
defaults. A rules .toml path or an fv.Rules becomes a method the same way, on the fly.

Adding a method is one `register(Method(...))` call below, plus its compute function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class Option:
    """One option of a method. type: "int", "float", "str", "bool", "floats" (a number or one per channel),
    "pair" (N or HxW), "fill" (a number, one per channel, "mean" or "random"), "layer" (a layer name),
    "array" (the API only: an array, or one of `choices`) or "concept" (the API only: fv.Concept or a list).
    default: a value, or a function of the other options (say beta = alpha - 1); None where the method decides
    (say the CAM layer)."""
    name: str
    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple = ()
    slider: tuple | None = None  # serve: (min, max, step) or (min, max, step, "log10")

    def describe(self) -> str:
        return f"{self.name}={self.default_text()} ({self.range_text()})"

    def default_text(self) -> str:
        d = self.default
        if callable(d):
            return getattr(d, "text", "derived")
        if self.type == "concept":
            return "none"
        return "auto" if d is None else str(d).lower() if isinstance(d, bool) else str(d)

    def range_text(self) -> str:
        if self.choices and self.type != "array":
            return "one of " + ", ".join(map(str, self.choices))
        kind = {"int": "an integer", "float": "a number", "floats": "a number or one per channel",
                "pair": "N or HxW", "fill": "a number, one per channel, mean or random", "bool": "true or false",
                "layer": "a layer name", "str": "text",
                "array": "an array or " + " or ".join(map(str, self.choices)),
                "concept": "fv.Concept(layer, channels) or a list of them, from the API"}[self.type]
        if self.low is not None and self.high is not None:
            return f"{kind} in [{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} >= {_num(self.low)}"
        return kind

    def parse(self, text: str, method: str):
        """A value as the command line writes it."""
        t = text.strip()
        try:
            if self.type == "int":
                return int(t)
            if self.type == "float":
                return float(t)
            if self.type == "bool":
                return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[t.lower()]
            if self.type == "floats":
                vals = [float(v) for v in t.split(",")]
                return vals[0] if len(vals) == 1 else vals
            if self.type == "pair":
                parts = [int(v) for v in t.lower().split("x")]
                return parts[0] if len(parts) == 1 else tuple(parts)
            if self.type in ("fill", "array"):
                if (self.type == "array" and t in self.choices) or (self.type == "fill" and t in ("mean", "random")):
                    return t
                vals = [float(v) for v in t.split(",")]
                return vals[0] if len(vals) == 1 else vals
            if self.type == "concept":
                raise ValueError("the API only")
        except (ValueError, KeyError):
            raise OptionError(f"{self.name} of {method} must be {self.range_text()}, got {text!r}") from None
        return t

    def check(self, value, method: str):
        """The value, checked against its type and range (ints may stand for floats)."""
        bad = OptionError(f"{self.name} of {method} must be {self.range_text()}, got {value!r}")
        if value is None:
            if self.default is None or callable(self.default):
                return None
            raise bad
        if self.type in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise bad
            if self.type == "int" and not float(value).is_integer():
                raise bad
            value = int(value) if self.type == "int" else float(value)
            if not math.isfinite(value) or not self._in_range(value):
                raise bad
        elif self.type == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise bad
            value = bool(value)
        elif self.type in ("floats", "fill", "array"):
            if isinstance(value, str):
                if value not in self.choices and not (self.type == "fill" and value in ("mean", "random")):
                    raise bad
                return value
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise bad from None
            if arr.size == 0 or not np.all(np.isfinite(arr)) or (self.type != "array" and arr.ndim > 1):
                raise bad
            if self.type != "array" and (self.low is not None and arr.min() < self.low):
                raise bad
            return float(arr) if arr.ndim == 0 else value
        elif self.type == "pair":
            vals = (value,) if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(
                value, (tuple, list)) else None
            if not vals or len(vals) > 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                    and self._in_range(v) for v in vals):
                raise bad
            return int(vals[0]) if len(vals) == 1 else tuple(int(v) for v in vals)
        elif self.type in ("str", "layer"):
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad
        elif self.type == "concept":
            from ..explanation import Concept
            if not (isinstance(value, Concept) or isinstance(value, (list, tuple)) and value
                    and all(isinstance(c, Concept) for c in value)):
                raise bad
        return value

    def _in_range(self, v) -> bool:
        if self.low is not None and v < self.low:
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def derived(text: str, func: Callable[[dict], Any]):
    """A default computed from the other options; `text` says how (for --help and `fvgraph methods`)."""
    func.text = text
    return func


@dataclass(frozen=True)
class Call:
    """What a call carries besides the options: how the target is scored, what else to return, who hears
    progress, and whether this is one of many noisy copies (whose average is flagged, not each copy)."""
    through_softmax: bool = False
    return_layers: tuple = ()
    progress: Callable | None = None
    copy: bool = False


@dataclass(frozen=True)
class Method:
    """A method of the table. compute(model, method, x, target, options, call) -> Explanation, options
    checked and complete. smoothable: the samples/sigma/kind/seed options average it over noisy copies (done
    here, for every such method alike). lower(model, method, table, spec, options) -> Lowered: its one-graph
    form, for methods that export. passes(options, input shape): forward/reverse passes one image takes."""
    name: str
    kind: str
    family: str
    help: str
    compute: Callable
    options: tuple = ()
    layer: bool = False
    lower: Callable | None = None
    smoothable: bool = False
    passes: Callable | None = None
    rules: Any = None  # the preset, for rule methods
    all_classes: Callable | None = None  # (model, method, x, options, call) -> every class's map in one call
    streams: bool = False  # reports progress (and partial maps) through call.progress: serve streams it

    @property
    def exports(self) -> bool:
        return self.lower is not None

    def option(self, name) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def check(self, given: dict) -> dict:
        """Every option's value: the caller's, checked, else its default. One OptionError names an unknown
        option with the valid ones, or a value with its range."""
        names = [o.name for o in self.options]
        unknown = [k for k in given if k not in names]
        if unknown:
            valid = ", ".join(o.describe() for o in self.options) or "none"
            raise OptionError(f"unknown parameter {unknown[0]!r} for {self.name}: its options are {valid}")
        out = {o.name: o.check(given[o.name], self.name) for o in self.options if o.name in given}
        for o in self.options:
            if o.name not in out:
                out[o.name] = o.default
        for o in self.options:
            if callable(out[o.name]):
                out[o.name] = o.check(out[o.name](out), self.name)
        if self.smoothable and "samples" not in given and not out["samples"] \
                and any(k in given for k in ("sigma", "kind", "seed")):
            out["samples"] = SMOOTH_DEFAULTS["samples"]  # asking for noise turns it on
        return out

    def parse(self, texts: dict) -> dict:
        """Command-line key=value texts as typed values (unknown keys are left for check to name)."""
        return {k: (self.option(k).parse(v, self.name) if self.option(k) and isinstance(v, str) else v)
                for k, v in texts.items()}

    def passes_for(self, options: dict, shape) -> int:
        n = self.passes(options, shape) if self.passes else 1
        if self.smoothable and options.get("samples"):
            n *= int(options["samples"]) + 1
        return int(n)

    def run(self, model, x, target, options: dict, call: Call = Call()):
        """The method on x with checked options, averaged over noisy copies where asked."""
        if not (self.smoothable and options.get("samples")):
            return self.compute(model, self, x, target, options, call)
        from . import sampling
        settings = {k: options[k] for k in SMOOTH_DEFAULTS}
        copy = replace(call, progress=None, copy=True)
        result = sampling.smoothed(model, x, lambda xs, t: self.compute(model, self, xs, t, options, copy),
                                   target, settings, call.through_softmax)
        if self.family == "cam":  # the average is the map: flagged when zero
            from .cam import flag_degenerate
            flag_degenerate(result)
        return result

    def summary(self) -> str:
        tags = [self.kind + " map", "takes --layer (the layer it is drawn at)" if self.layer else None,
                "exports" if self.exports else None]
        return f"{self.name}: {self.help} [{', '.join(t for t in tags if t)}]"


# --------------------------------------------------------------------------- the table
_TABLE: dict[str, Method] = {}
_PRESETS_READ = False


def register(method: Method) -> Method:
    _TABLE[method.name] = method
    return method


def table() -> dict[str, Method]:
    """Every method by name, rule presets first."""
    global _PRESETS_READ
    if not _PRESETS_READ:
        from ..rules import Rules, preset_names
        ordered = {n: rules_method(Rules.load(n)) for n in preset_names()}
        ordered.update((k, v) for k, v in _TABLE.items() if k not in ordered)
        _TABLE.clear()
        _TABLE.update(ordered)
        _PRESETS_READ = True
    return _TABLE


def names() -> list[str]:
    return list(table())


def lookup(method) -> Method:
    """A Method by name, a rules .toml path or an fv.Rules."""
    from ..rules import Rules
    if isinstance(method, Method):
        return method
    if isinstance(method, Rules):
        return rules_method(method)
    if not isinstance(method, str):
        raise OptionError(f"method must be a name or a rules .toml path, got {type(method).__name__}")
    found = table().get(method)
    if found is not None:
        return found
    if method.endswith(".toml"):
        return rules_method(Rules.load(method))
    raise OptionError(f"unknown method {method!r}: use one of {', '.join(names())}, or the path of a rules .toml file")


def map_kind(method) -> str:
    """How a method's map is best shown (fvgraph.render kinds)."""
    m = table().get(method) if isinstance(method, str) else None
    return m.kind if m is not None else "signed"


# --------------------------------------------------------------------------- rule presets
SMOOTH_DEFAULTS = {"samples": 16, "sigma": 0.15, "kind": "mean", "seed": 0}


def smoothing_options(preset=None) -> tuple:
    """Noise averaging (SmoothGrad and kin) for any reverse-pass method; on by default only where the preset
    smooths."""
    from ..rules import SMOOTH_KINDS
    s = {**SMOOTH_DEFAULTS, "samples": 0, **(preset or {})}
    return (Option("samples", "int", s["samples"], "noisy copies averaged (0: none; 16 when sigma, kind or seed "
                   "is given)", low=0, slider=(0, 32, 2)),
            Option("sigma", "float", s["sigma"], "noise standard deviation relative to the input's range", low=0,
                   slider=(0, 0.5, 0.05)),
            Option("kind", "str", s["kind"], "how the copies' maps are reduced", choices=SMOOTH_KINDS),
            Option("seed", "int", s["seed"], "the noise's seed"))


RULE_OPTION_HELP = {
    "epsilon": ("float", "stabilizer added to each denominator", {"low": 0, "slider": (-6, 0, 0.25, "log10")}),
    "alpha": ("float", "weight of the positive contributions", {"low": 0, "slider": (1, 4, 0.5)}),
    "beta": ("float", "weight of the negative contributions", {"low": 0}),
    "low": ("floats", "lowest input value of the z^B rule (one per channel)", {}),
    "high": ("floats", "highest input value of the z^B rule (one per channel)", {}),
}


def _rule_options(rules) -> tuple:
    out = []
    for name in rules.parameters():
        kind, text, extra = RULE_OPTION_HELP[name]
        default = rules.params.get(name)
        if name == "beta" and default == rules.params.get("alpha", 0) - 1:  # conserving: kept so as alpha moves
            default = derived("alpha - 1", lambda o: o["alpha"] - 1)
        elif name in ("low", "high") and default is None:
            text += " (default: the model's preprocessing range)"
        out.append(Option(name, kind, default, text, **extra))
    return tuple(out)


def _integrate_options(rules) -> tuple:
    from ..rules import INTEGRATION_METHODS
    if not rules.integrate:
        return ()
    s = rules.integrate
    return (Option("steps", "int", s["steps"], "points on the path from the baseline", low=2, slider=(4, 64, 4)),
            Option("baseline", "array", s["baseline"], "where the path starts", choices=("zero", "blur", "uniform")),
            Option("integration", "str", s["integration"], "how the path integral is approximated",
                   choices=INTEGRATION_METHODS))


CONCEPT_OPTION = Option("concept", "concept", None, "the map through these channels of a layer only (concept "
                        "relevance, CRP): fv.Concept(layer, channels), or a list of them as one batch")


def rules_method(rules) -> Method:
    """The Method of a rule preset."""
    options = _rule_options(rules) + _integrate_options(rules) + smoothing_options(rules.smooth) + \
        (() if rules.integrate else (CONCEPT_OPTION,))
    kind = {"gradient": "abs", "smoothgrad": "abs", "deconvnet": "rgb", "guided": "rgb"}.get(rules.name, "signed")
    one_graph = not rules.integrate and not (rules.smooth or {}).get("samples")

    def passes(o, shape):
        if rules.integrate:
            return o["steps"]
        concept = o.get("concept")
        return len(concept) if isinstance(concept, (list, tuple)) else 1  # k concepts: a k-times batch
    return Method(rules.name, kind, "rules", rules.description or f"rules {rules.name}", _compute_rules, options,
                  lower=_lower_rules if one_graph else None, smoothable=True, passes=passes, rules=rules)


def _rules_with(model, method_rules, options):
    """The preset with the options: rule parameters and integration settings (noise averaging is the table's)."""
    params = {k: options[k] for k in method_rules.parameters() if options[k] is not None}  # None: the model's
    if method_rules.integrate:
        params.update({k: options[k] for k in ("steps", "baseline", "integration")})
    rules = model.rules_for(method_rules, params)
    return replace(rules, smooth=None)


def _compute_rules(model, method, x, target, options, call):
    from ..errors import InputError
    from .attribution import attribute
    from .sampling import integrated_gradients
    rules = _rules_with(model, method.rules, options)
    if rules.integrate:
        if call.return_layers:
            raise InputError("return_layers is not available for integrated gradients")
        return integrated_gradients(model, x, rules, target, rules.integrate, call.through_softmax, rules.name)
    if options.get("concept") is not None:
        from .concepts import conditional_rules
        if options.get("samples"):
            raise InputError(f"{method.name}: concept= with samples= (noise averaging) is not supported; give "
                             "one of them")
        return conditional_rules(model, x, rules, target, options["concept"], call.through_softmax,
                                 call.return_layers, rules.name)
    return attribute(model, x, rules, target, through_softmax=call.through_softmax,
                     return_layers=call.return_layers, method_name=rules.name)


def _lower_rules(model, method, table_, spec, options):
    from ..errors import InputError
    from ..reverse import lower
    if options.get("samples"):
        raise InputError(f"{method.name} with samples= averages many passes over noisy inputs; a standalone "
                         "explainer is one pass: export it without samples and average its maps yourself")
    if options.get("concept") is not None:
        raise InputError(f"{method.name} with concept= is computed from the API (model.explain); export the "
                         "explainer without it")
    return lower(model, _rules_with(model, method.rules, options), spec, table_, param_inputs=False)


# --------------------------------------------------------------------------- the CAM family
def _cam_options(method: str) -> tuple:
    layer = ("the pooled feature maps before the classifier (CAM is defined there only)" if method == "cam" else
             "the layer the map is drawn at (default: the last map-shaped layer the class reaches)")
    return (Option("layer", "layer", None, layer),
            Option("upsample", "bool", True, "resize the map to the input's size")) + smoothing_options()


def _compute_cam(model, method, x, target, options, call):
    from ..errors import InputError
    from .cam import explain_cam
    if call.return_layers:
        raise InputError(f"return_layers is for the reverse-pass methods; {method.name} draws one layer's map")
    return explain_cam(model, x, method.name, target, layer=options["layer"], upsample_maps=options["upsample"],
                       through_softmax=call.through_softmax, flag=not call.copy)


def _lower_cam(model, method, table_, spec, options, all_classes=False):
    from .cam import lower_cam
    return lower_cam(model, method.name, table_, spec, options["layer"], options["upsample"], all_classes)


def _scorecam_passes(o, shape):
    return 64  # one masked forward per channel of the layer, in batches: a bound, not a count


def _cam_all_classes(model, method, x, options, call):
    """CAM for every class at once: the pooled maps weighted by each class's classifier weights, (N, K, H, W)."""
    from ..explanation import Explanation
    from .attribution import logits_value
    from .cam import cam_structure, resize_maps
    logits = logits_value(model, call.through_softmax)
    fmap, w = cam_structure(model, logits)
    got = model.run(x, outputs=[fmap, logits])
    A = np.asarray(got[fmap], np.float64)
    maps = np.einsum("kc,nchw->nkhw", w.astype(np.float64), A).astype(np.float32)
    n, k = maps.shape[:2]
    if options["upsample"]:
        size = model.feeds(x)[model.graph.input_names()[0]].shape[2:]
        maps = resize_maps(maps.reshape((n * k,) + maps.shape[2:]), size).reshape((n, k) + tuple(size))
    return Explanation(maps, np.arange(k), got[logits], "cam", extras={"layer": fmap})


CAMS = {
    "cam": "CAM (Zhou et al. 2016): the pooled maps weighted by the class's classifier weights",
    "gradcam": "Grad-CAM (Selvaraju et al. 2017): a layer's maps weighted by their mean gradient",
    "gradcam++": "Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted per position",
    "layercam": "LayerCAM (Jiang et al. 2021): maps times their positive gradients, position by position",
    "xgradcam": "XGrad-CAM (Fu et al. 2020): gradients weighted by the normalized maps",
    "hirescam": "HiResCAM (Draelos and Carin 2020): maps times their gradients, summed over channels",
    "scorecam": "Score-CAM (Wang et al. 2020): each map weighted by the score of the input masked by it",
    "eigencam": "Eigen-CAM (Muhammad and Yeasin 2020): the first principal component of the maps",
}
for _name, _help in CAMS.items():
    register(Method(_name, "heat", "cam", _help, _compute_cam, _cam_options(_name), layer=True,
                    lower=_lower_cam if _name in ("cam", "gradcam") else None, smoothable=True,
                    passes=_scorecam_passes if _name == "scorecam" else None,
                    all_classes=_cam_all_classes if _name == "cam" else None))


# --------------------------------------------------------------------------- input modification
def _compute_occlusion(model, method, x, target, options, call):
    from ..errors import InputError
    from .occlusion import occlusion
    if call.return_layers:
        raise InputError("return_layers is for the reverse-pass methods, not occlusion")
    return occlusion(model, x, options["box"], options["stride"], options["fill"], target,
                     batch_size=options["batch_size"], seed=options["seed"], score=options["score"],
                     incremental={"auto": "auto", "yes": True, "no": False}[options["incremental"]],
                     quiet=True if call.progress is None else None, progress=call.progress)


def _occlusion_passes(o, shape):
    from .occlusion import _pair, positions
    box, stride = _pair(o["box"], "box"), _pair(o["stride"], "stride")
    n = 1
    for k, size in enumerate(shape[2:4]):
        n *= max(1, len(positions(int(size), min(box[k], int(size)), stride[k])))
    return n


def _half(o):
    box = o["box"]
    return tuple(max(1, b // 2) for b in box) if isinstance(box, tuple) else max(1, box // 2)


register(Method("occlusion", "heat", "perturbation",
                "Occlusion (Zeiler and Fergus 2014): the drop in the score when a box covers each region",
                _compute_occlusion,
                (Option("box", "pair", 32, "the box's size, N or HxW pixels", low=1, slider=(8, 112, 8)),
                 Option("stride", "pair", derived("box / 2", _half), "the step between boxes, N or HxW", low=1,
                        slider=(4, 56, 4)),
                 Option("fill", "fill", 0.0, "what covers the box: a value (per channel), the image's mean, or "
                        "seeded uniform noise", choices=("0", "mean", "random")),
                 Option("seed", "int", 0, "the seed of fill=random"),
                 Option("score", "str", "logit", "the score whose drop is the map", choices=("logit", "prob")),
                 Option("batch_size", "int", None, "boxes per batch (default: what fits the memory cap)", low=1),
                 Option("incremental", "str", "auto", "recompute only what a box changes (fvgraph's executor)",
                        choices=("auto", "yes", "no"))),
                passes=_occlusion_passes, streams=True))


# --------------------------------------------------------------------------- baselines and attention
def _compute_random(model, method, x, target, options, call):
    from ..explanation import Explanation
    xin = model.feeds(x)[model.graph.input_names()[0]]
    rel = np.random.default_rng(options["seed"]).random(xin.shape).astype(np.float32)
    return Explanation(rel, target, model.run(x), "random")


register(Method("random", "heat", "baseline", "seeded uniform noise: the baseline every method must beat",
                _compute_random, (Option("seed", "int", 0, "the noise's seed", slider=(0, 9, 1)),)))


def _compute_rollout(model, method, x, target, options, call):
    from ..errors import InputError
    from .rollout import rollout
    if call.return_layers:
        raise InputError("return_layers is for the reverse-pass methods, not rollout")
    return rollout(model, x, options["head_fusion"], options["discard_ratio"], options["upsample"])


register(Method("rollout", "heat", "attention",
                "attention rollout (Abnar and Zuidema 2020): attention multiplied through a transformer's layers",
                _compute_rollout,
                (Option("head_fusion", "str", "mean", "how the heads are merged", choices=("mean", "max", "min")),
                 Option("discard_ratio", "float", 0.0, "share of the weakest attention dropped per layer", low=0,
                        high=1, high_open=True),
                 Option("upsample", "bool", True, "resize the map to the input's size"))))


# --------------------------------------------------------------------------- input reconstruction
def _compute_reconstruction(model, method, x, target, options, call):
    """The picture that drives the target most, at x's size: the image is the 'map' (kind image)."""
    from ..errors import InputError
    from ..explanation import Explanation
    if target is None or isinstance(target, (list, tuple, np.ndarray)) and np.ndim(target) and len(target) != 1:
        raise InputError("reconstruction needs one target: a class index or fv.Unit(layer, channel)")
    if isinstance(target, (list, tuple, np.ndarray)):
        target = int(np.ravel(target)[0])
    shape = (1,) + tuple(model.feeds(x)[model.graph.input_names()[0]].shape[1:])
    r = model.reconstruct(target, shape=shape, steps=options["steps"], param=options["param"], seed=options["seed"],
                          transforms={"crops": options["crops"]} if options["param"] != "pixel" else "auto",
                          quiet=True, progress=call.progress)
    return Explanation(np.asarray(r.image, np.float32), target, None, "reconstruction")


register(Method("reconstruction", "image", "reconstruction",
                "activation maximization: the picture that drives the target most (the image is the result)",
                _compute_reconstruction,
                (Option("param", "str", "fourier", "how the picture is represented",
                        choices=("fourier", "maco", "pixel")),
                 Option("steps", "int", 128, "optimization steps", low=1, slider=(16, 512, 16)),
                 Option("crops", "int", 4, "random crops per step (not for pixel)", low=1, high=16,
                        slider=(1, 8, 1)),
                 Option("seed", "int", 0, "the seed of the start and the transforms")),
                passes=lambda o, shape: o["steps"] * (o["crops"] if o["param"] != "pixel" else 1), streams=True))


# --------------------------------------------------------------------------- methods written as text
def parse_spec(text: str) -> tuple[str, dict]:
    """'lrp-epsilon:epsilon=0.001,beta=1' -> ('lrp-epsilon', {'epsilon': '0.001', 'beta': '1'}): the values
    stay text until the method's options type them."""
    name, _, rest = str(text).partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise OptionError(f"method parameters are key=value, got {item!r} in {text!r}")
        k, v = item.split("=", 1)
        params[k.strip()] = v
    return name.strip(), params


def split_specs(text: str) -> list[str]:
    """'gradient,lrp-epsilon:epsilon=0.001,beta=1,guided' -> the methods, each parameter list staying with its
    method (a comma-separated list of specs as the command line writes it)."""
    out = []
    for part in str(text).split(","):
        if "=" in part and out and ":" in out[-1]:
            out[-1] += "," + part
        else:
            out.append(part.strip())
    return [m for m in out if m]


def shared_texts(items) -> dict:
    """['epsilon=0.01', 'alpha=2'] -> {'epsilon': '0.01', 'alpha': '2'}: options for a whole run (-p), texts
    until each method's options type them."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise OptionError(f"--param takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out

def check_shared(specs, shared: dict):
    """Options given for a whole run (-p key=value) must be taken by at least one of its methods."""
    methods = [lookup(parse_spec(s)[0]) for s in specs]
    for key in shared:
        if not any(m.option(key) for m in methods):
            raise OptionError(f"no method of {', '.join(m.name for m in methods)} takes {key!r}: "
                              + "; ".join(f"{m.name}: {', '.join(o.name for o in m.options) or 'none'}"
                                          for m in methods))


def place_layer(method: Method, target, layer, channel):
    """(target, options) for a layer named beside the method (--layer, --channel): without a channel, the
    layer a CAM is drawn at; else, and for every method that draws no layer, a unit fv.Unit(layer, channel)
    is the target."""
    from ..errors import InputError
    from ..explanation import Unit
    if layer is None:
        if channel is not None:
            raise InputError("a channel goes with a layer: give --layer too")
        return target, {}
    if channel is None and method.layer:
        return target, {"layer": layer}
    if target is not None:
        raise InputError(f"{method.name}: a unit (--layer with --channel, or --layer for a method that draws no "
                         "layer) replaces the class target; give one of them")
    return Unit(layer, channel), {}


def run_spec(model, x, spec, target=None, shared=None, progress=None, layer=None, channel=None):
    """A method written as text ('lrp-epsilon:epsilon=0.001') on x, the way every command runs it: the run's
    shared options where the method takes them, then its own, typed by the method's options; layer and
    channel as place_layer reads them."""
    name, own = parse_spec(spec)
    m = lookup(name)
    given = {k: v for k, v in (shared or {}).items() if m.option(k)}
    given.update(own)
    target, extra = place_layer(m, target, layer, channel)
    return model.explain(x, m, target=target, progress=progress, **m.parse({**given, **extra}))


# --------------------------------------------------------------------------- forward passes only (#24)
def _compute_rise(model, method, x, target, options, call):
    from ..errors import InputError
    from .blackbox import rise
    if call.return_layers:
        raise InputError("return_layers is for the reverse-pass methods, not rise")
    return rise(model, x, target, masks=options["masks"], cells=options["cells"], p=options["p"],
                seed=options["seed"], batch_size=options["batch_size"], score=options["score"],
                quiet=True if call.progress is None else None, progress=call.progress)


register(Method("rise", "heat", "perturbation",
                "RISE (Petsiuk et al. 2018): the score on copies under random upsampled masks, averaged per pixel",
                _compute_rise,
                (Option("masks", "int", 2000, "random masks (one forward each, in batches)", low=1,
                        slider=(100, 2000, 100)),
                 Option("cells", "int", 7, "the masks' grid: cells x cells before upsampling", low=1, high=64,
                        slider=(2, 16, 1)),
                 Option("p", "float", 0.5, "the probability a cell is kept (in (0, 1])", low=0, high=1,
                        slider=(0.1, 0.9, 0.1)),
                 Option("seed", "int", 0, "the masks' seed"),
                 Option("score", "str", "prob", "the score the masks are weighted by (the paper's: prob)",
                        choices=("prob", "logit")),
                 Option("batch_size", "int", None, "masked copies per batch (default: what fits the memory cap)",
                        low=1)),
                passes=lambda o, shape: int(o["masks"]), streams=True))


DRAWN_AT = Option("layer", "layer", None, "the layer the map is drawn at (default: Grad-CAM's, the last map-shaped "
                  "layer every path to the class passes through)")


def _compute_reciprocam(model, method, x, target, options, call):
    from ..errors import InputError
    from .blackbox import reciprocam
    if call.return_layers:
        raise InputError(f"return_layers is for the reverse-pass methods; {method.name} draws one layer's map")
    return reciprocam(model, x, target, layer=options["layer"], gaussian=options["gaussian"],
                      score=options["score"], upsample_maps=options["upsample"], batch_size=options["batch_size"],
                      quiet=True if call.progress is None else None, progress=call.progress)


def _lower_reciprocam(model, method, table_, spec, options, all_classes=False):
    from ..errors import InputError
    from .blackbox import lower_reciprocam_maps
    if spec.kind != "class":
        raise InputError("reciprocam explains class scores: the explainer takes a class target")
    return lower_reciprocam_maps(model, table_, spec, options["layer"], options["gaussian"], options["score"],
                                 options["upsample"], all_classes)


def _reciprocam_all_classes(model, method, x, options, call):
    """ReciproCAM's one batch scores every class: all their maps, (N, K, H, W)."""
    from ..explanation import Explanation
    from .cam import resize_maps
    e = _compute_reciprocam(model, method, x, None, options, call)
    maps = e.extras["classes"]
    n, k = maps.shape[:2]
    if options["upsample"]:
        size = model.feeds(x)[model.graph.input_names()[0]].shape[2:]
        maps = resize_maps(maps.reshape((n * k,) + maps.shape[2:]), size).reshape((n, k) + tuple(size))
    return Explanation(np.asarray(maps, np.float32), np.arange(k), e.output, "reciprocam", extras=e.extras)


register(Method("reciprocam", "heat", "cam",
                "ReciproCAM (Byun and Lee 2022): the class scores of a layer's maps kept at one position at a time, "
                "all positions as one batch through the layers after it (no gradient)",
                _compute_reciprocam,
                (DRAWN_AT,
                 Option("gaussian", "bool", False, "keep each position's 3x3 Gaussian neighbourhood, not the "
                        "position alone"),
                 Option("score", "str", "prob", "the class score read on each copy (the paper's: prob)",
                        choices=("prob", "logit")),
                 Option("upsample", "bool", True, "resize the map to the input's size"),
                 Option("batch_size", "int", None, "positions per tail batch (default: all that fit the memory "
                        "cap)", low=1)),
                layer=True, passes=lambda o, shape: 1, all_classes=_reciprocam_all_classes, streams=True,
                lower=_lower_reciprocam))


def _compute_ablationcam(model, method, x, target, options, call):
    from ..errors import InputError
    from .blackbox import ablationcam
    if call.return_layers:
        raise InputError(f"return_layers is for the reverse-pass methods; {method.name} draws one layer's map")
    return ablationcam(model, x, target, layer=options["layer"], upsample_maps=options["upsample"],
                       batch_size=options["batch_size"], through_softmax=call.through_softmax,
                       quiet=True if call.progress is None else None, progress=call.progress, flag=not call.copy)


ABLATION_PASSES = 512  # one tail forward per channel of the layer, unknown here: a ResNet's last block's width


register(Method("ablationcam", "heat", "cam",
                "AblationCAM (Desai and Ramaswamy 2020): each channel weighted by the drop of the class score "
                "when it alone is set to zero (the layers after it rerun, no gradient)",
                _compute_ablationcam,
                (DRAWN_AT,
                 Option("upsample", "bool", True, "resize the map to the input's size"),
                 Option("batch_size", "int", None, "ablated copies per tail batch (default: what fits the memory "
                        "cap)", low=1)),
                layer=True, passes=lambda o, shape: ABLATION_PASSES, streams=True))


def _compute_sobol(model, method, x, target, options, call):
    from ..errors import InputError
    from .blackbox import sobol
    if call.return_layers:
        raise InputError("return_layers is for the reverse-pass methods, not sobol")
    return sobol(model, x, target, grid=options["grid"], designs=options["designs"], seed=options["seed"],
                 score=options["score"], batch_size=options["batch_size"],
                 quiet=True if call.progress is None else None, progress=call.progress)


register(Method("sobol", "heat", "perturbation",
                "Sobol attribution (Fel et al. 2021): each cell's total Sobol index (Jansen) of the score under "
                "quasi-Monte Carlo masks of the input",
                _compute_sobol,
                (Option("score", "str", "logit", "the score whose variance is explained", choices=("logit", "prob")),
                 Option("grid", "int", 8, "the masks' grid: grid x grid cells", low=1, high=64, slider=(2, 12, 1)),
                 Option("designs", "int", 30, "Sobol designs N (N * (grid^2 + 2) forwards; 30 keeps the default "
                        "under serve's 2048 passes)", low=2, slider=(8, 64, 2)),
                 Option("seed", "int", 0, "the scrambled Sobol sequence's seed"),
                 Option("batch_size", "int", None, "masked copies per batch (default: what fits the memory cap)",
                        low=1)),
                passes=lambda o, shape: int(o["designs"]) * (int(o["grid"]) ** 2 + 2), streams=True))
