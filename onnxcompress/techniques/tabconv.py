"""TabConv, lookup-table convolution (approximate): a layer's im2col rows are
product-quantised per codebook (a MADDNESS hash tree or the nearest of K
prototypes) and its output is a sum of precomputed table entries: LutConv.
With --classifier the final Gemm/MatMul is approximated too (Reshape, a 1x1
LutConv, Reshape). The fitting is onnxcompress/fitting/tabconv.py; the pass
(candidates, priority masking, the sequential refit of the chosen set) is
passes/tabconv.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx.defs import OpSchema

from .. import DOMAIN, schemas
from ..calibration.im2col import conv_geometry, im2col, output_rows
from ..fitting import tabconv as tc
from ..graph import constant_input
from .base import CALIB_ROWS, MIN_COSINE, SEED, Layer, OpSpec, Option, Technique, Work


def lut_conv_schema() -> OpSchema:
    def dense_filter(dims, attr):  # tables [G, C, K, Mg] and kernel_shape
        t, ks = dims(1), list(attr("kernel_shape", []))
        if t is None or len(t) != 4 or len(ks) != 2:
            return None
        return (t[0] * t[3] if t[0] is not None and t[3] is not None else None), (ks[0], ks[1])

    return schemas.conv_op_schema(
        "LutConv",
        "TabConv lookup-table convolution: im2col rows encoded per codebook, output = sum of table entries "
        "(see docs/ops.md).",
        inputs=[
            schemas.param("X", "input [N, C, H, W]"),
            OpSchema.FormalParameter("T", "TT", "tables [G, C, K, Mg], float32 or uint8, an initializer"),
            schemas.param("scale", "[1] or [M] scale of 8-bit tables, an initializer", optional=True),
            schemas.param("B", "bias [M], a constant initializer", optional=True),
            OpSchema.FormalParameter("split_dims", "TD", "tree encoder: [G, C, 4] im2col columns compared",
                                     param_option=OpSchema.FormalParameterOption.Optional),
            schemas.param("thresholds", "tree encoder: [G, C, 15] node thresholds", optional=True),
            schemas.param("prototypes", "exhaustive encoder: [G, C, K, S] prototypes", optional=True),
        ],
        attributes=[OpSchema.Attribute("in_channels", schemas.ATTR.INT, "input channels C of X", required=True),
                    OpSchema.Attribute("encoder", schemas.ATTR.STRING, "'tree' (K=16, 4 comparisons) or "
                                       "'exhaustive'", required=False)],
        type_constraints=[("TT", ["tensor(float)", "tensor(uint8)"], "tables"), ("TD", ["tensor(int64)"],
                                                                              "split columns")],
        inference=schemas.conv_like_inference(dense_filter))


def _weight_shape(node) -> list | None:
    tables = constant_input(node, 1)
    kernel = node.attrs.get("kernel_shape")
    if tables is None or tables.ndim != 4 or not kernel:
        return None
    group = int(node.attrs.get("group", 1))
    return [tables.shape[0] * tables.shape[3], int(node.attrs.get("in_channels", 0)) // group, *kernel]


def layout(d: int, codebooks: int | None, subspace: int) -> tuple[int, int]:
    """(C codebooks, S columns per codebook) for d im2col columns: --codebooks, else ceil(d / --subspace)."""
    want = codebooks if codebooks else -(-d // max(1, subspace))
    return tc.codebook_layout(d, max(1, want))


def lut_inputs(fits: list[tc.LutFit], prefix: str) -> list[Any]:
    """LutConv inputs 1.. (tables, scale, bias, encoder) of one fit per group."""
    f0 = fits[0]
    tables = np.stack([f.tables for f in fits])
    inputs: list[Any] = [gs.Constant(f"{prefix}.tables", np.ascontiguousarray(tables))]
    if f0.scale is not None:
        # the groups were quantised separately, so per-output scales unless they agree
        scale = np.concatenate([np.broadcast_to(f.scale, (f.tables.shape[2],)) for f in fits]).astype(np.float32)
        if np.all(scale == scale[0]):
            scale = scale[:1]
        inputs.append(gs.Constant(f"{prefix}.scale", np.ascontiguousarray(scale)))
    else:
        inputs.append(gs.Variable.empty())
    inputs.append(gs.Constant(f"{prefix}.bias", np.concatenate([f.bias for f in fits]).astype(np.float32)))
    if f0.encoder == "tree":
        inputs.append(gs.Constant(f"{prefix}.split_dims", np.stack([f.split_dims for f in fits]).astype(np.int64)))
        inputs.append(gs.Constant(f"{prefix}.thresholds", np.stack([f.thresholds for f in fits]).astype(np.float32)))
    else:
        inputs += [gs.Variable.empty(), gs.Variable.empty()]
        inputs.append(gs.Constant(f"{prefix}.prototypes", np.stack([f.prototypes for f in fits]).astype(np.float32)))
    return inputs


def lut_layer_node(node: gs.Node, fits: list[tc.LutFit], weight_shape, prefix: str) -> gs.Node:
    """The LutConv node replacing Conv `node` with one fit per group (same C, K, S)."""
    from ..passes.conv_rewrite import make_custom_conv as _make_custom_conv

    cin = int(weight_shape[1]) * len(fits)
    attrs = {"kernel_shape": [int(weight_shape[2]), int(weight_shape[3])], "in_channels": cin,
             "encoder": fits[0].encoder}
    return _make_custom_conv(node, "LutConv", [node.inputs[0]] + lut_inputs(fits, prefix), attrs)


def lut_classifier_nodes(node: gs.Node, fit: tc.LutFit, d: int, prefix: str) -> list[gs.Node]:
    """Reshape [N, D] -> [N, D, 1, 1], a 1x1 LutConv named like `node`, Reshape to [N, M],
    taking over `node`'s (a Gemm or MatMul) output."""
    # The batch dimension is stated (the output's, e.g. "N"): ONNX Runtime's inference leaves it
    # unknown after a Flatten, and LutConv's shape inference then writes it as -1, which ORT
    # compares with the real batch on every run (a warning per run).
    y_shape = node.outputs[0].shape
    batch = y_shape[0] if y_shape is not None and len(y_shape) == 2 else None
    x4 = gs.Variable(f"{prefix}.x4d", dtype=np.float32, shape=None if batch is None else [batch, d, 1, 1])
    y4 = gs.Variable(f"{prefix}.y4d", dtype=np.float32,
                     shape=None if batch is None else [batch, fit.tables.shape[2], 1, 1])
    # 0 copies N from the input, so any batch size works.
    shape4 = gs.Constant(f"{prefix}.shape4d", np.array([0, d, 1, 1], np.int64))
    shape2 = gs.Constant(f"{prefix}.shape2d", np.array([0, fit.tables.shape[2]], np.int64))
    reshape = gs.Node("Reshape", name=f"{node.name}.to4d", inputs=[node.inputs[0], shape4], outputs=[x4])
    lut = gs.Node("LutConv", name=node.name, domain=DOMAIN, inputs=[x4] + lut_inputs([fit], prefix), outputs=[y4],
                  attrs={"kernel_shape": [1, 1], "in_channels": d, "encoder": fit.encoder})
    back = gs.Node("Reshape", name=f"{node.name}.to2d", inputs=[y4, shape2], outputs=list(node.outputs))
    node.outputs.clear()
    return [reshape, lut, back]


def too_costly(d: int, mg: int, c: int, s: int, k: int, encoder: str) -> str:
    """Why C codebooks of S columns (K prototypes) would not be cheaper than d*mg MACs, or ""."""
    enc = c * tc.TREE_DEPTH if encoder == "tree" else c * s * k
    work = enc + c * mg
    if work >= d * mg:
        return (f"lookups and encoding ({work} per pixel and group) would not be fewer than the layer's MACs "
                f"({d * mg})")
    return ""


def describe(layer: Layer, weight: np.ndarray, *, kind: str = "conv", op: str = "Conv",
             codebooks: int | None = None, subspace: int = 9, **_) -> None:
    """Fills layer.extra with what the fit and the build need: kind ("conv" or "classifier"), op,
    c codebooks, s columns each, d columns and mg outputs per group."""
    group = layer.group if kind == "conv" else 1
    d = int(np.prod(weight.shape[1:]))
    c, s = layout(d, codebooks, subspace)
    layer.extra.update(kind=kind, op=op, d=d, mg=weight.shape[0] // group, c=c, s=s)


class TabConv(Technique):
    name = "tabconv"
    summary = "lookup-table convolution (approximate): product-quantised im2col rows, sums of table entries"
    options = (
        Option("codebooks", int, None, "tabconv: codebooks C per layer (default: from --subspace)"),
        Option("subspace", int, 9, "tabconv: im2col columns per codebook when --codebooks is not given"),
        Option("prototypes", int, 16, "tabconv: prototypes K per codebook (tree encoder: 16)"),
        Option("encoder", str, "tree", "tabconv: tree (MADDNESS hash tree, 4 comparisons per codebook) or "
               "exhaustive (nearest of K k-means prototypes)", choices=("tree", "exhaustive")),
        Option("table_bits", int, 8, "tabconv: 8 (uint8 tables, one scale per layer) or 32 (fp32 tables)"),
        Option("keep_exact", float, None, "tabconv: fraction of the candidate layers kept exact, the most harmful "
               "first (priority masking)"),
        MIN_COSINE,
        Option("mask_unit", str, "layer", "tabconv: what priority masking measures and keeps exact: single layers "
               "or whole residual blocks (the Conv layers between an Add and the point its two inputs branch from)",
               choices=("layer", "block")),
        Option("classifier", bool, False, "tabconv: approximate the final classifier (the Gemm or MatMul with a "
               "constant 2-D weight computing the output) as a 1x1 LutConv too", is_flag=True),
        Option("ridge", float, None, "tabconv: fixed relative ridge of the table least-squares fit (default: "
               "chosen per layer from 1e-4..1 on 20% of the calibration inputs held out)"),
        CALIB_ROWS,
        SEED,
    )
    needs_calibration = True
    ops = (OpSpec("LutConv", lut_conv_schema, _weight_shape),)
    ladder = ({"subspace": 9}, {"subspace": 18})
    quick = {"ridge": 1e-3, "calib_rows": 2000}
    plan_summary = "lookup tables (8-bit)"

    def passes(self, opts):
        from ..passes.tabconv import TabConvRewrite

        return [TabConvRewrite(
            codebooks=opts["codebooks"], subspace=opts["subspace"], prototypes=opts["prototypes"],
            encoder=opts["encoder"], table_bits=opts["table_bits"], keep_exact=opts["keep_exact"],
            min_cosine=opts["min_cosine"], ridge=opts["ridge"], calib_rows=opts["calib_rows"], seed=opts["seed"],
            allow_dynamic_weights=opts["allow_dynamic_weights"], classifier=opts["classifier"],
            mask_unit=opts["mask_unit"])]

    def applies_to(self, layer: Layer, graph, opts) -> str | None:
        if "kind" not in layer.extra:
            describe(layer, layer.weight, **opts)
        if layer.extra["kind"] == "conv" and layer.weight.shape[1] == 1 and layer.group > 1:
            return ("depthwise (one input channel per group): one table set per channel for a single output; "
                    "left exact")
        e = layer.extra
        return too_costly(e["d"], e["mg"], e["c"], e["s"], opts.get("prototypes", tc.TREE_K),
                          opts.get("encoder", "tree")) or None

    def fit_layer(self, layer: Layer, batches, opts) -> list[tc.LutFit]:
        """One LutFit per group: the encoder on the layer's captured input rows, the tables by ridge
        regression on its target output rows (ridge chosen on held-out calibration inputs unless given)."""
        if batches is None:
            raise ValueError("tabconv fits tables to data: it needs calibration batches")
        if "kind" not in layer.extra:
            describe(layer, layer.weight, **opts)
        classifier = layer.extra["kind"] == "classifier"
        sampler = batches.sampler()
        xs, ys, sample_of = None, None, []
        seen = 0  # calibration inputs before this batch: rows are grouped by input for the held-out split
        for x, y in batches:
            n = x.shape[0]
            if classifier:
                rows = sampler.sample(n)
                idx = np.arange(n) if rows is None else rows
                cols, outs = [x.reshape(n, -1)[idx]], [y.reshape(n, -1)[idx]]
                sample_of.append(seen + idx)
            else:
                geo = conv_geometry(layer.attrs, x.shape, layer.weight.shape)
                per = geo.out_hw[0] * geo.out_hw[1]
                rows = sampler.sample(n * per)
                cols, outs = im2col(x, geo, rows), output_rows(y, geo.group, rows, geo)
                sample_of.append(seen + (np.arange(n * per) if rows is None else rows) // per)
            seen += n
            if xs is None:
                xs, ys = [[] for _ in cols], [[] for _ in cols]
            for g, (c, o) in enumerate(zip(cols, outs)):
                xs[g].append(c)
                ys[g].append(np.asarray(o))
        groups = np.concatenate(sample_of)
        wrows = layer.weight.reshape(layer.weight.shape[0], -1)
        mg, c = layer.extra["mg"], layer.extra["c"]
        fits = []
        for g in range(len(xs)):
            b = None if layer.bias is None else layer.bias[g * mg:(g + 1) * mg]
            fits.append(tc.fit_lut_layer(
                np.concatenate(xs[g]), np.concatenate(ys[g]), wrows[g * mg:(g + 1) * mg], b, codebooks=c,
                k=opts.get("prototypes", tc.TREE_K), encoder=opts.get("encoder", "tree"),
                table_bits=opts.get("table_bits", 8), ridge=opts.get("ridge"), groups=groups, seed=batches.seed,
                table_rows=None))
        return fits

    def build(self, layer: Layer, fits: list[tc.LutFit], graph, opts) -> list:
        node, prefix = layer.node, f"{layer.name}.lut"
        if layer.extra.get("kind") == "classifier":
            return lut_classifier_nodes(node, fits[0], layer.weight.shape[1], prefix)
        return [lut_layer_node(node, fits, layer.weight.shape, prefix)]

    def details(self, layer: Layer, fits: list[tc.LutFit], opts) -> dict[str, Any]:
        e = layer.extra
        c, s, d, mg, group = e["c"], e["s"], e["d"], e["mg"], layer.group if e["kind"] == "conv" else 1
        k, encoder = opts.get("prototypes", tc.TREE_K), opts.get("encoder", "tree")
        f0 = fits[0]
        ridges = [f.stats["ridge"] for f in fits]
        details = {
            "codebooks": c, "subspace": s, "prototypes": k, "encoder": encoder,
            "table_bits": opts.get("table_bits", 8), "table_fit": f0.table_fit,
            "ridge": ridges[0] if len(set(ridges)) == 1 else ridges,
            "weight_bytes": int(layer.weight.nbytes),
            "table_bytes": int(sum(f.tables.nbytes + (f.scale.nbytes if f.scale is not None else 0) for f in fits)),
            "encoder_bytes": int(sum((f.split_dims.nbytes + f.thresholds.nbytes) if f.encoder == "tree"
                                     else f.prototypes.nbytes for f in fits)),
            "fit_cosine": round(min(f.stats["fit_cosine"] for f in fits), 6),
            "work_per_pixel": {"macs_before": d * mg * group, "encoder_comparisons":
                               c * tc.TREE_DEPTH * group if encoder == "tree" else 0,
                               "encoder_macs": c * s * k * group if encoder == "exhaustive" else 0,
                               "lookups": c * mg * group, "additions": c * mg * group},
        }
        if e["kind"] == "classifier":
            details.update(classifier=True, replaces=e["op"], macs=d * mg, in_channels=d, out_channels=mg)
        if e.get("rows"):
            details["work"] = tc.lut_costs(e["rows"], d, mg, c, s, k, encoder, group)
        return details

    def count(self, details, macs) -> Work:
        w = details.get("work")
        stored = details.get("table_bytes")
        if not w:  # the layer's output size is unknown (symbolic shapes): not counted
            return Work(macs=None, bytes=None if stored is None else stored + details.get("encoder_bytes", 0))
        return Work(macs=w.get("encoder_macs", 0) + w.get("dequant_mults", 0), additions=w.get("additions"),
                    lookups=w.get("lookups"), comparisons=w.get("encoder_comparisons"),
                    bytes=None if stored is None else stored + details.get("encoder_bytes", 0))

    def label(self, opts):
        return f"tabconv S={opts['subspace']}"


TECHNIQUE = TabConv()
