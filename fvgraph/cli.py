"""The `fvgraph` command: a thin layer over the Python API. Errors print one line and exit nonzero."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import FvGraphError


def cmd_info(args) -> int:
    from .executor import shape_only_nodes
    from .graph import ValueInfo
    from .model import list_layers, parameter_count
    from .onnx_import import import_model
    from .errors import UnsupportedModelError
    from .model import Model

    graph = import_model(args.model)
    problem = None
    try:
        Model(graph)
    except UnsupportedModelError as e:
        problem = str(e)
    out = sys.stdout.write
    out(f"model     {args.model}\n")
    out(f"producer  {graph.producer or '?'}\nopset     {graph.opset}\n")
    for title, vals in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for v in vals:
            dt = v.dtype if v.dtype is not None else "?"
            out(f"{title:<9} {v.name} {v.describe()} {dt}\n")
            title = ""
    for k, v in sorted(graph.metadata.items()):
        if k != "classes":
            out(f"metadata  {k} = {v[:80]}\n")
    out(f"params    {parameter_count(graph):,}\n\n")
    layers = list_layers(graph, shape_only_nodes(graph))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fvgraph", description="Feature visualization for exported CNNs (ONNX).")
    p.add_argument("--version", action="version", version=f"fvgraph {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("info", help="inputs, outputs, opset and the layer table of a model")
    s.add_argument("model", help="an .onnx file")
    s.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FvGraphError as e:
        if args.debug:
            raise
        print(f"fvgraph: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fvgraph: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"fvgraph: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
