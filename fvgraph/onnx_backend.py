"""An `onnx.backend.base.Backend` over fvgraph, so the official ONNX backend node tests can run against it."""
from __future__ import annotations

import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from .model import Model, load


class FvGraphRep(BackendRep):
    def __init__(self, model: Model):
        self.model = model

    def run(self, inputs, **kwargs):
        names = self.model.graph.input_names()
        if not isinstance(inputs, dict):
            inputs = dict(zip(names, inputs))
        feeds = {k: numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for k, v in inputs.items()}
        outs = self.model.run(feeds, outputs=self.model.graph.output_names())
        return [outs[n] for n in self.model.graph.output_names()]


class FvGraphBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> FvGraphRep:
        # fvgraph's own executor: these tests are about its op semantics (onnxruntime has its own)
        cuda = device.upper().startswith("CUDA")
        return FvGraphRep(load(model, engine="cupy" if cuda else "numpy"))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() in ("CPU", "CUDA")

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("fvgraph runs whole models; use prepare()")
