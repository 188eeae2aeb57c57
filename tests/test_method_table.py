"""Every way in gives the same map: for every method of the table (fvgraph.methods.registry), with its
defaults, with a changed option, with --layer on the CAMs and with a unit, the command line's saved .npy,
the API's relevance, serve's map and (for the methods that export) the standalone explainer run by plain
onnxruntime are equal to float32 rounding. The table itself drives the cases, so a new method is tested the
moment it registers."""
import numpy as np
import onnx
import pytest
from PIL import Image

import fvgraph as fv
from fvgraph.cli import main
from fvgraph.image import load_image
from fvgraph.methods.registry import table
from fvgraph.serve import Service
from tests.conftest import ort_session
from tests.zoo import resnet_like, vit_like

NEEDS_TOKENS = {"rollout"}  # attention rollout reads a transformer's attention


def _changed(option):
    """A valid value other than the default, as the command line writes it (None: none worth testing)."""
    d = option.default
    if option.name in ("seed", "layer", "batch_size", "kind", "incremental", "baseline") or option.type == "concept":
        return None
    if option.choices and option.type == "str":
        return next((c for c in option.choices if c != d), None)
    if option.type == "int":
        return str(max(int(option.low or 0), (d or 0) + 2 if option.name != "samples" else 2))
    if option.type == "float" and not callable(d):
        v = (d or 0.1) * 2
        return str(min(v, option.high * 0.5) if option.high is not None else v)
    if option.type == "bool":
        return "false" if d else "true"
    if option.type == "pair":
        return "12x8"
    if option.type == "fill":
        return "mean"
    return None


def _cases():
    """(method, options as texts, layer, channel) for every method of the table."""
    cases = []
    for name, m in table().items():
        if name in NEEDS_TOKENS:
            continue  # test_rollout_through_every_way_in, on a transformer
        cases.append((name, {}, None, None))
        for o in m.options:
            v = _changed(o)
            if v is not None and not (name == "reconstruction" and o.name == "steps"):
                cases.append((name, {o.name: v}, None, None))
                break
        if m.layer and name != "cam":
            cases.append((name, {}, "LAYER", None))
        if m.family in ("rules", "cam") and name in ("gradient", "lrp-epsilon", "gradcam", "layercam"):
            cases.append((name, {}, "LAYER", 1))
    return cases


def _fast(name, opts):
    """Keep the slow methods small: the reconstruction's steps and occlusion's boxes."""
    if name == "reconstruction":
        return {"steps": "3", "crops": "1", **opts}
    if name == "occlusion":
        return {"box": "8", **opts}
    if name == "integrated-gradients":
        return {"steps": "4", **opts}
    if opts.get("samples") or name == "smoothgrad":
        return {"samples": "2", **opts}
    return opts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    path = tmp / "net.onnx"
    onnx.save(resnet_like(size=32), str(path))
    images = tmp / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "photo.png")
    model = fv.load(str(path))
    layer = [v for v in model.layers if v.op_type == "Relu"][-2].name
    return tmp, path, images, model, layer


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0]}{c[1] or ''}{'@L' if c[2] else ''}"
                         f"{'#' + str(c[3]) if c[3] is not None else ''}")
def test_every_way_in_gives_the_same_map(setup, case, tmp_path):
    tmp, path, images, model, layer_name = setup
    name, opts, layer, channel = case
    layer = layer_name if layer else None
    opts = _fast(name, opts)
    m = table()[name]
    image = images / "photo.png"
    x = load_image(image, model.preprocessing())

    # the command line
    argv = ["explain", str(path), str(image), "-m", name, "-o", str(tmp_path / "out"), "-q"]
    if opts:
        argv += ["-p"] + [f"{k}={v}" for k, v in opts.items()]
    if layer:
        argv += ["--layer", layer] + (["--channel", str(channel)] if channel is not None else [])
    target = None
    if name == "reconstruction" and not (layer and channel is not None):
        argv += ["--target", "3"]
        target = 3
    assert main(argv) == 0
    cli = np.load(tmp_path / "out" / f"photo_{name}.npy")

    # the API, as documented: a layer without a channel is where a CAM is drawn, else a unit is the target
    typed = m.parse(opts)
    if layer and channel is None and m.layer:
        api = model.explain(x, name, target=target, layer=layer, **typed)
    elif layer:
        api = model.explain(x, name, target=fv.Unit(layer, channel), **typed)
    else:
        api = model.explain(x, name, target=target, **typed)
    want = api.relevance[0]
    assert cli.shape == want.shape and np.allclose(cli, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max())), \
        (case, float(np.abs(cli - want).max()))

    # serve: the same options by their names
    service = Service(model, images_dir=images)
    body = {"name": "photo.png", "method": name, "params": {k: v for k, v in opts.items()}, "array": True,
            "target": target, "layer": layer, "channel": channel}
    import base64
    import io
    got = np.load(io.BytesIO(base64.b64decode(service.explain(body)["npy"])))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max())), \
        (case, float(np.abs(got - want).max()))

    # the exported explainer, for what lowers into one graph (class targets: the export's target input)
    if m.exports and not (layer and channel is not None) and not typed.get("samples"):
        extra = {"layer": layer} if layer else {}
        proto = model.export_explainer(name, **typed, **extra)
        sess = ort_session(proto)
        k = int(np.ravel(api.target)[0])
        out = sess.run(["relevance"], {model.graph.input_names()[0]: x, "target": np.array([k], np.int64)})[0][0]
        # a graph of its own, optimized on its own: the LRP rules' divisions lift float32 rounding to ~1e-4 of
        # the map's largest value (lrp-composite on an Intel Xeon; the NumPy executor differs as much)
        assert np.allclose(out, want, rtol=1e-4, atol=2e-4 * max(1.0, np.abs(want).max())), \
            (case, float(np.abs(out - want).max()))


def test_rollout_through_every_way_in(tmp_path):
    path = tmp_path / "vit.onnx"
    onnx.save(vit_like(), str(path))
    pixels = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    model = fv.load(str(path))
    x = load_image(tmp_path / "p.png", model.preprocessing())
    for opts in ({}, {"head_fusion": "max"}):
        argv = ["explain", str(path), str(tmp_path / "p.png"), "-m", "rollout", "-o", str(tmp_path / "o"), "-q",
                "--overwrite"] + (["-p"] + [f"{k}={v}" for k, v in opts.items()] if opts else [])
        assert main(argv) == 0
        want = model.explain(x, "rollout", **opts).relevance[0]
        assert np.allclose(np.load(tmp_path / "o" / "p_rollout.npy"), want, rtol=1e-5, atol=1e-7)
        got = Service(model, images_dir=tmp_path).explain({"name": "p.png", "method": "rollout", "params": opts,
                                                           "array": True})
        import base64
        import io
        assert np.allclose(np.load(io.BytesIO(base64.b64decode(got["npy"]))), want, rtol=1e-5, atol=1e-7)


def test_options_are_checked_once_with_one_line(setup):
    """An unknown method or option, or a value out of range: the same line from the API, the CLI and serve."""
    tmp, path, images, model, layer = setup
    x = load_image(images / "photo.png", model.preprocessing())
    service = Service(model, images_dir=images)
    for method, opts, expect in [("nonsense", {}, "unknown method 'nonsense': use one of"),
                                 ("lrp-epsilon", {"gamma": "1"}, "unknown parameter 'gamma' for lrp-epsilon: its "
                                                                  "options are epsilon=0.001"),
                                 ("lrp-epsilon", {"epsilon": "-1"}, "epsilon of lrp-epsilon must be a number >= 0"),
                                 ("occlusion", {"score": "odds"}, "score of occlusion must be one of logit, prob"),
                                 ("rollout", {"discard_ratio": "1"}, "in [0, 1)"),
                                 ("integrated-gradients", {"steps": "1"}, "must be an integer >= 2")]:
        with pytest.raises(fv.FvGraphError) as api:
            m = fv.methods.registry.lookup(method)
            model.explain(x, method, **m.parse(opts))
        assert expect in str(api.value), str(api.value)
        with pytest.raises(fv.FvGraphError) as served:
            service.explain({"name": "photo.png", "method": method, "params": opts})
        assert expect in str(served.value) or method == "nonsense", str(served.value)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "fvgraph", "explain", str(path), str(images / "photo.png"), "-m",
                        "lrp-epsilon", "-p", "epsilon=-1", "-o", str(tmp / "bad")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("epsilon of lrp-epsilon must be a number >= 0, got -1.0")


def test_the_methods_command_lists_the_table(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, m in table().items():
        assert f"{name}: " in out
        for o in m.options:
            assert f"-p {o.describe()}" in out
    assert main(["methods", "gradcam++"]) == 0
    one = capsys.readouterr().out
    assert one.startswith("gradcam++: ") and "takes --layer" in one and "exports" not in one.splitlines()[0]


def test_a_16_bit_photo_gives_the_api_map_from_the_command_line(setup, tmp_path):
    """The command line decodes each file once, at its true scale, as fvgraph.image.load_image does (it used to
    round deeper images to 8 bits first, so its maps were not the API's)."""
    _, path, _, model, _ = setup
    deep = (np.random.default_rng(5).random((36, 44)) * 65535).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert main(["explain", str(path), str(tmp_path / "deep.png"), "-m", "gradient", "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    x = load_image(tmp_path / "deep.png", model.preprocessing())
    assert np.array_equal(np.load(tmp_path / "o" / "deep_gradient.npy"), model.explain(x, "gradient").relevance[0])
