"""Lowering: (model graph, rules, target, signature) -> one graph computing the forward pass and then the
preset's reverse pass. Any engine runs it (onnxruntime, fvgraph's executor on NumPy or CuPy), and
`export_explainer` writes it as a standalone ONNX model.

The walk goes backwards over the nodes that lie between what is differentiated (`wrt`: the model's input, or
a layer for Grad-CAM) and the value the seed starts at, and emits at each node the nodes of the rule its
preset chooses (fvgraph.propagation). Signals are summed where a value has several consumers. With
`canonize`, a BatchNormalization right after a Conv (its only consumer) is folded into the Conv's weights at
lowering time, and the pair takes the Conv's rule as one linear layer; a zero Pad right before a Conv is merged
into the Conv's padding for every rule (the adjoint conv then needs no crop). Rule parameters (epsilon,
alpha, beta) are graph inputs (`param_inputs`), so one graph and one onnxruntime session serve every value;
exported explainers take them as constants.

The seed is an input of the lowered graph:
- "class": `target` (int64, one per sample; -1 = the predicted class) becomes a one-hot row on the value;
- "array": `seed`, an array of the value's shape (a unit's mask, or the caller's own seed);
- "affine": `seed_scale` and `seed_offset`: seed = value * scale + offset (representation inversion).
With an "output" preset (LRP) the one-hot or array seed is multiplied by the value itself.

Concept masks (`masks`: values of the model, CRP's conditions): each is a graph input `concept_mask`
(`concept_mask:<value>` for the second and later) of shape (batch, channels), and the signal at that value,
once every consumer's share is summed into it, is multiplied by it (channel axis 1), so only the masked
channels' relevance goes on down. Without masks the graph is the same as before, node for node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .builder import GraphBuilder
from .errors import ExecutionError, FvGraphError
from .graph import Graph, Node
from .onnx_types import onnx_type
from .ops import build_kernel
from .ops.norm import conv_parameters
from .propagation import RULES, Step
from .shapes import ShapeUnknown

RELEVANCE = "relevance"


@dataclass(frozen=True)
class Target:
    kind: str          # "class" | "array" | "affine"
    value: str         # the value the seed applies to


@dataclass
class Lowered:
    graph: Graph
    output: str                                   # the target value (logits), an output of the graph
    target: str | None = None                     # the class indices used (class targets)
    layers: dict = field(default_factory=dict)    # value name -> output name of its signal
    extras: dict = field(default_factory=dict)    # name -> output name (CAM weights, ...)
    applied: dict = field(default_factory=dict)   # node name -> rule used
    seed_inputs: tuple = ()
    table: object = None                          # dims and dtypes of every value of `graph`
    params: dict = field(default_factory=dict)    # input name -> (rule parameter, dtype): fed at each run

    def param_feeds(self, rules) -> dict:
        return {k: np.asarray(rules.params[name], dtype) for k, (name, dtype) in self.params.items()}

    @property
    def outputs(self) -> list[str]:
        return self.graph.output_names()


SCALAR_PARAMS = ("epsilon", "alpha", "beta")  # graph inputs of a lowered graph, not part of its identity


def rules_key(rules, with_values: bool = True) -> str:
    """A stable fingerprint of a RuleSet (it holds dicts, so it is not hashable itself); without the values
    of the scalar parameters, which lowered graphs take as inputs."""
    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v
    return json.dumps({"default": rules.default, "ops": rules.ops, "seed": rules.seed, "canonize": rules.canonize,
                       "multiply_input": rules.multiply_input,
                       "params": {k: plain(v) for k, v in rules.params.items() if with_values or k not in SCALAR_PARAMS},
                       "overrides": [o.__dict__ for o in rules.overrides]}, sort_keys=True, default=str)


def between(graph, static: set[int], sources: set[str], sinks) -> list[int]:
    """Indices of the (non-static) nodes on some path from a source value to a sink value, in order."""
    ancestors, need = set(), set(sinks)
    for i in range(len(graph.nodes) - 1, -1, -1):
        n = graph.nodes[i]
        if any(o in need for o in n.outputs if o):
            ancestors.add(i)
            need.update(v for v in n.inputs if v)
    reached, out = set(sources), []
    for i, n in enumerate(graph.nodes):
        if i in static or not any(v in reached for v in n.inputs if v):
            continue
        reached.update(o for o in n.outputs if o)
        if i in ancestors:
            out.append(i)
    return out


def seed_value(b: GraphBuilder, target: Target, output_seed: bool, suffix: str = "") -> tuple[str, str | None, tuple]:
    """(seed, class indices used or None, names of the seed inputs) emitted for a target."""
    v = target.value
    dtype = b.dtype(v)
    if target.kind == "class":
        t_in = b.input("target" + suffix, (b.dims(v)[0],), np.int64)
        k = b.static(v, [1])[0]
        scores = v if b.rank(v) == 2 else b.op("Reshape", [v, b.ints([0, k])], dims=(b.dims(v)[0], k), dtype=dtype)
        predicted = b.op("ArgMax", [scores], dims=(b.dims(v)[0],), dtype=np.int64, axis=1, keepdims=0)
        negative = b.op("Less", [t_in, b.ints(0)], dims=b.dims(t_in), dtype=np.bool_)
        used = b.op("Where", [negative, predicted, t_in], like=t_in)
        column = b.op("Unsqueeze", [used, b.ints([1])], dims=(b.dims(v)[0], 1), dtype=np.int64)
        hit = b.op("Equal", [column, b.const(np.arange(k, dtype=np.int64))], like=scores, dtype=np.bool_)
        seed = b.op("Cast", [hit], like=scores, to=onnx_type(dtype))
        if scores != v:  # (batch, classes, 1, 1): the one-hot in the value's own shape
            seed = b.reshape_like(seed, v)
        inputs = (t_in,)
    elif target.kind == "array":
        seed = b.input("seed" + suffix, b.dims(v), dtype)
        used, inputs = None, (seed,)
    elif target.kind == "affine":
        scale, offset = b.input("seed_scale" + suffix, None, dtype), b.input("seed_offset" + suffix, None, dtype)
        return b.add(b.mul(v, scale, like=v), offset, like=v), None, (scale, offset)
    else:
        raise ValueError(f"unknown target kind {target.kind!r}")
    if output_seed:
        seed = b.mul(seed, v, like=v)
    return seed, used, inputs


def lower(model, rules, target, table, wrt=None, keep=(), multiply_input=None, param_inputs=True,
          masks=()) -> Lowered:
    """The explainer graph for `rules` (a fvgraph.rules.Rules) from `target` (a Target, or a tuple of them
    seeding several values). wrt: the values whose signal is the result (default: the model's first input),
    keep: values whose signals are returned too, masks: values whose signal is masked per channel by a
    (batch, channels) graph input (concept relevance; see the module's docstring)."""
    g = model.graph
    b = GraphBuilder(g, table, param_inputs)
    wrt = list(wrt) if wrt is not None else [g.input_names()[0]]
    seeds, used, seed_inputs, values = start(b, rules, target)
    mask_inputs = concept_masks(b, masks)
    signals, applied = propagate(model, b, rules, seeds, wrt, keep, mask_inputs)
    outputs, layers = [], {}
    for k, v in enumerate(wrt):
        rel = signals.get(v) or b.zeros(v)
        if (rules.multiply_input if multiply_input is None else multiply_input) and v in g.input_names():
            rel = b.mul(rel, v, like=v)
        outputs.append(b.named(rel, RELEVANCE if k == 0 else f"{RELEVANCE}:{v}"))
    for v in keep:
        layers[v] = b.named(signals.get(v) or b.zeros(v), f"{RELEVANCE}:{v}")
    outs = outputs + values + ([used] if used else []) + list(layers.values())
    return Lowered(b.finish(list(dict.fromkeys(outs))), values[0], used, layers, {}, applied,
                   seed_inputs + tuple(mask_inputs[v][0] for v in masks), b.table, dict(b.params))


CONCEPT_MASK = "concept_mask"


def mask_input_name(k: int, value: str) -> str:
    """The graph input of the k-th concept mask (fed by fvgraph.methods.attribution.attribute)."""
    return CONCEPT_MASK if k == 0 else f"{CONCEPT_MASK}:{value}"


def concept_masks(b: GraphBuilder, masks) -> dict:
    """{value: (mask input, the mask broadcast to the value's rank)} for each masked value: the input is
    (batch, channels) of the value's axis 1."""
    out = {}
    for k, v in enumerate(dict.fromkeys(masks)):
        dims = b.dims(v)
        if len(dims) < 2 or not isinstance(dims[1], (int, np.integer)):
            raise FvGraphError(f"layer {v!r} of shape {tuple(dims)} has no channel axis (axis 1) of known size")
        dtype = b.dtype(v) if np.dtype(b.dtype(v)).kind == "f" else np.dtype(np.float32)
        c = int(dims[1])
        m = b.input(mask_input_name(k, v), (dims[0], c), dtype)
        wide = m if len(dims) == 2 else b.op("Reshape", [m, b.ints([0, c] + [1] * (len(dims) - 2))],
                                             dims=(dims[0], c) + (1,) * (len(dims) - 2), dtype=dtype)
        out[v] = (m, wide)
    return out


def start(b: GraphBuilder, rules, target):
    """Seed every target: ({value: seed}, class indices used or None, seed input names, target values)."""
    targets = target if isinstance(target, tuple) else (target,)
    seeds, used, inputs = {}, None, ()
    for k, t in enumerate(targets):
        seed, u, ins = seed_value(b, t, rules.seed == "output" and t.kind != "affine", "" if k == 0 else f":{k}")
        seeds[t.value] = b.add(seeds[t.value], seed, like=t.value) if t.value in seeds else seed
        used, inputs = used or u, inputs + ins
    return seeds, used, inputs, list(dict.fromkeys(t.value for t in targets))


def propagate(model, b: GraphBuilder, rules, seeds: dict, wrt, keep=(), masks=None) -> tuple[dict, dict]:
    """Emit the reverse pass from `seeds` ({value: seed}) back to the `wrt` values: ({value: signal} for every
    value reached, {node name: rule applied}); `keep`: values whose own signal is wanted; `masks`: {value:
    (mask input, broadcast mask)} multiplied into the value's signal once it is complete."""
    g, ex = model.graph, model.executor
    order = between(g, ex.static, set(wrt), list(seeds))
    reached = set(wrt) | {o for i in order for o in g.nodes[i].outputs if o}
    chosen = rules.resolve(g, order)
    # BatchNormalization folded into the Conv before it: LRP's canonization, and for the gradient simply a
    # cheaper VJP (the adjoint conv takes the scaled weights: one Mul less per layer; exact)
    merged = {bn: conv for bn, conv in _canonical_pairs(model, order).items()
              if rules.canonize or (chosen[bn] == chosen[conv] == "gradient" and g.nodes[conv].outputs[0] not in keep)}
    padded = _padded_convs(model, b, order)
    masked = {}
    if masks:
        missing = [v for v in masks if v not in reached and v not in seeds]
        if missing:
            raise FvGraphError(f"layer {missing[0]!r} does not lie between the input and the target: no relevance "
                               "flows through it")
        # a Conv whose BatchNormalization folds in has no signal of its own: its channels are the BN's (a
        # per-channel affine map), so its mask applies at the BN's output; a merged zero Pad keeps its own
        masked = dict(masks)
        for bn, conv in merged.items():
            if g.nodes[conv].outputs[0] in masked:
                masked[g.nodes[bn].outputs[0]] = masked.pop(g.nodes[conv].outputs[0])
        padded = {c: p for c, p in padded.items() if g.nodes[p].outputs[0] not in masked}
    skip = set(merged.values()) | set(padded.values())
    signals = dict(seeds)
    applied = {}
    done = set()

    def apply_mask(v):
        if v in masked and v in signals and v not in done:
            signals[v] = b.mul(signals[v], masked[v][1], like=v)
        done.add(v)
    for i in reversed(order):
        if i in skip:
            continue
        node = g.nodes[i]
        for o in node.outputs:
            if o in masked:
                apply_mask(o)
        grads = [signals.get(o) for o in node.outputs]
        if all(s is None for s in grads):
            continue
        grads = [s if s is not None else b.zeros(o) for s, o in zip(grads, node.outputs)]
        if i in merged:
            conv, kernel = _conv_with_pad(model, b, merged[i], padded.get(merged[i]))
            step, targets = _folded_step(model, b, conv, kernel, node, grads, rules), conv.inputs
            rule_name = chosen.get(merged[i], rules.default)
            applied[conv.name] = f"{rule_name} (with {node.name} folded in)"
        elif i in padded:
            conv, kernel = _conv_with_pad(model, b, i, padded[i])
            step = Step(conv, kernel, list(conv.inputs), list(node.outputs), grads,
                        [bool(v) and v in reached for v in conv.inputs], rules.params, b)
            targets, rule_name = conv.inputs, chosen[i]
            applied[node.name] = rule_name
        else:
            step = Step(node, ex.kernels[i], list(node.inputs), list(node.outputs), grads,
                        [bool(v) and v in reached for v in node.inputs], rules.params, b)
            targets, rule_name = node.inputs, chosen[i]
            applied[node.name] = rule_name
        try:
            back = RULES[rule_name](step)
        except (FvGraphError, ShapeUnknown):
            raise
        except Exception as e:
            raise ExecutionError(f"rule {rule_name!r} failed at node {node.name!r} ({node.op_type}): "
                                 f"{type(e).__name__}: {e}") from None
        for v, s in zip(targets, back):
            if s is None or not v or v not in reached:
                continue
            dtype = b.table.dtypes.get(v)
            if dtype is not None and np.dtype(dtype).kind != "f":  # an integer value (int8 models): the signal
                dtype = b.table.dtypes.get(s)                     # through it stays float (see ops.quant)
            b.table.set(s, b.table.dims.get(v), dtype)
            signals[v] = b.add(signals[v], s, like=v) if v in signals else s
    for v in masked:  # the model's inputs, and values no node of the walk computes
        apply_mask(v)
    for bn, conv in merged.items() if rules.canonize else ():  # canonized: the folded pair is one layer, and
        out, folded = g.nodes[conv].outputs[0], g.nodes[bn].outputs[0]
        if out not in signals and folded in signals:  # the Conv's output carries its relevance
            signals[out] = signals[folded]
    return signals, applied


def _sole_producer(model, consumers, value: str, op_type: str) -> int | None:
    """Index of the `op_type` node computing `value` when nothing else reads `value` and it is no output of
    the graph (so the producer and its consumer can be taken as one step), else None."""
    g = model.graph
    j = model.executor.producer_index.get(value)
    if j is None or g.nodes[j].op_type != op_type or len(consumers.get(value, [])) != 1 or value in g.output_names():
        return None
    return j


def _canonical_pairs(model, order) -> dict[int, int]:
    """BatchNormalization node index -> the Conv node it folds into."""
    g = model.graph
    consumers = g.consumers()
    out = {}
    for i in order:
        n = g.nodes[i]
        if n.op_type != "BatchNormalization" or not all(v in g.initializers for v in n.inputs[1:5]):
            continue
        j = _sole_producer(model, consumers, n.inputs[0], "Conv")
        if j is not None and all(v in g.initializers for v in g.nodes[j].inputs[1:] if v):
            out[i] = j
    return out


def _padded_convs(model, b, order) -> dict[int, int]:
    """Conv node index -> the zero Pad before it (its only consumer) whose padding the reverse pass merges into
    the Conv's own: the adjoint conv then yields the unpadded gradient directly, with no crop (EfficientNet's
    exporters pad every strided conv this way)."""
    g = model.graph
    consumers = g.consumers()
    out = {}
    for i in order:
        n = g.nodes[i]
        if n.op_type != "Conv" or n.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        j = _sole_producer(model, consumers, n.inputs[0], "Pad")
        if j is not None and g.nodes[j].attr("mode", "constant") == "constant" \
                and _spatial_pads(b, g.nodes[j]) is not None:
            out[i] = j
    return out


def _spatial_pads(b, pad):
    """(begins, ends) of a zero Pad that pads only the spatial axes of a 4-D or 5-D value, else None."""
    ins = list(pad.inputs) + ["", "", ""]
    pads = b.constant(ins[1]) if ins[1] else None
    value = b.constant(ins[2]) if ins[2] else 0
    if pads is None or value is None or np.any(np.asarray(value) != 0) or ins[3]:
        return None
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    rank = len(p) // 2
    if rank < 3 or any(v < 0 for v in p) or any(p[a] or p[rank + a] for a in (0, 1)):
        return None
    return p[2:rank], p[rank + 2:]


def _conv_with_pad(model, b, conv_index, pad_index):
    """The Conv node (and its kernel) with a folded Pad's padding merged into its pads."""
    ex = model.executor
    conv = model.graph.nodes[conv_index]
    if pad_index is None:
        return conv, ex.kernels[conv_index]
    pad = model.graph.nodes[pad_index]
    begins, ends = _spatial_pads(b, pad)
    nsp = len(begins)
    own = conv.attr("pads") or [0] * (2 * nsp)
    attrs = dict(conv.attrs, pads=[a + b for a, b in zip(own, begins + ends)], auto_pad="NOTSET")
    node = Node(conv.name, "Conv", [pad.inputs[0]] + list(conv.inputs[1:]), list(conv.outputs), attrs)
    return node, build_kernel(node)


def _folded_step(model, b, conv, kernel, bn_node, grads, rules) -> Step:
    ex = model.executor
    bn_kernel = ex.kernels[ex.node_index[id(bn_node)]]
    fw, fb = conv_parameters(conv, model.graph.initializers, bn_node, bn_kernel)
    ins = [conv.inputs[0], b.const(fw, "folded_w"), b.const(fb, "folded_b")]
    return Step(conv, kernel, ins, [bn_node.outputs[0]], grads, [True, False, False], rules.params, b)
