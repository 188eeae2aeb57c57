"""The op registry: one kernel class per ONNX op type (or family), its forward and its VJP side by side.

A kernel is built once per node (attributes parsed, unsupported variants refused at load time) and then
called as `forward(*inputs) -> tuple of outputs`, with None for omitted optional inputs. Kernels are written
against the array module of their operands (`backend.xp_of`), so NumPy and CuPy share one code path.

The VJP is not a computation but a *graph builder*: `vjp(b, inputs, outputs, grads, wrt)` takes value names
and emits, with the GraphBuilder `b`, the ONNX nodes that compute the gradient of each input in `wrt`. The
reverse pass is lowered into one graph this way (fvgraph.reverse) and any engine runs it.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..onnx_types import onnx_type
from ..graph import Node

REGISTRY: dict[str, type["Op"]] = {}


def register(*op_types: str):
    def deco(cls):
        for t in op_types:
            REGISTRY[t] = cls
        return cls
    return deco


class Op:
    """Base kernel. Subclasses override `setup` (parse attributes) and `forward`."""

    def __init__(self, node: Node):
        self.node = node
        self.op_type = node.op_type
        self.setup(node)

    def setup(self, node: Node) -> None:
        pass

    def unsupported(self, what: str):
        raise UnsupportedModelError(f"node {self.node.name!r} ({self.op_type}): {what}")

    def check(self, constants: dict) -> None:
        """Check the node's constant operands (weights, parameters) against its attributes and each other at
        load, so that a malformed model is named here rather than failing inside a kernel later: raise
        ValueError saying what is inconsistent (the executor names the node). `constants`: the model's
        initializers."""

    @staticmethod
    def operand(constants, node, k):
        """The k-th input's array when it is a constant of the model, else None."""
        v = node.inputs[k] if len(node.inputs) > k else ""
        return constants.get(v) if v else None

    def forward(self, *inputs):
        raise NotImplementedError

    # Reverse pass, as a graph builder. `inputs`/`outputs` are value names (an LRP rule may pass modified
    # operands in place of the node's own), `grads` one name per output (None where nothing flows back),
    # `wrt` the input positions whose gradient is wanted. Returns one name per input (None: not asked for,
    # or nothing flows back there).
    differentiable = True

    def vjp(self, b, inputs, outputs, grads, wrt):
        raise NotImplementedError(f"{self.op_type} has no VJP")

    def vjp_linearized(self, b, inputs, outputs, grads, wrt):
        """The VJP the LRP family's linear rules take: the op's own, except where the literature holds a factor
        constant to make the op linear (the variance of LayerNormalization and its kin)."""
        return self.vjp(b, inputs, outputs, grads, wrt)


class NonDifferentiable(Op):
    """Ops whose outputs are integers, booleans or piecewise constant: nothing flows back."""
    differentiable = False

    def vjp(self, b, inputs, outputs, grads, wrt):
        return [None] * len(inputs)


def only(wrt, n, **grads):
    """A VJP result list of length n with the gradients given by position (`g0=`, `g1=`, ...) where wanted."""
    out = [None] * n
    for k, v in grads.items():
        i = int(k[1:])
        if i in wrt:
            out[i] = v
    return out


def scatter_axis(b, g, index, size: int, axis: int):
    """Adjoint of gathering positions `index` (a 1-D list, or an int64 value holding them) along `axis` of a
    tensor with `size` elements there: a Pad for a plain ascending run, else a product with the 0/1 matrix
    P[i, index[i]] (duplicates add up)."""
    rank = b.rank(g)
    dims = list(b.dims(g))
    dims[axis] = size
    dims, dtype = tuple(dims), b.dtype(g)
    if not isinstance(index, str):
        index = [int(i) for i in index]
        if index == list(range(index[0], index[0] + len(index))) if index else False:
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = index[0], size - index[0] - len(index)
            return b.op("Pad", [g, b.ints(pads)], dims=dims, dtype=dtype, mode="constant")
        P = np.zeros((len(index), size), b.dtype(g))
        np.add.at(P, (np.arange(len(index)), index), 1)
        P = b.const(P, "scatter")
    else:
        rng = b.const(np.arange(size, dtype=np.int64))
        col = b.op("Unsqueeze", [index, b.ints([1])], dims=(None, 1), dtype=np.int64)
        hit = b.op("Equal", [col, rng], dims=(None, size), dtype=np.bool_)
        P = b.op("Cast", [hit], to=onnx_type(b.dtype(g)), dims=(None, size), dtype=b.dtype(g))
    return matmul_along(b, g, P, axis, dims)


def matmul_along(b, g, P: str, axis: int, dims) -> str:
    """g with its axis `axis` multiplied by the matrix value P (g's length there, the new length): one MatMul
    on that axis moved last (no Transpose when it is last already). dims: the result's."""
    rank, dtype = b.rank(g), b.dtype(g)
    if axis == rank - 1:
        return b.op("MatMul", [g, P], dims=tuple(dims), dtype=dtype)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    gd = list(b.dims(g))
    gd[axis], gd[-1] = gd[-1], gd[axis]
    moved = b.op("Transpose", [g], perm=perm, dims=tuple(gd), dtype=dtype)
    gd[-1] = dims[axis]
    out = b.op("MatMul", [moved, P], dims=tuple(gd), dtype=dtype)
    return b.op("Transpose", [out], perm=perm, dims=tuple(dims), dtype=dtype)



def upcast_half(forward):
    """Matrix-product kernels compute float16 in float32 (as onnxruntime does) and round once at the end."""
    def wrapped(self, *inputs):
        if inputs and getattr(inputs[0], "dtype", None) == "float16":
            up = [None if a is None else a.astype("float32") if a.dtype == "float16" else a for a in inputs]
            return tuple(y.astype("float16") for y in forward(self, *up))
        return forward(self, *inputs)
    wrapped.__name__ = forward.__name__
    wrapped.__doc__ = forward.__doc__
    return wrapped


def build_kernel(node: Node) -> Op:
    return REGISTRY[node.op_type](node)


# Ops the importer rewrites away: Constant becomes an initializer, Upsample becomes Resize.
IMPORT_REWRITES = ("Constant", "Upsample")


def supported_op_types() -> list[str]:
    from ..decompose import REWRITES
    return sorted(set(REGISTRY) | set(IMPORT_REWRITES) | set(REWRITES))


# Import the op families so that they register themselves.
from . import activation, conv, elementwise, gridsample, indexing, linear, norm, pool, quant, recurrent, reduce, resize, shape  # noqa: E402,F401,E501
