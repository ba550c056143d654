"""Gives every node of the main graph a unique, non-empty name.

Every later pass, the calibration capture and the report find a layer by its
node name, across copies of the model (the original and the one rewritten so
far), so the name must identify the node. Exporters and hand-built graphs
often leave names empty or repeat them. A node without a name gets
`<op>_<position>` (its op type and index in the graph as loaded; stable for a
given file); a repeated name keeps its first holder and later holders get
`<name>_<position>`. A suffix `_1`, `_2`... is added where that is taken too.
Names that are already unique are never changed.
"""

from __future__ import annotations

import re

import onnx

from .base import NODES_NAMED, Pass, PassContext, PassResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


def name_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with unique non-empty node names, and how many nodes were (re)named."""
    nodes = model.graph.node
    first_holder: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.name:
            first_holder.setdefault(node.name, i)
    todo = [i for i, node in enumerate(nodes) if not node.name or first_holder[node.name] != i]
    if not todo:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # names a new one must not take: every node name kept, and every tensor name (graphsurgeon
    # and the report show both, a shared name would confuse readers)
    taken = {n.name for i, n in enumerate(nodes) if n.name and first_holder[n.name] == i}
    for n in nodes:
        taken.update(n.input)
        taken.update(n.output)
    for i in todo:
        node = out.graph.node[i]
        op = _UNSAFE.sub("_", node.op_type) or "node"
        base = f"{node.name}_{i}" if node.name else f"{op}_{i}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        node.name = name
    return out, len(todo)


def duplicate_or_empty_names(names) -> list[str]:
    """The empty or repeated entries of `names` (for passes that check before finding nodes by name)."""
    seen, bad = set(), []
    for n in names:
        if not n or n in seen:
            bad.append(n)
        seen.add(n)
    return bad


class NameNodes(Pass):
    name = "name-nodes"
    ensures = frozenset({NODES_NAMED})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        out, count = name_nodes(model)
        if count:
            ctx.notes.append(f"{count} node(s) had no name or a repeated one and were named after their op and "
                             f"position (e.g. '{_example(model, out)}')")
        return PassResult(out, bool(count), f"{count} node(s) named" if count else "names already unique")


def _example(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    for a, b in zip(before.graph.node, after.graph.node):
        if a.name != b.name:
            return b.name
    return ""


def require_unique_names(nodes, pass_name: str) -> None:
    """Raises if `nodes` (graphsurgeon or onnx nodes) have an empty or repeated name: a pass that finds
    layers by name would otherwise mix them up. The pipeline runs NameNodes first, so this only fires
    when a pass is run on its own."""
    from ..errors import OnnxCompressError

    bad = duplicate_or_empty_names(n.name for n in nodes)
    if bad:
        raise OnnxCompressError(f"{pass_name}: node names must be unique and non-empty (found "
                                f"{sorted(set(bad))[:3]}); run the NameNodes pass first (canonicalize() does)")
