"""Split manifests: which ids of a dataset were training members and which were held out."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.errors import DataError
from core.images import one_line



@dataclass
class SplitManifest:
    """Which ids of a dataset were training members and which were held out, with the seed."""

    dataset: str
    member_ids: list
    heldout_ids: list
    seed: int
    notes: str = ""

    def __post_init__(self) -> None:
        self.member_ids = list(self.member_ids)
        self.heldout_ids = list(self.heldout_ids)
        self.validate()

    def validate(self) -> None:
        """Raise DataError unless both sides are non-empty, duplicate-free and disjoint."""
        if not isinstance(self.dataset, str):
            raise DataError(f"The split's dataset must be a name (text), got {self.dataset!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise DataError(f"The split's seed must be an integer, got {self.seed!r}.")
        for side in ("member_ids", "heldout_ids"):
            _check_ids(side, getattr(self, side))
        both = set(self.member_ids) & set(self.heldout_ids)
        if both:
            raise DataError(
                f"{len(both)} ids are both members and held out (e.g. {_examples(both)}); "
                "each sample must be on one side only."
            )

    def save(self, path: str | os.PathLike) -> None:
        """Write the manifest as JSON."""
        record = {"format": "sima-split", "version": 1, **asdict(self)}
        Path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SplitManifest":
        """Read and validate a manifest written by ``save``."""
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: the split manifest does not exist; check the path.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(
                f"{path}: not a readable JSON split manifest ({one_line(error)})."
            ) from None
        if not isinstance(record, dict) or record.get("format") != "sima-split":
            raise DataError(f"{path}: not a split manifest (no \"format\": \"sima-split\").")
        required = ("dataset", "member_ids", "heldout_ids", "seed")
        missing = [key for key in required if key not in record]
        if missing:
            raise DataError(f"{path}: the split manifest lacks {', '.join(missing)}.")
        return cls(
            dataset=record["dataset"],
            member_ids=record["member_ids"],
            heldout_ids=record["heldout_ids"],
            seed=record["seed"],
            notes=record.get("notes", ""),
        )


def _check_ids(side: str, ids: list) -> None:
    if not ids:
        raise DataError(f"The split's {side} is empty; both sides need at least one sample.")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (str, int))]
    if bad:
        raise DataError(f"The split's {side} must be names or integers, got {bad[0]!r}.")
    repeated = [i for i, count in Counter(ids).items() if count > 1]
    if repeated:
        raise DataError(
            f"The split's {side} repeats ids (e.g. {_examples(repeated)}); list each once."
        )


def _examples(ids: Iterable) -> str:
    return ", ".join(repr(i) for i in sorted(ids, key=str)[:3])


def make_split(
    ids: Sequence,
    n_members: int,
    n_heldout: int,
    seed: int,
    *,
    dataset: str = "",
    notes: str = "",
) -> SplitManifest:
    """Draw disjoint member and held-out sets from ``ids`` with a seeded permutation.

    Each side keeps the order of ``ids``; the same ids and seed give the same split.
    """
    ids = list(ids)
    repeated = [i for i, count in Counter(ids).items() if count > 1]
    if repeated:
        raise DataError(f"The ids repeat (e.g. {_examples(repeated)}); give each sample once.")
    if n_members < 1 or n_heldout < 1:
        raise DataError("A split needs at least one member and one held-out sample.")
    if n_members + n_heldout > len(ids):
        raise DataError(
            f"Asked for {n_members} members and {n_heldout} held out, but there are only "
            f"{len(ids)} samples; ask for fewer."
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    members = sorted(order[:n_members].tolist())
    heldout = sorted(order[n_members : n_members + n_heldout].tolist())
    return SplitManifest(
        dataset=dataset,
        member_ids=[ids[i] for i in members],
        heldout_ids=[ids[i] for i in heldout],
        seed=seed,
        notes=notes,
    )
