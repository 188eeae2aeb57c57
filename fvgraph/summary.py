"""What `fvgraph info` shows about a model, as data (summary) and as the text the command prints (text): a
model fvgraph cannot load is still summarized, with the reason it cannot."""
from __future__ import annotations

from .errors import InputError


def source(path):
    """A model file as the importers take it: a .mat file is converted from MatConvNet on the fly."""
    if str(path).lower().endswith(".mat"):
        from .convert import matconvnet
        return matconvnet(path)
    return path


def summary(path, shape=None, preprocess=None, labels=None) -> dict:
    """The model's inputs, outputs, metadata, labels, parameter count and layer table, each layer's shape at
    `shape` (else the size the model or its preprocessing implies, when that runs). "problem": why fvgraph
    cannot run the model (None when it can); "note": why the shapes are only the declared ones."""
    from .errors import UnsupportedModelError
    from .executor import shape_only_nodes
    from .graph import ValueInfo
    from .model import Model, list_layers, parameter_count
    from .onnx_import import import_model

    graph = import_model(source(path))
    problem, model = None, None
    try:
        model = Model(graph, engine="numpy", preprocess=preprocess, labels=labels)
    except UnsupportedModelError as e:
        problem = str(e)
    layers = list_layers(graph, shape_only_nodes(graph))
    at, note = None, None
    if model is not None:
        try:
            at = model.concrete_shapes(layers, shape)
        except InputError as e:
            if shape:
                raise
            note = (f"as declared: at the size the preprocessing implies, {str(e).split(': ', 1)[-1][:120]}; "
                    "give the input size with --shape")
    concrete = {l.output: l.shape for l in layers} if at else {}

    def values(vals):  # never floor(...): the concrete shape where there is one
        return [{"name": v.name, "dtype": v.dtype if v.dtype is not None else "?",
                 "shape": (ValueInfo(v.name, concrete[v.name], None) if v.name in concrete else v).describe()}
                for v in vals]
    return {"model": str(path), "producer": graph.producer or "?", "opset": graph.opset,
            "nhwc_input": model is not None and model.nhwc_input is not None,
            "inputs": values(graph.inputs), "outputs": values(graph.outputs),
            "metadata": {k: " ".join(v.split()) for k, v in sorted(graph.metadata.items()) if k != "classes"},
            "labels": (model.class_names() or []) if model is not None else [],
            "params": parameter_count(graph), "shape_at": at, "shape_given": bool(shape), "note": note,
            "layers": [{"index": l.index, "name": l.name, "op": l.op_type,
                        "shape": ValueInfo(l.output, l.shape, None).describe(), "params": l.params} for l in layers],
            "op_types": len({n.op_type for n in graph.nodes}), "problem": problem}


def text(s: dict) -> str:
    """The summary as `fvgraph info` prints it: a header, then the layer table."""
    lines = [f"model     {s['model']}", f"producer  {s['producer']}", f"opset     {s['opset']}"]
    if s["nhwc_input"]:
        lines.append("layout    NHWC input, shown channels first (fvgraph puts a Transpose in front)")
    for title, vals in (("inputs", s["inputs"]), ("outputs", s["outputs"])):
        for v in vals:
            lines.append(f"{title:<9} {v['name']} {v['shape']} {v['dtype']}")
            title = ""
    for k, v in s["metadata"].items():  # one line each, however the exporter wrote it (paddle2onnx: a char per line)
        lines.append(f"metadata  {k} = {v[:80]}{' ...' if len(v) > 80 else ''}")
    names = s["labels"]
    if names:
        lines.append(f"labels    {len(names)}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    lines += [f"params    {s['params']:,}", ""]
    if s["note"]:
        lines += [f"shapes    {s['note']}", ""]
    if s["shape_at"]:
        how = "" if s["shape_given"] else " (the size the model or its preprocessing implies; --shape to choose)"
        lines += [f"shapes at input {'x'.join(str(d) for d in s['shape_at'])}{how}", ""]
    rows = [("#", "name", "op", "output shape", "params")]
    rows += [(str(l["index"]), l["name"], l["op"], l["shape"], f"{l['params']:,}" if l["params"] else "")
             for l in s["layers"]]
    widths = [min(max(len(r[i]) for r in rows), 48) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c[:48].ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if s["problem"]:
        lines += ["", s["problem"]]
    else:
        lines += ["", f"all {s['op_types']} op types are supported"]
    return "\n".join(lines) + "\n"
