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

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..calibration.capture import LayerCapture
from ..calibration.sequential import RowBudget, calibration_batches, fit_in_sequence
from ..errors import OnnxCompressError
from ..fitting import tabconv as tc
from ..graph import constant_value, is_omitted, to_graph
from ..techniques.base import Layer
from ..techniques.tabconv import TECHNIQUE, describe, lut_classifier_nodes, lut_layer_node
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import build_into, eligible_layers, fits_independently, reference_model
from .name_nodes import require_unique_names

log = logging.getLogger("onnxcompress")

__all__ = ["TabConvRewrite", "lut_layer_node", "lut_classifier_nodes", "find_classifier", "classifier_constants",
           "residual_blocks", "model_output_cosine"]

# Nodes the classifier may be followed by on its way to the graph output.
_AFTER_CLASSIFIER = ("Identity", "Softmax", "LogSoftmax")


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


def _replace(model: onnx.ModelProto, fits: dict[str, list[tc.LutFit]], layers: dict[str, Layer]) -> onnx.ModelProto:
    """`model` with the Conv nodes (and the classifier) named in `fits` replaced by LutConv."""
    return build_into(model, TECHNIQUE, fits, layers, {})[0]


def _outputs(capture: LayerCapture, feeds, name: str) -> np.ndarray:
    return np.concatenate([capture.run(f, [name])[name].reshape(len(next(iter(f.values()))), -1) for f in feeds])


def model_output_cosine(reference: np.ndarray, scores: np.ndarray) -> float:
    """Mean over samples of the cosine between the rows of two [samples, features] arrays."""
    a, b = reference.astype(np.float64), scores.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1), 1.0)
    return float(np.mean(cos))


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
        self.opts = {"codebooks": codebooks, "subspace": subspace, "prototypes": prototypes, "encoder": encoder,
                     "table_bits": table_bits, "ridge": ridge}
        self.budget = RowBudget(calib_rows, seed)
        self.allow_dynamic = allow_dynamic_weights
        self.classifier, self.mask_unit = classifier, mask_unit

    # ------------------------------------------------------------- fitting
    def _fit_sequential(self, model: onnx.ModelProto, names: list[str], cands: dict[str, Layer], feeds,
                        sequential: bool = True, reference: onnx.ModelProto | None = None) -> dict[str, list]:
        """Fits of the named layers in graph order, to the outputs of `reference` (default: `model`).
        sequential: each layer's input is taken from the model with the layers before it approximated;
        otherwise from `model` (independent fits, each right for the layer approximated alone)."""
        def fit_one(index, name, data):
            fits = TECHNIQUE.fit_layer(cands[name], data, self.opts)
            log.info("tabconv: fitted %s (%d/%d), fit cosine %.4f, ridge %s", name, index + 1, len(names),
                     min(f.stats["fit_cosine"] for f in fits), fits[0].stats["ridge"])
            return fits

        replace = (lambda current, name, fits: _replace(current, {name: fits}, cands)) if sequential else None
        _, fits = fit_in_sequence(model, names, feeds, self.budget, fit_one, replace, reference=reference)
        return fits

    # ------------------------------------------------------------ masking
    def _cosine_with(self, model, cands, fits, subset, feeds, out_name, reference) -> float:
        if not subset:
            return 1.0
        cap = LayerCapture(_replace(model, {n: fits[n] for n in subset}, cands))
        return model_output_cosine(reference, _outputs(cap, feeds, out_name))

    def _units(self, graph: gs.Graph, candidates: list[str]) -> dict[str, list[str]]:
        """Masking units in graph order: label -> candidate names (a layer: its own name)."""
        block_of = residual_blocks(graph) if self.mask_unit == "block" else {}
        units: dict[str, list[str]] = {}
        for n in candidates:
            units.setdefault(f"block {block_of[n]}" if n in block_of else n, []).append(n)
        return units

    # ---------------------------------------------------------- candidates
    def _classifier_candidate(self, model, graph: gs.Graph, records: dict, notes: list) -> Layer | None:
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
        layer = Layer(node, rows, bias)
        describe(layer, rows, kind="classifier", op=node.op, **self.opts)
        reason = TECHNIQUE.applies_to(layer, graph, self.opts)
        if reason:
            records[node.name] = LayerRecord(node.name, node.op, "skipped", reason, details)
            return None
        return layer

    # ----------------------------------------------------------------- run
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        feeds = ctx.options.get("calib_feeds")
        if not feeds:
            raise OnnxCompressError("--method tabconv fits tables to data: give calibration inputs (--calib)")
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        feeds = calibration_batches(feeds, model)
        reference_proto = reference_model(model, ctx)
        probe = LayerCapture(reference_proto)
        conv_layers, records, _ = eligible_layers(graph, ctx, self.allow_dynamic,
                                                  lambda layer: TECHNIQUE.applies_to(layer, graph, self.opts))
        cands: dict[str, Layer] = {layer.name: layer for layer in conv_layers}
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
        alone = {u: self._cosine_with(model, cands, fits, names, feeds, out_name, reference)
                 for u, names in units.items()}
        order = sorted(units, key=lambda u: alone[u])  # most harmful first
        all_cos = self._cosine_with(model, cands, fits, candidates, feeds, out_name, reference)

        def layers_of(unit_labels):
            return [n for u in unit_labels for n in units[u]]

        kept_units: list[str] = []
        if self.keep_exact is not None:
            kept_units = order[:int(round(self.keep_exact * len(units)))]
        elif self.min_cosine is not None and all_cos < self.min_cosine:
            lo, hi = 1, len(order)  # smallest count of kept units reaching the target
            while lo < hi:
                mid = (lo + hi) // 2
                if self._cosine_with(model, cands, fits, layers_of(order[mid:]), feeds, out_name,
                                     reference) >= self.min_cosine:
                    hi = mid
                else:
                    lo = mid + 1
            kept_units = order[:lo]
        kept = layers_of(kept_units)
        chosen = [n for n in candidates if n not in kept]
        final_cos = all_cos if not kept else self._cosine_with(model, cands, fits, chosen, feeds, out_name, reference)
        first_fits = dict(fits)
        if masking and chosen and self.refit:
            for _attempt in range(4):
                fits = {**first_fits, **self._fit_sequential(model, chosen, cands, feeds, reference=reference_proto)}
                final_cos = self._cosine_with(model, cands, fits, chosen, feeds, out_name, reference)
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

        out = _replace(model, {n: fits[n] for n in chosen}, cands)
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
            if node.name in cands and cands[node.name].extra["kind"] == "conv":
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
            cand.extra["rows"] = rows_at.get(name) or 0
            details = {**TECHNIQUE.details(cand, fits[name], self.opts),
                       "model_cosine_alone": round(alone[unit_of[name]], 6)}
            if self.mask_unit == "block":
                details["mask_unit"] = unit_of[name]
            if name in kept:
                what = f"{unit_of[name]} " if self.mask_unit == "block" and unit_of[name] != name else ""
                ctx.layers.append(LayerRecord(name, cand.extra["op"], "skipped",
                                              f"kept exact by priority masking ({what}"
                                              f"model output cosine {alone[unit_of[name]]:.4f} with it approximated "
                                              "alone)", details))
            else:
                details["layer_output_cosine"] = round(float(layer_cos.get(name, float("nan"))), 6)
                ctx.layers.append(LayerRecord(name, "LutConv", "rewritten", details=details))
        if not chosen:
            return PassResult(model, False, "every candidate kept exact")
        return PassResult(out, True, f"{len(chosen)} layers -> LutConv ({len(kept)} kept exact)")
