"""The sequential capture-and-refit loop every calibrated technique runs, once.

For each layer in graph order: capture its input on the model as compressed
so far (or, `independent`, on the input model) and its target output on the
reference model, fit it, put the fit into the model, go on with the next
layer. What a fit sees of its layer is a `LayerData`: the (X, Y) pairs of
every calibration batch, and the one row-budget policy:

- the calibration feeds are merged once into batches of about 32 samples
  (`calibration_batches`, or the model's fixed batch), so that ONNX Runtime
  runs few, large batches;
- a layer uses at most `rows` output positions (--calib-rows), split evenly
  over the batches: ceil(rows / batches) per batch, drawn at random with the
  seed `seed + index` (index: the layer's position in the loop), so layers of
  the same shape do not all draw the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx

from .capture import LayerCapture, conv_io_batches
from .moments import ConvMoments, RowSampler
from .refit import conv_layer_moments

__all__ = ["LayerData", "RowBudget", "calibration_batches", "fit_in_sequence", "layer_data"]

MERGED_BATCH = 32


def calibration_batches(feeds, model: onnx.ModelProto | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration feeds as the batches every capture runs (merged to about 32 samples; the
    model's fixed batch when it has one); [] for no feeds."""
    from ..inputs import merge_feeds

    return merge_feeds(list(feeds), batch=MERGED_BATCH, model=model) if feeds else []


@dataclass(frozen=True)
class RowBudget:
    """rows: output positions a layer's fit uses at most; seed: of the draws (layer i: seed + i)."""

    rows: int = 50000
    seed: int = 0

    def __post_init__(self):
        if int(self.rows) < 1:
            raise ValueError(f"the row budget must be >= 1, got {self.rows}")

    def per_batch(self, n_batches: int) -> int:
        return max(1, -(-int(self.rows) // max(1, int(n_batches))))

    def seed_of(self, index: int) -> int:
        return int(self.seed) + int(index)


class LayerData:
    """One layer's calibration data: iterate for (X [N, C, H, W], Y [N, M, OH, OW]) per batch
    (captured afresh each time); `sampler()` and `moments()` apply the row budget."""

    def __init__(self, name: str, batches: Sequence, reference: LayerCapture, inputs: LayerCapture | None,
                 budget: RowBudget, index: int = 0):
        self.name, self.index, self.budget = name, index, budget
        self._batches, self._reference, self._inputs = batches, reference, inputs

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return conv_io_batches(self._reference, self.name, self._batches, current=self._inputs)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def row_budget(self) -> int:
        return self.budget.per_batch(len(self._batches))

    @property
    def seed(self) -> int:
        return self.budget.seed_of(self.index)

    def sampler(self) -> RowSampler:
        """The rows to keep of each batch (a fresh generator: the same rows every time)."""
        return RowSampler(self.row_budget, self.seed)

    def moments(self, weight_shape, attrs) -> ConvMoments:
        """Per-group H = X^T X, X^T Y and means of the layer's unfolded input, within the budget."""
        return conv_layer_moments(weight_shape, attrs, self, row_budget=self.row_budget, seed=self.seed)


def layer_data(reference, name: str, batches: Sequence, budget: RowBudget, index: int = 0) -> LayerData:
    """LayerData of `name` with inputs and targets from `reference` (a model or a LayerCapture): what
    a model-wide allocation measures on the original model before the sequential fit."""
    ref = reference if isinstance(reference, LayerCapture) else LayerCapture(reference)
    return LayerData(name, batches, ref, None, budget, index)


Fit = Callable[[int, str, LayerData], Any]                          # (index, name, data) -> fit or None
Replace = Callable[[onnx.ModelProto, str, Any], onnx.ModelProto]    # (model, name, fit) -> model


def fit_in_sequence(model: onnx.ModelProto, names: Sequence[str], batches: Sequence, budget: RowBudget, fit: Fit,
                    replace: Replace | None, *, reference: onnx.ModelProto | None = None,
                    independent: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fits the layers `names` (graph order) one after the other.

    fit(index, name, data) -> the fit, or None to leave the layer as it is; replace(model, name,
    fit) -> the model with that layer replaced by its fit (None: never replaced, every layer
    fitted on `model`'s own inputs). Targets are the outputs of `reference` (default: `model`);
    inputs come from the model with the layers fitted so far replaced, or from `model` itself
    when `independent`. Returns (the model with every fit put in, {name: fit}).
    """
    ref = LayerCapture(model if reference is None else reference)
    fixed = None
    if independent or replace is None:
        fixed = ref if reference is None else LayerCapture(model)
    current, fits = model, {}
    for index, name in enumerate(names):
        inputs = fixed or (ref if current is model and reference is None else LayerCapture(current))
        result = fit(index, name, LayerData(name, batches, ref, inputs, budget, index))
        if result is None:
            continue
        fits[name] = result
        if replace is not None:
            current = replace(current, name, result)
    return current, fits
