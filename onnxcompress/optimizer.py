"""The optimizer: canonicalise, rewrite with one technique, fuse activations,
clean up; and the report of what was done, counted honestly."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from . import schemas
from .analysis import analyse_convs, initializer_bytes
from .errors import OnnxCompressError
from .methods import resolve_options
from .passes import EliminateDeadCode, PassContext, PassManager, canonicalize, fusions
from .passes.name_nodes import name_nodes


class CalibrationWarning(UserWarning):
    """The calibration data looks unrepresentative (see calibration/diagnostics.py)."""


@dataclass
class Report:
    method: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # what check_calibration found, when calibration data was given

    plan: dict[str, Any] | None = None  # --method auto: budget, achieved, speedups, settings (onnxcompress.plan)

    def as_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "totals": self.totals, "layers": self.layers, "passes": self.passes,
               "notes": self.notes, "warnings": self.warnings, "calibration": self.calibration}
        if self.plan is not None:
            out["plan"] = self.plan
        return out


def check_finite_conv_weights(model: onnx.ModelProto) -> None:
    """Refuses Conv weights or biases holding NaN or inf (a broken model): every method fits to the
    weights, and some fits never return on them (LAPACK's SVD loops on inf)."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and node.output:
                    consts[node.output[0]] = a.t
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        for role, name in zip(("weights", "bias"), list(node.input)[1:3]):
            tensor = consts.get(name)
            if tensor is None or tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                          onnx.TensorProto.FLOAT16):
                continue
            try:
                values = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - unreadable data is the passes' error to report
                continue
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise OnnxCompressError(f"Conv '{node.name or name}': {bad} of its {values.size} {role} are NaN or "
                                        f"inf; the model is broken (re-export it from a trained checkpoint)")


def build_pipeline(method: str, options: dict[str, Any]) -> list:
    """canonicalise, the method's rewriting passes, fuse residuals and activations, clean up."""
    m, opts = resolve_options(method, options)
    return canonicalize() + m.passes(opts) + fusions() + [EliminateDeadCode()]


def optimize(model: onnx.ModelProto, method: str = "falcon", *, verify: bool = False,
             calib_feeds: list[dict[str, np.ndarray]] | None = None, progress=None, settings: bool = False,
             **options) -> tuple[onnx.ModelProto, Report]:
    """Rewrites `model` with `method`; returns the new model and its report.

    calib_feeds: calibration inputs; techniques that fit to data use them (and
    may require them), and the report measures on them what the technique
    depends on (for falcon: the real zero fraction at every Conv input).
    options: the method's options (onnxcompress.methods), None = default.
    method "auto": plans every layer across the techniques (onnxcompress.plan); progress, a
    callable taking one line, hears what it does; settings=True also fits and measures every single
    setting on every layer (the points of the report's plot).
    """
    from .model_io import check_graph_structure

    schemas.register_schemas()
    m, opts = resolve_options(method, options)
    check_graph_structure(model)
    check_finite_conv_weights(model)
    if m.needs_calibration and not calib_feeds:
        raise OnnxCompressError(f"--method {method} fits its approximation to data: give calibration inputs (--calib)")
    if calib_feeds:
        from .inputs import check_arrays, fit_to_model_batch

        for feed in calib_feeds:
            check_arrays(feed, model, "calibration input")
        calib_feeds = fit_to_model_batch(model, list(calib_feeds))  # a fixed batch dim (exports with batch 1)
    report = Report(method)
    # the layers as the pipeline will name them (its first pass, NameNodes, is deterministic)
    named = name_nodes(model)[0]
    if calib_feeds:
        from .calibration.diagnostics import check_calibration

        check = check_calibration(named, calib_feeds)  # ORT refuses repeated node names: the named copy
        report.calibration = check.as_dict()
        report.warnings.extend(check.warnings)
        for w in check.warnings:
            warnings.warn(w, CalibrationWarning, stacklevel=2)
    if method == "auto":
        return _optimize_auto(model, opts, calib_feeds, verify, report, progress, settings)
    manager = PassManager(build_pipeline(method, options), verify=verify)
    before = analyse_convs(named)
    shape_note = None
    if calib_feeds and any(c.macs is None for c in before) and len(calib_feeds[0]) == 1:
        # symbolic H/W: the MACs at the calibration inputs' size
        from .analysis import with_input_shape

        shape = [1] + list(next(iter(calib_feeds[0].values())).shape[1:])
        try:
            before = analyse_convs(with_input_shape(named, shape))
            shape_note = f"MACs counted at the calibration input shape {shape} (the model's is symbolic)"
        except OnnxCompressError:
            pass
    out, ctx = manager.run(model, PassContext(options={**opts, "calib_feeds": calib_feeds}))

    report.passes = [vars(r) for r in ctx.runs]
    report.notes = list(ctx.notes) + ([shape_note] if shape_note else [])
    info = {c.name: c for c in before}
    for layer in ctx.layers:
        row = {"name": layer.name, "op": layer.op, "status": layer.status, "reason": layer.reason, **layer.details}
        if layer.name in info:
            c = info[layer.name]
            row.update(kernel=c.kernel, stride=c.stride, group=c.group, in_channels=c.in_channels,
                       out_channels=c.out_channels, macs=c.macs)
        report.layers.append(row)

    macs = sum(c.macs or 0 for c in before)
    rewritten = [r for r in report.layers if r["status"] == "rewritten"]
    # Conv counts only: a pass may also report other nodes (tabconv's --classifier: a Gemm/MatMul)
    conv_rows = [r for r in report.layers if r["name"] in info]
    conv_rewritten = sum(r["status"] == "rewritten" for r in conv_rows)
    report.totals = {
        "conv_layers": len(before),
        "rewritten": conv_rewritten,
        "skipped": len(conv_rows) - conv_rewritten,
        "other_rewritten": len(rewritten) - conv_rewritten,
        "conv_macs": macs,
        "conv_macs_unknown": sum(c.macs is None for c in before),
        "initializer_bytes_before": initializer_bytes(model),
        "initializer_bytes_after": initializer_bytes(out),
    }
    work = _work_after(m, conv_rows, info)
    if work is not None:
        report.totals["work_after"] = work
    report.notes += not_rewritten_notes(model)
    return out, report


def _work_after(technique, rows: list[dict], info: dict) -> dict | None:
    """The work left in the Conv layers, by the technique's own count of each rewritten layer (a
    layer left as it is keeps its MACs); None when the technique counts no layer."""
    totals: dict[str, Any] = {}
    counted, notes = False, set()
    for r in rows:
        macs = info[r["name"]].macs or 0
        if r["status"] != "rewritten":
            totals["macs"] = totals.get("macs", 0) + macs
            continue
        work = technique.count(r, macs).as_dict()
        counted |= work.get("macs") is not None
        if work.get("macs") is not None and work.get("note"):
            notes.add(work["note"])
        for key, value in work.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + int(value)
        if work.get("macs") is None:
            totals["macs"] = totals.get("macs", 0) + macs
    if notes:
        totals["note"] = "; ".join(sorted(notes))
    return totals if counted else None


def _eval_sample(model, spec: str, limit: int | None):
    """The --eval sample: `limit` samples, or by default DEFAULT_EVAL_LIMIT, fewer where their
    inputs would take more than EVAL_INPUT_BYTES (every planning step runs the model on all)."""
    from .inputs import labelled_arrays
    from .plan.budget import DEFAULT_EVAL_LIMIT, EVAL_INPUT_BYTES
    from .sampling import sample_indices

    x, y = labelled_arrays(model, spec, limit or DEFAULT_EVAL_LIMIT, seed=0)
    if limit is None and x.nbytes > EVAL_INPUT_BYTES:  # a balanced sample of the sample, not a second read
        rows = sample_indices(len(x), max(1, int(EVAL_INPUT_BYTES * len(x) // x.nbytes)), y, seed=0)
        x, y = x[rows], y[rows]
    return x, y


def _optimize_auto(model, opts, calib_feeds, verify, report, progress, settings_points=False):
    from .plan import plan_model
    from .plan.timing import default_cache_path

    eval_data = _eval_sample(model, opts["eval"], opts["eval_limit"]) if opts["eval"] else None
    cache = opts["timing_cache"]
    cache = None if cache == "off" else (cache or str(default_cache_path()))
    result = plan_model(model, calib_feeds, max_drop=opts["max_drop"], min_agreement=opts["min_agreement"],
                        min_cosine=opts["min_cosine"], eval_data=eval_data, layers=opts["layers"],
                        kinds=opts["candidates"], threads=opts["threads"], val_fraction=opts["val_fraction"],
                        confidence=opts["confidence"], seed=opts["seed"], timing_cache=cache, progress=progress,
                        settings_points=settings_points, grow=opts["grow"],
                        extend=opts["path_refit"], confirm_fraction=opts["confirm_fraction"])
    if verify:
        from .passes.base import verify_model

        verify_model(result.model, "auto")
    report.layers = result.layers
    report.notes.extend(result.notes)
    report.plan = {**result.summary, "settings": result.settings}
    s = result.summary
    report.totals = {"conv_layers": s["conv_layers"], "rewritten": s["layers_replaced"],
                     "skipped": s["conv_layers"] - s["layers_replaced"], "conv_macs": s["macs_before"],
                     "conv_macs_after": s["macs_after"], "initializer_bytes_before": initializer_bytes(model),
                     "initializer_bytes_after": initializer_bytes(result.model)}
    return result.model, report


# Convolution-like ops no method rewrites (only Conv is): said in the report, so
# that a detector's ConvTranspose upsampling or a quantised export's ConvInteger
# is not silently missing from the table.
CONV_LIKE = ("ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv")


def not_rewritten_notes(model: onnx.ModelProto) -> list[str]:
    counts = {op: sum(n.op_type == op and n.domain in ("", "ai.onnx") for n in model.graph.node) for op in CONV_LIKE}
    return [f"{k} {op} node(s) left as they are: the methods rewrite Conv only"
            for op, k in counts.items() if k]
