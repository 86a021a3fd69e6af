"""Labelled image sets (members and non-members) as the pages pass them around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from core.errors import DataError
from core.hashing import row_digests, tensor_digest


@dataclass
class LabelledSet:
    """Members and non-members as [-1, 1] images, with a content key for caches."""

    members: torch.Tensor
    member_ids: list[str]
    nonmembers: torch.Tensor
    nonmember_ids: list[str]
    key: str
    source: str
    member_digests: tuple[str, ...] = ()
    nonmember_digests: tuple[str, ...] = ()
    #: One caption per image when the set has them (a conditional model's own split, or uploads
    #: with captions); None when they are unknown.
    member_captions: tuple[str, ...] | None = None
    nonmember_captions: tuple[str, ...] | None = None

    @property
    def captioned(self) -> bool:
        return self.member_captions is not None and self.nonmember_captions is not None

    def __len__(self) -> int:
        return len(self.member_ids) + len(self.nonmember_ids)

    def images(self) -> torch.Tensor:
        return torch.cat([self.members, self.nonmembers])

    def ids(self) -> list[str]:
        return self.member_ids + self.nonmember_ids

    def truth(self, digest: str) -> str | None:
        """'member' or 'held-out' when an image with this content digest is in the set."""
        if digest in self.member_digests:
            return "member"
        if digest in self.nonmember_digests:
            return "held-out"
        return None


def labelled_set(
    members: torch.Tensor, member_ids: Sequence[str], nonmembers: torch.Tensor, nonmember_ids: Sequence[str],
    source: str, *, member_captions: Sequence[str] | None = None, nonmember_captions: Sequence[str] | None = None,
) -> LabelledSet:
    """Wrap two image batches, keyed by their content (and captions) so equal uploads share cached results."""
    if len(member_ids) == 0 or len(nonmember_ids) == 0:
        raise DataError("Give at least one member and one non-member image.")
    key = tensor_digest(members) + tensor_digest(nonmembers)
    if member_captions is not None and nonmember_captions is not None:
        key += captions_digest([*member_captions, *nonmember_captions])
    else:
        member_captions = nonmember_captions = None
    return LabelledSet(
        members, list(member_ids), nonmembers, list(nonmember_ids), key, source,
        tuple(row_digests(members)), tuple(row_digests(nonmembers)),
        None if member_captions is None else tuple(member_captions),
        None if nonmember_captions is None else tuple(nonmember_captions),
    )


def subset(data: LabelledSet, per_side: int, seed: int) -> LabelledSet:
    """At most ``per_side`` members and ``per_side`` non-members of ``data``, drawn at random
    (seeded) and kept in their order; ``data`` itself when it is no larger."""
    if per_side >= max(len(data.member_ids), len(data.nonmember_ids)):
        return data
    rng = np.random.default_rng(seed)

    def draw(n: int) -> list[int]:
        return sorted(rng.choice(n, size=min(per_side, n), replace=False).tolist())

    m, n = draw(len(data.member_ids)), draw(len(data.nonmember_ids))
    return labelled_set(
        data.members[m], [data.member_ids[i] for i in m], data.nonmembers[n], [data.nonmember_ids[i] for i in n],
        f"{len(m)} members and {len(n)} non-members drawn at random from {data.source}",
    )


def captions_digest(captions: Sequence[str] | None) -> str:
    """A short key of a list of captions, for cache keys ("" for none)."""
    import hashlib
    import json

    if captions is None:
        return ""
    return hashlib.sha256(json.dumps(list(captions)).encode("utf-8", "surrogatepass")).hexdigest()[:16]
