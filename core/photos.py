"""The real-photo demo's data: a 12,000-image subset of CIFAR-10, read where it lies, never shipped.

CIFAR-10 may not be redistributed inside this project, so the photo demo ships weights and a
manifest of image ids only. Its images are read at run time from ``cifar10_train_12k.npz``
(uint8 ``x`` (12000, 32, 32, 3), ``source_index`` into CIFAR-10's 50,000 training images):
the file named by the environment variable ``SIMA_CIFAR10_FILE``, else
``../shared/data/cifar10/cifar10_train_12k.npz`` beside the project. The subset's pixels are
JPEG-decoded, so they are not interchangeable with pixel-exact CIFAR-10 from elsewhere: the
demo names this file, not CIFAR-10 in general.

The split mirrors the digits demos': one seeded permutation of the 12,000 rows, its first
``n_heldout`` rows held out and the next ``n_members`` rows members. An image's id is
``cifar10-train-<index in CIFAR-10's training set>``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError
from core.images import images_from_array
from core.splits import SplitManifest

DATASET = "cifar10-12k"
FILE_NAME = "cifar10_train_12k.npz"
FILE_ENV = "SIMA_CIFAR10_FILE"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / FILE_NAME
SIZE = 32
CHANNELS = 3
PREPROCESSING = (
    f"{FILE_NAME} uint8 RGB 32x32 (JPEG-decoded CIFAR-10, see its SOURCE.md) -> core.data.images_from_array "
    "(no resizing) -> [-1, 1] as 2 * (u / 255) - 1"
)


def data_file() -> Path:
    """Where the photo data is read from: $SIMA_CIFAR10_FILE, else the shared data folder."""
    return Path(os.environ.get(FILE_ENV) or DEFAULT_FILE)


def photo_id(source_index: int) -> str:
    """The id of the CIFAR-10 training image with this index."""
    return f"cifar10-train-{int(source_index)}"


@lru_cache(maxsize=2)
def _load(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    if not path.is_file():
        raise DataError(
            f"The photo demo's images are not on this machine: {path} is missing. CIFAR-10 is not shipped with "
            f"the project; put {FILE_NAME} there or set {FILE_ENV} to its path, or give the images as files."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            pixels, index = data["x"], data["source_index"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not the CIFAR-10 subset file (arrays x and source_index): {exc}.") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (SIZE, SIZE, CHANNELS) or len(index) != len(pixels):
        raise DataError(f"{path} does not hold uint8 (N, 32, 32, 3) photos with one source_index each.")
    return pixels, tuple(photo_id(i) for i in index)


def _checked_size(size: int) -> None:
    if int(size) != SIZE:
        raise DataError(f"The photo data is {SIZE}x{SIZE}; a model on it must use size {SIZE}, got {size}.")


def photos_split(n_members: int, *, n_heldout: int, seed: int) -> SplitManifest:
    """Ids of ``n_members`` members and ``n_heldout`` held-out photos, from one seeded permutation."""
    _, ids = _load(data_file())
    if n_members < 1 or n_heldout < 1 or n_members + n_heldout > len(ids):
        raise DataError(f"A photo split needs members >= 1, held-out >= 1 and members + held-out <= {len(ids)}; "
                        f"got {n_members} and {n_heldout}.")
    order = np.random.default_rng(seed).permutation(len(ids))
    return SplitManifest(
        dataset=DATASET,
        member_ids=[ids[i] for i in sorted(order[n_heldout:n_heldout + n_members])],
        heldout_ids=[ids[i] for i in sorted(order[:n_heldout])],
        seed=seed,
        notes=f"permutation of the {len(ids)} rows of {FILE_NAME} with numpy default_rng({seed}); first {n_heldout} held out",
    )


def photos_record(size: int, n_members: int, n_heldout: int, seed: int) -> dict:
    """How a manifest describes the photo data, enough to find the images again."""
    _checked_size(size)
    return {"name": DATASET, "file": FILE_NAME, "size": SIZE, "channels": CHANNELS, "split_seed": int(seed),
            "n_members": int(n_members), "n_heldout": int(n_heldout), "preprocessing": PREPROCESSING}


def photos_by_ids(ids: list[str], size: int = SIZE) -> torch.Tensor:
    """The photos with the given ids, in that order, as (len(ids), 3, 32, 32) in [-1, 1]."""
    _checked_size(size)
    pixels, all_ids = _load(data_file())
    position = {image_id: i for i, image_id in enumerate(all_ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        bad = unknown[0]
        hint = "" if re.fullmatch(r"cifar10-train-\d+", str(bad)) else " (ids look like 'cifar10-train-123')"
        raise DataError(f"{len(unknown)} ids are not in {FILE_NAME} (e.g. {bad!r}){hint}; the manifest that lists "
                        "them belongs to other data.")
    return images_from_array(pixels[[position[i] for i in ids]], channels=CHANNELS, size=SIZE,
                             ids_prefix=DATASET).images
