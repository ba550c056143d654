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
from .passes import EliminateDeadCode, FuseActivation, PassContext, PassManager, canonicalize

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


def build_pipeline(method: str, options: dict[str, Any]) -> list:
    """canonicalise, the method's rewriting passes, fuse activations, clean up."""
    _, opts = resolve_options(method, options)
    from .methods import METHODS

    return canonicalize() + METHODS[method].rewrite(opts) + [FuseActivation(), EliminateDeadCode()]


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
    schemas.register_schemas()
    m, opts = resolve_options(method, options)
    if m.needs_calibration and not calib_feeds:
        raise OnnxCompressError(f"--method {method} fits its approximation to data: give calibration inputs (--calib)")
    report = Report(method)
    if calib_feeds:
        from .calibration.diagnostics import check_calibration

        check = check_calibration(model, calib_feeds)
        report.calibration = check.as_dict()
        report.warnings.extend(check.warnings)
        for w in check.warnings:
            warnings.warn(w, CalibrationWarning, stacklevel=2)
    if method == "auto":
        return _optimize_auto(model, opts, calib_feeds, verify, report, progress, settings)
    manager = PassManager(build_pipeline(method, options), verify=verify)
    before = analyse_convs(model)
    out, ctx = manager.run(model, PassContext(options={**opts, "calib_feeds": calib_feeds}))

    report.passes = [vars(r) for r in ctx.runs]
    report.notes = list(ctx.notes)
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
        "initializer_bytes_before": initializer_bytes(model),
        "initializer_bytes_after": initializer_bytes(out),
    }
    if method == "falcon" and any("input_zero_fraction" in r for r in rewritten):
        # MACs the kernel still has to do when it skips every zero input.
        skipped = sum((r.get("macs") or 0) * r.get("input_zero_fraction", 0.0) for r in rewritten)
        report.totals["conv_macs_on_nonzero_inputs"] = int(macs - skipped)
    return out, report


def _optimize_auto(model, opts, calib_feeds, verify, report, progress, settings_points=False):
    from .inputs import labelled_arrays
    from .plan import plan_model
    from .plan.timing import default_cache_path

    eval_data = labelled_arrays(model, opts["eval"], opts["eval_limit"], seed=0) if opts["eval"] else None
    cache = opts["timing_cache"]
    cache = None if cache == "off" else (cache or str(default_cache_path()))
    result = plan_model(model, calib_feeds, max_drop=opts["max_drop"], min_agreement=opts["min_agreement"],
                        min_cosine=opts["min_cosine"], eval_data=eval_data, layers=opts["layers"],
                        kinds=opts["candidates"], threads=opts["threads"], val_fraction=opts["val_fraction"],
                        seed=opts["seed"], timing_cache=cache, progress=progress,
                        settings_points=settings_points)
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
