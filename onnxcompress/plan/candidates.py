"""The candidates the planner weighs for every Conv: a registry of kinds.

A kind is a technique with a small ladder of settings. Its `apply` rewrites
the named layers of a model fitted on the given calibration feeds (targets:
the reference model's layer outputs; inputs: the model as compressed so far,
or the model itself when `independent`), and returns the model, one
LayerRecord per Conv and the passes to run once after the whole plan. Every
registered technique (onnxcompress.techniques) with a ladder of settings is
a kind, registered here when the technique is: its `apply` runs the
technique's rewriting passes with the shared options `layers`,
`reference_model` and `independent` (passes/conv_rewrite.py), its `work` is
the technique's `count`. Another kind (INT8 from onnxcompress/int8.py, say)
is one more `register(...)`: the planner does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from .. import techniques
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
        passes = m.passes(opts)
        rewrite = [p for p in passes if CONV_REWRITTEN in p.ensures]
        finishing = [p for p in passes if CONV_REWRITTEN not in p.ensures]
        ctx = PassContext(options={**opts, "calib_feeds": feeds, "layers": sorted(layers),
                                   "reference_model": reference, "independent": independent})
        out, ctx = PassManager(rewrite, provided=provided).run(model, ctx)
        return out, {r.name: r for r in ctx.layers}, finishing
    return apply


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


def technique_kind(technique) -> Kind:
    """The candidate kind of a technique (onnxcompress.techniques.Technique) with a ladder."""
    return Kind(technique.name, tuple(technique.ladder), technique.label, _method_apply(technique.name),
                lambda details, macs: technique.count(details, macs).as_dict(), exact=technique.exact,
                needs_calibration=technique.needs_calibration or not technique.exact,
                summary=technique.plan_summary or technique.summary, quick=technique.quick)


def _register_technique(technique) -> None:
    if technique.ladder and technique.name not in KINDS:
        register(technique_kind(technique))


techniques.subscribe(_register_technique)


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
