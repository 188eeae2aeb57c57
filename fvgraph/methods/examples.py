"""What a unit responds to in real images: dataset examples (Zeiler & Fergus 2013, Fig. 2) and the paper's
patch replacement (Long et al. 2014).

- `top_examples`: images stream through the model (in batches, on N processes or Ray, resumable); each image's
  activations at a layer reduce to a running top-k per channel of (score = the channel's largest activation,
  image, position), with the receptive field of that position as a box in the image's input pixels
  (fvgraph.receptive). Ties go to the image seen first. With by="relevance" (relevance maximization, RelMax:
  Achtibat et al. 2023) the score is instead the channel's relevance to a target class (its relevance at the
  layer summed over space, fvgraph.methods.concepts.layer_relevance) and the position is where that relevance
  is largest: the images in which the channel matters most to the decision, not the ones that excite it most.
- `example_pictures`: per channel, the top patches and beside each its deconvnet and guided backpropagation
  projection from that one activation (the figure's layout).
- `replace_patches`: a bank of feature vectors (every position of a layer, over a folder; built once and
  cached) and an image rebuilt from the receptive-field patches of each position's nearest neighbour (cosine)
  in the bank: what the layer treats as "the same".
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tokens import as_map_array, map_view


@dataclass
class Example:
    image: str
    score: float
    position: tuple     # (y, x) in the layer's grid
    box: list           # [y0, x0, y1, x1] in the image's input pixels


def _layer_maps(model, x, value):
    """The layer's activations as maps (N, C, h, w) (tokens and channels-last read through their map view;
    a (N, C) vector as (N, C, 1, 1))."""
    return _as_maps(model.run(x, outputs=[value])[value], x, value)


def _as_maps(a, x, value):
    """An array of the layer's layout (its activations or its relevance) as maps (N, C, h, w)."""
    if a.ndim == 2:
        return a[:, :, None, None]
    view = map_view((None,) + a.shape[1:], x.shape[2:])
    if view is None:
        raise InputError(f"layer {value!r} of shape {a.shape} is not a map of channels")
    return as_map_array(a, view)


def channel_maxima(model, x, value, channels):
    """(scores (N, len(channels)), positions (N, len(channels), 2)): each channel's largest activation per image
    and where it is (the first such position in row-major order); `channels` as `resolve_channels` checked them."""
    maps = _layer_maps(model, x, value)
    flat = maps[:, channels].reshape(len(x), len(channels), -1)
    where = flat.argmax(axis=2)
    scores = np.take_along_axis(flat, where[..., None], axis=2)[..., 0]
    return scores.astype(np.float64), np.stack(np.unravel_index(where, maps.shape[2:]), axis=-1)


def channel_relevance(model, x, value, channels, ranking):
    """(scores (N, len(channels)), positions (N, len(channels), 2)): each channel's relevance to the target per
    image (summed over space) and where it is largest; ranking: {"method", "target", "options"}."""
    from .concepts import layer_relevance
    rel, _ = layer_relevance(model, x, ranking["method"], value, ranking["target"], **ranking["options"])
    maps = _as_maps(np.asarray(rel), x, value)
    flat = maps[:, channels].reshape(len(x), len(channels), -1).astype(np.float64)
    where = flat.argmax(axis=2)
    return flat.sum(axis=2), np.stack(np.unravel_index(where, maps.shape[2:]), axis=-1)


def _scores(model, x, value, channels, ranking=None):
    return channel_maxima(model, x, value, channels) if ranking is None else \
        channel_relevance(model, x, value, channels, ranking)


def _readable_batch(model, paths):
    """(inputs of the readable images or None, their paths, {path: why not} for the others): one bad file
    is skipped, never the batch."""
    from ..image import load_image
    spec = model.preprocessing()
    xs, ok, failed = [], [], {}
    for p in paths:
        try:
            xs.append(load_image(p, spec))
            ok.append(p)
        except InputError as e:
            failed[p] = str(e)
    return (np.concatenate(xs) if xs else None), ok, failed


def _maxima_job(model, job):
    """A worker's share: (readable paths, their channel maxima and positions, {unreadable path: reason})."""
    paths, value, channels = job[:3]
    ranking = job[3] if len(job) > 3 else None
    x, ok, failed = _readable_batch(model, paths)
    if x is None:
        return ok, np.zeros((0, len(channels))), np.zeros((0, len(channels), 2), np.int64), failed
    scores, positions = _scores(model, x, value, channels, ranking)
    return ok, scores, positions, failed


def _hashes(files) -> dict:
    """{file: sha256 of its bytes, or None when it cannot be read}."""
    from ..files import sha256_file
    out = {}
    for f in files:
        try:
            out[f] = sha256_file(f)
        except OSError:
            out[f] = None
    return out


def _model_sha(model, model_path=None):
    from ..files import sha256_file
    path = model_path or model.source
    return sha256_file(path) if path and os.path.isfile(path) else None


def _report_failed(failed, sink):
    """Into the caller's dict, or one warning line when it gave none."""
    if not failed:
        return
    if sink is not None:
        sink.update(failed)
        return
    import warnings

    from ..errors import FvGraphWarning
    from ..files import failure_line
    warnings.warn(failure_line(failed), FvGraphWarning, stacklevel=3)


class TopK:
    """A running top-k per channel over (score, arrival order, image, position)."""

    def __init__(self, channels, k):
        self.channels, self.k = list(channels), int(k)
        self.rows = {c: [] for c in self.channels}

    def add(self, order, path, scores, positions):
        for j, c in enumerate(self.channels):
            self.rows[c].append((float(scores[j]), order, path, tuple(int(v) for v in positions[j])))
            self.rows[c].sort(key=lambda r: (-r[0], r[1]))
            del self.rows[c][self.k:]

    def state(self):
        return {str(c): [list(r[:3]) + [list(r[3])] for r in rows] for c, rows in self.rows.items()}

    @classmethod
    def restore(cls, channels, k, state):
        t = cls(channels, k)
        for c in t.channels:
            t.rows[c] = [(r[0], r[1], r[2], tuple(r[3])) for r in state.get(str(c), [])]
        return t


def resolve_channels(model, value, channels, probe):
    """The channels asked for (all by default), checked against the layer's count at the probe input."""
    n = _layer_maps(model, probe, value).shape[1]
    if channels is None:
        return list(range(n))
    channels = [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise InputError(f"channel(s) {bad} out of range: layer {value!r} has {n} channels")
    return channels


def top_examples(model, images, layer, channels=None, k=9, batch=16, workers=1, ray_address=None, state_file=None,
                 model_path=None, load_options=None, quiet=None, failed=None, by="activation", target=None,
                 method="lrp-epsilon", method_options=None):
    """{channel: [Example, ...]} (best first) over `images` (paths, folders, or an (N, C, H, W) array, whose
    images are named by index). by: "activation" (the channel's largest activation) or "relevance" (RelMax:
    its relevance to class `target`, None = each image's predicted class, by the reverse-pass `method` with
    `method_options`; the score is the relevance summed over space, the position where it is largest).
    state_file: where the running top-k is kept (atomically, after a batch whenever the last save took under a
    tenth of the time since), with the model's sha256, the options (the ranking too) and each counted image's
    content hash, so that an interrupted run resumes; a state of another model, other options, or an image since
    changed or gone is started over, never mixed in (a model without a file is never resumed). Unreadable images
    are skipped: `failed` (a dict) receives {image: reason}, else one warning lists them."""
    import time

    from ..batch import image_files, map_jobs
    from ..receptive import WHOLE, receptive_field
    from .reconstruction import Progress
    value = model.resolve(layer)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    ranking = _ranking(model, by, target, method, method_options)
    bad = {}
    if isinstance(images, np.ndarray):
        x = model.feeds(images)[model.graph.input_names()[0]]
        probe = x[:1]
        chans = resolve_channels(model, value, channels, probe)
        top = TopK(chans, k)
        for i in range(0, len(x), batch):
            scores, positions = _scores(model, x[i:i + batch], value, chans, ranking)
            for j in range(len(scores)):
                top.add(i + j, str(i + j), scores[j], positions[j])
    else:
        files = [str(f) for f, _ in image_files(images)]
        if not files:
            raise InputError(f"no images found in {', '.join(map(str, images))}")
        probe = None
        for f in files:  # the first readable image sets the channels and the input size
            probe, _, why = _readable_batch(model, [f])
            if probe is not None:
                break
            bad.update(why)
        if probe is None:
            from ..files import failure_line
            raise InputError(f"no readable images in {', '.join(map(str, images))}: {failure_line(bad)}")
        chans = resolve_channels(model, value, channels, probe)
        hashes = _hashes(files)
        header = {"model_sha256": _model_sha(model, model_path), "layer": value, "channels": chans, "k": k,
                  "preprocess": model.preprocessing()}
        if ranking is not None:  # a state ranked by activation is never mixed into one by relevance
            header["ranking"] = json.loads(json.dumps(ranking, default=str))
        top, done = TopK(chans, k), {}
        if state_file and Path(state_file).exists() and header["model_sha256"] is not None:
            try:
                saved = json.loads(Path(state_file).read_text())
            except (OSError, ValueError):
                saved = {}
            if all(saved.get(key) == v for key, v in header.items()) and isinstance(saved.get("done"), dict) \
                    and all(hashes.get(f) == h for f, h in saved["done"].items()):
                top, done = TopK.restore(chans, k, saved["top"]), dict(saved["done"])
        order = {f: i for i, f in enumerate(files)}
        todo = [f for f in files if f not in done]  # unreadable ones again: a fixed file is counted
        jobs = [(todo[i:i + batch], value, chans) + ((ranking,) if ranking is not None else ())
                for i in range(0, len(todo), batch)]
        bar = Progress(len(todo), "examples", quiet)
        count, next_save = 0, 0.0
        bad = {}

        def save():  # not again before ten times its duration has passed: a tenth of the time at most
            t0 = time.monotonic()
            _write_json(state_file, {**header, "done": done, "failed": bad, "top": top.state()})
            return time.monotonic() + 10 * (time.monotonic() - t0)
        for paths, scores, positions, why in map_jobs(model_path or model.source, jobs, _maxima_job, workers,
                                                       ray_address, load_options) if (workers > 1 or ray_address) \
                else (_maxima_job(model, job) for job in jobs):
            for j, p in enumerate(paths):
                top.add(order[p], p, scores[j], positions[j])
                done[p] = hashes[p]
            bad.update(why)
            count += len(paths) + len(why)
            if state_file and time.monotonic() >= next_save:
                next_save = save()
            bar.update(count)
        if state_file:
            save()
    _report_failed(bad, failed)
    hw = probe.shape[2:]
    field = receptive_field(model, value, model.shape_table(model.feeds(probe)))
    out = {}
    for c, rows in top.rows.items():
        out[c] = [Example(path, score, pos, [0, 0, int(hw[0]), int(hw[1])] if field == WHOLE
                          else field.box(pos[0], pos[1], hw)) for score, _, path, pos in rows]
    return out


def _ranking(model, by, target, method, options):
    """None (by activation) or {"method", "target", "options"} for RelMax, checked once here (one line)."""
    if by == "activation":
        return None
    if by != "relevance":
        raise InputError(f"by must be 'activation' or 'relevance', got {by!r}")
    if target is not None and not (isinstance(target, (int, np.integer)) and not isinstance(target, bool)):
        raise InputError(f"relevance ranking needs one class index as target (or None: the predicted class), "
                         f"got {target!r}")
    from .concepts import rule_method
    m, _ = rule_method(model, method, dict(options or {}))
    return {"method": m.name, "target": None if target is None else int(target), "options": dict(options or {})}


def _write_json(path, data):
    from ..files import write_text
    write_text(path, json.dumps(data))


def examples_json(value, examples) -> dict:
    return {"layer": value, "channels": {str(c): [{"image": e.image, "score": e.score, "box": e.box}
                                                  for e in rows] for c, rows in examples.items()}}


def example_pictures(model, examples, layer, size=96):
    """{channel: picture (H, W, 3) uint8}: per example a row of the patch, its deconvnet projection and its
    guided backpropagation projection from the channel's top activation (Zeiler & Fergus, Fig. 2)."""
    from PIL import Image

    from ..explanation import Unit
    from ..image import load_image, read_rgb, resize_crop
    from ..render import picture
    value = model.resolve(layer)
    spec = model.preprocessing()
    pictures = {}
    for c, rows in examples.items():
        tiles = []
        for e in rows:
            x = load_image(e.image, spec)
            shown = resize_crop(read_rgb(e.image), spec)
            unit = Unit(value, c, e.position[0], e.position[1]) if _has_grid(model, x, value) else Unit(value, c)
            row = [shown]
            for method in ("deconvnet", "guided"):
                rel = model.explain(x, method, target=unit).relevance[0]
                row.append(picture(rel, "rgb"))
            y0, x0, y1, x1 = e.box
            crops = [np.asarray(Image.fromarray(np.ascontiguousarray(r[y0:y1, x0:x1])).resize((size, size)))
                     for r in row]
            tiles.append(np.concatenate(crops, axis=1))
        pictures[c] = np.concatenate(tiles, axis=0) if tiles else None
    return pictures


def _has_grid(model, x, value):
    a = model.run(x, outputs=[value])[value]
    return a.ndim == 4


# ----------------------------------------------------------------------------------------------- patch bank
def build_bank(model, images, layer, cache_dir=None, batch=16, quiet=None, failed=None):
    """Feature vectors of every position of `layer` over `images` (unit length), with (image, y, x) for each;
    cached in cache_dir under a key of the model's and the images' content hashes (a retrained model or an
    edited image of the same size and date is a new bank), the layer and the preprocessing; a model without
    a file is not cached. Unreadable images are skipped: `failed` (a dict) receives {image: reason}, else
    one warning lists them. The cache folder is created private and not used (one warning) when another user
    could write it; a cached bank is used only when its key, shapes and sha256 check out, else it is rebuilt."""
    from ..batch import image_files
    from ..files import clean_parts, write_atomic
    from .reconstruction import Progress
    value = model.resolve(layer)
    files = [str(f) for f, _ in image_files(images)]
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, images))}")
    model_sha = _model_sha(model)
    cache = key = None
    if cache_dir and model_sha is not None and _bank_folder(Path(cache_dir)):
        key = hashlib.sha256(json.dumps([model_sha, value, model.preprocessing(), sorted(_hashes(files).items())],
                                        sort_keys=True, default=str).encode()).hexdigest()[:24]
        cache = Path(cache_dir) / f"bank-{key}.npz"
        clean_parts(cache_dir, older_than=3600)  # a killed build's leftovers (others may be writing now)
    if cache is not None and cache.exists():
        loaded = _load_bank(cache, key, files)
        if loaded is not None:
            vectors, where, good, bad = loaded
            _report_failed(bad, failed)
            return vectors, where, good
    vectors, where, good, bad = [], [], [], {}
    bar = Progress(len(files), "bank", quiet)
    for i in range(0, len(files), batch):
        x, ok, why = _readable_batch(model, files[i:i + batch])
        bad.update(why)
        if x is not None:
            maps = _layer_maps(model, x, value).astype(np.float32)
            n, c, h, w = maps.shape
            v = maps.transpose(0, 2, 3, 1).reshape(-1, c)
            vectors.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
            ii, yy, xx = np.meshgrid(np.arange(len(good), len(good) + n), np.arange(h), np.arange(w), indexing="ij")
            where.append(np.stack([ii.ravel(), yy.ravel(), xx.ravel()], axis=1))
            good += ok
        bar.update(min(i + batch, len(files)))
    if not good:
        from ..files import failure_line
        raise InputError(f"no readable images in {', '.join(map(str, images))}: {failure_line(bad)}")
    vectors, where = np.concatenate(vectors), np.concatenate(where)
    if cache is not None:
        arrays = {"vectors": vectors, "where": where.astype(np.int64), "files": np.array(good, dtype=str),
                  "failed": np.array(json.dumps(bad)), "key": np.array(key)}

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, digest=np.array(_bank_digest(arrays)), **arrays)
        write_atomic(cache, write)
    _report_failed(bad, failed)
    return vectors, where, good


def _bank_folder(folder: Path) -> bool:
    """Whether the bank cache may be used: the folder created private (fvgraph.cache.private_dir) and the
    user's own (fvgraph.cache.untrusted); when not, one warning per folder (diskcache's) and no cache."""
    from ..cache import private_dir, untrusted
    from ..diskcache import _warn_once
    try:
        private_dir(folder)
        reason = untrusted(folder)
    except OSError as e:
        reason = f"cannot be created ({e.strerror or e})"
    if reason is not None:  # keyed apart from diskcache's own warning about the same folder
        _warn_once(f"bank:{folder}", f"the cache folder {folder} {reason}: fvgraph does not use its cache of patch "
                                     "banks (the bank is built anew, and not kept)")
    return reason is None


def _bank_digest(arrays: dict) -> str:
    """sha256 over the bank's arrays (name, dtype, shape, bytes): what a cached bank is checked against."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load_bank(path: Path, key: str, files) -> tuple | None:
    """(vectors, where, files, failed) of a cached bank, or None (with one warning line) when it is damaged,
    truncated, of another key or malformed: then it is rebuilt over."""
    import warnings
    import zipfile

    from ..errors import FvGraphWarning
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in ("vectors", "where", "files", "failed", "key")}
            digest = str(z["digest"])
        problem = _bank_problem(arrays, digest, key, files)
        bad = json.loads(str(arrays["failed"])) if problem is None else None
        if problem is None and not (isinstance(bad, dict) and all(isinstance(k, str) for k in bad)):
            problem = "lists its unreadable images wrongly"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = f"cannot be read ({type(e).__name__}: {e})"
    if problem is not None:
        warnings.warn(FvGraphWarning(f"the cached patch bank {path} {problem}: it is not used, the bank is "
                                     "rebuilt"), stacklevel=3)
        return None
    return arrays["vectors"], arrays["where"], [str(f) for f in arrays["files"]], bad


def _bank_problem(arrays, digest, key, files) -> str | None:
    """Why a cached bank's arrays are not a bank of this key over these files (None: they are)."""
    v, where, names = arrays["vectors"], arrays["where"], arrays["files"]
    if digest != _bank_digest(arrays):
        return "does not match its sha256 (damaged)"
    if str(arrays["key"]) != key:
        return "is another bank's (its key differs)"
    if v.ndim != 2 or v.dtype != np.float32 or not len(v) or not np.isfinite(v).all():
        return f"holds vectors of shape {v.shape} ({v.dtype}), not finite float32 rows"
    if where.shape != (len(v), 3) or where.dtype.kind != "i" or (where < 0).any():
        return f"holds positions of shape {where.shape}, not one (image, y, x) per vector"
    if names.ndim != 1 or names.dtype.kind != "U" or not set(names.tolist()) <= set(files) \
            or where[:, 0].max() >= len(names):
        return "names images that are not among the bank's"
    return None


def _cell(field, y, x, hw, grid):
    """The centre of a position's receptive field, one stride wide ([y0, x0, y1, x1]): the part of the image
    that position stands for (neighbouring fields overlap; their centres tile the image)."""
    from ..receptive import WHOLE
    if field == WHOLE:  # no geometry: the grid cell of the position
        ch, cw = hw[0] / grid[0], hw[1] / grid[1]
        return [int(y * ch), int(x * cw), int((y + 1) * ch), int((x + 1) * cw)]
    cy = field.start[0] + y * field.jump[0] + field.size[0] / 2
    cx = field.start[1] + x * field.jump[1] + field.size[1] / 2
    jy, jx = max(1, field.jump[0]), max(1, field.jump[1])
    return [int(max(0, round(cy - jy / 2))), int(max(0, round(cx - jx / 2))),
            int(min(hw[0], round(cy + jy / 2))), int(min(hw[1], round(cx + jx / 2)))]


def replace_patches(model, image, bank, layer):
    """The image rebuilt from its nearest neighbours' patches (cosine, at `layer`): each position's receptive
    field centre (one stride wide) is filled with the centre of its neighbour's field. Returns (picture
    (H, W, 3) uint8, the neighbours [(file, y, x, similarity)] per position in row-major order)."""
    from ..image import load_image, read_rgb, resize_crop
    from ..receptive import receptive_field
    vectors, where, files = bank
    value = model.resolve(layer)
    spec = model.preprocessing()
    x = load_image(image, spec)
    maps = _layer_maps(model, x, value)[0]
    c, h, w = maps.shape
    q = maps.transpose(1, 2, 0).reshape(-1, c)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    own = [i for i, f in enumerate(files) if os.path.abspath(f) == os.path.abspath(str(image))]
    sims = q @ vectors.T
    if own:  # not the image itself
        sims[:, np.isin(where[:, 0], own)] = -np.inf
    best = sims.argmax(axis=1)
    hw = x.shape[2:]
    table = model.shape_table(model.feeds(x))
    field = receptive_field(model, value, table)
    acc = np.zeros(tuple(hw) + (3,))
    weight = np.zeros(tuple(hw) + (1,))
    shown = {}
    neighbours = []
    for pos, b in enumerate(best):
        y, xq = divmod(pos, w)
        i, yy, xx = (int(v) for v in where[b])
        if i not in shown:
            shown[i] = resize_crop(read_rgb(files[i]), spec).astype(np.float64)
        src, dst = _cell(field, yy, xx, hw, (h, w)), _cell(field, y, xq, hw, (h, w))
        sh, sw = min(src[2] - src[0], dst[2] - dst[0]), min(src[3] - src[1], dst[3] - dst[1])
        acc[dst[0]:dst[0] + sh, dst[1]:dst[1] + sw] += shown[i][src[0]:src[0] + sh, src[1]:src[1] + sw]
        weight[dst[0]:dst[0] + sh, dst[1]:dst[1] + sw] += 1
        neighbours.append((files[i], yy, xx, float(sims[pos, b])))
    pic = np.where(weight > 0, acc / np.maximum(weight, 1), 0)
    return np.clip(np.round(pic), 0, 255).astype(np.uint8), neighbours

