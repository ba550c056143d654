"""The budget a plan must meet, and the data it is measured on.

The calibration inputs are split, seeded, into a fitting part (what every
technique fits to, at most FIT_LIMIT inputs) and a validation part (what the
budget is measured on, never fitted to). A model is measured against the
original on the validation part: top-1 agreement of score outputs, output
cosine, relative output error; and, with labelled evaluation data, top-1
accuracy and its drop in points.

A budget on the validation part holds when it is shown at `confidence`
(default 95%, one-sided), not merely met by the sample: agreement by the
Clopper-Pearson lower bound of the agreeing count, cosine by the Student-t
lower bound of the mean per-input cosine. Sixteen validation inputs that all
agree show agreement >= 0.83 only, so a budget of 0.99 cannot be shown on them
and planning refuses at once (`Budget.require_resolvable`) instead of writing
a model that meets 0.99 on sixteen inputs and 0.90 on unseen ones. --max-drop
is judged on the part of the user's --eval data that planning looks at; a
seeded, class-balanced share of it (`confirm_fraction`, half by default) is
held out of planning and looked at once, for the written model: its drop there
is what the report states, with its 95% upper bound. Planning looks at its
part of --eval dozens of times (every step of every bisection) and keeps what
passed, so the drop it sees is biased low: on ResNet-20 Fashion-MNIST a plan
that lost -0.2 points on its 1,000 --eval images lost 0.73 on 8,000 others
(docs/results.md). Where the written model misses the budget on the held-out
share, layers are given back until it holds, each a further look, and the
bound allows for the looks (Bonferroni).

With --eval, an agreement or cosine budget must be shown on the --eval inputs
too, by the same bounds. The validation part is drawn from the calibration
inputs, and those are often the model's own training data, on which a
rewritten model disagrees with the original less often than on inputs the
model never saw (digits_cnn: 0-2 of 1,024 validation digits against 31-63 of
5,000 unseen ones, docs/results.md): a bound shown on them holds for inputs
like them only. Held-out --eval data makes it hold for new inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import OnnxCompressError

DEFAULT_VAL_FRACTION = 0.25  # the validation share when the calibration inputs are few
FIT_LIMIT = 256              # fitting inputs at most: what is left over validates
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_AGREEMENT = 0.99  # for score-vector outputs ([N, C], C >= 2)
DEFAULT_MIN_COSINE = 0.99     # for other outputs
DEFAULT_CONFIRM_FRACTION = 0.5  # the share of --eval held out of planning, for --max-drop
DEFAULT_EVAL_LIMIT = 5000       # --eval samples taken by default ...
EVAL_INPUT_BYTES = 1 << 30      # ... or fewer, where their inputs would take more than this
MIN_CONFIRM_INPUTS = 100        # a held-out share smaller than this confirms too little to be worth its cost


def split_feeds(feeds: list[dict[str, np.ndarray]], val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
                batch: int = 8, fit_limit: int | None = FIT_LIMIT) -> tuple[list[dict], list[dict], np.ndarray,
                                                                           np.ndarray]:
    """(fitting feeds, validation feeds, fitting sample indices, validation sample indices).

    Samples (rows of the feeds, in order) are split by a seeded permutation; both parts are
    re-batched. The validation part is `val_fraction` of the samples, or every sample beyond
    `fit_limit` fitting ones when that is more (fits gain little beyond a few hundred inputs; a
    budget check gains from every one). Feeds whose arrays cannot be concatenated are split as
    whole feeds."""
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
    n_val = max(1, int(round(n * val_fraction)))
    if fit_limit is not None:
        n_val = max(n_val, n - fit_limit)
    n_val = min(n - 1, n_val)
    order = rng.permutation(n)
    val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if merged is None:
        return [feeds[i] for i in fit_idx], [feeds[i] for i in val_idx], fit_idx, val_idx

    def part(idx, size):
        return [{k: v[idx[s:s + size]] for k, v in merged.items()} for s in range(0, len(idx), size)]

    return part(fit_idx, batch), part(val_idx, 32), fit_idx, val_idx


def _rounded(record) -> dict:
    """A dataclass as a dict, floats rounded to 6 places (for reports)."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(record).items()}


def lost_gained(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(inputs right `before` and wrong `after`, inputs the other way) of two per-input correctness
    masks: what drop_upper bounds the drop from."""
    return int(np.sum(before & ~after)), int(np.sum(~before & after))


def split_eval(eval_data: tuple[np.ndarray, np.ndarray], fraction: float,
               seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(the part planning looks at, the held-out part) of labelled (x, y): the held-out part is
    `fraction` of the samples, seeded and class-balanced (sampling.balanced_indices); both keep
    the data's order."""
    from ..sampling import balanced_indices

    x, y = eval_data
    if not 0.0 < fraction < 1.0:
        raise OnnxCompressError(f"--confirm-fraction must be in (0, 1) to hold a share out, got {fraction}")
    n = len(y)
    n_confirm = int(round(n * fraction))
    if n_confirm < MIN_CONFIRM_INPUTS or n - n_confirm < 1:
        raise OnnxCompressError(
            f"{n} --eval inputs hold {n_confirm} back to confirm --max-drop on (--confirm-fraction {fraction:g}): "
            f"at least {MIN_CONFIRM_INPUTS} are needed, and some left to plan on. Give more --eval data "
            "(--eval-limit), or --confirm-fraction 0 to judge the drop on the data planning chose on")
    held = np.zeros(n, bool)
    held[balanced_indices(y, n_confirm, seed + 1)] = True
    return (x[~held], y[~held]), (x[held], y[held])


def looks_confidence(confidence: float, looks: int) -> float:
    """The confidence each of `looks` bounds must have for all of them to hold at `confidence`
    (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / max(1, looks)


@dataclass
class Confirmation:
    """The written model on the held-out share of --eval, looked at `looks` times in all (one
    unless the planner had to give layers back). `drop_upper` is at `confidence` for all looks
    together (each bound at looks_confidence)."""

    samples: int
    original_top1: float
    top1: float
    drop: float          # points
    drop_upper: float    # points
    lost: int
    gained: int
    looks: int
    confidence: float
    meets: bool

    def as_dict(self) -> dict:
        return _rounded(self)


def agreement_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound at `confidence` of a rate seen as k of n."""
    if n <= 0:
        return 0.0
    if confidence <= 0.0:
        return k / n
    if k <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, k, n - k + 1))


def rate_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound at `confidence` of a rate seen as k of n."""
    return 1.0 - agreement_lower(n - k, n, confidence)


def drop_upper(lost: int, gained: int, n: int, confidence: float) -> float:
    """One-sided upper bound at `confidence` of the top-1 drop (a rate, lost - gained over n) when
    a model gets `lost` of n inputs wrong that the original got right and `gained` the other way.
    The larger of two bounds, each of which fails where the other holds (seeded simulations in
    tests/test_budget.py): exact McNemar-style, given the lost + gained inputs where the two differ
    (each lost with some probability p, bounded by Clopper-Pearson; the drop is
    (2p - 1)(lost + gained) / n), which takes their count as fixed and so is too narrow where they
    are few and mostly lost (3 lost of 1,000 would bound the drop at 0.3 points); and the lost
    rate's Clopper-Pearson bound less the gained rate, which takes the gained rate as fixed and
    so is too narrow where both are many."""
    if n <= 0:
        return 0.0
    if confidence <= 0:
        return (lost - gained) / n
    differ = lost + gained
    mcnemar = (2.0 * rate_upper(lost, differ, confidence) - 1.0) * differ / n if differ else 0.0
    return max(mcnemar, rate_upper(lost, n, confidence) - gained / n)


def mean_lower(values: np.ndarray, confidence: float) -> float:
    """One-sided Student-t lower bound at `confidence` of the mean of `values`."""
    v = np.asarray(values, np.float64).ravel()
    mean = float(np.mean(v)) if v.size else 1.0
    if confidence <= 0.0:
        return mean
    if v.size < 2:
        return -1.0  # one input bounds nothing
    from scipy.stats import t

    sd = float(np.std(v, ddof=1))
    return float(mean - float(t.ppf(confidence, v.size - 1)) * sd / np.sqrt(v.size))


def inputs_to_show(min_agreement: float, confidence: float) -> int | None:
    """The fewest validation inputs on which agreement >= min_agreement can be shown at
    `confidence` (all of them agreeing); None when no count can show it."""
    if confidence <= 0.0 or min_agreement <= 0.0:
        return 1
    if min_agreement >= 1.0:
        return None
    return int(np.ceil(np.log(1.0 - confidence) / np.log(min_agreement)))


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
    confidence: float = DEFAULT_CONFIDENCE
    agreement_lower: float | None = None  # one-sided lower bounds at `confidence` on unseen inputs
    cosine_lower: float | None = None
    eval_drop_upper: float | None = None  # one-sided upper bound of the drop at `confidence` (points)
    eval_samples: int | None = None
    # the model against the original on the --eval inputs (labels not used), with the same bounds
    eval_agreement: float | None = None
    eval_agreement_lower: float | None = None
    eval_cosine: float | None = None
    eval_cosine_lower: float | None = None

    def as_dict(self) -> dict:
        return _rounded(self)


@dataclass
class Budget:
    max_drop: float | None = None        # top-1 points on the evaluation data
    min_agreement: float | None = None   # top-1 agreement with the original on the validation part
    min_cosine: float | None = None      # output cosine on the validation part
    defaulted: list[str] = field(default_factory=list)
    confidence: float = DEFAULT_CONFIDENCE  # 0: the sample's own values, no bound
    on_eval: bool = False  # agreement / cosine are shown on the --eval inputs too
    held_out: bool = False  # --max-drop is confirmed on a share of --eval held out of planning

    def violations(self, m: Measurement) -> list[str]:
        out = []
        pct = f"{100 * self.confidence:g}%"
        if self.max_drop is not None and (m.eval_drop is None or m.eval_drop > self.max_drop + 1e-9):
            out.append(f"top-1 drop {m.eval_drop:.2f} points > {self.max_drop}")
        checks = [("agreement", self.min_agreement, m.agreement, m.agreement_lower, m.samples, ""),
                  ("cosine", self.min_cosine, m.cosine, m.cosine_lower, m.samples, "")]
        if m.eval_samples is not None:  # measured on --eval as well: the budget must be shown there too
            checks += [("agreement", self.min_agreement, m.eval_agreement, m.eval_agreement_lower, m.eval_samples,
                        " --eval"),
                       ("cosine", self.min_cosine, m.eval_cosine, m.eval_cosine_lower, m.eval_samples, " --eval")]
        for name, floor, value, lower, n, where in checks:
            if floor is None:
                continue
            # what the budget is judged by: the lower bound on unseen inputs, or with no confidence the sample
            shown = value if self.confidence <= 0 or lower is None else lower
            if shown is None or shown < floor:
                out.append(f"{name} {value if value is None else f'{value:.4f}'} on {n}{where} inputs"
                           + (f", >= {shown:.4f} at {pct}" if self.confidence > 0 and shown is not None else "")
                           + f" < {floor}")
        return out

    def require_resolvable(self, n_val: int, val_fraction: float = DEFAULT_VAL_FRACTION,
                           n_eval: int | None = None) -> None:
        """Refuses a budget the validation part (or the --eval data, `n_eval` inputs) is too small to
        show, before any planning."""
        if self.min_agreement is None or self.confidence <= 0:
            return
        need = inputs_to_show(self.min_agreement, self.confidence)
        pct = f"{100 * self.confidence:g}%"
        if need is not None and n_eval is not None and n_eval < need:
            raise OnnxCompressError(
                f"{n_eval} --eval inputs cannot show top-1 agreement >= {self.min_agreement}: even if all of them "
                f"agree, agreement on unseen inputs is only known to be >= "
                f"{agreement_lower(n_eval, n_eval, self.confidence):.3f} ({pct} one-sided). Give at least {need} "
                f"(--eval-limit, and data that holds them), or a looser budget")
        if need is not None and n_val >= need:
            return
        floor = agreement_lower(n_val, n_val, self.confidence)
        if need is None:
            raise OnnxCompressError(f"top-1 agreement >= {self.min_agreement} cannot be shown at {pct} on any "
                                    "number of validation inputs: give --min-agreement below 1, or --confidence 0 "
                                    "to judge the validation inputs' own agreement")
        raise OnnxCompressError(
            f"{n_val} validation inputs cannot show top-1 agreement >= {self.min_agreement}: even if all of them "
            f"agree, agreement on unseen inputs is only known to be >= {floor:.3f} ({pct} one-sided). Showing "
            f"{self.min_agreement} needs at least {need} validation inputs: give at least "
            f"{min(need + FIT_LIMIT, int(np.ceil(need / val_fraction)))} "
            f"calibration inputs (--calib-limit; at most {FIT_LIMIT} are fitted to, the rest validate), or a "
            f"looser budget (--min-agreement {floor:.3f}), or --confidence 0 to judge the sample's own agreement")

    def holds(self, m: Measurement) -> bool:
        return not self.violations(m)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop <= {self.max_drop} points on the evaluation data"
                         + (" (confirmed on a share of it held out of planning)" if self.held_out else ""))
        where = "the validation inputs" + (" and the --eval inputs" if self.on_eval else "")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_agreement} on {where}")
        if self.min_cosine is not None:
            parts.append(f"output cosine >= {self.min_cosine} on {where}")
        shown = (f", shown at {100 * self.confidence:g}% confidence" if self.confidence > 0 and (
            self.min_agreement is not None or self.min_cosine is not None) else "")
        return " and ".join(parts) + shown + (" (default)" if self.defaulted else "")

    def as_dict(self) -> dict:
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine,
                "confidence": self.confidence, "defaulted": list(self.defaulted), "on_eval": self.on_eval,
                "held_out": self.held_out,
                "text": self.describe()}


def resolve_budget(max_drop, min_agreement, min_cosine, score_outputs: bool, has_eval: bool,
                   confidence: float = DEFAULT_CONFIDENCE) -> Budget:
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
    if not 0.0 <= confidence < 1.0:
        raise OnnxCompressError(f"--confidence must be in [0, 1) (0: no bound), got {confidence}")
    budget = Budget(max_drop, min_agreement, min_cosine, confidence=confidence, on_eval=has_eval)
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


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0), 1.0)


SCREEN_INPUTS = 256  # validation inputs a candidate alone is measured on (its error orders the candidates)


class Evaluator:
    """Measures models against `original` on the validation feeds and, when given,
    labelled evaluation data (x, y). `confidence` sets the bounds each Measurement carries."""

    def __init__(self, original: onnx.ModelProto, val_feeds: list[dict], eval_data=None, threads: int | None = 1,
                 eval_batch: int = 64, confidence: float = DEFAULT_CONFIDENCE, screen_inputs: int = SCREEN_INPUTS,
                 confirm_data=None):
        self.val_feeds = val_feeds
        self.confirm_data = confirm_data  # labelled (x, y) held out of every measure(): see confirm()
        self.confirm_looks = 0
        self.threads = threads
        self.eval_data = eval_data
        self.eval_batch = eval_batch
        self.confidence = confidence
        session = _session(original.SerializeToString(), threads)
        self.reference = _run_all(session, val_feeds)
        self.score = [is_score_output(y) for y in self.reference]
        self.samples = len(self.reference[0]) if self.reference and np.ndim(self.reference[0]) else len(val_feeds)
        # the screening subset: the first whole feeds holding `screen_inputs` samples
        self.screen_feeds, rows = [], 0
        for f in val_feeds:
            if rows >= screen_inputs:
                break
            self.screen_feeds.append(f)
            rows += len(next(iter(f.values()))) if f and np.ndim(next(iter(f.values()))) else 1
        screened = len(self.screen_feeds) < len(val_feeds)
        self.screen_reference = [r[:rows] for r in self.reference] if screened else self.reference
        self.screen_samples = rows if screened else self.samples
        self.eval_reference = self._eval_outputs(session) if eval_data is not None else None
        self.eval_correct = self._correct(self.eval_reference) if eval_data is not None else None
        self.eval_top1 = float(np.mean(self.eval_correct)) if eval_data is not None else None
        self.confirm_correct = (self._correct(self._eval_outputs(session, confirm_data), confirm_data)
                                if confirm_data is not None else None)
        self.count = 0

    @property
    def has_score_output(self) -> bool:
        return any(self.score)

    def _eval_outputs(self, session, data=None) -> list[np.ndarray]:
        """Every output of `session` on the --eval inputs (or the labelled `data`), in batches of
        `eval_batch`."""
        x = (self.eval_data if data is None else data)[0]
        name = session.get_inputs()[0].name
        outs = [session.run(None, {name: x[s:s + self.eval_batch]}) for s in range(0, len(x), self.eval_batch)]
        return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]

    def _correct(self, outputs: list[np.ndarray], data=None) -> np.ndarray:
        scores = outputs[0]
        labels = (self.eval_data if data is None else data)[1]
        return np.argmax(scores.reshape(len(scores), -1), axis=1) == labels

    def _model_session(self, model: onnx.ModelProto):
        from ..model_io import prepare_for_runtime

        proto = prepare_for_runtime(onnx.ModelProto.FromString(model.SerializeToString()))
        return _session(proto.SerializeToString(), self.threads)

    def confirm(self, model: onnx.ModelProto, max_drop: float) -> Confirmation:
        """The top-1 drop of `model` on the held-out share of --eval, which no measure() looks at.
        Every call is one more look; the bound is at the evaluator's confidence for all the looks
        made so far (Bonferroni), so a model that passes after several looks is not claimed to
        more than the looks allow."""
        if self.confirm_data is None:
            raise OnnxCompressError("no --eval share was held out to confirm on")
        self.confirm_looks += 1
        correct = self._correct(self._eval_outputs(self._model_session(model), self.confirm_data), self.confirm_data)
        n = len(correct)
        lost, gained = lost_gained(self.confirm_correct, correct)
        top0, top1 = float(np.mean(self.confirm_correct)), float(np.mean(correct))
        drop = 100.0 * (top0 - top1)
        conf = looks_confidence(self.confidence, self.confirm_looks) if self.confidence > 0 else 0.0
        return Confirmation(n, top0, top1, drop, 100.0 * drop_upper(lost, gained, n, conf), lost, gained,
                            self.confirm_looks, self.confidence, drop <= max_drop + 1e-9)

    def _against(self, reference: list[np.ndarray], outs: list[np.ndarray], n: int):
        """(agreement, its lower bound, cosine, its lower bound, relative error) of `outs` against
        `reference` on `n` inputs: agreement of the least agreeing score output (None without one),
        mean per-input cosine of the output of lowest mean (None without outputs), both bounded at
        `confidence`; the largest relative error."""
        agree_k, cosine, cos_rows, rel = None, 1.0, None, 0.0
        for ref, out, score in zip(reference, outs, self.score):
            if ref.shape != out.shape:
                raise OnnxCompressError(f"output shapes differ: {ref.shape} vs {out.shape}")
            if score:
                k = int(np.sum(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))
                agree_k = k if agree_k is None else min(agree_k, k)
            rows = _row_cosines(ref, out)
            if cos_rows is None or float(np.mean(rows)) < cosine:
                cosine, cos_rows = float(np.mean(rows)), rows
            d = (out.astype(np.float64) - ref).ravel()
            rel = max(rel, float(d @ d) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-300))
        agreement = agreement_lo = cosine_mean = cosine_lo = None
        if agree_k is not None:
            agreement, agreement_lo = agree_k / n, agreement_lower(agree_k, n, self.confidence)
        if cos_rows is not None:
            cosine_mean, cosine_lo = min(cosine, 1.0), mean_lower(cos_rows, self.confidence)
        return agreement, agreement_lo, cosine_mean, cosine_lo, rel

    def measure(self, model: onnx.ModelProto, with_eval: bool = True, screen: bool = False) -> Measurement:
        """The model against the original on the validation inputs (`screen`: on the first
        SCREEN_INPUTS of them only, for ordering candidates, never for the budget) and, `with_eval`,
        on the --eval inputs."""
        self.count += 1
        session = self._model_session(model)
        feeds, reference, samples = ((self.screen_feeds, self.screen_reference, self.screen_samples) if screen
                                     else (self.val_feeds, self.reference, self.samples))
        agreement, agreement_lo, cosine, cosine_lo, rel = self._against(reference, _run_all(session, feeds), samples)
        m = Measurement(agreement, 1.0 if cosine is None else cosine, rel, samples, confidence=self.confidence,
                        agreement_lower=agreement_lo, cosine_lower=1.0 if cosine_lo is None else cosine_lo)
        if with_eval and self.eval_data is not None:
            outs = self._eval_outputs(session)
            correct = self._correct(outs)
            n = len(correct)
            lost, gained = lost_gained(self.eval_correct, correct)
            m.eval_samples = n
            m.eval_top1 = float(np.mean(correct))
            m.eval_drop = 100.0 * (self.eval_top1 - m.eval_top1)
            m.eval_drop_upper = 100.0 * drop_upper(lost, gained, n, self.confidence)
            (m.eval_agreement, m.eval_agreement_lower, m.eval_cosine, m.eval_cosine_lower,
             _) = self._against(self.eval_reference, outs, n)
        return m
