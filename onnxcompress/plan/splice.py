"""Moving one layer's replacement between copies of a model.

A rewriting pass replaces Conv node N by a node of our domain named N (and,
for some forms, nodes feeding it that are new to the model, such as a
portable basis stage or quantize/dequantize nodes). The planner fits a
technique on the whole model once per setting and then needs, for each
layer, the model with only that layer replaced, or any mix of layers from
different settings. Nodes are found by name (canonicalisation makes them
unique), so a replacement is: the node named N in the rewritten model, plus
the nodes upstream of it that the original model does not have, plus the
initializers they read that the original does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..errors import OnnxCompressError


@dataclass
class Replacement:
    """What takes the place of the original Conv node `layer`."""

    layer: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto] = field(default_factory=list)


def _producers(nodes) -> dict[str, onnx.NodeProto]:
    return {out: n for n in nodes for out in n.output if out}


def _subgraph(nodes, layer: str, known: set[str]) -> list[onnx.NodeProto]:
    """The node named `layer` and the nodes upstream of it whose names are not in `known`."""
    by_name = {n.name: n for n in nodes}
    if layer not in by_name:
        return []
    producer = _producers(nodes)
    picked, stack, seen = [], [by_name[layer]], set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        picked.append(node)
        for t in node.input:
            p = producer.get(t)
            if p is not None and p.name not in known and p.name not in seen:
                stack.append(p)
    return picked


def replacement_of(original: onnx.ModelProto, rewritten: onnx.ModelProto, layer: str) -> Replacement | None:
    """The replacement of Conv `layer` in `rewritten` (a copy of `original` in which some layers
    were rewritten), or None when `rewritten` left that layer as it was."""
    orig = {n.name: n for n in original.graph.node}
    if layer not in orig:
        raise OnnxCompressError(f"no node named '{layer}' in the original model")
    new = {n.name: n for n in rewritten.graph.node}
    if layer not in new or new[layer] == orig[layer]:
        return None
    nodes = _subgraph(rewritten.graph.node, layer, set(orig) - {layer})
    have = {t.name for t in original.graph.initializer}
    wanted = {t for n in nodes for t in n.input}
    inits = [t for t in rewritten.graph.initializer if t.name in wanted and t.name not in have]
    return Replacement(layer, [_copy(n) for n in nodes], [_copy(t) for t in inits])


def _copy(proto):
    out = type(proto)()
    out.CopyFrom(proto)
    return out


def toposort(nodes: list[onnx.NodeProto], graph_inputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every node comes after the producers of its inputs (stable)."""
    producer = _producers(nodes)
    done: set[int] = set()
    order: list[onnx.NodeProto] = []
    index = {id(n): i for i, n in enumerate(nodes)}

    def visit(node, depth=0):
        stack = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            key = index[id(n)]
            if key in done:
                continue
            if expanded:
                done.add(key)
                order.append(n)
                continue
            stack.append((n, True))
            for t in reversed(list(n.input)):
                p = producer.get(t)
                if p is not None and index[id(p)] not in done and p is not n:
                    stack.append((p, False))

    for n in nodes:
        visit(n)
    return order


def _with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], extra_inits) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {t.name for t in out.graph.initializer}
    for t in extra_inits:
        if t.name not in have:
            out.graph.initializer.append(t)
            have.add(t.name)
    inputs = {i.name for i in out.graph.input} | have
    del out.graph.node[:]
    out.graph.node.extend(toposort(nodes, inputs))
    used = {t for n in nodes for t in n.input} | {o.name for o in out.graph.output}
    if any(t.name not in used for t in out.graph.initializer):  # weights of replaced layers
        kept = [t for t in out.graph.initializer if t.name in used]
        del out.graph.initializer[:]
        out.graph.initializer.extend(kept)
    del out.graph.value_info[:]  # shapes of replaced layers may differ; ONNX Runtime infers its own
    return out


def splice(model: onnx.ModelProto, replacements: list[Replacement]) -> onnx.ModelProto:
    """`model` with each replacement's layer (a node of `model` named like it) replaced."""
    targets = {r.layer for r in replacements}
    if len(targets) != len(replacements):
        raise OnnxCompressError("two replacements for one layer")
    names = {n.name for n in model.graph.node}
    missing = sorted(targets - names)
    if missing:
        raise OnnxCompressError(f"no node named {missing[:3]} to replace")
    nodes = [n for n in model.graph.node if n.name not in targets]
    taken = {n.name for n in nodes}
    inits = []
    for r in replacements:
        for n in r.nodes:
            if n.name in taken:
                raise OnnxCompressError(f"replacement of '{r.layer}': node name '{n.name}' is taken")
            taken.add(n.name)
            nodes.append(n)
        inits.extend(r.initializers)
    return _with_nodes(model, nodes, inits)


def revert(model: onnx.ModelProto, original: onnx.ModelProto, layers) -> onnx.ModelProto:
    """`model` with the named layers given back their original node (and its initializers):
    the node named like the layer and the new nodes upstream of it are removed."""
    layers = set(layers)
    if not layers:
        return model
    orig = {n.name: n for n in original.graph.node}
    known = set(orig)
    drop: set[str] = set()
    for layer in layers:
        if layer not in orig:
            raise OnnxCompressError(f"no node named '{layer}' in the original model")
        drop |= {n.name for n in _subgraph(model.graph.node, layer, known - {layer})}
    nodes = [n for n in model.graph.node if n.name not in drop] + [_copy(orig[name]) for name in sorted(layers)]
    wanted = {t for name in layers for t in orig[name].input}
    inits = [_copy(t) for t in original.graph.initializer if t.name in wanted]
    return _with_nodes(model, nodes, inits)


def _dead_nodes_removed(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those none of whose outputs is read (repeatedly: chains of them)."""
    nodes = list(nodes)
    while True:
        read = {t for n in nodes for t in n.input} | outputs
        kept = [n for n in nodes if any(o in read for o in n.output if o)]
        if len(kept) == len(nodes):
            return nodes
        nodes = kept


def splice_into(base: onnx.ModelProto, original: onnx.ModelProto, replacements: list[Replacement]) -> onnx.ModelProto:
    """`base` (a transform of `original` that keeps each replaced layer as a Conv node of the same
    name, such as ORT's QDQ quantization of it) with each replacement's layer replaced. The
    replacement reads what `base`'s Conv reads as its activation and writes what it writes: in a
    QDQ model, the dequantized input and the tensor the output QuantizeLinear reads, whose u8
    range also does what a removed Relu did. Nodes left without readers (the weights'
    DequantizeLinear) are removed."""
    orig = {n.name: n for n in original.graph.node}
    nodes = {n.name: n for n in base.graph.node}
    targets = {r.layer for r in replacements}
    if len(targets) != len(replacements):
        raise OnnxCompressError("two replacements for one layer")
    for layer in targets:
        if layer not in orig or layer not in nodes or nodes[layer].op_type != "Conv" \
                or orig[layer].op_type != "Conv":
            raise OnnxCompressError(f"'{layer}' is no Conv node of both models: cannot place its replacement")
    kept = [n for n in base.graph.node if n.name not in targets]
    taken = {n.name for n in kept}
    inits = []
    # the original's initializers a replacement reads (fp32 weights, biases) that `base` has not kept
    # as initializers: copied under a fresh name where `base` computes a tensor of that name (the
    # output of a DequantizeLinear), since our ops take weights as constants
    base_inits = {t.name for t in base.graph.initializer}
    base_tensors = {o for n in base.graph.node for o in n.output} | base_inits
    orig_inits = {t.name: t for t in original.graph.initializer}
    borrowed: dict[str, str] = {}
    for r in replacements:
        rename = {orig[r.layer].input[0]: nodes[r.layer].input[0], orig[r.layer].output[0]: nodes[r.layer].output[0]}
        for n in r.nodes:
            if n.name in taken:
                raise OnnxCompressError(f"replacement of '{r.layer}': node name '{n.name}' is taken")
            taken.add(n.name)
            c = _copy(n)
            for i, t in enumerate(c.input):
                if t in rename:
                    c.input[i] = rename[t]
                elif t in orig_inits and t not in base_inits:
                    if t not in borrowed:
                        fresh = t if t not in base_tensors else f"{t}__fp32"
                        copy = _copy(orig_inits[t])
                        copy.name = fresh
                        inits.append(copy)
                        borrowed[t] = fresh
                    c.input[i] = borrowed[t]
            for i, t in enumerate(c.output):
                c.output[i] = rename.get(t, t)
            kept.append(c)
        inits.extend(r.initializers)
    kept = _dead_nodes_removed(kept, {o.name for o in base.graph.output})
    return _with_nodes(base, kept, inits)
