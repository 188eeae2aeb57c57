"""The public Model: load an ONNX model (path, bytes, ModelProto) into the IR and run it on an engine."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import numpy as np

from .backend import Backend
from .errors import DeviceError, ExecutionError, FvGraphError, InputError, ModelLoadError
from .executor import Executor, Tape
from .graph import Graph, Layer
from .lru import LRU
from .onnx_import import import_model

log = logging.getLogger("fvgraph")
MAX_LOWERED = 16


class Model:
    """A loaded network: `graph` (fvgraph's IR), `inputs`, `outputs`, `layers`, `run` and the methods.

    `engine` runs the graph and every lowered explainer graph: "onnxruntime" (the default, "auto"), or
    fvgraph's own executor on "numpy" / "cupy". `executor` is fvgraph's own executor in any case (the
    reference, incremental occlusion, `check parity`)."""

    def __init__(self, graph: Graph, device: str = "cpu", source: str = "", engine: str = "auto",
                 threads: int | None = None, preprocess=None, labels=None):
        from .engines import ENGINES, ort_has_cuda
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
        if device not in ("cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        if engine == "auto" and device == "cuda" and not ort_has_cuda():
            engine = "cupy"
        if engine == "cupy":
            device = "cuda"
        from .contract import detect_layout, load_labels, parse_preprocess
        from .prepare import prepare
        self._preprocess, self._labels = parse_preprocess(preprocess), load_labels(labels)
        self.graph = graph  # the metadata the layout is read from
        self.source = source
        self._use(prepare(graph, engine, lambda g: self._preprocess.get("layout") or self.preprocessing().get("layout")
                          or detect_layout(g)), engine, device, threads)
        if self.executor.unsupported:
            import warnings
            from .errors import FvGraphWarning
            warnings.warn(FvGraphWarning(f"fvgraph cannot differentiate this model "
                                         f"({self.executor.unsupported_summary}): "
                                         "onnxruntime runs it, and methods that need forward passes only "
                                         "(occlusion) work; the others say why"), stacklevel=3)
        self.disk_cache = True  # lowered graphs kept across processes (fvgraph.diskcache); fv.load(cache=False)
        self.choices: dict = {}  # decisions made once per model (occlusion: windows or full passes)

    def _use(self, prepared, engine, device, threads):
        """Run the prepared graphs (fvgraph.prepare): fvgraph's executor over the explained graph and the
        engine."""
        from .engines import make_engine
        self.prepared = prepared
        self.graph, self.native, self.nhwc_input = prepared.graph, prepared.native, prepared.nhwc_input
        self._fixed_input = prepared.fixed_input
        self._engine_args = (engine, device, threads)
        graph = self.graph
        self.backend = Backend(device if engine in ("numpy", "cupy") else "cpu")
        # on onnxruntime, a model with ops fvgraph's executor lacks still loads: onnxruntime runs it and the
        # forward-only methods (occlusion, ...) work; running it on the executor or through the reverse pass
        # raises the UnsupportedModelError that names them (fvgraph's own engine refuses it here)
        self.executor = Executor(graph, self.backend, strict=engine in ("numpy", "cupy"))
        self.engine = make_engine(engine, self.executor, device, threads)
        self._device = device
        self._layers: list[Layer] | None = None
        self._tables: dict = {}
        self._lowered = LRU(MAX_LOWERED)

    # ----------------------------------------------------------------- description
    @property
    def device(self) -> str:
        return self._device

    @property
    def inputs(self):
        return self.graph.inputs

    @property
    def outputs(self):
        return self.graph.outputs

    @property
    def batch_limit(self) -> int | None:
        """The batch size the model's input fixes (exports often say 1), or None where it is free: methods
        that run many copies (integrated gradients, SmoothGrad, Score-CAM, occlusion, faithfulness) chunk
        their batches to it."""
        shape = self.graph.inputs[0].shape if self.graph.inputs else None
        return int(shape[0]) if shape and isinstance(shape[0], (int, np.integer)) and shape[0] > 0 else None

    @property
    def metadata(self) -> dict[str, str]:
        return self.graph.metadata

    @property
    def layers(self) -> list[Layer]:
        """One Layer per output of every node that depends on the input data (shape arithmetic and
        constant subgraphs are not layers), in execution order."""
        if self._layers is None:
            self._layers = list_layers(self.graph, self.executor.static)
        return self._layers

    def concrete_shapes(self, layers=None, shape=None):
        """Set concrete shapes on `layers` (default: self.layers) at one input size (`shape`, else the size the
        model or its preprocessing implies), the batch axis keeping its symbol: never the nested floor()
        expressions ONNX shape inference writes for symbolic sizes. Returns the input shape used, or None
        (several inputs and no shape)."""
        from .image import input_shape
        from .shapes import BATCH
        layers = self.layers if layers is None else layers
        if len(self.graph.inputs) != 1:
            if shape is not None:
                raise InputError("an input shape is for single-input models")
            return None
        v = self.graph.inputs[0]
        shape = tuple(shape) if shape is not None else input_shape(self) if v.shape and len(v.shape) == 4 else \
            (1,) + tuple(v.shape[1:]) if v.shape and all(isinstance(d, int) for d in v.shape[1:]) else None
        if shape is None:
            return None
        feeds = {v.name: np.zeros(shape, v.dtype or np.float32)}
        try:
            self.feeds(feeds)
            table = self.shape_table(feeds)
            if any(isinstance(d, str) and d != BATCH for l in layers for d in (table.dims.get(l.output) or ())[1:]):
                table = self.shape_table(feeds, measured=True)
        except FvGraphError as e:
            raise InputError(f"cannot compute the layer shapes at input {'x'.join(map(str, shape))}: {e}") from None
        batch = v.shape[0] if v.shape and isinstance(v.shape[0], str) else "N"
        for l in layers:
            d = table.dims.get(l.output)
            if d is not None:
                l.shape = tuple(batch if x == BATCH or (k == 0 and isinstance(x, str)) else x for k, x in enumerate(d))
        return shape

    def resolve(self, ref: Any) -> str:
        """The value name behind a layer reference: a value name, a layer (node) name, or a layer index. A graph
        output's name is that output first: exporters (keras2onnx) name a node like the output its last op writes
        (MatMul node 'dense_5' writing 'dense_5/MatMul:0', its bias Add writing the output 'dense_5')."""
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            n = len(self.layers)
            if not -n <= ref < n:
                raise InputError(f"layer index {ref} is out of range: the model has {n} layers (0..{n - 1}, "
                                 f"or negative from the end)")
            return self.layers[ref].output
        if isinstance(ref, str):
            if ref in self.graph.output_names():
                return ref
            for layer in self.layers:
                if layer.name == ref:
                    return layer.output
            if ref in self.executor.producer_index or ref in self.graph.input_names() \
                    or ref in self.graph.initializers:
                return ref
            if ref.lstrip("-").isdigit():  # an index given as text (the command line)
                return self.resolve(int(ref))
            close = [l.name for l in self.layers if ref.lower() in l.name.lower()][:5]
            hint = f"; similar: {close}" if close else "; `fvgraph info MODEL` lists the layers"
            raise InputError(f"unknown layer {ref!r}{hint}")
        raise InputError(f"a layer is a name or an index, got {type(ref).__name__}")

    # ----------------------------------------------------------------- running
    def feeds(self, x) -> dict:
        """Check and place the inputs: one array for a single-input model, or a dict by input name."""
        names = self.graph.input_names()
        if not isinstance(x, dict):
            if len(names) != 1:
                raise InputError(f"this model has {len(names)} inputs {names}: pass a dict {{name: array}}")
            x = {names[0]: x}
        unknown = [k for k in x if k not in names]
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {names}")
        missing = [k for k in names if k not in x]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model's inputs are {names}")
        out = {}
        for vi in self.graph.inputs:
            a = x[vi.name]
            if self.nhwc_input is not None and vi.name == self.nhwc_input.name and hasattr(a, "ndim"):
                from .contract import as_channels_first
                a = as_channels_first(np.asarray(a), self.nhwc_input)
            if type(a).__module__.startswith("cupy"):
                a = a.get()
            try:
                a = np.asarray(a)
            except Exception as e:
                raise InputError(f"input {vi.name!r}: not an array ({e})") from None
            if vi.dtype is not None and a.dtype != vi.dtype:
                same_kind = (a.dtype.kind in "fc") == (vi.dtype.kind in "fc") and a.dtype.kind != "O"
                if not same_kind or (a.dtype.kind == "b") != (vi.dtype.kind == "b"):
                    raise InputError(f"input {vi.name!r}: expected dtype {vi.dtype}, got {a.dtype}")
                a = a.astype(vi.dtype)
            if vi.shape is not None:
                if a.ndim != len(vi.shape):
                    raise InputError(f"input {vi.name!r}: expected rank {len(vi.shape)} with shape "
                                     f"{vi.describe()}, got shape {tuple(a.shape)}")
                bad = [i for i, (d, s) in enumerate(zip(vi.shape, a.shape)) if isinstance(d, int) and d > 0
                       and d != s]
                if bad:
                    raise InputError(f"input {vi.name!r}: expected shape {vi.describe()}, got {tuple(a.shape)} "
                                     f"(axis {bad[0]} differs)")
            out[vi.name] = a
        return out

    def forward(self, x, wanted: Iterable[str], keep: bool = False) -> Tape:
        """fvgraph's own executor (not the engine): a Tape of values on the executor's device."""
        feeds = {k: self.backend.to_device(v) for k, v in self.feeds(x).items()}
        return self.executor.run(feeds, list(wanted), keep=keep)

    def run(self, x, outputs: list | None = None):
        """First graph output as a NumPy array; with `outputs=[...]` (value names, layer names or layer
        indices), a dict from each reference as given to its NumPy array. Runs on the model's engine."""
        feeds = self.feeds(x)
        if self.native is not None:  # the model as written (see fvgraph.precision)
            native = {}
            for v in self.native.inputs:
                a = feeds[v.name]
                if self.nhwc_input is not None and v.name == self.nhwc_input.name:
                    a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # its own layout
                native[v.name] = a.astype(v.dtype) if v.dtype is not None else a
            try:
                return self._run(self.native, native, outputs)
            except FvGraphError:  # onnxruntime lacks a kernel of the model as written (a CUDA-only fused op)
                log.debug("the model as written does not run here; its decomposition runs instead")
                self.native = None
        return self._run(self.graph, feeds, outputs)

    def _run(self, graph, feeds, outputs):
        if outputs is None:
            name = graph.output_names()[0]
            return self.engine.run(graph, feeds, [name])[name]
        if isinstance(outputs, (str, int)):
            outputs = [outputs]
        names = [self.resolve(r) for r in outputs]
        got = self.engine.run(graph, feeds, list(dict.fromkeys(names)))
        return {r: got[n] for r, n in zip(outputs, names)}

    # ----------------------------------------------------------------- lowered graphs
    def shape_table(self, feeds: dict, measured: bool = False):
        """Dims and dtypes of every value for the inputs' signature, batch symbolic (fvgraph.shapes)."""
        from .shapes import complete, infer, measure, signature_dims, static_constants
        dims = {k: signature_dims(np.shape(v)) for k, v in feeds.items()}
        key = (tuple(sorted(dims.items())), measured)
        if key not in self._tables:
            try:
                constants = static_constants(self.executor, self.graph.inputs, dims)
            except ExecutionError:
                if self._fixed_input is None:
                    raise
                # the batch looked free to shape inference but is not (a class token expanded to a constant
                # batch of 1): the model keeps the batch its exporter fixed
                self._use(self.prepared.with_fixed_batch(), *self._engine_args)
                return self.shape_table(feeds, measured)
            table = None if measured else infer(self.graph, dims, constants)
            if table is None or not complete(table, self.graph, self.executor.static):
                table = measure(self.executor, self.graph.inputs, dims)
                log.debug("shapes measured by running fvgraph's executor (shape inference was incomplete)")
            table.constants = constants
            self._tables[key] = table
        return self._tables[key]

    def lowered(self, key: tuple, feeds: dict, build, persist: bool = True):
        """A lowered graph, built once per (method, options, input signature) by `build(table)`; when shape
        inference cannot say a dim the lowering needs, the shapes are measured and it is built again. With
        `persist` (and the onnxruntime engine, a model from a file, the cache on), it is also kept on disk in
        onnxruntime's optimized form, and a later process loads it instead of lowering again
        (fvgraph.diskcache)."""
        from .shapes import ShapeUnknown, signature_dims
        full = key + (tuple(sorted((k, signature_dims(np.shape(v)), str(np.asarray(v).dtype))
                                   for k, v in feeds.items())),)

        def make():
            entry = self._disk_entry(full) if persist else None
            if entry is not None:
                from .diskcache import discard, read
                meta = read(entry)  # verified: its key, shape and files' hashes (a bad entry is a miss)
                if meta is not None:
                    try:  # onnxruntime loads it now: an entry it refuses is a miss too, never a traceback
                        cached = _lowered_from(entry, meta)
                        self.engine.session(cached.graph, cached.outputs)
                        log.debug("lowered graph for %s from the cache %s", key[0], entry)
                        return cached
                    except Exception as e:
                        from .engines import _first_line
                        discard(entry, f"is refused by onnxruntime ({_first_line(e)[:160]})")
            try:
                result = build(self.shape_table(feeds))
            except ShapeUnknown:
                result = build(self.shape_table(feeds, measured=True))
            log.debug("built a lowered graph for %s: %d nodes", key[0], len(result.graph.nodes))
            if entry is not None:
                self.engine.persist(result.graph, entry, _lowered_meta(result))
            return result
        return self._lowered.use(full, make)

    def _disk_entry(self, full):
        from .engines import OrtEngine
        if not self.disk_cache or not isinstance(self.engine, OrtEngine) or self.device != "cpu":
            return None
        from .diskcache import entry_for
        inputs = [(v.name, v.shape, str(v.dtype)) for v in self.graph.inputs]
        return entry_for(self, [list(map(str, full)), inputs, self.nhwc_input is not None,
                                self.native is not None])

    # ----------------------------------------------------------------- explanations
    def explain(self, x, method="gradient", target=None, *, through_softmax=False, return_layers=(), progress=None,
                **options):
        """Explain the model's decision on x (a batch) with a method of the table (fvgraph.methods.registry:
        `fvgraph methods` lists them with their options). Returns an Explanation.

        Reverse-pass methods take samples=, sigma=, kind=, seed= (noise averaging: SmoothGrad and kin), or
        smooth= (True, or a dict of those)."""
        from .explanation import OutputTarget, Unit
        from .methods.registry import Call, lookup, table
        if isinstance(target, str) and target == "all":
            m = lookup(method)
            if m.all_classes is None:
                able = [k for k, v in table().items() if v.all_classes]
                raise InputError(f"target='all' (every class's map in one call) is for {', '.join(able)}; "
                                 f"{m.name} explains one target per pass")
            return m.all_classes(self, m, x, m.check(options), Call(through_softmax, (), progress))
        if isinstance(target, str):
            target = self.class_of(target)
        if target is not None and not isinstance(target, (Unit, OutputTarget, int, np.integer, list, tuple,
                                                          np.ndarray)):
            raise InputError(f"target must be None, an int, one int per sample, fv.Unit(...), fv.OutputTarget(...) "
                             f"or a seed array; got {type(target).__name__}")
        m = lookup(method)
        smooth = options.pop("smooth", None)
        if smooth is not None and smooth is not False and m.smoothable:
            if not isinstance(smooth, dict) and smooth is not True:
                raise InputError(f"smooth must be True or a dict of samples, sigma, kind, seed; got {smooth!r}")
            defaults = {"samples": 16} if smooth is True or "samples" not in smooth else {}
            options = {**defaults, **(smooth if isinstance(smooth, dict) else {}), **options}
        elif smooth not in (None, False):
            options["smooth"] = smooth  # named as unknown below
        checked = m.check(options)
        if m.family in ("rules", "cam"):
            target = self._predicted_time_major(x, target, through_softmax)
        return m.run(self, x, target, checked, Call(through_softmax, tuple(return_layers), progress))

    def _predicted_time_major(self, x, target, through_softmax):
        """A predicted-class target (None, -1) on a time-major output (T, N, C) resolved here, to the argmax of
        the class scores summed over time (fvgraph.methods.attribution.time_major_seed): the methods that fix
        the class once for all their copies (integrated gradients, SmoothGrad, faithfulness) read it batch first."""
        from .explanation import OutputTarget, Unit
        if isinstance(target, (Unit, OutputTarget)) or (isinstance(target, np.ndarray) and target.dtype.kind == "f"):
            return target
        if target is not None and np.all(np.asarray(target) >= 0):
            return target
        from .methods.attribution import batch_axis, class_indices, logits_value, time_major_predicted
        value = logits_value(self, through_softmax)
        try:
            feeds = self.feeds(x)
            dims = self.shape_table(feeds).dims.get(value)
        except FvGraphError:
            return target  # the method says what is wrong
        ax = batch_axis(dims)
        if ax == 0:
            return target
        n = int(np.shape(next(iter(feeds.values())))[0])
        classes = class_indices(target, dims, n, value)
        return np.where(classes < 0, time_major_predicted(self.run(x, outputs=[value])[value], ax), classes)

    def concepts(self, x, method="lrp-epsilon", layer=None, target=None, top=5, **options):
        """The concept atlas of one decision: the layer's channels ranked by their relevance to it, each with its
        conditional heatmap (see fvgraph.methods.concepts.atlas; concept= on explain gives one concept's map)."""
        from .methods.concepts import atlas
        if layer is None:
            raise InputError("concepts needs layer=: the layer whose channels are the concepts")
        return atlas(self, x, method, layer, target, top, **options)

    def detections(self, x, conf=0.25, iou=0.7, max_det=10, **options):
        """A detector's decoded, class-wise NMS'd detections per image, each with the target that explains it
        (see fvgraph.methods.detections)."""
        from .methods.detections import detections
        return detections(self, x, conf, iou, max_det, **options)

    def randomization(self, x, method="gradient", target=None, order="cascade", seed=0, **options):
        """The model-parameter randomization test (Adebayo et al. 2018; see fvgraph.methods.randomization)."""
        from .methods.randomization import randomization
        return randomization(self, x, method, target, order, seed, **options)

    def evaluate(self, x, relevance, metric="deletion", target=None, steps=16, fill="blur", through_softmax=False,
                 patch=None):
        """Faithfulness of a map: deletion or insertion curve and AUC (see fvgraph.methods.faithfulness)."""
        from .methods.faithfulness import evaluate
        target = self._predicted_time_major(x, target, through_softmax)
        return evaluate(self, x, relevance, metric, target, steps, fill, through_softmax, patch)

    def rules_for(self, method, params: dict):
        """The preset (name, .toml path or fv.Rules) with the caller's parameters; z^B bounds default to the
        model's preprocessing range."""
        from .rules import Rules
        rules = Rules.load(method)
        uses_zb = any(r == "zb" for r in list(rules.ops.values()) + [o.rule for o in rules.overrides] + [rules.default])
        if uses_zb and (rules.params.get("low") is None or rules.params.get("high") is None):
            lo, hi = self.input_bounds()  # the preset did not say: the bounds of the model's preprocessing
            params = {"low": lo, "high": hi, **params}
        return rules.with_params(**params)

    def export_explainer(self, method="gradient", **options):
        """A standalone ONNX explainer (see fvgraph.explainer.export_explainer)."""
        from .explainer import export_explainer
        return export_explainer(self, method, **options)

    def occlusion(self, x, box=(32, 32), stride=(16, 16), fill=0.0, target=None, **options):
        """Occlusion maps (see fvgraph.methods.occlusion.occlusion): relevance (N, H, W)."""
        from .methods.occlusion import occlusion
        return occlusion(self, x, box, stride, fill, target, **options)

    def reconstruct(self, target, shape=None, **options):
        """Activation maximization (see fvgraph.methods.reconstruction.reconstruct)."""
        from .methods.reconstruction import reconstruct
        return reconstruct(self, target, shape, **options)

    def invert(self, x, layer, **options):
        """Representation inversion (see fvgraph.methods.reconstruction.invert)."""
        from .methods.reconstruction import invert
        return invert(self, x, layer, **options)

    def preprocessing(self, **overrides):
        """How a picture becomes this model's input (a fvgraph.contract.Preprocessing): its metadata's spec (or
        ImageNet's), then what `fv.load(preprocess=)` said, then `overrides`."""
        from .contract import Preprocessing
        return Preprocessing.from_metadata(self.metadata, self.inputs[0].shape if self.inputs else None,
                                           **{**getattr(self, "_preprocess", {}), **overrides})

    def input_bounds(self):
        """Per-channel (low, high) of valid inputs under the model's preprocessing (for the z^B rule)."""
        from .image import input_range
        return input_range(self.preprocessing())

    def class_names(self) -> list[str] | None:
        """What `fv.load(labels=)` gave, else what the export's metadata names (see fvgraph.contract)."""
        from .contract import labels_from_metadata
        return self._labels or labels_from_metadata(self.metadata)

    def class_of(self, label) -> int:
        """A class index from its label (as the model's labels write it; case and spaces aside), or from an
        index written as text; one line naming the nearest labels otherwise."""
        text = str(label).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        names = self.class_names()
        if not names:
            raise InputError(f"class {text!r}: the model has no class names (give an index, or --labels FILE)")
        key = " ".join(text.lower().split())
        exact = [i for i, n in enumerate(names) if " ".join(str(n).lower().split()) == key]
        if len(exact) == 1:
            return exact[0]
        within = [i for i, n in enumerate(names) if key in str(n).lower()]
        if len(within) == 1 and not exact:
            return within[0]
        import difflib
        near = exact or within or [names.index(n) for n in difflib.get_close_matches(text, names, 5, 0.5)]
        hint = ", ".join(f"{names[i]!r} ({i})" for i in near[:5]) if near else "none close"
        raise InputError(f"class {text!r} is not one of the model's {len(names)} labels"
                         f"{' (it matches several)' if len(near) > 1 and (exact or within) else ''}: nearest "
                         f"{hint}")

    def __repr__(self):
        ins = ", ".join(f"{v.name}{v.describe()}" for v in self.inputs)
        return f"<fvgraph.Model {os.path.basename(self.source) or '?'}: {len(self.graph.nodes)} nodes, inputs {ins}>"


def _lowered_meta(lowered) -> dict:
    """What a disk-cache entry says of a lowered graph besides the graph itself."""
    g, t = lowered.graph, lowered.table

    def values(vs):
        return [[v.name, None if v.shape is None else [d if isinstance(d, (int, np.integer)) else str(d)
                                                       for d in v.shape], str(np.dtype(v.dtype or np.float32))]
                for v in vs]
    outputs = [type(v)(v.name, t.dims.get(v.name), t.dtypes.get(v.name)) for v in g.outputs]
    return {"output": lowered.output, "target": lowered.target, "layers": lowered.layers,
            "extras": {k: v for k, v in lowered.extras.items() if isinstance(v, str)}, "applied": lowered.applied,
            "seed_inputs": list(lowered.seed_inputs), "inputs": values(g.inputs), "outputs": values(outputs),
            "params": {k: [name, str(np.dtype(dtype))] for k, (name, dtype) in lowered.params.items()}}


def _lowered_from(entry, meta):
    from .engines import CachedGraph
    from .graph import ValueInfo
    from .reverse import Lowered
    from .shapes import ShapeTable

    def values(rows):
        return [ValueInfo(name, None if dims is None else tuple(dims), np.dtype(dtype)) for name, dims, dtype in rows]
    inputs, outputs = values(meta["inputs"]), values(meta["outputs"])
    table = ShapeTable(measured=False)
    for v in inputs + outputs:
        table.set(v.name, v.shape, v.dtype)
    return Lowered(CachedGraph(entry, inputs, outputs), meta["output"], meta["target"], meta["layers"],
                   meta["extras"], meta["applied"], tuple(meta["seed_inputs"]), table,
                   {k: (name, np.dtype(dtype)) for k, (name, dtype) in meta["params"].items()})


def list_layers(graph: Graph, shape_only: set[int]) -> list[Layer]:
    layers = []
    for i, n in enumerate(graph.nodes):
        if i in shape_only:
            continue
        params = sum(int(graph.initializers[v].size) for v in n.inputs  # weights, not scalar settings
                     if v in graph.initializers and graph.initializers[v].dtype.kind == "f"
                     and graph.initializers[v].ndim >= 1)
        for k, o in enumerate(o for o in n.outputs if o):
            vi = graph.value_info.get(o)
            layers.append(Layer(len(layers), n.name if k == 0 else f"{n.name}:{k}", n.op_type, o,
                                vi.shape if vi else None, params if k == 0 else 0))
    return layers


def load(source: Any, engine: str = "auto", device: str = "cpu", threads: int | None = None, preprocess=None,
         labels=None, cache: bool = True) -> Model:
    """Load an ONNX model from a path, bytes or an onnx.ModelProto (external data is read beside the path);
    a MatConvNet .mat path is converted on the fly. engine: "auto" (= "onnxruntime"), "onnxruntime",
    "numpy" or "cupy"; device "cuda" runs onnxruntime's CUDA provider (or CuPy); threads: all cores unless
    set. preprocess: a preset ("imagenet", "caffe", "tf", "raw"), a text spec or a dict; labels: a file,
    a list or "imagenet" (see fvgraph.contract); both override the model's metadata. cache: keep lowered
    graphs on disk for later processes (fvgraph.diskcache; FVGRAPH_CACHE=off disables it everywhere)."""
    extra = dict(preprocess=preprocess, labels=labels)
    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".mat"):
        from .convert import matconvnet
        graph = import_model(matconvnet(source))
        model = Model(graph, device=device, source=os.fspath(source), engine=engine, threads=threads, **extra)
        model.disk_cache = False  # the converted graph has no file of its own
        return model
    graph = import_model(source)
    src = source if isinstance(source, (str, os.PathLike)) else ""
    try:
        model = Model(graph, device=device, source=os.fspath(src) if src else "", engine=engine, threads=threads,
                      **extra)
        model.disk_cache = bool(cache)
        return model
    except FvGraphError:
        raise
    except Exception as e:  # what a corrupt but parseable file can still break
        raise ModelLoadError(f"malformed model ({type(e).__name__}: {e})") from None


def parameter_count(graph: Graph) -> int:
    return sum(int(v.size) for v in graph.initializers.values() if v.dtype.kind == "f")
