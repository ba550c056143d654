"""`--method auto`: the fastest model within a budget, planned per layer and proved on held-out data.

1. Canonicalise; split the calibration inputs (seeded) into fitting (at most 256) and validation
   parts; refuse a budget the validation part is too small to show (plan/budget.py: budgets on
   it hold when shown at `confidence`, by lower bounds, not by the sample's own values).
2. Fit every candidate setting on the whole model once, every layer independently (on the
   original's activations, fitting part only), and take each layer's replacement out of it.
3. Per layer and candidate: the model with only that replacement, timed against the
   original (interleaved medians, cached on disk) and, where it saves time, measured on the
   validation part (relative output error, cosine, top-1 agreement).
4. The Lagrangian path over the measured (error, saved) points (plan/select.py); the longest
   prefix whose spliced model meets the budget on the validation part (and --eval).
5. The chosen plan fitted sequentially (each layer on the inputs of the model as already
   compressed, against the original's outputs); if it misses the budget, the most damaging
   layers (by their error alone) are given back to their original form until it holds; the
   plan with the larger measured saving of this and the spliced one is kept. Where nothing was
   given back and `extend` is asked for (--path-refit), the path's later steps are bisected
   again, each fitted sequentially (5a, `_extend_on_path`); then, where `grow` is asked for
   (--grow), the layers the plan would take next are fitted into it one at a time (5b,
   `_grow`), each kept while the budget holds.
6. The guarantee on the written model itself (activations fused): it meets the budget on the
   validation part and is not slower than the original (or the stage it is placed in) at the
   planning thread count nor at any thread count the report gives; layers are given back until
   both hold (for the budget, the most damaging first, each first stepped down to the gentler
   settings it was measured at in step 3, fitted alone, while it has one), and where none is left
   the canonicalised original is written and the report says why. Layers the INT8 stage left as
   they were for speed are timed again in the written model and go into the stage where it is
   faster with them (at every reported thread count) and meets the budget.
7. Whole-model stages (INT8) on the Convs the plan left, where they pay.
8. With --max-drop, the share of --eval held out of planning (`confirm_fraction`) is looked at
   once, for the written model: the drop the report states. Where it misses the budget there,
   every step back is ranked by its damage alone (a layer of ours to a gentler setting it was
   measured at in step 3, fitted alone, or back to the stage's form of it, a layer of the stage
   back to fp32; without a stage, layers of ours back to fp32) and the longest least-damaging
   prefix that meets it there is kept (bisected), else the original, each a further look that
   the reported bound allows for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import OnnxCompressError
from .budget import (DEFAULT_CONFIDENCE, DEFAULT_CONFIRM_FRACTION, DEFAULT_VAL_FRACTION, Evaluator, Measurement,
                     resolve_budget, split_eval, split_feeds)
from .candidates import KINDS, Candidate, LayerResult, candidate_list
from .select import (Measured, back_off, gentler_settings, guarantee, lagrangian_path, leave_out_slower,
                     longest_passing, ranked_steps, settings_of)
from .splice import Replacement, replacement_of, revert, splice, splice_into
from .stages import SPEED_MIN_GAIN, STAGES, StageOutcome, damage_alone, run_stage, split_kinds
from .timing import ModelTimer, TimingCache, rebased

log = logging.getLogger("onnxcompress")

MIN_SAVED_FRACTION = 0.01   # a candidate must save at least this share of the model's time
WHOLE_SETTINGS_TRIED = 2    # the settings saving most as a whole that are also tried on every layer


@dataclass
class PlanResult:
    model: onnx.ModelProto
    summary: dict[str, Any]
    layers: list[dict[str, Any]]
    settings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


GROW_MISSES = 3  # step 5b stops after this many layers in a row that miss the budget
# The whole-plan timings (the stage's speed, the guarantee at each reported thread count, the
# back-offs) take at least this many seconds of interleaved runs each: 60 pairs of a 0.5 ms model
# are 60 ms, and on a 2-vCPU VM the planner's and the benchmark's 2-thread medians of the same two
# models then differed by 5-10%, more than what the layers of ours save there.
FINAL_SECONDS = 1.0


def _grow(model, canon, chosen, grow, seq_records, finishing, fit_feeds, evaluator, budget, with_eval, by_label,
          provided, say, notes):
    """Step 5b. The plan was cut where layers fitted independently, each on the original's
    activations, first missed the budget; fitted sequentially they err less (each on the
    inputs of the model as already compressed), so the sequential plan may hold more. The
    layers the plan would have taken next (`grow`, in order) are fitted sequentially one at a
    time into `model`, each kept where the model still meets the budget; it stops after
    GROW_MISSES misses in a row. Updates `chosen`, `seq_records` and `finishing` in place."""
    added, misses = [], 0
    for m in grow:
        if misses >= GROW_MISSES:
            break
        c = by_label[m.label]
        trial, recs, fin = KINDS[c.kind].apply(model, c.opts, [m.layer], fit_feeds, canon, False, provided)
        if recs.get(m.layer) is None:
            continue
        meas = evaluator.measure(trial, with_eval=with_eval)
        ok = budget.holds(meas)
        say(f"auto: sequential plan and {m.layer} ({m.label}): {meas.as_dict()} {'meets' if ok else 'misses'} "
            "the budget")
        if not ok:
            misses += 1
            continue
        misses = 0
        model, chosen[m.layer], seq_records[m.layer] = trial, m, recs[m.layer]
        for p in fin:
            finishing.setdefault(type(p).__name__, p)
        added.append(m.layer)
    if added:
        notes.append(f"{len(added)} layer(s) added to the sequentially fitted plan, each fitted on it and "
                     f"measured within the budget: {', '.join(added)}")
    return model


def _taken_next(path, k, chosen) -> list[Measured]:
    """What the plan of path step `k` would take next, in order: the layers the later steps add
    that `chosen` does not hold, each once (step 5b)."""
    order: list[Measured] = []
    for step in path[k:]:
        order += [m for n, m in step.items() if n not in chosen and all(g.layer != n for g in order)]
    return order


def _fit_sequentially(canon, plan, order, by_label, fit_feeds, provided):
    """The plan (layer -> Measured) fitted layer after layer in network `order`, each on the
    inputs of the model as already compressed, against the original's outputs: (model, records
    by layer, finishing passes by name)."""
    model, records, finishing = canon, {}, {}
    groups: list[tuple[str, list[str]]] = []  # runs of consecutive chosen layers with one setting
    for n in [n for n in order if n in plan]:
        if groups and groups[-1][0] == plan[n].label:
            groups[-1][1].append(n)
        else:
            groups.append((plan[n].label, [n]))
    for label, names in groups:
        c = by_label[label]
        model, recs, fin = KINDS[c.kind].apply(model, c.opts, names, fit_feeds, canon, False, provided)
        for p in fin:
            finishing.setdefault(type(p).__name__, p)
        records.update({name: recs[name] for name in names if recs.get(name) is not None})
    return model, records, finishing


def _extend_on_path(path, k_best, fit_sequentially, evaluator, budget, with_eval, say):
    """Step 5a. The path was bisected on independently fitted layers (each on the original's
    activations), which err more than the sequential fit that is written; where that fit of
    step `k_best` met the budget, the later steps are bisected again, each fitted sequentially.
    Returns (the longest passing step, (its model, records, finishing passes)), or None where no
    later step meets the budget."""
    best = None

    def passes(j: int) -> bool:
        nonlocal best
        k = k_best + j
        t0 = time.perf_counter()
        fitted = fit_sequentially(path[k - 1])
        m = evaluator.measure(fitted[0], with_eval=with_eval)
        ok = budget.holds(m)
        say(f"auto: path step {k}/{len(path)} ({len(path[k - 1])} layers) fitted sequentially "
            f"({time.perf_counter() - t0:.1f}s): {m.as_dict()} {'meets' if ok else 'misses'} the budget")
        if ok:
            best = (k, fitted)  # bisection passes on increasing steps: the last pass is the longest
        return ok

    longest_passing(len(path) - k_best, passes)
    return best


def _provided():
    from ..passes import canonicalize

    out = set()
    for p in canonicalize():
        out |= p.ensures
    return frozenset(out)


def _canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    from ..passes import PassManager, canonicalize

    out, _ = PassManager(canonicalize()).run(model)
    return out


def _finish(model: onnx.ModelProto, finishing: list) -> onnx.ModelProto:
    """The plan's finishing passes (e.g. dead-channel removal), residual and activation fusion, dead code."""
    from ..passes import EliminateDeadCode, PassContext, PassManager, fusions
    from ..passes.base import CONV_REWRITTEN

    passes = list(finishing) + fusions() + [EliminateDeadCode()]
    out, _ = PassManager(passes, provided=_provided() | {CONV_REWRITTEN}).run(model, PassContext())
    return out


def _pays_more(outcome: StageOutcome, best_speedup: float) -> bool:
    """A stage's outcome meets the budget and times faster than `best_speedup` and than the
    original by the minimum saving."""
    return outcome.meets_budget and outcome.speedup > max(best_speedup, 1.0 + MIN_SAVED_FRACTION)


def _conv_order(model: onnx.ModelProto) -> list[str]:
    from ..calibration.capture import conv_names

    return conv_names(model)


def plan_model(model: onnx.ModelProto, calib_feeds: list[dict[str, np.ndarray]], *,
               max_drop: float | None = None, min_agreement: float | None = None, min_cosine: float | None = None,
               eval_data: tuple[np.ndarray, np.ndarray] | None = None, layers=None, kinds=None,
               candidates: list[Candidate] | None = None, threads: int = 1,
               val_fraction: float = DEFAULT_VAL_FRACTION, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
               timing_cache: str | None = None,
               timer: ModelTimer | None = None, runs: int = 30, final_runs: int = 60,
               final_seconds: float = FINAL_SECONDS,
               report_threads: tuple[int, ...] = (1, 2), settings_points: bool = False, grow: bool = False,
               extend: bool = False, confirm_fraction: float = DEFAULT_CONFIRM_FRACTION,
               progress: Callable[[str], None] | None = None) -> PlanResult:
    """Plans, fits and proves the fastest model within the budget; see the module docstring.

    timer: injected timer (tests); otherwise a ModelTimer on one validation input at `threads`,
    caching in `timing_cache` (a path, or None for no cache file), whose whole-plan timings (the
    stage, the guarantee, the back-offs) take at least `final_seconds` of interleaved runs each."""
    say = progress or (lambda s: log.info("%s", s))
    start = time.perf_counter()
    notes: list[str] = []
    canon = _canonical(model)
    provided = _provided()
    order = _conv_order(canon)
    if len(set(order)) != len(order) or any(not n for n in order):
        raise OnnxCompressError("--method auto finds layers by name: the Conv nodes need unique, non-empty names")
    if layers is not None:
        wanted = {s.strip() for s in layers.split(",")} if isinstance(layers, str) else set(layers)
        wanted.discard("")
        unknown = sorted(wanted - set(order))
        if unknown:
            raise OnnxCompressError(f"--layers names {unknown[:5]}, which are no Conv nodes of the model")
        targets = [n for n in order if n in wanted]
    else:
        targets = list(order)
    per_layer_kinds, stage_names = split_kinds(kinds)
    if candidates is not None and kinds is None:
        stage_names = []  # an explicit candidate list (tests, benches) names everything weighed
    cands = candidates if candidates is not None else candidate_list(per_layer_kinds)

    fit_feeds, val_feeds, fit_idx, val_idx = split_feeds(calib_feeds, val_fraction, seed)
    if not 0.0 <= confirm_fraction < 1.0:
        raise OnnxCompressError(f"--confirm-fraction must be in [0, 1) (0: no share held out), got {confirm_fraction}")
    confirm_data = None
    if eval_data is not None and max_drop is not None and confirm_fraction > 0:
        eval_data, confirm_data = split_eval(eval_data, confirm_fraction, seed)
    evaluator = Evaluator(canon, val_feeds, eval_data, confidence=confidence, confirm_data=confirm_data)
    budget = resolve_budget(max_drop, min_agreement, min_cosine, evaluator.has_score_output, eval_data is not None,
                            confidence)
    budget.held_out = confirm_data is not None
    budget.require_resolvable(len(val_idx), val_fraction, None if eval_data is None else len(eval_data[0]))
    with_eval = eval_data is not None  # --eval is part of the budget: --max-drop, or agreement / cosine there too
    say(f"auto: {len(targets)} Conv layers, {len(cands)} candidate settings"
        + (f" and the whole-model stage(s) {', '.join(stage_names)}" if stage_names else "")
        + f"; {len(fit_idx)} fitting and "
        f"{len(val_idx)} validation inputs"
        + (f"; --eval: {len(eval_data[1])} to plan on, {len(confirm_data[1])} held out to confirm the written "
           "model on" if confirm_data is not None else "")
        + f"; budget: {budget.describe()}")

    if timer is None:
        first = val_feeds[0]
        feed = {k: np.ascontiguousarray(v[:1]) for k, v in first.items()}
        timer = ModelTimer(canon, feed, threads=threads, cache=TimingCache(timing_cache), runs=runs,
                           final_seconds=final_seconds)

    from ..analysis import analyse_convs

    macs = {c.name: c.macs for c in analyse_convs(canon)}

    # ---------------------------------------------------------------- 1b. whole-model stages on the original
    # INT8 on every Conv (plan/stages.py), tried first: where it meets the budget and pays, it is the
    # model to beat, and every per-layer candidate is timed in it (placed into the quantized model in
    # the layer's stead) rather than in the fp32 original: a layer of ours pays where it is faster
    # than the INT8 layer it replaces, and candidates that are not are never fitted properly.
    stage_outcomes: list[StageOutcome] = []

    def stage_speed(m: onnx.ModelProto) -> float:
        ref_ms, cand_ms = timer.time(m, key=None, runs=final_runs)
        return ref_ms / cand_ms

    def relative_speed(ref: onnx.ModelProto, cand: onnx.ModelProto) -> float:
        ref_ms, cand_ms = rebased(timer, ref).time(cand, key=None)
        return ref_ms / cand_ms

    base_stage: StageOutcome | None = None
    for sname in stage_names:
        o = run_stage(STAGES[sname], "original", canon, fit_feeds, evaluator, budget, with_eval, stage_speed, say,
                      restrict=set(targets), relative=relative_speed)
        stage_outcomes.append(o)
        if _pays_more(o, base_stage.speedup if base_stage else 1.0):
            base_stage = o
    base_model = base_stage.model if base_stage is not None else canon
    # the layers the stage covers in the written model: its own, and (step 6) a layer it left as it was
    # for speed that the written model is faster with in the stage
    stage_cover = frozenset(base_stage.layers) if base_stage is not None else frozenset()
    btimer = rebased(timer, base_model) if base_stage is not None else timer

    from ..int8 import conv_names as standard_convs

    canon_convs = set(order)

    staged_models: dict[frozenset, onnx.ModelProto] = {}

    def staged_on(covered: frozenset) -> onnx.ModelProto:
        """The stage on the `covered` layers of the original (the stage's own model for all of them)."""
        if covered == frozenset(base_stage.layers):
            return base_model
        if covered not in staged_models:
            stage = STAGES[base_stage.stage]
            staged_models[covered] = stage.applier(base_stage.widened)(
                stage.prepare(canon), sorted(covered), list(fit_feeds)[:stage.max_feeds])
        return staged_models[covered]

    def place(reps: list[Replacement], quick: bool = False, covered: frozenset | None = None) -> onnx.ModelProto:
        """The model with `reps` in their layers' stead: the original's, or the stage's (INT8) model,
        the stage on the layers it covered (`covered`: on these of them). A replacement made of
        standard Convs (penni's portable form) gets the stage too: the stage is applied to the
        original with the replacements, on the layers covered and the new Convs (`quick`: ranges from
        two feeds, for timing only; the graph is the same)."""
        if base_stage is None:
            return splice(canon, reps)
        covered = stage_cover if covered is None else covered
        if not any(n.op_type == "Conv" and n.domain in ("", "ai.onnx") for r in reps for n in r.nodes):
            return splice_into(staged_on(covered), canon, reps)
        stage = STAGES[base_stage.stage]
        fp32 = stage.prepare(splice(canon, reps))
        names = [n for n in standard_convs(fp32) if n in covered or n not in canon_convs]
        try:
            return stage.applier(base_stage.widened)(fp32, names, list(fit_feeds)[:2 if quick else stage.max_feeds])
        except OnnxCompressError as exc:  # the stage cannot take it: the replacement stays fp32 in the stage
            log.info("auto: %s cannot take the replacement(s) of %s (%s); placed in fp32", base_stage.stage,
                     [r.layer for r in reps], exc)
            return splice_into(staged_on(covered), canon, reps)

    if base_stage is not None:
        say(f"auto: {base_stage.stage} on {len(base_stage.layers)} layers of the original times "
            f"{base_stage.speedup:.3f}x within the budget: per-layer candidates are timed against it")

    # ---------------------------------------------------------------- 2-3. per setting: time, fit, measure
    # A candidate's time depends on its setting (d, sparsity, codebooks), not on how well it is
    # fitted: each setting is first fitted cheaply (the kind's `quick` options) to time every layer
    # in the model; only the layers where it saves time are then fitted properly (independently,
    # fitting part) and measured on the validation part.
    replacements: dict[tuple[str, str], Replacement] = {}
    quick_reps: dict[tuple[str, str], Replacement] = {}
    records: dict[tuple[str, str], Any] = {}
    results: dict[str, dict[str, LayerResult]] = {n: {} for n in targets}
    measured: dict[str, list[Measured]] = {n: [] for n in targets}
    by_label = {c.label: c for c in cands}
    ref_times = []
    for c in cands:
        kind = KINDS[c.kind]
        t0 = time.perf_counter()
        quick = kind.quick
        try:
            fitted, recs, _ = kind.apply(canon, {**c.opts, **(quick or {})}, targets,
                                         fit_feeds[:2] if quick is not None else fit_feeds, canon, True, provided)
        except OnnxCompressError as exc:
            notes.append(f"{c.label}: not applicable ({exc})")
            for n in targets:
                results[n][c.label] = LayerResult(c.label, f"not applicable: {exc}")
            continue
        paying = []
        for n in targets:
            rec = recs.get(n)
            rep = replacement_of(canon, fitted, n) if rec is not None and rec.status == "rewritten" else None
            if rep is None:
                reason = rec.reason if rec is not None and rec.reason else "not rewritten"
                results[n][c.label] = LayerResult(c.label, f"not eligible: {reason}")
                continue
            quick_reps[(n, c.label)] = rep
            alone = _finish(place([rep], quick=True), [])
            ref_ms, cand_ms = btimer.time(alone, key=f"{n}|{c.label}")
            if ref_ms - cand_ms > MIN_SAVED_FRACTION * ref_ms:  # confirmed by three times the runs
                ref_ms, cand_ms = btimer.time(alone, key=f"{n}|{c.label}|confirm", runs=3 * btimer.runs)
            ref_times.append(ref_ms)
            r = LayerResult(c.label, "does not save time in the model", round(ref_ms - cand_ms, 5),
                            round(ref_ms, 5), round(cand_ms, 5))
            results[n][c.label] = r
            if ref_ms - cand_ms > MIN_SAVED_FRACTION * ref_ms:
                paying.append(n)
                if quick is None:
                    replacements[(n, c.label)], records[(n, c.label)] = rep, rec
        timer.cache.save()
        if paying and quick is not None:
            fitted, recs, _ = kind.apply(canon, c.opts, paying, fit_feeds, canon, True, provided)
            for n in list(paying):
                rep = replacement_of(canon, fitted, n) if recs.get(n) is not None else None
                if rep is None or recs[n].status != "rewritten":
                    results[n][c.label].status = "not rewritten by the calibrated fit"
                    paying.remove(n)
                    continue
                replacements[(n, c.label)], records[(n, c.label)] = rep, recs[n]
        for n in paying:
            m = evaluator.measure(splice(canon, [replacements[(n, c.label)]]), with_eval=False, screen=True)
            r = results[n][c.label]
            r.status, r.error, r.cosine, r.agreement = "measured", m.rel_error, m.cosine, m.agreement
            r.details = dict(records[(n, c.label)].details)
            measured[n].append(Measured(n, c.label, r.saved_ms, m.rel_error))
        detail = ", ".join(f"{n} {results[n][c.label].saved_ms:+.3f}ms err {results[n][c.label].error:.1e}"
                           for n in paying)
        timed_count = sum(1 for n in targets if (n, c.label) in quick_reps)
        say(f"auto: {c.label}: timed {timed_count} layers, {len(paying)} save time"
            + (f" ({detail})" if paying else "") + f", {time.perf_counter() - t0:.1f}s")
    model_ms = float(np.median(ref_times)) if ref_times else None

    # ---------------------------------------------------------------- 4. the path, bisected
    path = lagrangian_path(measured, min_saved=0.0)
    trials: dict[int, Measurement] = {}

    def spliced(k: int) -> onnx.ModelProto:
        return splice(canon, [replacements[(m.layer, m.label)] for m in path[k - 1].values()])

    def passes_k(k: int) -> bool:
        trials[k] = evaluator.measure(spliced(k), with_eval=with_eval)
        ok = budget.holds(trials[k])
        say(f"auto: path step {k}/{len(path)} ({len(path[k - 1])} layers): {trials[k].as_dict()} "
            f"{'meets' if ok else 'misses'} the budget")
        return ok

    k_best = longest_passing(len(path), passes_k) if path else 0
    chosen = dict(path[k_best - 1]) if k_best else {}
    # what the plan would take next, in order: the layers later steps of the path add (step 5b)
    grow_order = _taken_next(path, k_best, chosen)
    why_not: dict[str, str] = {}
    plan_source = f"Lagrangian path, step {k_best} of {len(path)}" if chosen else ""

    # ---------------------------------------------------------------- 4b. whole-setting plans
    # Timed alone, a layer pays the layout conversions ORT inserts around our op; replaced together
    # with its neighbours it shares them, so a setting can pay on every layer while few layers pay
    # alone. The settings that save most as a whole (quick fits, timed as one model) are also
    # tried: every layer they apply to, properly fitted, the most damaging given back (bisection)
    # until the budget holds; such a plan replaces the path's when it saves more, timed as a whole.
    # compared as speedups: the machine's load moves the reference time between timings
    def saving_of(plan: dict[str, Measured], reps_of) -> float:
        ref_ms, cand_ms = btimer.time(_finish(place([reps_of[(n, m.label)] for n, m in plan.items()], True), []),
                                      key=None)
        return ref_ms / cand_ms

    best_saving = saving_of(chosen, replacements) if chosen else 1.0
    wholes = []
    for c in cands:
        eligible = [n for n in targets if (n, c.label) in quick_reps]
        if len(eligible) < 2:
            continue
        ref_ms, cand_ms = btimer.time(_finish(place([quick_reps[(n, c.label)] for n in eligible], True), []),
                                      key=f"all|{c.label}")
        wholes.append((ref_ms / cand_ms, c, eligible))
    timer.cache.save()
    for saved_all, c, eligible in sorted(wholes, key=lambda w: -w[0])[:WHOLE_SETTINGS_TRIED]:
        if saved_all <= max(best_saving, 1.0 + MIN_SAVED_FRACTION):
            say(f"auto: {c.label} on all {len(eligible)} layers times {saved_all:.3f}x as a whole, not faster "
                f"than the path's plan ({best_saving:.3f}x, timed as a whole): not tried")
            continue
        say(f"auto: {c.label} on all {len(eligible)} layers it applies to times {saved_all:.3f}x as a whole "
            f"(the path's plan {best_saving:.3f}x): fitting and measuring every one")
        missing = [n for n in eligible if (n, c.label) not in replacements]
        if missing:
            fitted, recs, _ = KINDS[c.kind].apply(canon, c.opts, missing, fit_feeds, canon, True, provided)
            for n in missing:
                rep = replacement_of(canon, fitted, n) if recs.get(n) is not None else None
                if rep is None:
                    continue
                replacements[(n, c.label)], records[(n, c.label)] = rep, recs[n]
                m = evaluator.measure(splice(canon, [rep]), with_eval=False, screen=True)
                r = results[n].get(c.label)
                if r is not None:
                    r.status, r.error, r.cosine, r.agreement = "measured", m.rel_error, m.cosine, m.agreement
                    r.details = dict(recs[n].details)
        plan_s = {n: Measured(n, c.label, results[n][c.label].saved_ms, results[n][c.label].error)
                  for n in eligible if (n, c.label) in replacements and results[n][c.label].error is not None}
        gentle = sorted(plan_s, key=lambda n: plan_s[n].error)  # least damaging first

        def whole_passes(k: int) -> bool:
            m = evaluator.measure(splice(canon, [replacements[(n, c.label)] for n in gentle[:k]]),
                                  with_eval=with_eval)
            say(f"auto: {c.label} on its {k} least damaging layers: {m.as_dict()}")
            return budget.holds(m)

        k = longest_passing(len(gentle), whole_passes)
        if k < 2:
            continue
        plan_k = {n: plan_s[n] for n in gentle[:k]}
        saving = saving_of(plan_k, replacements)
        if saving > best_saving:
            chosen, best_saving = plan_k, saving
            plan_source = f"{c.label} on {k} of {len(eligible)} layers (timed as a whole: {saving:.3f}x)"
            grow_order = [plan_s[n] for n in gentle[k:]]
    if chosen:
        notes.append(f"plan before the sequential refit: {plan_source}")

    # ---------------------------------------------------------------- 5. sequential fit, back-off
    def fit_sequentially(plan: dict[str, Measured]):
        return _fit_sequentially(canon, plan, order, by_label, fit_feeds, provided)

    finishing: dict[str, Any] = {}
    seq_records: dict[str, Any] = {}
    candidate_model = canon
    plan_kind = "none"
    if chosen:
        spliced_model = splice(canon, [replacements[(n, m.label)] for n, m in chosen.items()])
        t0 = time.perf_counter()
        current, seq_records, finishing = fit_sequentially(chosen)
        say(f"auto: plan of {len(chosen)} layers fitted sequentially in {time.perf_counter() - t0:.1f}s")
        damage = sorted(chosen, key=lambda n: -chosen[n].error)
        seq_trials: dict[frozenset, Measurement] = {}

        def seq_check(kept: set[str]) -> bool:
            m = evaluator.measure(revert(current, canon, set(chosen) - kept), with_eval=with_eval)
            seq_trials[frozenset(kept)] = m
            say(f"auto: sequential plan with {len(kept)} layers: {m.as_dict()}")
            return budget.holds(m)

        kept, given = back_off(list(chosen), damage, seq_check)
        for n in given:
            why_not[n] = "given back: the sequentially fitted plan missed the budget with it"
        seq_saved = sp_saved = 0.0
        if len(kept) < len(chosen):  # which of the two saves more, timed as written
            fin = list(finishing.values())
            for which, m in (("seq", revert(current, canon, set(chosen) - kept)), ("sp", spliced_model)):
                ref_ms, cand_ms = timer.time(_finish(m, fin), key=None)
                if which == "seq":
                    seq_saved = ref_ms - cand_ms
                else:
                    sp_saved = ref_ms - cand_ms
        if len(kept) == len(chosen) or seq_saved >= sp_saved:
            candidate_model = revert(current, canon, set(chosen) - kept)
            plan_kind = "sequential"
            chosen = {n: chosen[n] for n in kept}
            if extend and not given and plan_source.startswith("Lagrangian") and k_best < len(path):
                ext = _extend_on_path(path, k_best, fit_sequentially, evaluator, budget, with_eval, say)
                if ext is not None:
                    k_seq, (candidate_model, seq_records, fins) = ext
                    finishing.update(fins)
                    notes.append(f"the sequentially fitted plan met the budget at path step {k_best}; fitted "
                                 f"sequentially, step {k_seq} of {len(path)} meets it too (step 5a)")
                    chosen = dict(path[k_seq - 1])
                    plan_source = f"Lagrangian path, step {k_seq} of {len(path)}, fitted sequentially"
                    grow_order = _taken_next(path, k_seq, chosen)
            if grow and not given and grow_order:  # nothing given back: the budget may hold more
                candidate_model = _grow(candidate_model, canon, chosen, grow_order, seq_records, finishing, fit_feeds,
                                        evaluator, budget, with_eval, by_label, provided, say, notes)
        else:
            notes.append(f"the sequential refit kept {len(kept)} of {len(chosen)} layers within the budget "
                         f"(saving {seq_saved:.3f} ms, timed); the independently fitted "
                         f"plan, which met it with all {len(chosen)} (saving {sp_saved:.3f} ms), is written")
            candidate_model = spliced_model
            plan_kind = "independent"
            for n in given:
                why_not.pop(n, None)
            seq_records = {n: records[(n, chosen[n].label)] for n in chosen}

    # ---------------------------------------------------------------- 6. guarantee on the written model
    speedups: dict[frozenset, float] = {}
    finals: dict[frozenset, tuple[onnx.ModelProto, Measurement]] = {}

    built: dict[Any, onnx.ModelProto] = {}
    # the setting of each layer of ours as fitted in `candidate_model` (the plan), and the gentler
    # setting a layer was moved to where the written model missed the budget with the planned one
    # (step 6, then step 8: the setting measured alone in step 3, as fitted alone in step 2)
    planned = {n: m.label for n, m in chosen.items()}
    gentled: dict[str, Measured] = {}
    stepped: dict[str, list[str]] = {}  # layer -> what it stepped back from, and why, for the report
    rungs = {n: [m for m in measured.get(n, []) if (n, m.label) in replacements] for n in chosen}

    def setting(n: str) -> Measured:
        return gentled.get(n, chosen[n])

    def model_with(settings: dict[str, str], covered: frozenset | None = None) -> onnx.ModelProto:
        """The written model with each layer of ours in `settings` at that setting (the others as
        they were), in the stage on `covered` (None: on all of its layers) where there is a stage."""
        covered = stage_cover if covered is None else covered
        key = (frozenset(settings.items()), covered)
        if key not in built:
            same = {n for n, label in settings.items() if label == planned[n]}
            other = sorted((n, label) for n, label in settings.items() if label != planned[n])
            fp32 = revert(candidate_model, canon, set(planned) - same)
            if base_stage is None:
                built[key] = _finish(splice(fp32, [replacements[o] for o in other]) if other else fp32,
                                     list(finishing.values()))
            else:  # the layers of ours placed into the quantized model (finishing passes not run)
                reps = [replacement_of(canon, fp32, n) for n in sorted(same)] + [replacements[o] for o in other]
                built[key] = _finish(place([r for r in reps if r is not None], covered=covered), [])
        return built[key]

    def final_model(kept: set[str], covered: frozenset | None = None) -> onnx.ModelProto:
        """The written model with the layers of ours `kept`, each at its current setting."""
        return model_with({n: setting(n).label for n in kept}, covered)

    def key_of(kept: set[str]) -> tuple[frozenset, frozenset]:
        return frozenset((n, setting(n).label) for n in kept), stage_cover

    def final_of(kept: set[str]):
        key = key_of(kept)
        if key not in finals:
            out = final_model(kept)
            finals[key] = (out, evaluator.measure(out, with_eval=with_eval))
        return finals[key]

    def meets(kept: set[str]) -> bool:
        return budget.holds(final_of(kept)[1])

    slowest: dict[frozenset, tuple[float, int]] = {}  # kept -> (lowest speedup over the thread counts, at)

    def speed(kept: set[str]) -> float:
        """The model's speedup against the base at the planning thread count; and, where the report
        gives other thread counts, the lowest of them all (`slowest`), which the guarantee holds to:
        a plan faster at one thread and slower at two is not written."""
        key = key_of(kept)
        if key not in speedups:
            at = {}
            for t in dict.fromkeys((timer.threads, *report_threads)):
                ref_ms, cand_ms = btimer.time(final_of(kept)[0], key=None, runs=final_runs, threads=t)
                at[t] = ref_ms / cand_ms
            speedups[key] = at[timer.threads]
            low = min(at, key=at.get)
            slowest[key] = (at[low], low)
            against = f" against {base_stage.stage} on the original" if base_stage is not None else ""
            say(f"auto: the model with {len(kept)} layers replaced times "
                + " / ".join(f"{v:.3f}x" for v in at.values()) + f"{against} at "
                + " / ".join(str(t) for t in at) + " thread(s)")
        return speedups[key]

    refused: list[tuple[int, float, int]] = []  # (layers, speedup, threads) of each plan the guarantee found slower

    def lowest_speed(kept: set[str]) -> float:
        speed(kept)
        low, t = slowest[key_of(kept)]
        if low < 1.0:
            refused.append((len(kept), low, t))
        return low

    damage = {n: chosen[n].error for n in chosen}
    saved = {n: chosen[n].saved_ms for n in chosen}

    def step_down(n: str) -> float | None:
        """Layer n at the most damaging of its gentler settings, where it has one (the guarantee
        then measures the model again); its damage there, else None."""
        down = gentler_settings(setting(n), rungs[n])
        if not down:
            return None
        stepped.setdefault(n, []).append(f"stepped back from {setting(n).label}: the written model missed the "
                                         "budget with it")
        gentled[n] = down[-1]
        saved[n] = down[-1].saved_ms
        return down[-1].error

    kept, given_budget, given_speed = guarantee(list(chosen), damage, saved, meets, lowest_speed, step_down=step_down)
    for n in given_budget:
        why_not[n] = "given back: the written model missed the budget with it"
    for n, (count, at, t) in zip(given_speed, refused):  # each refusal gave back the layer saving least
        why_not[n] = (f"given back: the model timed {at:.3f}x at {t} thread(s) with it among {count} replaced "
                      f"layers (slower than {base_stage.stage if base_stage is not None else 'the original'}); it "
                      "saved least")
    if kept:
        # each layer of ours timed in the written model: the model without it against the model; those
        # whose absence is faster go back together, where the model without them is faster and meets
        # the budget (a layer chosen on a noisy timing alone can cost the model time)
        ref = final_model(kept)
        rest, slower, what = leave_out_slower(
            sorted(kept), lambda n: relative_speed(ref, final_model(kept - {n})),
            lambda rest: relative_speed(ref, final_model(set(rest))), lambda rest: meets(set(rest)),
            SPEED_MIN_GAIN)
        if what:
            say(f"auto: the layers of ours in the written model: {what}")
        for n, g in slower.items():
            why_not[n] = (f"given back: the model timed {g:.3f}x faster without it (each layer of ours timed "
                          "in the written model)")
        kept = set(rest)
        if kept:
            speed(kept)
    if kept and base_stage is not None and set(base_stage.left_for_speed) - kept:
        # the stage left these layers as they were because its own model timed faster without them in
        # it; with layers of ours placed in it, ORT lays the model out differently (an fp32 stem keeps
        # the first blocks' quantized Adds in NCHW, with Transposes around them): timed again in the
        # written model, they go into the stage where the model is faster with them at every thread
        # count the report gives and meets the budget
        back = sorted(set(base_stage.left_for_speed) - kept)
        without, wider = stage_cover, stage_cover | set(back)
        gain = relative_speed(final_model(kept), final_model(kept, wider))
        held = None
        if gain > 1 + SPEED_MIN_GAIN:
            speed(kept)
            low_before = slowest[key_of(kept)][0]
            stage_cover = wider
            speed(kept)
            held = meets(kept) and slowest[key_of(kept)][0] >= low_before
            if not held:
                stage_cover = without
        say(f"auto: {', '.join(back)}, left out of {base_stage.stage} for speed, timed again in the written "
            f"model: {gain:.3f}x with {'them' if len(back) > 1 else 'it'} in {base_stage.stage}"
            + ("; taken in" if held else ", not taken"))
        if held:
            notes.append(f"{', '.join(back)}: left out of {base_stage.stage} for speed on the original, in it in the "
                         f"written model ({gain:.3f}x faster so, timed with the layers of ours)")
    if kept:
        final, final_m = final_of(kept)
    elif base_stage is not None:
        final, final_m = base_model, base_stage.measurement
        notes.append(f"no per-layer candidate is faster than {base_stage.stage} on the original within the budget: "
                     f"{base_stage.stage} on {len(base_stage.layers)} Conv(s) is written")
    else:
        final = canon
        final_m = evaluator.measure(canon, with_eval=with_eval)
        if not any(measured.values()):
            notes.append("no candidate saves time in the model on this machine: the canonicalised original is "
                         "written")
        elif not chosen and not given_budget and not given_speed:
            notes.append("no candidate that saves time meets the budget alone on the validation inputs: the "
                         "canonicalised original is written")
        else:
            notes.append("every layer of the plan was given back (budget or speed): the canonicalised original "
                         "is written")
    for n in kept:
        if n in gentled:
            seq_records[n] = records[(n, gentled[n].label)]
    chosen = {n: setting(n) for n in kept}

    # ---------------------------------------------------------------- 7. whole-model stages (INT8)
    # With a stage as the base, the layers it covers that the plan did not take stay in it. Otherwise
    # each stage on every Conv the plan left to ORT; kept where the result is the fastest model within
    # the budget, timed as written (plan/stages.py).
    staged: dict[str, str] = {}  # layer -> stage
    left_out: dict[str, tuple[str, float]] = {}  # layer -> (stage, speedup of the model without it in the stage)
    if base_stage is not None:
        if kept:
            ref_ms, cand_ms = timer.time(final, key=None, runs=final_runs)
            final_speed = ref_ms / cand_ms
            notes.append(f"{len(kept)} layer(s) of ours in the {base_stage.stage} model: "
                         f"{speedups[key_of(kept)]:.3f}x against {base_stage.stage} alone")
        else:
            final_speed = base_stage.speedup
        staged = {n: base_stage.stage for n in sorted(stage_cover) if n not in kept}
        left_out = base_stage.left_out(stage_cover | set(kept))
        plan_kind = (plan_kind + " + " if kept else "") + base_stage.stage
    else:
        final_speed = speedups.get(key_of(kept)) if kept else 1.0
        winner: StageOutcome | None = None
        for sname in stage_names if kept else []:
            # the Convs the plan left, and the standard Convs it wrote (penni's portable form)
            o = run_stage(STAGES[sname], "plan", final, fit_feeds, evaluator, budget, with_eval, stage_speed, say,
                          restrict=set(targets) | (set(standard_convs(final)) - canon_convs), relative=relative_speed)
            stage_outcomes.append(o)
            if _pays_more(o, winner.speedup if winner is not None else final_speed):
                winner = o
        if winner is not None:
            plan_before = final_speed
            final, final_m, final_speed = winner.model, winner.measurement, winner.speedup
            staged = {n: winner.stage for n in winner.layers}
            left_out = winner.left_out()
            notes.append(f"{winner.stage} on {len(winner.layers)} Conv(s) of the plan times {winner.speedup:.3f}x "
                         f"within the budget (the per-layer plan alone: {plan_before:.3f}x)")
            plan_kind = plan_kind + " + " + winner.stage
    for o in stage_outcomes:
        if o.note:
            notes.append(f"{o.stage} on the {o.base}: {o.note}")

    # ---------------------------------------------------------------- 8. the held-out share of --eval
    # Planning looked at its part of --eval at every step and kept what passed; the share held out
    # of it is looked at here, once, for the written model. Where the drop there misses the budget,
    # steps back go (the least damaging kept, bisected), each a look.
    confirmation = None
    if evaluator.confirm_data is not None:
        confirmation = evaluator.confirm(final, budget.max_drop)
        say(f"auto: the written model on the {confirmation.samples} held-out --eval inputs: "
            f"{confirmation.as_dict()} {'meets' if confirmation.meets else 'misses'} the budget")
        if not confirmation.meets:
            first, first_drop = confirmation, final_m.eval_drop
            looked: dict[int, Any] = {}  # k -> (the model of the first k steps back, its confirmation)
            # every step back ranked together, least damaging alone first: a layer of ours going back
            # to a gentler setting it was measured at (less error, still saving time), or to the
            # stage's form of it (to fp32 without a stage), a layer of the stage going back to fp32;
            # the longest prefix that meets the budget there is kept (bisection, each prefix one more
            # look)
            stage = STAGES[base_stage.stage] if base_stage is not None else None
            alone = (damage_alone(stage, stage.prepare(canon), sorted(stage_cover),
                                  list(fit_feeds)[:stage.max_feeds], evaluator) if stage is not None else {})
            gentler_of = {n: gentler_settings(chosen[n], rungs[n]) for n in kept}
            steps = ranked_steps({n: chosen[n] for n in kept}, gentler_of, alone)

            def head(k: int) -> tuple[dict[str, str], frozenset | None]:
                mine, staged_k = settings_of(steps, k)
                # a layer of ours is placed where the stage covers it, as it was planned
                return mine, (frozenset(staged_k | set(mine)) if stage is not None else None)

            def confirms(k: int) -> bool:
                mine, covered = head(k)
                model = model_with(mine, covered)
                looked[k] = model, evaluator.confirm(model, budget.max_drop)
                gentler = sum(label != chosen[n].label for n, label in mine.items())
                staged_part = f" and {stage.name} on {len(covered - set(mine))} layers" if stage is not None else ""
                say(f"auto: {len(mine)} layers of ours ({gentler} at a gentler setting){staged_part} (the {k} "
                    f"least damaging of {len(steps)} steps back), on the held-out --eval inputs: "
                    f"{looked[k][1].as_dict()}")
                return looked[k][1].meets

            k = longest_passing(len(steps) - 1, confirms) if len(steps) > 1 else 0
            if k and relative_speed(canon, looked[k][0]) < 1.0:
                say(f"auto: the model of the {k} least damaging steps back is slower than the original: not kept")
                k = 0
            mine, covered = head(k)
            kept = set(mine)
            stage_layers = [n for n in sorted(stage_cover) if n in covered and n not in kept] if covered else []
            if k:
                final, confirmation = looked[k]
                staged_part = (f" and {stage.name} on {len(stage_layers)} of its {len(stage_cover)} layers"
                               if stage is not None else "")
                gentler = {n: label for n, label in mine.items() if label != chosen[n].label}
                what = (f"{len(kept)} of the {len(chosen)} layers of ours"
                        + (f" ({len(gentler)} of them at a gentler setting)" if gentler else "")
                        + f"{staged_part} kept (the {k} least damaging of {len(steps)} steps back)")
            else:
                gentler = {}
                final, what = canon, "the canonicalised original written"
                confirmation = evaluator.confirm(canon, budget.max_drop)
            for n in (set(chosen) | set(staged)) - kept - set(stage_layers):
                why_not[n] = "given back: the written model missed --max-drop on the held-out --eval inputs with it"
            for n, label in gentler.items():
                stepped.setdefault(n, []).append(f"stepped back from {chosen[n].label}: the written model missed "
                                                 "--max-drop on the held-out --eval inputs with it")
                seq_records[n] = records[(n, label)]
            chosen = {n: next(m for m in [chosen[n], *gentler_of[n]] if m.label == mine[n]) for n in kept}
            if stage_layers:
                staged = {n: base_stage.stage for n in stage_layers}
                left_out = base_stage.left_out(stage_cover | set(kept))
            else:
                staged, left_out = {}, {}
            plan_kind = " + ".join(([plan_kind.split(" + ")[0]] if kept else [])
                                   + ([base_stage.stage] if stage_layers else [])) or "original"
            final_m = evaluator.measure(final, with_eval=with_eval)
            ref_ms, cand_ms = timer.time(final, key=None, runs=final_runs)
            final_speed = ref_ms / cand_ms
            notes.append(f"the planned model lost {first.drop:.2f} top-1 points on the {first.samples} --eval inputs "
                         f"held out of planning (> --max-drop {budget.max_drop}; {first_drop:.2f} on the "
                         f"{final_m.eval_samples} planning looked at): {what}, {final_speed:.3f}x, after "
                         f"{confirmation.looks} looks at the held-out inputs")

    # ---------------------------------------------------------------- report
    speed_at = {}
    for t in report_threads:
        if t == timer.threads and (kept or staged):
            speed_at[str(t)] = round(final_speed, 4)
        elif kept or staged:
            ref_ms, cand_ms = timer.time(final, key=None, runs=final_runs, threads=t)
            speed_at[str(t)] = round(ref_ms / cand_ms, 4)
        else:
            speed_at[str(t)] = 1.0
    results = {n: list(v.values()) for n, v in results.items()}
    rows = []
    macs_after_total = 0
    int8_macs = 0
    for n in order:
        row: dict[str, Any] = {"name": n, "macs": macs.get(n)}
        if n in results:
            row["candidates"] = [vars(r) | {"details": {}} for r in results[n]]
        if n in staged:
            st = STAGES[staged[n]]
            work = st.work(macs.get(n) or 0)
            row.update(choice=st.name, work_after=work,
                       why=f"{st.summary}: the model with the stage times {final_speed:.3f}x within the budget"
                       + (f" (a layer of ours was {why_not[n]})" if n in why_not else ""))
            macs_after_total += macs.get(n) or 0
            int8_macs += (macs.get(n) or 0) if work.get("precision") == "int8" else 0
        elif n in chosen:
            c = by_label[chosen[n].label]
            rec = seq_records.get(n)
            work = KINDS[c.kind].work(rec.details if rec is not None else {}, macs.get(n) or 0)
            alone = chosen[n].saved_ms
            why = (f"saves {alone:.3f} ms in the model at relative error {chosen[n].error:.2e} alone; "
                   f"within the budget ({plan_source})") if alone > 0 else (
                f"alone it saves {alone:+.3f} ms (relative error {chosen[n].error:.2e}), but it is part of "
                f"{plan_source}, which is faster as a whole")
            if n in stepped:
                why += "; " + "; ".join(stepped[n])
            row.update(choice=c.label, saved_ms=round(alone, 5), error_alone=chosen[n].error, work_after=work,
                       why=why)
            macs_after_total += work.get("macs") if work.get("macs") is not None else (macs.get(n) or 0)
        else:
            macs_after_total += macs.get(n) or 0
            row["choice"] = "original"
            if n in left_out:
                row["why"] = (f"left out of {left_out[n][0]}: the model timed {left_out[n][1]:.3f}x faster with "
                              f"this layer as it was")
            elif n not in results:
                row["why"] = "not among --layers"
            elif n in why_not:
                row["why"] = why_not[n]
            elif not measured.get(n):
                paying = [r for r in results[n] if r.saved_ms is not None]
                row["why"] = ("no candidate saves time in the model" + (
                    f" (best {max(paying, key=lambda r: r.saved_ms).label}: "
                    f"{max(r.saved_ms for r in paying):+.3f} ms)" if paying else " (none eligible)"))
            else:
                best = max(measured[n], key=lambda m: m.saved_ms / max(m.error, 1e-12))
                row["why"] = (f"the budget went to layers saving more per unit of error (best here: {best.label}, "
                              f"{best.saved_ms:.3f} ms at error {best.error:.2e})")
        rows.append(row)

    settings = []
    if settings_points:
        # every single setting on every layer it applies to (fitted independently, fitting part)
        for c in cands:
            eligible = [n for n in targets if (n, c.label) in quick_reps]
            if not eligible:
                continue
            missing = [n for n in eligible if (n, c.label) not in replacements]
            if missing:
                fitted, recs, _ = KINDS[c.kind].apply(canon, c.opts, missing, fit_feeds, canon, True, provided)
                for n in missing:
                    rep = replacement_of(canon, fitted, n) if recs.get(n) is not None else None
                    if rep is not None:
                        replacements[(n, c.label)] = rep
            reps = [replacements[(n, c.label)] for n in eligible if (n, c.label) in replacements]
            whole = splice(canon, reps)
            m = evaluator.measure(whole, with_eval=eval_data is not None)
            ref_ms, cand_ms = timer.time(_finish(whole, []), key=f"all|{c.label}")
            settings.append({"label": c.label, "layers": len(reps), "speedup": round(ref_ms / cand_ms, 4),
                             "measurement": m.as_dict(), "meets_budget": budget.holds(m)})
        timer.cache.save()
    if eval_data is not None and final_m.eval_top1 is None:
        final_m = evaluator.measure(final, with_eval=True)
    if confirmation is not None and confirmation.drop_upper > budget.max_drop + 1e-9:
        notes.append(f"the top-1 drop on the {confirmation.samples} --eval inputs held out of planning is "
                     f"{confirmation.drop:.2f} points (within --max-drop {budget.max_drop}), but on unseen inputs it "
                     f"is only known to be <= {confirmation.drop_upper:.2f} ({100 * confidence:g}% one-sided"
                     + (f", allowing for {confirmation.looks} looks" if confirmation.looks > 1 else "")
                     + "): more --eval inputs make the check tighter")
    elif confirmation is None and final_m.eval_drop_upper is not None and budget.max_drop is not None and \
            final_m.eval_drop_upper > budget.max_drop + 1e-9:
        notes.append(f"the top-1 drop on the {final_m.eval_samples} --eval inputs is {final_m.eval_drop:.2f} points "
                     f"(within --max-drop {budget.max_drop}), but on unseen inputs it is only known to be <= "
                     f"{final_m.eval_drop_upper:.2f} ({100 * confidence:g}% one-sided), and planning chose on these "
                     "inputs: more --eval inputs and --confirm-fraction make the check tighter")
    summary = {
        "budget": budget.as_dict(), "achieved": final_m.as_dict(),
        "meets_budget": budget.holds(final_m) and (confirmation is None or confirmation.meets),
        # the written model on the share of --eval held out of planning (--max-drop)
        "confirmed": confirmation.as_dict() if confirmation is not None else None,
        "confidence": confidence,
        "original_eval_top1": evaluator.eval_top1,
        "speedup": speed_at, "planning_threads": timer.threads, "model_ms": model_ms,
        # what model_ms timed: the model every per-layer candidate was timed against
        "model_ms_of": f"{base_stage.stage} on the original" if base_stage is not None else "the original",
        "layers_replaced": len(kept) + len(staged), "conv_layers": len(order),
        "plan": plan_kind if kept or staged else "original", "int8_macs": int(int8_macs),
        "stages": [o.as_dict() for o in stage_outcomes],
        "plan_source": plan_source,
        "macs_before": int(sum(v or 0 for v in macs.values())), "macs_after": int(macs_after_total),
        "fitting_inputs": int(len(fit_idx)), "validation_inputs": int(len(val_idx)),
        "validation_indices": [int(i) for i in val_idx],
        "path_steps": len(path), "path_step_chosen": k_best, "measurements": evaluator.count,
        "timing_cache": {"path": timing_cache, "hits": timer.cache.hits, "misses": timer.cache.misses},
        "planning_seconds": round(time.perf_counter() - start, 1),
    }
    return PlanResult(final, summary, rows, settings, notes)
