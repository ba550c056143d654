"""Whole-model stages the planner tries after the per-layer plan: a registry of kinds.

A per-layer candidate (plan/candidates.py) replaces one Conv by something of ours and
is weighed layer by layer. Some choices only pay applied to many Convs at once and
change the nodes around them too: ORT's static INT8 quantization wraps each Conv in
QuantizeLinear / DequantizeLinear pairs and folds the following Relu, and one INT8 Conv
between fp32 neighbours mostly pays for its conversions. Such a kind is a `Stage`:
given a model (the plan's result, or the original), it is applied to every standard
Conv left in it (the `layers` it names); the planner measures the result on the
validation part and, where the budget does not hold, gives layers back (the most
damaging alone first) until it does. Then it times, for each layer kept, the staged
model without the stage on that layer against it, and leaves out the layers the stage
makes slower in the model (kept out only where the model without all of them is
faster as a whole too). A stage may also widen to the nodes between its layers (INT8:
Add, pools, Gemm), which is tried once, last, and kept where the model is faster and
within the budget. The planner times the result and keeps it where it is the fastest
model within the budget. A new stage is one more `register_stage(...)`: the
planner does not change.

Why the speed step: ORT's u8 QLinearConv on a Conv of 1 or 3 input channels (a stem) is
slower than its fp32 Conv; a model with the stem left fp32 timed 1.01-1.12x the model
with INT8 on every Conv on every bundled model (docs/results.md).

INT8: onnxcompress.int8.quantize_convs (QDQ, per-channel s8 weights, u8 activations,
MinMax ranges on the fitting part of the calibration inputs, Relu/Clip folded), so
that one model can hold INT8 Convs, our ops and fp32 Convs; with bias correction (each
INT8 Conv's bias moved by the mean shift its weights' rounding leaves): chosen on the
ResNet-20 Fashion twin and MobileNetV2, where it took 0.12 points of top-1 and a fifth of
the logits' cosine error back from INT8 on every Conv, and reported on the other bundled
models (bench/bench_int8_bias.py, docs/results.md, sixteenth session).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import OnnxCompressError
from .select import leave_out_slower, longest_passing


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    # (model, layer names, calibration feeds) -> the model with those layers transformed
    apply: Callable[[onnx.ModelProto, list[str], list[dict[str, np.ndarray]]], onnx.ModelProto]
    # model -> the layers the stage may transform
    layers: Callable[[onnx.ModelProto], list[str]]
    # feeds used for its own calibration (a stage fitting ranges needs fewer than a refit)
    max_feeds: int = 32
    # what the layer still computes, for the report (MACs stay MACs, in another type)
    work: Callable[[int], dict] = lambda macs: {"macs": macs}
    # model -> the model `apply` is called on, made once per stage run (not once per give-back trial)
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto] = lambda model: model
    # like `apply`, and the stage also on the nodes between the layers that it can take with them
    # (INT8: Add, pools, Gemm, ...); tried once the layers are settled, kept where it is faster
    widen: Callable[[onnx.ModelProto, list[str], list[dict[str, np.ndarray]]], onnx.ModelProto] | None = None
    widen_summary: str = ""
    # what the stage chose for this machine, for the report ("" where nothing)
    conditions: Callable[[], str] = lambda: ""

    def applier(self, widened: bool):
        """`widen` for an outcome that was widened, else `apply`: what re-makes the stage's model."""
        return self.widen if widened and self.widen is not None else self.apply


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


BIAS_CORRECTION = True  # the INT8 stage's quantize_convs(bias_correction=...): see the module docstring


def _int8_apply(model, layers, feeds):
    from ..int8 import quantize_convs

    return quantize_convs(model, feeds, nodes=layers, bias_correction=BIAS_CORRECTION)


def _int8_widen(model, layers, feeds):
    from ..int8 import quantize_convs

    return quantize_convs(model, feeds, nodes=layers, other_ops=True, bias_correction=BIAS_CORRECTION)


def _int8_layers(model):
    from ..int8 import conv_names

    return conv_names(model)


def _int8_conditions():
    from ..int8 import depthwise_u8s8_saturates, u8s8_saturates

    if not u8s8_saturates():
        return ""
    return ("weights in 7 bits (reduce_range): ORT's u8 x s8 convolution on this CPU saturates int16 pair sums "
            "(measured)" + ("" if depthwise_u8s8_saturates() else
                            "; depthwise Convs keep 8 bits: ORT's depthwise u8 kernel does not saturate (measured)"))


def _int8_prepare(model):
    from ..int8 import at_least_opset_13

    return at_least_opset_13(model)


register_stage(Stage("int8", "ORT static INT8 (QDQ, per-channel weights, MinMax ranges, bias correction)", _int8_apply, _int8_layers,
                     work=lambda macs: {"macs": macs, "precision": "int8", "note": "u8 x s8 MACs in ORT's QLinearConv"},
                     prepare=_int8_prepare, widen=_int8_widen,
                     widen_summary="the other ops ORT quantizes (Add, pools, Gemm, ...) quantized too",
                     conditions=_int8_conditions))


def split_kinds(kinds) -> tuple[Any, list[str]]:
    """`kinds` (comma-separated, a list or None) as (per-layer kinds or None for all, stage names)."""
    if kinds is None:
        return None, list(STAGES)
    names = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    names = [k for k in names if k]
    stages = [k for k in names if k in STAGES]
    per_layer = [k for k in names if k not in STAGES]
    return per_layer, stages


@dataclass
class StageOutcome:
    stage: str
    base: str                       # "plan" or "original"
    layers: list[str]               # the layers it kept
    model: onnx.ModelProto | None
    measurement: Any = None
    speedup: float | None = None    # against the canonicalised original, planning threads
    meets_budget: bool = False
    given_back: list[str] = field(default_factory=list)
    left_for_speed: dict[str, float] = field(default_factory=dict)  # layer -> speedup of the model without it
    widened: bool = False           # the stage's `widen` made the model (its other nodes transformed too)
    widen_gain: float | None = None  # the widened model's speed over the unwidened one, where tried
    seconds: float = 0.0
    note: str = ""

    def left_out(self, exclude=()) -> dict[str, tuple[str, float]]:
        """layer -> (this stage, the speedup of the model without it in the stage), for the layers the
        stage left out for speed, less those in `exclude`."""
        return {n: (self.stage, g) for n, g in self.left_for_speed.items() if n not in exclude}

    def as_dict(self) -> dict:
        return {"stage": self.stage, "base": self.base, "layers": len(self.layers),
                "measurement": None if self.measurement is None else self.measurement.as_dict(),
                "speedup": None if self.speedup is None else round(self.speedup, 4),
                "meets_budget": self.meets_budget, "given_back": list(self.given_back),
                "left_for_speed": {n: round(v, 4) for n, v in self.left_for_speed.items()},
                "widened": self.widened,
                "widen_gain": None if self.widen_gain is None else round(self.widen_gain, 4),
                "seconds": round(self.seconds, 1), "note": self.note}


SPEED_MIN_GAIN = 0.02  # a layer is left out of a stage for speed only where that gains more than timing noise


def _leave_out_slower(stage, base, kept, model, m, feeds, evaluator, budget, with_eval, relative, min_gain, say,
                      base_name):
    """(kept, model, measurement, {layer: gain}) after leaving out of the stage the layers that
    make the model slower (select.leave_out_slower). A layer's gain: the time of `model` (the
    stage on `kept`) over that of it without the stage on that layer, timed interleaved (ranges
    from two feeds: the graph is the same)."""
    trial: dict[str, Any] = {}

    def together(rest):
        trial["model"] = stage.apply(base, rest, feeds)
        return relative(model, trial["model"])

    def holds(rest):
        trial["m"] = evaluator.measure(trial["model"], with_eval=with_eval)
        return budget.holds(trial["m"])

    rest, slower, what = leave_out_slower(
        kept, lambda n: relative(model, stage.apply(base, [k for k in kept if k != n], feeds[:2])),
        together, holds, min_gain)
    if what:
        say(f"auto: {stage.name} on the {base_name}: {what}")
    if not slower:
        return kept, model, m, {}
    return rest, trial["model"], trial["m"], slower


def _widened(stage, base, kept, model, m, feeds, evaluator, budget, with_eval, relative, min_gain, say, base_name):
    """(model, measurement, widened, gain): the stage's `widen` on `kept`, where the model it makes
    times faster than `model` by more than half of `min_gain` and meets the budget; else `model`."""
    try:  # the widened model cannot be made, or ORT cannot load or run it: the stage stays as it is
        trial = stage.widen(base, kept, feeds)
        gain = relative(model, trial)
        mt = evaluator.measure(trial, with_eval=with_eval) if gain > 1 + min_gain / 2 else None
    except OnnxCompressError as exc:
        say(f"auto: {stage.name} on the {base_name}: cannot widen ({exc})")
        return model, m, False, None
    if mt is None:
        say(f"auto: {stage.name} on the {base_name} with {stage.widen_summary}: {gain:.3f}x, not kept")
        return model, m, False, gain
    if not budget.holds(mt):
        say(f"auto: {stage.name} on the {base_name} with {stage.widen_summary}: {gain:.3f}x but misses the budget")
        return model, m, False, gain
    say(f"auto: {stage.name} on the {base_name} with {stage.widen_summary}: {gain:.3f}x, kept")
    return trial, mt, True, gain


def damage_alone(stage: Stage, base: onnx.ModelProto, layers: list[str], feeds, evaluator) -> dict[str, float]:
    """{layer: the relative output error of the stage on it by itself}, on the validation part of the
    calibration inputs (`base` as the stage prepared it, `feeds` its calibration feeds)."""
    return {n: evaluator.measure(stage.apply(base, [n], feeds), with_eval=False, screen=True).rel_error
            for n in layers}


def least_damaging_prefix(stage: Stage, base: onnx.ModelProto, layers: list[str], feeds, evaluator,
                          accepts: Callable[[onnx.ModelProto, int], tuple[bool, Any]], at_most: int | None = None):
    """(kept, given back, model, result): the stage on the longest prefix of `layers`, least
    damaging alone first, of at most `at_most` layers (default: all), that `accepts(model, k) ->
    (ok, result)` takes (bisection; assumes a longer prefix fails once a shorter one does), and
    the rest of that ranking; model and result are None where no prefix is taken. A layer's
    damage alone is the relative output error of the stage on it by itself, on the validation
    part of the calibration inputs (`base` as the stage prepared it, `feeds` its calibration feeds).

    (Ordering by damage per unit of time saved, each layer's saving timed in the fully staged model,
    was tried and was worse on MobileNetV2: 16 layers at 0.99x instead of 22 at 1.14x; a layer's
    saving there includes conversions that a sparser INT8 model pays anyway. docs/results.md)"""
    alone = damage_alone(stage, base, layers, feeds, evaluator)
    gentle = sorted(layers, key=lambda n: (alone[n], n))
    trials = {}

    def passes(k: int) -> bool:
        mq = stage.apply(base, gentle[:k], feeds)
        ok, result = accepts(mq, k)
        trials[k] = (mq, result)
        return ok

    k = longest_passing(len(gentle) if at_most is None else min(at_most, len(gentle)), passes)
    model, result = trials[k] if k else (None, None)
    return gentle[:k], gentle[k:], model, result


def run_stage(stage: Stage, base_name: str, base: onnx.ModelProto, feeds, evaluator, budget, with_eval: bool,
              speed: Callable[[onnx.ModelProto], float], say: Callable[[str], None],
              restrict: set[str] | None = None,
              relative: Callable[[onnx.ModelProto, onnx.ModelProto], float] | None = None,
              min_gain: float = SPEED_MIN_GAIN) -> StageOutcome:
    """`stage` on every layer of `base` it applies to (within `restrict` when given).

    If the result misses the budget, the layers most damaging alone are given back (bisection over
    the least damaging prefix). Then, with `relative` ((reference, candidate) -> reference time /
    candidate time, interleaved), each kept layer is timed in the model (the staged model without
    it against the staged model), and those whose absence makes the model faster by more than
    `min_gain` are left out, where the model without all of them is faster too and still meets
    the budget. Last, where the stage has a `widen`, the model it makes on the kept layers is timed
    against the result and kept where faster and within the budget. The result is timed with `speed`."""
    t0 = time.perf_counter()
    base = stage.prepare(base)  # e.g. an opset-11 model converted once, not once per give-back trial
    layers = [n for n in stage.layers(base) if restrict is None or n in restrict]
    feeds = list(feeds)[:stage.max_feeds]
    out = StageOutcome(stage.name, base_name, [], None)
    if not layers:
        out.note = "no layer it applies to"
        return out
    try:
        model = stage.apply(base, layers, feeds)
        m = evaluator.measure(model, with_eval=with_eval)
    except OnnxCompressError as exc:  # it cannot be made, or ORT cannot load what it made
        out.note = f"not applicable: {exc}"
        out.seconds = time.perf_counter() - t0
        return out
    say(f"auto: {stage.name} on all {len(layers)} layers of the {base_name}: {m.as_dict()}")
    kept = list(layers)
    if not budget.holds(m):
        def holds(mq: onnx.ModelProto, k: int):
            mk = evaluator.measure(mq, with_eval=with_eval)
            say(f"auto: {stage.name} on the {k} least damaging layers of the {base_name}: {mk.as_dict()}")
            return budget.holds(mk), mk

        kept, out.given_back, model, m = least_damaging_prefix(stage, base, layers, feeds, evaluator, holds)
        if not kept:
            out.note = "misses the budget with any layer"
            out.seconds = time.perf_counter() - t0
            return out
    if relative is not None and len(kept) > 1:
        kept, model, m, out.left_for_speed = _leave_out_slower(stage, base, kept, model, m, feeds, evaluator, budget,
                                                               with_eval, relative, min_gain, say, base_name)
    if relative is not None and stage.widen is not None:
        model, m, out.widened, out.widen_gain = _widened(stage, base, kept, model, m, feeds, evaluator, budget,
                                                         with_eval, relative, min_gain, say, base_name)
    out.layers, out.model, out.measurement, out.meets_budget = kept, model, m, True
    out.note = stage.conditions()
    out.speedup = speed(model)
    out.seconds = time.perf_counter() - t0
    say(f"auto: {stage.name} on {len(kept)} layers of the {base_name} times {out.speedup:.3f}x "
        f"({out.seconds:.0f}s)")
    return out
