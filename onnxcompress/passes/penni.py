"""Basis-kernel convolution (PENNI): every eligible kxk Conv (k > 1; any stride,
pad, dilation, group) is written as d basis kernels shared by the layer and a
sparse coefficient matrix [M, Cg*d] (column c*d + b: input channel c, basis b),
and becomes ai.onnxcompress.BasisConv (docs/ops.md) or, with `portable`, the
same decomposition in standard ONNX: a grouped Conv with the bases (group = C,
C*d maps in the order c*d + b) followed by a 1x1 Conv with the dense
coefficients (group = the layer's group) and the bias.

Fitting (onnxcompress/fitting/penni.py): truncated SVD of the layer's kernels
(d by number or retained energy), coefficient pruning (magnitude, or the
second-order saliency in the basis space), and with calibration feeds, layer
by layer in graph order on the layer's input in the model compressed so far
against the original's output: masked ridge refit of the surviving
coefficients, optional alternating refit of the bases, bias for the output
mean. Layers are left alone, with the reason, where the basis form cannot
save work: 1x1 kernels, and layers (depthwise ones in particular) whose basis
stage alone costs as much as the original.
"""

from __future__ import annotations

import logging

import onnx

from ..analysis import analyse_convs
from ..calibration import LayerCapture, conv_attrs
from ..calibration.sequential import RowBudget, calibration_batches, fit_in_sequence, layer_data
from ..errors import OnnxCompressError
from ..fitting import allocation
from ..fitting import penni as fit
from ..graph import to_graph
from ..techniques.base import Layer
from ..techniques.penni import TECHNIQUE
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import build_into, eligible_layers, fits_independently, reference_model
from .name_nodes import require_unique_names

log = logging.getLogger("onnxcompress")

CRITERIA = ("second-order", "magnitude")


class PenniRewrite(Pass):
    name = "penni-rewrite"
    requires = frozenset({NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, BATCHNORM_FOLDED})
    ensures = frozenset({CONV_REWRITTEN})

    def __init__(self, bases: int | None = None, energy: float | None = None, coef_sparsity: float | None = None,
                 mac_reduction: float | None = None,
                 criterion: str | None = None, basis_iterations: int = 0, portable: bool = False,
                 data_free: bool = False, calib_rows: int = 50000, seed: int = 0, ridge: float = 1e-4,
                 allow_dynamic_weights: bool = False):
        if bases is not None and energy is not None:
            raise OnnxCompressError("give --bases or --energy, not both")
        if bases is not None and bases < 1:
            raise OnnxCompressError(f"--bases must be >= 1, got {bases}")
        if energy is not None and not 0 < energy <= 1:
            raise OnnxCompressError(f"--energy must be in (0, 1], got {energy}")
        if coef_sparsity is not None and not 0 <= coef_sparsity < 1:
            raise OnnxCompressError(f"--coef-sparsity must be in [0, 1), got {coef_sparsity}")
        if mac_reduction is not None:
            if not 0 < mac_reduction < 1:
                raise OnnxCompressError(f"--mac-reduction must be in (0, 1), got {mac_reduction}")
            if coef_sparsity is not None or energy is not None:
                raise OnnxCompressError("--mac-reduction chooses d and the coefficient sparsity per layer: "
                                        "give it without --coef-sparsity and --energy (--bases is the largest d)")
        if criterion is not None and criterion not in CRITERIA:
            raise OnnxCompressError(f"--criterion must be one of {CRITERIA}, got {criterion}")
        if basis_iterations < 0:
            raise OnnxCompressError(f"--basis-iterations must be >= 0, got {basis_iterations}")
        if calib_rows < 1:
            raise OnnxCompressError(f"--calib-rows must be >= 1, got {calib_rows}")
        self.bases = bases if (bases is not None or energy is not None) else fit.DEFAULT_BASES
        self.energy = energy
        self.sparsity = fit.DEFAULT_COEF_SPARSITY if coef_sparsity is None else float(coef_sparsity)
        self.mac_reduction = mac_reduction
        self.criterion = criterion
        self.basis_iterations = basis_iterations
        self.portable = portable
        self.data_free = data_free
        self.calib_rows = calib_rows
        self.seed = seed
        self.ridge = ridge
        self.allow_dynamic = allow_dynamic_weights
        self.opts = {"bases": self.bases, "energy": energy, "coef_sparsity": self.sparsity,
                     "mac_reduction": mac_reduction, "criterion": criterion, "basis_iterations": basis_iterations,
                     "portable": portable, "ridge": ridge}
        self.budget = RowBudget(calib_rows, seed)

    # ------------------------------------------------------------------ selection
    def _check(self, layer: Layer, graph) -> str | None:
        """The technique's applies_to, noting kernel sizes --bases is not below."""
        m, cg, kh, kw = layer.weight.shape
        if layer.weight.size and kh * kw > 1 and self.bases is not None and self.bases >= kh * kw \
                and self.mac_reduction is None:
            self._bases_too_many.add(f"{kh}x{kw}")
        return TECHNIQUE.applies_to(layer, graph, self.opts)

    # ------------------------------------------------------------------ allocation
    def _allocate(self, model: onnx.ModelProto, layers: list[Layer], original: LayerCapture | None, merged,
                  ctx: PassContext) -> None:
        """Per-layer d and coefficient sparsity for the model-wide --mac-reduction: error estimates
        (fitting.penni.option_errors, on the original model's calibration moments when there are
        feeds) against MACs, allocated by the Lagrangian of fitting.allocation."""
        infos = {c.name: c for c in analyse_convs(model)}
        total = sum(c.macs or 0 for c in infos.values())
        missing = [c.name for c in infos.values() if c.macs is None]
        if missing:
            raise OnnxCompressError(f"--mac-reduction needs static Conv shapes; unknown output size for {missing[:3]}")
        names = {layer.name for layer in layers}
        fixed = sum(c.macs for c in infos.values() if c.name not in names)
        budget = (1.0 - self.mac_reduction) * total - fixed
        ranks = list(range(1, (self.bases or fit.DEFAULT_BASES) + 1))
        errors, costs, options = [], [], []
        for layer in layers:
            m, cg, kh, kw = layer.weight.shape
            ok = [d for d in ranks if d <= kh * kw]
            moments = None
            if merged:
                moments = fit.group_moments(layer_data(original, layer.name, merged, self.budget, layer.index)
                                            .moments(layer.weight.shape, conv_attrs(layer.node)))
            err = fit.option_errors(layer.weight, layer.bias, moments, ok, ridge=self.ridge, seed=self.seed)
            pixels = infos[layer.name].macs // (m * cg * kh * kw)
            cost = fit.option_costs(cg * layer.group, m, layer.group, (kh, kw), pixels, ok)
            options.append([(d, s) for d in ok for s in fit.SPARSITY_GRID])  # the order of err.ravel()
            log.info("penni allocation: error estimates of %s (d <= %d) done", layer.name, ok[-1])
            errors.append(err.ravel())
            costs.append(cost.ravel())
        choice = allocation.allocate(errors, costs, budget)
        spent = fixed + sum(c[i] for c, i in zip(costs, choice))
        for layer, i, e, opts in zip(layers, choice, errors, options):
            layer.extra["bases"], layer.extra["sparsity"] = opts[i]
            layer.extra["estimated_error"] = float(e[i])
        note = (f"penni: --mac-reduction {self.mac_reduction:.3f} allocated over {len(layers)} layers: "
                f"{spent / total:.4f} of {total} Conv MACs planned (every basis map counted)")
        if spent > (1.0 - self.mac_reduction) * total * (1 + 1e-6):
            note += "; the target is out of reach even at the cheapest setting of every layer"
        ctx.notes.append(note)
        log.info(note)

    # ------------------------------------------------------------------ run
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        feeds = ctx.options.get("calib_feeds") if not self.data_free else None
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        self._bases_too_many: set[str] = set()
        layers, records, order = eligible_layers(graph, ctx, self.allow_dynamic,
                                                 lambda layer: self._check(layer, graph))
        if not layers:
            ctx.layers.extend(records[n] for n in order)
            self._note_bases(ctx)
            return PassResult(model, False, "no eligible Conv")

        merged = calibration_batches(feeds, model)
        reference = reference_model(model, ctx)
        if self.mac_reduction is not None:
            self._allocate(model, layers, LayerCapture(reference) if merged else None, merged, ctx)
        by_name = {layer.name: layer for layer in layers}

        def fit_one(index, name, data):
            layer = by_name[name]
            result = TECHNIQUE.fit_layer(layer, data, self.opts)
            details = TECHNIQUE.details(layer, result, self.opts)
            if not self.portable and details["bytes_after"] >= details["bytes_before"]:
                records[name] = LayerRecord(
                    name, "Conv", "skipped",
                    f"the fit (d={result.rank}) stores {details['bytes_after']} bytes, the layer "
                    f"{details['bytes_before']}: left alone, the model would not shrink", details)
                return None
            layer.extra["details"] = details
            log.info("penni %s: d=%d sparsity=%.3f%s", name, result.rank, result.sparsity,
                     f" cosine={result.stats['output_cosine']:.4f}" if "output_cosine" in result.stats else "")
            return result

        def replace(current, name, result):
            current, built = build_into(current, TECHNIQUE, {name: result}, by_name, self.opts)
            records[name] = LayerRecord(name, "+".join(n.op for n in built[name]), "rewritten",
                                        details=by_name[name].extra["details"])
            return current

        names = [layer.name for layer in layers]
        if merged:
            current, _ = fit_in_sequence(model, names, merged, self.budget, fit_one, replace, reference=reference,
                                         independent=fits_independently(ctx))
        else:
            current = model
            for layer in layers:
                result = fit_one(layer.index, layer.name, None)
                if result is not None:
                    current = replace(current, layer.name, result)
        ctx.layers.extend(records[n] for n in order)
        rewritten = sum(r.status == "rewritten" for r in records.values())
        self._note_bases(ctx)
        if not rewritten:
            ctx.notes.append("penni: no layer rewritten")
            return PassResult(model, False, "no layer would shrink")
        what = "portable Conv pairs" if self.portable else "BasisConv"
        ctx.notes.append(
            f"penni: {rewritten} Conv -> {what}; "
            + ("calibrated (sequential refit)" if merged else "data-free (magnitude pruning, no refit)"))
        return PassResult(current, True, f"{rewritten} Conv -> {what}")

    def _note_bases(self, ctx: PassContext) -> None:
        big = sorted(self._bases_too_many)
        if big:
            ctx.notes.append(f"penni: --bases {self.bases} is not below the kernel size of the {', '.join(big)} "
                             f"layers (a kh x kw kernel has at most kh*kw bases, and that many store more values "
                             f"than the kernels): give a smaller --bases")
            log.warning("warning: %s", ctx.notes[-1])
