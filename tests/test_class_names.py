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
