"""fvgraph: feature visualization for any exported CNN (ONNX), after the FeatureVis taxonomy.

    import fvgraph as fv
    model = fv.load("net.onnx")
    y = model.run(x)
"""
from .errors import (DeviceError, ExecutionError, FvGraphError, FvGraphWarning, InputError, ModelLoadError,
                     RuleError, UnsupportedModelError)
from .explanation import Explanation, OutputTarget, Unit
from .explainer import export_explainer
from .methods.reconstruction import Reconstruction
from .graph import Graph, Layer, Node
from .model import Model, load
from .rules import Rules
from . import convert, image, methods  # noqa: E402,F401  (fvgraph.convert.matconvnet, fvgraph.methods.*)
from .ops import supported_op_types

__version__ = "0.1.0"

__all__ = ["load", "export_explainer", "Model", "Graph", "Node", "Layer", "Explanation", "Unit", "OutputTarget", "Reconstruction", "Rules", "supported_op_types", "FvGraphError", "ModelLoadError",
           "UnsupportedModelError", "InputError", "ExecutionError", "DeviceError", "RuleError", "FvGraphWarning", "__version__"]
