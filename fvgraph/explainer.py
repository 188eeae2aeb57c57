"""Standalone explainers: a method lowered into one ONNX model that plain onnxruntime runs, without fvgraph.

Inputs: the model's inputs (batch dynamic), then `target` (int64, one class index per sample into the first
output, or into the logits before its softmax; -1 = the predicted class). Outputs: `relevance` first (the
input's shape; CAM and Grad-CAM (batch, H, W)), then the model's own outputs. Weights are embedded.
"""
from __future__ import annotations

import numpy as np
import onnx

from .errors import InputError
from .reverse import RELEVANCE, Target, rules_key
from .shapes import BATCH

ALL_CLASSES = ("cam", "reciprocam")  # the methods whose one graph gives every class's map


def export_explainer(model, method="gradient", *, shape=None, through_softmax: bool = False, all_classes=False,
                     **options) -> onnx.ModelProto:
    """The explainer of `method` (a method of the table that lowers into one graph: a rule preset, a rules
    .toml path, fv.Rules, "cam" or "gradcam") with its options, for `model`. shape: the input shape (any
    batch) where the model's own is not fixed. all_classes (CAM, ReciproCAM): a last output `saliency`, every
    class's map (batch, classes, H, W), beside the model's own outputs: the model and its saliency maps in one
    graph (ReciproCAM's: the portable counterpart of OpenVINO XAI's insert_xai)."""
    from .methods.attribution import logits_value
    from .methods.registry import lookup, table
    from .onnx_export import to_onnx
    m = lookup(method)
    if not m.exports:
        one_graph = [k for k, v in table().items() if v.exports]
        raise InputError(f"{m.name} does not lower into one graph (it averages or searches over many passes): "
                         f"the methods that export are {', '.join(one_graph)}")
    opts = m.check(options)
    if len(model.graph.inputs) != 1:
        raise InputError("export_explainer supports single-input models")
    first = model.graph.inputs[0]
    dims = tuple(shape) if shape is not None else first.shape
    if dims is None or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims[1:]):
        raise InputError(f"the model's input shape {first.describe()} is not fixed: pass shape= "
                         "(e.g. (1, 3, 224, 224)) or --shape 1x3x224x224")
    dims = (BATCH,) + tuple(int(d) for d in dims[1:])
    probe = {first.name: np.zeros((1,) + dims[1:], first.dtype or np.float32)}
    logits = logits_value(model, through_softmax)
    if m.layer and m.name != "cam" and opts.get("layer") is None:
        from .methods.cam import default_gradcam_layer
        opts["layer"] = default_gradcam_layer(model, probe, logits)
    spec = Target("class", logits)
    if all_classes and m.name not in ALL_CLASSES:
        raise InputError(f"all_classes (every class's map as one more output) is for {' and '.join(ALL_CLASSES)}; "
                         f"{m.name} explains one "
                         "class per pass")
    extra = {"all_classes": True} if all_classes else {}
    key = ("export", m.name, rules_key(m.rules) if m.rules is not None else None, repr(sorted(opts.items())), spec,
           bool(all_classes))
    lowered = model.lowered(key, probe, lambda table_: m.lower(model, m, table_, spec, opts, **extra),  # the graph,
                            persist=False)                                                            # no session
    outputs = [RELEVANCE] + model.graph.output_names() + (["saliency"] if all_classes else [])
    types = {o: (lowered.table.dims.get(o), lowered.table.dtypes.get(o, np.dtype(np.float32))) for o in outputs}
    proto, _ = to_onnx(lowered.graph, outputs, embed=True, types=types, name=f"{m.name} explainer",
                       input_shapes={first.name: dims, "target": (BATCH,)})
    proto.metadata_props.add(key="fvgraph.explainer", value=m.name)
    return proto
