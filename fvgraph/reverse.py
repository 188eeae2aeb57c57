"""The reverse-pass engine: walks a Tape backwards, applying at each node the rule its preset chooses.

Signals (gradients or relevances) are summed where a value has several consumers. Only values that depend
on the model's input receive a signal: weights and shape arithmetic are skipped. With `canonize`, a
BatchNormalization right after a Conv (its only consumer) is folded into it, and the pair takes the Conv's
rule as one linear layer.
"""
from __future__ import annotations

from .errors import ExecutionError, FvGraphError
from .propagation import RULES, Step


def dynamic_values(model, tape) -> set[str]:
    """Values that depend on the model's inputs."""
    dyn = set(model.graph.input_names())
    for i in tape.nodes:
        if i not in model.executor.static:
            dyn.update(o for o in model.graph.nodes[i].outputs if o)
    return dyn


def canonical_pairs(model, tape) -> dict[int, int]:
    """BatchNormalization node index -> the Conv/Gemm node it folds into."""
    g, ex = model.graph, model.executor
    consumers = g.consumers()
    out = {}
    for i in tape.nodes:
        n = g.nodes[i]
        if n.op_type != "BatchNormalization" or not all(v in ex.constants for v in n.inputs[1:5]):
            continue
        j = ex.producer_index.get(n.inputs[0])
        if j is None or g.nodes[j].op_type != "Conv" or len(consumers.get(n.inputs[0], [])) != 1 \
                or n.inputs[0] in g.output_names() or not all(v in ex.constants for v in g.nodes[j].inputs[1:] if v):
            continue
        out[i] = j
    return out


def reverse(model, tape, seeds: dict, rules, keep=(), stop_after: int | None = None):
    """Propagate `seeds` (value name -> signal) back through the tape. Returns the signals of the values in
    `keep` and of the model inputs, and `applied` (node name -> rule used). `stop_after`: node index below
    which nothing is needed (Grad-CAM stops at its layer)."""
    g, ex = model.graph, model.executor
    dyn = dynamic_values(model, tape)
    order = [i for i in tape.nodes if i not in ex.static]
    chosen = rules.resolve(g, order)
    merged = canonical_pairs(model, tape) if rules.canonize else {}
    skip = set(merged.values())
    signals = dict(seeds)
    keep = set(keep) | set(g.input_names())
    applied = {}
    for i in reversed(order):
        if stop_after is not None and i <= stop_after:
            break
        if i in skip:
            continue
        node = g.nodes[i]
        grads = [signals.get(o) for o in node.outputs]
        if all(s is None for s in grads):
            continue
        grads = [s if s is not None else _zeros_like(tape.values[o]) for s, o in zip(grads, node.outputs)]
        if i in merged:
            step, targets = _folded_step(model, tape, merged[i], node, grads, rules), g.nodes[merged[i]].inputs
            rule_name = chosen.get(merged[i], rules.default)
            applied[g.nodes[merged[i]].name] = f"{rule_name} (with {node.name} folded in)"
        else:
            ins = [tape.values.get(v) if v else None for v in node.inputs]
            step = Step(node, ex.kernels[i], ins, [tape.values.get(o) for o in node.outputs], grads,
                        [bool(v) and v in dyn for v in node.inputs], rules.params)
            targets, rule_name = node.inputs, chosen[i]
            applied[node.name] = rule_name
        try:
            back = RULES[rule_name](step)
        except FvGraphError:
            raise
        except Exception as e:
            raise ExecutionError(f"rule {rule_name!r} failed at node {node.name!r} ({node.op_type}): "
                                 f"{type(e).__name__}: {e}") from None
        for v, s in zip(targets, back):
            if s is None or not v or v not in dyn:
                continue
            signals[v] = signals[v] + s if v in signals else s
        for o in node.outputs:
            if o not in keep:
                signals.pop(o, None)
    return {k: v for k, v in signals.items() if k in keep}, applied


def _zeros_like(a):
    from .backend import xp_of
    return xp_of(a).zeros(a.shape, a.dtype)


def _folded_step(model, tape, conv_index, bn_node, grads, rules) -> Step:
    ex = model.executor
    conv = model.graph.nodes[conv_index]
    fw, fb = ex.conv_weights(conv_index, ex.node_index[id(bn_node)])
    ins = [tape.values[conv.inputs[0]], fw, fb]
    return Step(conv, ex.kernels[conv_index], ins, [tape.values[bn_node.outputs[0]]], grads,
                [True, False, False], rules.params)
