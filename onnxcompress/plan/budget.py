"""The budget a plan must meet, and the data it is measured on.

The calibration inputs are split, seeded, into a fitting part (what every
technique fits to) and a validation part (what the budget is measured on,
never fitted to). A model is measured against the original on the validation
part: top-1 agreement of score outputs, output cosine, relative output error;
and, with labelled evaluation data, top-1 accuracy and its drop in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import OnnxCompressError

DEFAULT_VAL_FRACTION = 0.25
DEFAULT_MIN_AGREEMENT = 0.99  # for score-vector outputs ([N, C], C >= 2)
DEFAULT_MIN_COSINE = 0.99     # for other outputs


def split_feeds(feeds: list[dict[str, np.ndarray]], val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
                batch: int = 8) -> tuple[list[dict], list[dict], np.ndarray, np.ndarray]:
    """(fitting feeds, validation feeds, fitting sample indices, validation sample indices).

    Samples (rows of the feeds, in order) are split by a seeded permutation; both parts are
    re-batched. Feeds whose arrays cannot be concatenated are split as whole feeds."""
    if not 0.0 < val_fraction < 1.0:
        raise OnnxCompressError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if not feeds:
        raise OnnxCompressError("--method auto needs calibration inputs (--calib)")
    rng = np.random.default_rng(seed)
    try:
        merged = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        n = len(next(iter(merged.values())))
    except ValueError:
        merged, n = None, len(feeds)
    if n < 2:
        raise OnnxCompressError(f"--method auto needs at least 2 calibration inputs to hold some out, got {n}")
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    order = rng.permutation(n)
    val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if merged is None:
        return [feeds[i] for i in fit_idx], [feeds[i] for i in val_idx], fit_idx, val_idx

    def part(idx, size):
        return [{k: v[idx[s:s + size]] for k, v in merged.items()} for s in range(0, len(idx), size)]

    return part(fit_idx, batch), part(val_idx, 32), fit_idx, val_idx


def is_score_output(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] >= 2 and np.issubdtype(y.dtype, np.floating)


@dataclass
class Measurement:
    """A model against the original, on the validation part (and the evaluation data)."""

    agreement: float | None     # top-1 agreement, lowest over score outputs
    cosine: float               # mean per-sample output cosine, lowest over outputs
    rel_error: float            # ||y - y0||^2 / ||y0||^2, largest over outputs
    samples: int
    eval_top1: float | None = None
    eval_drop: float | None = None  # points (100 x fraction) below the original

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Budget:
    max_drop: float | None = None        # top-1 points on the evaluation data
    min_agreement: float | None = None   # top-1 agreement with the original on the validation part
    min_cosine: float | None = None      # output cosine on the validation part
    defaulted: list[str] = field(default_factory=list)

    def violations(self, m: Measurement) -> list[str]:
        out = []
        if self.max_drop is not None and (m.eval_drop is None or m.eval_drop > self.max_drop + 1e-9):
            out.append(f"top-1 drop {m.eval_drop:.2f} points > {self.max_drop}")
        if self.min_agreement is not None and (m.agreement is None or m.agreement < self.min_agreement):
            out.append(f"agreement {m.agreement:.4f} < {self.min_agreement}")
        if self.min_cosine is not None and m.cosine < self.min_cosine:
            out.append(f"cosine {m.cosine:.4f} < {self.min_cosine}")
        return out

    def holds(self, m: Measurement) -> bool:
        return not self.violations(m)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop <= {self.max_drop} points on the evaluation data")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_agreement} on the validation inputs")
        if self.min_cosine is not None:
            parts.append(f"output cosine >= {self.min_cosine} on the validation inputs")
        return " and ".join(parts) + (" (default)" if self.defaulted else "")

    def as_dict(self) -> dict:
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine,
                "defaulted": list(self.defaulted), "text": self.describe()}


def resolve_budget(max_drop, min_agreement, min_cosine, score_outputs: bool, has_eval: bool) -> Budget:
    """The budget given, or the default: agreement for score outputs, cosine for others."""
    if max_drop is not None:
        if not 0.0 <= max_drop <= 100.0:
            raise OnnxCompressError(f"--max-drop is in top-1 points, 0 to 100; got {max_drop}")
        if not has_eval:
            raise OnnxCompressError("--max-drop needs labelled evaluation data: give --eval (a labelled .npz or a "
                                    "dataset name such as mnist-test)")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise OnnxCompressError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    if min_agreement is not None and not score_outputs:
        raise OnnxCompressError("--min-agreement needs a score output ([N, classes]); use --min-cosine")
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise OnnxCompressError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
    budget = Budget(max_drop, min_agreement, min_cosine)
    if max_drop is None and min_agreement is None and min_cosine is None:
        if score_outputs:
            budget.min_agreement = DEFAULT_MIN_AGREEMENT
            budget.defaulted.append("min_agreement")
        else:
            budget.min_cosine = DEFAULT_MIN_COSINE
            budget.defaulted.append("min_cosine")
    return budget


def _session(model_bytes: bytes, threads: int | None):
    """A session with our library, quiet below errors: spliced models carry shapes that ORT's own
    inference refines (a symbolic batch written as -1), which it would warn about on every run."""
    import onnxruntime as ort

    from .._runtime import session_options

    opts = session_options(threads)
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxCompressError(f"ONNX Runtime cannot load a planned model: {exc}") from None


def _run_all(session, feeds) -> list[np.ndarray]:
    from ..evaluation import run_session

    outs = None
    for feed in feeds:
        values = run_session(session, feed)
        outs = [[v] for v in values] if outs is None else [o + [v] for o, v in zip(outs, values)]
    return [np.concatenate(o) if np.ndim(o[0]) >= 1 else np.stack(o) for o in outs]


def _row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0), 1.0)
    return float(np.mean(cos))


class Evaluator:
    """Measures models against `original` on the validation feeds and, when given,
    labelled evaluation data (x, y)."""

    def __init__(self, original: onnx.ModelProto, val_feeds: list[dict], eval_data=None, threads: int | None = 1,
                 eval_batch: int = 64):
        self.val_feeds = val_feeds
        self.threads = threads
        self.eval_data = eval_data
        self.eval_batch = eval_batch
        session = _session(original.SerializeToString(), threads)
        self.reference = _run_all(session, val_feeds)
        self.score = [is_score_output(y) for y in self.reference]
        self.samples = len(self.reference[0]) if self.reference and np.ndim(self.reference[0]) else len(val_feeds)
        self.eval_top1 = self._top1(session) if eval_data is not None else None
        self.count = 0

    @property
    def has_score_output(self) -> bool:
        return any(self.score)

    def _top1(self, session) -> float:
        x, y = self.eval_data
        name = session.get_inputs()[0].name
        correct = 0
        for s in range(0, len(x), self.eval_batch):
            scores = session.run(None, {name: x[s:s + self.eval_batch]})[0]
            correct += int(np.sum(np.argmax(scores.reshape(len(scores), -1), axis=1) == y[s:s + self.eval_batch]))
        return correct / len(x)

    def measure(self, model: onnx.ModelProto, with_eval: bool = True) -> Measurement:
        from ..model_io import prepare_for_runtime

        self.count += 1
        proto = prepare_for_runtime(onnx.ModelProto.FromString(model.SerializeToString()))
        session = _session(proto.SerializeToString(), self.threads)
        outs = _run_all(session, self.val_feeds)
        agreement, cosine, rel = None, 1.0, 0.0
        for ref, out, score in zip(self.reference, outs, self.score):
            if ref.shape != out.shape:
                raise OnnxCompressError(f"output shapes differ: {ref.shape} vs {out.shape}")
            if score:
                a = float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))
                agreement = a if agreement is None else min(agreement, a)
            cosine = min(cosine, _row_cosine(ref, out))
            d = (out.astype(np.float64) - ref).ravel()
            rel = max(rel, float(d @ d) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-300))
        m = Measurement(agreement, cosine, rel, self.samples)
        if with_eval and self.eval_data is not None:
            m.eval_top1 = self._top1(session)
            m.eval_drop = 100.0 * (self.eval_top1 - m.eval_top1)
        return m
