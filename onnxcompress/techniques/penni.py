"""PENNI, basis-kernel convolution (approximate): a kxk layer (k > 1) as d basis
kernels shared by the layer and sparse coefficients [M, Cg*d], written as
BasisConv or, portable, as a grouped Conv with the bases and a 1x1 Conv with
the coefficients. The fitting is onnxcompress/fitting/penni.py; the pass (the
--mac-reduction allocation, the sequential refit, layers left alone that would
not shrink) is passes/penni.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN, schemas
from ..calibration import conv_attrs
from ..fitting import penni as fit
from ..fitting.penni import DEFAULT_BASES, DEFAULT_COEF_SPARSITY
from ..graph import constant_input, unique_name
from .base import CALIB_ROWS, CRITERION, DATA_FREE, PORTABLE, SEED, Layer, OpSpec, Option, Technique, Work

_SPATIAL = ("auto_pad", "pads", "strides", "dilations")


def basis_conv_schema():
    def dense_filter(dims, attr):  # Bases [d, kH, kW], Coefs [M, C/group*d]
        bases, coefs = dims(1), dims(2)
        if bases is None or coefs is None or len(bases) != 3 or len(coefs) != 2:
            return None
        return coefs[0], (bases[1], bases[2])

    return schemas.conv_op_schema(
        "BasisConv",
        "PENNI basis-kernel convolution: W[o, c] = sum_b Coefs[o, c*d + b] * Bases[b] (see docs/ops.md).",
        inputs=[
            schemas.param("X", "input [N, C, H, W]"),
            schemas.param("Bases", "basis kernels [d, kH, kW], a constant initializer"),
            schemas.param("Coefs", "coefficients [M, C/group*d], column c*d + b; zeros are skipped; a constant "
                          "initializer"),
            schemas.param("B", "bias [M], a constant initializer", optional=True),
        ],
        inference=schemas.conv_like_inference(dense_filter))


QLINEAR_INPUTS = (
    ("X", "T1", "input [N, C, H, W] ([N, H, W, C] with channels_last), u8"),
    ("x_scale", "tensor(float)", "X's scale, a scalar constant initializer"),
    ("x_zero_point", "T1", "X's zero point, a scalar constant initializer"),
    ("W", "T2", "the maps' filters [M = C*d, 1, kH, kW], s8, a constant initializer; W[m*C + c] is channel c's "
     "m-th map"),
    ("w_scale", "tensor(float)", "W's scales, [M] or a scalar, constant initializer"),
    ("w_zero_point", "T2", "W's zero points, [M] or a scalar, all 0, constant initializer"),
    ("y_scale", "tensor(float)", "Y's scale, a scalar constant initializer"),
    ("y_zero_point", "T1", "Y's zero point, a scalar constant initializer"),
    ("B", "T3", "bias [M], int32 in the scale x_scale * w_scale, a constant initializer"),
)


def qlinear_basis_maps_schema():
    from onnx.defs import OpSchema

    single, optional = OpSchema.FormalParameterOption.Single, OpSchema.FormalParameterOption.Optional
    inputs = [OpSchema.FormalParameter(name, t, doc, param_option=optional if name == "B" else single)
              for name, t, doc in QLINEAR_INPUTS]
    attributes = [a for a in schemas.conv_attributes() if a.name not in ("group", "activation", "clip_min", "clip_max")]
    attributes.append(OpSchema.Attribute("channels_last", OpSchema.AttrType.INT,
                                         "1: X is [N, H, W, C] and Y [N, OH, OW, M]; 0 (default): channels first",
                                         required=False))
    schema = OpSchema(
        "QLinearBasisMaps", DOMAIN, 1,
        "Penni's basis stage on u8 activations: Y[:, m*C + c] = X[:, c] convolved with W[m*C + c] (m < d = M / C), "
        "with QLinearConv's inputs and arithmetic; bit for bit ONNX Runtime's QLinearConv on Concat([X] * d) with "
        "group = M (see docs/ops.md).",
        inputs=inputs, outputs=[OpSchema.FormalParameter("Y", "T1", "the maps [N, M, OH, OW] ([N, OH, OW, M] with "
                                                                     "channels_last), u8")],
        type_constraints=[("T1", ["tensor(uint8)"], "u8 activations"), ("T2", ["tensor(int8)"], "s8 weights"),
                          ("T3", ["tensor(int32)"], "int32 bias")],
        attributes=attributes)

    def dense_filter(dims, attr):  # W [M, 1, kH, kW]
        w = dims(3)
        return None if w is None or len(w) != 4 else (w[0], (w[2], w[3]))

    schema.set_type_and_shape_inference_function(schemas.conv_like_inference(
        dense_filter, onnx.TensorProto.UINT8, channels_last=lambda attr: attr("channels_last", 0) == 1))
    return schema


def _basis_maps_weight_shape(node) -> list | None:
    w = constant_input(node, 3)
    return list(w.shape) if w is not None and w.ndim == 4 else None


def _weight_shape(node) -> list | None:
    bases, coefs = constant_input(node, 1), constant_input(node, 2)
    if bases is None or coefs is None or bases.ndim != 3 or coefs.ndim != 2 or bases.shape[0] == 0:
        return None
    return [coefs.shape[0], coefs.shape[1] // bases.shape[0], *bases.shape[1:]]


def stored_values(m: int, cg: int, kh: int, kw: int, d: int) -> int:
    """Values BasisConv stores for a layer (bias apart): d bases and the dense [M, Cg*d] coefficients."""
    return d * kh * kw + m * cg * d


def largest_shrinking_d(m: int, cg: int, kh: int, kw: int) -> int:
    return max([d for d in range(1, kh * kw + 1) if stored_values(m, cg, kh, kw, d) < m * cg * kh * kw] or [0])


def settings(bases=None, energy=None, coef_sparsity=None, **rest) -> dict[str, Any]:
    """The options with their defaults resolved: d = DEFAULT_BASES unless --energy, the coefficient
    sparsity DEFAULT_COEF_SPARSITY unless given."""
    return {"bases": bases if (bases is not None or energy is not None) else DEFAULT_BASES, "energy": energy,
            "coef_sparsity": DEFAULT_COEF_SPARSITY if coef_sparsity is None else float(coef_sparsity), **rest}


class Penni(Technique):
    name = "penni"
    summary = "basis-kernel convolution (approximate): d basis kernels per layer, sparse coefficients"
    options = (
        Option("bases", int, None, f"penni: d, basis kernels per layer (default {DEFAULT_BASES} unless --energy)"),
        Option("energy", float, None, "penni: choose d per layer as the fewest bases retaining this "
               "fraction of the kernels' energy (0-1]"),
        Option("coef_sparsity", float, None, "penni: fraction of the basis coefficients pruned per layer "
               f"(default {DEFAULT_COEF_SPARSITY} unless --mac-reduction)"),
        Option("mac_reduction", float, None, "penni: fraction of the model's Conv MACs to remove; d (up to "
               "--bases) and the coefficient sparsity are chosen per layer from estimated output errors "
               "(calibration moments when --calib is given)"),
        CRITERION,
        Option("basis_iterations", int, 0, "penni: with calibration, rounds of least-squares refit of "
               "the bases alternating with the coefficients"),
        PORTABLE,
        DATA_FREE,
        CALIB_ROWS,
        SEED,
    )
    ops = (OpSpec("BasisConv", basis_conv_schema, _weight_shape),
           # the portable form's basis stage in an INT8 model (passes/fuse_quantized_basis.py)
           OpSpec("QLinearBasisMaps", qlinear_basis_maps_schema, _basis_maps_weight_shape))
    # BasisConv (sparse coefficients), and the portable form with dense coefficients: standard
    # Convs, which ORT runs in its blocked layout and the INT8 stage quantizes with the model
    ladder = ({"bases": 3, "coef_sparsity": 0.9}, {"bases": 4, "coef_sparsity": 0.8},
              {"bases": 5, "coef_sparsity": 0.7},
              # one basis refit: on the ResNet-18 twin, d=2 on every layer 94.05% -> 94.75% top-1 on 2,000 test digits,
              # for 12% more fitting time
              {"bases": 2, "coef_sparsity": 0.0, "portable": True, "basis_iterations": 1},
              {"bases": 3, "coef_sparsity": 0.0, "portable": True, "basis_iterations": 1},
              {"bases": 4, "coef_sparsity": 0.0, "portable": True, "basis_iterations": 1})
    quick = {"data_free": True}
    plan_summary = "basis kernels, sparse coefficients"

    def passes(self, opts):
        from ..passes.penni import PenniRewrite
        from ..passes.remove_dead_channels import RemoveDeadChannels

        return [PenniRewrite(
            bases=opts["bases"], energy=opts["energy"], coef_sparsity=opts["coef_sparsity"],
            mac_reduction=opts["mac_reduction"], criterion=opts["criterion"],
            basis_iterations=opts["basis_iterations"], portable=opts["portable"], data_free=opts["data_free"],
            calib_rows=opts["calib_rows"], seed=opts["seed"], allow_dynamic_weights=opts["allow_dynamic_weights"])
        ] + ([] if opts["portable"] else [RemoveDeadChannels()])

    def applies_to(self, layer: Layer, graph, opts) -> str | None:
        opts = settings(**opts)
        m, cg, kh, kw = layer.weight.shape
        if layer.weight.size == 0:
            return "empty weight"
        if kh * kw == 1:
            return "1x1 convolution: no spatial kernel to express in bases"
        bases, mac_reduction = opts["bases"], opts.get("mac_reduction")
        d = bases if bases is not None else kh * kw  # energy: at most kh*kw (checked after the fit)
        d, sparsity = min(d, kh * kw), opts["coef_sparsity"]
        if mac_reduction is not None:  # the allocation may pick the cheapest setting
            d, sparsity = 1, fit.SPARSITY_GRID[-1]
        if bases is not None and mac_reduction is None and not opts.get("portable"):
            stored = stored_values(m, cg, kh, kw, d)
            if stored >= m * cg * kh * kw:
                return (f"d={d} bases and the dense {m}x{cg * d} coefficients store {stored} values, the "
                        f"kernels {m * cg * kh * kw}: the model would not shrink (give --bases < "
                        f"{largest_shrinking_d(m, cg, kh, kw) + 1})")
        # per output position: original M*Cg*K; basis form at least Cin*d*K + nnz
        after = layer.group * cg * d * kh * kw + (1 - sparsity) * m * cg * d
        if bases is not None and after >= m * cg * kh * kw:
            what = "depthwise: " if cg == 1 else ""
            return (f"{what}the basis form ({after:.0f} MACs per output position) would not be cheaper than "
                    f"the original ({m * cg * kh * kw})")
        return None

    def fit_layer(self, layer: Layer, batches, opts) -> fit.BasisFit:
        """SVD basis (d from layer.extra["bases"] when allocated, else --bases / --energy), coefficient
        pruning and, with calibration batches, the refit on the layer's moments."""
        opts = settings(**opts)
        moments = None
        if batches is not None:
            conv_moments = batches.moments(layer.weight.shape, conv_attrs(layer.node))
            moments = fit.group_moments(conv_moments)
            layer.extra["geometry"] = conv_moments.geometry
        criterion = opts.get("criterion") or ("second-order" if moments is not None else "magnitude")
        if criterion == "second-order" and moments is None:
            criterion = "magnitude"
        layer.extra["criterion"] = criterion
        layer.extra["calibrated"] = moments is not None
        return fit.fit_layer(layer.weight, layer.bias, group=layer.group,
                             bases=layer.extra.get("bases", opts["bases"]), energy=opts["energy"],
                             sparsity=layer.extra.get("sparsity", opts["coef_sparsity"]),
                             criterion="second_order" if criterion == "second-order" else "magnitude",
                             moments=moments, basis_iterations=opts.get("basis_iterations", 0) if moments else 0,
                             ridge=opts.get("ridge", fit.DEFAULT_RIDGE))

    def build(self, layer: Layer, result: fit.BasisFit, graph, opts) -> list:
        from ..passes.conv_rewrite import make_custom_conv

        node = layer.node
        base = node.name or "conv"
        x = node.inputs[0]
        bases, coefs, bias = result.bases, result.coefs, result.bias
        tail = [] if bias is None else [gs.Constant(unique_name(graph, f"{base}.bias"), np.ascontiguousarray(bias))]
        if opts.get("portable"):
            cin = coefs.shape[1] // bases.shape[0] * layer.group
            d, kh, kw = bases.shape
            attrs = {k: node.attrs[k] for k in _SPATIAL if k in node.attrs}
            attrs["group"] = cin
            attrs["kernel_shape"] = [kh, kw]
            first: list = []
            if layer.group == 1:
                # d depthwise Convs (one basis each, channel multiplier 1: ORT's depthwise paths, fp32
                # NCHWc and u8 QLinearConv, take them), concatenated basis-major, so the 1x1 Conv's
                # columns are reordered from channel-major c*d+b to b*cin+c
                parts = []
                for b in range(d):
                    wb = np.ascontiguousarray(np.broadcast_to(bases[b], (cin, 1, kh, kw)), dtype=np.float32)
                    part = gs.Variable(unique_name(graph, f"{base}.basis_map{b}"), dtype=np.float32)
                    first.append(gs.Node("Conv", name=unique_name(graph, f"{base}.basis{b}"), attrs=dict(attrs),
                                         inputs=[x, gs.Constant(unique_name(graph, f"{base}.basis{b}"), wb)],
                                         outputs=[part]))
                    parts.append(part)
                if d == 1:
                    maps = parts[0]
                else:
                    maps = gs.Variable(unique_name(graph, f"{base}.basis_maps"), dtype=np.float32)
                    first.append(gs.Node("Concat", name=unique_name(graph, f"{base}.basis_concat"),
                                         attrs={"axis": 1}, inputs=parts, outputs=[maps]))
                m = coefs.shape[0]
                coefs = coefs.reshape(m, cin, d).transpose(0, 2, 1).reshape(m, d * cin)
            else:
                # grouped: the 1x1 Conv's groups read contiguous blocks of channel-major maps, so the
                # basis stage stays one grouped Conv with channel multiplier d
                wb = np.ascontiguousarray(np.tile(bases[None], (cin, 1, 1, 1)).reshape(cin * d, 1, kh, kw))
                maps = gs.Variable(unique_name(graph, f"{base}.basis_maps"), dtype=np.float32)
                first.append(gs.Node("Conv", name=unique_name(graph, f"{base}.bases"), attrs=attrs,
                                     inputs=[x, gs.Constant(unique_name(graph, f"{base}.bases"), wb)],
                                     outputs=[maps]))
            inputs = [maps, gs.Constant(unique_name(graph, f"{base}.coefs"),
                                        np.ascontiguousarray(coefs.reshape(*coefs.shape, 1, 1)))] + tail
            second = gs.Node("Conv", name=node.name, attrs={"group": layer.group, "kernel_shape": [1, 1]},
                             inputs=inputs, outputs=list(node.outputs))
            node.outputs.clear()
            return first + [second]
        inputs = [x, gs.Constant(unique_name(graph, f"{base}.bases"), np.ascontiguousarray(bases)),
                  gs.Constant(unique_name(graph, f"{base}.coefs"), np.ascontiguousarray(coefs))] + tail
        return [make_custom_conv(node, "BasisConv", inputs, {})]

    def details(self, layer: Layer, result: fit.BasisFit, opts) -> dict[str, Any]:
        portable = bool(opts.get("portable"))
        w = layer.weight
        m, cg, kh, kw = w.shape
        g = layer.group
        d = result.rank
        details = {
            "bases": d, "retained_energy": round(result.energy, 6),
            "coef_sparsity": round(result.sparsity, 4), "coef_nnz": int(result.stats["nnz"]),
            "criterion": layer.extra.get("criterion"), "calibrated": bool(layer.extra.get("calibrated")),
            "portable": portable,
            "dead_input_channels": result.stats["dead_input_channels"],
            "dead_output_channels": result.stats["dead_output_channels"],
            "active_basis_maps": result.stats["active_basis_maps"],
            "params_before": int(w.size + (0 if layer.bias is None else m)),
        }
        if "estimated_error" in layer.extra:  # chosen by the --mac-reduction allocation
            details["allocated"] = {"bases": layer.extra["bases"], "coef_sparsity": layer.extra["sparsity"],
                                    "estimated_rel_error": round(layer.extra["estimated_error"], 6)}
        # bytes of the initializers as written (the coefficient matrix is stored dense; CSR would take
        # 8 bytes per non-zero plus the row starts)
        bias_bytes = 0 if result.bias is None else 4 * m
        details["bytes_before"] = int(4 * w.size + (0 if layer.bias is None else 4 * m))
        details["bytes_after"] = int(result.bases.nbytes + result.coefs.nbytes + bias_bytes)
        details["bytes_after_if_csr"] = int(result.bases.nbytes + 8 * result.stats["nnz"] + 8 * (m + 1) + bias_bytes)
        details["params_after_nonzero"] = int(d * kh * kw + result.stats["nnz"] + (0 if result.bias is None else m))
        # per output position (times OH*OW for a whole image): portable runs every map and the dense
        # coefficients; BasisConv only the active maps and the non-zero coefficients
        maps = cg * g * d if portable else result.stats["active_basis_maps"]
        nnz = m * cg * d if portable else result.stats["nnz"]
        costs = fit.layer_costs(cg * g, m, g, (kh, kw), 1, maps, nnz, d)
        details.update(macs_per_position_before=costs["macs_original"],
                       macs_per_position_basis_stage=costs["macs_basis_stage"],
                       macs_per_position_coef_stage=costs["macs_coef_stage"],
                       macs_ratio=round(costs["macs_after"] / costs["macs_original"], 6))
        if layer.extra.get("geometry") is not None:
            details["output_hw"] = list(layer.extra["geometry"].out_hw)
        for key in ("rel_error", "output_cosine"):
            if key in result.stats:
                details[key] = round(float(result.stats[key]), 6)
        return details

    def count(self, details, macs) -> Work:
        ratio = details.get("macs_ratio")
        return Work(macs=None if ratio is None else int(round(macs * ratio)), bytes=details.get("bytes_after"))

    def label(self, opts):
        return (f"penni d={opts['bases']}/{opts['coef_sparsity']}" + (" portable" if opts.get("portable") else "")
                + (f" refit{opts['basis_iterations']}" if opts.get("basis_iterations") else ""))


TECHNIQUE = Penni()
