"""Model-wide budgets split over layers (onnxcompress.fitting.allocation): feasibility,
optimality against brute force on small problems, and the cheapest fallback."""

import itertools

import numpy as np
import pytest

from onnxcompress.fitting import allocation


def convex_problem(seed, layers=4, options=6):
    r = np.random.default_rng(seed)
    errors, costs = [], []
    for _ in range(layers):
        cost = np.sort(r.uniform(1, 100, options))[::-1]            # cheaper options ...
        err = np.cumsum(r.uniform(0.01, 1.0, options)) * r.uniform(0.5, 2)  # ... cost more error
        err = np.sort(err) ** 1.5                                  # convex in the option index
        errors.append(err)
        costs.append(cost)
    return errors, costs


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_feasible_and_near_brute_force(seed):
    errors, costs = convex_problem(seed)
    budget = 0.5 * sum(c.max() + c.min() for c in costs) / 1.0 * 0.6
    choice = allocation.allocate(errors, costs, budget)
    spent = sum(c[i] for c, i in zip(costs, choice))
    assert spent <= budget + 1e-9
    best = min(sum(e[i] for e, i in zip(errors, combo))
               for combo in itertools.product(*[range(len(e)) for e in errors])
               if sum(c[i] for c, i in zip(costs, combo)) <= budget)
    got = sum(e[i] for e, i in zip(errors, choice))
    # the Lagrangian reaches points of the lower convex hull: close to, never better than, the optimum
    assert best - 1e-12 <= got <= 1.5 * best + 1e-9


def test_unreachable_budget_takes_the_cheapest_and_loose_budget_the_best():
    errors = [np.array([0.0, 1.0, 3.0]), np.array([0.0, 0.5, 2.0])]
    costs = [np.array([10.0, 5.0, 1.0]), np.array([8.0, 4.0, 2.0])]
    assert allocation.allocate(errors, costs, 0.5) == [2, 2]
    assert allocation.allocate(errors, costs, 100.0) == [0, 0]
    assert allocation.allocate(errors, costs, 9.0) == [1, 1]


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        allocation.allocate([np.zeros(3)], [np.zeros(2)], 1.0)
    with pytest.raises(ValueError):
        allocation.allocate([np.zeros(0)], [np.zeros(0)], 1.0)


def test_pruning_error_curve_sums_the_smallest_scores():
    scores = np.array([4.0, 1.0, 3.0, 2.0])
    curve = allocation.pruning_error_curve(scores, 10.0, [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(curve, [0.0, 0.1, 0.3, 1.0])
