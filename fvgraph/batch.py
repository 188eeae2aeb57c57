"""Explaining many images: a folder (a CI data set, an audit) streamed one image at a time with bounded
memory, resumable, on N local processes or on Ray.

Each worker loads the model once and writes, per image and method, `NAME_METHOD.png`, `NAME_METHOD_abs.png`
(reverse-pass methods) and `NAME_METHOD.npy`, where NAME is the image's path relative to the folder with
'/' turned into '__' and its extension kept (`sub__cat.jpg_guided.png`); a name that could be read two ways
(a part holding '__', or starting or ending with '_') or that another input shares gets '~' and a hash of the
path, so two images never write one map. Files are written atomically (fvgraph.files); the parent keeps the
run's state (fvgraph.files.RunState) for every path, workers and Ray alike: a resume skips what it finished,
a file the run did not write is never replaced without --overwrite, and an unreadable image is skipped and
listed while the rest go on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, refuse_overwrite
from .files import RunState, safe_part, sha256_file, unique_names, write_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def _folder_name(parts) -> tuple[str, bool]:
    """(the parts joined by '__', whether that join could be read two ways or was changed to be a name)."""
    safe = [safe_part(p) for p in parts]
    ambiguous = any(s != p or "__" in p or p.startswith("_") or p.endswith("_") for s, p in zip(safe, parts))
    name = "__".join(safe)
    if len(name) > 180:
        name, ambiguous = name[:160], True
    return name, ambiguous


def image_files(paths) -> list[tuple[Path, str]]:
    """(file, output name) for image files and every image inside given folders (recursively, sorted); the
    names are distinct (see the module's docstring)."""
    files, names, force = [], [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            for f in found:
                name, ambiguous = _folder_name(f.relative_to(p).parts)
                files.append(f), names.append(name), force.append(ambiguous)
        else:
            name, ambiguous = _folder_name([p.name])
            files.append(p), names.append(name), force.append(ambiguous)
    names = unique_names(names, [str(f) for f in files], force)
    return list(zip(files, names))


def method_stem(method) -> str:
    """A method as a file-name part: a rules file by its stem, else its whole text (parameters included,
    so lrp-epsilon:epsilon=0.001 and =0.002 stay apart)."""
    text = str(method)
    if text.lower().endswith(".toml"):
        text = Path(text).stem
    return safe_part(text.replace(":", "_").replace("=", "-").replace(",", "_"))


def method_stems(methods) -> list[str]:
    return unique_names([method_stem(m) for m in methods], [str(m) for m in methods])


def planned_files(name, stems) -> list[str]:
    """Every file an image's maps may take (the _abs picture only for reverse-pass methods)."""
    return [f"{name}_{s}{tail}" for s in stems for tail in (".png", "_abs.png", ".npy")]


def read_input(model, path):
    """(model input (1, C, H, W), the picture as shown (H, W, 3)), from one decode; an InputError names an
    unreadable file."""
    from .image import load_with_picture
    return load_with_picture(path, model.preprocessing())


def explain_to_files(model, x, shown, name, methods, out, target=None, params=None, overwrite=False, stems=None,
                     layer=None, channel=None):
    """Each method's maps of one input, written as NAME_STEM.png/_abs.png/.npy. Returns (picture row, class
    scores from a method's own pass or None, the file names written)."""
    from PIL import Image

    from .image import to_display
    from .methods.registry import lookup, parse_spec, run_spec
    from .render import picture
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = stems or method_stems(methods)
    row, scores, written = [shown], None, []
    for m, s in zip(methods, stems):
        e = run_spec(model, x, m, target, params, layer=layer, channel=channel)
        method = lookup(parse_spec(m)[0])
        of_classes = (target is None or isinstance(target, (int, np.integer))) and (  # a CAM's --layer is no unit
            layer is None or (method.layer and channel is None))
        if scores is None and of_classes and e.output is not None and np.ndim(e.output) >= 2 \
                and all(d == 1 for d in np.shape(e.output)[2:]):
            scores = np.asarray(e.output)[0]
        pic = to_display(e.relevance[0], model.preprocessing()) if method.kind == "image" else \
            picture(e.relevance[0], method.kind, image=shown)
        row.append(pic)
        stem = f"{name}_{s}"
        files = {out / f"{stem}.png": pic}
        if e.relevance.ndim == 4 and method.kind != "image":
            files[out / f"{stem}_abs.png"] = picture(e.relevance[0], "abs")
        for f in list(files) + [out / f"{stem}.npy"]:
            refuse_overwrite(f, overwrite, other_out=True)
        for f, pic_ in files.items():
            write_atomic(f, lambda t, pic_=pic_: Image.fromarray(pic_).save(t, format="PNG"))
        write_atomic(out / f"{stem}.npy", lambda t, a=e.relevance[0]: np.save(open(t, "wb"), a))
        written += [f.name for f in files] + [f"{stem}.npy"]
    return row, scores, written


def write_explanations(model, path, name, methods, out, target=None, params=None, overwrite=False, layer=None,
                       channel=None):
    """Explain one image with each method and write its pictures and arrays. Returns (picture row, (file
    name, class, label, probability)): the class of the explained output, or (None, what was explained,
    None) for an output target (an element or region of any output is not a class)."""
    from .explanation import OutputTarget
    from .methods.attribution import output_value, prediction
    x, shown = read_input(model, path)
    row, scores, _ = explain_to_files(model, x, shown, name, methods, out, target, params, overwrite,
                                      layer=layer, channel=channel)
    if isinstance(target, OutputTarget):
        value = output_value(model, target)
        shape = tuple(np.shape(model.run(x, outputs=[value])[value])[1:])
        what = f"element {tuple(int(i) for i in np.ravel(target.index))}" if target.index is not None \
            else "a weighted region"
        return row, (Path(path).name, None, f"explained {what} of output {shape} {value!r}", None)
    k, label, prob = prediction(model, scores if scores is not None else model.run(x)[0])
    return row, (Path(path).name, k, label, prob)


# --------------------------------------------------------------------------- many images
_WORKER = {}


def _worker_init(model_path, options=None):
    from .model import load
    _WORKER["model"] = load(model_path, **(options or {}))


def _ensure_model(model_path, options=None):
    if "model" not in _WORKER:
        _worker_init(model_path, options)


def _worker_call(task):
    func, job = task
    return func(_WORKER["model"], job)


def map_jobs(model_path, jobs, func, workers=1, ray_address=None, load_options=None):
    """func(model, job) for every job, yielded as each finishes (in any order), on this process, on `workers`
    local processes or on a Ray cluster; each worker loads the model once (fv.load with load_options). func
    must be a module-level function (it travels to the workers by name)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if ray_address:
        yield from _run_on_ray(model_path, jobs, func, ray_address, load_options)
    elif workers == 1:
        _worker_init(model_path, load_options)
        for job in jobs:
            yield func(_WORKER["model"], job)
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers, initializer=_worker_init,
                                          initargs=(str(model_path), load_options)) as pool:
            yield from pool.imap_unordered(_worker_call, [(func, job) for job in jobs])


def _explain_one(model, job):
    """A worker's image: (name, files written, None) or (name, [], why the image could not be read)."""
    path, name, methods, stems, out, target, params, layer, channel = job
    try:
        x, shown = read_input(model, path)
    except InputError as e:
        return name, [], str(e)
    _, _, written = explain_to_files(model, x, shown, name, methods, out, target, params, True, stems, layer, channel)
    return name, written, None


def _inside(path, folder) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def _content_hash(path):
    try:
        return sha256_file(path)
    except OSError:
        return None  # unreadable: the worker says why


def explain_folder(model_path, inputs, methods, out, target=None, params=None, workers=1, ray_address=None,
                   overwrite=False, quiet=None, load_options=None, failed=None, layer=None, channel=None):
    """Explain every image under `inputs`; returns (explained, skipped as already done). `failed`, a dict,
    receives {image: reason} for images that could not be read (skipped; the others go on). load_options:
    fv.load's engine, device and threads for every worker; its preprocess and labels are part of the run's
    options. Refuses (InputError) a file in `out` that no run of these options and this model wrote."""
    from .methods.reconstruction import Progress
    out = Path(out)
    images = [(f, n) for f, n in image_files(inputs) if not _inside(f, out)]  # never our own maps as inputs
    if not images:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    lo = load_options or {}
    stems = method_stems(methods)
    options = {"methods": list(methods), "target": target, "params": params or {}, "layer": layer,
               "channel": channel, "preprocess": lo.get("preprocess"), "labels": lo.get("labels")}
    state = RunState(out, "explain", model_path, options, overwrite)
    state.claim([f for _, n in images for f in planned_files(n, stems)])
    hashes = {n: _content_hash(f) for f, n in images}
    todo = [(f, n) for f, n in images if overwrite or hashes[n] is None or not state.is_done(n, hashes[n])]
    skipped = len(images) - len(todo)
    paths = {n: str(f) for f, n in todo}
    jobs = [(str(f), n, list(methods), stems, str(out), target, params or {}, layer, channel) for f, n in todo]
    bar = Progress(len(jobs), "explain", quiet)
    bad, explained = {}, 0
    try:
        for k, (name, written, error) in enumerate(map_jobs(model_path, jobs, _explain_one, workers, ray_address,
                                                             load_options), 1):
            if error is None:
                state.mark_done(name, hashes[name], written)
                explained += 1
            else:
                state.mark_failed(name, error)
                bad[paths[name]] = error
            bar.update(k)
        if not bad:
            state.complete = True
    finally:
        state.save()
    if failed is not None:
        failed.update(bad)
    return explained, skipped


def _run_on_ray(model_path, jobs, func, address, load_options=None):
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'fvgraph[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False)

    @ray.remote
    def run_chunk(model_path, chunk):
        _ensure_model(model_path, load_options)  # module-level: the worker's own _WORKER, not a pickled copy
        return [_worker_call((func, job)) for job in chunk]

    size = max(1, len(jobs) // (4 * max(1, int(ray.available_resources().get("CPU", 1)))))
    pending = [run_chunk.remote(str(model_path), jobs[i:i + size]) for i in range(0, len(jobs), size)]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(ready[0])
