"""Clustered-sparse convolution (CluSpa): every eligible 2-D Conv (any kernel,
stride, pad, dilation, group) gets weights that share K values, one of them
exactly zero (pruned), and becomes ai.onnxcompress.ClusteredSparseConv
(docs/ops.md), or, with `portable`, stays a plain Conv carrying the clustered,
pruned weights densely (runs in any ONNX runtime, no byte saving).

Fitting (onnxcompress/fitting/cluspa.py):
- data-free: magnitude pruning (a target sparsity, allocated across layers by
  the pruned weight energy, or a weight threshold; with neither, the GMM's zero
  component decides), GMM clustering of the survivors.
- calibrated (calibration feeds given): sparsity allocated across layers from
  second-order error curves measured on the original model; then layer by layer
  in graph order, on the layer's input in the model compressed so far and the
  original's output: second-order (or magnitude) pruning, masked ridge refit,
  GMM clustering, least-squares refit of the shared values, bias correction.
Every rewritten layer reports MACs before, additions and multiplies after,
parameters and bytes before and after, the achieved sparsity and, with
calibration data, the cosine of its output against the original model's.
"""

from __future__ import annotations

import logging
import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration import LayerCapture, conv_attrs
from ..calibration.sequential import RowBudget, calibration_batches, fit_in_sequence, layer_data
from ..errors import OnnxCompressError
from ..fitting import cluspa as fit
from ..graph import to_graph, to_model
from ..techniques.base import Layer
from ..techniques.cluspa import TECHNIQUE
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import eligible_layers, fits_independently, reference_model
from .name_nodes import require_unique_names

log = logging.getLogger("onnxcompress")

CRITERIA = ("second-order", "magnitude")
ALLOCATIONS = ("global", "uniform")


def _set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            return
    raise OnnxCompressError(f"no initializer '{name}'")


class ClusteredSparseRewrite(Pass):
    name = "cluspa-rewrite"
    requires = frozenset({NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, BATCHNORM_FOLDED})
    ensures = frozenset({CONV_REWRITTEN})

    def __init__(self, clusters: int = 16, sparsity: float | None = None, weight_threshold: float | None = None,
                 per_channel: bool = False, criterion: str | None = None, allocation: str = "global",
                 portable: bool = False, data_free: bool = False, calib_rows: int = 50000,
                 max_layer_sparsity: float = 0.98, seed: int = 0, allow_dynamic_weights: bool = False):
        if not 2 <= int(clusters) <= 64:
            raise OnnxCompressError(f"--clusters must be in [2, 64] (the zero cluster included), got {clusters}")
        if sparsity is not None and not 0.0 <= sparsity < 1.0:
            raise OnnxCompressError(f"--sparsity must be in [0, 1), got {sparsity}")
        if weight_threshold is not None and (not np.isfinite(weight_threshold) or weight_threshold < 0):
            raise OnnxCompressError(f"--weight-threshold must be finite and >= 0, got {weight_threshold}")
        if sparsity is not None and weight_threshold is not None:
            raise OnnxCompressError("give --sparsity or --weight-threshold, not both")
        if criterion is not None and criterion not in CRITERIA:
            raise OnnxCompressError(f"--criterion must be one of {CRITERIA}, got {criterion}")
        if allocation not in ALLOCATIONS:
            raise OnnxCompressError(f"--allocation must be one of {ALLOCATIONS}, got {allocation}")
        self.k = int(clusters)
        self.sparsity = sparsity
        self.threshold = weight_threshold
        self.per_channel = bool(per_channel)
        self.criterion = criterion
        self.allocation = allocation
        self.portable = bool(portable)
        self.data_free = bool(data_free)
        self.calib_rows = int(calib_rows)
        self.max_layer_sparsity = float(max_layer_sparsity)
        self.seed = int(seed)
        self.allow_dynamic = allow_dynamic_weights
        self.opts = {"clusters": self.k, "sparsity": sparsity, "weight_threshold": weight_threshold,
                     "per_channel": self.per_channel, "criterion": criterion, "portable": self.portable,
                     "seed": self.seed}
        self.budget = RowBudget(self.calib_rows, self.seed)

    # ------------------------------------------------------------------ fitting

    def _allocate(self, layers: list[Layer], curves) -> list[float]:
        if self.sparsity is None:
            return [None] * len(layers)
        if self.allocation == "uniform" or len(layers) == 1:
            return [self.sparsity] * len(layers)
        sizes = [layer.weight.size for layer in layers]
        return fit.allocate_sparsity(curves, sizes, self.sparsity, max_sparsity=self.max_layer_sparsity)

    def _fit_data_free(self, layers: list[Layer]) -> None:
        curves = []
        for layer in layers:
            w = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64)
            curves.append(fit.pruning_error_curve(w ** 2, float(np.sum(w ** 2))))
        for layer, s in zip(layers, self._allocate(layers, curves)):
            layer.extra["target_sparsity"] = s
            layer.extra["fit"] = TECHNIQUE.fit_layer(layer, None, self.opts)

    def _fit_calibrated(self, model, layers: list[Layer], batches, ctx) -> onnx.ModelProto:
        criterion = self.criterion or "second-order"
        reference = reference_model(model, ctx)
        curves = []
        if self.sparsity is not None and self.allocation == "global" and len(layers) > 1:
            original = LayerCapture(reference)
            for layer in layers:
                mom = layer_data(original, layer.name, batches, self.budget, layer.index).moments(
                    layer.weight.shape, conv_attrs(layer.node))
                w = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64)
                mg = w.shape[0] // mom.group
                scores = np.zeros_like(w)
                energy = 0.0
                for g, acc in enumerate(mom.groups):
                    H, G = acc.centered()
                    dense = fit.masked_refit(H, G, None)
                    sl = slice(g * mg, (g + 1) * mg)
                    scores[sl] = (fit.second_order_scores(dense, H) if criterion == "second-order"
                                  else w[sl] ** 2 * np.diag(H)[None, :])
                    energy += float(np.einsum("oi,ij,oj->", dense, H, dense, optimize=True))
                curves.append(fit.pruning_error_curve(scores, energy))
        for layer, s in zip(layers, self._allocate(layers, curves)):
            layer.extra["target_sparsity"] = s
        by_name = {layer.name: layer for layer in layers}

        def fit_one(index, name, data):
            layer = by_name[name]
            layer.extra["fit"] = fitted = TECHNIQUE.fit_layer(layer, data, self.opts)
            log.info("cluspa %-28s sparsity %.3f (target %s) rows %d", name, fitted.sparsity,
                     layer.extra["target_sparsity"], layer.extra["rows"])
            return fitted

        # Sequential: each layer's input from the model compressed so far (plain Conv
        # with the fitted dense weights: same arithmetic as the op), target from the original.
        current, _ = fit_in_sequence(model, [layer.name for layer in layers], batches, self.budget, fit_one,
                                     lambda m, name, fitted: _with_dense_fit(m, model, by_name[name], fitted),
                                     reference=reference, independent=fits_independently(ctx))
        return current

    def _measure_cosines(self, original: onnx.ModelProto, fitted: onnx.ModelProto, layers: list[Layer],
                         feeds) -> None:
        """Per layer: cosine of its output in the fitted model against the original's, over the feeds."""
        orig, cur = LayerCapture(original), LayerCapture(fitted)
        o_names = [orig.node_io(layer.name)[1] for layer in layers]
        c_names = [cur.node_io(layer.name)[1] for layer in layers]
        dot = np.zeros(len(layers))
        na = np.zeros(len(layers))
        nb = np.zeros(len(layers))
        for feed in feeds:
            a = orig.run(feed, o_names)
            b = cur.run(feed, c_names)
            for i, (on, cn) in enumerate(zip(o_names, c_names)):
                x, y = a[on].astype(np.float64).ravel(), b[cn].astype(np.float64).ravel()
                dot[i] += x @ y
                na[i] += x @ x
                nb[i] += y @ y
        for i, layer in enumerate(layers):
            layer.extra["cosine"] = float(dot[i] / max(np.sqrt(na[i] * nb[i]), 1e-300))

    # ------------------------------------------------------------------ rewriting

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        from ..analysis import inferred_shapes

        shapes = inferred_shapes(model)
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        layers, skipped, _ = eligible_layers(graph, ctx, self.allow_dynamic,
                                             lambda layer: TECHNIQUE.applies_to(layer, graph, self.opts))
        ctx.layers.extend(skipped.values())
        for layer in layers:
            out = shapes.get(layer.node.outputs[0].name)
            layer.extra["plane"] = int(np.prod(out[2:])) if out and len(out) == 4 \
                and all(isinstance(v, int) for v in out[2:]) else None
        if not layers:
            return PassResult(model, False, "no eligible Conv")

        feeds = ctx.options.get("calib_feeds")
        calibrated = bool(feeds) and not self.data_free
        batched = calibration_batches(feeds, model)
        # Weights shared between Conv nodes would be fitted twice: give each its own copy first.
        shared = {}
        for layer in layers:
            shared.setdefault(layer.node.inputs[1].name, []).append(layer.name)
        if any(len(v) > 1 for v in shared.values()) and calibrated:
            raise OnnxCompressError("cluspa: Conv nodes sharing one weight initializer are not supported with calibration")

        # One BLAS thread while fitting: the solves are many and small, and OpenBLAS's
        # threads made them 3-10x slower on a shared 2-core machine.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            if calibrated:
                fitted_model = self._fit_calibrated(model, layers, batched, ctx)
            else:
                self._fit_data_free(layers)
                fitted_model = None
        if batched:
            if fitted_model is None:
                fitted_model = model
                for layer in layers:
                    fitted_model = _with_dense_fit(fitted_model, model, layer, layer.extra["fit"], bias=False)
            self._measure_cosines(reference_model(model, ctx), fitted_model, layers, batched)

        totals = {"macs_before": 0, "adds_after": 0, "mults_after": 0, "bytes_before": 0, "bytes_after": 0,
                  "weights": 0, "nonzero_weights": 0}
        for layer in layers:
            layer.extra["calibrated"] = calibrated
            fitted = layer.extra["fit"]
            det = TECHNIQUE.details(layer, fitted, self.opts)
            new = TECHNIQUE.build(layer, fitted, graph, self.opts)
            graph.nodes.extend(new)
            ctx.layers.append(LayerRecord(layer.name, new[-1].op, "rewritten", details=det))
            for key in ("bytes_before", "bytes_after", "nonzero_weights"):
                totals[key] += det[key]
            totals["weights"] += layer.weight.size
            for key in ("macs_before", "adds_after", "mults_after"):
                totals[key] += det.get(key) or 0
        ctx.notes.append("cluspa totals over the rewritten layers (batch 1): " + ", ".join(
            f"{k} {v:,}" for k, v in totals.items())
            + f", weight sparsity {1 - totals['nonzero_weights'] / max(totals['weights'], 1):.4f}"
            + f", initializer bytes {totals['bytes_before'] / max(totals['bytes_after'], 1):.2f}x smaller")
        self.totals = totals
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        what = "Conv (portable, clustered weights)" if self.portable else "ClusteredSparseConv"
        if self.portable:
            ctx.notes.append("portable: the clustered, pruned weights are written back as plain Conv weights "
                             "(dense float32): the model runs in any ONNX runtime without onnxcompress's library, "
                             "with the approximation's accuracy but without its byte or time savings")
        ctx.notes.append(f"cluspa: K={self.k} (zero cluster included), "
                         + (f"target sparsity {self.sparsity} ({self.allocation} allocation)" if self.sparsity
                            is not None else f"weight threshold {self.threshold}" if self.threshold is not None
                            else "sparsity from the GMM's zero component")
                         + (f", calibrated ({self.criterion or 'second-order'} pruning, sequential refit)"
                            if calibrated else ", data-free (magnitude)"))
        return PassResult(to_model(graph, model), True, f"{len(layers)} Conv -> {what}")


def _with_dense_fit(current: onnx.ModelProto, model: onnx.ModelProto, layer: Layer, fitted: fit.ClusteredLayer,
                    bias: bool = True) -> onnx.ModelProto:
    """`current` (a copy of `model` the first time: `model` is never changed) with the layer's weight
    initializer holding the fitted dense weights and, with `bias`, its bias the fitted one (added
    where the Conv had none)."""
    if current is model:
        current = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in current.graph.node if n.name == layer.name)
    _set_initializer(current, node.input[1], fitted.weight().reshape(layer.weight.shape))
    if not bias:
        return current
    if len(node.input) > 2 and node.input[2]:
        _set_initializer(current, node.input[2], fitted.bias)
    else:
        name = node.input[1] + ".cluspa_bias"
        current.graph.initializer.append(numpy_helper.from_array(fitted.bias, name))
        del node.input[2:]
        node.input.append(name)
    return current
