"""Activation-sparse convolution (FalCon): a 2-D Conv whose input comes from a
ReLU-like producer becomes ai.onnxcompress.SparseInputConv, which skips the
zero activations at run time. Exact unless a threshold is given.

With calibration inputs, the pass measures each candidate's real input zero
fraction and, by default (select="measured"), times ORT's Conv against the
rewritten layer alone on a real captured input, keeping the rewrite only where
it is at least `min_speedup` faster: small layers, where the kernel's per-call
overhead dominates, stay with ORT's Conv. It then times the whole model and
gives back the weakest layers until the model is not slower than the original
(our ops break the blocked-layout chains ORT builds around its own Conv, so a
layer faster alone can slow the model). select="all" rewrites every candidate."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..errors import OnnxCompressError
from ..graph import to_graph
from ..techniques.falcon import TECHNIQUE, sparse_input_attrs
from .conv_rewrite import CONV_ATTRS, build_into, eligible_layers
from .name_nodes import require_unique_names
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)

class FalconRewrite(Pass):
    name = "falcon-rewrite"
    requires = frozenset({NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, BATCHNORM_FOLDED})
    ensures = frozenset({CONV_REWRITTEN})

    def __init__(self, threshold: float = 0.0, dense_below_zero_fraction: float | None = None,
                 allow_dynamic_weights: bool = False, select: str = "measured", min_speedup: float = 1.05,
                 threads: int = 1):
        if not np.isfinite(threshold) or threshold < 0:
            raise OnnxCompressError(f"threshold must be a finite number >= 0, got {threshold}")
        if select not in ("measured", "all"):
            raise OnnxCompressError(f"select must be 'measured' or 'all', got '{select}'")
        if not min_speedup > 0:
            raise OnnxCompressError(f"min_speedup must be > 0, got {min_speedup}")
        self.threshold = threshold
        self.dense_below = dense_below_zero_fraction
        self.allow_dynamic = allow_dynamic_weights
        self.select = select
        self.min_speedup = min_speedup
        self.threads = threads
        self.opts = {"threshold": threshold, "dense_below_zero_fraction": dense_below_zero_fraction}

    def _measure(self, model: onnx.ModelProto, candidates: list[gs.Node], feeds) -> dict[str, dict]:
        """Per candidate: the zero fraction of its input over the feeds, and one real input."""
        from ..calibration import LayerCapture

        capture = LayerCapture(model, threads=self.threads)
        names = sorted({n.inputs[0].name for n in candidates})
        zeros = dict.fromkeys(names, 0)
        total = dict.fromkeys(names, 0)
        sample: dict[str, np.ndarray] = {}
        for values in capture.stream(feeds, names):
            for name, v in values.items():
                small = np.abs(v) < self.threshold if self.threshold > 0 else v == 0
                zeros[name] += int(np.count_nonzero(small))
                total[name] += v.size
                sample.setdefault(name, np.ascontiguousarray(v[:1]))
        return {n.name: {"zero_fraction": zeros[n.inputs[0].name] / max(total[n.inputs[0].name], 1),
                         "sample": sample[n.inputs[0].name]} for n in candidates}

    def _speedup(self, node: gs.Node, weight, bias, attrs: dict, x: np.ndarray) -> float:
        from ..layer_timing import single_node_model, time_pair

        conv_attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
        params = {"W": weight, "B": bias}
        reference = single_node_model("Conv", "", params, conv_attrs, x.shape)
        candidate = single_node_model("SparseInputConv", DOMAIN, params, {**conv_attrs, **attrs}, x.shape)
        return time_pair(reference, candidate, x, threads=self.threads).speedup

    def _attrs(self) -> dict:
        return sparse_input_attrs(self.opts)

    def _rewrite(self, model: onnx.ModelProto, chosen: set[str]) -> onnx.ModelProto:
        """`model` with the Conv nodes named in `chosen` replaced by SparseInputConv."""
        return build_into(model, TECHNIQUE, dict.fromkeys(chosen), {}, self.opts)[0]

    def _model_speedup(self, model: onnx.ModelProto, chosen: set[str], feed: dict) -> float:
        """End-to-end speedup of the model with `chosen` rewritten (residuals and activations fused), on one input."""
        from ..layer_timing import time_models
        from . import fusions
        from .eliminate_dead_code import EliminateDeadCode

        candidate = self._rewrite(model, chosen)
        for p in fusions() + [EliminateDeadCode()]:
            candidate = p.run(candidate, PassContext()).model
        return time_models(model, candidate, feed, threads=self.threads, runs=50, warmup=10).speedup

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        layers, skipped, _ = eligible_layers(graph, ctx, self.allow_dynamic,
                                             lambda layer: TECHNIQUE.applies_to(layer, graph, self.opts))
        ctx.layers.extend(skipped.values())
        candidates = [(layer.node, (layer.weight, layer.bias), layer) for layer in layers]
        feeds = ctx.options.get("calib_feeds")
        measured = self._measure(model, [c[0] for c in candidates], feeds) if feeds and candidates else {}
        timed = self.select == "measured" and bool(measured)
        if self.select == "measured" and not feeds and candidates:
            ctx.notes.append("no calibration inputs: every candidate rewritten without timing it "
                             "(give --calib to keep ORT's Conv where the rewrite does not pay)")

        details, skipped = {}, {}
        for node, (weight, bias), layer in candidates:
            d = TECHNIQUE.details(layer, None, self.opts)
            if node.name in measured:
                d["input_zero_fraction"] = round(measured[node.name]["zero_fraction"], 4)
            if timed:
                speedup = self._speedup(node, weight, bias, self._attrs(), measured[node.name]["sample"])
                d["measured_speedup"] = round(speedup, 3)
                if speedup < self.min_speedup:
                    skipped[node.name] = (f"measured {speedup:.2f}x against ORT's Conv on a real input "
                                          f"(< {self.min_speedup}x)")
            details[node.name] = d
        chosen = {n.name for n, _, _ in candidates} - set(skipped)

        if timed and chosen:
            # A layer that is faster alone can still slow the model down: our ops
            # break the blocked-layout chains ORT builds around its own Conv. Time
            # the whole model and give back the weakest layers until it pays.
            feed = {k: v[:1] for k, v in feeds[0].items()}
            while chosen:
                whole = self._model_speedup(model, chosen, feed)
                if whole >= 1.0:
                    ctx.notes.append(f"falcon: the model with {len(chosen)} layer(s) rewritten timed "
                                     f"{whole:.2f}x against the original on a calibration input")
                    break
                weakest = min(chosen, key=lambda name: details[name]["measured_speedup"])
                chosen.discard(weakest)
                skipped[weakest] = (f"faster alone ({details[weakest]['measured_speedup']:.2f}x), but the whole "
                                    f"model timed {whole:.2f}x with it rewritten")
            else:
                ctx.notes.append("falcon: no set of rewritten layers made the whole model faster; nothing rewritten")

        for node, _, _ in candidates:
            if node.name in chosen:
                ctx.layers.append(LayerRecord(node.name, "SparseInputConv", "rewritten", details=details[node.name]))
            else:
                ctx.layers.append(LayerRecord(node.name, "Conv", "skipped", skipped[node.name], details[node.name]))
        if self.threshold > 0:
            ctx.notes.append(f"approximate: activations with |x| < {self.threshold} are treated as zero")
        if not chosen:
            return PassResult(model, False, "no Conv rewritten")
        return PassResult(self._rewrite(model, chosen), True, f"{len(chosen)} Conv -> SparseInputConv")
