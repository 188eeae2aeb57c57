"""Converters from other formats to ONNX (so fvgraph and onnxruntime both run the result)."""
from .matconvnet import matconvnet  # noqa: F401
