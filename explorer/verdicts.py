"""Statistics of known images that images are judged against, and their answers (core.scoring's):
p-values and verdicts, or that the model cannot judge an image (out of its domain, core.domain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from core import metrics
from core.attacks import get_attack
from core.domain import DomainCheck, DomainReference
from core.hashing import row_digests
from core.scoring import ImageVerdict, demo_reference, image_verdicts
from explorer import state
from explorer.choices import Choices
from explorer.sets import LabelledSet


@dataclass
class Reference:
    """Statistics of known images over the grid, against which single images are judged."""

    timesteps: list[int]
    member_when: str
    nonmembers: np.ndarray  # (N0, T) raw statistics of known non-members
    members: np.ndarray | None  # (N1, T), when members are known
    nonmember_digests: tuple[str, ...]
    source: str
    chosen_t: int | None = None
    domain: DomainReference | None = None  # None: too few reference images to check the domain

    def column(self, t: int) -> int:
        return self.timesteps.index(t)

    def domain_checks(self, images: torch.Tensor, statistics: np.ndarray, t: int) -> list[DomainCheck | None]:
        """Whether the model can judge each image, from its features and its statistics at t."""
        if self.domain is None:
            return [None] * len(images)
        return self.domain.check(images, statistics, self.nonmembers[:, self.column(t)], self.member_when)


def reference_from_audit(result, data: LabelledSet) -> Reference:
    """The model's own split as a reference: held-out images of the report half calibrate (those
    of the selection half chose t, so they never judge an image), members show contrast."""
    heldout = result.labels == 0
    report = heldout & ~result.selection_half
    kept = ~result.selection_half[heldout]
    return Reference(
        timesteps=list(result.timesteps), member_when=result.member_when,
        nonmembers=result.statistics[report], members=result.statistics[result.labels == 1],
        nonmember_digests=tuple(d for d, k in zip(data.nonmember_digests, kept) if k),
        source=f"the model's {int(report.sum()):,} held-out images that did not choose t",
        chosen_t=result.chosen_t, domain=state.domain_reference(data.nonmembers[torch.from_numpy(kept)]),
    )


def reference_from_images(choices: Choices, nonmembers: torch.Tensor, captions=None) -> Reference:
    """Uploaded known non-members as the reference (members unknown); ``captions`` condition a
    conditional model in caption mode, like the images they are compared with."""
    stats = state.image_statistics(choices, nonmembers, captions)
    return Reference(
        timesteps=list(choices.grid), member_when=get_attack(choices.attack).member_when,
        nonmembers=stats, members=None, nonmember_digests=tuple(row_digests(nonmembers)),
        source=f"your {len(nonmembers):,} uploaded non-members", domain=state.domain_reference(nonmembers),
    )


def check(
    reference: Reference, t: int, statistics: Sequence[float], fpr: float, digests: Sequence[str],
    fdr: float | None = None,
) -> list[ImageVerdict]:
    """Verdicts of images at t against the reference non-members, by the same function as
    ``sima score``: an image that is itself one of the reference non-members is left out of its
    own reference; with ``fdr`` the batch holds the false discovery rate (Benjamini-Hochberg)
    instead of a per-image false-positive rate."""
    column = reference.column(t)
    return image_verdicts(
        metrics.membership_scores(np.asarray(statistics, dtype=np.float64), reference.member_when),
        metrics.membership_scores(reference.nonmembers[:, column], reference.member_when),
        alpha=fpr, fdr=fdr, digests=list(digests), reference_digests=reference.nonmember_digests,
    )


def collection_reference(choices: Choices, calibrated) -> tuple[torch.Tensor, list[str]]:
    """The model's held-out images that did not choose t (DataError when the model has no split)."""
    return demo_reference(state.get_model(choices.spec, choices.device), calibrated)
