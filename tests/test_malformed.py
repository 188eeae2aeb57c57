"""Malformed models: every one ends in one clear FvGraphError (from the API; one line and exit 2 from the CLI),
never another exception, a crash or a hang. Seeded mutations of five small nets (tests/mutations.py), and the
load-time checks of weights against their ops, each by hand."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from onnx import helper, numpy_helper

import fvgraph as fv
from tests import zoo
from tests.mutations import mutate

NETS = [zoo.vgg_like(size=16), zoo.resnet_like(size=16), zoo.mobilenet_like(size=16), zoo.inception_like(size=16),
        zoo.se_block()]


def _exercise(data):
    """'ok' or 'clean'; anything else propagates (the test fails with it)."""
    try:
        m = fv.load(data)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (m.inputs[0].shape or [1, 3, 16, 16])]
        x = np.random.default_rng(0).standard_normal(shape).astype(m.inputs[0].dtype or np.float32)
        m.run(x)
        m.explain(x, "gradient")
        m.explain(x, "lrp-epsilon")
        return "ok"
    except fv.FvGraphError:
        return "clean"


def test_seeded_mutations_end_in_fvgraph_errors_only():
    counts = {"ok": 0, "clean": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(150):
            counts[_exercise(mutate(NETS[k % len(NETS)], np.random.default_rng(k)))] += 1
    assert counts["clean"] > 50 and counts["ok"] > 10, counts  # the mutations break most, not all


def test_a_malformed_model_from_the_command_line_is_one_line(tmp_path):
    from fvgraph.image import demo_images
    rng = np.random.default_rng(3)
    shown = 0
    for k in range(40):
        data = mutate(NETS[k % len(NETS)], rng)
        if _exercise(data) == "ok":
            continue
        path = tmp_path / f"m{k}.onnx"
        path.write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(path), str(demo_images()[0]), "-m",
                            "gradient", "--out", str(tmp_path / "o"), "-q"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("fvgraph: error:") and r.stderr.count("\n") == 1, r.stderr
        shown += 1
        if shown == 4:
            break
    assert shown == 4


def _conv_model(w, b=None, **attrs):
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    ins = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        ins.append("b")
    g = helper.make_graph([helper.make_node("Conv", ins, ["y"], name="the_conv", **attrs)], "c",
                          [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])], [helper.make_tensor_value_info("y", 1, None)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("case, words", [
    (dict(w=np.zeros((4, 3, 3, 3)), kernel_shape=[3, 1000]), "kernel_shape"),
    (dict(w=np.zeros((4, 3, 3, 3)), b=np.zeros(5)), "bias"),
    (dict(w=np.zeros((4, 3))), "rank 3"),
    (dict(w=np.zeros((4, 3, 3, 3)), pads=[1, 1, 1]), "pads"),
    (dict(w=np.zeros((4, 3, 3, 3)), group=3), "group"),
])
def test_weights_that_do_not_fit_their_op_are_named_at_load(case, words):
    case = dict(case)
    with pytest.raises(fv.ModelLoadError, match=words) as e:
        fv.load(_conv_model(case.pop("w"), case.pop("b", None), **case))
    assert "the_conv" in str(e.value)


def test_normalization_parameters_of_different_lengths_are_named_at_load():
    inits = [numpy_helper.from_array(np.ones(n, np.float32), k) for k, n in (("s", 3), ("b", 3), ("m", 4), ("v", 3))]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")], "b",
                          [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])], [helper.make_tensor_value_info("y", 1, None)],
                          inits)
    with pytest.raises(fv.ModelLoadError, match="bn.*one length"):
        fv.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
