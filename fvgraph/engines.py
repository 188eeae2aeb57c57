"""Engines: what runs a graph (the model itself, or a model with its reverse pass lowered into it).

- "onnxruntime" (the default): the graph is written as ONNX (fvgraph.onnx_export) and run by an onnxruntime
  session; CUDAExecutionProvider where onnxruntime-gpu and a GPU are present and device="cuda". onnxruntime's
  kernels run a forward at this machine's sgemm floor, about 2x fvgraph's NumPy kernels.
- "numpy" / "cupy": fvgraph's own Executor on the host or on a GPU. It is the reference the tests compare
  onnxruntime with, and the only engine that runs incremental occlusion.

Weights reach onnxruntime without a copy where they still lie in the model's file: the session gets
external-data references into that file and maps it itself (see fvgraph.onnx_file), so every session over the
same model shares one copy in the page cache. Prepacking is off for that reason (packed weights are a private
copy per session; on this CPU it did not change ResNet-18's or VGG-16's forward time, measured side by side).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .errors import DeviceError, ExecutionError
from .lru import LRU

log = logging.getLogger("fvgraph")
ENGINES = ("auto", "onnxruntime", "numpy", "cupy")
MAX_SESSIONS = 8


class Engine:
    name = "?"

    def run(self, graph, feeds: dict, outputs: list[str]) -> dict:
        """{name: NumPy array} for the requested values of `graph` given `feeds` (NumPy arrays)."""
        raise NotImplementedError


class ExecutorEngine(Engine):
    """fvgraph's Executor; one per graph, the model's own for the model's graph."""

    def __init__(self, model_executor):
        self.base = model_executor
        self.name = "numpy" if model_executor.backend.device == "cpu" else "cupy"
        self._executors = LRU(MAX_SESSIONS)

    def executor(self, graph):
        if graph is self.base.graph:
            return self.base
        from .executor import Executor
        # the graph is kept with its executor: its id() is not reused while the entry lives
        return self._executors.use(id(graph), lambda: (graph, Executor(graph, self.base.backend,
                                                                       shared=self.base.aligned_constants())))[1]

    def run(self, graph, feeds, outputs):
        ex = self.executor(graph)
        backend = ex.backend
        tape = ex.run({k: backend.to_device(v) for k, v in feeds.items()}, list(outputs))
        return {k: host_array(backend.to_host(tape.values[k])) for k in outputs}


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, device: str = "cpu", threads: int | None = None, fallback: Engine | None = None):
        """fallback: the engine that runs graphs onnxruntime cannot load (engine="auto": a model in float64,
        an op onnxruntime lacks); None: such graphs are an error."""
        import onnxruntime as ort
        self.ort = ort
        # onnxruntime's own log lines (red, on stderr) stay quiet: fvgraph says what went wrong in one line;
        # --debug (the fvgraph logger at DEBUG) lets them through
        ort.set_default_logger_severity(1 if log.isEnabledFor(logging.DEBUG) else 4)
        self.fallback = fallback
        self.threads = threads or os.cpu_count() or 1
        self.device = device
        if device == "cuda":
            if not ort_has_cuda():
                raise DeviceError("device='cuda' with the onnxruntime engine needs onnxruntime-gpu and a GPU "
                                  "(pip install 'fvgraph[gpu]'); or use engine='cupy', or device='cpu'")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._sessions = LRU(MAX_SESSIONS)

    def session(self, graph, outputs):
        """The session computing `outputs` of `graph` (None: onnxruntime refused it and the fallback runs it).
        A session over all of the graph's outputs (a cached one) serves any subset."""
        full = self._sessions.get((id(graph), "all"))
        if full is not None:
            return full[1]
        if isinstance(graph, CachedGraph):
            return self._sessions.use((id(graph), "all"), lambda: (graph, self._cached_session(graph)))[1]
        return self._sessions.use((id(graph), tuple(outputs)), lambda: (graph, self._new_session(graph, outputs)))[1]

    def _options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 1 if log.isEnabledFor(logging.DEBUG) else 4  # see __init__
        so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    def _cached_session(self, graph):
        """A session over an optimized graph from the disk cache: nothing left to optimize."""
        so = self._options()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        log.debug("onnxruntime session from the cache: %s", graph.entry)
        return self.ort.InferenceSession(str(graph.entry / "optimized.onnx"), so, providers=self.providers)

    def persist(self, graph, entry, meta: dict) -> bool:
        """Build the session over all of `graph`'s outputs, having onnxruntime write its optimized graph into a
        new disk-cache entry (fvgraph.diskcache) with `meta`; the session then serves this process too."""
        from . import diskcache
        weights = sum(a.nbytes for a in graph.initializers.values())
        if self.device == "cuda" or weights > diskcache.MAX_BYTES:
            return False  # writing a copy of large weights costs more than the optimization it saves
        tmp = diskcache.staging(entry)
        if tmp is None:
            return False
        outputs = graph.output_names()
        so_extra = {"optimized_model_filepath": str(tmp / "optimized.onnx")}
        sess = self._new_session(graph, outputs, so_extra)
        if sess is None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        self._sessions.put((id(graph), "all"), (graph, sess))
        diskcache.publish(tmp, entry, meta)
        return True

    def _new_session(self, graph, outputs, extra=None):
        from .onnx_export import to_onnx
        types = {o: (None, graph.value_info[o].dtype) for o in outputs if o in graph.value_info}
        memory = {}
        proto, base = to_onnx(graph, outputs, types=types, memory=memory)
        so = self._options()
        if extra:  # write the optimized graph, its weights in one data file beside it
            so.optimized_model_filepath = extra["optimized_model_filepath"]
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        if base is not None:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", base)
        if memory:  # onnxruntime copies these once; they are not serialized into the model
            so.add_external_initializers(list(memory), [self.ort.OrtValue.ortvalue_from_numpy(a)
                                                        for a in memory.values()])
        _drop_trailing_empty_inputs(proto)
        log.debug("onnxruntime session: %d nodes, outputs %s", len(proto.graph.node), list(outputs)[:4])
        try:
            return self.ort.InferenceSession(proto.SerializeToString(), so, providers=self.providers)
        except Exception as e:
            if self.fallback is None:
                raise ExecutionError(f"onnxruntime could not load the graph ({_first_line(e)}); "
                                     "engine='numpy' runs it with fvgraph's own executor") from None
            log.debug("onnxruntime cannot run this graph (%s); fvgraph's own executor runs it", _first_line(e))
            return None

    def run(self, graph, feeds, outputs):
        outputs = list(outputs)
        direct = {o: feeds[o] if o in feeds else graph.initializers[o] for o in outputs
                  if o in feeds or o in graph.initializers}
        computed = [o for o in outputs if o not in direct]
        result = dict(direct)
        if computed:
            sess = self.session(graph, computed)
            if sess is None:
                return self.fallback.run(graph, feeds, outputs)
            names = {i.name for i in sess.get_inputs()}
            try:
                values = sess.run(computed, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in names})
            except Exception as e:
                raise ExecutionError(f"onnxruntime failed: {_first_line(e)}") from None
            result.update(zip(computed, values))
        return {o: np.asarray(result[o]) for o in outputs}


class CachedGraph:
    """Stands for a lowered graph whose optimized form lies in a disk-cache entry: what the engine needs to
    feed it and name its outputs (see fvgraph.diskcache)."""

    def __init__(self, entry, inputs, outputs):
        self.entry, self.inputs, self.outputs = entry, inputs, outputs
        self.initializers, self.value_info, self.nodes = {}, {}, []

    def output_names(self):
        return [v.name for v in self.outputs]

    def input_names(self):
        return [v.name for v in self.inputs]


def _drop_trailing_empty_inputs(proto):
    """Optional inputs given as "" at the end of a node's inputs, dropped: the same node by ONNX's rules, and
    the form onnxruntime's optimizer expects (onnxruntime 1.32 segfaults on a LayerNormalization whose bias is "", where
    leaving the bias out runs). An empty input before a given one (Resize's roi) must stay: it holds a place."""
    for n in proto.graph.node:
        k = len(n.input)
        while k and not n.input[k - 1]:
            k -= 1
        if k < len(n.input):
            del n.input[k:]


def _first_line(e) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def host_array(a) -> np.ndarray:
    """A C-contiguous NumPy array (what every engine hands back)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy()


def ort_has_cuda() -> bool:
    """Whether onnxruntime here has its CUDA provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
        return "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:
        return False


def make_engine(name: str, executor, device: str, threads: int | None) -> Engine:
    """The engine `name` (one of ENGINES, checked by the caller) for a model whose executor is `executor`."""
    if name in ("numpy", "cupy"):
        return ExecutorEngine(executor)
    return OrtEngine(device, threads, fallback=ExecutorEngine(executor) if name == "auto" else None)
