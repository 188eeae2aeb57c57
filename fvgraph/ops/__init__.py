"""The op registry: one kernel class per ONNX op type (or family), its forward and its VJP side by side.

A kernel is built once per node (attributes parsed, unsupported variants refused at load time) and then
called as `forward(*inputs) -> tuple of outputs`, with None for omitted optional inputs. Kernels are written
against the array module of their operands (`xp_of`), so NumPy and CuPy share one code path.
"""
from __future__ import annotations

from ..backend import xp_of
from ..errors import UnsupportedModelError
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

    def forward(self, *inputs):
        raise NotImplementedError

    # Reverse pass. `inputs`/`outputs` are the values of the forward run, `grads` one array per output
    # (None where nothing flows back), `wrt` the input positions needed (None: all). Returns one gradient
    # per input (None: not differentiable there, or not asked for).
    differentiable = True

    def vjp(self, inputs, outputs, grads, wrt=None):
        raise NotImplementedError(f"{self.op_type} has no VJP")


class NonDifferentiable(Op):
    """Ops whose outputs are integers, booleans or piecewise constant: nothing flows back."""
    differentiable = False

    def vjp(self, inputs, outputs, grads, wrt=None):
        return [None] * len(inputs)


def unbroadcast(g, shape):
    """Sum a broadcast gradient back to `shape` (numpy multidirectional broadcasting)."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, d in enumerate(shape) if d == 1 and g.shape[i + extra] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    return g.reshape(shape) if extra else g


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
    return sorted(set(REGISTRY) | set(IMPORT_REWRITES))


# Import the op families so that they register themselves.
from . import activation, conv, elementwise, linear, norm, pool, reduce, resize, shape  # noqa: E402,F401
