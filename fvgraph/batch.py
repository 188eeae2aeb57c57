"""Explaining many images: a folder (a CI data set, an audit) streamed one image at a time with bounded
memory, resumable (an image whose outputs all exist is skipped), on N local processes or on Ray.

Each worker loads the model once and writes, per image and method, `NAME_METHOD.png`, `NAME_METHOD_abs.png`
(reverse-pass methods) and `NAME_METHOD.npy`, where NAME is the image's path relative to the folder with
'/' turned into '__'. Files are written to a temporary name and renamed, so an interrupted run never leaves
a half-written file that a resumed run would take as done.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, refuse_overwrite
from .files import write_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def image_files(paths) -> list[tuple[Path, str]]:
    """(file, output name) for image files and every image inside given folders (recursively, sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            out += [(f, "__".join(f.relative_to(p).with_suffix("").parts)) for f in files]
        else:
            out.append((p, p.stem))
    return out


def method_stem(method) -> str:
    return Path(str(method)).stem.replace(":", "_").replace("=", "-").replace(",", "_")


def expected_files(name, methods, out) -> list[Path]:
    return [Path(out) / f"{name}_{method_stem(m)}.npy" for m in methods]


def write_explanations(model, path, name, methods, out, target=None, params=None, overwrite=False):
    """Explain one image with each method and write its pictures and arrays. Returns (picture row, label)."""
    from PIL import Image

    from .compare import parse_method, run_method
    from .image import load_image, read_rgb, resize_crop
    from .methods import map_kind
    from .render import picture
    spec = model.preprocessing()
    x = load_image(path, spec)
    shown = resize_crop(read_rgb(path), spec)
    from .methods.attribution import prediction
    row = [shown]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores = None  # the class scores for the label, from a method's own pass when it has them
    for m in methods:
        meth, mp = parse_method(m)
        mp = {**(params or {}), **mp}
        tgt = target
        if meth in ("cam", "gradcam") and tgt is not None and hasattr(tgt, "layer"):
            mp.setdefault("layer", tgt.layer)  # --layer names the Grad-CAM layer; the class stays predicted
            tgt = None
        e = run_method(model, x, meth, mp, tgt)
        if scores is None and (tgt is None or isinstance(tgt, (int, np.integer))) and e.output is not None \
                and np.ndim(e.output) >= 2 and all(d == 1 for d in np.shape(e.output)[2:]):
            scores = np.asarray(e.output)[0]
        kind = map_kind(meth)
        pic = picture(e.relevance[0], kind, image=shown)
        row.append(pic)
        stem = f"{name}_{method_stem(m)}"
        files = {out / f"{stem}.png": pic}
        if e.relevance.ndim == 4:
            files[out / f"{stem}_abs.png"] = picture(e.relevance[0], "abs")
        for f in list(files) + [out / f"{stem}.npy"]:
            refuse_overwrite(f, overwrite, other_out=True)
        for f, pic_ in files.items():
            write_atomic(f, lambda t, pic_=pic_: Image.fromarray(pic_).save(t, format="PNG"))
        write_atomic(out / f"{stem}.npy", lambda t, a=e.relevance[0]: np.save(open(t, "wb"), a))
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
    path, name, methods, out, target, params = job
    write_explanations(model, path, name, methods, out, target, params, overwrite=True)
    return name


def explain_folder(model_path, inputs, methods, out, target=None, params=None, workers=1, ray_address=None,
                   overwrite=False, quiet=None, load_options=None):
    """Explain every image under `inputs`; returns (explained, skipped). load_options: fv.load's engine,
    device and threads for every worker."""
    from .methods.reconstruction import Progress
    images = image_files(inputs)
    if not images:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    todo = [(str(f), n) for f, n in images
            if overwrite or not all(p.exists() for p in expected_files(n, methods, out))]
    skipped = len(images) - len(todo)
    jobs = [(f, n, list(methods), str(out), target, params or {}) for f, n in todo]
    bar = Progress(len(jobs), "explain", quiet)
    for k, _ in enumerate(map_jobs(model_path, jobs, _explain_one, workers, ray_address, load_options), 1):
        bar.update(k)
    return len(jobs), skipped


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
