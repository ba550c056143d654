"""CluSpa, clustered-sparse convolution (approximate): a layer's weights share
K values, one of them exactly zero, and the layer becomes ClusteredSparseConv
(or, portable, a plain Conv with the clustered weights). The fitting is
onnxcompress/fitting/cluspa.py; the pass (sparsity allocated across layers,
the sequential refit, per-layer cosines) is passes/cluspa.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx.defs import OpSchema

from .. import schemas
from ..calibration import conv_attrs
from ..fitting import cluspa as fit
from ..graph import unique_name
from .base import CALIB_ROWS, CRITERION, DATA_FREE, PORTABLE, SEED, Layer, OpSpec, Option, Technique, Work


def clustered_sparse_conv_schema() -> OpSchema:
    ints = ["tensor(uint8)", "tensor(uint16)", "tensor(int32)"]

    def dense_filter(dims, attr):  # the weight_shape attribute [M, C/group, kH, kW]
        ws = list(attr("weight_shape", []))
        return (ws[0], (ws[2], ws[3])) if len(ws) == 4 else None

    return schemas.conv_op_schema(
        "ClusteredSparseConv",
        "CluSpa clustered-sparse convolution: the weights share K values plus exact zeros; "
        "per output channel, the non-zero weights' columns grouped by value (see docs/ops.md).",
        inputs=[
            schemas.param("X", "input [N, C, H, W]"),
            schemas.param("values", "shared non-zero values [K] (one codebook) or [M, K] (per output channel), "
                          "an initializer"),
            OpSchema.FormalParameter("counts", "TC", "[M, K]: columns of channel o with value k, an initializer"),
            OpSchema.FormalParameter("indices", "TI", "[nnz]: the columns (c*kH*kW + ky*kW + kx), by channel then "
                                     "cluster, an initializer"),
            schemas.param("B", "bias [M], a constant initializer", optional=True),
        ],
        attributes=[OpSchema.Attribute("weight_shape", schemas.ATTR.INTS, "[M, C/group, kH, kW] of the dense "
                                       "weights", required=True)],
        type_constraints=[("TC", ints + ["tensor(int64)"], "counts"), ("TI", ints, "indices")],
        inference=schemas.conv_like_inference(dense_filter))


def _weight_shape(node) -> list | None:
    shape = node.attrs.get("weight_shape")
    return [int(v) for v in shape] if shape is not None else None


def _layout(layer: Layer, fitted: fit.ClusteredLayer):
    """(values, counts, indices) of the op, encoded once per fit."""
    key = ("layout", id(fitted))
    if key not in layer.extra:
        layer.extra[key] = fit.encode_layout(fitted.labels, fitted.values)
    return layer.extra[key]


class Cluspa(Technique):
    name = "cluspa"
    summary = "clustered-sparse convolution (approximate): K shared weight values, one of them zero"
    options = (
        Option("clusters", int, 16, "cluspa: K, shared values per layer including the zero cluster (2-64)"),
        Option("sparsity", float, None, "cluspa: target fraction of Conv weights pruned, allocated across "
               "layers (default: the GMM's zero component decides)"),
        Option("weight_threshold", float, None, "cluspa: prune weights with |w| below this (instead of "
               "--sparsity)"),
        Option("per_channel", bool, False, "cluspa: one set of shared values per output channel", is_flag=True),
        CRITERION,
        Option("allocation", str, "global", "cluspa: sparsity per layer: global (allocated by measured "
               "sensitivity) or uniform", choices=("global", "uniform")),
        PORTABLE,
        DATA_FREE,
        CALIB_ROWS,
        SEED,
    )
    ops = (OpSpec("ClusteredSparseConv", clustered_sparse_conv_schema, _weight_shape),)
    ladder = ({"sparsity": 0.8, "allocation": "uniform"}, {"sparsity": 0.9, "allocation": "uniform"})
    quick = {"data_free": True}
    plan_summary = "16 shared values, weight sparsity"

    def passes(self, opts):
        from ..passes.cluspa import ClusteredSparseRewrite

        return [ClusteredSparseRewrite(
            clusters=opts["clusters"], sparsity=opts["sparsity"], weight_threshold=opts["weight_threshold"],
            per_channel=opts["per_channel"], criterion=opts["criterion"], allocation=opts["allocation"],
            portable=opts["portable"], data_free=opts["data_free"], calib_rows=opts["calib_rows"],
            seed=opts["seed"], allow_dynamic_weights=opts["allow_dynamic_weights"])]

    def applies_to(self, layer: Layer, graph, opts) -> str | None:
        return "empty weight" if layer.weight.size == 0 else None

    def fit_layer(self, layer: Layer, batches, opts) -> fit.ClusteredLayer:
        """Data-free (batches None): magnitude pruning and GMM clustering; calibrated: pruning on the
        layer's moments, masked ridge refit, clustering, refit of the shared values, bias correction.
        The sparsity is layer.extra["target_sparsity"] when the pass allocated one, else --sparsity."""
        sparsity = layer.extra.get("target_sparsity", opts.get("sparsity"))
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        common = dict(k=int(opts["clusters"]), sparsity=sparsity, threshold=opts.get("weight_threshold"),
                      per_channel=bool(opts.get("per_channel")), seed=int(opts.get("seed", 0)))
        if batches is None:
            return fit.fit_layer_data_free(w, layer.bias, **common)
        mom = batches.moments(layer.weight.shape, conv_attrs(layer.node))
        layer.extra["rows"] = mom.rows_used
        return fit.fit_layer_calibrated(w, [acc.centered() for acc in mom.groups],
                                        [(acc.mean_x, acc.mean_y) for acc in mom.groups],
                                        criterion=opts.get("criterion") or "second-order", **common)

    def build(self, layer: Layer, fitted: fit.ClusteredLayer, graph, opts) -> list:
        from ..passes.conv_rewrite import make_custom_conv

        node, w = layer.node, layer.weight
        bias = fitted.bias if fitted.bias is not None else layer.bias
        base = node.name or "conv"
        x = node.inputs[0]
        tail = [] if bias is None else [gs.Constant(unique_name(graph, f"{base}.bias"), np.asarray(bias, np.float32))]
        if opts.get("portable"):
            dense = gs.Constant(unique_name(graph, f"{base}.weight"), fitted.weight().reshape(w.shape))
            new = gs.Node("Conv", name=node.name, attrs=dict(node.attrs), inputs=[x, dense] + tail,
                          outputs=list(node.outputs))
            node.outputs.clear()
            return [new]
        values, counts, indices = _layout(layer, fitted)
        inputs = [x, gs.Constant(unique_name(graph, f"{base}.cluspa_values"), values),
                  gs.Constant(unique_name(graph, f"{base}.cluspa_counts"), counts),
                  gs.Constant(unique_name(graph, f"{base}.cluspa_indices"), indices)] + tail
        return [make_custom_conv(node, "ClusteredSparseConv", inputs, {"weight_shape": [int(v) for v in w.shape]})]

    def details(self, layer: Layer, fitted: fit.ClusteredLayer, opts) -> dict[str, Any]:
        w = layer.weight
        m, d = w.shape[0], int(np.prod(w.shape[1:]))
        portable = bool(opts.get("portable"))
        bias = fitted.bias if fitted.bias is not None else layer.bias
        values, counts, indices = _layout(layer, fitted)
        nnz, segments = int(indices.size), int(np.count_nonzero(counts))
        plane = layer.extra.get("plane")
        bias_bytes = 0 if bias is None else 4 * m
        bytes_after = (w.nbytes + bias_bytes if portable
                       else values.nbytes + counts.nbytes + indices.nbytes + bias_bytes)
        params_after = (w.size if portable else values.size + counts.size + indices.size) + (
            0 if bias is None else m)
        details: dict[str, Any] = {
            "clusters": int(opts["clusters"]),
            "per_channel": bool(opts.get("per_channel")),
            "target_sparsity": layer.extra.get("target_sparsity"),
            "sparsity": round(1.0 - nnz / float(m * d), 4),
            "nonzero_weights": nnz,
            "shared_values": int(values.size),
            # per output pixel: every kept weight's input is added once into its
            # cluster's sum; one multiply(-add) per non-empty (channel, cluster)
            "adds_per_pixel": nnz,
            "mults_per_pixel": segments,
            "macs_per_pixel_before": m * d,
            "macs_before": None if plane is None else plane * m * d,
            "adds_after": None if plane is None else plane * nnz,
            "mults_after": None if plane is None else plane * segments,
            "params_before": int(w.size + (0 if layer.bias is None else layer.bias.size)),
            "params_after": int(params_after),
            "bytes_before": int(w.nbytes + (0 if layer.bias is None else layer.bias.nbytes)),
            "bytes_after": int(bytes_after),
            "index_dtype": str(indices.dtype),
            "count_dtype": str(counts.dtype),
            "calibrated": bool(layer.extra.get("calibrated")),
        }
        if "cosine" in layer.extra:
            details["output_cosine"] = round(layer.extra["cosine"], 6)
        if "rows" in layer.extra:
            details["calibration_rows"] = int(layer.extra["rows"])
        return details

    def count(self, details, macs) -> Work:
        return Work(macs=details.get("mults_after"), additions=details.get("adds_after"),
                    bytes=details.get("bytes_after"))

    def label(self, opts):
        return f"cluspa s={opts['sparsity']}"


TECHNIQUE = Cluspa()
