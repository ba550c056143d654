"""FalCon, activation-sparse convolution (exact): a Conv fed by a ReLU-like
producer becomes SparseInputConv, which skips zero activations at run time.
The graph pass (measured selection, whole-model timing) is passes/falcon.py."""

from __future__ import annotations

from typing import Any

from onnx.defs import OpSchema

from .. import schemas
from ..graph import constant_input, is_omitted, nonnegative_source
from .base import THREADS, Layer, OpSpec, Option, Technique, Work

NOT_SPARSE = "input is not produced by a ReLU-like op, so it is not sparse"


def sparse_input_conv_schema() -> OpSchema:
    return schemas.conv_op_schema(
        "SparseInputConv", "Exact 2-D convolution that skips zero input activations (see docs/ops.md).",
        inputs=[
            schemas.param("X", "input [N, C, H, W]"),
            schemas.param("W", "weights [M, C/group, kH, kW], a constant initializer"),
            schemas.param("B", "bias [M], a constant initializer", optional=True),
        ],
        attributes=[
            OpSchema.Attribute("threshold", schemas.ATTR.FLOAT, "|x| < threshold counts as zero (0: exact)",
                               required=False),
            OpSchema.Attribute("dense_below_zero_fraction", schemas.ATTR.FLOAT,
                               "take the dense path when the input has fewer zeros than this", required=False),
        ])  # inputs and attributes mean what they mean for Conv: Conv's shape inference


def _weight_shape(node) -> list | None:
    w = constant_input(node, 1)
    return None if w is None else list(w.shape)


def sparse_input_attrs(opts: dict[str, Any]) -> dict:
    """SparseInputConv's own attributes for the options (threshold, dense_below_zero_fraction)."""
    attrs = {}
    if (opts.get("threshold") or 0) > 0:
        attrs["threshold"] = float(opts["threshold"])
    if opts.get("dense_below_zero_fraction") is not None:
        attrs["dense_below_zero_fraction"] = float(opts["dense_below_zero_fraction"])
    return attrs


class Falcon(Technique):
    name = "falcon"
    summary = "activation-sparse convolution (exact): skips zero activations at run time"
    options = (
        Option("threshold", float, 0.0, "falcon: treat |x| < threshold as zero (approximate when > 0)"),
        Option("dense_below_zero_fraction", float, None,
               "falcon: zero fraction below which the kernel takes its dense path (default: kernel's)"),
        Option("select", str, "measured",
               "falcon: 'measured' keeps a rewrite only where it times faster than ORT's Conv on a real "
               "calibration input; 'all' rewrites every ReLU-fed Conv", choices=("measured", "all")),
        Option("min_speedup", float, 1.05, "falcon: with --select measured, the speedup a layer must show"),
        THREADS,
    )
    ops = (OpSpec("SparseInputConv", sparse_input_conv_schema, _weight_shape),)
    ladder = ({"select": "all"},)
    exact = True
    plan_summary = "exact, skips zero activations"

    def passes(self, opts):
        from ..passes.falcon import FalconRewrite

        return [FalconRewrite(threshold=opts["threshold"], dense_below_zero_fraction=opts["dense_below_zero_fraction"],
                              allow_dynamic_weights=opts["allow_dynamic_weights"], select=opts["select"],
                              min_speedup=opts["min_speedup"], threads=opts["threads"])]

    def applies_to(self, layer: Layer, graph, opts) -> str | None:
        return None if nonnegative_source(layer.node.inputs[0]) else NOT_SPARSE

    def fit_layer(self, layer, batches, opts):
        return None  # exact: the layer's own weights

    def build(self, layer: Layer, fitted, graph, opts) -> list:
        from ..passes.conv_rewrite import make_custom_conv

        node = layer.node
        has_bias = len(node.inputs) > 2 and not is_omitted(node.inputs[2])
        inputs = list(node.inputs[:3] if has_bias else node.inputs[:2])
        return [make_custom_conv(node, "SparseInputConv", inputs, sparse_input_attrs(opts))]

    def details(self, layer: Layer, fitted, opts) -> dict:
        threshold = opts.get("threshold") or 0.0
        return {"input_from": nonnegative_source(layer.node.inputs[0]), "exact": threshold == 0,
                "threshold": threshold}

    def count(self, details, macs) -> Work:
        z = details.get("input_zero_fraction")  # measured on calibration inputs; unknown without
        return Work(macs=None if z is None else int(macs * (1 - z)), note="MACs on non-zero inputs")

    def label(self, opts):
        return "falcon"


TECHNIQUE = Falcon()
