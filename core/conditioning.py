"""Per-image conditioning: what a text- or class-conditional model is told about each sample.

A :class:`Conditioning` holds a batch's conditioning tensors (the prompt embeddings of a
Stable Diffusion model, the class labels of a DiT) with one row per sample, and a short key per
sample saying what conditions it (a digest of the caption, the label, or "empty"). The keys go
into score-cache keys so that a changed caption never returns a stale statistic; the noise of
an attack stays keyed by the image alone, so a caption and the empty prompt see the same noise.

The readers here turn the files people keep captions in (a CSV with columns file,caption; a
JSONL with "file" and "caption"; a sidecar NAME.txt beside each image, as DreamBooth and kohya
datasets store them, also inside zips and uploads) into a :class:`CaptionTable`, and match it
to the ids that :mod:`core.data` gives images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch

from core.errors import DataError, ModelError

if TYPE_CHECKING:
    from core.models.base import DiffusionModel

#: The key of the empty condition (the empty prompt, or the null class).
EMPTY_KEY = "empty"
CONDITION_MODES = ("caption", "empty")
#: A captions or labels file larger than this is refused before it is read.
MAX_TABLE_BYTES = 64 * 1024 * 1024
#: One caption longer than this is refused: text encoders read 77 tokens, far fewer characters.
MAX_CAPTION_CHARS = 20_000
CAPTION_SUFFIX = ".txt"


def caption_key(text: str) -> str:
    """The condition key of a caption: a digest of its exact text."""
    return "caption:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def label_key(label: int) -> str:
    return f"label:{int(label)}"


@dataclass
class Conditioning:
    """Conditioning tensors for N samples (each tensor's first dim is N) and a key per sample.

    ``texts`` keeps the caption of each sample when there is one (attacks that rewrite the
    caption, such as CLiD, need it); None for class labels and the empty condition.
    """

    tensors: dict[str, torch.Tensor]
    keys: list[str]
    texts: list[str | None] | None = field(default=None)

    def __post_init__(self) -> None:
        self.keys = list(self.keys)
        n = len(self.keys)
        for name, value in self.tensors.items():
            if value.shape[0] != n:
                raise DataError(f"The conditioning tensor {name!r} has {value.shape[0]} rows for {n} samples.")
        if self.texts is not None and len(self.texts) != n:
            raise DataError(f"Got {len(self.texts)} caption texts for {n} samples.")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> "Conditioning":
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            tensor = torch.as_tensor(index)
            if tensor.dtype == torch.bool:
                tensor = tensor.nonzero().reshape(-1)
            rows = tensor.reshape(-1).tolist()
        picked = torch.as_tensor(rows, dtype=torch.long)
        return Conditioning(
            {k: v[picked.to(v.device)] for k, v in self.tensors.items()},
            [self.keys[i] for i in rows],
            None if self.texts is None else [self.texts[i] for i in rows],
        )

    def repeat_interleave(self, k: int) -> "Conditioning":
        """Each sample's conditioning ``k`` times in a row, as ``Tensor.repeat_interleave``."""
        return Conditioning(
            {name: v.repeat_interleave(k, dim=0) for name, v in self.tensors.items()},
            [key for key in self.keys for _ in range(k)],
            None if self.texts is None else [t for t in self.texts for _ in range(k)],
        )

    def to(self, device: str | torch.device) -> "Conditioning":
        return Conditioning({k: v.to(device) for k, v in self.tensors.items()}, self.keys, self.texts)

    @classmethod
    def cat(cls, parts: Sequence["Conditioning"]) -> "Conditioning":
        """The samples of several conditionings, in order (all must hold the same tensors)."""
        names = set(parts[0].tensors)
        if any(set(p.tensors) != names for p in parts):
            raise DataError("Cannot join conditionings of different kinds (captions and labels, or two models).")
        texts = None if any(p.texts is None for p in parts) else [t for p in parts for t in p.texts]
        return cls(
            {k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors},
            [key for p in parts for key in p.keys],
            texts,
        )


def resolve(model: "DiffusionModel", cond: "Conditioning | Sequence[str] | None", n: int) -> "Conditioning | None":
    """The conditioning of ``n`` samples for ``model``: None for an unconditional model;
    for a conditional one, ``cond`` itself, the captions (or labels) given as strings
    embedded by the model, or the empty condition when ``cond`` is None."""
    if not getattr(model, "conditional", False):
        if cond is not None:
            raise ModelError(
                f"{model.name} is an unconditional model: it takes no captions or labels. "
                "Drop --captions/--labels (or cond=...), or load a text- or class-conditional model."
            )
        return None
    if cond is None:
        return model.empty_condition(n)
    if not isinstance(cond, Conditioning):
        if isinstance(cond, str):
            raise DataError("Give one caption per sample (a list of strings), not a single string.")
        cond = model.condition(list(cond))
    if len(cond) != n:
        raise DataError(f"Got conditioning for {len(cond)} samples but {n} samples to score; give one per sample.")
    return cond


def select(cond: Conditioning | None, index) -> Conditioning | None:
    """``cond[index]``, passing None (an unconditional model) through."""
    return None if cond is None else cond[index]


def repeat(cond: Conditioning | None, k: int) -> Conditioning | None:
    """``cond.repeat_interleave(k)``, passing None through."""
    return None if cond is None or k == 1 else cond.repeat_interleave(k)


# --- captions and labels per image ------------------------------------------------------


def _aliases(name: str) -> list[str]:
    """The names an image (or a caption entry) is also known by, most specific first.

    An id from a zip is "archive.zip:dir/a.png"; from a folder, "a.png". A caption file may
    name the image with or without its folder and extension, so each is tried.
    """
    inner = name.split(".zip:", 1)[1] if ".zip:" in name else name
    forms = []
    for base in (name, inner, PurePosixPath(inner.replace("\\", "/")).name):
        path = PurePosixPath(base.replace("\\", "/"))
        forms += [base, str(path.with_suffix("")) if path.suffix else base]
    return list(dict.fromkeys(forms))


class CaptionTable:
    """Captions (or labels) by image name, matched to image ids by file name with or without
    its folder and extension. ``source`` names where they came from, for messages."""

    def __init__(self, entries: Mapping[str, str], source: str, *, what: str = "caption", fix: str = "add a row for it"):
        self.source = source
        self.what = what
        self.fix = fix
        self.entries = dict(entries)
        # Short forms that two entries share with different texts map to None: only the
        # entry's exact name can choose between them.
        self._index: dict[str, str | None] = {}
        for name, text in self.entries.items():
            for alias in _aliases(name)[1:]:
                if self._index.get(alias, text) != text:
                    self._index[alias] = None
                else:
                    self._index[alias] = text
        self._index.update(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, image_id: str) -> str | None:
        for alias in _aliases(image_id):
            if self._index.get(alias) is not None:
                return self._index[alias]
        return None

    def for_ids(self, ids: Sequence[str]) -> list[str]:
        """The entry of each id, or a DataError naming the first image without one."""
        out = []
        for image_id in ids:
            text = self.lookup(image_id)
            if text is None:
                raise DataError(
                    f"No {self.what} for image {image_id!r} in {self.source}; {self.fix}, "
                    f"or use --condition empty to score every image with the empty prompt."
                )
            out.append(text)
        return out

def _name_and_bytes(source: Any) -> tuple[str, bytes]:
    """(name, content) of a path, a (name, bytes) pair or an uploaded file, size-checked."""
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (bytes, bytearray)):
        name, data = str(source[0]), bytes(source[1])
    elif hasattr(source, "read") and hasattr(source, "name"):
        name = Path(str(source.name)).name
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such file; give a CSV (file,caption), a JSONL, or a folder with NAME.txt files.")
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise DataError(f"{path} is larger than {MAX_TABLE_BYTES // 2**20} MB; split it.")
        name, data = str(path), path.read_bytes()
    if len(data) > MAX_TABLE_BYTES:
        raise DataError(f"{name} is larger than {MAX_TABLE_BYTES // 2**20} MB; split it.")
    return name, data


def _text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None


def _checked(name: str, where: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        if what == "label" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise DataError(f"{name}, {where}: the {what} must be text, found {type(value).__name__}.")
    if len(value) > MAX_CAPTION_CHARS:
        raise DataError(
            f"{name}, {where}: the {what} is {len(value):,} characters, more than {MAX_CAPTION_CHARS:,}; "
            "text encoders read only the first 77 tokens, so shorten it."
        )
    return value


def read_captions(source: Any, *, what: str = "caption") -> CaptionTable:
    """A caption (or, with ``what="label"``, a class label) per image from a CSV with columns
    ``file`` and ``caption`` (or ``label``), or a JSONL file with those keys on each line.

    ``source`` is a path, a ``(name, bytes)`` pair or an uploaded file. Every problem is a
    DataError naming the file and the line.
    """
    name, data = _name_and_bytes(source)
    text = _text(name, data)
    suffix = PurePosixPath(name.lower()).suffix
    entries: dict[str, str] = {}

    def add(file: Any, value: Any, where: str) -> None:
        if not isinstance(file, str) or not file.strip():
            raise DataError(f"{name}, {where}: the 'file' entry is missing or empty.")
        value = _checked(name, where, value, what)
        if file in entries and entries[file] != value:
            raise DataError(f"{name}, {where}: {file!r} is listed twice with different {what}s; keep one.")
        entries[file.strip()] = value

    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}, line {number}: not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict) or "file" not in row or what not in row:
                raise DataError(f'{name}, line {number}: expected an object with "file" and "{what}".')
            add(row["file"], row[what], f"line {number}")
    elif suffix in (".csv", ".tsv"):
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "file" not in header or what not in header:
                raise DataError(f"{name}: the first row must name the columns 'file' and '{what}', found {header}.")
            reader.fieldnames = header
            for number, row in enumerate(reader, start=2):
                add(row.get("file"), row.get(what) if row.get(what) is not None else "", f"line {number}")
        except csv.Error as exc:
            raise DataError(f"{name}: not a readable CSV file ({exc}).") from None
    else:
        raise DataError(f"{name}: give captions as a .csv (columns file,{what}) or a .jsonl file, or sidecar NAME.txt files.")
    if not entries:
        raise DataError(f"{name} lists no {what}s.")
    return CaptionTable(entries, name, what=what)


def read_labels(source: Any) -> CaptionTable:
    """A class label per image (a number, or a class name the model knows), as :func:`read_captions`."""
    return read_captions(source, what="label")


def sidecar_captions(sources: Any) -> CaptionTable:
    """Captions stored as NAME.txt beside each image NAME.png: in folders, in zips, and among
    uploaded ``(name, bytes)`` pairs or files. An empty table when there are none."""
    entries: dict[str, str] = {}
    items = [sources] if isinstance(sources, (str, os.PathLike)) or _is_pair(sources) else list(sources)
    for source in items:
        for caption_name, image_stem, data in _sidecars(source):
            entries[image_stem] = _checked(caption_name, "the whole file", _text(caption_name, data).strip(), "caption")
    return CaptionTable(entries, "the sidecar .txt files", fix="put its caption in a .txt file of the same name beside it")


def _is_pair(source: Any) -> bool:
    return isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (bytes, bytearray))


def _sidecars(source: Any) -> Iterable[tuple[str, str, bytes]]:
    """(caption file name, image id without extension, caption bytes) for each .txt in ``source``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix.lower() == CAPTION_SUFFIX:
                    yield from _sized(str(child), child.stem, child.read_bytes())
            return
        if path.suffix.lower() == ".zip" and path.is_file():
            yield from _zip_sidecars(path.name, path.read_bytes())
        return
    name, data = _name_and_bytes(source)
    if name.lower().endswith(".zip"):
        yield from _zip_sidecars(name, data)
    elif name.lower().endswith(CAPTION_SUFFIX):
        yield from _sized(name, PurePosixPath(name).stem, data)


def _sized(name: str, stem: str, data: bytes) -> Iterable[tuple[str, str, bytes]]:
    if len(data) > 4 * MAX_CAPTION_CHARS:
        raise DataError(f"{name} is {len(data):,} bytes, too long for a caption; shorten it.")
    yield name, stem, data


def _zip_sidecars(name: str, data: bytes) -> Iterable[tuple[str, str, bytes]]:
    from core.data import MAX_ARCHIVE_BYTES, open_zip

    zf = open_zip(name, io.BytesIO(data), MAX_ARCHIVE_BYTES)
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            member = PurePosixPath(info.filename)
            if info.is_dir() or member.suffix.lower() != CAPTION_SUFFIX or any(p.startswith(".") or p == "__MACOSX" for p in member.parts):
                continue
            if info.file_size > 4 * MAX_CAPTION_CHARS:
                raise DataError(f"{name}:{info.filename} is {info.file_size:,} bytes, too long for a caption; shorten it.")
            try:
                content = zf.read(info)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                raise DataError(f"{name}:{info.filename} could not be read ({exc}).") from None
            yield f"{name}:{info.filename}", f"{name}:{member.with_suffix('')}", content

