"""SpRAy (fvgraph.methods.spray): planted groups of maps are found exactly, with the eigengap's count; a
tiny net whose class a red corner patch drives (a shortcut) puts exactly the patched images in a cluster of
their own; predicted-class and labelled-folder selection, unreadable images, the written files."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import fvgraph as fv
from fvgraph.errors import InputError
from fvgraph.methods.spray import (cluster_maps, clusters, eigengap, folder_labels, prepare_map,
                                   write_clusters)
from tests.conftest import ort_session

S = 16


def _blob_maps(rng, centres, per, size=32, noise=0.05):
    yy, xx = np.mgrid[:size, :size]
    maps, truth = [], []
    for g, (cy, cx) in enumerate(centres):
        for _ in range(per):
            dy, dx = rng.normal(0, 1, 2)
            m = np.exp(-((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) / 8.0) + noise * rng.random((size, size))
            maps.append(prepare_map(m, size))
            truth.append(g)
    perm = rng.permutation(len(maps))
    return np.array(maps)[perm], np.array(truth)[perm]


def _same_partition(a, b):
    return {frozenset(np.flatnonzero(a == c)) for c in set(a)} == {frozenset(np.flatnonzero(b == c)) for c in set(b)}


def test_planted_groups_are_found_exactly_with_the_eigengap():
    rng = np.random.default_rng(0)
    maps, truth = _blob_maps(rng, [(6, 6), (6, 25), (24, 16)], 10)
    labels, eig, k, _ = cluster_maps(maps)
    assert _same_partition(labels, truth)
    assert len(set(labels)) == 3 == eigengap(eig, 10)
    assert np.all(eig[:3] < 1e-8) and eig[3] > 0.1  # three separate groups: three zero eigenvalues
    # four groups of unequal sizes; labels numbered largest first
    maps, truth = _blob_maps(rng, [(5, 5), (5, 26), (26, 5), (26, 26)], 8)
    maps = np.concatenate([maps, _blob_maps(rng, [(16, 16)], 12)[0]])
    truth = np.concatenate([truth, np.full(12, 9)])
    labels, _, _, _ = cluster_maps(maps, seed=3)
    assert _same_partition(labels, truth)
    assert set(np.flatnonzero(labels == 0)) == set(np.flatnonzero(truth == 9))
    # a given count is used as given
    labels, _, _, _ = cluster_maps(maps, n_clusters=2)
    assert len(set(labels)) == 2


def test_eigengap_is_relative_and_at_least_two():
    # the absolute gaps grow along the spectrum (0.069 after the 4th); relative to where they land the jump
    # after the 2nd (0.001 -> 0.046) is the one that counts
    assert eigengap([0, 0.001, 0.046, 0.052, 0.121, 0.135], 5) == 2
    assert eigengap([0, 0, 1e-16, 0.5, 0.6, 0.7], 5) == 3
    assert eigengap([0, 0.3, 0.31, 0.32], 3) == 2  # no groups: still the best split in two


def test_prepare_map_normalizes_and_downsizes():
    rel = np.zeros((3, 64, 64))
    rel[:, :8, :8] = 2.0
    rel[0, 40:, 40:] = -1.0
    m = prepare_map(rel, 8)
    assert m.shape == (8, 8)
    np.testing.assert_allclose(np.abs(m).sum(), 1.0, rtol=1e-6)
    assert m[0, 0] > 0 and m[7, 7] < 0 and m[3, 3] == 0
    np.testing.assert_allclose(prepare_map(rel, 8, "abs")[7, 7] > 0, True)
    assert not prepare_map(np.zeros((4, 4)), 2).any()
    with pytest.raises(InputError):
        prepare_map(rel, 8, "max")


# --------------------------------------------------------------------------------- a planted shortcut
def _shortcut_net():
    """Class 0's logit is the mean of a red detector (weight 3) plus a green detector; class 1 a small bias.
    Green objects make class 0; a red patch makes it more strongly, wherever the green is."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, :, 0, 0] = [1, -1, -1]   # red
    w[1, :, 0, 0] = [-1, 1, -1]   # green
    fc = np.array([[3.0, 1.0], [0.0, 0.0]], np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "shortcut", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, S, S])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
                           numpy_helper.from_array(np.array([0.0, 0.05], np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 13)])


def _picture(rng, green=True, red=False):
    a = 0.4 + 0.05 * rng.random((S, S, 3))
    if green:
        y, x = 6 + rng.integers(-1, 2), 6 + rng.integers(-1, 2)
        a[y:y + 4, x:x + 4] = [0.1, 1.0, 0.1]
    if red:
        a[0:4, 0:4] = [1.0, 0.1, 0.1]
    return (np.clip(a, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory):
    root = tmp_path_factory.mktemp("spray")
    path = root / "net.onnx"
    onnx.save(_shortcut_net(), str(path))
    rng = np.random.default_rng(1)
    flat, labelled = root / "flat", root / "labelled"
    for d in (flat, labelled / "0", labelled / "1"):
        d.mkdir(parents=True)
    patched = []
    for i in range(16):
        pic = _picture(rng, red=i % 2 == 0)
        name = f"img{i:02d}.png"
        Image.fromarray(pic).save(flat / name)
        Image.fromarray(pic).save(labelled / "0" / name)
        if i % 2 == 0:
            patched.append(name)
    for i in range(4):  # class 1: nothing to see
        pic = _picture(rng, green=False)
        Image.fromarray(pic).save(flat / f"empty{i}.png")
        Image.fromarray(pic).save(labelled / "1" / f"empty{i}.png")
    (flat / "broken.png").write_bytes(b"not a png")
    return path, flat, labelled, patched


def test_the_net_predicts_as_built(shortcut):
    """onnxruntime's own forward pass: every picture with green or red is class 0, the empty ones class 1."""
    path, flat, _, _ = shortcut
    sess = ort_session(onnx.load(str(path)))
    for f in sorted(flat.glob("*.png")):
        if f.name == "broken.png":
            continue
        x = (np.asarray(Image.open(f).convert("RGB"), np.float32) / 255).transpose(2, 0, 1)[None]
        assert sess.run(None, {"input": x})[0].argmax() == (1 if f.name.startswith("empty") else 0)


def test_shortcut_images_form_their_own_cluster(shortcut, tmp_path):
    path, flat, _, patched = shortcut
    model = fv.load(path, preprocess="raw")
    failed = {}
    r = clusters(model, [flat], target=0, method="lrp-epsilon", size=8, failed=failed, quiet=True)
    assert r.select == "predicted" and r.left_out == 4  # the empty pictures are class 1
    assert list(failed) == [str(flat / "broken.png")] and r.failed == failed
    assert sorted(r.names) == sorted(f"img{i:02d}.png" for i in range(16))
    groups = [set(c.members) for c in r.clusters]
    assert set(patched) in groups  # exactly the patched images, alone
    assert r.n_clusters == 2 and sum(c.size for c in r.clusters) == 16
    shortcut_cluster = r.clusters[groups.index(set(patched))]
    corner = shortcut_cluster.mean[:2, :2].sum()
    assert corner > 0.5  # its mean map sits on the patch
    assert r.embedding.shape == (16, 2) and len(r.eigenvalues) >= 3
    # written: json, one picture and mean per cluster, the embedding; never over a file without overwrite
    out = tmp_path / "out"
    written = write_clusters(r, out)
    data = json.loads((out / "clusters.json").read_text())
    assert {frozenset(c["members"]) for c in data["clusters"]} == {frozenset(g) for g in groups}
    assert data["target"] == 0 and data["failed"] == {str(k): v for k, v in failed.items()}
    for c in data["clusters"]:
        np.testing.assert_allclose(np.load(out / c["mean"]), r.clusters[c["index"]].mean)
        assert Image.open(out / f"cluster_{c['index']:02d}.png").size[0] > 100
    assert Image.open(out / "embedding.png").mode == "RGB" and all(p.exists() for p in written)
    with pytest.raises(InputError, match="exists"):
        write_clusters(r, out)
    write_clusters(r, out, overwrite=True)


def test_labelled_folder_selects_by_folder(shortcut):
    path, _, labelled, patched = shortcut
    model = fv.load(path, preprocess="raw")
    assert folder_labels(model, [labelled]) == {str(f): int(f.parent.name) for f in labelled.rglob("*.png")}
    r = clusters(model, [labelled], target=0, size=8, quiet=True)
    assert r.select == "labelled" and len(r.names) == 16 and set(r.classes) == {0}
    assert {f"0__{p}" for p in patched} in [set(c.members) for c in r.clusters]
    everything = clusters(model, [labelled], size=8, quiet=True, select="labelled")
    assert sorted(set(everything.classes)) == [0, 1] and len(everything.names) == 20
    with pytest.raises(InputError, match="labelled"):
        clusters(model, [labelled / "0"], select="labelled", quiet=True)
    with pytest.raises(InputError, match="none of"):
        clusters(model, [labelled / "1"], target=0, quiet=True)


def test_two_workers_give_the_same_clusters(shortcut):
    path, flat, _, patched = shortcut
    model = fv.load(path, preprocess="raw")
    one = clusters(model, [flat], target=0, size=8, batch=3, quiet=True, failed={})
    two = clusters(model, [flat], target=0, size=8, batch=3, workers=2, quiet=True, failed={},
                   load_options={"preprocess": "raw"})
    assert one.names == two.names
    np.testing.assert_allclose(one.maps, two.maps, atol=1e-6)
    assert [set(c.members) for c in one.clusters] == [set(c.members) for c in two.clusters]


def test_a_state_file_resumes(shortcut, tmp_path, monkeypatch):
    import shutil

    from fvgraph.methods import spray
    path, flat, _, patched = shortcut
    folder = tmp_path / "imgs"
    shutil.copytree(flat, folder)
    model = fv.load(path, preprocess="raw")
    state = tmp_path / "state.npz"
    first = clusters(model, [folder], target=0, size=8, quiet=True, failed={}, state_file=state)
    assert len(np.load(state)["names"]) == 20  # every readable image, the class-1 ones too
    calls = []
    real = spray._maps_job
    monkeypatch.setattr(spray, "_maps_job", lambda m, job: calls.append(job[0]) or real(m, job))
    again = clusters(model, [folder], target=0, size=8, quiet=True, failed={}, state_file=state)
    assert calls == [[(str(folder / "broken.png"), "broken.png", 0)]]  # only the unreadable one again
    assert again.names == first.names and [set(c.members) for c in again.clusters] == \
        [set(c.members) for c in first.clusters]
    np.testing.assert_allclose(again.maps, first.maps)
    # an edited image is explained again; other options start over
    Image.fromarray(_picture(np.random.default_rng(9), red=True)).save(folder / "img01.png")
    calls.clear()
    clusters(model, [folder], target=0, size=8, quiet=True, failed={}, state_file=state)
    assert sorted(p for job in calls for p, _, _ in job) == sorted([str(folder / "broken.png"),
                                                                     str(folder / "img01.png")])
    calls.clear()
    clusters(model, [folder], target=0, size=4, quiet=True, failed={}, state_file=state)
    assert sum(len(job) for job in calls) == 21
