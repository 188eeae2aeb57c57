import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the suite's lowered-graph cache is its own, and goes when the run does (tests/test_cache.py tests the cache)
os.environ["FVGRAPH_CACHE"] = tempfile.mkdtemp(prefix="fvgraph-test-cache-")
atexit.register(shutil.rmtree, os.environ["FVGRAPH_CACHE"], True)

NODE_TEST_REPORT: list[str] = []


def ort_session(model: onnx.ModelProto, extra_outputs=()):
    """An onnxruntime session on 2 threads, optionally exposing intermediate values as outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if extra_outputs:
        inferred = onnx.shape_inference.infer_shapes(m).graph
        types = {v.name: v for v in inferred.value_info}
        have = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name in types and name not in have:
                m.graph.output.append(types[name])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def single_op_model(op_type, inputs, outputs=("y",), opset=13, initializers=(), **attrs):
    """A one-node model; `inputs` is [(name, array)] for graph inputs, `initializers` [(name, array)]."""
    node = helper.make_node(op_type, [n for n, _ in inputs] + [n for n, _ in initializers], list(outputs), **attrs)
    g = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        [onnx.numpy_helper.from_array(a, n) for n, a in initializers])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def pytest_terminal_summary(terminalreporter):
    if NODE_TEST_REPORT:
        terminalreporter.section("ONNX backend node tests per op type (passed / listed exceptions)")
        for line in NODE_TEST_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
