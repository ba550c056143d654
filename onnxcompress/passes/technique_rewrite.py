"""The pass a technique gets by default (Technique.passes): it drives the
per-layer protocol of onnxcompress.techniques.base over every Conv.

For each Conv in graph order: the shared choice (`layers`, constant float32
2-D weights; passes/conv_rewrite.py), then the technique's `applies_to`;
skipped layers are recorded with the reason. With calibration inputs (and
not `data_free`) the layers are fitted by the shared sequential loop
(onnxcompress.calibration.sequential: each layer on its input in the model
as compressed so far, against the reference model's output, honouring
`reference_model` and `independent`); without, each is fitted on its weights
alone. Every fit is built into the graph at once (`build`), and its record
carries the technique's `details`.
"""

from __future__ import annotations

import onnx

from ..calibration.sequential import RowBudget, calibration_batches, fit_in_sequence
from ..errors import OnnxCompressError
from ..graph import to_graph
from ..techniques.base import Technique
from .base import (
    BATCHNORM_FOLDED, CONV_REWRITTEN, NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, LayerRecord, Pass, PassContext,
    PassResult,
)
from .conv_rewrite import build_into, eligible_layers, fits_independently, reference_model
from .name_nodes import require_unique_names


class TechniqueRewrite(Pass):
    requires = frozenset({NODES_NAMED, WEIGHTS_ARE_INITIALIZERS, BATCHNORM_FOLDED})
    ensures = frozenset({CONV_REWRITTEN})

    def __init__(self, technique: Technique, opts: dict):
        self.technique = technique
        self.opts = dict(opts)
        self.name = f"{technique.name}-rewrite"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        t, opts = self.technique, self.opts
        graph = to_graph(model)
        require_unique_names(graph.nodes, self.name)
        graph.toposort()
        layers, records, order = eligible_layers(graph, ctx, bool(opts.get("allow_dynamic_weights")),
                                                 lambda layer: t.applies_to(layer, graph, opts))
        feeds = ctx.options.get("calib_feeds")
        if t.needs_calibration and not feeds:
            raise OnnxCompressError(f"--method {t.name} fits to data: give calibration inputs (--calib)")
        if not layers:
            ctx.layers.extend(records[n] for n in order)
            return PassResult(model, False, "no eligible Conv")
        by_name = {layer.name: layer for layer in layers}

        def replace(current: onnx.ModelProto, name: str, fitted) -> onnx.ModelProto:
            current, built = build_into(current, t, {name: fitted}, by_name, opts)
            records[name] = LayerRecord(name, "+".join(n.op for n in built[name]), "rewritten",
                                        details=t.details(by_name[name], fitted, opts))
            return current

        batches = calibration_batches(feeds, model) if not opts.get("data_free") else []
        if batches:
            budget = RowBudget(int(opts.get("calib_rows") or 50000), int(opts.get("seed") or 0))
            current, _ = fit_in_sequence(model, [layer.name for layer in layers], batches, budget,
                                         lambda index, name, data: t.fit_layer(by_name[name], data, opts), replace,
                                         reference=reference_model(model, ctx), independent=fits_independently(ctx))
        else:
            current = model
            for layer in layers:
                current = replace(current, layer.name, t.fit_layer(layer, None, opts))
        ctx.layers.extend(records[n] for n in order)
        rewritten = sum(r.status == "rewritten" for r in records.values())
        return PassResult(current, rewritten > 0, f"{rewritten} Conv rewritten by {t.name}")
