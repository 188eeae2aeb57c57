"""What each `fvgraph` command accepts: its argparse declarations, each shared option declared once (output
folder or file, overwrite, quiet, the targets, the optimizer, the options every command takes). What the
commands do is fvgraph.cli; what they compute is the API."""
from __future__ import annotations

import argparse

from . import __version__


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


def build_parser(h) -> argparse.ArgumentParser:
    """The whole command line; h: the module of the commands' handlers (fvgraph.cli)."""
    common = _common()
    p = argparse.ArgumentParser(prog="fvgraph", allow_abbrev=False,
                                description="Feature visualization for exported CNNs (ONNX).",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"fvgraph {__version__}")
    sub = _Subcommands(p.add_subparsers(dest="command", metavar="COMMAND"), common)
    onnx = {"help": "an .onnx file"}
    s = sub.add_parser("info", h.cmd_info, help="inputs, outputs, opset and the layer table of a model")
    _arg(_model(s, False, **onnx), "--shape", help="the input shape to compute layer shapes at, e.g. 1x3x320x320")

    _writes_file(_model(sub.add_parser("preprocess", h.cmd_preprocess, help="write a preprocessing (--preprocess) and "
                        "labels (--labels) into a copy of a model's metadata, so later commands need neither"),
                        False, **onnx))
    s = sub.add_parser("convert", h.cmd_convert, help="convert a MatConvNet network (.mat) to ONNX")
    _writes_file(_arg(s, "net", help="a MatConvNet .mat file (SimpleNN or DagNN)"))

    s = _model(sub.add_parser("explain", h.cmd_explain, help="explain a model's predictions on images (heatmap PNGs "
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

    s = _model(sub.add_parser("occlude", h.cmd_occlude, help="occlusion maps: the drop in the score when a box covers "
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

    s = _model(sub.add_parser("reconstruct", h.cmd_reconstruct, help="activation maximization: pictures that drive "
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

    s = _model(sub.add_parser("examples", h.cmd_examples, help="dataset examples: the images and patches that drive a "
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

    s = _model(sub.add_parser("replace", h.cmd_replace, help="patch replacement (Long et al. 2014): an image rebuilt "
                              "from the patches of its nearest neighbours at a layer, over a folder"), False, **onnx)
    _arg(s, "image")
    _arg(s, "--bank", required=True, help="a folder of images (its feature bank is built once and cached)")
    _arg(s, "--layer", required=True)
    _arg(s, "--cache", help="where banks are kept (default: $FVGRAPH_CACHE or ~/.cache/fvgraph)")
    _writes(s, required=True, help="the .png to write")

    s = _model(sub.add_parser("invert", h.cmd_invert, help="reconstruct images from their representation at a layer"),
               **onnx)
    _optimizer_options(_arg(s, "--layer", required=True), reconstruct=False)

    s = sub.add_parser("check", h.cmd_check, help="numeric comparisons for CI: record, compare, diff, parity")
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

    s = sub.add_parser("figure", h.cmd_figure, help="comparison grids: methods x images, or networks x images")
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

    s = _model(sub.add_parser("evaluate", h.cmd_evaluate, help="faithfulness: deletion and insertion curves and AUCs of "
                              "each method's maps"), **onnx)
    _arg(s, "--method", "-m", default="random,gradient,guided,lrp-epsilon,gradcam,occlusion",
         help="methods, comma-separated (parameters as method:key=value); random is the baseline to beat")
    _arg(s, "--metric", default="deletion,insertion", help="comma-separated: deletion, insertion, road-morf, "
         "road-lerf, faithfulness-correlation (mufidelity), pointing-game, energy-pointing (with --boxes), "
         "max-sensitivity, sparseness, complexity, adcc (average drop, coherency, complexity), randomization (the "
         "parameter randomization test)")
    _arg(s, "--steps", type=int, default=16, help="points on each curve after the first (default 16)")
    _arg(s, "--boxes", metavar="FILE", help="the object's boxes or masks for the pointing metrics: a .json of "
         "boxes (x0, y0, x1, y1) keyed by image file name, a mask image or .npy")
    _arg(s, "--seed", type=int, default=0, help="the seed of the randomized weights (default 0)")
    _writes(_targets(s))

    s = _arg(_arg(sub.add_parser("concepts", h.cmd_concepts, help="the concepts one decision used (CRP): a layer's "
                                 "channels ranked by relevance, each with its conditional heatmap"), "model"),
             "image", help="the image whose decision is explained")
    _arg(s, "--layer", required=True, help="the layer whose channels are the concepts")
    _arg(s, "--method", "-m", default="lrp-epsilon", help="a reverse-pass method (default lrp-epsilon)")
    _arg(s, "-k", type=int, default=5, help="concepts shown (default 5)")
    _arg(s, "--lower-layer", help="also each concept's most relevant channels at this lower layer")
    _arg(s, "--images", nargs="+", help="images or folders: each concept's top examples by relevance among them")
    _arg(s, "--examples", type=int, default=4, help="examples per concept with --images (default 4)")
    _targets(_writes(s, "fvgraph-concepts"))

    s = _model(sub.add_parser("clusters", h.cmd_clusters, help="where the model fails across a folder (SpRAy): "
                              "clusters of the explanations of one class"), "image files or folders", **onnx)
    _arg(s, "--method", "-m", default="lrp-epsilon", help="the method whose maps are clustered")
    _method_options(s, "options of the method, e.g. epsilon=0.01")
    _arg(s, "--clusters", type=int, help="how many clusters (default: from the eigengap)")
    _arg(s, "--size", type=int, default=32, help="maps are downsized to SIZE x SIZE (default 32)")
    _arg(s, "--seed", type=int, default=0)
    _arg(s, "--workers", type=int, default=1, help="local processes (default 1)")
    _arg(s, "--ray", metavar="ADDRESS", help="run on a Ray cluster ('local' for a local one)")
    _targets(_writes(s, "fvgraph-clusters"), "class index or label whose images are clustered (default: all)")

    s = _model(sub.add_parser("discover", h.cmd_discover, help="concept discovery across a folder: a layer's "
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

    _arg(sub.add_parser("methods", h.cmd_methods, help="the methods: their maps, options, defaults and ranges"), "name",
         nargs="?", help="one method (default: all)")

    s = sub.add_parser("serve", h.cmd_serve, help="an interactive view in the browser: every method, live parameters")
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

    s = _model(sub.add_parser("export-explainer", h.cmd_export_explainer, help="write a method as a standalone ONNX "
                              "model (runs without fvgraph)"), False, **onnx)
    _arg(s, "--method", "-m", default="gradient", help="a method that lowers into one graph: "
         f"{', '.join(method_names(exports=True))}, or a rules .toml file")
    _method_options(s, "the method's options, e.g. epsilon=0.01")
    _arg(s, "--layer", help="the layer a CAM is drawn at")
    _arg(s, "--all-classes", action="store_true", help="with -m cam or reciprocam: one more output, saliency "
         "(batch, classes, H, W), every class's map beside the model's outputs")
    _arg(s, "--shape", help="input shape NxCxHxW where the model's is not fixed (the batch stays dynamic)")
    _writes_file(s)

    _writes(sub.add_parser("demo", h.cmd_demo, help="every method on the embedded EfficientNet-Lite0 and photos, with "
                           "a grid"), "fvgraph-demo")
    return p
