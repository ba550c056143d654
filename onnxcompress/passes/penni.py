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
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis import analyse_convs
from ..calibration import LayerCapture, conv_io_batches, conv_layer_moments
from ..errors import OnnxCompressError
from ..fitting import allocation
from ..fitting import penni as fit
from ..graph import to_graph, to_model, unique_name
from ..inputs import merge_feeds
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import chosen_layers, conv_constants, fits_independently, make_custom_conv, reference_model
from .name_nodes import require_unique_names

log = logging.getLogger("onnxcompress")

CRITERIA = ("second-order", "magnitude")
_SPATIAL = ("auto_pad", "pads", "strides", "dilations")


def _stored_values(m: int, cg: int, kh: int, kw: int, d: int) -> int:
    """Values BasisConv stores for a layer (bias apart): d bases and the dense [M, Cg*d] coefficients."""
    return d * kh * kw + m * cg * d


def _largest_shrinking_d(m: int, cg: int, kh: int, kw: int) -> int:
    return max([d for d in range(1, kh * kw + 1) if _stored_values(m, cg, kh, kw, d) < m * cg * kh * kw] or [0])


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

    # ------------------------------------------------------------------ selection
    def _eligible(self, node: gs.Node) -> tuple[dict | None, str]:
        constants, reason = conv_constants(node, self.allow_dynamic)
        if reason:
            return None, reason
        weight, bias = constants
        m, cg, kh, kw = weight.shape
        if weight.size == 0:
            return None, "empty weight"
        if kh * kw == 1:
            return None, "1x1 convolution: no spatial kernel to express in bases"
        group = int(node.attrs.get("group", 1))
        d = self.bases if self.bases is not None else kh * kw  # energy: at most kh*kw (checked after the fit)
        if self.bases is not None and self.bases >= kh * kw and self.mac_reduction is None:
            self._bases_too_many.add(f"{kh}x{kw}")
        d, sparsity = min(d, kh * kw), self.sparsity
        if self.mac_reduction is not None:  # the allocation may pick the cheapest setting
            d, sparsity = 1, fit.SPARSITY_GRID[-1]
        if self.bases is not None and self.mac_reduction is None and not self.portable:
            stored = _stored_values(m, cg, kh, kw, d)
            if stored >= m * cg * kh * kw:
                return None, (f"d={d} bases and the dense {m}x{cg * d} coefficients store {stored} values, the "
                              f"kernels {m * cg * kh * kw}: the model would not shrink (give --bases < "
                              f"{_largest_shrinking_d(m, cg, kh, kw) + 1})")
        # per output position: original M*Cg*K; basis form at least Cin*d*K + nnz
        after = group * cg * d * kh * kw + (1 - sparsity) * m * cg * d
        if self.bases is not None and after >= m * cg * kh * kw:
            what = "depthwise: " if cg == 1 else ""
            return None, (f"{what}the basis form ({after:.0f} MACs per output position) would not be cheaper than "
                          f"the original ({m * cg * kh * kw})")
        return {"name": node.name, "weight": weight, "bias": bias, "group": group,
                "attrs": {k: v for k, v in node.attrs.items()}}, ""

    # ------------------------------------------------------------------ fitting
    def _fit(self, layer: dict, moments=None):
        criterion = self.criterion or ("second-order" if moments is not None else "magnitude")
        if criterion == "second-order" and moments is None:
            criterion = "magnitude"
        return fit.fit_layer(layer["weight"], layer["bias"], group=layer["group"],
                             bases=layer.get("bases", self.bases), energy=self.energy,
                             sparsity=layer.get("sparsity", self.sparsity),
                             criterion="second_order" if criterion == "second-order" else "magnitude",
                             moments=moments, basis_iterations=self.basis_iterations if moments else 0,
                             ridge=self.ridge), criterion

    def _layer_moments(self, layer, batches, n_feeds):
        budget = max(1, -(-self.calib_rows // max(n_feeds, 1)))
        moments = conv_layer_moments(layer["weight"].shape, conv_attrs_of(layer), batches, row_budget=budget,
                                     seed=self.seed)
        return fit.group_moments(moments), moments.geometry

    # ------------------------------------------------------------------ allocation
    def _allocate(self, model: onnx.ModelProto, layers: list[dict], original: LayerCapture | None, merged,
                  ctx: PassContext) -> None:
        """Per-layer d and coefficient sparsity for the model-wide --mac-reduction: error estimates
        (fitting.penni.option_errors, on the original model's calibration moments when there are
        feeds) against MACs, allocated by the Lagrangian of fitting.allocation."""
        infos = {c.name: c for c in analyse_convs(model)}
        total = sum(c.macs or 0 for c in infos.values())
        missing = [c.name for c in infos.values() if c.macs is None]
        if missing:
            raise OnnxCompressError(f"--mac-reduction needs static Conv shapes; unknown output size for {missing[:3]}")
        names = {layer["name"] for layer in layers}
        fixed = sum(c.macs for c in infos.values() if c.name not in names)
        budget = (1.0 - self.mac_reduction) * total - fixed
        ranks = list(range(1, (self.bases or fit.DEFAULT_BASES) + 1))
        errors, costs, options = [], [], []
        for layer in layers:
            m, cg, kh, kw = layer["weight"].shape
            ok = [d for d in ranks if d <= kh * kw]
            moments = None
            if merged:
                moments, _ = self._layer_moments(layer, original.conv_batches(layer["name"], merged), len(merged))
            err = fit.option_errors(layer["weight"], layer["bias"], moments, ok, ridge=self.ridge, seed=self.seed)
            pixels = infos[layer["name"]].macs // (m * cg * kh * kw)
            cost = fit.option_costs(cg * layer["group"], m, layer["group"], (kh, kw), pixels, ok)
            options.append([(d, s) for d in ok for s in fit.SPARSITY_GRID])  # the order of err.ravel()
            log.info("penni allocation: error estimates of %s (d <= %d) done", layer["name"], ok[-1])
            errors.append(err.ravel())
            costs.append(cost.ravel())
        choice = allocation.allocate(errors, costs, budget)
        spent = fixed + sum(c[i] for c, i in zip(costs, choice))
        for layer, i, e, opts in zip(layers, choice, errors, options):
            layer["bases"], layer["sparsity"] = opts[i]
            layer["estimated_error"] = float(e[i])
        note = (f"penni: --mac-reduction {self.mac_reduction:.3f} allocated over {len(layers)} layers: "
                f"{spent / total:.4f} of {total} Conv MACs planned (every basis map counted)")
        if spent > (1.0 - self.mac_reduction) * total * (1 + 1e-6):
            note += "; the target is out of reach even at the cheapest setting of every layer"
        ctx.notes.append(note)
        log.info(note)

    # ------------------------------------------------------------------ graph
    def _replace(self, graph: gs.Graph, name: str, result: fit.BasisFit) -> str:
        node = next(n for n in graph.nodes if n.name == name and n.op == "Conv" and not n.domain)
        base = node.name or "conv"
        x = node.inputs[0]
        bases, coefs, bias = result.bases, result.coefs, result.bias
        if self.portable:
            cin = coefs.shape[1] // bases.shape[0] * int(node.attrs.get("group", 1))
            d, kh, kw = bases.shape
            wb = np.ascontiguousarray(np.tile(bases[None], (cin, 1, 1, 1)).reshape(cin * d, 1, kh, kw))
            maps = gs.Variable(unique_name(graph, f"{base}.basis_maps"), dtype=np.float32)
            attrs = {k: node.attrs[k] for k in _SPATIAL if k in node.attrs}
            attrs["group"] = cin
            attrs["kernel_shape"] = [kh, kw]
            first = gs.Node("Conv", name=unique_name(graph, f"{base}.bases"), attrs=attrs,
                            inputs=[x, gs.Constant(unique_name(graph, f"{base}.bases"), wb)], outputs=[maps])
            inputs = [maps, gs.Constant(unique_name(graph, f"{base}.coefs"),
                                        np.ascontiguousarray(coefs.reshape(*coefs.shape, 1, 1)))]
            if bias is not None:
                inputs.append(gs.Constant(unique_name(graph, f"{base}.bias"), np.ascontiguousarray(bias)))
            second = gs.Node("Conv", name=node.name, attrs={"group": int(node.attrs.get("group", 1)),
                                                            "kernel_shape": [1, 1]},
                             inputs=inputs, outputs=list(node.outputs))
            node.outputs.clear()
            graph.nodes.extend([first, second])
            return "Conv+Conv"
        inputs = [x, gs.Constant(unique_name(graph, f"{base}.bases"), np.ascontiguousarray(bases)),
                  gs.Constant(unique_name(graph, f"{base}.coefs"), np.ascontiguousarray(coefs))]
        if bias is not None:
            inputs.append(gs.Constant(unique_name(graph, f"{base}.bias"), np.ascontiguousarray(bias)))
        graph.nodes.append(make_custom_conv(node, "BasisConv", inputs, {}))
        return "BasisConv"

    def _apply(self, model: onnx.ModelProto, name: str, result) -> tuple[onnx.ModelProto, str]:
        graph = to_graph(model)
        op = self._replace(graph, name, result)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return to_model(graph, model), op

    # ------------------------------------------------------------------ run
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        feeds = ctx.options.get("calib_feeds") if not self.data_free else None
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        layers, records = [], {}
        order = []
        self._bases_too_many: set[str] = set()
        excluded = chosen_layers(ctx, graph)
        for node in [n for n in graph.nodes if n.op == "Conv" and not n.domain]:
            order.append(node.name)
            if excluded(node):
                records[node.name] = LayerRecord(node.name, "Conv", "skipped", excluded(node))
                continue
            layer, reason = self._eligible(node)
            if layer is None:
                records[node.name] = LayerRecord(node.name, "Conv", "skipped", reason)
            else:
                layers.append(layer)
        if not layers:
            ctx.layers.extend(records[n] for n in order)
            self._note_bases(ctx)
            return PassResult(model, False, "no eligible Conv")

        current = model
        merged = merge_feeds(feeds, model=model) if feeds else None
        original = LayerCapture(reference_model(model, ctx)) if merged else None
        independent = LayerCapture(model) if merged and fits_independently(ctx) else None
        if self.mac_reduction is not None:
            self._allocate(model, layers, original, merged, ctx)
        for layer in layers:
            geometry = None
            if merged:
                batches = conv_io_batches(original, layer["name"], merged,
                                          current=independent or LayerCapture(current))
                moments, geometry = self._layer_moments(layer, batches, len(merged))
                result, criterion = self._fit(layer, moments)
            else:
                result, criterion = self._fit(layer)
            details = self._details(layer, result, criterion, geometry, merged)
            if not self.portable and details["bytes_after"] >= details["bytes_before"]:
                records[layer["name"]] = LayerRecord(
                    layer["name"], "Conv", "skipped",
                    f"the fit (d={result.rank}) stores {details['bytes_after']} bytes, the layer "
                    f"{details['bytes_before']}: left alone, the model would not shrink", details)
                continue
            current, op = self._apply(current, layer["name"], result)
            records[layer["name"]] = LayerRecord(layer["name"], op, "rewritten", details=details)
            log.info("penni %s: d=%d sparsity=%.3f%s", layer["name"], result.rank, result.sparsity,
                     f" cosine={result.stats['output_cosine']:.4f}" if "output_cosine" in result.stats else "")
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

    def _details(self, layer, result: fit.BasisFit, criterion, geometry, calibrated) -> dict[str, Any]:
        w = layer["weight"]
        m, cg, kh, kw = w.shape
        g = layer["group"]
        d = result.rank
        details = {
            "bases": d, "retained_energy": round(result.energy, 6),
            "coef_sparsity": round(result.sparsity, 4), "coef_nnz": int(result.stats["nnz"]),
            "criterion": criterion, "calibrated": bool(calibrated), "portable": self.portable,
            "dead_input_channels": result.stats["dead_input_channels"],
            "dead_output_channels": result.stats["dead_output_channels"],
            "active_basis_maps": result.stats["active_basis_maps"],
            "params_before": int(w.size + (0 if layer["bias"] is None else m)),
        }
        if "estimated_error" in layer:  # chosen by the --mac-reduction allocation
            details["allocated"] = {"bases": layer["bases"], "coef_sparsity": layer["sparsity"],
                                    "estimated_rel_error": round(layer["estimated_error"], 6)}
        # bytes of the initializers as written (the coefficient matrix is stored dense; CSR would take
        # 8 bytes per non-zero plus the row starts)
        bias_bytes = 0 if result.bias is None else 4 * m
        details["bytes_before"] = int(4 * w.size + (0 if layer["bias"] is None else 4 * m))
        details["bytes_after"] = int(result.bases.nbytes + result.coefs.nbytes + bias_bytes)
        details["bytes_after_if_csr"] = int(result.bases.nbytes + 8 * result.stats["nnz"] + 8 * (m + 1) + bias_bytes)
        details["params_after_nonzero"] = int(d * kh * kw + result.stats["nnz"] + (0 if result.bias is None else m))
        # per output position (times OH*OW for a whole image): portable runs every map and the dense
        # coefficients; BasisConv only the active maps and the non-zero coefficients
        maps = cg * g * d if self.portable else result.stats["active_basis_maps"]
        nnz = m * cg * d if self.portable else result.stats["nnz"]
        costs = fit.layer_costs(cg * g, m, g, (kh, kw), 1, maps, nnz, d)
        details.update(macs_per_position_before=costs["macs_original"],
                       macs_per_position_basis_stage=costs["macs_basis_stage"],
                       macs_per_position_coef_stage=costs["macs_coef_stage"],
                       macs_ratio=round(costs["macs_after"] / costs["macs_original"], 6))
        if geometry is not None:
            details["output_hw"] = list(geometry.out_hw)
        for key in ("rel_error", "output_cosine"):
            if key in result.stats:
                details[key] = round(float(result.stats[key]), 6)
        return details


def conv_attrs_of(layer: dict) -> dict:
    return {k: v for k, v in layer["attrs"].items() if k in ("auto_pad", "pads", "strides", "dilations", "group",
                                                                "kernel_shape")}
