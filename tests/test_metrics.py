"""Metrics against scikit-learn and brute force, and the calibration maths against its formula."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from core.errors import DataError, SimaError
from core.metrics import (
    Estimate,
    Metrics,
    _resample_stats,
    asr,
    auc,
    evaluate,
    membership_scores,
    p_values,
    roc,
    threshold_at_fpr,
    tpr_at_fpr,
    verdict,
)

FUZZ = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- brute force


def brute_auc(s, y):
    s, y = np.asarray(s, float), np.asarray(y, bool)
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def brute_points(s, y):
    """(threshold, fpr, tpr) for +inf and every distinct score, flagging score >= threshold."""
    s, y = np.asarray(s, float), np.asarray(y, bool)
    out = []
    for thr in [math.inf, *sorted(set(s.tolist()), reverse=True)]:
        flagged = s >= thr
        out.append((thr, np.sum(flagged & ~y) / np.sum(~y), np.sum(flagged & y) / np.sum(y)))
    return out


def brute_asr(s, y):
    return max((tpr + 1 - fpr) / 2 for _, fpr, tpr in brute_points(s, y))


def brute_tpr_at_fpr(s, y, target):
    return max(tpr for _, fpr, tpr in brute_points(s, y) if fpr <= target)


def gaussian_data(n_members, n_nonmembers, shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.normal(shift, 1, n_members), rng.normal(0, 1, n_nonmembers)])
    y = np.concatenate([np.ones(n_members, int), np.zeros(n_nonmembers, int)])
    return s, y


# Small integer scores make ties common; mixed with floats for distinct values.
score_values = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False))


@st.composite
def labelled(draw, max_size=30):
    n = draw(st.integers(2, max_size))
    s = draw(st.lists(score_values, min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    y[0], y[1] = 1, 0  # both classes present
    return np.array(s), np.array(y)


# --------------------------------------------------------------------------- conversion


def test_membership_scores_direction():
    stat = [3, -1.5, 0]
    lower, higher = membership_scores(stat, "lower"), membership_scores(stat, "higher")
    assert lower.dtype == np.float64 and higher.dtype == np.float64
    np.testing.assert_array_equal(lower, [-3, 1.5, 0])
    np.testing.assert_array_equal(higher, [3, -1.5, 0])


def test_membership_scores_make_lower_is_member_statistics_rank_members_first():
    noise_norm = np.array([0.1, 0.2, 5.0, 6.0])  # members have the small norms
    labels = [1, 1, 0, 0]
    assert auc(scores=membership_scores(noise_norm, "lower"), labels=labels) == 1.0
    assert auc(scores=membership_scores(noise_norm, "higher"), labels=labels) == 0.0


def test_membership_scores_returns_a_copy_and_keeps_shape():
    stat = np.ones((2, 3))
    out = membership_scores(stat, "higher")
    out[0, 0] = 7
    assert stat[0, 0] == 1 and out.shape == (2, 3)


@pytest.mark.parametrize("bad", ["low", "Lower", None, 1])
def test_membership_scores_rejects_unknown_direction(bad):
    with pytest.raises(SimaError, match="lower"):
        membership_scores([1.0], bad)


# --------------------------------------------------------------------------- ROC, AUC, ASR


@FUZZ
@given(labelled())
def test_roc_is_every_distinct_threshold(data):
    s, y = data
    fpr, tpr, thr = roc(scores=s, labels=y)
    expected = brute_points(s, y)
    assert len(thr) == len(expected) == len(set(s.tolist())) + 1
    for (t, f, p), (bt, bf, bp) in zip(zip(thr, fpr, tpr), expected):
        assert t == bt and f == pytest.approx(bf) and p == pytest.approx(bp)


@FUZZ
@given(labelled())
def test_auc_matches_sklearn_and_pairwise_brute_force(data):
    s, y = data
    value = auc(scores=s, labels=y)
    assert value == pytest.approx(brute_auc(s, y), abs=1e-12)
    assert value == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@FUZZ
@given(labelled())
def test_asr_matches_brute_force_over_all_thresholds(data):
    s, y = data
    assert asr(scores=s, labels=y) == pytest.approx(brute_asr(s, y), abs=1e-12)


@FUZZ
@given(labelled())
def test_members_are_the_positive_class(data):
    s, y = data
    assert auc(scores=s, labels=1 - y) == pytest.approx(1 - auc(scores=s, labels=y), abs=1e-12)
    fpr, tpr, _ = roc(scores=s, labels=y)
    sk_fpr, sk_tpr, _ = roc_curve(y, s, pos_label=1, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_members_scoring_higher_give_perfect_metrics():
    s = np.concatenate([np.linspace(10, 11, 50), np.linspace(0, 1, 200)])
    y = np.r_[np.ones(50), np.zeros(200)]
    assert auc(scores=s, labels=y) == 1.0 and asr(scores=s, labels=y) == 1.0
    result = tpr_at_fpr(scores=s, labels=y, target_fpr=0.01)
    assert result.value == 1.0 and result.realised_fpr == 0.0 and result.threshold == 10.0


def test_constant_scores_are_chance():
    s, y = np.full(8, 2.5), [1, 0, 1, 0, 1, 1, 0, 0]
    assert auc(scores=s, labels=y) == 0.5 and asr(scores=s, labels=y) == 0.5
    fpr, tpr, _ = roc(scores=s, labels=y)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])


def test_ties_count_half():
    # member 1 ties non-member 1, beats non-member 0: (0.5 + 1) / 2
    assert auc(scores=[1.0, 1.0, 0.0], labels=[1, 0, 0]) == 0.75


# --------------------------------------------------------------------------- TPR at FPR


@FUZZ
@given(labelled(max_size=40), st.floats(0.005, 1.0))
def test_tpr_at_fpr_is_best_point_within_target(data, target):
    s, y = data
    result = tpr_at_fpr(scores=s, labels=y, target_fpr=target)
    n0 = int(np.sum(y == 0))
    assert result.target_fpr == target
    if n0 < 1 / target:
        assert not result.measurable and result.value is None and result.realised_fpr is None
        assert str(n0) in result.reason
        return
    assert result.measurable and result.reason is None
    assert result.realised_fpr <= target
    assert result.value == pytest.approx(brute_tpr_at_fpr(s, y, target))
    # the threshold reproduces the reported point
    flagged = s >= result.threshold
    assert np.mean(flagged[y == 1]) == pytest.approx(result.value)
    assert np.mean(flagged[y == 0]) == pytest.approx(result.realised_fpr)


def test_tpr_at_fpr_never_reads_the_point_just_above_target():
    # Two tied non-members on top: FPR jumps from 0 to 2%, so nothing in between is reachable.
    s = np.concatenate([np.full(50, 10.0), [11.0, 11.0], np.zeros(98)])
    y = np.r_[np.ones(50), np.zeros(100)]
    result = tpr_at_fpr(scores=s, labels=y, target_fpr=0.01)
    assert result.value == 0.0 and result.realised_fpr == 0.0
    assert result.threshold > 11.0 and not np.any(s >= result.threshold)
    assert json.dumps(Estimate(result.value, target_fpr=0.01, threshold=result.threshold).to_dict())


def test_tpr_at_fpr_reports_the_lowest_fpr_for_the_best_tpr():
    # One non-member just below every member: including it adds FPR but no TPR.
    s = np.concatenate([np.full(10, 5.0), [4.0], np.zeros(99)])
    y = np.r_[np.ones(10), np.zeros(100)]
    result = tpr_at_fpr(scores=s, labels=y, target_fpr=0.05)
    assert result.value == 1.0 and result.realised_fpr == 0.0 and result.threshold == 5.0


@pytest.mark.parametrize("target, n_ok", [(0.001, 1000), (0.01, 100)])
def test_tpr_at_fpr_needs_one_over_target_nonmembers(target, n_ok):
    s, y = gaussian_data(50, n_ok - 1)
    result = tpr_at_fpr(scores=s, labels=y, target_fpr=target)
    assert not result.measurable and result.value is None and result.threshold is None
    assert f"at least {n_ok} non-members" in result.reason and str(n_ok - 1) in result.reason
    s, y = gaussian_data(50, n_ok)
    assert tpr_at_fpr(scores=s, labels=y, target_fpr=target).measurable


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan"), "1%", True])
def test_tpr_at_fpr_rejects_bad_targets(target):
    s, y = gaussian_data(5, 5)
    with pytest.raises(SimaError):
        tpr_at_fpr(scores=s, labels=y, target_fpr=target)


# --------------------------------------------------------------------------- bootstrap


def test_vectorised_resample_metrics_match_the_public_functions():
    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=90), 1)  # rounding makes ties
    y = np.r_[np.ones(30, bool), np.zeros(60, bool)]
    values, inverse = np.unique(s, return_inverse=True)
    codes = values.size - 1 - inverse
    idx1, idx0 = rng.integers(0, 30, (20, 30)), rng.integers(0, 60, (20, 60))
    targets = (0.05, 0.2)
    aucs, asrs, tprs = _resample_stats(codes[y], codes[~y], values.size, idx1, idx0, targets)
    for b in range(20):
        rs = np.concatenate([s[y][idx1[b]], s[~y][idx0[b]]])
        ry = np.r_[np.ones(30), np.zeros(60)]
        assert aucs[b] == pytest.approx(auc(scores=rs, labels=ry), abs=1e-12)
        assert asrs[b] == pytest.approx(asr(scores=rs, labels=ry), abs=1e-12)
        for k, target in enumerate(targets):
            assert tprs[k][b] == pytest.approx(tpr_at_fpr(scores=rs, labels=ry, target_fpr=target).value, abs=1e-12)


def test_evaluate_is_deterministic_and_seeded():
    s, y = gaussian_data(120, 150)
    a, b = evaluate(membership_scores=s, labels=y, n_bootstrap=200, seed=7), evaluate(membership_scores=s, labels=y, n_bootstrap=200, seed=7)
    assert a == b
    c = evaluate(membership_scores=s, labels=y, n_bootstrap=200, seed=8)
    assert (a.auc.ci_low, a.auc.ci_high) != (c.auc.ci_low, c.auc.ci_high)
    assert a.auc.value == c.auc.value


def test_evaluate_does_not_depend_on_sample_order():
    s, y = gaussian_data(40, 60, seed=2)
    order = np.random.default_rng(0).permutation(s.size)
    assert evaluate(membership_scores=s, labels=y, n_bootstrap=100) == evaluate(membership_scores=s[order], labels=y[order], n_bootstrap=100)


def test_evaluate_point_estimates_and_cis():
    s, y = gaussian_data(300, 400, shift=1.5, seed=1)
    m = evaluate(membership_scores=s, labels=y, n_bootstrap=300, seed=0)
    assert isinstance(m, Metrics)
    assert (m.n_members, m.n_nonmembers, m.n_bootstrap, m.seed, m.confidence) == (300, 400, 300, 0, 0.95)
    assert m.auc.value == pytest.approx(brute_auc(s, y))
    assert m.asr.value == pytest.approx(brute_asr(s, y))
    assert m.tpr_at_1pct_fpr.value == pytest.approx(brute_tpr_at_fpr(s, y, 0.01))
    assert m.tpr_at_1pct_fpr.realised_fpr <= 0.01
    for est in (m.auc, m.asr, m.tpr_at_1pct_fpr):
        assert est.ci_low <= est.value <= est.ci_high and est.ci_low < est.ci_high
    # a wider confidence level gives a wider interval from the same resamples
    wide = evaluate(membership_scores=s, labels=y, n_bootstrap=300, seed=0, confidence=0.99)
    assert wide.auc.ci_low <= m.auc.ci_low and wide.auc.ci_high >= m.auc.ci_high
    # 400 non-members: 0.1% is not measurable and gets no number and no CI
    t = m.tpr_at_0_1pct_fpr
    assert not t.measurable and t.value is t.ci_low is t.ci_high is t.realised_fpr is None
    assert "not measurable" in m.summary() and "AUC" in m.summary()


def test_auc_ci_is_close_to_its_normal_approximation():
    # Hanley-McNeil standard error of the AUC; the percentile interval should match its width.
    s, y = gaussian_data(500, 500, shift=1.0, seed=4)
    m = evaluate(membership_scores=s, labels=y, n_bootstrap=1000, seed=0)
    a, n1, n0 = m.auc.value, 500, 500
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert (m.auc.ci_high - m.auc.ci_low) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_is_stratified():
    # One member: an unstratified resample of 6 would hold no member a third of the time.
    m = evaluate(membership_scores=[5.0, 1, 2, 3, 4, 0], labels=[1, 0, 0, 0, 0, 0], n_bootstrap=200)
    assert m.auc.value == m.auc.ci_low == m.auc.ci_high == 1.0
    # Member 5 against {1, 2, 3, 4, 6}: each resample's AUC is Binomial(5, 0.8) / 5, whose
    # 2.5% and 97.5% quantiles are 0.4 and 1.0.
    m = evaluate(membership_scores=[5.0, 1, 2, 3, 4, 6], labels=[1, 0, 0, 0, 0, 0], n_bootstrap=200)
    assert m.auc.value == pytest.approx(0.8) and (m.auc.ci_low, m.auc.ci_high) == (0.4, 1.0)


def test_no_bootstrap_gives_no_cis():
    s, y = gaussian_data(50, 150)
    m = evaluate(membership_scores=s, labels=y, n_bootstrap=0)
    for est in (m.auc, m.asr, m.tpr_at_1pct_fpr, m.tpr_at_0_1pct_fpr):
        assert est.ci_low is None and est.ci_high is None
    assert m.auc.value is not None and "no confidence intervals" in m.summary()


def test_to_dict_keys_and_json_safety():
    s, y = gaussian_data(50, 150)
    d = evaluate(membership_scores=s, labels=y, n_bootstrap=50).to_dict()
    assert list(d) == ["auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"]
    assert set(d["auc"]) == set(d["asr"]) == {"value", "ci_low", "ci_high"}
    for key in ("tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
        assert {"value", "ci_low", "ci_high", "realised_fpr", "threshold"} <= set(d[key])
    assert d["tpr_at_0_1pct_fpr"]["value"] is None and d["tpr_at_0_1pct_fpr"]["reason"]
    json.dumps(d, allow_nan=False)
    assert Estimate(float("nan"), float("inf"), 0.5).to_dict() == {"value": None, "ci_low": None, "ci_high": 0.5}


@pytest.mark.parametrize(
    "kwargs", [{"n_bootstrap": -1}, {"n_bootstrap": 1.5}, {"confidence": 1.0}, {"confidence": 0}, {"seed": None}]
)
def test_evaluate_rejects_bad_settings(kwargs):
    s, y = gaussian_data(5, 5)
    with pytest.raises(SimaError):
        evaluate(membership_scores=s, labels=y, **kwargs)


# --------------------------------------------------------------------------- robustness


ALL_METRICS = [
    roc,
    auc,
    asr,
    lambda labels, scores: tpr_at_fpr(scores=scores, labels=labels, target_fpr=0.01),
    lambda labels, scores: evaluate(membership_scores=scores, labels=labels, n_bootstrap=10),
]


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([], [], "No scores"),
        ([1.0, 2.0], [1, 0, 1], "2 scores but 3 labels"),
        ([1.0, 2.0], [1, 2], "neither 0 nor 1"),
        ([1.0, 2.0], [1, float("nan")], "neither 0 nor 1"),
        ([1.0, 2.0], ["member", "non"], "Labels must be"),
        ([1.0, 2.0, 3.0], [1, 1, 1], "need both members"),
        ([1.0, 2.0], [0, 0], "need both members"),
        ([np.nan, 1.0, np.inf, 0.0], [1, 0, 1, 0], "2 of 4 scores are NaN or infinite"),
        ([[1.0, 2.0]], [1, 0], "1-D"),
        (["a", "b"], [1, 0], "real numbers"),
        ([None, 1.0], [1, 0], "1 of 2 scores"),
    ],
)
def test_bad_inputs_raise_data_error(metric, scores, labels, message):
    with pytest.raises(DataError, match=message):
        metric(labels=labels, scores=scores)


def test_boolean_and_float_labels_are_accepted():
    s = [0.3, 0.1, 0.9]
    assert auc(scores=s, labels=[True, False, True]) == auc(scores=s, labels=[1.0, 0.0, 1.0]) == auc(scores=s, labels=np.array([1, 0, 1], np.uint8))


@FUZZ
@given(
    st.lists(st.one_of(st.floats(), st.integers(-5, 5)), max_size=25),
    st.lists(st.integers(-1, 2), max_size=25),
)
def test_fuzz_evaluate_returns_or_raises_data_error(scores, labels):
    try:
        m = evaluate(membership_scores=scores, labels=labels, n_bootstrap=5, seed=1)
    except DataError:
        return
    json.dumps(m.to_dict(), allow_nan=False)
    assert 0.0 <= m.auc.value <= 1.0 and 0.5 <= m.asr.value <= 1.0


# --------------------------------------------------------------------------- calibration


@FUZZ
@given(
    st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=30),
    st.lists(st.integers(-5, 5).map(float), max_size=10),
)
def test_p_values_match_formula(reference, scores):
    got = p_values(scores, reference)
    expected = [(1 + sum(r >= s for r in reference)) / (1 + len(reference)) for s in scores]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_p_values_keep_shape_and_bounds():
    ref = np.arange(9.0)
    got = p_values([[100.0, -100.0], [4.0, 4.5]], ref)
    np.testing.assert_allclose(got, [[0.1, 1.0], [0.6, 0.5]])


@pytest.mark.parametrize(
    "scores, reference, message",
    [([1.0], [], "reference set is empty"), ([np.nan], [1.0], "1 of 1 scores"), ([1.0], [np.inf, 0], "1 of 2 reference")],
)
def test_p_values_bad_inputs(scores, reference, message):
    with pytest.raises(DataError, match=message):
        p_values(scores, reference)


@FUZZ
@given(st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=60), st.floats(0.01, 1.0))
def test_threshold_at_fpr_respects_fpr_and_is_lowest(reference, fpr):
    ref = np.array(reference)
    if 1 / ref.size > fpr:
        with pytest.raises(DataError, match="at least"):
            threshold_at_fpr(ref, fpr)
        return
    thr = threshold_at_fpr(ref, fpr)
    assert np.mean(ref >= thr) <= fpr
    # any lower reference value would flag more than fpr
    lower = ref[ref < thr]
    if lower.size:
        assert np.mean(ref >= lower.max()) > fpr


def test_threshold_at_fpr_examples():
    assert threshold_at_fpr(np.arange(100.0), 0.05) == 95.0
    tied = threshold_at_fpr(np.ones(10), 0.5)
    assert tied > 1.0 and tied == np.nextafter(1.0, 2.0)
    with pytest.raises(DataError, match="at least 1000 reference"):
        threshold_at_fpr(np.arange(999.0), 0.001)


def test_verdict_flags_a_rare_score():
    ref = np.arange(200.0)
    v = verdict(199.5, ref, 0.01)
    assert v.likely_member and v.achievable and v.n_reference == 200
    assert v.p_value == pytest.approx(1 / 201) == p_values([199.5], ref)[0]
    assert "Likely a member" in v.sentence and "200 reference" in v.sentence


def test_verdict_not_flagged_says_it_is_not_proof():
    v = verdict(100.0, np.arange(200.0), 0.01)
    assert not v.likely_member and v.achievable
    assert v.p_value == pytest.approx(101 / 201)
    assert "does not prove" in v.sentence and "relative to the 200 reference" in v.sentence


def test_verdict_alpha_below_smallest_p_value_is_not_achievable():
    v = verdict(1e9, np.arange(50.0), 0.01)
    assert not v.achievable and not v.likely_member
    assert v.p_value == pytest.approx(1 / 51)
    assert "Cannot decide" in v.sentence and "99 reference" in v.sentence
    # alpha exactly at the smallest p-value can be met
    assert verdict(1e9, np.arange(99.0), 0.01).likely_member


@pytest.mark.parametrize("score, alpha", [(np.nan, 0.05), ("high", 0.05), (1.0, 0.0), (1.0, 2.0)])
def test_verdict_bad_inputs(score, alpha):
    with pytest.raises(SimaError):
        verdict(score, np.arange(10.0), alpha)


def test_small_samples_are_warned_with_the_exact_chance_of_a_perfect_auc():
    import itertools

    # Brute force: of all ways to give 4 of 8 distinct scores to the members, one ranks them all on top.
    perfect = sum(
        auc(scores=np.arange(8.0), labels=np.isin(np.arange(8), chosen).astype(int)) == 1.0
        for chosen in itertools.combinations(range(8), 4)
    )
    assert perfect == 1
    from core import metrics

    text = metrics.small_sample_warning(4, 4)
    assert "once in 70," in text and "too few" in text
    assert metrics.small_sample_warning(metrics.MIN_CI_SAMPLES, metrics.MIN_CI_SAMPLES) is None
    assert metrics.small_sample_warning(500, metrics.MIN_CI_SAMPLES - 1) is not None


def test_labels_come_before_scores_as_in_scikit_learn():
    import inspect

    from core import metrics

    for function in (metrics.roc, metrics.auc, metrics.asr, metrics.tpr_at_fpr, metrics.evaluate, metrics.compare):
        assert list(inspect.signature(function).parameters)[:2] in (["labels", "scores"], ["labels", "membership_scores"], ["labels", "scores_a"])
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert auc(y, s) == roc_auc_score(y, s) == 0.75
