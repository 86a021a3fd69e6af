"""Scoring single images: the raw statistic, and with a reference set a calibrated verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from core import metrics
from core.attacks.base import Attack
from core.audit import image_statistics
from core.cache import ScoreCache
from core.conditioning import Conditioning
from core.errors import DataError
from core.models.base import DiffusionModel


@dataclass
class ScoreRecord:
    """One image's result. ``p_value`` and ``verdict`` need a reference set of non-members."""

    file: str
    t: int
    statistic: float
    membership_score: float
    p_value: float | None = None
    verdict: str | None = None
    explanation: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def statistics_at(
    model: DiffusionModel, images: torch.Tensor, attack: Attack, t: int, *, seed: int = 0,
    batch_size: int | None = None, cache: ScoreCache | None = None, cond: Conditioning | Sequence[str] | None = None,
) -> torch.Tensor:
    """The attack's raw statistic for [-1, 1] images at one timestep (keyed noise, as in audits)."""
    if len(images) == 0:
        raise DataError("No images to score.")
    return image_statistics(model, images, attack, [t], seed=seed, batch_size=batch_size, cache=cache, cond=cond)[:, 0]


def score_images(
    model: DiffusionModel,
    images: torch.Tensor,
    ids: Sequence[str],
    *,
    attack: Attack,
    t: int,
    reference: torch.Tensor | None = None,
    fpr: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    cache: ScoreCache | None = None,
    cond: Conditioning | Sequence[str] | None = None,
    reference_cond: Conditioning | Sequence[str] | None = None,
) -> list[ScoreRecord]:
    """Score images; with ``reference`` (known non-members) add p-values and verdicts at ``fpr``.

    ``cond`` (and ``reference_cond`` for the reference set) give a conditional model one caption
    or label per image; None is the empty condition. Compare like with like: score the
    reference in the same condition mode as the images.
    """
    stats = statistics_at(model, images, attack, t, seed=seed, batch_size=batch_size, cache=cache, cond=cond).numpy()
    scores = metrics.membership_scores(stats, attack.member_when)
    records = [ScoreRecord(str(i), int(t), float(s), float(m)) for i, s, m in zip(ids, stats, scores)]
    if reference is None:
        return records
    ref_stats = statistics_at(
        model, reference, attack, t, seed=seed, batch_size=batch_size, cache=cache, cond=reference_cond,
    ).numpy()
    ref_scores = metrics.membership_scores(ref_stats, attack.member_when)
    for record in records:
        v = metrics.verdict(record.membership_score, ref_scores, fpr)
        record.p_value = float(v.p_value)
        record.verdict = "likely member" if v.likely_member else "not flagged"
        record.explanation = v.sentence
    return records
