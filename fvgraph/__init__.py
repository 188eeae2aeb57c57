"""fvgraph: feature visualization for any exported CNN (ONNX), after the FeatureVis taxonomy.

    import fvgraph as fv
    model = fv.load("net.onnx")
    y = model.run(x)

The package's names are imported when first used (PEP 562): `import fvgraph` stays cheap, so the command line
starts fast and a notebook pays only for what it touches.
"""
from .errors import (DeviceError, ExecutionError, FvGraphError, FvGraphWarning, InputError, ModelLoadError,
                     RuleError, UnsupportedModelError)
from .explanation import Concept, Explanation, OutputTarget, Unit

__version__ = "0.1.0"

_LAZY = {"load": "model", "Model": "model", "export_explainer": "explainer", "Reconstruction": "methods.reconstruction",
         "Graph": "graph", "Layer": "graph", "Node": "graph", "Rules": "rules", "supported_op_types": "ops",
         "Objective": "methods.objectives", "Transforms": "methods.transforms", "Preprocessing": "contract",
         "OptionError": "errors"}
_MODULES = ("convert", "image", "methods", "render", "display", "contract", "tokens")


def __getattr__(name):
    import importlib
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'fvgraph' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["load", "export_explainer", "Model", "Graph", "Node", "Layer", "Explanation", "Unit", "Concept",
           "OutputTarget", "Preprocessing", "OptionError", "Reconstruction", "Rules", "Objective", "Transforms", "supported_op_types", "FvGraphError",
           "ModelLoadError", "UnsupportedModelError", "InputError", "ExecutionError", "DeviceError", "RuleError",
           "FvGraphWarning", "__version__"]
