"""Statistics of known images that single images are judged against, and one image's answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core import metrics
from core.attacks import get_attack
from core.hashing import row_digests
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

    def column(self, t: int) -> int:
        return self.timesteps.index(t)


def reference_from_audit(result, data: LabelledSet) -> Reference:
    """The model's own split as a reference: held-out images calibrate, members show contrast."""
    return Reference(
        timesteps=list(result.timesteps), member_when=result.member_when,
        nonmembers=result.statistics[result.labels == 0], members=result.statistics[result.labels == 1],
        nonmember_digests=data.nonmember_digests, source=f"the model's {len(data.nonmember_ids):,} held-out images",
        chosen_t=result.chosen_t,
    )


def reference_from_images(choices: Choices, nonmembers: torch.Tensor) -> Reference:
    """Uploaded known non-members as the reference (members unknown)."""
    stats = state.image_statistics(choices, nonmembers)
    return Reference(
        timesteps=list(choices.grid), member_when=get_attack(choices.attack).member_when,
        nonmembers=stats, members=None, nonmember_digests=tuple(row_digests(nonmembers)),
        source=f"your {len(nonmembers):,} uploaded non-members",
    )


@dataclass(frozen=True)
class Check:
    """One image's answer at one timestep."""

    statistic: float
    p_value: float
    likely_member: bool
    achievable: bool
    sentence: str
    n_reference: int
    left_out: bool


def check(reference: Reference, t: int, statistic: float, fpr: float, digest: str) -> Check:
    """The empirical p-value and verdict of one image at t against the reference non-members.

    An image that is itself one of the reference non-members is left out of the reference,
    so that it is not compared with itself.
    """
    keep = np.array([d != digest for d in reference.nonmember_digests], dtype=bool)
    ref_stats = reference.nonmembers[keep, reference.column(t)]
    score = float(metrics.membership_scores(np.array([statistic]), reference.member_when)[0])
    v = metrics.verdict(score, metrics.membership_scores(ref_stats, reference.member_when), fpr)
    return Check(statistic, v.p_value, v.likely_member, v.achievable, v.sentence, v.n_reference, not keep.all())
