"""Penni's portable basis stage in an INT8 (QDQ) model becomes one QLinearBasisMaps.

Before (what ORT's quantizer writes for the portable form, passes/penni.py):

    Xq -> DQ -> Conv(basis 0, depthwise) -> Q -> DQ --+
    Xq -> DQ -> Conv(basis 1, depthwise) -> Q -> DQ --+-> Concat(axis 1) -> Q -> Yq -> DQ -> Conv(1x1 coefficients)
    ...                                                |
    Xq -> DQ -> Conv(basis d-1, depthwise) -> Q -> DQ -+

which ORT runs as d depthwise QLinearConvs and a QLinearConcat: on ResNet-18
MNIST's twin they cost more than the 1x1 coefficient stage they feed.

After:

    Xq -> Transpose(to NHWC) -> QLinearBasisMaps(channels_last, output b*C + c = channel c with basis b)
       -> Transpose(to NCHW) -> Yq -> DQ -> Conv(1x1)

The op writes the Concat's channel order, so the coefficient Conv is unchanged. It
quantizes each map straight to the Concat's output scale (one rounding instead of two:
the d maps' own scales are dropped). It runs channels last because ONNX Runtime runs its
u8 QLinearConvs channels last: its transpose optimizer cancels the two Transposes
against the ones it puts around its own QLinearConvs, so no layout change is left.

Conditions (each checked; a site that fails one is left alone):
- Concat on axis 1 whose every input is DQ(Q(Conv)) with single consumers along the way;
- the d Convs read the same u8 tensor through DequantizeLinear with the same scalar
  scale and zero point, have the same geometry, group = C = their output channels
  (depthwise, multiplier 1), and weights DQ(s8 constant, zero points 0, axis 0);
  a bias, if any, is DQ(int32 constant) in the scale x_scale * w_scale;
- the Concat's output feeds one QuantizeLinear (scalar scale, u8 zero point), whose
  output is no graph output.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..graph import constant_value, is_omitted, producer, single_consumer, to_graph, to_model

_GEOMETRY = ("auto_pad", "pads", "strides", "dilations", "kernel_shape")


def _producer(tensor, op: str):
    """The standard-domain node of type `op` writing `tensor`, or None."""
    node = producer(tensor)
    return node if node is not None and node.op == op and not node.domain else None


def _dq_params(dq):
    """(input tensor, scale array, zero point array) of a DequantizeLinear with constant parameters."""
    scale = constant_value(dq.inputs[1]) if len(dq.inputs) > 1 else None
    if scale is None:
        return None
    zp = constant_value(dq.inputs[2]) if len(dq.inputs) > 2 and not is_omitted(dq.inputs[2]) else None
    return dq.inputs[0], np.asarray(scale, np.float32), zp


def _q_params(q):
    scale = constant_value(q.inputs[1]) if len(q.inputs) > 1 else None
    zp = constant_value(q.inputs[2]) if len(q.inputs) > 2 and not is_omitted(q.inputs[2]) else None
    if scale is None or zp is None or np.asarray(scale).size != 1 or np.asarray(zp).dtype != np.uint8 \
            or np.asarray(zp).size != 1:
        return None
    return np.float32(np.asarray(scale).reshape(())), np.uint8(np.asarray(zp).reshape(()))


def _weight(conv, graph):
    """(s8 weight, per-output-channel scales [M], its DequantizeLinear) of a Conv whose weight is
    DQ(s8 constant) read by that Conv alone, or None."""
    dq = _producer(conv.inputs[1], "DequantizeLinear") if len(conv.inputs) > 1 else None
    params = _dq_params(dq) if dq is not None else None
    if params is None:
        return None
    w = constant_value(params[0])
    m = w.shape[0] if w is not None and w.ndim == 4 else 0
    if w is None or w.dtype != np.int8 or m == 0 or (int(dq.attrs.get("axis", 1)) != 0 and params[1].size != 1):
        return None
    if params[2] is not None and np.any(np.asarray(params[2]) != 0):
        return None
    scale = params[1].reshape(-1)
    if scale.size not in (1, m):
        return None
    if single_consumer(dq.outputs[0], graph) is not conv:
        return None
    return w, np.broadcast_to(scale, (m,)).astype(np.float32), dq


def _match(concat, graph: gs.Graph):
    """The fusion's pieces for one Concat, or None when a condition fails."""
    if int(concat.attrs.get("axis", 0)) not in (1, -3) or len(concat.outputs) != 1 or not concat.inputs:
        return None
    convs, removed = [], [concat]
    source, x_params = None, None
    for t in concat.inputs:
        dq = _producer(t, "DequantizeLinear")
        if dq is None or single_consumer(t, graph) is not concat:
            return None
        q = _producer(dq.inputs[0], "QuantizeLinear")
        if q is None or single_consumer(dq.inputs[0], graph) is not dq:
            return None
        conv = _producer(q.inputs[0], "Conv")
        if conv is None or single_consumer(q.inputs[0], graph) is not q:
            return None
        dqx = _producer(conv.inputs[0], "DequantizeLinear")
        px = _dq_params(dqx) if dqx is not None else None
        if px is None or px[1].size != 1 or px[2] is None or np.asarray(px[2]).dtype != np.uint8 \
                or np.asarray(px[2]).size != 1:
            return None
        key = (float(px[1].reshape(())), int(np.asarray(px[2]).reshape(())))
        if source is None:
            source, x_params = px[0], key
        elif px[0] is not source or key != x_params:
            return None
        weight = _weight(conv, graph)
        if weight is None:
            return None
        w, w_scale, wdq = weight
        c = w.shape[0]
        if w.shape[1] != 1 or int(conv.attrs.get("group", 1)) != c:
            return None
        if convs and (w.shape != convs[0]["w"].shape
                      or any(conv.attrs.get(k) != convs[0]["conv"].attrs.get(k) for k in _GEOMETRY)):
            return None
        bias = np.zeros(c, np.int32)
        if len(conv.inputs) > 2 and not is_omitted(conv.inputs[2]):
            bdq = _producer(conv.inputs[2], "DequantizeLinear")
            pb = _dq_params(bdq) if bdq is not None else None
            b = constant_value(pb[0]) if pb is not None else None
            if b is None or single_consumer(bdq.outputs[0], graph) is not conv or b.dtype != np.int32 or b.shape != (c,) or \
                    not np.allclose(pb[1].reshape(-1), np.float32(key[0]) * w_scale, rtol=1e-5):
                return None
            bias = b
            removed.append(bdq)
        convs.append({"conv": conv, "w": w, "w_scale": w_scale, "bias": bias})
        removed += [dq, q, conv, wdq]
    q_out = single_consumer(concat.outputs[0], graph)
    if q_out is None or q_out.op != "QuantizeLinear" or q_out.domain:
        return None
    y_params = _q_params(q_out)
    # a graph output keeps the values ORT's two roundings give it
    if y_params is None or q_out.outputs[0] in graph.outputs:
        return None
    return {"concat": concat, "q_out": q_out, "source": source, "x": x_params, "y": y_params, "convs": convs,
            "removed": removed + [q_out]}


def _fuse(graph: gs.Graph, site: dict) -> None:
    convs = site["convs"]
    # output b*C + c is channel c with basis b: the Concat's order
    w = np.concatenate([s["w"] for s in convs], axis=0)
    w_scale = np.concatenate([s["w_scale"] for s in convs])
    bias = np.concatenate([s["bias"] for s in convs]).astype(np.int32)
    first = convs[0]["conv"]
    name = site["concat"].name or first.name
    const = lambda suffix, value: gs.Constant(f"{name}.{suffix}", np.ascontiguousarray(value))  # noqa: E731
    attrs = {k: first.attrs[k] for k in ("auto_pad", "pads", "strides", "dilations") if k in first.attrs}
    attrs["channels_last"] = 1
    y = site["q_out"].outputs[0]
    x_last = gs.Variable(f"{name}.input_nhwc", dtype=np.uint8)
    y_last = gs.Variable(f"{name}.maps_nhwc", dtype=np.uint8)
    inputs = [x_last, const("x_scale", np.float32(site["x"][0])), const("x_zero_point", np.uint8(site["x"][1])),
              const("W", w), const("w_scale", w_scale), const("w_zero_point", np.zeros(len(w_scale), np.int8)),
              const("y_scale", site["y"][0]), const("y_zero_point", site["y"][1])]
    if np.any(bias != 0):
        inputs.append(const("B", bias))
    for node in site["removed"]:
        node.outputs.clear()
    graph.nodes += [
        gs.Node("Transpose", f"{name}.to_nhwc", {"perm": [0, 2, 3, 1]}, [site["source"]], [x_last]),
        gs.Node("QLinearBasisMaps", f"{name}.qlinear", attrs, inputs, [y_last], domain=DOMAIN),
        gs.Node("Transpose", f"{name}.to_nchw", {"perm": [0, 3, 1, 2]}, [y_last], [y]),
    ]


def fuse_quantized_basis(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every site fused (see the module's doc), and the number of sites."""
    graph = to_graph(model)
    sites = [s for s in (_match(n, graph) for n in list(graph.nodes) if n.op == "Concat" and not n.domain) if s]
    if not sites:
        return model, 0
    for site in sites:
        _fuse(graph, site)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return to_model(graph, model), len(sites)

