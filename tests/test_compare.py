"""The paired comparison of two attacks: against brute force and the exact bootstrap distribution."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.errors import SimaError
from core.metrics import _paired_resample_stats, compare, tpr_at_fpr


def test_each_resample_applies_the_same_picks_to_both_attacks():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(7, bool), np.zeros(120, bool)]
    a, b = rng.normal(size=y.size).round(1) + y, rng.normal(size=y.size).round(1)
    member_idx, nonmember_idx = rng.integers(0, 7, (25, 7)), rng.integers(0, 120, (25, 120))
    d_auc, d_tpr = _paired_resample_stats(a, b, y, member_idx, nonmember_idx)
    for r in range(25):
        picks = np.r_[np.flatnonzero(y)[member_idx[r]], np.flatnonzero(~y)[nonmember_idx[r]]]
        labels = y[picks]
        assert d_auc[r] == pytest.approx(roc_auc_score(labels, a[picks]) - roc_auc_score(labels, b[picks]), abs=1e-12)
        tprs = [tpr_at_fpr(scores=s[picks], labels=labels, target_fpr=0.01).value for s in (a, b)]
        assert d_tpr[r] == pytest.approx(tprs[0] - tprs[1], abs=1e-12)


def test_the_bootstrap_matches_the_exact_distribution_of_every_stratified_resample():
    # 3 members and 3 non-members: all 27 x 27 equally likely resamples can be listed.
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    a = np.array([0.9, 0.8, 0.3, 0.5, 0.2, 0.1])
    b = np.array([0.4, 0.7, 0.2, 0.6, 0.3, 0.1])
    exact = []
    for m in itertools.product(range(3), repeat=3):
        for n in itertools.product(range(3), repeat=3):
            picks = np.r_[np.array(m), 3 + np.array(n)]
            exact.append(roc_auc_score(y[picks], a[picks]) - roc_auc_score(y[picks], b[picks]))
    exact = np.array(exact)
    result = compare(scores_a=a, scores_b=b, labels=y, n_bootstrap=40_000, seed=1)
    assert result.auc.value == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    p_exact = min(1.0, 2 * min(np.mean(exact <= 0), np.mean(exact >= 0)))
    assert result.auc.p_value == pytest.approx(p_exact, abs=0.015)
    # The percentile CI ends lie between the exact distribution's neighbouring quantiles.
    slack = 1e-9  # the exact AUCs come from sklearn, the bootstrap's from integer counts
    assert np.quantile(exact, 0.02) - slack <= result.auc.ci_low <= np.quantile(exact, 0.03) + slack
    assert np.quantile(exact, 0.97) - slack <= result.auc.ci_high <= np.quantile(exact, 0.98) + slack
    assert not result.tpr_at_1pct_fpr.measurable and "100 non-members" in result.tpr_at_1pct_fpr.reason


def test_identical_scores_differ_by_exactly_zero_and_are_not_distinguishable():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(150)]
    s = rng.normal(size=200) + 0.5 * y
    result = compare(scores_a=s, scores_b=s.copy(), labels=y, names=("SimA", "PIA"), n_bootstrap=300)
    for diff in (result.auc, result.tpr_at_1pct_fpr):
        assert (diff.value, diff.ci_low, diff.ci_high, diff.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert result.order() == "not distinguishable at 95%"
    assert result.sentence().startswith("SimA and PIA are not distinguishable at 95% by AUC")


def test_clearly_separated_attacks_get_a_ci_that_excludes_zero_in_the_right_direction():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(100), np.zeros(100)]
    strong, weak = rng.normal(size=200) + 3 * y, rng.normal(size=200)
    result = compare(scores_a=strong, scores_b=weak, labels=y, names=("SimA", "Loss"), n_bootstrap=500)
    assert result.auc.ci_low > 0 and result.auc.distinguishable and result.auc.p_value < 0.01
    assert result.order() == "SimA > Loss" and result.sentence().startswith("SimA > Loss by AUC")
    swapped = compare(scores_a=weak, scores_b=strong, labels=y, names=("Loss", "SimA"), n_bootstrap=500)
    assert swapped.order() == "SimA > Loss" and swapped.auc.ci_high < 0


def test_the_same_seed_gives_the_same_numbers_whatever_the_sample_order():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(60), np.zeros(140)]
    a, b = rng.normal(size=200) + 0.4 * y, rng.normal(size=200) + 0.3 * y
    first = compare(scores_a=a, scores_b=b, labels=y, n_bootstrap=400, seed=7)
    perm = rng.permutation(200)
    again = compare(scores_a=a[perm], scores_b=b[perm], labels=y[perm], n_bootstrap=400, seed=7)
    assert first.to_dict() == again.to_dict()
    other = compare(scores_a=a, scores_b=b, labels=y, n_bootstrap=400, seed=8)
    assert other.auc.value == first.auc.value and other.auc.ci_low != first.auc.ci_low


def test_a_comparison_without_resamples_or_with_mismatched_scores_is_refused():
    y = np.r_[np.ones(3), np.zeros(3)]
    with pytest.raises(SimaError, match="at least 1 bootstrap"):
        compare(scores_a=np.arange(6.0), scores_b=np.arange(6.0), labels=y, n_bootstrap=0)
    with pytest.raises(SimaError, match="labels"):
        compare(scores_a=np.arange(6.0), scores_b=np.arange(5.0), labels=y)
