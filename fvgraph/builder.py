"""GraphBuilder: appends ONNX nodes to a copy of a graph. The reverse pass is written with it: every op's VJP
and every propagation rule emits nodes here instead of computing arrays, so the result is one graph that any
engine runs (onnxruntime, or fvgraph's own executor) and that can be exported.

Values carry their dims and dtype in a ShapeTable (see fvgraph.shapes): builders ask for static dims where the
nodes they emit need them (pads, split sizes, which axes a broadcast added) and never bake in the batch size.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node, ValueInfo
from .shapes import ShapeTable, ShapeUnknown

SMALL_CONST = 64  # constants up to this many elements are shared between the places that use them


class GraphBuilder:
    def __init__(self, graph: Graph, table: ShapeTable, param_inputs: bool = False):
        self.graph = graph  # the table is copied: values made here are this builder's alone
        self.table = ShapeTable(dict(table.dims), dict(table.dtypes), table.constants, table.measured)
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.inputs: list[ValueInfo] = []
        self.replaced: dict[int, Node] = {}   # forward node index -> the same node with more outputs
        self._taken = {v for n in graph.nodes for v in list(n.inputs) + list(n.outputs) + [n.name]}
        self._taken |= set(graph.initializers) | set(graph.input_names())
        self._small: dict = {}
        self._derived: dict = {}
        self._index = {id(n): i for i, n in enumerate(graph.nodes)}
        self._producers = graph.producers()
        self.param_inputs = param_inputs  # rule parameters as graph inputs (one graph for every value)
        self.params: dict = {}            # input name -> (parameter name, dtype)
        self._count = 0

    # ------------------------------------------------------------------ names, nodes, constants
    def fresh(self, base: str) -> str:
        while True:
            self._count += 1
            name = f"{base}~{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs, n_out: int = 1, like: str | None = None, dims=None, dtype=None, **attrs):
        """Emit one node; its (first) output gets the dims of `like`, or `dims`/`dtype` when given."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(Node(self.fresh(op_type), op_type, list(inputs), outs, attrs))
        if like is not None:
            self.table.set(outs[0], self.table.dims.get(like), self.table.dtypes.get(like))
        elif dims is not None or dtype is not None:
            self.table.set(outs[0], dims, dtype)
        return outs[0] if n_out == 1 else outs

    def const(self, value, base: str = "const") -> str:
        a = np.asarray(value)
        if a.size <= SMALL_CONST:
            key = (a.dtype.str, a.shape, a.tobytes())
            if key in self._small:
                return self._small[key]
        name = self.fresh(base)
        self.consts[name] = a
        self.table.set(name, a.shape, a.dtype)
        if a.size <= SMALL_CONST:
            self._small[key] = name
        return name

    def derived(self, source: np.ndarray, tag: str, make) -> str:
        """A constant computed from another (flipped weights, clamped weights), made once per lowering."""
        key = (id(source), tag)
        if key not in self._derived:
            self._derived[key] = (source, self.const(make(source), tag))
        return self._derived[key][1]

    def extra_output(self, node: Node, position: int, dims=None, dtype=None) -> str:
        """Output `position` of a forward node (MaxPool's Indices), added to the node when the model did not
        ask for it."""
        i = self._index[id(node)]
        current = self.replaced.get(i, self.graph.nodes[i])
        if len(current.outputs) > position and current.outputs[position]:
            return current.outputs[position]
        outs = list(current.outputs) + [""] * (position + 1 - len(current.outputs))
        outs[position] = self.fresh(f"{node.name}:{position}")
        self.replaced[i] = Node(current.name, current.op_type, list(current.inputs), outs, dict(current.attrs))
        self.table.set(outs[position], dims, dtype)
        return outs[position]

    def param(self, name: str, value, like: str) -> str:
        """A rule parameter (epsilon, alpha, beta) as a 0-d value of like's dtype: a graph input fed at each run
        (so a slider in `fvgraph serve` reuses one graph and session), or a constant (exported explainers)."""
        if not self.param_inputs:
            return self.scalar(value, like)
        dtype = self.dtype(like)
        key = f"param:{name}" if dtype == np.float32 else f"param:{name}:{dtype}"
        if key not in self.params:
            self.input(key, (), dtype)
            self.params[key] = (name, dtype)
        return key

    def scalar(self, v, like: str) -> str:
        """A 0-d constant of `like`'s dtype (broadcasts against it)."""
        return self.const(np.asarray(v, dtype=self.dtype(like)))

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def input(self, name: str, dims, dtype) -> str:
        self.inputs.append(ValueInfo(name, None if dims is None else tuple(dims), np.dtype(dtype)))
        self.table.set(name, dims, dtype)
        self._taken.add(name)
        return name

    # ------------------------------------------------------------------ what is known about values
    def dims(self, v: str) -> tuple:
        d = self.table.dims.get(v)
        if d is None:
            raise ShapeUnknown(v)
        return d

    def rank(self, v: str) -> int:
        return len(self.dims(v))

    def static(self, v: str, axes=None) -> list[int]:
        """Concrete dims of v (all, or the given axes); ShapeUnknown if one of them is symbolic."""
        d = self.dims(v)
        picked = d if axes is None else [d[a] for a in axes]
        if not all(isinstance(x, (int, np.integer)) for x in picked):
            raise ShapeUnknown(v)
        return [int(x) for x in picked]

    def tail(self, v: str, start: int) -> list[int]:
        """Concrete dims of v from axis `start` on (spatial dims: tail(x, 2))."""
        return self.static(v, list(range(start, self.rank(v))))

    def dtype(self, v: str) -> np.dtype:
        return self.table.dtypes.get(v, np.dtype(np.float32))

    def constant(self, v: str):
        """The array behind v when v is a constant (a weight of the model or one made here), else None."""
        if v in self.consts:
            return self.consts[v]
        if v in self.graph.initializers:
            return self.graph.initializers[v]
        return self.table.constants.get(v)  # computed from the input's shape only

    def producer(self, v: str):
        """The forward node that computes v (None for inputs and constants)."""
        return self._producers.get(v)

    # ------------------------------------------------------------------ small recurring pieces
    def zeros(self, like: str) -> str:
        shape = self.op("Shape", [like], dims=(self.rank(like),), dtype=np.int64)
        value = np.zeros(1, dtype=self.dtype(like))
        return self.op("ConstantOfShape", [shape], like=like, value=value)

    def shape_of(self, v: str) -> str:
        """v's shape as an int64 value: a constant when fully static, else a Shape node."""
        d = self.dims(v)
        if all(isinstance(x, (int, np.integer)) for x in d):
            return self.ints(list(d))
        return self.op("Shape", [v], dims=(len(d),), dtype=np.int64)

    def reshape_like(self, g: str, like: str) -> str:
        return self.op("Reshape", [g, self.shape_of(like)], like=like)

    def sum_to(self, g: str, like: str) -> str:
        """Adjoint of broadcasting g's operand `like` to g's shape: sum over the axes broadcasting added."""
        gd, ld = self.dims(g), self.dims(like)
        if gd == ld:
            return g
        extra = len(gd) - len(ld)
        axes = list(range(extra)) + [a + extra for a, d in enumerate(ld) if d == 1 and gd[a + extra] != 1]
        if axes:
            g = self.op("ReduceSum", [g, self.ints(axes)], keepdims=1,
                        dims=tuple(1 if a in axes else d for a, d in enumerate(gd)), dtype=self.dtype(g))
        if extra:
            g = self.reshape_like(g, like)
        return g

    def mul(self, a: str, b: str, like: str | None = None) -> str:
        return self.op("Mul", [a, b], like=like or a)

    def add(self, a: str, b: str, like: str | None = None) -> str:
        return self.op("Add", [a, b], like=like or a)

    def gate(self, cond: str, g: str) -> str:
        """g where cond holds, else 0: a Mul by the condition cast to g's type. In onnxruntime's CPU kernels
        this is 5.7x faster than Where(cond, g, 0) (measured on a 64x112x112 map: 0.95 vs 5.4 ms)."""
        return self.mul(g, self.cast(cond, self.dtype(g)), like=g)

    def where(self, cond: str, a: str, b: str, like: str) -> str:
        return self.op("Where", [cond, a, b], like=like)

    def named(self, v: str, name: str) -> str:
        """v under a fixed name (an Identity), for the graph's outputs."""
        self._taken.add(name)
        self.nodes.append(Node(self.fresh("Identity"), "Identity", [v], [name], {}))
        self.table.set(name, self.table.dims.get(v), self.table.dtypes.get(v))
        return name

    def cast(self, v: str, dtype, like: str | None = None) -> str:
        from .onnx_types import onnx_type
        dims = self.table.dims.get(like or v)
        return self.op("Cast", [v], dims=dims, dtype=dtype, to=onnx_type(dtype))

    # ------------------------------------------------------------------ the result
    def finish(self, outputs: list[str], output_types: bool = True) -> Graph:
        nodes = [self.replaced.get(i, n) for i, n in enumerate(self.graph.nodes)] + self.nodes
        outs = [ValueInfo(o, self.table.dims.get(o), self.table.dtypes.get(o)) for o in outputs]
        g = Graph(nodes, {**self.graph.initializers, **self.consts}, list(self.graph.inputs) + self.inputs, outs,
                  self.graph.opset, self.graph.producer, dict(self.graph.metadata))
        g.weight_files = self.graph.weight_files
        g.value_info = {}
        return g
