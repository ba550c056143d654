"""`--method auto`: per-layer planning across the techniques under a budget measured on held-out data
(planner.py), with its parts: the budget and the data split (budget.py), the candidate registry
(candidates.py), splicing replacements between copies of a model (splice.py), cached in-model
timings (timing.py) and the selection logic (select.py)."""

from .planner import PlanResult, plan_model

__all__ = ["PlanResult", "plan_model"]
