"""Scoring single images: the raw statistic, and with a reference set a calibrated verdict.

This module is the one implementation of a verdict that the CLI (``sima score``) and the app
(Check an image) both call: the words, the explanation sentence, the reference set (known
non-members, never including the held-out images that chose t, never including the image
itself), and Benjamini-Hochberg control of the false discovery rate over a batch. It also
says where t and the attack come from (:func:`calibrate`): a model card's audit, or a
calibration audit on the model's own split, never the images being judged.

With a reference, each image is also checked for being out of the model's domain
(:mod:`core.domain`); an image the model cannot judge gets "cannot judge" instead of a verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from core import metrics
from core.attacks.base import Attack
from core.audit import DEFAULT_TIMESTEPS, image_statistics, split_halves
from core.cache import ScoreCache
from core.conditioning import Conditioning
from core.domain import DomainReference
from core.errors import DataError, SimaError
from core.models.base import DiffusionModel

#: The words of a per-image verdict, the same in the CLI and the app.
LIKELY, NOT_FLAGGED, CANNOT_DECIDE = "likely member", "not flagged", "cannot decide"
#: ... and of an image outside the model's domain (core.domain): no verdict at all.
CANNOT_JUDGE = "cannot judge"
VERDICT_WORDS = (LIKELY, NOT_FLAGGED, CANNOT_DECIDE, CANNOT_JUDGE)


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class ImageVerdict:
    """One image's calibrated answer against a reference of known non-members."""

    p_value: float
    words: str
    sentence: str
    n_reference: int
    left_out: bool  # the image itself was in the reference and was left out of it
    adjusted_p: float | None = None  # Benjamini-Hochberg adjusted p-value, when the batch holds the FDR

    @property
    def likely_member(self) -> bool:
        return self.words == LIKELY


def benjamini_hochberg(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: an image is a discovery at FDR q when its adjusted
    p-value is <= q (Benjamini and Hochberg, 1995, the step-up procedure).

    Sorted ascending, p_(i) becomes min over j >= i of p_(j) N / j, capped at 1; the output is in
    the input's order.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return p
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise DataError("p-values must lie between 0 and 1.")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _words(v: metrics.Verdict) -> str:
    return CANNOT_DECIDE if not v.achievable else LIKELY if v.likely_member else NOT_FLAGGED


def image_verdicts(
    scores: Any,
    reference_scores: Any,
    *,
    alpha: float,
    digests: Sequence[str] | None = None,
    reference_digests: Sequence[str] | None = None,
    fdr: float | None = None,
) -> list[ImageVerdict]:
    """Verdicts for membership scores against reference membership scores (same model, attack, t).

    With digests, an image that is itself one of the reference images is left out of its own
    reference. Without ``fdr`` each image is flagged when its p-value is <= ``alpha`` (the
    per-image false-positive rate). With ``fdr``, images are flagged when their
    Benjamini-Hochberg adjusted p-value is <= ``fdr``: among the flagged images of the batch,
    the expected fraction of non-members is at most ``fdr``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference_scores, dtype=np.float64).reshape(-1)
    if digests is not None and reference_digests is not None:
        ref_digests = np.asarray(list(reference_digests), dtype=object)
        if ref_digests.size != ref.size:
            raise SimaError(f"Got {ref_digests.size} reference digests for {ref.size} reference scores.")
        keeps = [ref_digests != d for d in digests]
    else:
        keeps = [np.ones(ref.size, dtype=bool)] * scores.size
    plain = [metrics.verdict(float(s), ref[keep], alpha) for s, keep in zip(scores, keeps)]
    if fdr is None:
        return [ImageVerdict(v.p_value, _words(v), v.sentence, v.n_reference, not keep.all()) for v, keep in zip(plain, keeps)]
    fdr = metrics.check_fraction(fdr, "The false discovery rate", one_allowed=False)
    adjusted = benjamini_hochberg([v.p_value for v in plain])
    out = []
    for v, keep, adj in zip(plain, keeps, adjusted):
        n = v.n_reference
        if 1.0 / (n + 1) > fdr:
            words = CANNOT_DECIDE
            sentence = (f"Cannot decide at a false discovery rate of {fdr:g}: with {n} reference non-members the "
                        f"smallest possible p-value is 1/{n + 1} = {1.0 / (n + 1):.3g}; score more reference non-members.")
        elif adj <= fdr:
            words = LIKELY
            sentence = (f"Likely a member: Benjamini-Hochberg adjusted p = {adj:.3g} <= {fdr:g} over these "
                        f"{len(plain)} images (p = {v.p_value:.3g} against {n} reference non-members), so among the "
                        f"images flagged together, at most about {100 * fdr:g}% are expected to be non-members.")
        else:
            words = NOT_FLAGGED
            sentence = (f"Not flagged: Benjamini-Hochberg adjusted p = {adj:.3g} > {fdr:g} over these {len(plain)} "
                        f"images (p = {v.p_value:.3g} against {n} reference non-members), which does not prove the "
                        "image was not used in training.")
        out.append(ImageVerdict(v.p_value, words, sentence, n, not keep.all(), float(adj)))
    return out


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The attack and t to judge images with, fixed before those images are seen, and why."""

    attack: str
    t: int
    per_image_auc: float | None  # the attack's AUC on single images at t, on a report half
    source: str  # one sentence: where t and the attack come from
    selection_ids: tuple[str, ...] = ()  # ids of the model's split that chose t: never in a reference


def _split_ids(model: DiffusionModel) -> tuple[list[str], list[str]] | None:
    manifest = getattr(model, "manifest", None) or {}
    members, heldout = manifest.get("member_ids"), manifest.get("heldout_ids")
    if isinstance(members, list) and isinstance(heldout, list) and len(members) >= 2 and len(heldout) >= 2:
        return members, heldout
    return None


def _selection_ids(split: tuple[list[str], list[str]] | None, seed: int) -> tuple[str, ...]:
    """The ids (members and held-out) in the selection half of an audit of the model's split."""
    if split is None:
        return ()
    members, heldout = split
    chosen = split_halves(len(members), len(heldout), seed)
    return tuple(i for i, c in zip(members + heldout, chosen) if c)


def calibrate(
    model: DiffusionModel,
    *,
    attack: str | None = None,
    t: int | None = None,
    seed: int = 0,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    batch_size: int | None = None,
    cache: ScoreCache | None = None,
    progress=None,
) -> Calibration:
    """Where t and the attack come from, in this order of preference:

    1. the model card's audit (the ``check`` of a bundled model's manifest): its attack, and its
       t unless ``t`` is given;
    2. a calibration audit on the model's own split (its manifest's member and held-out ids):
       t chosen by AUC on the selection half, per-image AUC from the report half;
    3. ``t`` (and ``attack``, default SimA) as given, without a per-image AUC.

    Never the images being judged. The ids of the selection half are listed so that no reference
    includes them.
    """
    from core.attacks import get_attack
    from core.audit import run_audit

    if t is not None and (isinstance(t, bool) or int(t) != t or not 0 <= int(t) < model.num_train_timesteps):
        raise SimaError(f"t must be a whole number from 0 to {model.num_train_timesteps - 1}, got {t!r}.")
    manifest = getattr(model, "manifest", None) or {}
    card = manifest.get("check") if isinstance(manifest.get("check"), dict) else None
    split = _split_ids(model)
    if card and attack in (None, card.get("attack")) and "t" in card:
        card_seed = int(card.get("seed", 0))
        name = card.get("attack", "sima")
        if t is None or int(t) == int(card["t"]):
            return Calibration(
                name, int(card["t"]), card.get("auc"),
                f"the model card's audit: {name} at t = {card['t']}, chosen by AUC on the selection half of the "
                f"model's own split (seed {card_seed})",
                _selection_ids(split, card_seed),
            )
        auc = next((row.get("auc") for row in card.get("per_t", []) if row.get("t") == int(t)), None)
        return Calibration(
            name, int(t), auc,
            f"t = {int(t)} given by you; {name} and the per-image AUC at that t from the model card's audit"
            + ("" if auc is not None else " (which did not measure this t, so the per-image AUC is unknown)"),
            _selection_ids(split, card_seed),
        )
    name = attack or "sima"
    get_attack(name)  # an unknown name fails here, before any work
    if split is None:
        if t is None:
            raise DataError(
                f"{model.name} has no audit on its card and no known split to calibrate on; give the timestep "
                "(--t) and attack (--attack), chosen on images other than the ones you are checking."
            )
        return Calibration(name, int(t), None, f"t = {int(t)} and {name} given by you (this model has no card audit "
                           "or known split to calibrate on)")
    from core.datasets import demo_sets

    members, member_ids, heldout, heldout_ids = demo_sets(model)
    grid = [int(t)] if t is not None else list(timesteps)
    result = run_audit(
        model, members, heldout, attack=name, timesteps=grid, seed=seed, member_ids=member_ids,
        nonmember_ids=heldout_ids, batch_size=batch_size, n_bootstrap=0, progress=progress, cache=cache,
    )
    chosen = result.chosen_t
    auc = result.metrics.auc.value
    what = (f"t = {chosen} given by you; per-image AUC" if t is not None else
            f"{name} at t = {chosen}, chosen by AUC on the selection half of")
    return Calibration(
        name, chosen, auc, f"{what} a calibration audit on the model's own split (seed {seed})",
        _selection_ids(split, seed),
    )


# ----------------------------------------------------------------------------- reference sets


def demo_reference(model: DiffusionModel, calibration: Calibration) -> tuple[torch.Tensor, list[str]]:
    """The model's own held-out images, less those that chose t: the reference for 'demo'."""
    from core.datasets import demo_sets

    _, _, heldout, heldout_ids = demo_sets(model)
    excluded = set(calibration.selection_ids)
    keep = [i for i, image_id in enumerate(heldout_ids) if image_id not in excluded]
    return heldout[keep], [heldout_ids[i] for i in keep]


def without_overlap(
    reference: torch.Tensor, reference_ids: Sequence[str], images: torch.Tensor,
) -> tuple[torch.Tensor, list[str], int]:
    """The reference less every image whose content is also among ``images``, and how many left."""
    from core.hashing import row_digests

    keep = overlap_free(row_digests(reference), row_digests(images))
    return reference[keep], [reference_ids[i] for i in keep], len(reference_ids) - len(keep)


def overlap_free(reference_digests: Sequence[str], image_digests: Sequence[str]) -> list[int]:
    """Indices of the reference images whose content digest is not among the images' digests."""
    query = set(image_digests)
    keep = [i for i, d in enumerate(reference_digests) if d not in query]
    if not keep:
        raise DataError("Every reference image is also among the images checked; give other known non-members.")
    return keep


# ----------------------------------------------------------------------------- scoring


@dataclass
class ScoreRecord:
    """One image's result. ``p_value`` and ``verdict`` need a reference set of non-members.

    ``verdict`` is "likely member", "not flagged" or "cannot judge" (out of the model's domain:
    the p-value is then no evidence either way, and ``explanation`` says why).
    """

    file: str
    t: int
    statistic: float
    membership_score: float
    p_value: float | None = None
    verdict: str | None = None
    explanation: str | None = None
    adjusted_p: float | None = None

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
    fdr: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    cache: ScoreCache | None = None,
    cond: Conditioning | Sequence[str] | None = None,
    reference_cond: Conditioning | Sequence[str] | None = None,
) -> list[ScoreRecord]:
    """Score images; with ``reference`` (known non-members) add p-values and verdicts at ``fpr``
    (or, with ``fdr``, verdicts that hold the false discovery rate over these images).

    ``cond`` (and ``reference_cond`` for the reference set) give a conditional model one caption
    or label per image; None is the empty condition. Compare like with like: score the
    reference in the same condition mode as the images.
    """
    from core.hashing import row_digests

    stats = statistics_at(model, images, attack, t, seed=seed, batch_size=batch_size, cache=cache, cond=cond).numpy()
    ref_stats = None
    if reference is not None:
        ref_stats = statistics_at(
            model, reference, attack, t, seed=seed, batch_size=batch_size, cache=cache, cond=reference_cond,
        ).numpy()
    records = records_from_statistics(
        ids, stats, attack=attack, t=t, reference=ref_stats, fpr=fpr, fdr=fdr, digests=row_digests(images),
        reference_digests=None if reference is None else row_digests(reference),
    )
    if reference is not None:
        mark_out_of_domain(records, images, reference, stats, ref_stats, attack.member_when)
    return records


def records_from_statistics(
    ids: Sequence[str], stats: np.ndarray, *, attack: Attack, t: int, reference: np.ndarray | None = None,
    fpr: float = 0.01, fdr: float | None = None, digests: Sequence[str] | None = None,
    reference_digests: Sequence[str] | None = None,
) -> list[ScoreRecord]:
    """Records of raw statistics at t, however they were computed (in this process or by Ray
    workers). ``reference`` holds the statistics of known non-members, which give each image a
    p-value and a verdict (see :func:`image_verdicts`; the content digests leave an image out
    of its own reference)."""
    scores = metrics.membership_scores(statistic=stats, member_when=attack.member_when)
    records = [ScoreRecord(str(i), int(t), float(s), float(m)) for i, s, m in zip(ids, stats, scores)]
    if reference is None:
        return records
    verdicts = image_verdicts(
        scores, metrics.membership_scores(statistic=reference, member_when=attack.member_when), alpha=fpr, fdr=fdr,
        digests=digests, reference_digests=reference_digests,
    )
    for record, v in zip(records, verdicts):
        record.p_value, record.verdict, record.explanation, record.adjusted_p = v.p_value, v.words, v.sentence, v.adjusted_p
    return records


def mark_out_of_domain(
    records: Sequence[ScoreRecord], images: torch.Tensor, reference: torch.Tensor, stats: np.ndarray,
    reference_stats: np.ndarray, member_when: str,
) -> None:
    """Replace the verdict of every image the model cannot judge (:mod:`core.domain`: unlike the
    reference images, or a statistic far outside theirs) by CANNOT_JUDGE, with the reason."""
    fitted = DomainReference.fit(reference)
    if fitted is None:
        return
    for record, domain in zip(records, fitted.check(images, stats, reference_stats, member_when)):
        if not domain.judgeable:
            record.verdict, record.explanation = CANNOT_JUDGE, domain.sentence()
