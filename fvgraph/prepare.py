"""Loading as explicit passes: the graph fvgraph explains, derived from the model as written by pure graph ->
graph steps (none changes its input), in this order:

1. explainable: fused and quantized operators decomposed, float16 widened to float32 (fvgraph.precision,
   fvgraph.decompose); the model as written stays `native`, what `run` runs where an engine can;
2. channels first: an NHWC image model is shown NCHW through a Transpose (fvgraph.contract.channels_first);
3. free batch: an input whose batch the exporter fixed at 1 gets a symbolic batch where shape inference shows
   nothing depends on it, so methods run their copies as batches (`with_fixed_batch` undoes it when a run at
   another batch shows otherwise).

`Prepared` holds the result; fvgraph.model.Model runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .graph import Graph, ValueInfo


@dataclass(frozen=True)
class Prepared:
    graph: Graph                      # what fvgraph explains
    native: Graph | None              # the model as written, where it differs and an engine runs it
    nhwc_input: ValueInfo | None      # the model's own NHWC input, when fvgraph shows it channels first
    fixed_input: ValueInfo | None     # the input as declared, when its batch was freed

    def with_fixed_batch(self) -> "Prepared":
        """The same with the exporter's fixed batch back (a batch that looked free but is not)."""
        if self.fixed_input is None:
            return self
        shape = self.fixed_input.shape
        native = None if self.native is None else _with_input(self.native, replace(self.native.inputs[0],
                                                                                   shape=shape))
        return Prepared(_with_input(self.graph, self.fixed_input), native, self.nhwc_input, None)


def prepare(graph: Graph, engine: str, layout_of) -> Prepared:
    """The passes above; layout_of(graph) says "NHWC" for a channels-last image model (the caller reads the
    preprocessing contract and the graph)."""
    from .errors import InputError
    explained, native = explainable(graph, engine)
    nhwc = None
    if layout_of(explained) == "NHWC":
        if len(explained.inputs) != 1 or not explained.inputs[0].shape or len(explained.inputs[0].shape) != 4:
            raise InputError("layout=NHWC is for models with one rank-4 image input")
        from .contract import channels_first
        explained, nhwc = channels_first(explained)
    freed, fixed = free_batch(explained)
    if fixed is not None and native is not None:
        native = _with_input(native, replace(native.inputs[0], shape=(freed.inputs[0].shape[0],)
                                             + tuple(native.inputs[0].shape[1:])))
    return Prepared(freed, native, nhwc, fixed)


def explainable(graph: Graph, engine: str) -> tuple[Graph, Graph | None]:
    """(the graph decomposed and widened, the model as written or None where they are the same or no engine
    runs the original: fvgraph's executor has no kernels for fused and QOperator ops)."""
    from .decompose import REWRITES
    from .precision import explainable_twin
    twin = explainable_twin(graph)
    if twin is None:
        return graph, None
    runs_native = engine in ("auto", "onnxruntime") or not any(n.op_type in REWRITES for n in graph.nodes)
    return twin, graph if runs_native else None


def free_batch(graph: Graph) -> tuple[Graph, ValueInfo | None]:
    """(the graph with its input's batch symbolic, the input as declared) where exporters fixed the batch (at
    1, torch.onnx's default) and shape inference shows every computed value following a symbolic batch;
    else (graph, None)."""
    from .executor import shape_only_nodes
    from .shapes import BATCH, infer
    if len(graph.inputs) != 1 or not graph.inputs[0].shape or not isinstance(graph.inputs[0].shape[0], int):
        return graph, None
    v = graph.inputs[0]
    if not all(isinstance(d, int) for d in v.shape[1:]):
        return graph, None
    try:
        table = infer(graph, {v.name: (BATCH,) + tuple(v.shape[1:])})
    except Exception:
        return graph, None
    static = shape_only_nodes(graph)
    dims = [table.dims.get(o) for i, n in enumerate(graph.nodes) if i not in static for o in n.outputs if o]
    if dims and all(d is not None and len(d) >= 1 and isinstance(d[0], str) for d in dims):
        return _with_input(graph, type(v)(v.name, (BATCH,) + tuple(v.shape[1:]), v.dtype)), v
    return graph, None


def _with_input(graph: Graph, first: ValueInfo) -> Graph:
    """A copy of the graph whose first input is `first` (nodes, weights and the rest shared)."""
    return replace(graph, inputs=[first] + list(graph.inputs[1:]))
