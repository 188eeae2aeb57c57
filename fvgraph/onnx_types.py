"""ONNX element types <-> NumPy dtypes, for the types fvgraph computes with."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .errors import UnsupportedModelError

DTYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}


def numpy_dtype(elem_type: int, where: str = "") -> np.dtype:
    """The NumPy dtype of an ONNX element type; strings, bfloat16, float8/4 and complex are refused."""
    if elem_type in DTYPES:
        return np.dtype(DTYPES[elem_type])
    name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
    raise UnsupportedModelError(f"{where}: element type {name} is not supported "
                                f"(fvgraph computes with float16/32/64, integers and bool)")


def onnx_type(dtype) -> int:
    """The ONNX element type of a NumPy dtype (for Cast's `to`)."""
    from onnx import helper
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
