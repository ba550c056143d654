"""The candidates the planner weighs for every Conv: a registry of kinds.

A kind is a technique with a small ladder of settings. Its `apply` rewrites
the named layers of a model fitted on the given calibration feeds (targets:
the reference model's layer outputs; inputs: the model as compressed so far,
or the model itself when `independent`), and returns the model, one
LayerRecord per Conv and the passes to run once after the whole plan. Kinds
built on a technique of onnxcompress.methods take the default `apply`, which
runs that method's rewriting pass with the shared options `layers`,
`reference_model` and `independent` (passes/conv_rewrite.py). A new kind
(INT8 from onnxcompress/int8.py, say) is one more `register(...)`: the
planner does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from ..errors import OnnxCompressError


@dataclass(frozen=True)
class Candidate:
    """One setting of one kind."""

    kind: str
    options: tuple[tuple[str, Any], ...]
    label: str

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)


def _method_apply(method: str):
    def apply(model: onnx.ModelProto, options: dict, layers, feeds, reference, independent: bool, provided):
        from ..methods import resolve_options
        from ..passes import PassContext, PassManager
        from ..passes.base import CONV_REWRITTEN

        m, opts = resolve_options(method, options)
        passes = m.rewrite(opts)
        rewrite = [p for p in passes if CONV_REWRITTEN in p.ensures]
        finishing = [p for p in passes if CONV_REWRITTEN not in p.ensures]
        ctx = PassContext(options={**opts, "calib_feeds": feeds, "layers": sorted(layers),
                                   "reference_model": reference, "independent": independent})
        out, ctx = PassManager(rewrite, provided=provided).run(model, ctx)
        return out, {r.name: r for r in ctx.layers}, finishing
    return apply


def _falcon_work(details: dict, macs: int) -> dict:
    z = details.get("input_zero_fraction")
    return {"macs": int(macs * (1 - z)) if z is not None else macs, "note": "MACs on non-zero inputs"}


def _cluspa_work(details: dict, macs: int) -> dict:
    return {"macs": details.get("mults_after"), "additions": details.get("adds_after")}


def _penni_work(details: dict, macs: int) -> dict:
    ratio = details.get("macs_ratio")
    return {"macs": None if ratio is None else int(round(macs * ratio))}


def _tabconv_work(details: dict, macs: int) -> dict:
    w = details.get("work") or {}
    return {"macs": w.get("encoder_macs", 0) + w.get("dequant_mults", 0), "additions": w.get("additions"),
            "lookups": w.get("lookups"), "comparisons": w.get("encoder_comparisons")}


@dataclass(frozen=True)
class Kind:
    name: str
    ladder: tuple[dict[str, Any], ...]
    label: Callable[[dict], str]
    apply: Callable
    work: Callable[[dict, int], dict] = lambda details, macs: {"macs": None}
    exact: bool = False
    needs_calibration: bool = True
    summary: str = ""
    # option overrides for a cheap fit with the same run-time structure, used to time every layer
    # before fitting properly only the layers where the setting saves time (None: time the real fit)
    quick: dict[str, Any] | None = None

    def candidates(self) -> list[Candidate]:
        return [Candidate(self.name, tuple(sorted(o.items())), self.label(o)) for o in self.ladder]


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


register(Kind("falcon", ({"select": "all"},), lambda o: "falcon", _method_apply("falcon"), _falcon_work, exact=True,
              needs_calibration=False, summary="exact, skips zero activations"))
register(Kind("cluspa", ({"sparsity": 0.8, "allocation": "uniform"}, {"sparsity": 0.9, "allocation": "uniform"}),
              lambda o: f"cluspa s={o['sparsity']}", _method_apply("cluspa"), _cluspa_work,
              summary="16 shared values, weight sparsity", quick={"data_free": True}))
register(Kind("penni", ({"bases": 3, "coef_sparsity": 0.9}, {"bases": 4, "coef_sparsity": 0.8},
                        {"bases": 5, "coef_sparsity": 0.7}),
              lambda o: f"penni d={o['bases']}/{o['coef_sparsity']}", _method_apply("penni"), _penni_work,
              summary="basis kernels, sparse coefficients", quick={"data_free": True}))
register(Kind("tabconv", ({"subspace": 9}, {"subspace": 18}),
              lambda o: f"tabconv S={o['subspace']}", _method_apply("tabconv"), _tabconv_work,
              summary="lookup tables (8-bit)", quick={"ridge": 1e-3, "calib_rows": 2000}))


def candidate_list(kinds: str | list[str] | None = None) -> list[Candidate]:
    """The candidates of the named kinds (comma-separated or a list; None: every kind)."""
    if kinds is None:
        names = list(KINDS)
    else:
        names = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
        names = [k for k in names if k]
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        raise OnnxCompressError(f"unknown candidate kind(s) {unknown}; choose from {', '.join(KINDS)}")
    return [c for k in names for c in KINDS[k].candidates()]


@dataclass
class LayerResult:
    """What one candidate did for one layer (filled in by the planner)."""

    label: str
    status: str                     # "measured", or why it was not
    saved_ms: float | None = None
    reference_ms: float | None = None
    candidate_ms: float | None = None
    error: float | None = None      # relative output error, alone, validation
    cosine: float | None = None
    agreement: float | None = None
    details: dict = field(default_factory=dict)
