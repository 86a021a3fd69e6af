"""The collection test against brute force, scipy, the METHODS power figures and simulation."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from core import collection
from core.errors import DataError


def brute_force_p(query, reference) -> float:
    """P(U >= observed U) over every way of choosing which pooled scores are the query's."""
    pooled = np.concatenate([query, reference])
    n = len(query)
    observed = collection.mann_whitney_u(query, reference)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n):
        rest = np.delete(pooled, chosen)
        hits += collection.mann_whitney_u(pooled[list(chosen)], rest) >= observed - 1e-9
        total += 1
    return hits / total


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_matches_enumerating_every_split_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    # Half the cases draw from 3 values, so ties (inside and across the sets) are common.
    values = rng.integers(0, 3, size=n + m) if seed % 2 else rng.normal(size=n + m)
    query, reference = values[:n].astype(float), values[n:].astype(float)
    u, p, method = collection.mann_whitney_p(query, reference, method="exact")
    assert method == "exact"
    assert p == pytest.approx(brute_force_p(query, reference), abs=1e-12)


def test_null_counts_without_ties_sum_to_the_number_of_splits_and_are_symmetric():
    counts = collection.null_counts(4, (1,) * 11)
    assert counts.sum() == math.comb(11, 4)
    nonzero = counts[::2]  # without ties 2U is even
    assert np.array_equal(nonzero, nonzero[::-1]) and not counts[1::2].any()


def test_u_and_p_agree_with_scipy_exact_and_asymptotic():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    query, reference = rng.normal(0.4, 1, 7), rng.normal(0, 1, 9)
    u, p, _ = collection.mann_whitney_p(query, reference, method="exact")
    expected = stats.mannwhitneyu(query, reference, alternative="greater", method="exact")
    assert u == expected.statistic and p == pytest.approx(expected.pvalue, rel=1e-9)
    # With ties, scipy's asymptotic test uses the same tie correction and continuity correction.
    query, reference = np.round(rng.normal(0.3, 1, 60), 1), np.round(rng.normal(0, 1, 300), 1)
    u, p, method = collection.mann_whitney_p(query, reference)
    expected = stats.mannwhitneyu(query, reference, alternative="greater", method="asymptotic")
    assert method == "normal" and u == expected.statistic and p == pytest.approx(expected.pvalue, rel=1e-9)


def test_the_normal_approximation_is_close_to_exact_where_they_meet():
    rng = np.random.default_rng(2)
    query, reference = rng.normal(0.5, 1, 20), rng.normal(0, 1, 100)
    exact = collection.mann_whitney_p(query, reference, method="exact")[1]
    normal = collection.mann_whitney_p(query, reference, method="normal")[1]
    assert normal == pytest.approx(exact, rel=0.05)


def test_power_closed_form_gives_the_methods_figures():
    assert collection.images_needed(0.6, 0.01) == 84
    assert collection.images_needed(0.7, 0.01) == 21
    # A finite reference needs more images; too small a reference can never get there.
    assert collection.images_needed(0.6, 0.01, m=500) > 84
    assert collection.images_needed(0.52, 0.01, m=50) is None and collection.images_needed(0.5, 0.01) is None


def test_power_closed_form_agrees_with_simulation():
    """At the stated size, about 80% of collections at that per-image AUC reach p < alpha."""
    rng = np.random.default_rng(3)
    auc, alpha, m = 0.7, 0.01, 1000
    n = collection.images_needed(auc, alpha, m=m)
    shift = math.sqrt(2) * NormalDist().inv_cdf(auc)  # N(shift, 1) beats N(0, 1) with probability auc
    hits = 0
    draws = 400
    for _ in range(draws):
        p = collection.mann_whitney_p(rng.normal(shift, 1, n), rng.normal(0, 1, m), method="normal")[1]
        hits += p < alpha
    assert abs(hits / draws - collection.POWER) < 3 * math.sqrt(0.8 * 0.2 / draws) + 0.02


def test_collection_test_reports_auc_ci_and_the_verdict_words():
    rng = np.random.default_rng(4)
    members, reference = rng.normal(2, 1, 20), rng.normal(0, 1, 200)
    result = collection.collection_test(members, reference, alpha=0.01, per_image_auc=0.7, n_bootstrap=200, seed=0)
    assert result.verdict == "likely used" and result.p_value < 1e-6
    assert result.auc == pytest.approx(collection.mann_whitney_u(members, reference) / (20 * 200))
    assert result.ci_low <= result.auc <= result.ci_high
    assert result.images_needed == collection.images_needed(0.7, 0.01, m=200)
    assert set(result.to_dict()) >= {"n", "m", "t", "attack", "p_value", "auc", "ci_low", "ci_high", "verdict", "images_needed"}
    same = collection.collection_test(members, reference, alpha=0.01, per_image_auc=0.7, n_bootstrap=200, seed=0)
    assert same == result  # seeded
    null = collection.collection_test(rng.normal(0, 1, 20), reference, n_bootstrap=0)
    assert null.verdict in ("not flagged", "likely used") and null.ci_low is None
    tiny = collection.collection_test([5.0], [0.0, 1.0, 2.0], alpha=0.01, n_bootstrap=0)
    assert tiny.verdict == "cannot decide" and "smallest possible p-value is 0.25" in tiny.sentence


def test_empty_or_broken_scores_are_clear_errors():
    with pytest.raises(DataError, match="collection is empty"):
        collection.collection_test([], [1.0])
    with pytest.raises(DataError, match="NaN"):
        collection.collection_test([1.0, float("nan")], [1.0])


@pytest.mark.parametrize("method", ["exact", "normal"])
def test_the_size_of_the_test_matches_enumeration_and_never_exceeds_alpha_when_exact(method):
    n, m, alpha = 3, 6, 0.1
    pooled = np.arange(n + m, dtype=float)
    flagged = [
        collection.mann_whitney_p(pooled[list(c)], np.delete(pooled, c), method=method)[1] <= alpha
        for c in itertools.combinations(range(n + m), n)
    ]
    assert collection.exact_false_positive_rate(n, m, alpha, method=method) == pytest.approx(np.mean(flagged))
    assert collection.exact_false_positive_rate(4, 30, 0.01, method="exact") <= 0.01
