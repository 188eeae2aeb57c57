"""The lowered explainer graphs on both engines, exported explainers, the zero-copy weights, and what is
refused before anything runs."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fvgraph as fv
from fvgraph.rules import preset_names
from tests.conftest import rel_l2
from tests.zoo import ZOO, resnet_like, vgg_like

METHODS = preset_names() + ["gradcam"]
SINGLE_PASS = [m for m in METHODS if m not in ("integrated-gradients", "smoothgrad")]  # the others average passes
CAM_NETS = {"resnet_like", "mobilenet_like", "inception_like", "se_block"}  # GAP then a linear layer


def _input(proto, batch, seed=0):
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).standard_normal([batch] + shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_preset_gives_the_same_maps_on_onnxruntime_and_the_executor(name):
    """Residual, depthwise, strided, dilated, asymmetric pads, Resize, Concat, SE gates, overlapping max
    pooling: the lowered graph on onnxruntime equals fvgraph's executor running the same graph (1e-5). The LRP
    rules divide by z + 1e-3 sign(z): where z is near zero, the two engines' float32 sums (in different orders)
    differ by a rounding that the division amplifies up to 1000-fold (alpha-beta's z- is a difference, z - z+);
    measured worst 5.6e-5 (epsilon), 1.1e-5 (alpha-beta), so 1e-4 for those."""
    proto = ZOO[name]()
    a, b = fv.load(proto, engine="onnxruntime"), fv.load(proto, engine="numpy")
    methods = METHODS + (["cam"] if name in CAM_NETS else [])
    for batch in (1, 3):
        x = _input(proto, batch, seed=batch)
        target = [1, 4, 7][:batch]
        for m in methods:
            ea, eb = a.explain(x, m, target=target), b.explain(x, m, target=target)
            assert ea.relevance.shape == eb.relevance.shape
            tol = 1e-4 if m in ("lrp-epsilon", "lrp-alphabeta", "lrp-composite") else 1e-5
            assert rel_l2(ea.relevance, eb.relevance) < tol, (name, m, batch, rel_l2(ea.relevance, eb.relevance))
            assert np.array_equal(ea.target, eb.target)
            assert rel_l2(ea.output, eb.output) < 1e-5


@pytest.mark.parametrize("name", ["resnet_like", "mobilenet_like", "misc_ops", "exporter_style"])
def test_exported_explainers_equal_explain_in_plain_onnxruntime(name, tmp_path):
    proto = ZOO[name]()
    model = fv.load(proto)
    from fvgraph.methods.attribution import logits_value
    logits = logits_value(model)
    methods = SINGLE_PASS + (["cam"] if name in CAM_NETS else [])
    for m in methods:
        ex = fv.export_explainer(model, m)
        onnx.checker.check_model(ex)
        path = tmp_path / f"{m}.onnx"
        onnx.save(ex, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # no fvgraph involved
        assert [i.name for i in sess.get_inputs()] == ["input", "target"]
        assert [o.name for o in sess.get_outputs()] == ["relevance"] + model.graph.output_names()
        for batch in (1, 3):
            x = _input(proto, batch, seed=10 + batch)
            target = np.array([2, -1, 5][:batch], np.int64)
            rel, *outs = sess.run(None, {"input": x, "target": target})
            predicted = model.run(x, outputs=[logits])[logits].argmax(axis=1)
            e = model.explain(x, m, target=np.where(target < 0, predicted, target).tolist())
            assert rel.shape == e.relevance.shape
            assert rel_l2(rel, e.relevance) < 1e-5, (name, m, batch, rel_l2(rel, e.relevance))
            assert rel_l2(outs[0], model.run(x)) < 1e-6


def test_bad_methods_targets_and_parameters_fail_before_anything_runs():
    proto = vgg_like()
    model = fv.load(proto)
    x = _input(proto, 2)
    for call, match in ((lambda: model.explain(x, "nope"), "unknown method"),
                        (lambda: model.explain(x, "gradient", target=10), "out of range"),
                        (lambda: model.explain(x, "gradient", target=[1, 2, 3]), "3 targets for a batch of 2"),
                        (lambda: model.explain(x, "lrp-epsilon", epsilon="big"), "must be a number"),
                        (lambda: model.explain(x, "lrp-epsilon", gamma=1), "unknown parameter"),
                        (lambda: model.explain(x, "gradcam", layer="nope"), "unknown layer"),
                        (lambda: model.explain(x, "gradient", target=fv.Unit(3, channel=99)), "out of range"),
                        (lambda: model.explain(x[:, :2], "gradient"), "expected shape"),
                        (lambda: fv.export_explainer(model, "lrp-alphabeta", alpha=3, beta=1), "alpha - beta = 1"),
                        (lambda: fv.export_explainer(model, "gradient", layer=2), "unknown parameter .layer. for gradient"),
                        (lambda: fv.export_explainer(model, "smoothgrad"), "many passes")):
        with pytest.raises(fv.FvGraphError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert not model.engine._sessions, "nothing may run before the error"


def test_lowered_graphs_are_cached_per_method_parameters_and_signature():
    proto = resnet_like()
    model = fv.load(proto)
    x1, x3 = _input(proto, 1), _input(proto, 3)
    model.explain(x1, "gradient")
    model.explain(x3, "gradient")  # another batch size: the same graph (the batch is symbolic)
    assert len(model._lowered) == 1 and len(model.engine._sessions) == 1
    a = model.explain(x1, "lrp-epsilon", epsilon=0.1)
    b = model.explain(x1, "lrp-epsilon", epsilon=0.2)  # epsilon is an input of the graph: no new graph
    assert len(model._lowered) == 2 and len(model.engine._sessions) == 2
    assert not np.allclose(a.relevance, b.relevance)
    c = fv.load(proto).explain(x1, "lrp-epsilon", epsilon=0.2)  # a fresh model: the same map
    assert rel_l2(b.relevance, c.relevance) < 1e-6
    model.explain(x1, "lrp-alphabeta", alpha=3, beta=2)
    model.explain(x1, "lrp-alphabeta", alpha=1.5, beta=0.5)
    assert len(model._lowered) == 3


def test_weights_stay_in_the_file_and_reach_onnxruntime_from_there(tmp_path):
    path = tmp_path / "net.onnx"
    proto = resnet_like()
    onnx.save(proto, path)
    model = fv.load(path)
    mapped = [k for k, a in model.graph.initializers.items() if a.nbytes >= 1024]
    assert mapped and all(k in model.graph.weight_files for k in mapped)
    assert all(not model.graph.initializers[k].flags.owndata for k in mapped)  # views of the mapped file
    from fvgraph.onnx_export import to_onnx
    exported, base = to_onnx(model.graph)
    external = [t for t in exported.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and base == str(tmp_path)
    x = _input(proto, 2)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert rel_l2(model.run(x), ref[0]) < 1e-6
    assert rel_l2(fv.load(path, engine="numpy").run(x), ref[0]) < 1e-5


def test_the_executor_computes_with_aligned_copies_of_misaligned_weights(tmp_path):
    """raw_data lies at any byte offset of the file; NumPy's matmul leaves BLAS on misaligned arrays."""
    path = tmp_path / "net.onnx"
    proto = vgg_like()
    onnx.save(proto, path)
    model = fv.load(path, engine="numpy")
    consts = model.executor.constants
    assert any(not a.flags.aligned for a in consts.values())  # the premise: this file has misaligned weights
    x = _input(proto, 1)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert rel_l2(model.run(x), ref[0]) < 1e-5
    assert all(a.flags.aligned for a in model.executor.constants.values())
    assert all(model.executor.constants[k] is a for k, a in consts.items() if a.flags.aligned)  # no other copies


def test_engine_options_are_checked():
    proto = vgg_like()
    with pytest.raises(fv.InputError, match="unknown engine"):
        fv.load(proto, engine="tensorrt")
    with pytest.raises(fv.InputError, match="threads"):
        fv.load(proto, threads=0)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(fv.DeviceError, match="onnxruntime-gpu"):
            fv.load(proto, engine="onnxruntime", device="cuda")
    assert fv.load(proto, threads=1).engine.threads == 1


def test_export_explainer_command(tmp_path):
    src = tmp_path / "net.onnx"
    onnx.save(resnet_like(), src)
    out = tmp_path / "explainer.onnx"

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "fvgraph", *a], capture_output=True, text=True)
    r = cli("export-explainer", str(src), "-m", "lrp-epsilon", "-p", "epsilon=0.01", "-o", str(out), "--debug")
    assert r.returncode == 0, r.stderr
    assert "built a lowered graph" in r.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _input(resnet_like(), 2)
    rel = sess.run(["relevance"], {"input": x, "target": np.array([1, 2], np.int64)})[0]
    model = fv.load(src)
    assert rel_l2(rel, model.explain(x, "lrp-epsilon", target=[1, 2], epsilon=0.01).relevance) < 1e-5
    r = cli("export-explainer", str(src), "-m", "gradcam", "-o", str(out))
    assert r.returncode == 2 and "exists" in r.stderr and r.stderr.count("\n") == 1
    r = cli("export-explainer", str(src), "-m", "gradcam", "--layer", "nope", "-o", str(tmp_path / "g.onnx"))
    assert r.returncode == 2 and r.stderr.startswith("fvgraph: error: unknown layer")
    r = cli("explain", str(src), "--engine", "numpy", "--threads", "1", "-m", "guided", "-o", str(tmp_path / "o"),
            str(tmp_path / "missing.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
