"""The real-model fixtures of bench/realmodels.py for the tests: the model path,
or a pytest skip that says which package to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import realmodels  # noqa: E402

MODELS = realmodels.MODELS
evaluate = realmodels.evaluate
task_data = realmodels.task_data
calibration_arrays = realmodels.calibration_arrays


def require(key: str) -> Path:
    """The model file of `key`, or skip the test with the reason it is missing."""
    reason = realmodels.missing_reason(key)
    if reason:
        pytest.skip(reason)
    return realmodels.model_path(key)
