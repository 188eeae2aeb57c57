"""The `fvgraph` command: a thin layer over the Python API. Errors print one line and exit nonzero."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import FvGraphError, InputError, refuse_overwrite
from .image import DEMO_MODEL  # noqa: F401 -- the embedded model, as `fvgraph.cli.DEMO_MODEL` too
from .methods.objectives import index_list as _channels
from .methods.registry import shared_texts as _parse_params, split_specs as _methods
from .outputs import (OCCLUSION_FILES, explain_images, refuse_any, run_examples, save_image, stems as _stems,
                      write_figure, write_grid, write_occlusion, write_reconstruction)
from .targets import any_target, class_or_output, output_target


# --------------------------------------------------------------------------- option texts to values
def _numbers(text, flag, example, cast=float, sep=",", count=None):
    try:
        vals = [cast(v) for v in text.lower().split(sep)]
    except ValueError:
        vals = None
    if vals is None or count and len(vals) != count:
        raise InputError(f"{flag} takes {example}, got {text!r}")
    return vals


def _pair(text, name):
    return tuple(_numbers(text, f"--{name}", "EXPONENT,WEIGHT (e.g. 2,0.01)", count=2))


def _box(text, name):
    parts = _numbers(text, f"--{name}", "HxW or N, e.g. 32x32", int, "x")
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])


def _fill(text):
    if text in ("mean", "random"):
        return text
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--fill takes a number, numbers per channel (a,b,c), 'mean' or 'random'; got {text!r}") \
            from None
    return vals[0] if len(vals) == 1 else vals


def _shape(text):
    dims = tuple(_numbers(text, "--shape", "dims like 1x3x224x224", int, "x"))
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"--shape takes positive dims like 1x3x224x224, got {text!r}")
    return dims


def _target_texts(args) -> dict:
    """The output-target options as fvgraph.targets takes them."""
    return {"index": getattr(args, "target_index", None), "mask": getattr(args, "target_mask", None),
            "output": getattr(args, "target_output", None), "channel": getattr(args, "target_channel", None)}


def _any_target(args, model):
    """A unit (--layer/--channel), an output element or region, or a class (fvgraph.targets)."""
    return any_target(model, args.target, getattr(args, "layer", None), getattr(args, "channel", None),
                      **_target_texts(args))


def _load_options(args) -> dict:
    return {"engine": getattr(args, "engine", "auto"), "device": getattr(args, "device", "cpu"),
            "threads": getattr(args, "threads", None), "preprocess": getattr(args, "preprocess", None),
            "labels": getattr(args, "labels", None), "cache": not getattr(args, "no_cache", False)}


def _load(path, args):
    """A model on the engine, device and threads the command line asks for."""
    from .model import load
    return load(path, **_load_options(args))


def _done(args, line):
    if not args.quiet:
        print(line)


def _folder_exit(failed, succeeded) -> int:
    """A folder run finishes every image it can: unreadable ones are listed on one line; the exit status is
    1 only when no image at all has its results (0 otherwise, the warning saying what is missing)."""
    if failed:
        from .files import failure_line
        print(f"fvgraph: warning: {failure_line(failed)}", file=sys.stderr)
    return 1 if failed and not succeeded else 0


# --------------------------------------------------------------------------- the commands
def cmd_info(args) -> int:
    from .summary import summary, text
    s = summary(args.model, _shape(args.shape) if args.shape else None, getattr(args, "preprocess", None),
                getattr(args, "labels", None))
    sys.stdout.write(text(s))
    return 1 if s["problem"] else 0


def cmd_convert(args) -> int:
    """A MatConvNet .mat to ONNX, written atomically: nothing is left at the output path on failure."""
    from .convert import matconvnet
    from .onnx_file import save_model
    out = Path(args.output)
    refuse_overwrite(out, args.overwrite)
    proto = matconvnet(args.net)
    save_model(proto, out)
    _done(args, f"wrote {out} ({len(proto.graph.node)} nodes)")
    return 0


def cmd_preprocess(args) -> int:
    """The model with fvgraph's preprocessing and labels in its metadata (fvgraph.onnx_file.write_metadata)."""
    import json

    from .onnx_file import write_metadata
    lo = _load_options(args)
    spec, labels = write_metadata(args.model, args.output, lo.pop("preprocess"), lo.pop("labels"), args.overwrite,
                                  **lo)
    _done(args, f"wrote {Path(args.output)}" + (f": preprocessing {json.dumps(spec)}" if spec else "") +
          (f", {len(labels)} labels" if labels else ""))
    return 0


def cmd_explain(args) -> int:
    from .methods.registry import check_shared, lookup, parse_spec
    methods, params = _methods(args.method), _parse_params(args.param)
    for m in methods:
        lookup(parse_spec(m)[0])  # an unknown method is named before any work
    check_shared(methods, params)
    where, texts = {"layer": args.layer, "channel": args.channel}, _target_texts(args)
    if any(Path(p).is_dir() for p in args.images) or args.workers > 1 or args.ray:
        if args.detections:
            raise InputError("--detections takes image files (not folders, --workers or --ray)")
        from .batch import explain_folder
        asked = texts["index"] is not None or texts["mask"] is not None or not str(args.target or 0).lstrip(
            "-").isdigit()  # an output target or a label needs the model to be read here
        target = class_or_output(_load(args.model, args) if asked else None, args.target, **texts)
        failed = {}
        done, skipped = explain_folder(args.model, args.images, methods, args.out, target, params, args.workers,
                                       args.ray, args.overwrite, args.quiet or None, _load_options(args), failed,
                                       **where)
        _done(args, f"explained {done} image(s), skipped {skipped} already done; maps in {args.out}/")
        return _folder_exit(failed, done + skipped)
    from .methods.attribution import default_target
    model = _load(args.model, args)
    if args.detections:
        return _explain_detections(args, model, methods, params)
    target = class_or_output(model, args.target, **texts)
    if target is None and args.layer is None:
        target = default_target(model, None if args.quiet else print)
    several = len(methods) > 1 or len(args.images) > 1
    if several:
        refuse_overwrite(Path(args.out) / "grid.png", args.overwrite, other_out=True)  # before any map
    rows, preds = explain_images(model, args.images, methods, args.out, target, params, args.overwrite, args.quiet,
                                 **where)
    if several:
        write_grid(args.out, rows, methods, preds, args.overwrite)
    _done(args, f"wrote {len(args.images) * len(methods)} explanation(s) to {args.out}/")
    return 0


def _explain_detections(args, model, methods, params) -> int:
    """--detections: each kept detection explained by each method, drawn with its box (fvgraph.methods.detections)."""
    from .image import load_image
    from .methods.detections import explain_detections, write_detections
    from .methods.registry import lookup, parse_spec
    if args.target is not None or args.layer or _target_texts(args)["index"] or _target_texts(args)["mask"]:
        raise InputError("--detections explains each detection: it replaces --target, --layer and the output targets")
    names = [parse_spec(m)[0] for m in methods]
    options = {n: lookup(n).parse({**{k: v for k, v in params.items() if lookup(n).option(k)}, **parse_spec(m)[1]})
               for n, m in zip(names, methods)}
    x = np.concatenate([load_image(p, model.preprocessing()) for p in args.images])
    found = explain_detections(model, x, names, conf=args.conf, iou=args.iou, max_det=args.max, options=options)
    listing = write_detections(model, x, found, args.out, photos=list(args.images), overwrite=args.overwrite)
    _done(args, f"{sum(len(r) for r in found)} detection(s) in {len(args.images)} image(s); wrote {listing}")
    return 0


def cmd_demo(args) -> int:
    """The main job on the embedded model and photos: every method, each picture, and the grid."""
    from .image import demo_images
    from .methods import DEMO_METHODS
    model, methods = _load(DEMO_MODEL, args), list(DEMO_METHODS)
    _done(args, f"model: EfficientNet-Lite0 (ImageNet), embedded; methods: {', '.join(methods)}")
    rows, preds = explain_images(model, demo_images(), methods, args.out, overwrite=args.overwrite, quiet=args.quiet)
    path = write_grid(args.out, rows, methods, preds, args.overwrite)
    _done(args, f"wrote {path} and {len(rows) * len(methods)} maps to {Path(args.out)}/")
    return 0


def _optimizer_kwargs(args) -> dict:
    options = dict(lr=args.lr, jitter=args.jitter, seed=args.seed, optimizer=args.optimizer, quiet=args.quiet)
    if args.steps is not None:
        options["steps"] = args.steps
    if args.param:
        options["param"] = args.param
    for name in ("lp", "tv"):
        if getattr(args, name) is not None:
            options[name] = _pair(getattr(args, name), name)
    transforms, crops = getattr(args, "transforms", None), getattr(args, "crops", None)
    if transforms or crops:
        from dataclasses import replace

        from .methods.transforms import parse
        t = parse(transforms or "default")
        options["transforms"] = replace(t, crops=crops) if crops else t
    return options


def _write_pictures(args, r, labels):
    path = write_reconstruction(r, args.out, labels, args.overwrite)
    _done(args, f"wrote {len(labels)} picture(s) and {path}")
    return 0


def cmd_reconstruct(args) -> int:
    from .methods.objectives import reconstruction_targets
    model = _load(args.model, args)
    options = _optimizer_kwargs(args)
    if args.diversity:
        options["diversity"] = args.diversity
    targets, labels = reconstruction_targets(
        model, _channels(args.target) if args.target else None, args.layer, _channels(args.channel), args.neuron,
        args.direction, args.objective, output_target(model, **_target_texts(args)), args.copies)
    return _write_pictures(args, model.reconstruct(targets, **options), labels)


def cmd_invert(args) -> int:
    from .image import load_image
    model = _load(args.model, args)
    x = np.concatenate([load_image(p, model.preprocessing()) for p in args.images])
    r = model.invert(x, args.layer, **_optimizer_kwargs(args))
    return _write_pictures(args, r, [f"{s}_from_{args.layer}" for s in _stems(args.images)])


def cmd_examples(args) -> int:
    """Dataset examples of a layer's channels over images or folders (fvgraph.outputs.run_examples)."""
    model = _load(args.model, args)
    if args.by == "activation" and args.target is not None:
        raise InputError("--target ranks examples by their relevance to a class: give --by relevance too")
    ex, failed = run_examples(model, args.model, args.images, args.layer, _channels(args.channel),
                              args.k, args.out, args.batch, args.workers, args.ray, not args.no_pictures,
                              _load_options(args), args.overwrite, args.quiet or None, by=args.by,
                              target=class_or_output(model, args.target), method=args.method)
    _done(args, f"wrote {Path(args.out) / 'examples.json'}: the top {args.k} of {len(ex)} channel(s)"
          + ("" if args.no_pictures else " and a picture per channel"))
    return _folder_exit(failed, 1)


def cmd_replace(args) -> int:
    """Patch replacement (Long et al. 2014) with a cached bank over a folder."""
    from .cache import cache_dir
    from .methods.examples import build_bank, replace_patches
    out = Path(args.out)
    refuse_overwrite(out, args.overwrite)
    model = _load(args.model, args)
    cache = None if getattr(args, "no_cache", False) else (Path(args.cache) if args.cache else cache_dir())
    failed = {}
    bank = build_bank(model, [args.bank], args.layer, cache, quiet=args.quiet or None, failed=failed)
    pic, neighbours = replace_patches(model, args.image, bank, args.layer)
    save_image(out, pic, args.overwrite, format="PNG")
    _folder_exit(failed, 1)
    _done(args, f"wrote {out}: {len(neighbours)} positions rebuilt from patches of {len({n[0] for n in neighbours})} "
          f"image(s); mean cosine similarity {np.mean([n[3] for n in neighbours]):.3f}")
    return 0


def cmd_occlude(args) -> int:
    from .image import load_image, read_rgb, resize_crop
    model = _load(args.model, args)
    spec, target, stems = model.preprocessing(), _any_target(args, model), _stems(args.images)
    refuse_any([Path(args.out) / f"{s}{tail}" for s in stems for tail in OCCLUSION_FILES], args.overwrite)
    for path, stem in zip(args.images, stems):
        e = model.occlusion(load_image(path, spec), box=_box(args.box, "box"), stride=_box(args.stride, "stride"),
                            fill=_fill(args.fill), target=target, seed=args.seed, batch_size=args.batch_size,
                            score=args.score, incremental={"auto": "auto", "yes": True, "no": False}[args.incremental],
                            quiet=args.quiet)
        write_occlusion(args.out, stem, e, resize_crop(read_rgb(path), spec), args.overwrite)
        _done(args, f"{Path(path).name}: {len(e.extras['boxes'])} boxes, wrote {args.out}/{stem}_occlusion*.png")
    return 0


def _report(rows, args, info=None) -> int:
    """The table, and the --json / --junit reports, each written whole."""
    from .compare import table, write_json, write_junit
    from .files import write_atomic
    print(table(rows))
    if args.json:
        write_atomic(args.json, lambda t: write_json(t, rows, info or {}))
    if args.junit:
        write_atomic(args.junit, lambda t: write_junit(t, rows))
    ok = all(r.ok for r in rows)
    print("all agree" if ok else f"{sum(not r.ok for r in rows)} differ")
    return 0 if ok else 1


def cmd_check(args) -> int:
    from . import compare
    if args.action == "record":
        model = _load(args.model, args)
        meta = compare.record(model, args.model, args.images, _methods(args.methods), args.out, args.overwrite,
                              _any_target(args, model))
        print(f"wrote {args.out}: {len(meta['methods'])} method(s) on {len(args.images)} image(s)")
        return 0
    if args.action in ("compare", "diff"):
        refuse_any([f for f in (args.json, args.junit) if f], args.overwrite, other_out=False)
    if args.action == "compare":
        rows, info = compare.compare(_load(args.model, args), args.model, args.reference, args.rtol, args.atol)
        if info["model_sha256"] != info["reference_model_sha256"]:
            print("note: the model file differs from the one the reference was recorded with")
        return _report(rows, args, info)
    if args.action == "diff":
        rows = compare.diff(_load(args.model, args), _load(args.other, args), args.images, _methods(args.methods),
                            args.rtol, args.atol)
        return _report(rows, args, {"model_a": args.model, "model_b": args.other})
    import onnx

    from .image import load_image
    from .summary import source
    model = _load(args.model, args)
    proto = onnx.load(args.model) if not str(args.model).endswith(".mat") else source(args.model)
    if args.image:
        x = load_image(args.image, model.preprocessing())
    else:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.inputs[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rows, first = compare.parity(model, proto, x, args.rtol)
    print(f"{'layer':<40} {'op':<20} {'rel L2 vs onnxruntime':>22}")
    for name, op, err, ok in rows:
        print(f"{name[:40]:<40} {op:<20} {err:>22.3g}{'' if ok else '  <- differs'}")
    print(f"first divergence: {first}" if first else f"all {len(rows)} layers agree within {args.rtol:g}")
    return 1 if first else 0


def cmd_evaluate(args) -> int:
    """Each method's maps on each image scored by each metric (fvgraph.methods.evaluation): a table, the JSON
    and the plots."""
    from .methods import evaluation
    metrics = args.metric.split(",")
    refuse_any(evaluation.files(args.out, metrics), args.overwrite)
    model, methods = _load(args.model, args), _methods(args.method)
    found = evaluation.evaluate(model, args.images, methods, metrics, _any_target(args, model), args.steps,
                                args.boxes, seed=args.seed)
    written = evaluation.write(args.out, found, args.model, args.images, methods, metrics, args.steps,
                               args.overwrite)
    if not args.quiet:
        print(evaluation.table(found, methods))
        print(f"wrote {', '.join(str(f) for f in written)}")
    return 0


def cmd_concepts(args) -> int:
    """The concept atlas of one decision (CRP): concepts.png and concepts.json (fvgraph.methods.concepts)."""
    from .image import load_with_picture
    from .methods.concepts import concept_examples, write_atlas
    model = _load(args.model, args)
    refuse_any([Path(args.out) / "concepts.png", Path(args.out) / "concepts.json"], args.overwrite)
    x, shown = load_with_picture(args.image, model.preprocessing())
    found = model.concepts(x, args.method, args.layer, class_or_output(model, args.target), args.k,
                           lower_layer=args.lower_layer)
    failed = {}
    examples = concept_examples(model, args.images, found, k=args.examples, quiet=args.quiet or None,
                                failed=failed) if args.images else None
    write_atlas(found, shown, args.out, examples, model.preprocessing(), args.overwrite)
    _done(args, "\n".join(f"channel {c}: {100 * sh:.1f}% of the layer's relevance"
                          for c, sh in zip(found.channels, found.share)) + f"\nwrote {args.out}/concepts.png and .json")
    return _folder_exit(failed, 1)


def cmd_clusters(args) -> int:
    """SpRAy over a folder: clusters of the explanations of one class (fvgraph.methods.spray)."""
    from .methods.spray import clusters, write_clusters
    model, failed = _load(args.model, args), {}
    target = class_or_output(model, args.target)
    found = clusters(model, args.images, target, args.method, args.size, args.clusters, args.seed, args.workers,
                     args.ray, args.quiet or None, params=_parse_params(args.param), model_path=args.model,
                     load_options=_load_options(args), failed=failed)
    write_clusters(found, args.out, args.overwrite)
    _done(args, f"{len(found.clusters)} clusters of {sum(c.size for c in found.clusters)} maps: "
          + ", ".join(str(c.size) for c in found.clusters) + f"; wrote {args.out}/clusters.json and pictures")
    return _folder_exit(failed, 1)


def cmd_discover(args) -> int:
    """Concept discovery over a folder: NMF of a layer's activations (fvgraph.methods.discover)."""
    from .methods.discover import discover, visualize, write_discovery
    model, failed = _load(args.model, args), {}
    found = discover(model, args.images, args.layer, args.k, args.seed, method=args.method,
                     quiet=args.quiet or None, workers=args.workers, ray_address=args.ray, model_path=args.model,
                     load_options=_load_options(args), failed=failed)
    if args.visualize:
        visualize(model, found, steps=args.visualize)
    write_discovery(found, args.out, args.overwrite)
    _done(args, f"{args.k} concepts of {args.layer}; wrote {args.out}/discovery.json and pictures")
    return _folder_exit(failed, 1)


def cmd_methods(args) -> int:
    """The method table: each method, its map, whether it takes --layer and exports, its options."""
    from .methods.registry import lookup, table
    for m in [lookup(args.name)] if args.name else list(table().values()):
        print(m.summary())
        for o in m.options:
            print(f"    -p {o.describe()}: {o.help}")
    return 0


def cmd_serve(args) -> int:
    """The interactive view in the browser (fvgraph.serve)."""
    from .serve import serve
    return serve(_load(args.model or DEMO_MODEL, args), args.images, args.host, args.port, args.quiet,
                 int(args.max_upload * 2**20), args.max_passes, args.allow_host or ())


def cmd_export_explainer(args) -> int:
    """A method lowered into one standalone ONNX model, written atomically; never over an existing file."""
    from .methods.registry import lookup
    from .onnx_file import save_model
    out = Path(args.output)
    refuse_overwrite(out, args.overwrite)
    model = _load(args.model, args)
    options = lookup(args.method).parse(_parse_params(args.param))
    if args.layer is not None:
        options["layer"] = args.layer
    proto = model.export_explainer(args.method, shape=_shape(args.shape) if args.shape else None, **options)
    save_model(proto, out)
    _done(args, f"wrote {out}: inputs {', '.join(i.name for i in proto.graph.input)} -> outputs "
          f"{', '.join(o.name for o in proto.graph.output)} ({len(proto.graph.node)} nodes)")
    return 0


def cmd_figure(args) -> int:
    from .figures import methods_figure, networks_figure
    out = Path(args.output)
    refuse_any([out, out.with_suffix(".npz")], args.overwrite, other_out=False)
    if args.kind == "methods":
        images = args.model[1:] + (args.image or [])
        if not images:
            raise InputError("figure methods needs MODEL IMAGE...")
        img, arrays = methods_figure(_load(args.model[0], args), images, _methods(args.methods), args.percentile,
                                     args.colours, args.alpha, args.auc)
    else:
        if not args.image:
            raise InputError("figure networks needs --image IMAGE...")
        models = {Path(m).stem: _load(m, args) for m in args.model}
        img, arrays = networks_figure(models, args.image, args.method, args.percentile, args.colours, args.alpha)
    print("wrote {} and {}".format(*write_figure(out, img, arrays, args.overwrite)))
    return 0


# --------------------------------------------------------------------------- the parser
class _Subcommands:
    """add_parser with the options every command takes (engine, threads, debug)."""

    def __init__(self, sub, common):
        self.sub, self.common = sub, common

    def add_parser(self, name, func=None, **kw):
        s = self.sub.add_parser(name, parents=[self.common], **kw)
        if func is not None:
            s.set_defaults(func=func)
        return s


def method_names(exports=False) -> list[str]:
    from .methods.registry import table
    return [k for k, m in table().items() if m.exports or not exports]


def _arg(s, *flags, **kw):
    s.add_argument(*flags, **kw)
    return s


def _writes(s, out="fvgraph-out", quiet=True, **kw):
    """--out (a folder, or with required/help one file), --overwrite and --quiet, alike on every command."""
    _arg(s, "--out", "-o", **(kw or {"default": out, "help": f"output folder (default: {out})"}))
    return _overwrite(s, quiet)


def _writes_file(s, help="the .onnx file to write", quiet=True):
    """-o/--output, one file, with --overwrite and --quiet."""
    return _overwrite(_arg(s, "-o", "--output", required=True, help=help), quiet)


def _overwrite(s, quiet=True):
    _arg(s, "--overwrite", action="store_true", help="replace files that already exist")
    return _arg(s, "--quiet", "-q", action="store_true", help="print only warnings and errors") if quiet else s


def _model(s, images="image files", **kw):
    _arg(s, "model", **kw)
    return _arg(s, "images", nargs="+", help=images) if images else s


def _targets(s, classes="class index (default: the predicted class)"):
    """--target (a class) and the output targets (an element or region of an output)."""
    _arg(s, "--target", "-t", help=classes)
    _arg(s, "--target-index", metavar="I,J,...",
         help="score one element of an output, e.g. 9,2049 = class 5 of anchor 2049 in a YOLO "
              "(batch, 4+classes, anchors) output (no batch axis)")
    _arg(s, "--target-mask", metavar="FILE", help="score an output region: a .npy weight array (broadcast to one "
         "sample's output) or a grayscale image (resized to the output's height and width)")
    _arg(s, "--target-channel", type=int, help="with --target-mask: only this channel (class) of the output")
    return _arg(s, "--target-output", metavar="NAME", help="the output the target reads (default: the first)")


def _method_options(s, help):
    """-p / --param: options of the method (always this; reconstruct's parameterization is --parameterization)."""
    return _arg(s, "--param", "-p", nargs="*", help=help)


def _optimizer_options(s, reconstruct=True):
    _arg(s, "--parameterization", "--param", dest="param", choices=["fourier", "maco", "pixel"],
         help="how the picture is represented: fourier (Lucid's spectrum with decorrelated colour), maco "
              "(the phase under a natural image's magnitude) or pixel" +
              (" (default: fourier)" if reconstruct else " (default: pixel)"))
    _arg(s, "--steps", type=int, help="optimization steps (default: 256 for reconstruct, 200 for invert)")
    _arg(s, "--lr", type=float, help="Adam's step in the parameterization's units (default per param)")
    _arg(s, "--lp", help="Lp prior EXPONENT,WEIGHT (default for pixel: 2,0.01; none otherwise)")
    _arg(s, "--tv", help="total-variation prior BETA,WEIGHT (default for pixel: 2,0.1; none otherwise)")
    if reconstruct:
        _arg(s, "--crops", type=int, help="random crops/zooms/rotations per step (default 4; 1 and --transforms "
                                          "none turn them off)")
        _arg(s, "--transforms", help="'default', 'none', or key=value items: crops, scale=LO:HI, shift, "
                                     "rotate (degrees), noise, flip")
    _arg(s, "--jitter", type=int, default=0, help="random shifts of up to this many pixels per step")
    _arg(s, "--optimizer", default="adam", choices=["adam", "momentum"])
    _arg(s, "--seed", type=int, default=0, help="the random seed (default 0)")
    return _writes(s)


def _common() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (their defaults suppressed for that)."""
    c = argparse.ArgumentParser(add_help=False)
    for flags, kw in (
            (("--engine",), dict(choices=["auto", "onnxruntime", "numpy", "cupy"], help="what runs the graphs: "
                                 "onnxruntime (the default, auto), or fvgraph's own executor on numpy / cupy")),
            (("--device",), dict(choices=["cpu", "cuda"],
                                 help="cuda: onnxruntime's CUDA provider (onnxruntime-gpu), else CuPy")),
            (("--threads",), dict(type=int, help="CPU threads (default: all cores)")),
            (("--preprocess",), dict(metavar="SPEC", help="how pictures become the model's input: a preset (imagenet, "
                                     "caffe, tf, raw) and/or key=value items, comma-separated, e.g. caffe,size=227 or "
                                     "layout=NHWC (default: the model's metadata, else imagenet)")),
            (("--labels",), dict(metavar="FILE", help="class names: a text file (one per line), a JSON list or dict, "
                                 "or 'imagenet' (default: the model's metadata)")),
            (("--no-cache",), dict(action="store_true", help="build every lowered graph anew instead of reusing "
                                   "what earlier runs kept in the cache ($FVGRAPH_CACHE, default ~/.cache/fvgraph; "
                                   "FVGRAPH_CACHE=off disables it)")),
            (("--max-image-pixels",), dict(metavar="N", help="the largest image read, in pixels (width x height, of "
                                           "the file and of the resize's result), checked before decoding; e.g. 1e8 "
                                           "(default 50 megapixels, $FVGRAPH_MAX_IMAGE_PIXELS)")),
            (("--max-image-aspect",), dict(metavar="R", help="the largest ratio of an image's long side to its short "
                                           "one (default 32, $FVGRAPH_MAX_IMAGE_ASPECT)")),
            (("--debug",), dict(action="store_true", help="log what is built (lowered graphs, sessions) and show "
                                "tracebacks on errors"))):
        c.add_argument(*flags, default=argparse.SUPPRESS, **kw)
    return c


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="fvgraph", allow_abbrev=False, description="Feature visualization for exported CNNs (ONNX).",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"fvgraph {__version__}")
    sub = _Subcommands(p.add_subparsers(dest="command", metavar="COMMAND"), common)
    onnx = {"help": "an .onnx file"}
    s = sub.add_parser("info", cmd_info, help="inputs, outputs, opset and the layer table of a model")
    _arg(_model(s, False, **onnx), "--shape", help="the input shape to compute layer shapes at, e.g. 1x3x320x320")

    _writes_file(_model(sub.add_parser("preprocess", cmd_preprocess, help="write a preprocessing (--preprocess) and "
                        "labels (--labels) into a copy of a model's metadata, so later commands need neither"),
                        False, **onnx))
    s = sub.add_parser("convert", cmd_convert, help="convert a MatConvNet network (.mat) to ONNX")
    _writes_file(_arg(s, "net", help="a MatConvNet .mat file (SimpleNN or DagNN)"))

    s = _model(sub.add_parser("explain", cmd_explain, help="explain a model's predictions on images (heatmap PNGs "
                              "and .npy)"), **onnx)
    _arg(s, "--method", "-m", default="guided", help=f"{', '.join(method_names())}, or a rules .toml file; several "
         "separated by commas, options as method:key=value,key=value (`fvgraph methods` lists them)")
    _arg(s, "--layer", help="for the CAMs: the layer the map is drawn at; with --channel, or for any other "
                            "method: explain a unit of this layer instead of a class")
    _arg(s, "--channel", type=int, help="channel of --layer (a unit, for every method)")
    _arg(s, "--detections", action="store_true", help="a detector: explain each detection (decoded, class-wise "
                                                       "NMS) and draw its box; detections.json lists them")
    _arg(s, "--conf", type=float, default=0.25, help="with --detections: the score a detection needs (0.25)")
    _arg(s, "--iou", type=float, default=0.7, help="with --detections: NMS's overlap threshold (0.7)")
    _arg(s, "--max", type=int, default=10, help="with --detections: detections per image at most (10)")
    _method_options(s, "options for every method that takes them, e.g. epsilon=0.01 samples=8 (`fvgraph methods` "
                       "lists each method's)")
    _arg(s, "--workers", type=int, default=1, help="processes for folders of images (default 1)")
    _arg(s, "--ray", metavar="ADDRESS", help="run a folder on a Ray cluster ('local' starts one here)")
    _targets(_writes(s))

    s = _model(sub.add_parser("occlude", cmd_occlude, help="occlusion maps: the drop in the score when a box covers "
                              "each region"), **onnx)
    _arg(s, "--box", default="32x32", help="box HxW (default 32x32)")
    _arg(s, "--stride", default="16x16", help="stride HxW (default 16x16)")
    _arg(s, "--fill", default="0", help="a number, one per channel (a,b,c), 'mean' or 'random'")
    _arg(s, "--layer", help="score a unit of this layer instead (with --channel)")
    _arg(s, "--channel", type=int, help="channel of --layer")
    _arg(s, "--score", default="logit", choices=["logit", "prob"], help="the score whose drop is the map")
    _arg(s, "--batch-size", type=int, help="occluded copies per batch (default: from free memory)")
    _arg(s, "--incremental", default="auto", choices=["auto", "yes", "no"],
         help="recompute only the windows each box changes (fvgraph's executor), or every copy in full "
              "(the engine); auto: whichever the cost estimate says is faster")
    _arg(s, "--seed", type=int, default=0, help="the seed of --fill random (default 0)")
    _targets(_writes(s))

    s = _model(sub.add_parser("reconstruct", cmd_reconstruct, help="activation maximization: pictures that drive "
                              "classes or units"), False, **onnx)
    _arg(s, "--layer", help="maximize a channel of this layer instead")
    _arg(s, "--channel", help="channel index or list (e.g. 0-15); one picture each")
    _arg(s, "--neuron", metavar="Y,X", help="with --layer/--channel: the channel at this position only")
    _arg(s, "--direction", metavar="FILE.npy", help="with --layer: a direction in its channel space")
    _arg(s, "--objective", metavar="EXPR", help='a combination, terms joined by " + " / " - ": e.g. "class:479 - '
         '0.5*class:817" or "channel:LAYER:5 + 2*neuron:LAYER:5:7:7" (kinds: class, channel, neuron, diversity)')
    _arg(s, "--diversity", type=float, default=0.0, help="Lucid's diversity weight across the pictures")
    _arg(s, "--copies", type=int, help="pictures per objective (different seeds; see --diversity)")
    _targets(_optimizer_options(s), "class index or list (e.g. 1,130 or 0-7)")

    s = _model(sub.add_parser("examples", cmd_examples, help="dataset examples: the images and patches that drive a "
                              "layer's channels most, with their deconvnet and guided projections"),
               "image files or folders (searched recursively)", **onnx)
    _arg(s, "--layer", required=True, help="the layer whose channels are ranked")
    _arg(s, "--channel", help="channels, e.g. 0-63 or 3,7 (default: all)")
    _arg(s, "-k", type=int, default=9, help="images per channel (default 9)")
    _arg(s, "--batch", type=int, default=16, help="images per forward pass (default 16)")
    _arg(s, "--workers", type=int, default=1, help="local processes (default 1)")
    _arg(s, "--ray", metavar="ADDRESS", help="run on a Ray cluster ('local' for a local one)")
    _arg(s, "--by", choices=["activation", "relevance"], default="activation", help="rank by the channel's "
         "activation (default), or by its relevance to --target (relevance maximization)")
    _arg(s, "--target", "-t", help="with --by relevance: the class (index or label; default: each image's "
                                   "predicted class)")
    _arg(s, "--method", "-m", default="lrp-epsilon", help="with --by relevance: the reverse-pass method")
    _writes(_arg(s, "--no-pictures", action="store_true", help="examples.json only"), "fvgraph-examples")

    s = _model(sub.add_parser("replace", cmd_replace, help="patch replacement (Long et al. 2014): an image rebuilt "
                              "from the patches of its nearest neighbours at a layer, over a folder"), False, **onnx)
    _arg(s, "image")
    _arg(s, "--bank", required=True, help="a folder of images (its feature bank is built once and cached)")
    _arg(s, "--layer", required=True)
    _arg(s, "--cache", help="where banks are kept (default: $FVGRAPH_CACHE or ~/.cache/fvgraph)")
    _writes(s, required=True, help="the .png to write")

    s = _model(sub.add_parser("invert", cmd_invert, help="reconstruct images from their representation at a layer"),
               **onnx)
    _optimizer_options(_arg(s, "--layer", required=True), reconstruct=False)

    s = sub.add_parser("check", cmd_check, help="numeric comparisons for CI: record, compare, diff, parity")
    csub = _Subcommands(s.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    c = _model(csub.add_parser("record", help="store outputs and explanations of images as a reference .npz"), **onnx)
    _arg(c, "--methods", default="gradient,guided,lrp-epsilon",
         help="comma-separated; parameters as method:key=value,key=value")
    _targets(_writes(c, quiet=False, required=True, help="the .npz to write"))
    c = _arg(_model(csub.add_parser("compare", help="recompute a reference and compare: exit 0 agree, 1 differ, 2 "
                                    "bad input"), False, **onnx), "reference")
    d = _arg(_arg(_model(csub.add_parser("diff", help="the same images and methods on two models"), False, **onnx),
                  "other", help="the second .onnx file"), "images", nargs="+", help="image files")
    _arg(d, "--methods", default="gradient,guided,lrp-epsilon")
    for cc in (c, d):
        _arg(cc, "--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
        _arg(cc, "--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
        _arg(cc, "--json", help="write a JSON report")
        _overwrite(_arg(cc, "--junit", help="write a JUnit XML report"), quiet=False)
    c = _model(csub.add_parser("parity", help="fvgraph vs onnxruntime on every layer; names the first divergence"),
               False, **onnx)
    _arg(_arg(c, "--image", help="the input (default: seeded noise)"), "--rtol", type=float, default=1e-4,
         help="relative tolerance (default 1e-4)")

    s = sub.add_parser("figure", cmd_figure, help="comparison grids: methods x images, or networks x images")
    _arg(s, "kind", choices=["methods", "networks"])
    _arg(s, "model", nargs="+", help="methods: MODEL IMAGE...; networks: MODEL...")
    _arg(s, "--image", nargs="*", help="images (networks figure)")
    _arg(s, "--methods", default="gradient,deconvnet,guided,lrp-epsilon,cam,occlusion")
    _arg(s, "--method", default="guided", help="the method of a networks figure")
    _arg(s, "--percentile", type=float, default=99.5, help="maps saturate beyond this percentile of |value|")
    _arg(s, "--kind", dest="colours", choices=["signed", "heat", "abs", "rgb"],
         help="colour map for every column (default: per method: signed for LRP, heat over the image "
              "for CAM/Grad-CAM/occlusion, black-and-white magnitude for gradients, rgb for guided)")
    _arg(s, "--alpha", type=float, default=0.5, help="opacity of heat maps over the image")
    _arg(s, "--auc", choices=["deletion", "insertion"], help="write this faithfulness AUC under each map")
    _writes_file(s, "the picture to write (.png, .jpg, ...; its maps go beside it as .npz)", quiet=False)

    s = _model(sub.add_parser("evaluate", cmd_evaluate, help="faithfulness: deletion and insertion curves and AUCs of "
                              "each method's maps"), **onnx)
    _arg(s, "--method", "-m", default="random,gradient,guided,lrp-epsilon,gradcam,occlusion",
         help="methods, comma-separated (parameters as method:key=value); random is the baseline to beat")
    _arg(s, "--metric", default="deletion,insertion", help="comma-separated: deletion, insertion, road-morf, "
         "road-lerf, faithfulness-correlation (mufidelity), pointing-game, energy-pointing (with --boxes), "
         "max-sensitivity, sparseness, complexity, randomization (the parameter randomization test)")
    _arg(s, "--steps", type=int, default=16, help="points on each curve after the first (default 16)")
    _arg(s, "--boxes", metavar="FILE", help="the object's boxes or masks for the pointing metrics: a .json of "
         "boxes (x0, y0, x1, y1) keyed by image file name, a mask image or .npy")
    _arg(s, "--seed", type=int, default=0, help="the seed of the randomized weights (default 0)")
    _writes(_targets(s))

    s = _arg(_arg(sub.add_parser("concepts", cmd_concepts, help="the concepts one decision used (CRP): a layer's "
                                 "channels ranked by relevance, each with its conditional heatmap"), "model"),
             "image", help="the image whose decision is explained")
    _arg(s, "--layer", required=True, help="the layer whose channels are the concepts")
    _arg(s, "--method", "-m", default="lrp-epsilon", help="a reverse-pass method (default lrp-epsilon)")
    _arg(s, "-k", type=int, default=5, help="concepts shown (default 5)")
    _arg(s, "--lower-layer", help="also each concept's most relevant channels at this lower layer")
    _arg(s, "--images", nargs="+", help="images or folders: each concept's top examples by relevance among them")
    _arg(s, "--examples", type=int, default=4, help="examples per concept with --images (default 4)")
    _targets(_writes(s, "fvgraph-concepts"))

    s = _model(sub.add_parser("clusters", cmd_clusters, help="where the model fails across a folder (SpRAy): "
                              "clusters of the explanations of one class"), "image files or folders", **onnx)
    _arg(s, "--method", "-m", default="lrp-epsilon", help="the method whose maps are clustered")
    _method_options(s, "options of the method, e.g. epsilon=0.01")
    _arg(s, "--clusters", type=int, help="how many clusters (default: from the eigengap)")
    _arg(s, "--size", type=int, default=32, help="maps are downsized to SIZE x SIZE (default 32)")
    _arg(s, "--seed", type=int, default=0)
    _arg(s, "--workers", type=int, default=1, help="local processes (default 1)")
    _arg(s, "--ray", metavar="ADDRESS", help="run on a Ray cluster ('local' for a local one)")
    _targets(_writes(s, "fvgraph-clusters"), "class index or label whose images are clustered (default: all)")

    s = _model(sub.add_parser("discover", cmd_discover, help="concept discovery across a folder: a layer's "
                              "activations factorized (NMF) into k concept directions"), "image files or folders",
               **onnx)
    _arg(s, "--layer", required=True, help="the layer whose activations are factorized")
    _arg(s, "-k", type=int, default=8, help="concepts (default 8)")
    _arg(s, "--method", "-m", default="lrp-epsilon", help="the method of each concept's relevance share")
    _arg(s, "--visualize", type=int, metavar="STEPS", help="also a feature visualization of each concept")
    _arg(s, "--seed", type=int, default=0)
    _arg(s, "--workers", type=int, default=1, help="local processes (default 1)")
    _arg(s, "--ray", metavar="ADDRESS", help="run on a Ray cluster ('local' for a local one)")
    _writes(s, "fvgraph-discover")

    _arg(sub.add_parser("methods", cmd_methods, help="the methods: their maps, options, defaults and ranges"), "name",
         nargs="?", help="one method (default: all)")

    s = sub.add_parser("serve", cmd_serve, help="an interactive view in the browser: every method, live parameters")
    _arg(s, "model", nargs="?", help="an .onnx or .mat file (default: the embedded EfficientNet-Lite0)")
    _arg(s, "--images", help="a folder of images to pick from (only its files are ever read)")
    _arg(s, "--port", type=int, default=8000)
    _arg(s, "--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    _arg(s, "--max-upload", type=float, default=20, help="largest accepted upload in MB (default 20)")
    _arg(s, "--max-passes", type=int, default=2048,
         help="most forward/reverse passes one request may take (occlusion windows, steps; default 2048)")
    _arg(s, "--allow-host", action="append", metavar="NAME", help="a host name this server answers for besides its "
         "address, localhost and this machine's name (behind a proxy; repeatable)")
    _arg(s, "--quiet", "-q", action="store_true", help="print only warnings and errors")

    s = _model(sub.add_parser("export-explainer", cmd_export_explainer, help="write a method as a standalone ONNX "
                              "model (runs without fvgraph)"), False, **onnx)
    _arg(s, "--method", "-m", default="gradient", help="a method that lowers into one graph: "
         f"{', '.join(method_names(exports=True))}, or a rules .toml file")
    _method_options(s, "the method's options, e.g. epsilon=0.01")
    _arg(s, "--layer", help="the layer a CAM is drawn at")
    _arg(s, "--shape", help="input shape NxCxHxW where the model's is not fixed (the batch stays dynamic)")
    _writes_file(s)

    _writes(sub.add_parser("demo", cmd_demo, help="every method on the embedded EfficientNet-Lite0 and photos, with "
                           "a grid"), "fvgraph-demo")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.debug = getattr(args, "debug", False)
    import warnings

    from .errors import FvGraphWarning
    from .limits import IMAGE_LIMITS, ImageLimits

    def one_line(message, category, *rest, **kw):
        if issubclass(category, FvGraphWarning):
            print(f"fvgraph: warning: {message}", file=sys.stderr)
    warnings.showwarning = one_line
    if args.debug:
        import logging
        logging.basicConfig(format="fvgraph: %(message)s")
        logging.getLogger("fvgraph").setLevel(logging.DEBUG)
    try:
        with ImageLimits(**{a: getattr(args, a, None) for a, *_ in IMAGE_LIMITS}):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fvgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (fvgraph info ... | head)
        sys.stderr.close()
        return 0
    except (FvGraphError, OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"fvgraph: error: {_describe(e, args)}", file=sys.stderr)
        return 2


def _describe(e, args) -> str:
    """A readable line for an error whose own text may be empty (MemoryError usually is)."""
    if isinstance(e, MemoryError):
        return (f"out of memory while running `fvgraph {args.command}`" + (f" ({e})" if str(e) else "") +
                "; try a smaller --batch-size or --batch, fewer --workers, or smaller images (--preprocess size=...)")
    return str(e) or f"{type(e).__name__} (no message; --debug shows where)"


if __name__ == "__main__":
    sys.exit(main())
