"""The `fvgraph` command: a thin layer over the Python API. Errors print one line and exit nonzero."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import FvGraphError, InputError, refuse_overwrite

from .image import DEMO_MODEL  # noqa: E402,F401 -- the embedded model, as `fvgraph.cli.DEMO_MODEL` too


def _source(path):
    """A .mat file is converted from MatConvNet on the fly."""
    if str(path).lower().endswith(".mat"):
        from .convert import matconvnet
        return matconvnet(path)
    return path


def cmd_info(args) -> int:
    from .executor import shape_only_nodes
    from .graph import ValueInfo
    from .model import list_layers, parameter_count
    from .onnx_import import import_model
    from .errors import UnsupportedModelError
    from .model import Model

    graph = import_model(_source(args.model))
    problem, model = None, None
    try:
        model = Model(graph, engine="numpy", preprocess=getattr(args, "preprocess", None),
                      labels=getattr(args, "labels", None))
    except UnsupportedModelError as e:
        problem = str(e)
    out = sys.stdout.write
    layers = list_layers(graph, shape_only_nodes(graph))
    at, note = None, None
    if model is not None:
        try:
            at = model.concrete_shapes(layers, _shape(args.shape) if args.shape else None)
        except InputError as e:
            if args.shape:
                raise
            note = (f"shapes    as declared: at the size the preprocessing implies, {str(e).split(': ', 1)[-1][:120]}; "
                    "give the input size with --shape\n\n")
    concrete = {l.output: l.shape for l in layers} if at else {}
    out(f"model     {args.model}\n")
    out(f"producer  {graph.producer or '?'}\nopset     {graph.opset}\n")
    if model is not None and model.nhwc_input is not None:
        out("layout    NHWC input, shown channels first (fvgraph puts a Transpose in front)\n")
    for title, vals in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for v in vals:
            dt = v.dtype if v.dtype is not None else "?"
            shown = ValueInfo(v.name, concrete[v.name], None) if v.name in concrete else v  # never floor(...)
            out(f"{title:<9} {v.name} {shown.describe()} {dt}\n")
            title = ""
    for k, v in sorted(graph.metadata.items()):
        if k != "classes":
            text = " ".join(v.split())  # one line, however the exporter wrote it (paddle2onnx: a char per line)
            out(f"metadata  {k} = {text[:80]}{' ...' if len(text) > 80 else ''}\n")
    if model is not None and model.class_names():
        names = model.class_names()
        out(f"labels    {len(names)}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}\n")
    out(f"params    {parameter_count(graph):,}\n\n")
    if note:
        out(note)
    if at:
        out(f"shapes at input {'x'.join(str(d) for d in at)}"
            f"{'' if args.shape else ' (the size the model or its preprocessing implies; --shape to choose)'}\n\n")
    rows = [("#", "name", "op", "output shape", "params")]
    rows += [(str(l.index), l.name, l.op_type, ValueInfo(l.output, l.shape, None).describe(),
              f"{l.params:,}" if l.params else "") for l in layers]
    widths = [min(max(len(r[i]) for r in rows), 48) for i in range(5)]
    for r in rows:
        out("  ".join(c[:48].ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "\n")
    if problem:
        out("\n" + problem + "\n")
        return 1
    out(f"\nall {len({n.op_type for n in graph.nodes})} op types are supported\n")
    return 0


def _parse_params(items) -> dict:
    """--param epsilon=0.01 alpha=2 ... -> {"epsilon": "0.01", ...}: each method's options type the texts."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--param takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _output_target(args, model):
    """fv.OutputTarget from --target-index / --target-mask (with --target-output, --target-channel), or None."""
    index, mask_file = getattr(args, "target_index", None), getattr(args, "target_mask", None)
    if index is None and mask_file is None:
        if getattr(args, "target_output", None) or getattr(args, "target_channel", None) is not None:
            raise InputError("--target-output and --target-channel go with --target-index or --target-mask")
        return None
    from .explanation import OutputTarget
    if index is not None and mask_file is not None:
        raise InputError("give --target-index or --target-mask, not both")
    if index is not None:
        try:
            idx = tuple(int(v) for v in index.split(","))
        except ValueError:
            raise InputError(f"--target-index takes integers separated by commas (no batch axis), got {index!r}") \
                from None
        return OutputTarget(index=idx, output=args.target_output)
    from .methods.attribution import output_mask
    return OutputTarget(mask=output_mask(model, mask_file, args.target_output, args.target_channel),
                        output=args.target_output)


def _output_target_asked(args) -> bool:
    return getattr(args, "target_index", None) is not None or getattr(args, "target_mask", None) is not None


def _any_target(args, model):
    """The target the options name: a unit (--layer/--channel), an output element or region, or a class."""
    from .explanation import Unit
    if getattr(args, "layer", None):
        if _output_target_asked(args) or getattr(args, "target", None) is not None:
            raise InputError("--layer/--channel name a unit, which replaces --target, --target-index and "
                             "--target-mask; give one of them")
        return Unit(args.layer, getattr(args, "channel", None))
    return _class_or_output(args, model)


def _class_or_output(args, model):
    """An output element or region (--target-index/--target-mask), or a class (--target), or None."""
    out = _output_target(args, model)
    if out is not None:
        if getattr(args, "target", None) is not None:
            raise InputError("--target-index/--target-mask replace --target; give one of them")
        return out
    return _target(args.target)


def _target_options(s):
    s.add_argument("--target-index", metavar="I,J,...",
                   help="score one element of an output, e.g. 9,2049 = class 5 of anchor 2049 in a YOLO "
                        "(batch, 4+classes, anchors) output (no batch axis)")
    s.add_argument("--target-mask", metavar="FILE",
                   help="score an output region: a .npy weight array (broadcast to one sample's output) or a "
                        "grayscale image (resized to the output's height and width)")
    s.add_argument("--target-channel", type=int, help="with --target-mask: only this channel (class) of the output")
    s.add_argument("--target-output", metavar="NAME", help="the output the target reads (default: the first)")


def _target(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--target takes a class index, got {text!r} (use --layer/--channel for units)") from None


def _load_options(args) -> dict:
    return {"engine": getattr(args, "engine", "auto"), "device": getattr(args, "device", "cpu"),
            "threads": getattr(args, "threads", None), "preprocess": getattr(args, "preprocess", None),
            "labels": getattr(args, "labels", None), "cache": not getattr(args, "no_cache", False)}


def _load(path, args):
    """A model on the engine, device and threads the command line asks for."""
    from .model import load
    return load(path, **_load_options(args))


def cmd_convert(args) -> int:
    """A MatConvNet .mat to ONNX, written atomically: nothing is left at the output path on failure."""
    from .convert import matconvnet
    out = Path(args.output)
    refuse_overwrite(out, args.overwrite)
    proto = matconvnet(args.net)
    _save_onnx(proto, out)
    if not args.quiet:
        print(f"wrote {out} ({len(proto.graph.node)} nodes)")
    return 0


def cmd_preprocess(args) -> int:
    """The model with fvgraph's preprocessing and labels in its metadata (checked by loading it first)."""
    import json

    import onnx

    from .contract import load_labels, parse_preprocess
    spec, labels = parse_preprocess(getattr(args, "preprocess", None)), load_labels(getattr(args, "labels", None))
    if not spec and not labels:
        raise InputError("give --preprocess and/or --labels to write into the model")
    out = Path(args.output)
    if out.resolve() == Path(args.model).resolve():
        raise InputError(f"{out} is the model itself; write the copy elsewhere")
    refuse_overwrite(out, args.overwrite)
    _load(args.model, args)  # a model fvgraph can load, with this preprocessing
    proto = onnx.load(args.model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if spec:
        meta["fvgraph.preprocess"] = json.dumps({**json.loads(meta.get("fvgraph.preprocess", "{}")), **spec})
    if labels:
        meta["fvgraph.classes"] = json.dumps(labels)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    _save_onnx(proto, out)
    if not args.quiet:
        print(f"wrote {out}" + (f": preprocessing {json.dumps(spec)}" if spec else "") +
              (f", {len(labels)} labels" if labels else ""))
    return 0


def _save_onnx(proto, out: Path):
    """Written whole or not at all (fvgraph.files)."""
    import onnx

    from .files import write_atomic
    write_atomic(out, lambda tmp: onnx.save(proto, tmp))


def _stems(paths) -> list[str]:
    """Output names of single images: each file's stem, made safe and distinct (a.png and a.jpg, or two
    cat.jpg from two folders, get a hash of their path; never one map for two images)."""
    from .files import safe_part, unique_names
    return unique_names([safe_part(Path(p).stem) for p in paths], [str(p) for p in paths])


def explain_images(model, images, methods, out, target=None, params=None, overwrite=False, quiet=False, layer=None,
                   channel=None):
    """Explain each image with each method and write the maps; returns picture rows and predictions. Every
    map's file is checked before the first is written, so a refusal writes nothing."""
    from .batch import method_stems, write_explanations
    names = _stems(images)
    if not overwrite:
        for name in names:
            for s in method_stems(methods):
                for tail in (".png", ".npy"):
                    refuse_overwrite(Path(out) / f"{name}_{s}{tail}", overwrite, other_out=True)
    rows, preds = [], []
    for path, name in zip(images, names):
        row, pred = write_explanations(model, path, name, methods, out, target, dict(params or {}), overwrite,
                                       layer, channel)
        rows.append(row)
        preds.append(pred)
        if not quiet:
            print(f"{pred[0]}: {pred[2]}" + (f" (class {pred[1]}, p={pred[3]:.2f})" if pred[1] is not None else ""))
    return rows, preds


def cmd_explain(args) -> int:
    from .methods.registry import check_shared, lookup, parse_spec
    methods = _methods(args.method)
    params = _parse_params(args.param)
    for m in methods:
        lookup(parse_spec(m)[0])  # an unknown method is named before any work
    check_shared(methods, params)
    where = {"layer": args.layer, "channel": args.channel}
    if any(Path(p).is_dir() for p in args.images) or args.workers > 1 or args.ray:
        from .batch import explain_folder
        target = _class_or_output(args, _load(args.model, args) if _output_target_asked(args) else None)
        failed = {}
        done, skipped = explain_folder(args.model, args.images, methods, args.out, target, params, args.workers,
                                       args.ray, args.overwrite, args.quiet or None, _load_options(args), failed,
                                       **where)
        if not args.quiet:
            print(f"explained {done} image(s), skipped {skipped} already done; maps in {args.out}/")
        return _folder_exit(failed, done + skipped)

    model = _load(args.model, args)
    target = _class_or_output(args, model)
    if target is None and args.layer is None:
        target = _whole_output_unless_classes(model, args.quiet)
    if len(methods) > 1 or len(args.images) > 1:
        refuse_overwrite(Path(args.out) / "grid.png", args.overwrite, other_out=True)  # before any map
    rows, preds = explain_images(model, args.images, methods, args.out, target, params, args.overwrite, args.quiet,
                                 **where)
    if len(methods) > 1 or len(args.images) > 1:
        from .render import grid, save_png
        labels = [f"{p[2]} {p[3]:.2f}" if p[1] is not None else p[2] for p in preds]
        save_png(Path(args.out) / "grid.png", grid(rows, ["input"] + methods, labels), args.overwrite)
    if not args.quiet:
        print(f"wrote {len(args.images) * len(methods)} explanation(s) to {args.out}/")
    return 0


def _folder_exit(failed, succeeded) -> int:
    """A folder run finishes every image it can: unreadable ones are listed on one line; the exit status is
    1 only when no image at all has its results (0 otherwise, the warning saying what is missing)."""
    if failed:
        from .files import failure_line
        print(f"fvgraph: warning: {failure_line(failed)}", file=sys.stderr)
    return 1 if failed and not succeeded else 0


def _whole_output_unless_classes(model, quiet):
    """No target asked for, on a model whose output is a dense map (a text detector's probability map, a
    segmenter's (N, classes, H, W)): the command line explains the sum of the whole first output, and says so;
    the API, and the command line on a detector's (N, 4 + classes, anchors), ask for an OutputTarget instead. The model is run once at the size its preprocessing implies, so an input size
    that does not fit the model is named here, with what to do."""
    if len(model.inputs) != 1:
        return None
    from .errors import FvGraphError
    from .explanation import OutputTarget
    from .image import input_shape
    from .methods.attribution import logits_value, value_dims
    shape = input_shape(model)
    try:
        dims = value_dims(model, {model.graph.input_names()[0]: np.zeros(shape, np.float32)}, logits_value(model))
    except FvGraphError as e:
        declared = model.inputs[0].shape or ()
        if len(declared) == 4 and not all(isinstance(d, int) for d in declared[2:]):
            raise InputError(f"the model does not run at {shape[2]}x{shape[3]}, the size its preprocessing implies "
                             f"(its input size is not declared): give it, e.g. --preprocess size=48x320 ({e})") \
                from None
        raise
    if len(dims) != 4 or dims[2:] == (1, 1):  # classes, or a detector's (N, 4 + classes, anchors): its own error
        return None
    if not quiet:
        print(f"note: the output has shape {tuple(['N'] + list(dims[1:]))}, not (N, classes): explaining the sum "
              "of the whole output (--target-index or --target-mask choose a part)")
    return OutputTarget(mask=np.float32(1.0))


def cmd_demo(args) -> int:
    """The main job on the embedded model and photos: every method, each picture, and the grid."""
    from .image import demo_images
    from .methods import DEMO_METHODS
    from .render import grid, save_png
    model = _load(DEMO_MODEL, args)
    methods = list(DEMO_METHODS)
    out = Path(args.out)
    if not args.quiet:
        print(f"model: EfficientNet-Lite0 (ImageNet), embedded; methods: {', '.join(methods)}")
    rows, preds = explain_images(model, demo_images(), methods, out, overwrite=args.overwrite, quiet=args.quiet)
    labels = [f"{p[2]} {p[3]:.2f}" for p in preds]
    path = save_png(out / "grid.png", grid(rows, ["input"] + methods, labels), args.overwrite)
    if not args.quiet:
        print(f"wrote {path} and {len(rows) * len(methods)} maps to {out}/")
    return 0


def _pair(text, name):
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--{name} takes EXPONENT,WEIGHT (e.g. 2,0.01), got {text!r}") from None
    return a, b


def _channels(text):
    if text is None:
        return None
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _save_reconstruction(r, out, labels, overwrite, quiet):
    from .render import grid, save_npy, save_png
    if r.picture is None:
        raise InputError("the model's input is not a 3-channel image: only the .npy is written")
    names = [f"{k:02d}_{label}.png" for k, label in enumerate(labels)] + ["images.npy", "grid.png"]
    for name in names:  # all checked before the first is written
        refuse_overwrite(Path(out) / name, overwrite, other_out=True)
    for k, (pic, label) in enumerate(zip(r.picture, labels)):
        save_png(Path(out) / f"{k:02d}_{label}.png", pic, overwrite)
    save_npy(Path(out) / "images.npy", r.image, overwrite)
    path = save_png(Path(out) / "grid.png", grid([list(r.picture[i:i + 8]) for i in range(0, len(r.picture), 8)],
                                                 row_labels=None), overwrite)
    if not quiet:
        print(f"wrote {len(labels)} picture(s) and {path}")


def _optimizer_kwargs(args) -> dict:
    options = dict(lr=args.lr, jitter=args.jitter, seed=args.seed, optimizer=args.optimizer, quiet=args.quiet)
    if args.steps is not None:
        options["steps"] = args.steps
    if args.param:
        options["param"] = args.param
    for name in ("lp", "tv"):
        v = _pair(getattr(args, name), name)
        if v is not None:
            options[name] = v
    transforms = getattr(args, "transforms", None)
    crops = getattr(args, "crops", None)
    if transforms or crops:
        from .methods.transforms import parse
        t = parse(transforms or "default")
        if crops:
            from dataclasses import replace
            t = replace(t, crops=crops)
        options["transforms"] = t
    return options


def cmd_reconstruct(args) -> int:
    from .explanation import Unit
    from .methods.objectives import Objective, parse
    model = _load(args.model, args)
    options = _optimizer_kwargs(args)
    if args.diversity:
        options["diversity"] = args.diversity
    out_target = _output_target(args, model)
    if args.objective:
        targets, labels = [parse(args.objective)], ["objective"]
    elif out_target is not None:
        targets, labels = [out_target], ["output_target"]
    elif args.direction:
        if not args.layer:
            raise InputError("--direction needs --layer (the layer whose channel space it points in)")
        try:
            vec = np.load(args.direction)
        except (OSError, ValueError) as e:
            raise InputError(f"{args.direction}: not a readable .npy file ({e})") from None
        count = args.copies or 1
        targets, labels = [Objective.direction(args.layer, vec)] * count, [f"{args.layer}_direction"] * count
    elif args.layer is not None:
        chans = _channels(args.channel) or [None]
        if args.neuron:
            try:
                y, x = (int(v) for v in args.neuron.split(","))
            except ValueError:
                raise InputError(f"--neuron takes Y,X (a position of the layer), got {args.neuron!r}") from None
            targets = [Objective.neuron(args.layer, c, y, x) for c in chans]
        else:
            targets = [Unit(args.layer, c) for c in chans]
        labels = [f"{args.layer}_c{c}" if c is not None else args.layer for c in chans]
        if args.copies and args.copies > 1:  # one unit, several pictures (with --diversity: different ones)
            targets, labels = targets * args.copies, [f"{l}_{k}" for k in range(args.copies) for l in labels]
    else:
        classes = _channels(args.target) if args.target else None
        if not classes:
            raise InputError("say what to maximize: --target CLASS[,CLASS...], --layer L [--channel C[-D]], or "
                             "--objective EXPR")
        names = model.class_names()
        targets = classes
        labels = [f"{c}_{names[c]}" if names and 0 <= c < len(names) else str(c) for c in classes]
    r = model.reconstruct(targets, **options)
    from .files import safe_part
    _save_reconstruction(r, args.out, [safe_part(l) for l in labels], args.overwrite, args.quiet)
    return 0


def cmd_examples(args) -> int:
    """Dataset examples of a layer's channels over images or folders: examples.json and a picture per channel.
    The output folder's run state (fvgraph.files.RunState) makes a rerun resume its own run, and refuses a
    run of another model or other options, or a file it did not write, without --overwrite."""
    import json

    from PIL import Image

    from .files import RunState, write_atomic, write_text
    from .image import input_shape
    from .methods.examples import example_pictures, examples_json, resolve_channels, top_examples
    out = Path(args.out)
    model = _load(args.model, args)
    value = model.resolve(args.layer)
    chans = resolve_channels(model, value, _channels(args.channel) if args.channel else None,
                             np.zeros(input_shape(model), np.float32))
    lo = _load_options(args)
    state = RunState(out, "examples", args.model, {"layer": value, "channels": chans, "k": args.k,
                                                   "pictures": not args.no_pictures, "preprocess": lo["preprocess"],
                                                   "labels": lo["labels"]}, args.overwrite)
    pictures = [] if args.no_pictures else [f"channel_{c:04d}.png" for c in chans]
    state.claim(["examples.json", "examples.state.json"] + pictures)
    if args.overwrite:
        (out / "examples.state.json").unlink(missing_ok=True)  # --overwrite starts over
    failed = {}
    ex = top_examples(model, args.images, args.layer, chans, args.k, args.batch, args.workers, args.ray,
                      out / "examples.state.json", args.model, lo, args.quiet or None, failed)
    out.mkdir(parents=True, exist_ok=True)
    data = examples_json(value, ex)
    if not args.no_pictures:
        for c, pic in example_pictures(model, ex, args.layer).items():
            if pic is not None:
                write_atomic(out / f"channel_{c:04d}.png", lambda t, p=pic: Image.fromarray(p).save(t, format="PNG"))
    write_text(out / "examples.json", json.dumps(data, indent=1))
    state.failed = dict(failed)
    state.finish()
    if not args.quiet:
        print(f"wrote {out / 'examples.json'}: the top {args.k} of {len(ex)} channel(s)"
              + ("" if args.no_pictures else " and a picture per channel"))
    return _folder_exit(failed, 1)


def cmd_replace(args) -> int:
    """Patch replacement (Long et al. 2014) with a cached bank over a folder."""
    from PIL import Image

    from .cache import cache_dir
    from .methods.examples import build_bank, replace_patches
    out = Path(args.out)
    refuse_overwrite(out, args.overwrite)
    model = _load(args.model, args)
    cache = None if getattr(args, "no_cache", False) else (Path(args.cache) if args.cache else cache_dir())
    failed = {}
    bank = build_bank(model, [args.bank], args.layer, cache, quiet=args.quiet or None, failed=failed)
    pic, neighbours = replace_patches(model, args.image, bank, args.layer)
    from .files import write_atomic
    write_atomic(out, lambda t: Image.fromarray(pic).save(t, format="PNG"))
    _folder_exit(failed, 1)
    if not args.quiet:
        files = len({n[0] for n in neighbours})
        print(f"wrote {out}: {len(neighbours)} positions rebuilt from patches of {files} image(s); mean cosine "
              f"similarity {np.mean([n[3] for n in neighbours]):.3f}")
    return 0


def cmd_invert(args) -> int:
    from .image import load_image
    model = _load(args.model, args)
    options = _optimizer_kwargs(args)
    x = np.concatenate([load_image(p, model.preprocessing()) for p in args.images])
    r = model.invert(x, args.layer, **options)
    from .files import safe_part  # a layer named /../../x names a file inside --out, never a path
    _save_reconstruction(r, args.out, [safe_part(f"{s}_from_{args.layer}") for s in _stems(args.images)],
                         args.overwrite, args.quiet)
    return 0


def _box(text, name):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise InputError(f"--{name} takes HxW or N, e.g. 32x32, got {text!r}") from None
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


def cmd_occlude(args) -> int:
    from .image import load_image, read_rgb, resize_crop
    from .render import picture, save_npy, save_png
    model = _load(args.model, args)
    spec = model.preprocessing()
    target = _any_target(args, model)
    stems = _stems(args.images)
    for stem in stems:  # every file checked before the first is written
        for tail in ("_occlusion.png", "_occlusion_overlay.png", "_occlusion.npy"):
            refuse_overwrite(Path(args.out) / f"{stem}{tail}", args.overwrite, other_out=True)
    for path, stem in zip(args.images, stems):
        x = load_image(path, spec)
        e = model.occlusion(x, box=_box(args.box, "box"), stride=_box(args.stride, "stride"), fill=_fill(args.fill),
                            target=target, seed=args.seed, batch_size=args.batch_size, score=args.score,
                            incremental={"auto": "auto", "yes": True, "no": False}[args.incremental],
                            quiet=args.quiet)
        shown = resize_crop(read_rgb(path), spec)
        save_png(Path(args.out) / f"{stem}_occlusion.png", picture(e.relevance[0], "signed"), args.overwrite)
        save_png(Path(args.out) / f"{stem}_occlusion_overlay.png", picture(e.relevance[0], "heat", image=shown),
                 args.overwrite)
        save_npy(Path(args.out) / f"{stem}_occlusion.npy", e.relevance[0], args.overwrite)
        if not args.quiet:
            print(f"{Path(path).name}: {len(e.extras['boxes'])} boxes, wrote {args.out}/{stem}_occlusion*.png")
    return 0


def _optimizer_options(s, reconstruct=True):
    s.add_argument("--param", choices=["fourier", "maco", "pixel"],
                   help="how the picture is represented: fourier (Lucid's spectrum with decorrelated colour), maco "
                        "(the phase under a natural image's magnitude) or pixel" +
                        (" (default: fourier)" if reconstruct else " (default: pixel)"))
    s.add_argument("--steps", type=int, help="optimization steps (default: 256 for reconstruct, 200 for invert)")
    s.add_argument("--lr", type=float, help="Adam's step in the parameterization's units (default per param)")
    s.add_argument("--lp", help="Lp prior EXPONENT,WEIGHT (default for pixel: 2,0.01; none otherwise)")
    s.add_argument("--tv", help="total-variation prior BETA,WEIGHT (default for pixel: 2,0.1; none otherwise)")
    if reconstruct:
        s.add_argument("--crops", type=int, help="random crops/zooms/rotations per step (default 4; 1 and "
                                                 "--transforms none turn them off)")
        s.add_argument("--transforms", help="'default', 'none', or key=value items: crops, scale=LO:HI, shift, "
                                            "rotate (degrees), noise, flip")
    s.add_argument("--jitter", type=int, default=0, help="random shifts of up to this many pixels per step")
    s.add_argument("--optimizer", default="adam", choices=["adam", "momentum"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", "-o", default="fvgraph-out")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")


def _methods(text):
    """'gradient,lrp-epsilon:epsilon=0.001,beta=1,guided' -> methods, a parameter list staying with its method."""
    out = []
    for part in text.split(","):
        if "=" in part and out and ":" in out[-1]:
            out[-1] += "," + part
        else:
            out.append(part.strip())
    return [m for m in out if m]


def _report(rows, args, info=None) -> int:
    from .compare import table, write_json, write_junit
    print(table(rows))
    if getattr(args, "json", None):
        write_json(args.json, rows, info or {})
    if getattr(args, "junit", None):
        write_junit(args.junit, rows)
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
    if args.action == "compare":
        model = _load(args.model, args)
        rows, info = compare.compare(model, args.model, args.reference, args.rtol, args.atol)
        if info["model_sha256"] != info["reference_model_sha256"]:
            print("note: the model file differs from the one the reference was recorded with")
        return _report(rows, args, info)
    if args.action == "diff":
        a, b = _load(args.model, args), _load(args.other, args)
        rows = compare.diff(a, b, args.images, _methods(args.methods), args.rtol, args.atol)
        return _report(rows, args, {"model_a": args.model, "model_b": args.other})
    # parity
    import onnx
    from .image import load_image
    model = _load(args.model, args)
    proto = onnx.load(args.model) if not str(args.model).endswith(".mat") else _source(args.model)
    if args.image:
        x = load_image(args.image, model.preprocessing())
    else:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.inputs[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rows, first = compare.parity(model, proto, x, args.rtol)
    print(f"{'layer':<40} {'op':<20} {'rel L2 vs onnxruntime':>22}")
    for name, op, err, ok in rows:
        print(f"{name[:40]:<40} {op:<20} {err:>22.3g}{'' if ok else '  <- differs'}")
    if first:
        print(f"first divergence: {first}")
        return 1
    print(f"all {len(rows)} layers agree within {args.rtol:g}")
    return 0


def cmd_evaluate(args) -> int:
    """Faithfulness of each method's maps on each image: a table, evaluation.json and evaluation.png."""
    import json

    from .methods.faithfulness import evaluate_methods
    from .render import curves, save_png
    out = Path(args.out)
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    for f in (out / "evaluation.json", out / "evaluation.png"):
        refuse_overwrite(f, args.overwrite, other_out=True)
    model = _load(args.model, args)
    methods = _methods(args.method)
    found = evaluate_methods(model, args.images, methods, metrics, _any_target(args, model), args.steps)
    mean = found["mean_auc"]
    out.mkdir(parents=True, exist_ok=True)
    from .files import write_text
    write_text(out / "evaluation.json", json.dumps(
        {"model": str(args.model), "images": [str(p) for p in args.images], "methods": methods, "metrics": metrics,
         "steps": args.steps, "better": {"deletion": "lower", "insertion": "higher"}, **found}, indent=1))
    fractions = np.linspace(0, 1, args.steps + 1)
    panels = {f"{metric} ({'lower' if metric == 'deletion' else 'higher'} is better)":
              {meth: (fractions, np.mean([r["curve"] for r in found["results"]
                                          if r["metric"] == metric and r["method"] == meth], axis=0))
               for meth in methods} for metric in metrics}
    save_png(out / "evaluation.png", curves(panels), overwrite=True)
    if not args.quiet:
        print(f"{'method':<24}" + "".join(f"{m + ' AUC':>16}" for m in metrics) + f"   ({len(args.images)} image(s))")
        for meth in methods:
            print(f"{meth[:24]:<24}" + "".join(f"{mean[meth][m]:>16.4f}" for m in metrics))
        print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return 0


def cmd_methods(args) -> int:
    """The method table: each method, its map, whether it takes --layer and exports, its options."""
    from .methods.registry import lookup, table
    chosen = [lookup(args.name)] if args.name else list(table().values())
    for m in chosen:
        print(m.summary())
        for o in m.options:
            print(f"    -p {o.describe()}: {o.help}")
    return 0


def cmd_serve(args) -> int:
    """The interactive view in the browser (fvgraph.serve)."""
    from .serve import serve
    model = _load(args.model or DEMO_MODEL, args)
    return serve(model, args.images, args.host, args.port, args.quiet, int(args.max_upload * 2**20),
                 args.max_passes, args.allow_host or ())


def cmd_export_explainer(args) -> int:
    """A method lowered into one standalone ONNX model, written atomically; never over an existing file."""
    out = Path(args.output)
    refuse_overwrite(out, args.overwrite)
    model = _load(args.model, args)
    shape = _shape(args.shape) if args.shape else None
    from .methods.registry import lookup
    options = lookup(args.method).parse(_parse_params(args.param))
    if args.layer is not None:
        options["layer"] = args.layer
    proto = model.export_explainer(args.method, shape=shape, **options)
    _save_onnx(proto, out)
    if not args.quiet:
        print(f"wrote {out}: inputs {', '.join(i.name for i in proto.graph.input)} -> outputs "
              f"{', '.join(o.name for o in proto.graph.output)} ({len(proto.graph.node)} nodes)")
    return 0


def _shape(text):
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--shape takes dims like 1x3x224x224, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"--shape takes positive dims like 1x3x224x224, got {text!r}")
    return dims


def cmd_figure(args) -> int:
    from .figures import methods_figure, networks_figure
    out = Path(args.output)
    for f in (out, out.with_suffix(".npz")):
        refuse_overwrite(f, args.overwrite)
    if args.kind == "methods":
        model = _load(args.model[0], args)
        images = args.model[1:] + (args.image or [])
        if not images:
            raise InputError("figure methods needs MODEL IMAGE...")
        img, arrays = methods_figure(model, images, _methods(args.methods), args.percentile, args.colours, args.alpha,
                                     args.auc)
    else:
        if not args.image:
            raise InputError("figure networks needs --image IMAGE...")
        models = {Path(m).stem: _load(m, args) for m in args.model}
        img, arrays = networks_figure(models, args.image, args.method, args.percentile, args.colours, args.alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .files import write_atomic
    from PIL import Image
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise InputError(f"{out}: give an image file name (.png, .jpg, ...)")
    write_atomic(out, lambda t: img.save(t, format=fmt))
    write_atomic(out.with_suffix(".npz"), lambda t: np.savez_compressed(
        open(t, "wb"), **{k.replace("/", "__"): v for k, v in arrays.items()}))
    print(f"wrote {out} and {out.with_suffix('.npz')}")
    return 0


class _Subcommands:
    """add_parser with the options every command takes (engine, threads, debug)."""

    def __init__(self, sub, common):
        self.sub, self.common = sub, common

    def add_parser(self, name, **kw):
        return self.sub.add_parser(name, parents=[self.common], **kw)


def method_names(exports=False) -> list[str]:
    from .methods.registry import table
    return [k for k, m in table().items() if m.exports or not exports]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # defaults suppressed: given before or after the command
    common.add_argument("--engine", default=argparse.SUPPRESS, choices=["auto", "onnxruntime", "numpy", "cupy"],
                        help="what runs the graphs: onnxruntime (the default, auto), or fvgraph's own executor on "
                             "numpy / cupy")
    common.add_argument("--device", default=argparse.SUPPRESS, choices=["cpu", "cuda"],
                        help="cuda: onnxruntime's CUDA provider (onnxruntime-gpu), else CuPy")
    common.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="CPU threads (default: all cores)")
    common.add_argument("--preprocess", metavar="SPEC", default=argparse.SUPPRESS,
                        help="how pictures become the model's input: a preset (imagenet, caffe, tf, raw) and/or "
                             "key=value items, comma-separated, e.g. caffe,size=227 or layout=NHWC "
                             "(default: the model's metadata, else imagenet)")
    common.add_argument("--labels", metavar="FILE", default=argparse.SUPPRESS,
                        help="class names: a text file (one per line), a JSON list or dict, or 'imagenet' "
                             "(default: the model's metadata)")
    common.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                        help="build every lowered graph anew instead of reusing what earlier runs kept in the cache "
                             "($FVGRAPH_CACHE, default ~/.cache/fvgraph; FVGRAPH_CACHE=off disables it)")
    common.add_argument("--max-image-pixels", metavar="N", default=argparse.SUPPRESS,
                        help="the largest image read, in pixels (width x height, of the file and of the resize's "
                             "result), checked before decoding; e.g. 1e8 (default 50 megapixels, "
                             "$FVGRAPH_MAX_IMAGE_PIXELS)")
    common.add_argument("--max-image-aspect", metavar="R", default=argparse.SUPPRESS,
                        help="the largest ratio of an image's long side to its short one (default 32, "
                             "$FVGRAPH_MAX_IMAGE_ASPECT)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="log what is built (lowered graphs, sessions) and show tracebacks on errors")
    p = argparse.ArgumentParser(prog="fvgraph", description="Feature visualization for exported CNNs (ONNX).",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"fvgraph {__version__}")
    sub = _Subcommands(p.add_subparsers(dest="command", metavar="COMMAND"), common)
    s = sub.add_parser("info", help="inputs, outputs, opset and the layer table of a model")
    s.add_argument("model", help="an .onnx file")
    s.add_argument("--shape", help="the input shape to compute layer shapes at, e.g. 1x3x320x320")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("preprocess", help="write a preprocessing (--preprocess) and labels (--labels) into a copy of "
                                          "a model's metadata, so later commands need neither")
    s.add_argument("model", help="an .onnx file")
    s.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    s.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("convert", help="convert a MatConvNet network (.mat) to ONNX")
    s.add_argument("net", help="a MatConvNet .mat file (SimpleNN or DagNN)")
    s.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("explain", help="explain a model's predictions on images (heatmap PNGs and .npy)")
    s.add_argument("model", help="an .onnx file")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--method", "-m", default="guided",
                   help=f"{', '.join(method_names())}, or a rules .toml file; several separated by commas, "
                        "options as method:key=value,key=value (`fvgraph methods` lists them)")
    s.add_argument("--target", "-t", help="class index (default: the predicted class)")
    s.add_argument("--layer", help="for the CAMs: the layer the map is drawn at; with --channel, or for any other "
                                   "method: explain a unit of this layer instead of a class")
    s.add_argument("--channel", type=int, help="channel of --layer (a unit, for every method)")
    s.add_argument("--param", "-p", nargs="*", help="options for every method that takes them, e.g. epsilon=0.01 "
                                                     "samples=8 (`fvgraph methods` lists each method's)")
    s.add_argument("--out", "-o", default="fvgraph-out", help="output folder (default: fvgraph-out)")
    s.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    s.add_argument("--workers", type=int, default=1, help="processes for folders of images (default 1)")
    s.add_argument("--ray", metavar="ADDRESS", help="run a folder on a Ray cluster ('local' starts one here)")
    s.add_argument("--quiet", "-q", action="store_true")
    _target_options(s)
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("occlude", help="occlusion maps: the drop in the score when a box covers each region")
    s.add_argument("model")
    s.add_argument("images", nargs="+")
    s.add_argument("--box", default="32x32", help="box HxW (default 32x32)")
    s.add_argument("--stride", default="16x16", help="stride HxW (default 16x16)")
    s.add_argument("--fill", default="0", help="a number, one per channel (a,b,c), 'mean' or 'random'")
    s.add_argument("--target", "-t", help="class index (default: the predicted class)")
    s.add_argument("--layer", help="score a unit of this layer instead (with --channel)")
    s.add_argument("--channel", type=int)
    s.add_argument("--score", default="logit", choices=["logit", "prob"])
    s.add_argument("--batch-size", type=int, help="occluded copies per batch (default: from free memory)")
    s.add_argument("--incremental", default="auto", choices=["auto", "yes", "no"],
                   help="recompute only the windows each box changes (fvgraph's executor), or every copy in full "
                        "(the engine); auto: whichever the cost estimate says is faster")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", "-o", default="fvgraph-out")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    _target_options(s)
    s.set_defaults(func=cmd_occlude)

    s = sub.add_parser("reconstruct", help="activation maximization: pictures that drive classes or units")
    s.add_argument("model")
    s.add_argument("--target", "-t", help="class index or list (e.g. 1,130 or 0-7)")
    s.add_argument("--layer", help="maximize a channel of this layer instead")
    s.add_argument("--channel", help="channel index or list (e.g. 0-15); one picture each")
    s.add_argument("--neuron", metavar="Y,X", help="with --layer/--channel: the channel at this position only")
    s.add_argument("--direction", metavar="FILE.npy", help="with --layer: a direction in its channel space")
    s.add_argument("--objective", metavar="EXPR",
                   help='a combination, terms joined by " + " / " - ": e.g. "class:479 - 0.5*class:817" or '
                        '"channel:LAYER:5 + 2*neuron:LAYER:5:7:7" (kinds: class, channel, neuron, diversity)')
    s.add_argument("--diversity", type=float, default=0.0, help="Lucid's diversity weight across the pictures")
    s.add_argument("--copies", type=int, help="pictures per objective (different seeds; see --diversity)")
    _optimizer_options(s)
    _target_options(s)
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("examples", help="dataset examples: the images and patches that drive a layer's channels "
                                        "most, with their deconvnet and guided projections")
    s.add_argument("model")
    s.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("--layer", required=True)
    s.add_argument("--channel", help="channels, e.g. 0-63 or 3,7 (default: all)")
    s.add_argument("-k", type=int, default=9, help="images per channel (default 9)")
    s.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    s.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    s.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster ('local' for a local one)")
    s.add_argument("--no-pictures", action="store_true", help="examples.json only")
    s.add_argument("--out", "-o", default="fvgraph-examples")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_examples)

    s = sub.add_parser("replace", help="patch replacement (Long et al. 2014): an image rebuilt from the patches of "
                                       "its nearest neighbours at a layer, over a folder")
    s.add_argument("model")
    s.add_argument("image")
    s.add_argument("--bank", required=True, help="a folder of images (its feature bank is built once and cached)")
    s.add_argument("--layer", required=True)
    s.add_argument("--out", "-o", required=True, help="the .png to write")
    s.add_argument("--cache", help="where banks are kept (default: $FVGRAPH_CACHE or ~/.cache/fvgraph)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_replace)

    s = sub.add_parser("invert", help="reconstruct images from their representation at a layer")
    s.add_argument("model")
    s.add_argument("images", nargs="+")
    s.add_argument("--layer", required=True)
    _optimizer_options(s, reconstruct=False)
    s.set_defaults(func=cmd_invert)

    s = sub.add_parser("check", help="numeric comparisons for CI: record, compare, diff, parity")
    csub = _Subcommands(s.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    c = csub.add_parser("record", help="store outputs and explanations of images as a reference .npz")
    c.add_argument("model")
    c.add_argument("images", nargs="+")
    c.add_argument("--methods", default="gradient,guided,lrp-epsilon",
                   help="comma-separated; parameters as method:key=value,key=value")
    c.add_argument("--out", "-o", required=True)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--target", "-t", help="class index (default: the predicted class)")
    _target_options(c)
    c = csub.add_parser("compare", help="recompute a reference and compare: exit 0 agree, 1 differ, 2 bad input")
    c.add_argument("model")
    c.add_argument("reference")
    for cc in (c, csub.add_parser("diff", help="the same images and methods on two models")):
        cc.add_argument("--rtol", type=float, default=1e-4)
        cc.add_argument("--atol", type=float, default=1e-6)
        cc.add_argument("--json", help="write a JSON report")
        cc.add_argument("--junit", help="write a JUnit XML report")
    d = csub.sub.choices["diff"]
    d.add_argument("model")
    d.add_argument("other")
    d.add_argument("images", nargs="+")
    d.add_argument("--methods", default="gradient,guided,lrp-epsilon")
    c = csub.add_parser("parity", help="fvgraph vs onnxruntime on every layer; names the first divergence")
    c.add_argument("model")
    c.add_argument("--image")
    c.add_argument("--rtol", type=float, default=1e-4)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("figure", help="comparison grids: methods x images, or networks x images")
    s.add_argument("kind", choices=["methods", "networks"])
    s.add_argument("model", nargs="+", help="methods: MODEL IMAGE...; networks: MODEL...")
    s.add_argument("--image", nargs="*", help="images (networks figure)")
    s.add_argument("--methods", default="gradient,deconvnet,guided,lrp-epsilon,cam,occlusion")
    s.add_argument("--method", default="guided", help="the method of a networks figure")
    s.add_argument("--percentile", type=float, default=99.5, help="maps saturate beyond this percentile of |value|")
    s.add_argument("--kind", dest="colours", choices=["signed", "heat", "abs", "rgb"],
                   help="colour map for every column (default: per method: signed for LRP, heat over the image "
                        "for CAM/Grad-CAM/occlusion, black-and-white magnitude for gradients, rgb for guided)")
    s.add_argument("--alpha", type=float, default=0.5, help="opacity of heat maps over the image")
    s.add_argument("--auc", choices=["deletion", "insertion"], help="write this faithfulness AUC under each map")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_figure)

    s = sub.add_parser("evaluate", help="faithfulness: deletion and insertion curves and AUCs of each method's maps")
    s.add_argument("model", help="an .onnx file")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--method", "-m", default="random,gradient,guided,lrp-epsilon,gradcam,occlusion",
                   help="methods, comma-separated (parameters as method:key=value); random is the baseline to beat")
    s.add_argument("--metric", default="deletion,insertion", help="deletion, insertion or both")
    s.add_argument("--steps", type=int, default=16, help="points on each curve after the first (default 16)")
    s.add_argument("--target", "-t", help="class index (default: the predicted class)")
    _target_options(s)
    s.add_argument("--out", "-o", default="fvgraph-out")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("methods", help="the methods: their maps, options, defaults and ranges")
    s.add_argument("name", nargs="?", help="one method (default: all)")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("serve", help="an interactive view in the browser: every method, live parameters")
    s.add_argument("model", nargs="?", help="an .onnx or .mat file (default: the embedded EfficientNet-Lite0)")
    s.add_argument("--images", help="a folder of images to pick from (only its files are ever read)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    s.add_argument("--max-upload", type=float, default=20, help="largest accepted upload in MB (default 20)")
    s.add_argument("--max-passes", type=int, default=2048,
                   help="most forward/reverse passes one request may take (occlusion windows, steps; default 2048)")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a host name this server answers for besides its address, localhost and this machine's "
                        "name (behind a proxy; repeatable)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("export-explainer", help="write a method as a standalone ONNX model (runs without fvgraph)")
    s.add_argument("model", help="an .onnx file")
    s.add_argument("--method", "-m", default="gradient", help="a method that lowers into one graph: "
                   f"{', '.join(method_names(exports=True))}, or a rules .toml file")
    s.add_argument("--param", "-p", nargs="*", help="the method's options, e.g. epsilon=0.01")
    s.add_argument("--layer", help="the layer a CAM is drawn at")
    s.add_argument("--shape", help="input shape NxCxHxW where the model's is not fixed (the batch stays dynamic)")
    s.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_export_explainer)

    s = sub.add_parser("demo", help="every method on the embedded EfficientNet-Lite0 and photos, with a grid")
    s.add_argument("--out", "-o", default="fvgraph-demo", help="output folder (default: fvgraph-demo)")
    s.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_demo)
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

    def one_line(message, category, *rest, **kw):
        if issubclass(category, FvGraphWarning):
            print(f"fvgraph: warning: {message}", file=sys.stderr)
    warnings.showwarning = one_line
    if args.debug:
        import logging
        logging.basicConfig(format="fvgraph: %(message)s")
        logging.getLogger("fvgraph").setLevel(logging.DEBUG)
    try:
        with _ImageLimits(args):
            return int(args.func(args) or 0)
    except FvGraphError as e:
        if args.debug:
            raise
        print(f"fvgraph: error: {_describe(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fvgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (fvgraph info ... | head)
        sys.stderr.close()
        return 0
    except (OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"fvgraph: error: {_describe(e, args)}", file=sys.stderr)
        return 2


IMAGE_LIMITS = (("max_image_pixels", "--max-image-pixels", "max_pixels", "FVGRAPH_MAX_IMAGE_PIXELS", "1e8"),
                ("max_image_aspect", "--max-image-aspect", "max_aspect", "FVGRAPH_MAX_IMAGE_ASPECT", "64"))


class _ImageLimits:
    """--max-image-pixels / --max-image-aspect in force while the command runs (serve's requests included, and
    folder runs' worker processes through the environment), and as they were again after it (main called
    in-process, as the tests do). A value that is not a number of at least 1 is one InputError line."""

    def __init__(self, args):
        import math
        self.given = {}
        for attr, flag, key, var, example in IMAGE_LIMITS:
            text = getattr(args, attr, None)
            if text is None:
                continue
            try:
                v = float(str(text).strip())
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v >= 1):
                raise InputError(f"{flag} {text!r} is not a number of at least 1 (e.g. {flag} {example})")
            self.given[key] = (int(v) if key == "max_pixels" else v, var)

    def __enter__(self):
        import os

        from . import image
        self.saved = dict(image._SET), {var: os.environ.get(var) for _, var in self.given.values()}
        if self.given:
            image.set_image_limits(**{key: v for key, (v, _) in self.given.items()})
            os.environ.update({var: str(v) for v, var in self.given.values()})  # spawned workers read these
        return self

    def __exit__(self, *exc):
        import os

        from . import image
        limits, env = self.saved
        image._SET.clear()
        image._SET.update(limits)
        for var, old in env.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
        return False


def _describe(e, args) -> str:
    """A readable line for an error whose own text may be empty (MemoryError usually is)."""
    if isinstance(e, MemoryError):
        return (f"out of memory while running `fvgraph {args.command}`" + (f" ({e})" if str(e) else "") +
                "; try a smaller --batch-size or --batch, fewer --workers, or smaller images (--preprocess size=...)")
    return str(e) or f"{type(e).__name__} (no message; --debug shows where)"


if __name__ == "__main__":
    sys.exit(main())
