"""Words and orderings the pages show about core results: attack captions, comparisons of
estimates, the most and least member-like samples, a latent demo's KL weight."""

from __future__ import annotations

import numpy as np

from core.attacks import get_attack


def attack_title(name: str) -> str:
    """How people write the attack's name ("SimA", "PFAMI")."""
    return get_attack(name).title


def statistic_label(name: str) -> str:
    """What the attack's raw statistic is, for axis labels and table headers."""
    return get_attack(name).statistic_label


def attack_summary(name: str, t: int) -> str:
    """'SimA: ... (1 model query per image; members score lower)' for captions."""
    attack = get_attack(name)
    n = attack.queries_per_sample(t)
    return (
        f"{attack.blurb} ({n} model {'query' if n == 1 else 'queries'} per image; "
        f"members score {attack.member_when})"
    )


def extremes(result, t: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k most and the k least member-like samples at t (by membership score)."""
    order = np.argsort(-result.membership_scores(t), kind="stable")
    k = min(k, len(order))
    return order[:k], order[::-1][:k]


def kl_weight(manifest: dict | None) -> float | None:
    """The beta-VAE's KL weight from a latent demo's manifest, when it records one."""
    config = (manifest or {}).get("config") or {}
    value = (config.get("vae_train") or {}).get("beta")
    return float(value) if isinstance(value, (int, float)) else None


def percent(fraction: float) -> str:
    """0.01 -> '1%', 0.001 -> '0.1%'."""
    return f"{100 * fraction:g}%"


def format_p(p: float | None) -> str:
    """Every p-value on screen, one way: three significant digits ('0.0120', '0.00200', '1.00')."""
    return "" if p is None else f"{p:#.3g}"


def missed_members(result, t: int, fpr: float) -> str | None:
    """How often this model's verdict misses a member at ``fpr``, from the report half at t; None
    when the report half has too few non-members to measure that FPR."""
    from core import metrics

    mask = result.report_mask()
    point = metrics.tpr_at_fpr(scores=result.membership_scores(t)[mask], labels=result.labels[mask], target_fpr=fpr)
    if not point.measurable:
        return None
    where = f"at a {percent(fpr)} false-positive rate and t = {t}"
    if point.value >= 1:
        return f"{where.capitalize()}, this model flags every member of the report half of its split."
    missed = 1 - point.value
    return (
        f"{where[0].upper()}{where[1:]}, this model flags {point.value:.0%} of the members in the report half of its "
        f"split: about one member in {max(1, round(1 / missed))} is missed, so **Not flagged** is common even for "
        "images it was trained on."
    )


#: Tooltips of the headline metrics and of the protocol, shown wherever they appear.
METRIC_HELP = {
    "auc": "Area under the ROC curve: the chance that a random member scores as more member-like than a "
    "random non-member. 0.5 is guessing, 1 is perfect.",
    "asr": "Attack success rate: the best accuracy any single threshold reaches, with members and "
    "non-members weighted equally (the maximum over thresholds of (TPR + 1 - FPR) / 2).",
    "tpr_at_1pct_fpr": "True-positive rate at 1% false-positive rate: the fraction of members flagged by the "
    "threshold that flags at most 1% of non-members. The number that matters when false accusations are costly.",
    "tpr_at_0_1pct_fpr": "True-positive rate at 0.1% false-positive rate: as TPR@1%FPR with a ten times stricter "
    "threshold; needs at least 1,000 non-members to be measured.",
}
HALVES_HELP = (
    "Members and non-members are each split at random into two halves. The timestep is chosen on the "
    "selection half only; every number shown is measured on the other, report half, so no number is "
    "tuned to the images it is reported on."
)


def duration(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h': a duration as people say it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
