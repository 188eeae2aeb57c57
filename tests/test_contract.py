"""A model's contract: NHWC inputs (as tf2onnx writes them), preprocessing presets and overrides, labels from
files and from exporters' metadata, `fvgraph preprocess`, and `info` at concrete shapes."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fvgraph as fv
from fvgraph.cli import main
from fvgraph.contract import labels_from_metadata, load_labels, parse_preprocess
from fvgraph.image import demo_images, load_image, to_input
from tests.conftest import ort_session, rel_l2

R = np.random.default_rng(5)
W = R.standard_normal((6, 3, 3, 3)).astype(np.float32)
G = R.standard_normal((4, 6)).astype(np.float32)


def _net(nhwc: bool, size=24, metadata=None):
    """x -> [Transpose NHWC->NCHW] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    shape = [1, size, size, 3] if nhwc else [1, 3, size, size]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [helper.make_node("Conv", ["xt" if nhwc else "x", "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "n", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(W, "w"), numpy_helper.from_array(G, "g")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def test_nhwc_model_is_recognized_runs_as_written_and_explains_channels_first():
    m = _net(True)
    model = fv.load(m)
    assert model.nhwc_input is not None and model.inputs[0].shape[1] == 3
    x = R.standard_normal((1, 24, 24, 3)).astype(np.float32)
    ref = ort_session(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run(x), ref, rtol=1e-5, atol=1e-5)           # the model's own layout
    xc = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(model.run(xc), ref, rtol=1e-5, atol=1e-5)          # or channels first
    same = fv.load(_net(False))
    for method in ("gradient", "guided", "lrp-epsilon", "gradcam"):
        a, b = model.explain(x, method, target=1).relevance, same.explain(xc, method, target=1).relevance
        assert a.shape == b.shape and rel_l2(a, b) < 1e-5, method
    occ = model.occlusion(x, box=(8, 8), stride=(8, 8))
    assert occ.relevance.shape == (1, 24, 24)


def test_nhwc_from_the_command_line(tmp_path):
    path = tmp_path / "nhwc.onnx"
    onnx.save(_net(True), str(path))
    img = str(demo_images()[0])
    assert main(["explain", str(path), img, "-m", "gradient,gradcam", "--out", str(tmp_path / "o"), "-q"]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) >= 2
    assert main(["occlude", str(path), img, "--out", str(tmp_path / "occ"), "--box", "8", "--stride", "8",
                 "-q"]) == 0


def test_layout_can_be_forced_and_refused():
    m = _net(False)
    with pytest.raises(fv.InputError):
        fv.load(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                                                    [helper.make_tensor_value_info("x", 1, [2, 3])],
                                                    [helper.make_tensor_value_info("y", 1, [2, 3])])),
                preprocess="layout=NHWC")
    assert fv.load(m).nhwc_input is None


def test_presets_and_overrides():
    assert parse_preprocess("caffe")["channels"] == "BGR"
    spec = parse_preprocess("imagenet,size=227,mean=0.5,0.5,0.5,std=0.25,0.25,0.25,resize=stretch")
    assert spec["size"] == 227 and spec["mean"] == [0.5, 0.5, 0.5] and spec["std"] == [0.25] * 3
    assert spec["resize"] == "stretch"
    for bad in ("nonsense", "size=", "colour=red", "channels=CMYK"):
        with pytest.raises(fv.InputError):
            parse_preprocess(bad)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    caffe = {**parse_preprocess("caffe"), "size": 2}
    x = to_input(rgb, caffe)
    np.testing.assert_allclose(x[0, :, 0, 0], [0 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)  # B, G, R
    tf = to_input(rgb, {**parse_preprocess("tf"), "size": 2})
    np.testing.assert_allclose(tf[0, :, 0, 0], [1.0, -1.0, -1.0])
    raw = to_input(rgb, {**parse_preprocess("raw"), "size": 2})
    np.testing.assert_allclose(raw[0, :, 0, 0], [1.0, 0.0, 0.0])


def test_preprocess_and_labels_from_load_and_the_command_line(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\nthree\n")
    model = fv.load(_net(False), preprocess="caffe", labels=str(labels))
    assert model.preprocessing()["channels"] == "BGR" and model.class_names()[3] == "three"
    img = demo_images()[0]
    np.testing.assert_allclose(load_image(img, model.preprocessing()),
                               load_image(img, {**model.preprocessing(), **parse_preprocess("caffe")}))
    path, out = tmp_path / "m.onnx", tmp_path / "m-pre.onnx"
    onnx.save(_net(False), str(path))
    assert main(["preprocess", str(path), "--preprocess", "caffe,size=24", "--labels", str(labels), "-o", str(out),
                 "-q"]) == 0
    again = fv.load(out)
    assert again.preprocessing()["channels"] == "BGR" and again.preprocessing()["size"] == 24
    assert again.class_names() == ["zero", "one", "two", "three"]
    assert main(["preprocess", str(path), "--labels", str(labels), "-o", str(out), "-q"]) == 2  # never overwritten
    assert main(["preprocess", str(path), "--labels", str(labels), "-o", str(path), "-q"]) == 2  # nor the model
    assert main(["explain", str(path), str(img), "--preprocess", "caffe", "--labels", str(labels), "-m", "gradient",
                 "--out", str(tmp_path / "e"), "-q"]) == 0


def test_labels_from_files_and_exporters_metadata(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"1": "b", "0": "a"}))
    assert load_labels(str(tmp_path / "l.json")) == ["a", "b"]
    (tmp_path / "l2.json").write_text(json.dumps(["x", "y"]))
    assert load_labels(str(tmp_path / "l2.json")) == ["x", "y"]
    assert len(load_labels("imagenet")) == 1000 and load_labels("imagenet")[0] == "tench"
    with pytest.raises(fv.InputError):
        load_labels(str(tmp_path / "missing.txt"))
    assert labels_from_metadata({"names": "{0: 'person', 1: 'bicycle'}"}) == ["person", "bicycle"]
    assert labels_from_metadata({"character": "0 180"}) == ["0", "180"]           # PaddleOCR's angle classifier
    assert labels_from_metadata({"character": "a\nb\nc"}) == ["a", "b", "c"]
    assert labels_from_metadata({"classes": "cat,dog"}) == ["cat", "dog"]
    assert fv.load(_net(False, metadata={"character": "0 180 90 270"})).class_names()[1] == "180"


def test_info_prints_output_shapes_at_the_concrete_size(tmp_path, capsys):
    m = _net(False)
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "floor(floor(N/2))"
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    outputs = [line for line in text.splitlines() if line.startswith("outputs")][0]
    assert "floor" not in outputs and "4)" in outputs


def test_half_precision_nhwc_model_runs_in_its_own_layout_and_explains():
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    m = convert_float_to_float16(_net(True))
    model = fv.load(m)
    assert model.nhwc_input is not None and model.native is not None
    x = R.standard_normal((1, 24, 24, 3)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float16)})[0]
    assert rel_l2(model.run(x), ref) < 3e-3
    r = model.explain(x, "guided", target=1).relevance
    assert r.shape == (1, 3, 24, 24) and np.all(np.isfinite(r)) and np.abs(r).sum() > 0


def test_the_command_line_explains_a_dense_output_whole_and_names_a_size_that_does_not_fit(tmp_path, capsys):
    from tests import zoo
    path = tmp_path / "seg.onnx"
    onnx.save(zoo.seg_like(), str(path))  # (N, classes, H, W): no class vector
    img = str(demo_images()[0])
    assert main(["explain", str(path), img, "-m", "gradient,gradcam", "-o", str(tmp_path / "o")]) == 0
    assert "sum of the whole output" in capsys.readouterr().out
    rel = np.load(tmp_path / "o" / (demo_images()[0].stem + "_gradient.npy"))
    assert np.abs(rel).sum() > 0
    # a model whose input size is not declared and that does not run at the implied one: say what to give
    b = zoo.NetBuilder((1, 3, 1, 1), 13, seed=1, batch="N")
    b.input_shape = ["N", 3, "h", "w"]
    y = b.op("Reshape", [b.conv("input", 3, 2, 3), b.const([0, 2, 48, -1], dtype=np.int64)])
    odd = tmp_path / "odd.onnx"
    onnx.save(b.model(y), str(odd))
    assert main(["explain", str(odd), img, "-m", "gradient", "-o", str(tmp_path / "p"), "-q"]) == 2
    assert "--preprocess size=" in capsys.readouterr().err


BAD_ITEMS = [  # (text, what the one line must say)
    ("size=0", "size=0 is not valid: size takes a whole number from 1 to 8192"),
    ("size=-3", "size=-3 is not valid"),
    ("size=abc", "size=abc is not valid: size takes a whole number from 1 to 8192, or HxW like 224x320"),
    ("size=99999", "size=99999 is not valid"),
    ("size=224x0", "size=224x0 is not valid"),
    ("size=1.5", "size=1.5 is not valid"),
    ("std=0,0,0", "std=0,0,0 is not valid: std takes one finite nonzero number per channel"),
    ("std=0.2,nan,0.2", "std=0.2,nan,0.2 is not valid"),
    ("std=0.2,0.2", "std=0.2,0.2 is not valid: std takes one finite nonzero number per channel (1 or 3)"),
    ("mean=inf", "mean=inf is not valid: mean takes one finite number per channel"),
    ("mean=0.5,abc", "mean= takes numbers, and 'abc' is not one"),
    ("scale=abc", "scale=abc is not valid: scale takes a finite nonzero number, like 0.00392 or 1/255"),
    ("scale=0", "scale=0 is not valid"),
    ("scale=1/0", "scale=1/0 is not valid"),
    ("crop_fraction=1.5", "crop_fraction=1.5 is not valid: crop_fraction takes a number in (0, 1]"),
    ("pad_value=-1", "pad_value=-1 is not valid: pad_value takes a number from 0 to 255"),
    ("border=-2", "border=-2 is not valid"),
    ("interpolation=cubic", "interpolation=cubic is not valid: interpolation takes one of bilinear, bicubic"),
    ("crop=top", "crop=top is not valid"),
    ("resize=fill", "resize='fill' is not one of shorter, stretch, letterbox"),
    ("colour=red", "unknown key 'colour'"),
]


@pytest.mark.parametrize("text,message", BAD_ITEMS)
def test_a_bad_preprocess_item_is_one_line_naming_it_and_its_valid_form(text, message):
    with pytest.raises(fv.InputError) as e:
        parse_preprocess(f"imagenet,{text}")
    assert str(e.value).startswith("--preprocess: ") and message in str(e.value) and "\n" not in str(e.value)


def test_good_items_are_normalized_and_dicts_and_metadata_are_checked_too():
    spec = parse_preprocess("size=224x320,scale=1/255,mean=0.5,std=0.25,border=32,crop=centre,interpolation=BICUBIC")
    assert spec == {"size": [224, 320], "scale": 1 / 255, "mean": [0.5], "std": [0.25], "border": [32, 32],
                    "crop": "center", "interpolation": "bicubic"}
    assert parse_preprocess({"size": [160], "std": [1, 2, 3]}) == {"size": 160, "std": [1.0, 2.0, 3.0]}
    with pytest.raises(fv.InputError, match="unknown key 'sise'"):
        parse_preprocess({"sise": 224})
    with pytest.raises(fv.InputError, match="std=0,1,1 is not valid"):
        fv.load(_net(False), preprocess={"std": [0, 1, 1]})
    # a model whose own metadata says std 0: the error names the metadata, not a NaN later
    bad = _net(False, metadata={"fvgraph.preprocess": json.dumps({"std": [0, 0, 0], "size": 24})})
    with pytest.raises(fv.InputError, match=r"model metadata 'fvgraph.preprocess' \(override it with --preprocess\): "
                                            "std=0,0,0 is not valid"):
        fv.load(bad)
    assert fv.load(bad, preprocess="std=0.5,0.5,0.5").preprocessing()["std"] == [0.5] * 3
    # grayscale takes one mean and std: three would make a 3-channel input for a 1-channel model
    with pytest.raises(fv.InputError, match="channels=L takes 1 mean value"):
        fv.load(_net(False), preprocess="channels=L").preprocessing()
    gray = fv.load(_net(False), preprocess="channels=L,mean=0.5,std=0.25").preprocessing()
    rgb = np.full((2, 2, 3), 51, np.uint8)
    np.testing.assert_allclose(to_input(rgb, {**gray, "size": 2}), np.full((1, 1, 2, 2), (0.2 - 0.5) / 0.25),
                               rtol=1e-5)


def test_the_command_line_refuses_a_bad_preprocess_item_in_one_line(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_net(False), str(path))
    img = str(demo_images()[0])
    for text in ("std=0,0,0", "size=0", "scale=abc"):
        assert main(["explain", str(path), img, "--preprocess", text, "-m", "gradient", "--out",
                     str(tmp_path / "e"), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and text in err and "Traceback" not in err
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_the_preprocessing_contract_is_one_value(tmp_path):
    """fv.Preprocessing: parse, from and to metadata, to the model's input and back to the picture, one value
    (a checked spec: everything that reads a spec reads it)."""
    import fvgraph as fv
    from fvgraph.image import load_image, to_display
    p = fv.Preprocessing.parse("caffe,size=40x48")
    assert p["size"] == [40, 48] and p["channels"] == "BGR" and isinstance(p, dict)
    again = fv.Preprocessing.from_metadata(p.to_metadata({"other": "kept"}))
    assert again == p
    assert p.to_metadata({"other": "kept"})["other"] == "kept"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    from PIL import Image
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = p.to_input(tmp_path / "a.png")
    assert np.array_equal(x, load_image(tmp_path / "a.png", p))
    assert np.array_equal(p.to_display(x[0]), to_display(x[0], p))
    assert np.abs(p.to_display(x[0]).astype(int) - rgb).max() <= 1  # the picture back, to rounding
