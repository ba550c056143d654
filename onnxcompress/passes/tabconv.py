"""Lookup-table convolution (TabConv): eligible Conv nodes (and, with
classifier=True, the final Gemm/MatMul) become ai.onnxcompress.LutConv, whose
im2col rows are encoded per codebook and whose output is a sum of precomputed
table entries.

Fitting is sequential (the calibration engine's mode): each layer's encoder
is fitted on its input as computed by the model approximated so far, and its
tables by ridge regression against the original model's output of that layer
(the output mean is corrected). The ridge is chosen per layer on held-out
calibration inputs unless a fixed one is given (fitting.tabconv).

The classifier: the Gemm (transA=0, any alpha, beta, transB, a bias C that
does not depend on the batch row) or MatMul with a constant 2-D weight that
computes the first graph output (through Identity/Softmax/LogSoftmax) becomes
Reshape [N, D] -> [N, D, 1, 1], a 1x1 LutConv, Reshape back to [N, M].

Priority masking (--keep-exact P, a fraction of the units, or --min-cosine c
on the model's output). A unit is one layer (mask_unit="layer") or one
residual block (mask_unit="block", see residual_blocks; layers outside every
block are units of their own). Every candidate is first fitted on the exact
model's input, each unit is approximated alone and the cosine of the model's
output against the exact model is measured on the calibration data; the
units that hurt most are kept exact (for c: the fewest, found by bisection
over that order with the independent fits); the chosen set is then fitted
sequentially, and while the result misses c one more unit is kept exact and
the set refitted (at most 4 times). Calibration data is required.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..calibration.capture import LayerCapture
from ..calibration.im2col import conv_geometry, im2col, output_rows
from ..calibration.moments import RowSampler
from ..errors import OnnxCompressError
from ..fitting import tabconv as tc
from ..graph import constant_value, is_omitted, to_graph, to_model
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import chosen_layers, conv_constants, fits_independently, make_custom_conv, reference_model
from .name_nodes import require_unique_names

log = logging.getLogger("onnxcompress")

__all__ = ["TabConvRewrite", "lut_layer_node", "lut_classifier_nodes", "find_classifier", "classifier_constants",
           "residual_blocks", "model_output_cosine"]

# Nodes the classifier may be followed by on its way to the graph output.
_AFTER_CLASSIFIER = ("Identity", "Softmax", "LogSoftmax")


def _layout(d: int, codebooks: int | None, subspace: int) -> tuple[int, int]:
    want = codebooks if codebooks else -(-d // max(1, subspace))
    return tc.codebook_layout(d, max(1, want))


def _lut_inputs(fits: list[tc.LutFit], prefix: str) -> list[Any]:
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
    cin = int(weight_shape[1]) * len(fits)
    attrs = {"kernel_shape": [int(weight_shape[2]), int(weight_shape[3])], "in_channels": cin,
             "encoder": fits[0].encoder}
    return make_custom_conv(node, "LutConv", [node.inputs[0]] + _lut_inputs(fits, prefix), attrs)


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
    lut = gs.Node("LutConv", name=node.name, domain=DOMAIN, inputs=[x4] + _lut_inputs([fit], prefix), outputs=[y4],
                  attrs={"kernel_shape": [1, 1], "in_channels": d, "encoder": fit.encoder})
    back = gs.Node("Reshape", name=f"{node.name}.to2d", inputs=[y4, shape2], outputs=list(node.outputs))
    node.outputs.clear()
    return [reshape, lut, back]


def find_classifier(graph: gs.Graph) -> tuple[gs.Node | None, str]:
    """(the Gemm or MatMul computing the first graph output, "") or (None, why there is none)."""
    if not graph.outputs:
        return None, "the model has no output"
    tensor = graph.outputs[0]
    while True:
        node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if node is None:
            return None, f"the graph output '{graph.outputs[0].name}' is not computed by a node"
        if node.op in ("Gemm", "MatMul") and not node.domain:
            return node, ""
        if node.op in _AFTER_CLASSIFIER and not node.domain and node.inputs:
            tensor = node.inputs[0]
            continue
        return None, (f"the graph output '{graph.outputs[0].name}' comes from {node.op} '{node.name}', "
                      "not from a Gemm or MatMul")


def classifier_constants(node: gs.Node, shapes: dict[str, list]):
    """((weight rows [M, D], bias [M] or None), "") of a Gemm/MatMul classifier, or (None, reason)
    when it cannot become a LutConv. shapes: inferred tensor shapes (for the input's rank)."""
    a = node.inputs[0]
    rank = len(shapes[a.name]) if a.name in shapes else None
    if rank is not None and rank != 2:
        return None, f"input '{a.name}' has rank {rank}; only 2-D [N, D] inputs are supported"
    if node.op == "MatMul" and rank is None:
        return None, f"the rank of input '{a.name}' is unknown; only 2-D [N, D] inputs are supported"
    if constant_value(a) is not None:
        return None, "input A is a constant"
    b = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if b is None:
        return None, "weight B is computed at run time, not a constant"
    if b.ndim != 2:
        return None, f"weight B has rank {b.ndim}, not 2"
    if b.dtype != np.float32:
        return None, f"weight B is {b.dtype}, not float32"
    if node.op == "MatMul":
        return (np.ascontiguousarray(b.T), None), ""
    if int(node.attrs.get("transA", 0)):
        return None, "transA=1 (only transA=0 is supported)"
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    rows = (b if int(node.attrs.get("transB", 0)) else b.T).astype(np.float64) * alpha  # [M, D]
    m = rows.shape[0]
    bias = None
    if len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
        c = constant_value(node.inputs[2])
        if c is None:
            return None, "bias C is computed at run time, not a constant"
        # C broadcasts to [N, M]; only a C that is the same for every batch row is a bias
        if not (c.size == 1 or (c.ndim >= 1 and c.shape[-1] == m and c.size == m)):
            return None, f"bias C of shape {list(c.shape)} depends on the batch row"
        bias = (np.broadcast_to(c.astype(np.float64).reshape(-1), (m,)) * beta).astype(np.float32)
    return (rows.astype(np.float32), bias), ""


def residual_blocks(graph: gs.Graph) -> dict[str, str]:
    """Node name -> name of the residual block (its Add node) the node belongs to.

    The rule: for an Add whose two inputs are both computed by nodes, the block's
    entry is the last node (in topological order) that both inputs depend on; the
    block is every node on which one of the inputs depends and the entry does not
    (the residual branch and the shortcut's projection, if any). A node in several
    blocks belongs to the first Add. Nodes before the first block (the stem) and
    outside every block are in none.
    """
    graph.toposort()
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    ancestors: dict[int, frozenset] = {}
    for n in graph.nodes:  # topological order: producers first
        anc = {id(n)}
        for t in n.inputs:
            if len(t.inputs) == 1 and id(t.inputs[0]) in ancestors:
                anc |= ancestors[id(t.inputs[0])]
        ancestors[id(n)] = frozenset(anc)
    by_id = {id(n): n for n in graph.nodes}
    out: dict[str, str] = {}
    for add in graph.nodes:
        if add.op != "Add" or add.domain or len(add.inputs) != 2:
            continue
        sides = []
        for t in add.inputs:
            if isinstance(t, gs.Constant) or constant_value(t) is not None:
                break
            sides.append(ancestors[id(t.inputs[0])] if len(t.inputs) == 1 else frozenset())
        if len(sides) != 2:
            continue  # a bias or constant offset, not a shortcut
        common = sides[0] & sides[1]
        region = sides[0] | sides[1]
        if common:
            region = region - ancestors[max(common, key=order.__getitem__)]
        label = add.name or add.outputs[0].name
        for i in sorted(region, key=order.__getitem__):
            out.setdefault(by_id[i].name, label)
    return out


def _replace(model: onnx.ModelProto, fits: dict[str, list[tc.LutFit]]) -> onnx.ModelProto:
    """`model` with the Conv nodes (and the classifier) named in `fits` replaced by LutConv."""
    graph = to_graph(model)
    for node in [n for n in graph.nodes if n.name in fits and not n.domain]:
        if node.op == "Conv":
            weight = node.inputs[1].values
            graph.nodes.append(lut_layer_node(node, fits[node.name], weight.shape, f"{node.name}.lut"))
        elif node.op in ("Gemm", "MatMul"):
            b = constant_value(node.inputs[1])
            d = int(b.shape[1] if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else b.shape[0])
            graph.nodes.extend(lut_classifier_nodes(node, fits[node.name][0], d, f"{node.name}.lut"))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return to_model(graph, model)


def _outputs(capture: LayerCapture, feeds, name: str) -> np.ndarray:
    return np.concatenate([capture.run(f, [name])[name].reshape(len(next(iter(f.values()))), -1) for f in feeds])


def model_output_cosine(reference: np.ndarray, scores: np.ndarray) -> float:
    """Mean over samples of the cosine between the rows of two [samples, features] arrays."""
    a, b = reference.astype(np.float64), scores.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1), 1.0)
    return float(np.mean(cos))


@dataclass
class _Candidate:
    """A layer the pass may approximate: a Conv, or the classifier (kind "classifier")."""

    name: str
    kind: str                 # "conv" or "classifier"
    op: str                   # the node's op: Conv, Gemm or MatMul
    weight: np.ndarray        # Conv: [M, C/group, kH, kW]; classifier: rows [M, D] (alpha applied)
    bias: np.ndarray | None
    attrs: dict
    c: int                    # codebooks
    s: int                    # columns per codebook
    d: int                    # columns per group
    mg: int                   # outputs per group
    group: int


class TabConvRewrite(Pass):
    name = "tabconv-rewrite"
    requires = frozenset({NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, BATCHNORM_FOLDED})
    ensures = frozenset({CONV_REWRITTEN})

    def __init__(self, codebooks: int | None = None, subspace: int = 9, prototypes: int = 16, encoder: str = "tree",
                 table_bits: int = 8, keep_exact: float | None = None, min_cosine: float | None = None,
                 ridge: float | None = None, calib_rows: int = 50000, refit: bool = True, seed: int = 0,
                 allow_dynamic_weights: bool = False, classifier: bool = False, mask_unit: str = "layer"):
        if encoder not in ("tree", "exhaustive"):
            raise OnnxCompressError(f"--encoder must be tree or exhaustive, got {encoder!r}")
        if table_bits not in (8, 32):
            raise OnnxCompressError(f"--table-bits must be 8 or 32, got {table_bits}")
        if encoder == "tree" and prototypes != tc.TREE_K:
            raise OnnxCompressError(f"the tree encoder has 16 prototypes per codebook (--prototypes {prototypes})")
        if not 1 <= prototypes <= 256:
            raise OnnxCompressError(f"--prototypes must be in [1, 256], got {prototypes}")
        if codebooks is not None and codebooks < 1:
            raise OnnxCompressError(f"--codebooks must be >= 1, got {codebooks}")
        if subspace < 1:
            raise OnnxCompressError(f"--subspace must be >= 1, got {subspace}")
        if keep_exact is not None and not 0.0 <= keep_exact <= 1.0:
            raise OnnxCompressError(f"--keep-exact is a fraction in [0, 1], got {keep_exact}")
        if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
            raise OnnxCompressError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
        if keep_exact is not None and min_cosine is not None:
            raise OnnxCompressError("give --keep-exact or --min-cosine, not both")
        if ridge is not None and not (ridge >= 0 and math.isfinite(ridge)):
            raise OnnxCompressError(f"--ridge must be a finite number >= 0, got {ridge}")
        if mask_unit not in ("layer", "block"):
            raise OnnxCompressError(f"--mask-unit must be layer or block, got {mask_unit!r}")
        self.codebooks, self.subspace, self.k = codebooks, subspace, prototypes
        self.encoder, self.bits = encoder, table_bits
        self.keep_exact, self.min_cosine = keep_exact, min_cosine
        self.ridge, self.rows, self.refit, self.seed = ridge, calib_rows, refit, seed
        self.allow_dynamic = allow_dynamic_weights
        self.classifier, self.mask_unit = classifier, mask_unit

    # ------------------------------------------------------------- fitting
    def _fit(self, x, y, weight_rows, bias, groups, index: int) -> tc.LutFit:
        c, _ = _layout(x.shape[1], self.codebooks, self.subspace)
        return tc.fit_lut_layer(
            x, y, weight_rows, bias, codebooks=c, k=self.k, encoder=self.encoder, table_bits=self.bits,
            ridge=self.ridge, groups=groups, seed=self.seed + index, table_rows=None)

    def _fit_layer(self, cand: _Candidate, original: LayerCapture, current: LayerCapture, feeds,
                   index: int) -> list[tc.LutFit]:
        x_name, _ = current.node_io(cand.name)
        _, y_name = original.node_io(cand.name)
        sampler = RowSampler(max(1, -(-self.rows // len(feeds))), seed=self.seed + index)
        xs, ys, gs_ = None, None, []
        seen = 0  # calibration inputs before this feed: rows are grouped by input for the held-out split
        for feed in feeds:
            y = original.run(feed, [y_name])[y_name]
            x = current.run(feed, [x_name])[x_name]
            n = x.shape[0]
            if cand.kind == "classifier":
                rows = sampler.sample(n)
                idx = np.arange(n) if rows is None else rows
                cols = [x.reshape(n, -1)[idx]]
                outs = [y.reshape(n, -1)[idx]]
                gs_.append(seen + idx)
            else:
                geo = conv_geometry(cand.attrs, x.shape, cand.weight.shape)
                per = geo.out_hw[0] * geo.out_hw[1]
                rows = sampler.sample(n * per)
                cols = im2col(x, geo, rows)
                outs = output_rows(y, geo.group, rows, geo)
                gs_.append(seen + (np.arange(n * per) if rows is None else rows) // per)
            seen += n
            if xs is None:
                xs, ys = [[] for _ in cols], [[] for _ in cols]
            for g, (c, o) in enumerate(zip(cols, outs)):
                xs[g].append(c)
                ys[g].append(np.asarray(o))
        groups = np.concatenate(gs_)
        wrows = cand.weight.reshape(cand.weight.shape[0], -1)
        mg = cand.mg
        fits = []
        for g in range(len(xs)):
            b = None if cand.bias is None else cand.bias[g * mg:(g + 1) * mg]
            fits.append(self._fit(np.concatenate(xs[g]), np.concatenate(ys[g]), wrows[g * mg:(g + 1) * mg], b,
                                  groups, index))
        return fits

    def _fit_sequential(self, model: onnx.ModelProto, names: list[str], cands: dict[str, _Candidate], feeds,
                        sequential: bool = True, reference: onnx.ModelProto | None = None) -> dict[str, list]:
        """Fits of the named layers in graph order, to the outputs of `reference` (default: `model`).
        sequential: each layer's input is taken from the model with the layers before it approximated;
        otherwise from `model` (independent fits, each right for the layer approximated alone)."""
        original = LayerCapture(model if reference is None else reference)
        inputs = original if reference is None else LayerCapture(model)
        fits: dict[str, list] = {}
        current_model = model
        for i, name in enumerate(names):
            current = LayerCapture(current_model) if sequential else inputs
            fits[name] = self._fit_layer(cands[name], original, current, feeds, i)
            log.info("tabconv: fitted %s (%d/%d), fit cosine %.4f, ridge %s", name, i + 1, len(names),
                     min(f.stats["fit_cosine"] for f in fits[name]), fits[name][0].stats["ridge"])
            if sequential:
                current_model = _replace(model, fits)
        return fits

    # ------------------------------------------------------------ masking
    def _cosine_with(self, model, fits, subset, feeds, out_name, reference) -> float:
        if not subset:
            return 1.0
        cap = LayerCapture(_replace(model, {n: fits[n] for n in subset}))
        return model_output_cosine(reference, _outputs(cap, feeds, out_name))

    def _units(self, graph: gs.Graph, candidates: list[str]) -> dict[str, list[str]]:
        """Masking units in graph order: label -> candidate names (a layer: its own name)."""
        block_of = residual_blocks(graph) if self.mask_unit == "block" else {}
        units: dict[str, list[str]] = {}
        for n in candidates:
            units.setdefault(f"block {block_of[n]}" if n in block_of else n, []).append(n)
        return units

    # ---------------------------------------------------------- candidates
    def _conv_candidate(self, node: gs.Node, records: dict) -> _Candidate | None:
        got, reason = conv_constants(node, self.allow_dynamic)
        if not got:
            records[node.name] = LayerRecord(node.name, "Conv", "skipped", reason)
            return None
        weight, bias = got
        attrs = {k: v for k, v in node.attrs.items()}
        group = int(attrs.get("group", 1))
        d = int(np.prod(weight.shape[1:]))
        mg = weight.shape[0] // group
        if weight.shape[1] == 1 and group > 1:
            records[node.name] = LayerRecord(
                node.name, "Conv", "skipped",
                "depthwise (one input channel per group): one table set per channel for a single output; "
                "left exact")
            return None
        c, s = _layout(d, self.codebooks, self.subspace)
        reason = self._too_costly(d, mg, c, s)
        if reason:
            records[node.name] = LayerRecord(node.name, "Conv", "skipped", reason)
            return None
        return _Candidate(node.name, "conv", "Conv", weight, bias, attrs, c, s, d, mg, group)

    def _classifier_candidate(self, model, graph: gs.Graph, records: dict, notes: list) -> _Candidate | None:
        node, why = find_classifier(graph)
        if node is None:
            notes.append(f"tabconv --classifier: {why}; no classifier approximated")
            return None
        label = node.name or node.outputs[0].name
        details = {"classifier": True, "replaces": node.op}
        if not node.name or sum(n.name == node.name for n in graph.nodes) > 1:
            records[label] = LayerRecord(label, node.op, "skipped", "the node has no unique name to find it by",
                                         details)
            return None
        from ..analysis import inferred_shapes

        got, reason = classifier_constants(node, inferred_shapes(model))
        if not got:
            records[node.name] = LayerRecord(node.name, node.op, "skipped", reason, details)
            return None
        rows, bias = got
        m, d = rows.shape
        details.update(macs=int(m * d), in_channels=int(d), out_channels=int(m))
        c, s = _layout(d, self.codebooks, self.subspace)
        reason = self._too_costly(d, m, c, s)
        if reason:
            records[node.name] = LayerRecord(node.name, node.op, "skipped", reason, details)
            return None
        return _Candidate(node.name, "classifier", node.op, rows, bias, {}, c, s, d, m, 1)

    def _too_costly(self, d: int, mg: int, c: int, s: int) -> str:
        enc = c * tc.TREE_DEPTH if self.encoder == "tree" else c * s * self.k
        work = enc + c * mg
        if work >= d * mg:
            return (f"lookups and encoding ({work} per pixel and group) would not be fewer than the layer's MACs "
                    f"({d * mg})")
        return ""

    # ----------------------------------------------------------------- run
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        feeds = ctx.options.get("calib_feeds")
        if not feeds:
            raise OnnxCompressError("--method tabconv fits tables to data: give calibration inputs (--calib)")
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        records: dict[str, LayerRecord] = {}
        cands: dict[str, _Candidate] = {}
        reference_proto = reference_model(model, ctx)
        probe = LayerCapture(reference_proto)
        excluded = chosen_layers(ctx, graph)
        for node in [n for n in graph.nodes if n.op == "Conv" and not n.domain]:
            if excluded(node):
                records[node.name] = LayerRecord(node.name, "Conv", "skipped", excluded(node))
                continue
            cand = self._conv_candidate(node, records)
            if cand is not None:
                cands[cand.name] = cand
        fc_name = None
        if self.classifier:
            cand = self._classifier_candidate(model, graph, records, ctx.notes)
            if cand is not None:
                cands[cand.name] = cand
            fc_name = cand.name if cand is not None else next(
                (n for n, r in records.items() if r.details.get("classifier")), None)
        # report rows in graph order: the Conv layers, then the classifier
        row_names = [n.name for n in graph.nodes if n.op == "Conv" and not n.domain]
        if fc_name is not None:
            row_names.append(fc_name)
        candidates = [n for n in row_names if n in cands]
        if not candidates:
            for name in row_names:
                ctx.layers.append(records[name])
            return PassResult(model, False, "no eligible layer")

        out_name = model.graph.output[0].name
        reference = _outputs(probe, feeds, out_name)
        masking = self.keep_exact is not None or self.min_cosine is not None
        # With masking, the first fits are independent (each on the exact model's input), so that
        # each one is right for its layer approximated alone and subsets of them are consistent;
        # the chosen set is then refitted sequentially. Without masking: one sequential fit.
        fits = self._fit_sequential(model, candidates, cands, feeds,
                                    sequential=not masking and not fits_independently(ctx), reference=reference_proto)

        # Priority: the model's output cosine with each unit (layer or block) approximated alone.
        units = self._units(graph, candidates)
        alone = {u: self._cosine_with(model, fits, names, feeds, out_name, reference) for u, names in units.items()}
        order = sorted(units, key=lambda u: alone[u])  # most harmful first
        all_cos = self._cosine_with(model, fits, candidates, feeds, out_name, reference)

        def layers_of(unit_labels):
            return [n for u in unit_labels for n in units[u]]

        kept_units: list[str] = []
        if self.keep_exact is not None:
            kept_units = order[:int(round(self.keep_exact * len(units)))]
        elif self.min_cosine is not None and all_cos < self.min_cosine:
            lo, hi = 1, len(order)  # smallest count of kept units reaching the target
            while lo < hi:
                mid = (lo + hi) // 2
                if self._cosine_with(model, fits, layers_of(order[mid:]), feeds, out_name,
                                     reference) >= self.min_cosine:
                    hi = mid
                else:
                    lo = mid + 1
            kept_units = order[:lo]
        kept = layers_of(kept_units)
        chosen = [n for n in candidates if n not in kept]
        final_cos = all_cos if not kept else self._cosine_with(model, fits, chosen, feeds, out_name, reference)
        first_fits = dict(fits)
        if masking and chosen and self.refit:
            for _attempt in range(4):
                fits = {**first_fits, **self._fit_sequential(model, chosen, cands, feeds, reference=reference_proto)}
                final_cos = self._cosine_with(model, fits, chosen, feeds, out_name, reference)
                if self.min_cosine is None or final_cos >= self.min_cosine or not chosen:
                    break
                # the refit moved the output: keep one more unit exact and refit again
                worst = next(u for u in order if u not in kept_units)
                kept_units.append(worst)
                kept = layers_of(kept_units)
                chosen = [n for n in candidates if n not in kept]
                if not chosen:
                    break
        unit_word = "units (residual blocks or lone layers)" if self.mask_unit == "block" else "layers"
        ctx.notes.append(
            f"tabconv: {len(candidates)} candidate layers in {len(units)} masking {unit_word}; model output "
            f"cosine on the calibration data with all approximated {all_cos:.4f}"
            f"{' (independent fits)' if masking else ''}, with the {len(chosen)} chosen {final_cos:.4f} "
            f"({len(kept)} layers kept exact by priority masking)")

        out = _replace(model, {n: fits[n] for n in chosen})
        # Per layer: the approximated layer's output against the exact model's, on the calibration data.
        layer_cos = {}
        if chosen:
            exact_cap, approx_cap = LayerCapture(reference_proto), LayerCapture(out)
            names_exact = [exact_cap.node_io(n)[1] for n in chosen]
            names_approx = [approx_cap.node_io(n)[1] for n in chosen]
            acc = {n: [0.0, 0.0, 0.0] for n in chosen}
            for feed in feeds:
                ve = exact_cap.run(feed, names_exact)
                va = approx_cap.run(feed, names_approx)
                for n, te, ta in zip(chosen, names_exact, names_approx):
                    a, b = ve[te].astype(np.float64).ravel(), va[ta].astype(np.float64).ravel()
                    acc[n][0] += a @ b
                    acc[n][1] += a @ a
                    acc[n][2] += b @ b
            layer_cos = {n: v[0] / math.sqrt(max(v[1] * v[2], 1e-300)) for n, v in acc.items()}

        from ..analysis import inferred_shapes

        shapes_by_tensor = inferred_shapes(model)
        rows_at = {}
        for node in graph.nodes:
            if node.name in cands and cands[node.name].kind == "conv":
                y = shapes_by_tensor.get(node.outputs[0].name)
                rows_at[node.name] = int(np.prod(y[2:])) if y is not None and len(y) == 4 \
                    and all(isinstance(v, int) for v in y[2:]) else None
            elif node.name in cands:
                rows_at[node.name] = 1  # one row per input
        unit_of = {n: u for u, names in units.items() for n in names}
        for name in row_names:
            if name in records:
                ctx.layers.append(records[name])
                continue
            cand = cands[name]
            c, s, d, mg, group = cand.c, cand.s, cand.d, cand.mg, cand.group
            f0 = fits[name][0]
            rows = rows_at.get(name) or 0
            cost = tc.lut_costs(rows, d, mg, c, s, self.k, self.encoder, group)
            table_bytes = sum(f.tables.nbytes + (f.scale.nbytes if f.scale is not None else 0) for f in fits[name])
            ridges = [f.stats["ridge"] for f in fits[name]]
            details = {
                "codebooks": c, "subspace": s, "prototypes": self.k, "encoder": self.encoder,
                "table_bits": self.bits, "table_fit": f0.table_fit,
                "ridge": ridges[0] if len(set(ridges)) == 1 else ridges,
                "weight_bytes": int(cand.weight.nbytes),
                "table_bytes": int(table_bytes), "encoder_bytes": int(sum(
                    (f.split_dims.nbytes + f.thresholds.nbytes) if f.encoder == "tree" else f.prototypes.nbytes
                    for f in fits[name])),
                "model_cosine_alone": round(alone[unit_of[name]], 6),
                "fit_cosine": round(min(f.stats["fit_cosine"] for f in fits[name]), 6),
                "work_per_pixel": {"macs_before": d * mg * group, "encoder_comparisons":
                                   c * tc.TREE_DEPTH * group if self.encoder == "tree" else 0,
                                   "encoder_macs": c * s * self.k * group if self.encoder == "exhaustive" else 0,
                                   "lookups": c * mg * group, "additions": c * mg * group},
            }
            if self.mask_unit == "block":
                details["mask_unit"] = unit_of[name]
            if cand.kind == "classifier":
                details.update(classifier=True, replaces=cand.op, macs=d * mg, in_channels=d, out_channels=mg)
            if rows:
                details["work"] = cost
            if name in kept:
                what = f"{unit_of[name]} " if self.mask_unit == "block" and unit_of[name] != name else ""
                ctx.layers.append(LayerRecord(name, cand.op, "skipped", f"kept exact by priority masking ({what}"
                                              f"model output cosine {alone[unit_of[name]]:.4f} with it approximated "
                                              "alone)", details))
            else:
                details["layer_output_cosine"] = round(float(layer_cos.get(name, float("nan"))), 6)
                ctx.layers.append(LayerRecord(name, "LutConv", "rewritten", details=details))
        if not chosen:
            return PassResult(model, False, "every candidate kept exact")
        return PassResult(out, True, f"{len(chosen)} layers -> LutConv ({len(kept)} kept exact)")
