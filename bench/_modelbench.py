"""What the whole-model benchmarks share: their data (held-out digits with
labels, or photo crops judged by agreement with the fp32 model) and the
logits / fidelity measures for the photo case."""

from __future__ import annotations

import numpy as np

from onnxcompress.data import load_mnist_test, load_mnist_train
from onnxcompress.evaluation import open_session, run_session
from onnxcompress.images import photo_crops


def eval_data(dataset: str, calib: int, eval_limit: int | None, photos: int = 256):
    """(calibration inputs, test inputs, test labels or None).

    mnist: `calib` seeded training digits and the held-out digits (the first
    `eval_limit`); photos: crops of the bundled photos with disjoint seeds for
    calibration and evaluation (`eval_limit` or `photos` of them), no labels.
    """
    if dataset == "mnist":
        x_train, _ = load_mnist_train()
        x_test, y_test = load_mnist_test()
        if eval_limit:
            x_test, y_test = x_test[:eval_limit], y_test[:eval_limit]
        return x_train[np.random.default_rng(0).permutation(len(x_train))[:calib]], x_test, y_test
    return photo_crops(calib, seed=1), photo_crops(eval_limit or photos, seed=2), None


def logits(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    session = open_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([run_session(session, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def fidelity(reference: np.ndarray, scores: np.ndarray) -> dict:
    """Agreement of `scores` with the fp32 model's `reference` logits."""
    ref_top1 = reference.argmax(1)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    a, b = reference.astype(np.float64), scores.astype(np.float64)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"top1": float(np.mean(scores.argmax(1) == ref_top1)),
            "top5": float(np.mean(np.any(top5 == ref_top1[:, None], axis=1))),
            "cosine": float(np.mean(cos))}
