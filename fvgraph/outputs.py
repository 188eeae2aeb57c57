"""The files the commands write, kept out of the command line: each set of files is checked before the first
is written (a refusal writes nothing), none replaces a file without overwrite, and each is written whole
(fvgraph.files.write_atomic), so a kill leaves no half a picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, refuse_overwrite


def refuse_any(paths, overwrite: bool, other_out: bool = True):
    """refuse_overwrite for each path, before any is written."""
    for p in paths:
        refuse_overwrite(p, overwrite, other_out=other_out)


def stems(paths) -> list[str]:
    """Output names of single images: each file's stem, made safe and distinct (a.png and a.jpg, or two
    cat.jpg from two folders, get a hash of their path; never one map for two images)."""
    from .files import safe_part, unique_names
    return unique_names([safe_part(Path(p).stem) for p in paths], [str(p) for p in paths])


def save_image(path, picture, overwrite=False, format=None) -> Path:
    """A PIL image or an RGB array at `path` (format from the suffix unless given)."""
    from PIL import Image

    from .files import write_atomic
    path = Path(path)
    refuse_overwrite(path, overwrite)
    fmt = format or Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: give an image file name (.png, .jpg, ...)")
    img = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    return write_atomic(path, lambda t: img.save(t, format=fmt))


def explain_images(model, images, methods, out, target=None, params=None, overwrite=False, quiet=False, layer=None,
                   channel=None):
    """Explain each image with each method and write the maps; returns picture rows and predictions."""
    from .batch import method_stems, write_explanations
    names = stems(images)
    if not overwrite:
        refuse_any([Path(out) / f"{n}_{s}{tail}" for n in names for s in method_stems(methods)
                    for tail in (".png", ".npy")], overwrite)
    rows, preds = [], []
    for path, name in zip(images, names):
        row, pred = write_explanations(model, path, name, methods, out, target, dict(params or {}), overwrite,
                                       layer, channel)
        rows.append(row)
        preds.append(pred)
        if not quiet:
            print(f"{pred[0]}: {pred[2]}" + (f" (class {pred[1]}, p={pred[3]:.2f})" if pred[1] is not None else ""))
    return rows, preds


def write_grid(out, rows, methods, preds, overwrite=False) -> Path:
    """grid.png: the input and each method's map per image, each row labelled with its prediction."""
    from .render import grid, save_png
    labels = [f"{p[2]} {p[3]:.2f}" if p[1] is not None else p[2] for p in preds]
    return save_png(Path(out) / "grid.png", grid(rows, ["input"] + list(methods), labels), overwrite)


def write_reconstruction(r, out, labels, overwrite=False) -> Path:
    """NN_label.png per picture, images.npy (the inputs) and grid.png; labels are made safe file names."""
    from .files import safe_part
    from .render import grid, save_npy, save_png
    if r.picture is None:
        raise InputError("the model's input is not a 3-channel image: only the .npy is written")
    names = [f"{k:02d}_{safe_part(label)}.png" for k, label in enumerate(labels)]
    refuse_any([Path(out) / n for n in names + ["images.npy", "grid.png"]], overwrite)
    for pic, name in zip(r.picture, names):
        save_png(Path(out) / name, pic, overwrite)
    save_npy(Path(out) / "images.npy", r.image, overwrite)
    return save_png(Path(out) / "grid.png", grid([list(r.picture[i:i + 8]) for i in range(0, len(r.picture), 8)],
                                                 row_labels=None), overwrite)


OCCLUSION_FILES = ("_occlusion.png", "_occlusion_overlay.png", "_occlusion.npy")


def write_occlusion(out, stem, e, shown, overwrite=False):
    """An occlusion map as a signed picture, a heat map over the shown image, and the array."""
    from .render import picture, save_npy, save_png
    out = Path(out)
    save_png(out / f"{stem}_occlusion.png", picture(e.relevance[0], "signed"), overwrite)
    save_png(out / f"{stem}_occlusion_overlay.png", picture(e.relevance[0], "heat", image=shown), overwrite)
    save_npy(out / f"{stem}_occlusion.npy", e.relevance[0], overwrite)


def write_examples(out, data, pictures):
    """examples.json and channel_NNNN.png per channel (the run state has claimed them)."""
    import json

    from .files import write_atomic, write_text
    from PIL import Image
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for c, pic in pictures.items():
        if pic is not None:
            write_atomic(out / f"channel_{c:04d}.png", lambda t, p=pic: Image.fromarray(p).save(t, format="PNG"))
    write_text(out / "examples.json", json.dumps(data, indent=1))


def write_figure(out, img, arrays, overwrite=False):
    """A figure's picture and its maps beside it (.npz; layer names' slashes as '__')."""
    from .files import write_atomic
    out = Path(out)
    refuse_any([out, out.with_suffix(".npz")], overwrite, other_out=False)
    save_image(out, img, overwrite)

    def npz(t):
        with open(t, "wb") as f:
            np.savez_compressed(f, **{k.replace("/", "__"): v for k, v in arrays.items()})
    write_atomic(out.with_suffix(".npz"), npz)
    return out, out.with_suffix(".npz")


def run_examples(model, model_path, images, layer, channels, k, out, batch=16, workers=1, ray=None, pictures=True,
                 load_options=None, overwrite=False, quiet=None, failed=None, by="activation", target=None,
                 method="lrp-epsilon"):
    """Dataset examples of a layer's channels written into the folder `out`: examples.json and, unless
    pictures=False, channel_NNNN.png per channel. The folder's run state (fvgraph.files.RunState) makes a rerun
    resume its own run, and refuses a run of another model or other options, or a file it did not write,
    without overwrite (which starts over). Returns (channels' examples, failed images)."""
    from .files import RunState
    from .image import input_shape
    from .methods.examples import example_pictures, examples_json, resolve_channels, top_examples
    out, lo, failed = Path(out), dict(load_options or {}), {} if failed is None else failed
    value = model.resolve(layer)
    chans = resolve_channels(model, value, channels, np.zeros(input_shape(model), np.float32))
    ranking = {} if by == "activation" else {"by": by, "target": target, "method": method}  # states as before
    state = RunState(out, "examples", model_path, {"layer": value, "channels": chans, "k": k, "pictures": pictures,
                                                   "preprocess": lo.get("preprocess"), "labels": lo.get("labels"),
                                                   **ranking}, overwrite)
    state.claim(["examples.json", "examples.state.json"] + [f"channel_{c:04d}.png" for c in chans if pictures])
    if overwrite:
        (out / "examples.state.json").unlink(missing_ok=True)
    ex = top_examples(model, images, layer, chans, k, batch, workers, ray, out / "examples.state.json", model_path,
                      lo, quiet, failed, by=by, target=target, method=method)
    write_examples(out, examples_json(value, ex), example_pictures(model, ex, layer) if pictures else {})
    state.failed = dict(failed)
    state.finish()
    return ex, failed
