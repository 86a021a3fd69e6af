"""The papers' data: CIFAR-10 / CIFAR-100 archives and their member / non-member split files.

SecMI, PIA and SimA train on part of a dataset's training split and describe it by a split
file ``<DATASET>_train_ratio0.5.npz`` holding ``mia_train_idxs`` (members) and
``mia_eval_idxs`` (non-members): indices into the training split in its standard order
(CIFAR-10: ``data_batch_1`` to ``data_batch_5``, 10,000 images each; CIFAR-100: ``train``).

Both distributed forms of the archives are read, from a folder or straight from the
``.tar.gz``:

- the binary version: fixed-size records (a label byte, for CIFAR-100 two, then 3,072 bytes:
  the red, green and blue 32x32 planes), parsed directly;
- the python version: pickled dicts, read by an unpickler that admits only plain containers
  and numpy arrays; any other object in the file is refused.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from core.errors import DataError

SIDE = 32
PIXELS = 3 * SIDE * SIDE
MAX_FILE_BYTES = 400 * 1024**2
"""A larger archive member is refused (the largest real one, CIFAR-100's train.bin, is 154 MB)."""


@dataclass(frozen=True)
class _Layout:
    binary_folder: str
    binary_train: tuple[str, ...]
    label_bytes: int
    python_folder: str
    python_train: tuple[str, ...]


LAYOUTS = {
    "cifar10": _Layout("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), 1,
                       "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6))),
    "cifar100": _Layout("cifar-100-binary", ("train.bin",), 2, "cifar-100-python", ("train",)),
}


def parse_dataset(spec: str) -> tuple[str, Path]:
    """``"cifar10:DIR"`` -> ("cifar10", DIR); DIR is the extracted folder (or its parent) or the .tar.gz."""
    name, sep, location = spec.partition(":")
    name = name.strip().lower().replace("-", "")
    if not sep or name not in LAYOUTS or not location:
        raise DataError(f"--dataset {spec!r}: use {' or '.join(f'{n}:DIR' for n in LAYOUTS)}, DIR holding the archive.")
    path = Path(location).expanduser()
    if not path.exists():
        raise DataError(f"--dataset {spec!r}: {path} does not exist.")
    return name, path


def training_images(name: str, path: Path) -> np.ndarray:
    """The training split of CIFAR-10 or CIFAR-100 as uint8 (N, 32, 32, 3), in its standard order."""
    layout = LAYOUTS[name]
    files = _find(path, layout.binary_folder, layout.binary_train)
    if files is not None:
        return np.concatenate([_binary(label, data, layout.label_bytes) for label, data in files])
    files = _find(path, layout.python_folder, layout.python_train)
    if files is not None:
        return np.concatenate([_python(label, data) for label, data in files])
    wanted = f"{layout.binary_folder}/{layout.binary_train[0]}" + (", ..." if len(layout.binary_train) > 1 else "")
    raise DataError(
        f"{path} holds no {name} training files: expected the binary version ({wanted}) or the python version "
        f"({layout.python_folder}/{layout.python_train[0]}), extracted or as the .tar.gz."
    )


def _find(path: Path, folder: str, names: tuple[str, ...]) -> list[tuple[str, bytes]] | None:
    """(label, bytes) of every file in ``names``, from a folder or a tar archive; None when none is
    there, an error when only some are (a partial set would shift every index)."""
    if path.is_file():
        return _from_tar(path, folder, names)
    for base in (path, path / folder):
        present = [base / n for n in names if (base / n).is_file()]
        if present and len(present) < len(names):
            missing = sorted(set(names) - {p.name for p in present})
            raise DataError(f"{base} lacks {', '.join(missing)}; the training split needs every file, in order.")
        if present:
            return [(str(p), _read_file(p)) for p in present]
    return None


def _read_file(path: Path) -> bytes:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; it is not a CIFAR archive file.")
    return path.read_bytes()


def _from_tar(path: Path, folder: str, names: tuple[str, ...]) -> list[tuple[str, bytes]] | None:
    """The wanted members of a (compressed) tar archive, read in one pass over the stream."""
    wanted = [f"{folder}/{n}" for n in names]
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name in wanted:
                    if member.size > MAX_FILE_BYTES:
                        raise DataError(f"{path}:{name} is larger than {MAX_FILE_BYTES:,} bytes; it is not a CIFAR file.")
                    found[name] = archive.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read as a tar archive ({type(exc).__name__}); give the extracted folder.") from None
    if not found:
        return None
    if len(found) < len(wanted):
        raise DataError(f"{path} lacks {', '.join(sorted(set(wanted) - set(found)))}; the training split needs every file.")
    return [(f"{path}:{name}", found[name]) for name in wanted]


def _binary(label: str, data: bytes, label_bytes: int) -> np.ndarray:
    record = label_bytes + PIXELS
    if not data or len(data) % record:
        raise DataError(f"{label}: {len(data):,} bytes is not a whole number of {record}-byte CIFAR records; the file is damaged.")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)[:, label_bytes:]
    return rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- python version


def _latin1(text: str, encoding: str) -> bytes:
    """What a Python 3 protocol-2 pickle calls to rebuild bytes; nothing else is allowed through it."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin-1 bytes")
    return text.encode("latin-1")


_ADMITTED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("_codecs", "encode"): _latin1,
}


class _Refused(Exception):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Admits dicts, lists, tuples, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _python(label: str, data: bytes) -> np.ndarray:
    try:
        content = _PlainUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{label} asks the unpickler for {exc}; only plain containers and numpy arrays are admitted, "
                        "so it was refused (use the binary version of the archive).") from None
    except Exception as exc:  # truncated or malformed pickles raise many types
        raise DataError(f"{label} is not a readable CIFAR python batch ({type(exc).__name__}).") from None
    if not isinstance(content, dict):
        raise DataError(f"{label} holds a {type(content).__name__}, not the dict of a CIFAR python batch.")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in content.items()}
    images = batch.get("data")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != PIXELS:
        raise DataError(f"{label}: 'data' should be a uint8 array of shape (N, {PIXELS}); the file is damaged.")
    return images.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- split files


def read_split(path: str | Path, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(member indices, non-member indices) from a split file's ``mia_train_idxs`` / ``mia_eval_idxs``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in ("mia_train_idxs", "mia_eval_idxs") if key in loaded.files}
            found = list(loaded.files)
    except FileNotFoundError:
        raise DataError(f"--split {path}: no such file.") from None
    except Exception as exc:  # not an npz, or one with pickled objects
        raise DataError(f"--split {path} is not a numpy .npz without pickled objects ({type(exc).__name__}).") from None
    if len(arrays) < 2:
        raise DataError(f"--split {path} needs arrays 'mia_train_idxs' and 'mia_eval_idxs'; it has {found}.")
    sides = []
    for key in ("mia_train_idxs", "mia_eval_idxs"):
        values = arrays[key]
        if values.ndim != 1 or not values.size or not np.issubdtype(values.dtype, np.integer):
            raise DataError(f"--split {path}: {key!r} must be a non-empty 1-D array of integer indices.")
        if values.min() < 0 or values.max() >= n_images:
            raise DataError(f"--split {path}: {key!r} has indices outside 0..{n_images - 1}, the training split's size; "
                            "is it the split of another dataset?")
        if np.unique(values).size != values.size:
            raise DataError(f"--split {path}: {key!r} repeats indices; each image is listed once.")
        sides.append(values.astype(np.int64))
    shared = np.intersect1d(*sides)
    if shared.size:
        raise DataError(f"--split {path}: {shared.size} indices are both members and non-members (e.g. {int(shared[0])}).")
    return sides[0], sides[1]


def split_sets(dataset: str, split: str | Path) -> tuple[tuple[np.ndarray, list[str]], tuple[np.ndarray, list[str]]]:
    """((member pictures, ids), (non-member pictures, ids)) as uint8 (N, 32, 32, 3) and ids like
    ``cifar10-train[123]``, for ``--dataset NAME:DIR --split FILE.npz``."""
    name, path = parse_dataset(dataset)
    pictures = training_images(name, path)
    members, nonmembers = read_split(split, len(pictures))
    return tuple((pictures[idx], [f"{name}-train[{i}]" for i in idx]) for idx in (members, nonmembers))  # type: ignore[return-value]


def tensor_chunks(pictures: np.ndarray, ids: list[str], *, channels: int, size: tuple[int, int],
                  chunk: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """[-1, 1] tensors for the model, converted a chunk at a time by core.data's array rules."""
    from core.images import images_from_array

    for start in range(0, len(pictures), chunk):
        loaded = images_from_array(pictures[start:start + chunk], channels=channels, size=size)
        yield loaded.images, ids[start:start + chunk]
