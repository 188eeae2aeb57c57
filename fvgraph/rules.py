"""Rule presets: which propagation rule the reverse pass applies at each node, kept as TOML data.

A preset (`rules/<method>.toml`, or any file a user writes):

    name = "lrp-epsilon"
    default = "gradient"          # rule for ops not listed below
    seed = "output"               # "one-hot" (gradient methods) or "output" (LRP: R starts as the logit)
    canonize = true               # fold BatchNormalization into the Conv before it (LRP)
    multiply_input = false        # input-x-gradient multiplies the result by the input
    [params]
    epsilon = 1e-3
    [ops]
    Relu = "pass"
    Conv = "epsilon"
    [[override]]                  # first match wins; select by node name, op type and/or position
    op = "Conv"
    position = "first"            # "first", "last", or an index among the nodes of that op type
    rule = "zb"

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

RULE_NAMES = ("gradient", "deconvnet", "guided", "pass", "epsilon", "zplus", "alphabeta", "zb", "w2", "flat",
              "proportional", "gate")
PARAMS = {"epsilon": 1e-3, "alpha": 2.0, "beta": 1.0, "low": None, "high": None}
TOP_KEYS = {"name", "description", "default", "seed", "canonize", "multiply_input", "params", "ops", "override"}
OVERRIDE_KEYS = {"name", "op", "position", "rule"}


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

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source) -> "Rules":
        """A preset by name ("guided", "lrp-epsilon", ...) or a path to a .toml file."""
        if isinstance(source, Rules):
            return source
        text, where = _read(source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RuleError(f"{where}: not valid TOML: {e}") from None
        return cls.from_dict(data, where, text)

    @classmethod
    def from_dict(cls, data: dict, where: str = "<rules>", text: str = "") -> "Rules":
        from .ops import supported_op_types

        def fail(msg, key):
            raise RuleError(f"{where}{_line(text, key)}: {msg}")

        for k in data:
            if k not in TOP_KEYS:
                fail(f"unknown key {k!r} (expected one of {sorted(TOP_KEYS)})", k)
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
        rules = cls(name=data.get("name", Path(where).stem), default=default, ops=ops, overrides=tuple(overrides),
                    params=params, seed=seed, canonize=bool(data.get("canonize", False)),
                    multiply_input=bool(data.get("multiply_input", False)),
                    description=data.get("description", ""))
        return rules

    def with_params(self, **params) -> "Rules":
        unknown = [k for k in params if k not in PARAMS]
        if unknown:
            raise RuleError(f"unknown parameter(s) {unknown} for method {self.name!r} "
                            f"(parameters: {', '.join(PARAMS)})")
        for k, v in params.items():
            try:
                ok = v is None or np.all(np.isfinite(np.asarray(v, dtype=np.float64)))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RuleError(f"parameter {k} must be a number (or, for low/high, one per channel), got {v!r}")
        return replace(self, params={**self.params, **params})

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


def presets_dir():
    """The shipped presets: the package fvgraph.presets when installed, else the repository's rules/."""
    try:
        return resources.files("fvgraph.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "rules"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in presets_dir().iterdir() if p.name.endswith(".toml"))


def _read(source) -> tuple[str, str]:
    if isinstance(source, (str, Path)) and (str(source).endswith(".toml") or Path(str(source)).exists()):
        p = Path(source)
        if not p.is_file():
            raise RuleError(f"{p}: no such rules file")
        return p.read_text(), str(p)
    name = str(source)
    res = presets_dir() / f"{name}.toml"
    if not res.is_file():
        raise RuleError(f"unknown method {name!r}: use one of {', '.join(preset_names() + ['cam', 'gradcam'])}, "
                        "or the path of a rules .toml file")
    return res.read_text(), f"rules/{name}.toml"


def _line(text: str, token: str) -> str:
    """' (line N)' for the first line mentioning token, to point at the fault."""
    for k, line in enumerate(text.splitlines(), 1):
        if str(token) in line:
            return f" (line {k})"
    return ""
