"""The budget's statistics: bounds on unseen inputs from the validation inputs, the split that
gives the budget most of a large calibration set, and the refusal of budgets a small
validation part cannot show. References: scipy's own distributions and closed forms."""

import numpy as np
import pytest
from scipy.stats import beta, t

from onnxcompress.errors import OnnxCompressError
from onnxcompress.plan.budget import (FIT_LIMIT, Budget, Measurement, agreement_lower, drop_upper, inputs_to_show,
                                      mean_lower, rate_upper, split_feeds)


def test_agreement_lower_is_clopper_pearson():
    assert agreement_lower(16, 16, 0.95) == pytest.approx(0.05 ** (1 / 16))  # k = n: closed form
    assert agreement_lower(990, 1000, 0.95) == pytest.approx(beta.ppf(0.05, 990, 11))
    assert agreement_lower(0, 10, 0.95) == 0.0
    assert agreement_lower(7, 10, 0.0) == 0.7  # no confidence: the sample's own rate
    assert rate_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    # the bound tightens with more inputs at the same rate
    assert agreement_lower(99, 100, 0.95) < agreement_lower(990, 1000, 0.95) < 0.99


def test_drop_upper_covers_the_true_drop():
    """The drop's bound is the larger of the exact McNemar bound (given the inputs where the two
    models differ) and the lost rate's bound less the gained rate: closed forms at the ends, and
    seeded simulations of paired outcomes in which it covers the true drop at least as often as
    asked, where each of the two alone does not (McNemar where the differing inputs are few and
    mostly lost, the lost rate alone where both directions are many)."""
    assert drop_upper(0, 0, 1000, 0.95) == rate_upper(0, 1000, 0.95)  # none lost yet: the lost rate's bound
    assert drop_upper(3, 0, 1000, 0.95) == pytest.approx(rate_upper(3, 1000, 0.95))
    assert rate_upper(3, 1000, 0.95) > 0.0075  # not 3 / 1000, as McNemar's alone would say
    assert drop_upper(6, 4, 1000, 0.0) == pytest.approx(2 / 1000)  # no confidence: the sample's drop
    assert drop_upper(0, 0, 1000, 0.0) == 0.0
    assert drop_upper(20, 20, 1000, 0.95) > 0 > drop_upper(5, 40, 1000, 0.95)
    rng = np.random.default_rng(0)

    def coverage(n, p_lost, p_gained, bound, trials=2000):
        outcome = rng.choice(3, size=(trials, n), p=[p_lost, p_gained, 1 - p_lost - p_gained])
        lost, gained = (outcome == 0).sum(1), (outcome == 1).sum(1)
        return np.mean([bound(int(a), int(b), n) >= p_lost - p_gained for a, b in zip(lost, gained)])

    def mcnemar(a, b, n):
        d = a + b
        return (2 * rate_upper(a, d, 0.95) - 1) * d / n if d else 0.0

    def lost_only(a, b, n):
        return rate_upper(a, n, 0.95) - b / n

    def ours(a, b, n):
        return drop_upper(a, b, n, 0.95)

    many, few = (1000, 0.02, 0.015), (500, 0.008, 0.002)
    assert coverage(*many, ours) >= 0.95 and coverage(*many, lost_only) < 0.93
    assert coverage(*few, ours) >= 0.95 and coverage(*few, mcnemar) < 0.85


def test_mean_lower_is_student_t():
    v = np.array([0.99, 0.97, 0.995, 0.98, 0.96])
    want = v.mean() - t.ppf(0.95, 4) * v.std(ddof=1) / np.sqrt(5)
    assert mean_lower(v, 0.95) == pytest.approx(want)
    assert mean_lower(v, 0.0) == pytest.approx(v.mean())
    assert mean_lower(np.array([0.99]), 0.95) == -1.0  # one input bounds nothing
    assert mean_lower(np.ones(4), 0.95) == pytest.approx(1.0)


def test_inputs_to_show():
    n = inputs_to_show(0.99, 0.95)
    assert n == 299 and agreement_lower(n, n, 0.95) >= 0.99 > agreement_lower(n - 1, n - 1, 0.95)
    assert inputs_to_show(1.0, 0.95) is None and inputs_to_show(1.0, 0.0) == 1


def test_budget_holds_on_the_bound_not_the_sample():
    b = Budget(min_agreement=0.99)
    m = Measurement(agreement=1.0, cosine=1.0, rel_error=0.0, samples=16, agreement_lower=0.8296)
    assert not b.holds(m) and ">= 0.8296 at 95%" in b.violations(m)[0]
    assert Budget(min_agreement=0.99, confidence=0.0).holds(m)
    c = Budget(min_cosine=0.98)
    assert not c.holds(Measurement(None, 0.985, 0.0, 8, cosine_lower=0.975))
    assert c.holds(Measurement(None, 0.985, 0.0, 8, cosine_lower=0.981))


def test_budget_is_shown_on_the_eval_inputs_too():
    """With --eval, agreement must be shown there as well: the validation inputs may be the model's
    training data, on which a rewritten model disagrees less often than on unseen inputs."""
    b = Budget(min_agreement=0.99, on_eval=True)
    val = dict(agreement=1.0, cosine=0.999, rel_error=1e-3, samples=1024, agreement_lower=0.99708, cosine_lower=0.998)
    bad = Measurement(**val, eval_samples=1000, eval_agreement=0.995, eval_agreement_lower=0.98952,
                      eval_cosine=0.998, eval_cosine_lower=0.9979)
    assert not b.holds(bad)
    assert b.violations(bad) == ["agreement 0.9950 on 1000 --eval inputs, >= 0.9895 at 95% < 0.99"]
    good = Measurement(**val, eval_samples=1000, eval_agreement=0.998, eval_agreement_lower=0.99372,
                       eval_cosine=0.998, eval_cosine_lower=0.9979)
    assert b.holds(good)
    assert Budget(min_agreement=0.99).holds(Measurement(**val))  # measured without --eval: the validation part
    assert "and the --eval inputs" in b.describe() and "--eval" not in Budget(min_agreement=0.99).describe()
    c = Budget(min_cosine=0.999, on_eval=True)
    assert c.violations(Measurement(None, 0.9995, 0.0, 64, cosine_lower=0.9992, eval_samples=64,
                                    eval_cosine=0.9991, eval_cosine_lower=0.9989)) == [
        "cosine 0.9991 on 64 --eval inputs, >= 0.9989 at 95% < 0.999"]


def test_require_resolvable_names_what_would_show_the_budget():
    with pytest.raises(OnnxCompressError, match=r"at least 299 validation inputs: give at least 555 calibration"):
        Budget(min_agreement=0.99).require_resolvable(64)
    Budget(min_agreement=0.99).require_resolvable(299)
    Budget(min_agreement=0.99, confidence=0.0).require_resolvable(4)
    Budget(min_cosine=0.99).require_resolvable(4)  # a cosine bound is judged as measured
    with pytest.raises(OnnxCompressError, match="cannot be shown"):
        Budget(min_agreement=1.0).require_resolvable(10_000)
    with pytest.raises(OnnxCompressError, match=r"200 --eval inputs cannot show top-1 agreement >= 0.99.*at least 299"):
        Budget(min_agreement=0.99).require_resolvable(1024, n_eval=200)
    Budget(min_agreement=0.99).require_resolvable(1024, n_eval=299)


def test_split_fits_at_most_fit_limit_and_validates_the_rest():
    feeds = [{"x": np.arange(i * 64, i * 64 + 64, dtype=np.float32)[:, None]} for i in range(20)]  # 1,280
    fit, val, fi, vi = split_feeds(feeds, 0.25, seed=0)
    assert len(fi) == FIT_LIMIT and len(vi) == 1280 - FIT_LIMIT
    assert set(fi).isdisjoint(vi)
    _, _, fi, vi = split_feeds(feeds[:4], 0.25, seed=0)  # 256 samples: the fraction rules
    assert len(vi) == 64 and len(fi) == 192
    _, _, fi, vi = split_feeds(feeds, 0.25, seed=0, fit_limit=None)
    assert len(vi) == 320
