"""Rule presets: which propagation rule the reverse pass applies at each node, kept as TOML data.

A preset (`rules/<method>.toml`, or any file a user writes):

    name = "lrp-epsilon"
    default = "gradient"          # rule for ops not listed below
    seed = "output"               # "one-hot" (gradient methods) or "output" (LRP: R starts as the logit)
    canonize = true               # fold BatchNormalization into the Conv before it (LRP)
    multiply_input = false        # input-x-gradient multiplies the result by the input
    [integrate]                   # integrated gradients: steps, baseline, integration (fvgraph.methods.sampling)
    [smooth]                      # SmoothGrad and kin: samples, sigma, kind, seed
    [params]
    epsilon = 1e-3
    [ops]
    Relu = "pass"
    Conv = "epsilon"
    [[override]]                  # first match wins; select by node name, op type and/or position
    op = "Conv"
    position = "first"            # "first", "last", or an index among the nodes of that op type
    rule = "zb"

A preset can extend another, `extends = "lrp-base"` (a preset's name, or a path ending in .toml, relative to the
extending file): the base's keys come first, the extending file's [ops], [params], [integrate], [smooth] entries
and other keys override them, and its [[override]] list goes before the base's (first match wins). `name` and
`abstract` are the file's own, never inherited. A base with `abstract = true` (rules/lrp-base.toml) is no
method: preset_names() leaves it out and loading it is refused.

Unknown keys, rules, op types or parameters fail at load with the file and line at fault.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import RuleError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PARAMS = {"epsilon": 1e-3, "alpha": 2.0, "beta": 1.0, "low": None, "high": None}
TOP_KEYS = {"name", "description", "default", "seed", "canonize", "multiply_input", "params", "ops", "override",
            "integrate", "smooth", "extends", "abstract"}
MERGED_TABLES = ("ops", "params", "integrate", "smooth")  # extends: entries merged, the extending file's win
OWN_KEYS = ("name", "abstract", "extends")                  # extends: never inherited
INTEGRATE = {"steps": 32, "baseline": "zero", "integration": "gausslegendre"}
SMOOTH = {"samples": 16, "sigma": 0.15, "kind": "mean", "seed": 0}
INTEGRATION_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
SMOOTH_KINDS = ("mean", "mean-of-squares", "variance")
OVERRIDE_KEYS = {"name", "op", "position", "rule"}


def __getattr__(name):
    """RULE_NAMES: the keys of fvgraph.propagation.RULES, read when first asked for (propagation imports the
    op registry, which `import fvgraph.rules` need not pay for)."""
    if name == "RULE_NAMES":
        return _rule_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rule_names() -> tuple:
    from .propagation import RULES
    return tuple(RULES)


@dataclass(frozen=True)
class Override:
    rule: str
    name: str | None = None
    op: str | None = None
    position: str | int | None = None


@dataclass(frozen=True)
class Rules:
    name: str
    default: str = "gradient"
    ops: dict = field(default_factory=dict)
    overrides: tuple = ()
    params: dict = field(default_factory=lambda: dict(PARAMS))
    seed: str = "one-hot"
    canonize: bool = False
    multiply_input: bool = False
    description: str = ""
    integrate: dict | None = None   # integrated gradients' settings, when the preset integrates
    smooth: dict | None = None      # noise averaging's settings, when it smooths

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source) -> "Rules":
        """A preset by name ("guided", "lrp-epsilon", ...) or a path to a .toml file."""
        if isinstance(source, Rules):
            return source
        text, where, folder, ident = _read(source)
        return cls.from_dict(_parse(text, where), where, text, folder=folder, _ident=ident)

    @classmethod
    def from_dict(cls, data: dict, where: str = "<rules>", text: str = "", folder=None, _ident=None) -> "Rules":
        """A preset from its parsed TOML; `folder` is where a relative `extends` path is looked for (the
        current directory when None)."""
        _check_own(data, where, text)
        if data.get("abstract"):
            raise RuleError(f"{where}: {data.get('name', Path(where).stem)!r} is an abstract preset (abstract = true): "
                            "a base that presets extend (extends = ...), no method of its own; use one of "
                            f"{', '.join(preset_names())}")
        if "extends" in data:
            data = _extended(cls, data, where, text, folder, ((_ident or where, where),))
        return cls._build(data, where, text)

    @classmethod
    def _build(cls, data: dict, where: str, text: str) -> "Rules":
        from .ops import supported_op_types
        RULE_NAMES = _rule_names()

        def fail(msg, key):
            raise RuleError(f"{where}{_line(text, key)}: {msg}")

        _check_own(data, where, text)
        default = data.get("default", "gradient")
        if default not in RULE_NAMES:
            fail(f"unknown rule {default!r} for default (rules: {', '.join(RULE_NAMES)})", default)
        ops = dict(data.get("ops", {}))
        known_ops = set(supported_op_types())
        for op, rule in ops.items():
            if op not in known_ops:
                fail(f"unknown op type {op!r} in [ops]", op)
            if rule not in RULE_NAMES:
                fail(f"unknown rule {rule!r} for {op} (rules: {', '.join(RULE_NAMES)})", rule)
        params = dict(PARAMS)
        for k, v in data.get("params", {}).items():
            if k not in PARAMS:
                fail(f"unknown parameter {k!r} (parameters: {', '.join(PARAMS)})", k)
            params[k] = v
        overrides = []
        for o in data.get("override", []):
            for k in o:
                if k not in OVERRIDE_KEYS:
                    fail(f"unknown key {k!r} in [[override]] (expected {sorted(OVERRIDE_KEYS)})", k)
            if "rule" not in o or o["rule"] not in RULE_NAMES:
                fail(f"[[override]] needs a known rule, got {o.get('rule')!r}", str(o.get("rule", "override")))
            if "op" in o and o["op"] not in known_ops:
                fail(f"unknown op type {o['op']!r} in [[override]]", o["op"])
            pos = o.get("position")
            if pos is not None and not (pos in ("first", "last") or isinstance(pos, int)):
                fail(f"position must be 'first', 'last' or an index, got {pos!r}", "position")
            overrides.append(Override(o["rule"], o.get("name"), o.get("op"), pos))
        seed = data.get("seed", "one-hot")
        if seed not in ("one-hot", "output"):
            fail(f"seed must be 'one-hot' or 'output', got {seed!r}", "seed")
        sampling = {}
        for key, defaults in (("integrate", INTEGRATE), ("smooth", SMOOTH)):
            if key in data:
                unknown = [k for k in data[key] if k not in defaults]
                if unknown:
                    fail(f"unknown key(s) {unknown} in [{key}] (keys: {', '.join(defaults)})", unknown[0])
                sampling[key] = check_sampling(key, {**defaults, **data[key]}, lambda m, k=key: fail(m, k))
        rules = cls(name=data.get("name", Path(where).stem), default=default, ops=ops, overrides=tuple(overrides),
                    params=params, seed=seed, canonize=bool(data.get("canonize", False)),
                    multiply_input=bool(data.get("multiply_input", False)),
                    description=data.get("description", ""), **sampling)
        return rules

    def with_params(self, **params) -> "Rules":
        """The preset with the caller's parameters: rule parameters (epsilon, alpha, ...), integration settings
        (steps, baseline, method) for a preset that integrates, and smoothing settings (samples, sigma, kind,
        seed) for any method (smooth= a dict, or the keys themselves)."""
        sampling = {}
        smooth = params.pop("smooth", None)
        if smooth is not None and smooth is not False:
            if not isinstance(smooth, dict) and smooth is not True:
                raise RuleError(f"smooth must be True or a dict of {', '.join(SMOOTH)}, got {smooth!r}")
            params = {**(smooth if isinstance(smooth, dict) else {}), **params}
            sampling["smooth"] = dict(self.smooth or SMOOTH)
        for key, defaults in (("integrate", INTEGRATE), ("smooth", SMOOTH)):
            given = {k: params.pop(k) for k in list(params) if k in defaults and (key == "smooth" or self.integrate)}
            if key == "smooth" and given and "smooth" not in sampling:
                sampling["smooth"] = dict(self.smooth or SMOOTH)
            if key == "integrate" and self.integrate:
                sampling["integrate"] = dict(self.integrate)
            if key in sampling:
                sampling[key] = check_sampling(key, {**sampling[key], **given}, _refuse)
        unknown = [k for k in params if k not in PARAMS]
        if unknown:
            extra = ", steps, baseline, integration" if self.integrate else ""
            raise RuleError(f"unknown parameter(s) {unknown} for method {self.name!r} "
                            f"(parameters: {', '.join(PARAMS)}{extra}, samples, sigma, kind, seed)")
        for k, v in params.items():
            try:
                ok = v is None or np.all(np.isfinite(np.asarray(v, dtype=np.float64)))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RuleError(f"parameter {k} must be a number (or, for low/high, one per channel), got {v!r}")
        return replace(self, params={**self.params, **params}, **sampling)

    def parameters(self) -> tuple:
        """The parameter names this preset's rules read (over its ops, default and overrides), in PARAMS'
        order: what a caller may usefully set."""
        from .propagation import RULE_PARAMS
        used = {self.default, *self.ops.values(), *(o.rule for o in self.overrides)}
        read = {p for r in used for p in RULE_PARAMS.get(r, ())}
        return tuple(p for p in PARAMS if p in read)

    # ------------------------------------------------------------------ resolution
    def resolve(self, graph, node_indices) -> dict[int, str]:
        """The rule for each of the given nodes (indices into graph.nodes, in execution order)."""
        by_op: dict[str, list[int]] = {}
        for i in node_indices:
            by_op.setdefault(graph.nodes[i].op_type, []).append(i)
        out = {}
        for i in node_indices:
            n = graph.nodes[i]
            rule = self.ops.get(n.op_type, self.default)
            for o in self.overrides:
                if o.name is not None and o.name != n.name:
                    continue
                if o.op is not None and o.op != n.op_type:
                    continue
                if o.position is not None:
                    same = by_op.get(n.op_type, [])
                    pos = {"first": 0, "last": -1}.get(o.position, o.position)
                    if not same or not -len(same) <= pos < len(same) or same[pos] != i:
                        continue
                rule = o.rule
                break
            out[i] = rule
        return out


def _refuse(message):
    raise RuleError(message)


def _parse(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleError(f"{where}: not valid TOML: {e}") from None


def _check_own(data: dict, where: str, text: str):
    """The top-level keys of one file, and its extends/abstract values."""
    for k in data:
        if k not in TOP_KEYS:
            raise RuleError(f"{where}{_line(text, k)}: unknown key {k!r} (expected one of {sorted(TOP_KEYS)})")
    if "abstract" in data and not isinstance(data["abstract"], bool):
        raise RuleError(f"{where}{_line(text, 'abstract')}: abstract must be true or false, got {data['abstract']!r}")
    if "extends" in data and not (isinstance(data["extends"], str) and data["extends"]):
        raise RuleError(f"{where}{_line(text, 'extends')}: extends must name a preset or a .toml path, "
                        f"got {data['extends']!r}")


def _extended(cls, data: dict, where: str, text: str, folder, chain: tuple) -> dict:
    """data with its `extends` chain merged in below it. chain: ((identity, shown as), ...) of the files that
    led here, to refuse a cycle by naming them. Each base is checked on its own, so a fault names its file."""
    ref = data["extends"]
    if ref.endswith(".toml"):
        path = (Path(folder) if folder is not None else Path.cwd()) / ref
        shown = str(Path(where).parent / ref) if folder is not None else ref
        if not path.is_file():
            raise RuleError(f"{where}{_line(text, 'extends')}: extends {ref!r}: no such file {shown}")
        btext, bwhere, bfolder, bident = path.read_text(), shown, path.parent, str(path.resolve())
    else:
        res = presets_dir() / f"{ref}.toml"
        if not res.is_file():
            raise RuleError(f"{where}{_line(text, 'extends')}: extends {ref!r}: no preset of that name (presets: "
                            f"{', '.join(_all_preset_names())}), and a path must end in .toml")
        btext, bwhere, bfolder, bident = res.read_text(), f"rules/{ref}.toml", presets_dir(), _identity(res)
    seen = [ident for ident, _ in chain]
    if bident in seen:
        loop = [shown for _, shown in chain[seen.index(bident):]] + [bwhere]
        raise RuleError(f"{chain[0][1]}: extends cycle: {' -> '.join(loop)}")
    base = _parse(btext, bwhere)
    cls._build(base, bwhere, btext)  # its own faults, with its own name and lines
    if "extends" in base:
        base = _extended(cls, base, bwhere, btext, bfolder, chain + ((bident, bwhere),))
    return _merge(base, data)


def _merge(base: dict, own: dict) -> dict:
    """own over base: tables merged entry by entry, own [[override]]s first, scalars replaced; the OWN_KEYS of
    base dropped."""
    out = {k: v for k, v in base.items() if k not in OWN_KEYS}
    for k, v in own.items():
        if k == "extends":
            continue
        if k in MERGED_TABLES and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif k == "override" and isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = list(v) + list(out[k])
        else:
            out[k] = v
    return out


def _identity(p) -> str:
    try:
        return str(Path(p).resolve())
    except TypeError:  # a Traversable inside an archive
        return str(p)


def check_sampling(key: str, settings: dict, fail) -> dict:
    """Integration or smoothing settings, checked (fail(message) raises)."""
    if key == "integrate":
        steps, method, base = settings["steps"], settings["integration"], settings["baseline"]
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 2:
            fail(f"steps must be an integer of at least 2, got {steps!r}")
        if method not in INTEGRATION_METHODS:
            fail(f"unknown integration method {method!r} (methods: {', '.join(INTEGRATION_METHODS)})")
        if isinstance(base, str) and base not in ("zero", "blur", "uniform"):
            fail(f"baseline must be 'zero', 'blur', 'uniform' or an array, got {base!r}")
        return settings
    samples, sigma, kind, seed = settings["samples"], settings["sigma"], settings["kind"], settings["seed"]
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        fail(f"samples must be a positive integer, got {samples!r}")
    if not isinstance(sigma, (int, float, np.floating, np.integer)) or isinstance(sigma, bool) or sigma < 0:
        fail(f"sigma must be a number >= 0 (relative to the input's range), got {sigma!r}")
    if kind not in SMOOTH_KINDS:
        fail(f"kind must be one of {', '.join(SMOOTH_KINDS)}, got {kind!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        fail(f"seed must be an integer, got {seed!r}")
    return settings


def presets_dir():
    """The shipped presets: the package fvgraph.presets when installed, else the repository's rules/."""
    try:
        return resources.files("fvgraph.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "rules"


def preset_names() -> list[str]:
    """The shipped methods: every preset but the abstract bases."""
    return [n for n in _all_preset_names() if not _is_abstract(presets_dir() / f"{n}.toml")]


def _all_preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in presets_dir().iterdir() if p.name.endswith(".toml"))


def _is_abstract(res) -> bool:
    try:
        return tomllib.loads(res.read_text()).get("abstract") is True
    except (OSError, tomllib.TOMLDecodeError):
        return False  # loading it says what is wrong


def _read(source) -> tuple:
    """(text, shown as, folder a relative `extends` is read from, identity for cycles)."""
    if isinstance(source, (str, Path)) and (str(source).endswith(".toml") or Path(str(source)).exists()):
        p = Path(source)
        if not p.is_file():
            raise RuleError(f"{p}: no such rules file")
        return p.read_text(), str(p), p.parent, _identity(p)
    name = str(source)
    res = presets_dir() / f"{name}.toml"
    if not res.is_file():
        raise RuleError(f"unknown method {name!r}: use one of {', '.join(preset_names() + ['cam', 'gradcam'])}, "
                        "or the path of a rules .toml file")
    return res.read_text(), f"rules/{name}.toml", presets_dir(), _identity(res)


def _line(text: str, token: str) -> str:
    """' (line N)' for the first line mentioning token, to point at the fault."""
    for k, line in enumerate(text.splitlines(), 1):
        if str(token) in line:
            return f" (line {k})"
    return ""
