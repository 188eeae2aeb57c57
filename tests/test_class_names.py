"""A class by its label: model.class_of and target="label" on every method, one line when it is not a label."""
import numpy as np
import pytest

import fvgraph as fv
from fvgraph.image import DEMO_MODEL


@pytest.fixture(scope="module")
def model():
    return fv.load(DEMO_MODEL)


def test_a_label_is_its_class(model):
    names = model.class_names()
    for k in (0, 281, 999):
        assert model.class_of(names[k]) == k
        assert model.class_of("  " + names[k].upper().replace(" ", "   ")) == k  # case and spaces aside
    assert model.class_of("281") == 281
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    by_name = model.explain(x, "gradient", target=names[281]).relevance
    assert np.array_equal(by_name, model.explain(x, "gradient", target=281).relevance)


def test_a_label_that_is_not_one_names_the_nearest(model):
    with pytest.raises(fv.InputError, match="matches several.*'tabby cat' .281."):
        model.class_of("cat")
    with pytest.raises(fv.InputError, match="nearest none close"):
        model.class_of("zzzzqq")


def test_every_class_at_once_equals_each_class_alone():
    """target='all': CAM and ReciproCAM give every class's map in one call, each equal to that class alone; the
    methods that explain one target per pass say so."""
    from tests.zoo import resnet_like
    net = fv.load(resnet_like())
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for method in ("cam", "reciprocam"):
        every = net.explain(x, method, target="all")
        assert every.relevance.shape == (2, 10, 32, 32)
        for k in (0, 4, 9):
            alone = net.explain(x, method, target=[k, k]).relevance
            assert np.abs(every.relevance[:, k] - alone).max() <= 1e-5 * max(1.0, np.abs(alone).max())
    with pytest.raises(fv.InputError, match="is for cam, reciprocam; gradient explains one target per pass"):
        net.explain(x, "gradient", target="all")


def test_an_exported_cam_can_carry_every_class_map(tmp_path):
    """export-explainer --all-classes: the model's outputs and a `saliency` output with every class's CAM, run by
    plain onnxruntime, equal to target='all'."""
    import onnx

    from fvgraph.cli import main
    from tests.conftest import ort_session
    from tests.zoo import resnet_like
    path = tmp_path / "net.onnx"
    onnx.save(resnet_like(), str(path))
    assert main(["export-explainer", str(path), "-m", "cam", "--all-classes", "-o", str(tmp_path / "x.onnx"),
                 "-q"]) == 0
    proto = onnx.load(str(tmp_path / "x.onnx"))
    assert [o.name for o in proto.graph.output][-1] == "saliency"
    net = fv.load(str(path))
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ort_session(proto).run(["saliency"], {net.graph.input_names()[0]: x, "target": np.full(3, -1)})[0]
    want = net.explain(x, "cam", target="all").relevance
    assert got.shape == (3, 10, 32, 32) and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with pytest.raises(fv.InputError, match="is for cam"):
        net.export_explainer("gradient", all_classes=True)
