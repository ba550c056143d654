"""Choosing one candidate per layer under the budget (plain Python, no models).

Every candidate of a layer has a measured time saved in the model (ms, the
model with only that layer replaced against the original) and a measured
error (relative output error on the validation inputs, that layer alone).
The Lagrangian path: for a price per unit of error falling from infinity to
zero, each layer takes the candidate maximising saved - price * error; the
choices change at the slopes of each layer's upper convex hull in the
(error, saved) plane, so sorting every hull segment by its slope gives a
sequence of plans, each saving more for more error. The planner then takes
the longest prefix whose model (measured, not estimated) meets the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Measured:
    """One candidate of one layer, measured alone in the model."""

    layer: str
    label: str
    saved_ms: float
    error: float


def _hull(options: list[Measured], min_saved: float) -> list[Measured]:
    """The candidates on the upper convex hull from (0, 0), in order of increasing error,
    keeping only those saving more than `min_saved`."""
    pts = sorted((o for o in options if o.saved_ms > min_saved), key=lambda o: (o.error, -o.saved_ms))
    hull: list[Measured] = []
    for p in pts:
        if hull and p.saved_ms <= hull[-1].saved_ms:
            continue  # dominated: more error, no more time saved
        while hull:
            prev_e, prev_s = (hull[-2].error, hull[-2].saved_ms) if len(hull) > 1 else (0.0, 0.0)
            last = hull[-1]
            # drop `last` if it lies below the segment prev -> p
            lhs = (last.saved_ms - prev_s) * (p.error - prev_e)
            rhs = (p.saved_ms - prev_s) * (last.error - prev_e)
            if lhs <= rhs:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def lagrangian_path(options: dict[str, list[Measured]], min_saved: float = 0.0) -> list[dict[str, Measured]]:
    """Plans (layer -> chosen candidate; absent = left as it is), from the first step to the
    most aggressive; plan 0, the empty plan, is not included."""
    steps = []
    for layer, opts in options.items():
        hull = _hull(opts, min_saved)
        prev_e, prev_s = 0.0, 0.0
        for h in hull:
            de, ds = h.error - prev_e, h.saved_ms - prev_s
            slope = math.inf if de <= 0 else ds / de
            steps.append((slope, ds, layer, h))
            prev_e, prev_s = h.error, h.saved_ms
    # steepest first; a layer's own segments have falling slopes, so its later ones come later
    steps.sort(key=lambda s: (-s[0], -s[1]))
    plans, current = [], {}
    for _, _, layer, h in steps:
        current = {**current, layer: h}
        plans.append(current)
    return plans


def longest_passing(count: int, passes: Callable[[int], bool]) -> int:
    """The largest k in [0, count] with passes(k), by bisection (passes(0) is taken as true;
    assumes that a longer prefix fails once a shorter one does)."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def back_off(layers: list[str], order: list[str], check: Callable[[set[str]], bool]) -> tuple[set[str], list[str]]:
    """Returns (layers kept, layers given back): gives back layers in `order` (most damaging
    first) until check(kept) holds; an empty set is accepted without a check."""
    kept = set(layers)
    given_back: list[str] = []
    queue = [name for name in order if name in kept] + [name for name in layers if name not in order]
    while kept and not check(kept):
        name = queue.pop(0)
        kept.discard(name)
        given_back.append(name)
    return kept, given_back


def ensure_not_slower(layers: list[str], saved_ms: dict[str, float], speedup: Callable[[set[str]], float],
                      min_speedup: float = 1.0) -> tuple[set[str], list[str], list[float]]:
    """Gives back the layers that save least (as measured alone) until the model with the rest
    times at least `min_speedup` against the original. Returns (kept, given back, speedups
    measured on the way)."""
    kept = set(layers)
    given_back: list[str] = []
    seen: list[float] = []
    while kept:
        s = speedup(kept)
        seen.append(s)
        if s >= min_speedup:
            break
        weakest = min(kept, key=lambda n: (saved_ms.get(n, 0.0), n))
        kept.discard(weakest)
        given_back.append(weakest)
    return kept, given_back, seen


def guarantee(layers: list[str], damage: dict[str, float], saved_ms: dict[str, float],
              meets: Callable[[set[str]], bool], speedup: Callable[[set[str]], float],
              min_speedup: float = 1.0,
              step_down: Callable[[str], float | None] | None = None) -> tuple[set[str], list[str], list[str]]:
    """The written model's guarantee: gives back layers until the model with the rest meets the
    budget (the most damaging first) and times at least `min_speedup` against the original (the
    ones saving least first). Returns (kept, given back for the budget, given back for speed);
    an empty set (the original) needs no check.

    `step_down(n)`, where given, is offered the layer the budget would give back first: it puts
    the layer at a gentler setting (the caller's state, which `meets`, `speedup` and `saved_ms`
    then reflect) and returns its damage there, or returns None where the layer has none left,
    and the layer goes back."""
    kept = set(layers)
    damage = dict(damage)
    for_budget: list[str] = []
    for_speed: list[str] = []
    while kept:
        if not meets(kept):
            worst = max(kept, key=lambda n: (damage.get(n, -math.inf), n))
            lower = step_down(worst) if step_down is not None else None
            if lower is not None and lower < damage.get(worst, math.inf):
                damage[worst] = lower
                continue
            kept.discard(worst)
            for_budget.append(worst)
            continue
        if speedup(kept) < min_speedup:
            weakest = min(kept, key=lambda n: (saved_ms.get(n, 0.0), n))
            kept.discard(weakest)
            for_speed.append(weakest)
            continue
        break
    return kept, for_budget, for_speed


def leave_out_slower(kept: list[str], gain_without: Callable[[str], float],
                     gain_together: Callable[[list[str]], float], holds: Callable[[list[str]], bool],
                     min_gain: float) -> tuple[list[str], dict[str, float], str]:
    """Layers whose change makes the model slower, timed in the model, left out together.

    gain_without(n): the model's time with every layer of `kept` changed over its time without
    layer n's change (above 1: the model is faster without it). The layers above 1 + `min_gain`
    are left out together, only where gain_together(rest) (the same ratio for the model with only
    `rest` changed) exceeds 1 + min_gain / 2 and holds(rest) (the budget). Returns (kept, {left
    out: its gain}, what happened: "" when no layer gained, else a sentence)."""
    gains = {n: gain_without(n) for n in kept}
    slower = {n: g for n, g in gains.items() if g > 1 + min_gain}
    if not slower:
        return list(kept), {}, ""
    rest = [n for n in kept if n not in slower]
    together = gain_together(rest)
    if together <= 1 + min_gain / 2:
        return list(kept), {}, f"{len(slower)} layer(s) faster left out alone, but {together:.3f}x together: all kept"
    if not holds(rest):
        return list(kept), {}, f"without {sorted(slower)} the model misses the budget: all kept"
    return rest, slower, f"left out for speed {', '.join(sorted(slower))} ({together:.3f}x the model with them)"


def gentler_settings(current: Measured, options: list[Measured]) -> list[Measured]:
    """The settings a layer can step back to from `current` before it goes back to its original
    (or the stage's) form: those of `options` (the layer's candidates, measured alone) with less
    error that still save time, each not dominated by another of them (no other has at most its
    error and saves at least as much); by increasing error."""
    below = [o for o in options if o.label != current.label and o.error < current.error and o.saved_ms > 0]
    front = [o for o in below
             if not any(p.error <= o.error and p.saved_ms >= o.saved_ms
                        and (p.error, -p.saved_ms, p.label) < (o.error, -o.saved_ms, o.label) for p in below)]
    return sorted(front, key=lambda o: (o.error, o.label))


# One step back: (damage alone, 0 for a layer of ours or 1 for a layer of a whole-model stage, layer,
# the layer's setting with that damage: a candidate label, "" for the stage).
Step = tuple[float, int, str, str]


def ranked_steps(ours: dict[str, Measured], rungs: dict[str, list[Measured]],
                 stage_damage: dict[str, float]) -> list[Step]:
    """Every step away from the planned model, least damaging alone first: each layer of ours at
    its planned setting and at each gentler one (`rungs`), each layer of the stage in it. A prefix
    of k of them is a model (`settings_of`): each layer of ours at the most damaging setting the
    prefix holds (its gentler settings, less damaging, come earlier), each stage layer the prefix
    holds in the stage; a layer of ours the prefix holds no setting of goes back."""
    steps = [(m.error, 0, n, m.label) for n, m in ours.items()]
    steps += [(r.error, 0, n, r.label) for n in ours for r in rungs.get(n, [])]
    steps += [(d, 1, n, "") for n, d in stage_damage.items()]
    return sorted(steps)


def settings_of(steps: list[Step], k: int) -> tuple[dict[str, str], set[str]]:
    """The model of the first k `steps`: (layer of ours -> its setting, the stage's layers)."""
    mine: dict[str, str] = {}
    for _, which, n, label in steps[:k]:
        if which == 0:
            mine[n] = label  # by increasing damage: the last one is the layer's most damaging setting held
    return mine, {n for _, which, n, _ in steps[:k] if which == 1}
