"""Pass infrastructure: a pass declares the model properties it requires and
ensures and says whether it changed the model; a manager checks the pipeline,
runs it, times and logs each pass and, in verify mode, checks the model after
each pass with onnx.checker and a real ONNX Runtime session."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from ..errors import OnnxCompressError

log = logging.getLogger("onnxcompress")

# Model properties passes talk about.
WEIGHTS_ARE_INITIALIZERS = "conv-weights-are-initializers"
BATCHNORM_FOLDED = "batchnorm-folded"
ACTIVATIONS_FUSED = "activations-fused"
RESIDUALS_FUSED = "residuals-fused"
NO_DEAD_CODE = "no-dead-code"
CONV_REWRITTEN = "conv-rewritten"
NODES_NAMED = "nodes-named-uniquely"  # layers are found by node name, across copies of the model


@dataclass
class LayerRecord:
    """What a rewriting pass did (or did not do) to one Conv node."""

    name: str
    op: str
    status: str  # "rewritten" or "skipped"
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassRun:
    name: str
    changed: bool
    seconds: float
    summary: str = ""


@dataclass
class PassContext:
    """Shared state of one pipeline run: options, and the report passes add to."""

    options: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    runs: list[PassRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PassResult:
    model: onnx.ModelProto
    changed: bool
    summary: str = ""


class Pass:
    """Base class. Subclasses set name/requires/ensures and implement run()."""

    name: str = "pass"
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError


def verify_model(model: onnx.ModelProto, stage: str) -> None:
    """onnx.checker (with shape inference) and an ONNX Runtime session with our library."""
    from .. import schemas
    from .._runtime import InferenceSession
    from ..model_io import prepare_for_runtime

    schemas.register_schemas()
    candidate = prepare_for_runtime(onnx.ModelProto.FromString(model.SerializeToString()))
    try:
        onnx.checker.check_model(candidate, full_check=True)
    except Exception as exc:
        raise OnnxCompressError(f"after {stage}: onnx.checker rejects the model: {exc}") from None
    try:
        InferenceSession(candidate, threads=1)
    except Exception as exc:
        raise OnnxCompressError(f"after {stage}: ONNX Runtime cannot load the model: {exc}") from None


class PassManager:
    """Runs passes in order; each one's requirements must be ensured earlier. A pipeline with a
    pass that finds layers by name (requires NODES_NAMED) and no NameNodes gets one, first."""

    def __init__(self, passes: list[Pass], *, verify: bool = False, provided: frozenset[str] = frozenset()):
        passes = list(passes)
        if NODES_NAMED not in provided and any(NODES_NAMED in p.requires for p in passes) \
                and not any(NODES_NAMED in p.ensures for p in passes):
            from .name_nodes import NameNodes  # layers are found by name: name them first, always

            passes.insert(0, NameNodes())
        established = set(provided)
        for p in passes:
            missing = p.requires - established
            if missing:
                raise ValueError(f"pass {p.name} requires {sorted(missing)}, which no earlier pass ensures")
            established |= p.ensures
        self.passes = passes
        self.verify = verify

    def run(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> tuple[onnx.ModelProto, PassContext]:
        ctx = ctx or PassContext()
        if self.verify:
            verify_model(model, "loading")
        for p in self.passes:
            start = time.perf_counter()
            result = p.run(model, ctx)
            seconds = time.perf_counter() - start
            model = result.model
            ctx.runs.append(PassRun(p.name, result.changed, seconds, result.summary))
            log.info("%-28s %-9s %7.3fs %s", p.name, "changed" if result.changed else "unchanged", seconds, result.summary)
            if self.verify and result.changed:
                verify_model(model, f"pass {p.name}")
        return model, ctx
