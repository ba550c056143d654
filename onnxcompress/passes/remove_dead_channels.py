"""Dead channel removal after PENNI: a channel that no consumer reads need not be computed.

When every consumer of a BasisConv's output (through per-element activations
such as Relu) is a BasisConv (group 1) whose
coefficients for input channel c are all zero, channel c of the producer is
computed for nothing: the producer's coefficient row and bias entry for c,
and the consumers' (all-zero) columns for c, are removed, so the producer
writes fewer channels and its coefficient stage does less work. The model's
outputs do not change (the removed columns were zero). Producers that are
graph outputs, grouped layers, and tensors read by anything else (a residual
Add, a Concat, a plain Conv) are left alone.

Channels whose coefficients are all zero on the producer side (outputs that
are only the bias) are not removed: the consumer's zero padding makes such a
channel non-constant at the borders, so folding it into the consumer's bias
would change the result.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..graph import constant_value, is_omitted, to_graph, to_model
from .base import CONV_REWRITTEN, Pass, PassContext, PassResult


# Ops that act on each element alone (extra inputs, if any, are scalars such as Clip's bounds).
_ELEMENTWISE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish", "Elu", "Selu"}


def _basis_conv(node: gs.Node) -> bool:
    return node.op == "BasisConv" and node.domain == DOMAIN and int(node.attrs.get("group", 1)) == 1


def _parameters(node: gs.Node):
    """(bases, coefs, bias or None) of a BasisConv whose inputs are all constants, else None."""
    bases, coefs = (constant_value(t) for t in node.inputs[1:3])
    bias_input = node.inputs[3] if len(node.inputs) > 3 and not is_omitted(node.inputs[3]) else None
    bias = None if bias_input is None else constant_value(bias_input)
    if bases is None or coefs is None or (bias_input is not None and bias is None):
        return None
    return bases, coefs, bias


class RemoveDeadChannels(Pass):
    name = "remove-dead-channels"
    requires = frozenset({CONV_REWRITTEN})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = to_graph(model)
        outputs = {t.name for t in graph.outputs}
        records = {r.name: r for r in ctx.layers}
        removed_total = 0
        for producer in [n for n in graph.nodes if _basis_conv(n)]:
            y, between = producer.outputs[0], []
            # look through per-element activations (not yet fused into the op when this runs)
            while len(y.outputs) == 1 and y.outputs[0].op in _ELEMENTWISE and not y.outputs[0].domain \
                    and y.outputs[0].inputs[0] is y and y.name not in outputs:
                between.append(y)
                y = y.outputs[0].outputs[0]
            consumers = list(y.outputs)
            if any(t.name in outputs for t in between + [y]) or not consumers or \
                    not all(_basis_conv(c) and c.inputs[0] is y for c in consumers):
                continue
            params = [_parameters(n) for n in [producer] + consumers]
            if any(p is None for p in params):
                continue
            bases, coefs, bias = params[0]
            m = coefs.shape[0]
            read = np.zeros(m, bool)
            for _, c_coefs, _ in params[1:]:
                read |= np.any(c_coefs.reshape(c_coefs.shape[0], m, -1) != 0, axis=(0, 2))
            if read.all() or not read.any():
                continue  # nothing to remove, or nothing left (keep the layer as fitted)
            keep = np.flatnonzero(read)
            self._set(producer, 2, coefs[keep])
            if bias is not None:
                self._set(producer, 3, bias[keep])
            for consumer, (c_bases, c_coefs, _) in zip(consumers, params[1:]):
                d = c_bases.shape[0]
                self._set(consumer, 2, c_coefs.reshape(c_coefs.shape[0], m, d)[:, keep].reshape(c_coefs.shape[0], -1))
            for t in between + [y]:
                t.shape = None  # the channel count changed; shape inference fills it again
            removed = m - len(keep)
            removed_total += removed
            record = records.get(producer.name)
            if record is not None:
                nnz = int(np.count_nonzero(coefs[keep]))
                details = record.details
                details.update(removed_output_channels=removed, coef_nnz=nnz, macs_per_position_coef_stage=nnz,
                               bytes_after=int(bases.nbytes + coefs[keep].nbytes
                                               + (0 if bias is None else bias[keep].nbytes)))
                if "macs_per_position_before" in details:
                    details["macs_ratio"] = round((details["macs_per_position_basis_stage"] + nnz)
                                                  / details["macs_per_position_before"], 6)
        if not removed_total:
            return PassResult(model, False, "no dead channels")
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        ctx.notes.append(f"remove-dead-channels: {removed_total} output channels no consumer reads removed")
        return PassResult(to_model(graph, model), True, f"{removed_total} channels removed")

    @staticmethod
    def _set(node: gs.Node, index: int, value: np.ndarray) -> None:
        # a fresh constant: the old one may be shared by other nodes
        node.inputs[index] = gs.Constant(f"{node.inputs[index].name}.live", np.ascontiguousarray(value))
