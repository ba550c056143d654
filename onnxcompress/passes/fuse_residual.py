"""The residual Add after one of our ops becomes that op's Z input.

Before:   X -> Ours(...) -> Y -> Add(Y, Z) -> S -> [Relu ->]
After:    X -> Ours(..., Z) -> S -> [Relu ->]      (FuseActivation then takes the Relu in)

Our float ops compute Y = activation(conv(X) + Z) with Z a tensor of Y's shape
(schemas.conv_op_schema, the kernels' Epilogue in custom_ops/src/common.h). ORT
fuses a ResNet block's Conv -> Add -> Relu into one NCHWc Conv (its Sum input);
a rewritten block without this runs the Add and the Relu as two more nodes, each
a pass over the tensor (docs/layout_tax.md measures what that costs).

Conditions (a site that fails one is left alone):
- the node is one of our ops whose schema has Z, without a Z yet and without a
  fused activation (activation(conv) + Z is not activation(conv + Z));
- its output is read by one Add only and is no graph output;
- the Add's other input is a tensor (not a constant: ONNX's Add broadcasts, Z
  does not), and ONNX shape inference gives both the same shape, every
  dimension known (equal names for symbolic ones).
Must run before FuseActivation, so that the Relu after the Add is fused as the
activation applied after Z.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..graph import single_consumer, to_graph, to_model
from ..schemas import residual_index
from .base import CONV_REWRITTEN, RESIDUALS_FUSED, Pass, PassContext, PassResult


def _same_known_shape(a: list | None, b: list | None) -> bool:
    from ..analysis import UNKNOWN_DIM

    return a is not None and b is not None and len(a) == len(b) and UNKNOWN_DIM not in a and a == b


class FuseResidual(Pass):
    name = "fuse-residual"
    requires = frozenset({CONV_REWRITTEN})
    ensures = frozenset({RESIDUALS_FUSED})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        from ..analysis import inferred_shapes

        graph = to_graph(model)
        ours = [(n, i) for n in graph.nodes if n.domain == DOMAIN and (i := residual_index(n.op)) is not None]
        if not ours:
            return PassResult(model, False)
        shapes = inferred_shapes(model)
        fused = 0
        for node, index in ours:
            if node.attrs.get("activation", "") or len(node.inputs) > index:
                continue
            y = node.outputs[0]
            add = single_consumer(y, graph)
            if add is None or add.op != "Add" or len(add.inputs) != 2:
                continue
            z = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
            if z is y or isinstance(z, gs.Constant) or not _same_known_shape(shapes.get(y.name), shapes.get(z.name)):
                continue
            node.inputs.extend(gs.Variable.empty() for _ in range(index - len(node.inputs)))
            node.inputs.append(z)
            node.outputs = list(add.outputs)
            add.outputs.clear()
            add.inputs.clear()
            fused += 1
        if not fused:
            return PassResult(model, False)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(to_model(graph, model), True, f"{fused} residual Add(s) fused")
