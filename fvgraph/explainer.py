"""Standalone explainers: a method lowered into one ONNX model that plain onnxruntime runs, without fvgraph.

Inputs: the model's inputs (batch dynamic), then `target` (int64, one class index per sample into the first
output, or into the logits before its softmax; -1 = the predicted class). Outputs: `relevance` first (the
input's shape; CAM and Grad-CAM (batch, H, W)), then the model's own outputs. Weights are embedded.
"""
from __future__ import annotations

import numpy as np
import onnx

from .errors import InputError
from .reverse import RELEVANCE, Target, lower, rules_key
from .shapes import BATCH


def export_explainer(model, method="gradient", *, layer=None, upsample: bool = True, shape=None,
                     through_softmax: bool = False, **params) -> onnx.ModelProto:
    """The explainer of `method` (a preset name, a rules .toml path, fv.Rules, "cam" or "gradcam") for
    `model`. shape: the input shape (any batch) where the model's own is not fixed."""
    from .methods.attribution import logits_value
    from .methods.cam import lower_cam
    from .onnx_export import to_onnx
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
    if method in ("cam", "gradcam"):
        if params:
            raise InputError(f"unknown option(s) {sorted(params)} for {method} (options: layer=, upsample=)")
        if method == "gradcam" and layer is None:
            from .methods.cam import default_gradcam_layer
            layer = default_gradcam_layer(model, probe, logits)
        ref = model.resolve(layer) if layer is not None else None
        spec = Target("class", logits)
        lowered = model.lowered(("export", method, ref, bool(upsample), spec), probe,  # the graph itself, not
                                lambda table: lower_cam(model, method, table, spec, layer, upsample),  # a cached
                                persist=False)                                                          # session
    else:
        if layer is not None:
            raise InputError(f"layer= is for cam and gradcam; {method!r} explains the input")
        rules = model.rules_for(method, params)
        if rules.integrate or rules.smooth:
            raise InputError(f"{rules.name} averages many passes over changed inputs; a standalone explainer is one "
                             "pass: export 'gradient' and average its maps over your path or noise")
        spec = Target("class", logits)
        lowered = model.lowered(("export", rules_key(rules), spec), probe,
                                lambda table: lower(model, rules, spec, table, param_inputs=False), persist=False)
    outputs = [RELEVANCE] + model.graph.output_names()
    types = {o: (lowered.table.dims.get(o), lowered.table.dtypes.get(o, np.dtype(np.float32))) for o in outputs}
    proto, _ = to_onnx(lowered.graph, outputs, embed=True, types=types, name=f"{method} explainer",
                       input_shapes={first.name: dims, "target": (BATCH,)})
    proto.metadata_props.add(key="fvgraph.explainer", value=method if isinstance(method, str) else method.name)
    return proto
