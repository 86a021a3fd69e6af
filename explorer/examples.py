"""The bundled example images and what examples.csv says about them (member or held-out)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.data import IMAGE_EXTENSIONS
from core.datasets import DATASET as DIGITS
from core.images import LoadedImages
from explorer.uploads import load_uploads

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
EXAMPLES_CSV = "examples.csv"


@dataclass(frozen=True)
class Example:
    """A bundled example image and, when the CSV says, whether it was a training member."""

    name: str
    path: Path
    label: str | None
    id: str | None
    model: str | None = None  # the model whose training set the label refers to

    def title(self) -> str:
        if not self.label:
            return self.name
        return f"{self.name} ({self.label}{f' of {self.model}' if self.model else ''})"

    def truth_for(self, model_name: str) -> str | None:
        """The label, when it is about this model (or about no model in particular)."""
        return self.label if self.model in (None, model_name) else None


def suited_to(examples: list[Example], model) -> list[Example]:
    """The bundled examples, or none for a model whose manifest says it learnt other data than
    the examples' digits (the photo demo): digits would only be out-of-domain noise to it."""
    dataset = (getattr(model, "manifest", None) or {}).get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else None
    return examples if name in (None, DIGITS) else []  # the examples are digits of the demos' split


def _label(row: dict) -> str | None:
    raw = str(row.get("label", row.get("membership", row.get("member", "")))).strip().lower()
    if raw in ("member", "members", "1", "true", "yes", "train", "training"):
        return "member"
    if raw in ("held-out", "heldout", "held_out", "nonmember", "non-member", "0", "false", "no", "test"):
        return "held-out"
    return None


def read_examples(folder: str | Path = EXAMPLES_DIR) -> list[Example]:
    """The example images of ``folder``, with labels from its examples.csv when it is there."""
    root = Path(folder)
    if not root.is_dir():
        return []
    rows: dict[str, dict] = {}
    table = root / EXAMPLES_CSV
    if table.is_file():
        with open(table, newline="") as handle:
            for row in csv.DictReader(handle):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                name = Path(row.get("file") or row.get("filename") or row.get("path") or "").name
                if name:
                    rows[name] = row
    found = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            row = rows.get(path.name, {})
            found.append(Example(path.name, path, _label(row), row.get("id") or None, row.get("model") or None))
    return found


def load_examples(chosen: Sequence[Example], image_shape: Sequence[int]) -> LoadedImages:
    """Bundled examples through the same loader as uploads."""
    return load_uploads([(e.name, e.path.read_bytes()) for e in chosen], image_shape)


def typical_pair(names: Sequence[str], truths: Sequence[str | None], p_values: Sequence[float]) -> list[str]:
    """One member and one held-out image, each with its group's median p-value: what the model
    does to a typical member and a typical held-out image, not to a lucky or an unlucky one."""
    picks = []
    for label in ("member", "held-out"):
        group = sorted((p, name) for name, truth, p in zip(names, truths, p_values) if truth == label)
        if group:
            picks.append(group[(len(group) - 1) // 2][1])
    return picks
