"""Is a calibration set representative? Checks run on the original model.

A calibration set of one class made a ResNet-18 collapse to 19.5% top-1
while every per-layer cosine measured on that set looked fine: per-layer
fidelity on unrepresentative data proves nothing. Two cheap symptoms are
checked before any fit:

- the original model's top-1 predictions on the calibration inputs (for every
  output that is a score vector, [N, C] with C >= 2) cover fewer than half of
  the classes that the number of inputs allows (min(C, N) / 2);
- most inputs have a near-duplicate: a nearest neighbour closer than 1% of
  the set's spread (root-mean-square distance to the mean input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

NEAR_DUPLICATE_RELATIVE = 0.01   # nearest neighbour within this fraction of the spread ...
NEAR_DUPLICATE_SHARE = 0.5       # ... for more than this share of the inputs
MAX_DUPLICATE_CHECK = 1024       # inputs compared pairwise at most (seeded subsample)


@dataclass
class CalibrationCheck:
    inputs: int
    predicted_classes: dict[str, tuple[int, int]] = field(default_factory=dict)  # output -> (distinct, classes)
    near_duplicate_share: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"inputs": self.inputs,
                "predicted_classes": {k: {"distinct": d, "classes": c} for k, (d, c) in self.predicted_classes.items()},
                "near_duplicate_share": self.near_duplicate_share, "warnings": list(self.warnings)}


def _first_input_rows(feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    name = next(iter(feeds[0]))
    return np.concatenate([np.asarray(f[name], dtype=np.float64).reshape(len(f[name]), -1) for f in feeds])


def near_duplicate_share(x: np.ndarray, seed: int = 0) -> float:
    """Share of rows of `x` [N, D] whose nearest other row is within 1% of the spread."""
    n = len(x)
    if n < 2:
        return 0.0
    if n > MAX_DUPLICATE_CHECK:
        x = x[np.random.default_rng(seed).choice(n, MAX_DUPLICATE_CHECK, replace=False)]
    centred = x - x.mean(axis=0)
    spread = float(np.sqrt(np.mean(np.sum(centred * centred, axis=1))))
    if spread == 0.0 or not np.isfinite(spread):
        return 1.0
    sq = np.sum(centred * centred, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (centred @ centred.T)
    np.fill_diagonal(d2, np.inf)
    nearest = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return float(np.mean(nearest <= NEAR_DUPLICATE_RELATIVE * spread))


def check_calibration(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> CalibrationCheck:
    """Runs `model` on `feeds` (ONNX Runtime, our library registered) and returns the
    symptoms of an unrepresentative calibration set, with a warning for each."""
    from ..evaluation import open_session, run_session

    x = _first_input_rows(feeds)
    check = CalibrationCheck(inputs=len(x))
    check.near_duplicate_share = near_duplicate_share(x)
    if check.near_duplicate_share > NEAR_DUPLICATE_SHARE:
        check.warnings.append(
            f"{check.near_duplicate_share:.0%} of the {len(x)} calibration inputs have a near-duplicate "
            f"(nearest neighbour within {NEAR_DUPLICATE_RELATIVE:.0%} of the set's spread): the set is not "
            "representative; give distinct inputs")
    session = open_session(model)
    names = [o.name for o in session.get_outputs()]
    outputs: list[list[np.ndarray]] = [[] for _ in names]
    for feed in feeds:
        for i, value in enumerate(run_session(session, feed)):
            outputs[i].append(np.asarray(value))
    for name, values in zip(names, outputs):
        y = np.concatenate(values) if values[0].ndim >= 1 else np.stack(values)
        if y.ndim != 2 or y.shape[1] < 2 or not np.issubdtype(y.dtype, np.floating):
            continue
        distinct, classes = int(len(np.unique(np.argmax(y, axis=1)))), int(y.shape[1])
        check.predicted_classes[name] = (distinct, classes)
        needed = min(classes, len(y)) / 2
        if distinct < needed:
            check.warnings.append(
                f"the original model's top-1 predictions on the {len(y)} calibration inputs cover {distinct} of "
                f"{classes} classes (output '{name}'): the set is not representative (sorted by class? too few "
                "inputs?); give a shuffled sample of the data the model will see")
    return check
