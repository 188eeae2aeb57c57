"""Presets that extend a base (rules/lrp-base.toml), RULE_NAMES / RULE_PARAMS derived from the rules
themselves, the one ReLU-like predicate and the one ImageNet normalization (#22 "each fact once").

The expected LRP presets below were captured from the four rules/lrp-*.toml files as they stood before they
were made to extend lrp-base, and are written out here by hand: the refactoring must not change a single rule."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph import propagation
from fvgraph.errors import RuleError
from fvgraph.graph import Node
from fvgraph.reverse import RELEVANCE, Target, lower
from fvgraph.rules import PARAMS, Override, Rules, preset_names
from fvgraph.shapes import concrete

# ------------------------------------------------------------------ the four LRP presets, as they were
_SHARED_OPS = {  # the 27 [ops] lines the four files had in common
    "BatchNormalization": "epsilon", "Add": "proportional", "Sum": "proportional", "Sub": "proportional",
    "Mul": "gate", "Div": "gate", "Relu": "pass", "Clip": "pass", "LeakyRelu": "pass", "PRelu": "pass",
    "Elu": "pass", "Selu": "pass", "Sigmoid": "pass", "Tanh": "pass", "HardSigmoid": "pass", "HardSwish": "pass",
    "Softplus": "pass", "Gelu": "pass", "LRN": "pass", "LayerNormalization": "epsilon",
    "GroupNormalization": "epsilon", "InstanceNormalization": "epsilon", "Einsum": "epsilon", "Mish": "pass",
    "Erf": "pass", "Softmax": "pass", "LogSoftmax": "pass"}
_LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "ReduceMean", "Resize")
_PARAMS = {"epsilon": 0.001, "alpha": 2.0, "beta": 1.0, "low": None, "high": None}
BEFORE = {
    "lrp-epsilon": dict(
        description="LRP-epsilon (Bach et al. 2015; Montavon et al. 2019) on every linear layer.",
        ops={**{op: "epsilon" for op in _LINEAR}, **_SHARED_OPS}, overrides=()),
    "lrp-zplus": dict(
        description="LRP z+ (positive contributions only) on every linear layer.",
        ops={**{op: "zplus" for op in _LINEAR}, **_SHARED_OPS}, overrides=()),
    "lrp-alphabeta": dict(
        description="LRP alpha-beta (alpha=2, beta=1 by default) on every linear layer.",
        ops={**{op: "alphabeta" for op in _LINEAR}, **_SHARED_OPS}, overrides=()),
    "lrp-composite": dict(
        description="Composite LRP: z^B box rule on the first layer (input bounds), alpha-beta on convolutions, "
                    "epsilon on dense layers.",
        ops={"Conv": "alphabeta", "ConvTranspose": "alphabeta", "Gemm": "epsilon", "MatMul": "epsilon",
             "AveragePool": "alphabeta", "GlobalAveragePool": "alphabeta", "ReduceMean": "epsilon",
             "Resize": "alphabeta", **_SHARED_OPS},
        overrides=(Override(rule="zb", name=None, op="Conv", position="first"),)),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_lrp_presets_resolve_as_before(name):
    r = Rules.load(name)
    want = BEFORE[name]
    assert len(want["ops"]) == 35
    assert r.ops == want["ops"]
    assert r.params == _PARAMS
    assert r.overrides == want["overrides"]
    assert (r.name, r.description, r.default, r.seed, r.canonize, r.multiply_input, r.integrate, r.smooth) == \
        (name, want["description"], "gradient", "output", True, False, None, None)


def test_base_is_no_method():
    assert "lrp-base" not in preset_names()
    assert {"lrp-epsilon", "lrp-zplus", "lrp-alphabeta", "lrp-composite", "gradient"} <= set(preset_names())
    with pytest.raises(RuleError, match=r"lrp-base.*abstract"):
        Rules.load("lrp-base")
    with pytest.raises(RuleError, match="abstract"):
        Rules.from_dict({"abstract": True, "ops": {"Relu": "pass"}})
    from fvgraph.methods.registry import names
    assert "lrp-base" not in names()


def test_lrp_files_keep_only_what_differs():
    """Each LRP file extends the base and repeats none of its [ops] lines."""
    import tomllib
    from fvgraph.rules import presets_dir
    base = tomllib.loads((presets_dir() / "lrp-base.toml").read_text())
    assert base["abstract"] is True and base["ops"] == _SHARED_OPS
    for name in BEFORE:
        own = tomllib.loads((presets_dir() / f"{name}.toml").read_text())
        assert own["extends"] == "lrp-base"
        assert not set(own.get("ops", {})) & set(base["ops"]), name


# ------------------------------------------------------------------ extends, on files of one's own
def _write(path, text):
    path.write_text(text)
    return path


def test_extends_merges_base_first(tmp_path):
    _write(tmp_path / "base.toml", """
abstract = true
default = "gradient"
seed = "output"
canonize = true
description = "the base"
[params]
epsilon = 0.5
alpha = 3.0
beta = 2.0
[ops]
Relu = "pass"
Conv = "epsilon"
Add = "proportional"
[[override]]
op = "Conv"
position = "first"
rule = "zb"
""")
    _write(tmp_path / "mid.toml", """
extends = "base.toml"
[ops]
Gemm = "zplus"
""")
    mine = _write(tmp_path / "mine.toml", """
extends = "mid.toml"
seed = "one-hot"
[params]
epsilon = 0.25
[ops]
Conv = "alphabeta"
[[override]]
op = "Conv"
position = "last"
rule = "flat"
""")
    r = Rules.load(mine)
    assert r.name == "mine"  # the name is the file's own, never inherited
    assert r.description == "the base"
    assert r.ops == {"Relu": "pass", "Conv": "alphabeta", "Add": "proportional", "Gemm": "zplus"}
    assert r.params == {**PARAMS, "epsilon": 0.25, "alpha": 3.0, "beta": 2.0}
    assert (r.default, r.seed, r.canonize) == ("gradient", "one-hot", True)
    assert r.overrides == (Override("flat", None, "Conv", "last"), Override("zb", None, "Conv", "first"))
    # the extending file is a method even though its base is abstract; mid.toml is one too
    assert Rules.load(tmp_path / "mid.toml").ops["Gemm"] == "zplus"
    with pytest.raises(RuleError, match="abstract"):
        Rules.load(tmp_path / "base.toml")


def test_extends_a_preset_by_name(tmp_path):
    r = Rules.load(_write(tmp_path / "eps.toml", 'extends = "lrp-epsilon"\n[params]\nepsilon = 0.1\n'))
    want = Rules.load("lrp-epsilon")
    assert r.ops == want.ops and r.seed == "output" and r.canonize
    assert r.params["epsilon"] == 0.1 and r.name == "eps"
    r = Rules.from_dict({"extends": "lrp-base", "ops": {"Conv": "zplus"}}, "<mine>")
    assert r.ops == {**_SHARED_OPS, "Conv": "zplus"}


def test_extends_cycles_are_refused(tmp_path):
    _write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path / "b.toml", 'extends = "c.toml"\n')
    _write(tmp_path / "c.toml", 'extends = "a.toml"\n')
    with pytest.raises(RuleError, match=r"cycle.*a\.toml.*b\.toml.*c\.toml.*a\.toml") as e:
        Rules.load(tmp_path / "a.toml")
    assert str(tmp_path) in str(e.value)
    _write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    with pytest.raises(RuleError, match=r"cycle.*self\.toml.*self\.toml"):
        Rules.load(tmp_path / "self.toml")


def test_extends_faults_name_the_file(tmp_path):
    with pytest.raises(RuleError, match=r"no-such-preset"):
        Rules.load(_write(tmp_path / "x.toml", 'extends = "no-such-preset"\n'))
    with pytest.raises(RuleError, match=r"missing\.toml"):
        Rules.load(_write(tmp_path / "y.toml", 'extends = "missing.toml"\n'))
    with pytest.raises(RuleError, match=r"extends"):
        Rules.load(_write(tmp_path / "z.toml", 'extends = 3\n'))
    with pytest.raises(RuleError, match=r"abstract must be"):
        Rules.load(_write(tmp_path / "w.toml", 'abstract = "yes"\n'))
    _write(tmp_path / "bad.toml", 'abstract = true\n[ops]\nRelu = "nonsense"\n')
    with pytest.raises(RuleError, match=r"bad\.toml \(line 3\).*nonsense"):
        Rules.load(_write(tmp_path / "child.toml", 'extends = "bad.toml"\n'))


# ------------------------------------------------------------------ RULE_NAMES and RULE_PARAMS
def test_rule_names_are_the_rules():
    from fvgraph import rules
    assert rules.RULE_NAMES == tuple(propagation.RULES)
    assert set(propagation.RULE_PARAMS) == set(propagation.RULES)
    assert all(set(p) <= set(PARAMS) for p in propagation.RULE_PARAMS.values())


def _tiny_model():
    """x -> Conv -> Relu -> Add(relu, conv) -> Mul(s, sigmoid(s)) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(3).astype(np.float32)
    w2 = rng.standard_normal((4, 3)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["g"]),
             helper.make_node("Mul", ["s", "g"], ["m"]),
             helper.make_node("GlobalAveragePool", ["m"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 2, 5, 5))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return fv.load(m, cache=False)


class _Reads(dict):
    """step.params holding only some names, recording every name a rule asks for (x[k] and x.get(k))."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)


VALUES = {"epsilon": 1e-2, "alpha": 2.0, "beta": 1.0, "low": -3.0, "high": 3.0}
WHERE = {  # the op types each rule is meant for in the tiny model (elsewhere the gradient)
    "gradient": (), "deconvnet": ("Relu",), "guided": ("Relu",), "pass": ("Relu", "Sigmoid"),
    "proportional": ("Add",), "gate": ("Mul",),
    **{r: ("Conv", "GlobalAveragePool", "Gemm") for r in ("epsilon", "zplus", "alphabeta", "zb", "w2", "flat")}}


@pytest.mark.parametrize("rule", list(propagation.RULES))
def test_rule_params_are_what_each_rule_reads(rule):
    """Each rule run on the tiny model with only its listed parameters: one missing fails (KeyError, or the
    z^B rule's refusal), and every listed one must have been read."""
    model = _tiny_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    listed = propagation.RULE_PARAMS[rule]
    params = _Reads({k: VALUES[k] for k in listed})
    rules = Rules(name=rule, ops={op: rule for op in WHERE[rule]}, params=params,
                  seed="output" if rule not in ("gradient", "deconvnet", "guided") else "one-hot")
    table = concrete(model.executor, {"x": x})
    lowered = lower(model, rules, Target("class", "y"), table)
    assert params.read == set(listed), (rule, params.read)
    assert set(lowered.applied.values()) >= {rule}
    # and the graph runs (onnxruntime), giving a finite map of the input's shape
    feeds = {"x": x, "target": np.array([-1], np.int64), **lowered.param_feeds(Rules(name="v", params=VALUES))}
    out = model.engine.run(lowered.graph, feeds, [RELEVANCE])[RELEVANCE]
    assert np.asarray(out).shape == x.shape and np.all(np.isfinite(out))


@pytest.mark.parametrize("name, want", [
    ("gradient", ()), ("guided", ()), ("deconvnet", ()), ("lrp-epsilon", ("epsilon",)),
    ("lrp-zplus", ("epsilon",)), ("lrp-alphabeta", ("epsilon", "alpha", "beta")),
    ("lrp-composite", ("epsilon", "alpha", "beta", "low", "high"))])
def test_parameters_of_presets(name, want):
    assert Rules.load(name).parameters() == want


def test_parameters_over_default_and_overrides():
    assert Rules(name="d", default="flat").parameters() == ("epsilon",)
    assert Rules(name="o", overrides=(Override("zb", op="Conv"),)).parameters() == ("epsilon", "low", "high")


# ------------------------------------------------------------------ one ReLU-like predicate
def test_relu_like_predicate():
    from fvgraph.ops.activation import relu_like
    consts = {"zero": np.float32(0.0), "neg": np.float32(-1.0), "six": np.float32(6.0),
              "zeros": np.zeros(3, np.float32)}
    c = consts.get
    assert relu_like(Node("r", "Relu", ["x"], ["y"]), c)
    assert relu_like(Node("c", "Clip", ["x", "zero", "six"], ["y"]), c)        # ReLU6
    assert relu_like(Node("c", "Clip", ["x", "zero"], ["y"]), c)
    assert relu_like(Node("c", "Clip", ["x", "zeros"], ["y"]), c)              # first element decides
    assert not relu_like(Node("c", "Clip", ["x", "neg", "six"], ["y"]), c)
    assert not relu_like(Node("c", "Clip", ["x", "", "six"], ["y"]), c)        # no lower bound
    assert not relu_like(Node("c", "Clip", ["x"], ["y"]), c)
    assert not relu_like(Node("c", "Clip", ["x", "computed"], ["y"]), c)       # not a constant
    assert not relu_like(Node("l", "LeakyRelu", ["x"], ["y"]), c)


def test_guided_on_relu6_is_the_closed_form():
    """guided backprop through Clip(0, 6): relu(g) where 0 < x < 6; deconvnet: relu(g) everywhere."""
    x = np.array([[-1.0, 0.5, 3.0, 7.0, 2.0, -0.2]], np.float32)
    g = np.array([[1.0, -1.0, 2.0, 1.0, 0.5, 1.0]], np.float32)
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    graph = helper.make_graph([node], "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 6))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    model = fv.load(m, engine="numpy", cache=False)
    table = concrete(model.executor, {"x": x})
    for method, want in (("guided", np.maximum(g, 0) * ((x > 0) & (x < 6))), ("deconvnet", np.maximum(g, 0))):
        lowered = lower(model, Rules.load(method), Target("array", "y"), table)
        out = model.engine.run(lowered.graph, {"x": x, lowered.seed_inputs[0]: g}, [RELEVANCE])[RELEVANCE]
        np.testing.assert_allclose(out, want, rtol=0, atol=0)


def test_preactivation_uses_the_predicate():
    from fvgraph.methods.reconstruction import _preactivation
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    for lo, want in ((0.0, "x"), (-1.0, None)):
        graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 6))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.float32(lo), "lo"),
                                   numpy_helper.from_array(np.float32(6), "hi")])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        assert _preactivation(fv.load(m, engine="numpy", cache=False), "y") == want


# ------------------------------------------------------------------ one ImageNet normalization
def test_imagenet_statistics_written_once():
    from fvgraph import contract, image
    assert contract.PRESETS["imagenet"]["mean"] == [0.485, 0.456, 0.406]
    assert contract.PRESETS["imagenet"]["std"] == [0.229, 0.224, 0.225]
    assert image.DEFAULT == {"size": 224, "resize": "shorter", "crop": "center", **contract.PRESETS["imagenet"]}
    assert list(image.DEFAULT) == ["size", "resize", "crop", "scale", "mean", "std", "channels"]
    assert image.DEFAULT["mean"] is contract.PRESETS["imagenet"]["mean"]  # one list, not two equal ones
