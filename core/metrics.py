"""Membership metrics (docs/methods.md, section 4), calibrated single-image verdicts (section 5), and
paired comparisons of two attacks on the same samples.

Conventions used throughout:

- Members are the positive class (label 1), non-members are label 0.
- Every metric takes *membership scores*, where higher means "more likely a member".
  ``membership_scores`` is the one place where a raw attack statistic becomes such a score.
- A threshold ``tau`` flags a sample as a member when ``score >= tau``.
- Functions that take both labels and scores take them in scikit-learn's order,
  ``(labels, scores)``, as ``roc_auc_score(y_true, y_score)`` does.
- ROC curves use every distinct score as a threshold, never a fixed grid, so outlying scores
  cannot distort them.
- TPR at a target FPR only uses ROC points whose realised FPR is at or below the target, and
  reports that realised FPR and the threshold beside the TPR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from core.errors import DataError, SimaError

#: Bound on the elements of one bootstrap work array, so memory stays near 100 MB whatever
#: the sample size: resamples are processed in chunks of this many (resample, value) cells.
_BOOTSTRAP_CELLS = 2_000_000

#: Bootstrap resamples behind every confidence interval, unless a caller asks otherwise.
N_BOOTSTRAP = 1000

#: Below this many members or non-members, a bootstrap interval says little (see
#: :func:`small_sample_warning`).
MIN_CI_SAMPLES = 25

#: The two target FPRs every report carries (docs/methods.md, section 4).
_REPORTED_FPRS = (0.01, 0.001)


# --------------------------------------------------------------------------- conversion


def membership_scores(statistic: Any, member_when: str) -> np.ndarray:
    """Turn a raw attack statistic into membership scores (float64, higher = member).

    ``member_when`` is the attack's direction: "lower" (a small statistic means member, so
    the score is its negative) or "higher" (the score is the statistic itself). Works on any
    shape, e.g. an (N, timesteps) sweep. Non-finite values pass through; the metrics reject
    them with a message.
    """
    if member_when not in ("lower", "higher"):
        raise SimaError(f'member_when must be "lower" or "higher", got {member_when!r}.')
    arr = np.asarray(statistic)
    if arr.dtype.kind in "USO" or np.iscomplexobj(arr):
        raise DataError(f"Attack statistics must be real numbers, got values of type {arr.dtype}.")
    arr = np.array(arr, dtype=np.float64)
    return -arr if member_when == "lower" else arr


# --------------------------------------------------------------------------- validation


def _as_1d(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{what} must be a flat (1-D) list of numbers, got shape {arr.shape}.")
    return arr


def _finite_scores(values: Any, what: str = "scores") -> np.ndarray:
    """1-D float64 copy of ``values``; DataError for text, complex, NaN or infinite entries."""
    arr = _as_1d(values, what)
    if arr.dtype.kind in "US" or np.iscomplexobj(arr):
        raise DataError(f"{what} must be real numbers, got values of type {arr.dtype}.")
    try:
        arr = np.array(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be real numbers; some entries could not be read as numbers.") from None
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise DataError(
            f"{bad} of {arr.size} {what} are NaN or infinite; fix or drop those samples and run again."
        )
    return arr


def _validate(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked (scores float64, labels bool) for a labelled evaluation; DataError otherwise."""
    s = _as_1d(scores, "scores")
    y = _as_1d(labels, "labels")
    if s.size == 0:
        raise DataError("No scores to evaluate: give at least one member and one non-member.")
    if s.size != y.size:
        raise DataError(f"Got {s.size} scores but {y.size} labels; give exactly one label per score.")
    if y.dtype.kind not in "biuf":
        raise DataError(f"Labels must be 1 (member) or 0 (non-member), got values of type {y.dtype}.")
    not_binary = ~np.isin(y, (0, 1))
    if not_binary.any():
        example = y[not_binary][0]
        raise DataError(
            f"{int(not_binary.sum())} labels are neither 0 nor 1 (e.g. {example!r}); "
            "use 1 for members and 0 for non-members."
        )
    s = _finite_scores(s)
    y = y.astype(bool)
    n_members = int(y.sum())
    if n_members == 0 or n_members == y.size:
        present = "members" if n_members else "non-members"
        raise DataError(
            f"All {y.size} samples are {present}; membership metrics need both members (label 1) "
            "and non-members (label 0)."
        )
    return s, y


def check_fraction(value: float, name: str, *, one_allowed: bool = True) -> float:
    """``value`` as a float in (0, 1] (or (0, 1) without ``one_allowed``), else a SimaError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SimaError(f"{name} must be a number between 0 and 1, got {value!r}.")
    value = float(value)
    if not (0.0 < value <= 1.0 if one_allowed else 0.0 < value < 1.0):
        bound = "at most 1" if one_allowed else "below 1"
        raise SimaError(f"{name} must be above 0 and {bound} (e.g. 0.01), got {value}.")
    return value


# --------------------------------------------------------------------------- point metrics


def roc(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over every distinct score, members positive.

    Thresholds decrease; point i flags ``score >= thresholds[i]``. ``thresholds[0]`` is +inf
    (the point that flags nothing, FPR = TPR = 0), as in scikit-learn.
    """
    s, y = _validate(scores, labels)
    fpr, tpr, thresholds = roc_curve(y, s, pos_label=True, drop_intermediate=False)
    return fpr, tpr, thresholds


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC: P(member score > non-member score) + 0.5 P(tie)."""
    s, y = _validate(scores, labels)
    return float(roc_auc_score(y, s))


def _asr_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def asr(labels: Any, scores: Any) -> float:
    """Attack success rate: the best balanced accuracy, max over thresholds of (TPR + 1 - FPR) / 2."""
    fpr, tpr, _ = roc(scores=scores, labels=labels)
    return _asr_from_roc(fpr, tpr)


@dataclass(frozen=True)
class TprAtFpr:
    """The highest TPR whose realised FPR is at or below ``target_fpr``.

    ``threshold`` flags ``score >= threshold``. It is a finite float, never scikit-learn's
    +inf: when the best point flags nothing it is the smallest float above every score (+inf
    only if the top score is the largest float; ``to_dict`` writes that as None). When not
    ``measurable``, value,
    realised_fpr and threshold are None and ``reason`` says why.
    """

    value: float | None
    realised_fpr: float | None
    threshold: float | None
    target_fpr: float
    measurable: bool
    reason: str | None = None


def _min_count(fraction: float) -> int:
    """Smallest n with 1 / n <= fraction, by the same float test the callers use."""
    n = max(1, math.ceil(1.0 / fraction))
    while 1.0 / n > fraction:
        n += 1
    while n > 1 and 1.0 / (n - 1) <= fraction:
        n -= 1
    return n


def _not_measurable_reason(n_nonmembers: int, target_fpr: float) -> str | None:
    # With fewer non-members, the only ROC point within the target is FPR = 0, so a "TPR at
    # target" would really be a TPR at zero FPR: refuse it rather than print it.
    if 1.0 / n_nonmembers <= target_fpr:
        return None
    needed = _min_count(target_fpr)
    return (
        f"not measurable: TPR at {_pct(target_fpr)} FPR needs at least {needed} non-members "
        f"so that a single false positive stays within {_pct(target_fpr)}, but there are only {n_nonmembers}"
    )


def tpr_at_fpr(labels: Any, scores: Any, target_fpr: float) -> TprAtFpr:
    """Highest TPR with realised FPR <= ``target_fpr``, with that FPR and its threshold."""
    target_fpr = check_fraction(target_fpr, "target_fpr")
    s, y = _validate(scores, labels)
    reason = _not_measurable_reason(int((~y).sum()), target_fpr)
    if reason is not None:
        return TprAtFpr(None, None, None, target_fpr, False, reason)
    fpr, tpr, thresholds = roc_curve(y, s, pos_label=True, drop_intermediate=False)
    # fpr rises along the curve, so the allowed points are a prefix; tpr is non-decreasing, so
    # the best TPR is at the prefix's end, and its first occurrence has the lowest FPR.
    allowed = int(np.searchsorted(fpr, target_fpr, side="right"))
    best = int(np.searchsorted(tpr[:allowed], tpr[allowed - 1], side="left"))
    threshold = float(thresholds[best])
    if not np.isfinite(threshold):
        threshold = float(np.nextafter(s.max(), np.inf))
    return TprAtFpr(float(tpr[best]), float(fpr[best]), threshold, target_fpr, True)


# --------------------------------------------------------------------------- bootstrap


def _resample_stats(
    member_codes: np.ndarray,
    nonmember_codes: np.ndarray,
    n_values: int,
    member_idx: np.ndarray,
    nonmember_idx: np.ndarray,
    target_fprs: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """AUC, ASR and TPR@FPR of each resample, all at once.

    Scores are given as codes: 0 for the highest distinct score, 1 for the next, ... Row b of
    ``member_idx`` / ``nonmember_idx`` picks that resample's members / non-members. Counting
    how many picks fall on each code gives every resample's ROC at every distinct score of the
    full data in two cumulative sums; a value absent from a resample only repeats a point.
    """
    b, n1 = member_idx.shape
    n0 = nonmember_idx.shape[1]
    offset = (np.arange(b) * n_values)[:, None]

    def counts(codes: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.bincount((codes[idx] + offset).ravel(), minlength=b * n_values).reshape(b, n_values)

    c1, c0 = counts(member_codes, member_idx), counts(nonmember_codes, nonmember_idx)
    tp, fp = np.cumsum(c1, axis=1), np.cumsum(c0, axis=1)
    # Mann-Whitney in exact integers (doubled): a member beats non-members below its value,
    # ties count half.
    wins2 = np.sum(c1 * (2 * (n0 - fp) + c0), axis=1)
    aucs = wins2 / (2.0 * n1 * n0)
    tpr, fpr = tp / n1, fp / n0
    # The flag-nothing point scores (0 + 1 - 0) / 2 = 0.5.
    asrs = np.maximum(np.max((tpr + 1.0 - fpr) / 2.0, axis=1), 0.5)
    tprs = []
    for target in target_fprs:
        allowed = np.sum(fpr <= target, axis=1)
        last = np.take_along_axis(tpr, np.maximum(allowed - 1, 0)[:, None], axis=1)[:, 0]
        tprs.append(np.where(allowed > 0, last, 0.0))
    return aucs, asrs, tprs


def _bootstrap(
    s: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int, target_fprs: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """AUC, ASR and TPR@FPR over ``n_bootstrap`` stratified resamples, seeded by ``seed``."""
    values, inverse = np.unique(s, return_inverse=True)
    codes = (values.size - 1) - inverse.reshape(-1)
    # Sorting makes the resamples, and so the CIs, independent of the input order.
    member_codes, nonmember_codes = np.sort(codes[y]), np.sort(codes[~y])
    n1, n0 = member_codes.size, nonmember_codes.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(n1, n0, values.size))
    parts = []
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        member_idx = rng.integers(0, n1, size=(b, n1))
        nonmember_idx = rng.integers(0, n0, size=(b, n0))
        parts.append(_resample_stats(member_codes, nonmember_codes, values.size, member_idx, nonmember_idx, target_fprs))
    aucs = np.concatenate([p[0] for p in parts])
    asrs = np.concatenate([p[1] for p in parts])
    tprs = [np.concatenate([p[2][k] for p in parts]) for k in range(len(target_fprs))]
    return aucs, asrs, tprs


def _percentile_ci(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- results


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap CI (None when not computed or not measurable).

    TPR estimates carry ``target_fpr``, the realised FPR and threshold of the point estimate,
    and ``measurable`` / ``reason``; for AUC and ASR those stay at their defaults.
    """

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    target_fpr: float | None = None
    realised_fpr: float | None = None
    threshold: float | None = None
    measurable: bool = True
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: {value, ci_low, ci_high}, plus realised_fpr, threshold, measurable
        and reason for a TPR; None stands for anything not measured or not finite."""
        out: dict[str, Any] = {
            "value": _json_float(self.value),
            "ci_low": _json_float(self.ci_low),
            "ci_high": _json_float(self.ci_high),
        }
        if self.target_fpr is not None:
            out.update(
                realised_fpr=_json_float(self.realised_fpr),
                threshold=_json_float(self.threshold),
                measurable=self.measurable,
                reason=self.reason,
            )
        return out

    def describe(self) -> str:
        """Short text such as "0.912 [0.890, 0.931]"."""
        if not self.measurable or self.value is None:
            return self.reason or "not measurable"
        text = f"{self.value:.3f}"
        if self.ci_low is not None and self.ci_high is not None:
            text += f" [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        if self.target_fpr is not None and self.realised_fpr is not None:
            text += f" (realised FPR {_pct(self.realised_fpr)})"
        return text


@dataclass(frozen=True)
class Metrics:
    """AUC, ASR, TPR@1%FPR and TPR@0.1%FPR with CIs, and how they were computed."""

    auc: Estimate
    asr: Estimate
    tpr_at_1pct_fpr: Estimate
    tpr_at_0_1pct_fpr: Estimate
    n_members: int
    n_nonmembers: int
    n_bootstrap: int
    seed: int
    confidence: float

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-safe dict keyed auc, asr, tpr_at_1pct_fpr, tpr_at_0_1pct_fpr."""
        return {
            "auc": self.auc.to_dict(),
            "asr": self.asr.to_dict(),
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr.to_dict(),
            "tpr_at_0_1pct_fpr": self.tpr_at_0_1pct_fpr.to_dict(),
        }

    def summary(self) -> str:
        """A few lines of plain text for a terminal or a log."""
        if self.n_bootstrap:
            ci = f"{_pct(self.confidence)} CIs from {self.n_bootstrap} bootstrap resamples (seed {self.seed})"
        else:
            ci = "no confidence intervals (n_bootstrap = 0)"
        return "\n".join(
            [
                f"{self.n_members} members, {self.n_nonmembers} non-members; {ci}",
                f"AUC          {self.auc.describe()}",
                f"ASR          {self.asr.describe()}",
                f"TPR@1%FPR    {self.tpr_at_1pct_fpr.describe()}",
                f"TPR@0.1%FPR  {self.tpr_at_0_1pct_fpr.describe()}",
            ]
        )


def evaluate(
    labels: Any,
    membership_scores: Any,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
) -> Metrics:
    """All metrics of docs/methods.md, section 4 with percentile bootstrap CIs.

    Each resample draws members and non-members separately, with replacement, keeping both
    counts, so every resample has both classes and the same measurability as the full data:
    AUC and ASR are always defined, and a TPR that is not measurable on the full data gets
    no CI at all (no resample is dropped). ``n_bootstrap=0`` gives CIs of None. The same
    inputs and seed give the same numbers, whatever the order of the samples.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise SimaError(f"n_bootstrap must be a whole number, 0 or more, got {n_bootstrap!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimaError(f"seed must be a whole number, 0 or more, got {seed!r}.")
    confidence = check_fraction(confidence, "confidence")
    if confidence == 1.0:
        raise SimaError("confidence must be below 1 (e.g. 0.95).")
    s, y = _validate(membership_scores, labels)
    fpr, tpr, _ = roc_curve(y, s, pos_label=True, drop_intermediate=False)
    point_auc, point_asr = float(roc_auc_score(y, s)), _asr_from_roc(fpr, tpr)
    points = [tpr_at_fpr(scores=s, labels=y, target_fpr=target) for target in _REPORTED_FPRS]

    auc_ci = asr_ci = (None, None)
    tpr_cis: list[tuple[float | None, float | None]] = [(None, None)] * len(points)
    if n_bootstrap:
        aucs, asrs, tprs = _bootstrap(s, y, int(n_bootstrap), seed, _REPORTED_FPRS)
        auc_ci, asr_ci = _percentile_ci(aucs, confidence), _percentile_ci(asrs, confidence)
        tpr_cis = [_percentile_ci(t, confidence) if p.measurable else (None, None) for p, t in zip(points, tprs)]

    tpr_estimates = [
        Estimate(p.value, low, high, p.target_fpr, p.realised_fpr, p.threshold, p.measurable, p.reason)
        for p, (low, high) in zip(points, tpr_cis)
    ]
    return Metrics(
        auc=Estimate(point_auc, *auc_ci),
        asr=Estimate(point_asr, *asr_ci),
        tpr_at_1pct_fpr=tpr_estimates[0],
        tpr_at_0_1pct_fpr=tpr_estimates[1],
        n_members=int(y.sum()),
        n_nonmembers=int((~y).sum()),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        confidence=confidence,
    )


def small_sample_warning(n_members: int, n_nonmembers: int) -> str | None:
    """A warning when either class has fewer than ``MIN_CI_SAMPLES`` samples, else None.

    A bootstrap resamples the same few images, so on a small sample its interval is far too
    narrow: every resample of a perfectly separated set is perfectly separated, and the
    interval is [1, 1], although with random scores a perfect AUC happens with probability
    1 / C(n_members + n_nonmembers, n_members) (every ordering of the scores equally likely).
    """
    if min(n_members, n_nonmembers) >= MIN_CI_SAMPLES:
        return None
    orderings = math.comb(n_members + n_nonmembers, n_members)
    return (
        f"Only {n_members} members and {n_nonmembers} non-members are measured: too few for these intervals to "
        f"mean much. The bootstrap resamples the same few images, so its intervals come out far too narrow "
        f"(with scores of pure chance, a perfect AUC on this many images happens once in {orderings:,}, and its "
        f"interval would still read [1.000, 1.000]). Give at least {MIN_CI_SAMPLES} of each."
    )


# --------------------------------------------------------------------------- calibration


def _reference(reference_scores: Any) -> np.ndarray:
    ref = _finite_scores(reference_scores, "reference scores")
    if ref.size == 0:
        raise DataError("The reference set is empty: score at least one known non-member with the same model, attack and t.")
    return np.sort(ref)


def _at_or_above(sorted_ref: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return sorted_ref.size - np.searchsorted(sorted_ref, scores, side="left")


def p_values(scores: Any, reference_scores: Any) -> np.ndarray:
    """Empirical p-values (1 + #{reference >= s}) / (1 + n_reference) for membership scores.

    The reference holds membership scores of known non-members under the same model, attack
    and t. A small p-value means few non-members are at least as member-like. Output has the shape of
    ``scores``.
    """
    ref = _reference(reference_scores)
    arr = np.asarray(scores)
    if arr.dtype.kind in "USO" or np.iscomplexobj(arr):
        raise DataError(f"scores must be real numbers, got values of type {arr.dtype}.")
    arr = np.asarray(arr, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise DataError(f"{bad} of {arr.size} scores are NaN or infinite; fix or drop those samples and run again.")
    return (1.0 + _at_or_above(ref, arr)) / (1.0 + ref.size)


def threshold_at_fpr(reference_scores: Any, fpr: float) -> float:
    """Lowest threshold that flags (score >= threshold) at most ``fpr`` of the reference.

    The reference holds membership scores of known non-members. When no reference score can
    serve (ties at the top), the threshold is the smallest float above them all. An ``fpr``
    below 1 / n_reference cannot be certified by the reference and raises DataError.
    """
    fpr = check_fraction(fpr, "fpr")
    ref = _reference(reference_scores)
    n = ref.size
    if 1.0 / n > fpr:
        raise DataError(
            f"A reference of {n} non-members can only check FPRs of 1/{n} = {_pct(1.0 / n)} or more; "
            f"score at least {_min_count(fpr)} reference non-members or choose a larger FPR."
        )
    values = np.unique(ref)
    # The flagged fraction falls as the threshold rises, so the allowed values are a suffix.
    allowed = _at_or_above(ref, values) / n <= fpr
    if not allowed.any():
        return float(np.nextafter(values[-1], np.inf))
    return float(values[np.argmax(allowed)])


@dataclass(frozen=True)
class Verdict:
    """A calibrated answer for one image: its p-value against a reference of non-members."""

    score: float
    p_value: float
    alpha: float
    likely_member: bool
    n_reference: int
    achievable: bool
    sentence: str


def verdict(score: float, reference_scores: Any, alpha: float) -> Verdict:
    """Flag ``score`` (a membership score) as likely member when its p-value is <= alpha.

    ``alpha`` is the target FPR: about that fraction of true non-members would be flagged.
    With n reference scores the smallest p-value is 1 / (n + 1); an alpha below it cannot be
    met, and the verdict says so instead of flagging.
    """
    alpha = check_fraction(alpha, "alpha")
    score = float(_finite_scores([score], "score")[0])
    ref = _reference(reference_scores)
    n = ref.size
    at_or_above = int(_at_or_above(ref, np.array([score]))[0])
    p = (1.0 + at_or_above) / (1.0 + n)
    achievable = 1.0 / (n + 1) <= alpha
    likely = achievable and p <= alpha
    relative = f"this p-value is relative to the {n} reference non-members scored with the same model, attack and timestep"
    if not achievable:
        sentence = (
            f"Cannot decide at alpha = {alpha:g}: with {n} reference non-members the smallest possible "
            f"p-value is 1/{n + 1} = {1.0 / (n + 1):.3g}, so score at least {_min_count(alpha) - 1} "
            f"reference non-members or raise alpha (this image's p = {p:.3g})."
        )
    elif likely:
        sentence = (
            f"Likely a member: only {at_or_above} of {n} reference non-members are at least as member-like "
            f"(p = {p:.3g} <= alpha = {alpha:g}), though about {_pct(alpha)} of true non-members would "
            f"be flagged this way, and {relative}."
        )
    else:
        sentence = (
            f"Not flagged: {at_or_above} of {n} reference non-members are at least as member-like (p = {p:.3g} > "
            f"alpha = {alpha:g}), which does not prove the image was not used in training, and {relative}."
        )
    return Verdict(score, p, alpha, likely, n, achievable, sentence)


# --------------------------------------------------------------------------- comparing two attacks


@dataclass(frozen=True)
class Difference:
    """A paired difference (A minus B) of one metric, with a percentile bootstrap CI and a
    two-sided bootstrap p-value; value and the rest are None when not measurable."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    measurable: bool = True
    reason: str | None = None

    @property
    def distinguishable(self) -> bool:
        """True only when the CI lies entirely on one side of 0."""
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _json_float(self.value), "ci_low": _json_float(self.ci_low), "ci_high": _json_float(self.ci_high),
            "p_value": _json_float(self.p_value), "measurable": self.measurable, "reason": self.reason,
        }

    def describe(self) -> str:
        if not self.measurable or self.value is None:
            return self.reason or "not measurable"
        return f"{self.value:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], p = {self.p_value:.3g}"


@dataclass(frozen=True)
class Comparison:
    """Two attacks' scores on the same samples, compared by a paired, stratified bootstrap."""

    name_a: str
    name_b: str
    auc_a: float
    auc_b: float
    auc: Difference
    tpr_at_1pct_fpr: Difference
    n_members: int
    n_nonmembers: int
    n_bootstrap: int
    seed: int
    confidence: float

    def order(self, metric: str = "auc") -> str:
        """'A > B' or 'B > A' when the difference's CI excludes 0, else 'not distinguishable at 95%'."""
        diff: Difference = getattr(self, metric)
        if not diff.distinguishable:
            return f"not distinguishable at {_pct(self.confidence)}"
        return f"{self.name_a} > {self.name_b}" if diff.value > 0 else f"{self.name_b} > {self.name_a}"

    def sentence(self) -> str:
        """The comparison in one sentence, led by the AUC verdict."""
        first = self.order("auc")
        if not self.auc.distinguishable:
            first = f"{self.name_a} and {self.name_b} are {first}"
        tpr = self.tpr_at_1pct_fpr
        tpr_text = (
            f"TPR@1%FPR difference {tpr.describe()} ({self.order('tpr_at_1pct_fpr')})" if tpr.measurable
            else f"TPR@1%FPR difference {tpr.reason}"
        )
        return (
            f"{first} by AUC ({self.name_a} minus {self.name_b}: {self.auc.describe()}); {tpr_text}; paired bootstrap "
            f"over the same {self.n_members} members and {self.n_nonmembers} non-members ({self.n_bootstrap} resamples)."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.name_a, "b": self.name_b, "auc_a": _json_float(self.auc_a), "auc_b": _json_float(self.auc_b),
            "auc_difference": self.auc.to_dict(), "tpr_at_1pct_fpr_difference": self.tpr_at_1pct_fpr.to_dict(),
            "verdict": self.order("auc"), "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
            "n_bootstrap": self.n_bootstrap, "seed": self.seed, "confidence": self.confidence,
        }


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank codes for _resample_stats: 0 for the highest distinct value, 1 for the next, ..."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return (distinct.size - 1) - inverse.reshape(-1), distinct.size


def _paired_resample_stats(
    a: np.ndarray, b: np.ndarray, y: np.ndarray, member_idx: np.ndarray, nonmember_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, AUC_A - AUC_B and TPR@1%FPR_A - TPR@1%FPR_B, both attacks on the same picks.

    Row r of ``member_idx`` / ``nonmember_idx`` indexes the members / non-members (in their
    order within ``a``, ``b`` and ``y``) of resample r.
    """
    out = []
    for scores in (a, b):
        codes, n_values = _codes(scores)
        aucs, _, (tprs,) = _resample_stats(codes[y], codes[~y], n_values, member_idx, nonmember_idx, (0.01,))
        out.append((aucs, tprs))
    (auc_a, tpr_a), (auc_b, tpr_b) = out
    return auc_a - auc_b, tpr_a - tpr_b


def _two_sided_p(diffs: np.ndarray) -> float:
    """Twice the smaller share of resampled differences on either side of 0 (each counting 0),
    with one added to both counts so that a finite number of resamples never gives p = 0."""
    b = diffs.size
    below, above = np.count_nonzero(diffs <= 0), np.count_nonzero(diffs >= 0)
    return float(min(1.0, 2.0 * (1 + min(below, above)) / (b + 1)))


def compare(
    labels: Any,
    scores_a: Any,
    scores_b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Paired, stratified bootstrap of AUC_A - AUC_B and of the TPR@1%FPR difference.

    ``scores_a`` and ``scores_b`` are membership scores of the same samples (position i is the
    same image under both attacks), with one ``labels`` array. Every resample draws members
    and non-members separately, with replacement, and applies the same picks to both attacks,
    so what the two share (the same hard and easy images) cancels in the difference. "A > B"
    is written only when the CI of the AUC difference excludes 0; otherwise the attacks are
    "not distinguishable". Same inputs and seed give the same numbers, whatever the order of
    the samples.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise SimaError(f"A comparison needs at least 1 bootstrap resample, got {n_bootstrap!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimaError(f"seed must be a whole number, 0 or more, got {seed!r}.")
    confidence = check_fraction(confidence, "confidence")
    if confidence == 1.0:
        raise SimaError("confidence must be below 1 (e.g. 0.95).")
    a, y = _validate(scores_a, labels)
    b, _ = _validate(scores_b, labels)
    # A canonical order (by class, then both scores) makes the resamples independent of the
    # input order while keeping each sample's two scores together.
    order = np.lexsort((b, a, y))
    a, b, y = a[order], b[order], y[order]
    n1, n0 = int(y.sum()), int((~y).sum())
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // (n1 + n0))
    auc_parts, tpr_parts = [], []
    for start in range(0, int(n_bootstrap), chunk):
        r = min(chunk, int(n_bootstrap) - start)
        member_idx = rng.integers(0, n1, size=(r, n1))
        nonmember_idx = rng.integers(0, n0, size=(r, n0))
        d_auc, d_tpr = _paired_resample_stats(a, b, y, member_idx, nonmember_idx)
        auc_parts.append(d_auc)
        tpr_parts.append(d_tpr)
    d_auc, d_tpr = np.concatenate(auc_parts), np.concatenate(tpr_parts)

    auc_a, auc_b = float(roc_auc_score(y, a)), float(roc_auc_score(y, b))
    auc_diff = Difference(auc_a - auc_b, *_percentile_ci(d_auc, confidence), _two_sided_p(d_auc))
    reason = _not_measurable_reason(n0, 0.01)
    if reason is None:
        tpr_point = tpr_at_fpr(scores=a, labels=y, target_fpr=0.01).value - tpr_at_fpr(scores=b, labels=y, target_fpr=0.01).value
        tpr_diff = Difference(tpr_point, *_percentile_ci(d_tpr, confidence), _two_sided_p(d_tpr))
    else:
        tpr_diff = Difference(None, None, None, None, False, reason)
    return Comparison(
        name_a=names[0], name_b=names[1], auc_a=auc_a, auc_b=auc_b, auc=auc_diff, tpr_at_1pct_fpr=tpr_diff,
        n_members=n1, n_nonmembers=n0, n_bootstrap=int(n_bootstrap), seed=int(seed), confidence=confidence,
    )
