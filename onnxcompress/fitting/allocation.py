"""Choosing a setting per layer for a model-wide budget (plain numpy).

Each layer l offers options i with an estimated error errors[l][i] and a cost
costs[l][i] (weights kept, MACs, ...). `allocate` picks one option per layer
so that the total cost stays within the budget while the sum of the errors is
small: a Lagrangian relaxation, where for a price lam per unit of cost each
layer independently minimises err + lam * cost, and lam is bisected (on a log
scale) to the smallest price whose choice fits the budget. The sum of
per-layer errors stands in for the model's loss, which is what makes the
layers separable; the passes then fit the chosen settings in sequence on real
data, so the estimate only steers the allocation. Deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["allocate", "pruning_error_curve"]


def pruning_error_curve(scores: np.ndarray, energy: float, fractions: Sequence[float]) -> np.ndarray:
    """Relative error estimate at each pruned fraction: the sum of the smallest scores
    (saliencies of the pruned entries) divided by `energy` (the layer's output energy
    or weight norm)."""
    s = np.sort(np.asarray(scores, np.float64).ravel())
    csum = np.concatenate([[0.0], np.cumsum(s)])
    idx = np.clip(np.round(np.asarray(fractions, np.float64) * s.size).astype(int), 0, s.size)
    return csum[idx] / max(float(energy), 1e-300)


def allocate(errors: Sequence[np.ndarray], costs: Sequence[np.ndarray], budget: float) -> list[int]:
    """Index of the chosen option per layer: total cost <= budget where any choice can
    reach it (else the cheapest option everywhere), at the least total error the
    Lagrangian finds. Ties go to the lower cost, then the lower index."""
    errors = [np.asarray(e, np.float64) for e in errors]
    costs = [np.asarray(c, np.float64) for c in costs]
    if len(errors) != len(costs) or any(e.shape != c.shape or e.size == 0 for e, c in zip(errors, costs)):
        raise ValueError("errors and costs must be non-empty arrays of the same shape per layer")

    def pick(lam: float) -> list[int]:
        out = []
        for e, c in zip(errors, costs):
            total = e + lam * c
            best = np.flatnonzero(total <= total.min() + 1e-15 * max(1.0, abs(total.min())))
            out.append(int(best[np.argmin(c[best])]))
        return out

    def spent(choice: list[int]) -> float:
        return float(sum(c[i] for c, i in zip(costs, choice)))

    if spent(pick(0.0)) <= budget:
        return pick(0.0)
    lo, hi = -40.0, 40.0  # log10 of lam
    if spent(pick(10.0 ** hi)) > budget:
        return [int(np.argmin(c)) for c in costs]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if spent(pick(10.0 ** mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return pick(10.0 ** hi)
