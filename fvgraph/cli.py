"""The `fvgraph` command: a thin layer over the Python API. Errors print one line and exit nonzero."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

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
    """Occlusion maps, the options read and checked by the method table's occlusion entry."""
    from .image import load_with_picture
    from .methods.registry import lookup
    model = _load(args.model, args)
    spec, target, stems = model.preprocessing(), _any_target(args, model), _stems(args.images)
    method = lookup("occlusion")
    o = method.check(method.parse({"box": args.box, "stride": args.stride, "fill": args.fill, "score": args.score,
                                   "seed": str(args.seed), "incremental": args.incremental}))
    refuse_any([Path(args.out) / f"{s}{tail}" for s in stems for tail in OCCLUSION_FILES], args.overwrite)
    for path, stem in zip(args.images, stems):
        x, shown = load_with_picture(path, spec)
        e = model.occlusion(x, box=o["box"], stride=o["stride"], fill=o["fill"], target=target, seed=o["seed"],
                            batch_size=args.batch_size, score=o["score"],
                            incremental={"auto": "auto", "yes": True, "no": False}[o["incremental"]], quiet=args.quiet)
        write_occlusion(args.out, stem, e, shown, args.overwrite)
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
    text, first = compare.parity_report(_load(args.model, args), args.model, args.image, args.rtol)
    print(text)
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
    proto = model.export_explainer(args.method, shape=_shape(args.shape) if args.shape else None,
                                   all_classes=args.all_classes, **options)
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


def build_parser():
    from .commands import build_parser
    return build_parser(sys.modules[__name__])


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
