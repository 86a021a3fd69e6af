"""The collection test: were these images, as a group, used to train the model?

One image of a model that generalises rarely clears a 1% false-positive rate; a collection of
images from one owner can. Given membership scores (higher = member) of n query images and of
m known non-members (the reference), all under the same model, attack and timestep, the null
hypothesis is that the query scores are exchangeable with the reference scores. The test is
the one-sided Mann-Whitney U (Mann and Whitney, 1947): exact (conditional on ties) when n * m
is small, else the tie-corrected normal approximation with a continuity correction. The effect
size is AUC = U / (n m), the chance that a query image outscores a reference image, with a
stratified bootstrap CI. The power statement says how many images a collection needs at the
model's per-image AUC; the closed form is the normal approximation of U's null variance
(Noether, 1987, "Sample size determination for some common nonparametric tests").
Anchor: Dubinski et al., "CDI: Copyrighted Data Identification in Diffusion Models",
arXiv 2411.12858.

t and the attack must be fixed before the collection is seen (a model card or a calibration
audit on other images); choosing them on the collection would make the p-value meaningless.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from core import metrics
from core.errors import DataError, SimaError

#: Up to this many (query, reference) pairs the p-value is exact: the null distribution of U
#: is counted over every split of the pooled scores. Beyond, the normal approximation is
#: accurate to well under 1% of alpha and the count would take seconds.
EXACT_MAX_PAIRS = 10_000
#: The probability of p < alpha that the power statement asks for.
POWER = 0.8
DEFAULT_ALPHA = 0.01
N_BOOTSTRAP = 1000

VERDICT_WORDS = ("likely used", "not flagged", "cannot decide")


# --------------------------------------------------------------------------- the U statistic


def mann_whitney_u(query: Any, reference: Any) -> float:
    """U = #{(q, r): q > r} + 0.5 #{(q, r): q = r} over query and reference scores."""
    q = np.asarray(query, dtype=np.float64)
    r = np.sort(np.asarray(reference, dtype=np.float64))
    below = np.searchsorted(r, q, side="left")
    tied = np.searchsorted(r, q, side="right") - below
    return float(below.sum() + 0.5 * tied.sum())


def _tie_groups(pooled: np.ndarray) -> tuple[int, ...]:
    """Sizes of the groups of equal values in the pooled scores, from the lowest value up."""
    _, counts = np.unique(pooled, return_counts=True)
    return tuple(int(c) for c in counts)


@lru_cache(maxsize=64)
def null_counts(n: int, groups: tuple[int, ...]) -> np.ndarray:
    """How many of the C(N, n) ways to pick the n query positions among the pooled scores give
    each value of 2U (index 0 .. 2 n m), for pooled scores with tie groups of sizes ``groups``
    (ascending values; N = sum(groups), m = N - n).

    Under the null every choice of which pooled scores are the query's is equally likely, so
    these counts, divided by C(N, n), are U's exact null distribution given the ties. The
    count walks the groups from the lowest value up; its state is how many query scores lie in
    the groups seen so far. k query scores in a group of size s above b reference scores add
    k (2 b + s - k) to 2U: each outscores the b below and ties with the s - k reference scores
    beside it.
    """
    total = sum(groups)
    m = total - n
    if n < 1 or m < 1:
        raise DataError(f"The collection test needs at least one query and one reference score; got {n} and {m}.")
    width = 2 * n * m + 1
    counts = np.zeros((n + 1, width))
    counts[0, 0] = 1.0
    seen = 0
    for s in groups:
        new = np.zeros_like(counts)
        # At most m reference scores can lie below, so at least seen - m query scores do.
        for a in range(max(0, seen - m), min(n, seen) + 1):
            row = counts[a]
            if not row.any():
                continue
            below = seen - a
            for k in range(max(0, s - (m - below)), min(s, n - a) + 1):
                shift = k * (2 * below + s - k)
                new[a + k, shift:] += math.comb(s, k) * row[: width - shift]
        counts = new
        seen += s
    return counts[n]


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_p(query: Any, reference: Any, *, method: str = "auto") -> tuple[float, float, str]:
    """(U, one-sided p-value, method) for H1: query scores tend to be higher than reference scores.

    ``method`` is "exact" (the null distribution counted given the ties), "normal" (the
    tie-corrected normal approximation with a continuity correction) or "auto" (exact up to
    :data:`EXACT_MAX_PAIRS` pairs).
    """
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, m = q.size, r.size
    if method == "auto":
        method = "exact" if n * m <= EXACT_MAX_PAIRS else "normal"
    if method not in ("exact", "normal"):
        raise SimaError(f"method must be 'auto', 'exact' or 'normal', got {method!r}.")
    u = mann_whitney_u(q, r)
    pooled = np.concatenate([q, r])
    groups = _tie_groups(pooled)
    if method == "exact":
        counts = null_counts(n, groups)
        return u, float(counts[int(round(2 * u)):].sum() / counts.sum()), method
    return u, _normal_p(u, n, m, groups), method


def _normal_p(u: float, n: int, m: int, groups: tuple[int, ...]) -> float:
    total = n + m
    ties = sum(t ** 3 - t for t in groups)
    variance = n * m / 12.0 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:  # every score equal: nothing to tell the two sets apart
        return 1.0
    return _normal_sf((u - n * m / 2.0 - 0.5) / math.sqrt(variance))


def smallest_p(n: int, m: int, method: str) -> float:
    """The smallest p-value the test can give for n query and m reference scores without ties."""
    if method == "exact":
        return 1.0 / math.comb(n + m, n)
    return _normal_p(float(n * m), n, m, (1,) * (n + m))


def exact_false_positive_rate(n: int, m: int, alpha: float, *, method: str = "auto") -> float:
    """The test's true false-positive rate at ``alpha`` for n query and m reference scores without
    ties: the exact null probability of every U whose p-value (by ``method``) is at most alpha.

    For the exact method it is at most alpha by construction; for the normal approximation it
    measures how far the approximation is from alpha, with no simulation noise.
    """
    if method == "auto":
        method = "exact" if n * m <= EXACT_MAX_PAIRS else "normal"
    groups = (1,) * (n + m)
    counts = null_counts(n, groups)[::2]  # without ties 2U is even
    prob = counts / counts.sum()
    if method == "exact":
        p = np.cumsum(prob[::-1])[::-1]
    else:
        p = np.array([_normal_p(float(u), n, m, groups) for u in range(prob.size)])
    return float(prob[p <= alpha].sum())


# --------------------------------------------------------------------------- power


def images_needed(per_image_auc: float | None, alpha: float, *, m: int | None = None, power: float = POWER) -> int | None:
    """Images a collection needs for P(p < alpha) = ``power`` when each image's score beats a
    reference score with probability ``per_image_auc``, against m reference scores (m = None:
    a reference much larger than the collection).

    U / (n m) has null variance (n + m + 1) / (12 n m); requiring the AUC's excess over 0.5 to
    reach (z_{1-alpha} + z_{power}) standard deviations gives
    n = z^2 (m + 1) / (12 m d^2 - z^2) with d = AUC - 0.5, or z^2 / (12 d^2) for m large.
    None when no collection size suffices (AUC at or below 0.5, or a reference too small).
    """
    alpha = metrics.check_fraction(alpha, "alpha", one_allowed=False)
    if per_image_auc is None or not per_image_auc > 0.5:
        return None
    normal = NormalDist()
    z = normal.inv_cdf(1.0 - alpha) + normal.inv_cdf(power)
    d = float(per_image_auc) - 0.5
    if m is None:
        return max(1, math.ceil(z * z / (12.0 * d * d)))
    denominator = 12.0 * m * d * d - z * z
    if denominator <= 0:
        return None
    return max(1, math.ceil(z * z * (m + 1) / denominator))


# --------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class CollectionResult:
    """The collection test's answer; ``to_dict`` gives the CLI's JSON."""

    n: int
    m: int
    t: int | None
    attack: str | None
    p_value: float
    auc: float
    ci_low: float | None
    ci_high: float | None
    verdict: str
    sentence: str
    images_needed: int | None
    power_sentence: str
    alpha: float
    method: str
    per_image_auc: float | None = None
    calibration: str | None = None
    overlap: int = 0
    #: The membership scores tested (higher = more member-like), for drawing; not in the JSON.
    collection_scores: tuple[float, ...] = field(default=(), repr=False)
    reference_scores: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["collection_scores"], out["reference_scores"]
        return out

    def summary(self) -> str:
        ci = "" if self.ci_low is None else f" [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        lines = [
            f"{self.n} collection images against {self.m} reference non-members"
            + (f" ({self.attack}, t = {self.t})" if self.attack is not None else ""),
        ]
        if self.calibration:
            lines.append(f"t and attack: {self.calibration}")
        if self.overlap:
            lines.append(overlap_sentence(self.overlap))
        lines += [
            f"p-value {self.p_value:.3g} (one-sided Mann-Whitney U, {self.method}); AUC {self.auc:.3f}{ci}",
            self.sentence,
            self.power_sentence,
        ]
        return "\n".join(lines)


def overlap_sentence(count: int) -> str:
    return (f"{count} collection image{'s are' if count > 1 else ' is'} also in the reference (same content); "
            f"{'they were' if count > 1 else 'it was'} left out of the reference.")


def power_sentence(per_image_auc: float | None, needed: int | None, alpha: float, m: int) -> str:
    if per_image_auc is None:
        return "Images needed: unknown, because no audit of this model, attack and t gives a per-image AUC."
    if needed is None:
        return (f"At this model's per-image AUC of {per_image_auc:.3f}, no collection size reaches p < {alpha:g} "
                f"with probability {POWER:g} against {m} reference non-members"
                + ("" if per_image_auc > 0.5 else " (the attack does not separate members at this t)") + ".")
    return (f"At this model's per-image AUC of {per_image_auc:.3f}, about {needed} images are needed for "
            f"p < {alpha:g} with probability {POWER:g} (against {m} reference non-members).")


def collection_test(
    query_scores: Any,
    reference_scores: Any,
    *,
    alpha: float = DEFAULT_ALPHA,
    per_image_auc: float | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    method: str = "auto",
    t: int | None = None,
    attack: str | None = None,
    calibration: str | None = None,
    overlap: int = 0,
) -> CollectionResult:
    """Test whether the query's membership scores are higher than the reference's.

    ``n_bootstrap=0`` skips the AUC's confidence interval (the benchmark's many draws need
    only the p-value). ``per_image_auc`` is the attack's AUC on single images of this model
    at this t, from an audit of other images; it feeds the power statement.
    """
    alpha = metrics.check_fraction(alpha, "alpha", one_allowed=False)
    q = _scores(query_scores, "collection")
    r = _scores(reference_scores, "reference")
    n, m = q.size, r.size
    u, p, used = mann_whitney_p(q, r, method=method)
    auc = u / (n * m)
    low = high = None
    if n_bootstrap:
        estimate = metrics.evaluate(
            membership_scores=np.concatenate([q, r]), labels=np.r_[np.ones(n), np.zeros(m)],
            n_bootstrap=n_bootstrap, seed=seed,
        ).auc
        low, high = estimate.ci_low, estimate.ci_high
    floor = smallest_p(n, m, used)
    relative = (f"one-sided Mann-Whitney U of {n} collection images against {m} reference non-members "
                f"scored with the same model, attack and t")
    if floor > alpha:
        verdict = "cannot decide"
        sentence = (f"Cannot decide at alpha = {alpha:g}: with {n} images and {m} reference non-members the "
                    f"smallest possible p-value is {floor:.3g}; add images to the collection or to the reference "
                    f"(p = {p:.3g}).")
    elif p <= alpha:
        verdict = "likely used"
        sentence = (f"Likely used in training: the collection scores more member-like than the reference "
                    f"(p = {p:.3g} <= alpha = {alpha:g}, AUC {auc:.3f}; {relative}). About {100 * alpha:g}% of "
                    "collections of images the model never saw would be flagged this way.")
    else:
        verdict = "not flagged"
        sentence = (f"Not flagged: p = {p:.3g} > alpha = {alpha:g} (AUC {auc:.3f}; {relative}). This does not "
                    "show that the images were not used: a model that generalises leaks little per image.")
    needed = images_needed(per_image_auc, alpha, m=m)
    return CollectionResult(
        n=n, m=m, t=t, attack=attack, p_value=p, auc=auc, ci_low=low, ci_high=high, verdict=verdict,
        sentence=sentence, images_needed=needed, power_sentence=power_sentence(per_image_auc, needed, alpha, m),
        alpha=alpha, method=used, per_image_auc=per_image_auc, calibration=calibration, overlap=overlap,
        collection_scores=tuple(q.tolist()), reference_scores=tuple(r.tolist()),
    )


def _scores(values: Any, what: str) -> np.ndarray:
    raw = np.asarray(values)
    if raw.dtype.kind not in "biuf":
        raise DataError(f"The {what} scores must be real numbers.")
    arr = raw.astype(np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError(f"The {what} is empty: give at least one image.")
    if not np.isfinite(arr).all():
        raise DataError(f"Some {what} scores are NaN or infinite; drop those images and run again.")
    return arr


# --------------------------------------------------------------------------- from images


def check_collection(
    model,
    images,
    reference,
    reference_ids,
    *,
    calibration,
    alpha: float = DEFAULT_ALPHA,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    batch_size: int | None = None,
    cache=None,
) -> CollectionResult:
    """The collection test of [-1, 1] ``images`` against ``reference`` images of known non-members,
    at the attack and t of ``calibration`` (a :class:`core.scoring.Calibration`).

    Reference images whose content is also in the collection are left out of the reference and
    counted in the result's ``overlap``.
    """
    from core.attacks import get_attack
    from core.scoring import statistics_at, without_overlap

    reference, reference_ids, overlap = without_overlap(reference, reference_ids, images)
    attack = get_attack(calibration.attack)

    def stats(batch):
        return statistics_at(model, batch, attack, calibration.t, seed=seed, batch_size=batch_size, cache=cache).numpy()

    return collection_from_statistics(
        stats(images), stats(reference), calibration=calibration, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed,
        overlap=overlap,
    )


def collection_from_statistics(
    image_stats, reference_stats, *, calibration, alpha: float = DEFAULT_ALPHA, n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0, overlap: int = 0,
) -> CollectionResult:
    """The collection test of raw statistics at the attack and t of ``calibration``, however they
    were computed (here, or by the Ray engine); ``overlap`` counts reference images left out
    because they are also in the collection."""
    from core.attacks import get_attack

    member_when = get_attack(calibration.attack).member_when
    return collection_test(
        metrics.membership_scores(statistic=np.asarray(image_stats), member_when=member_when),
        metrics.membership_scores(statistic=np.asarray(reference_stats), member_when=member_when), alpha=alpha,
        per_image_auc=calibration.per_image_auc, n_bootstrap=n_bootstrap, seed=seed, t=calibration.t,
        attack=calibration.attack, calibration=calibration.source, overlap=overlap,
    )
