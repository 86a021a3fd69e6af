"""The bundled demo dataset: scikit-learn's handwritten digits, with one fixed member split.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grey digits inside the scikit-learn
wheel, so the demos need no download. They are converted once, the same way for every model:

1. the 0..16 pixel counts become uint8 grey levels round(v * 255 / 16);
2. ``core.data.images_from_array`` upsamples them (Pillow LANCZOS) to ``size`` x ``size``;
3. the result is quantised back to uint8, and converted to [-1, 1] by ``core.data`` again.

Step 3 makes every training image exactly a uint8 picture: saving it as PNG and loading the
PNG through ``core.data`` gives back the training tensor bit for bit, so example uploads and
``--members demo`` see the same numbers the model was trained on.

The split is one seeded permutation of the 1,797 indices: its first ``n_heldout`` entries are
held out from every demo model, and a model with ``n`` members trains on the next ``n``.
Member sets of different sizes are therefore nested and always disjoint from the held-out set.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import photos
from core.images import images_from_array
from core.splits import SplitManifest
from core.errors import DataError

DATASET = "sklearn-digits"
#: The datasets a manifest may name: the bundled digits and the photo demo's CIFAR-10 subset (core.photos).
DATASETS = (DATASET, photos.DATASET)
N_IMAGES = 1797
SPLIT_SEED = 0
N_HELDOUT = 500
MEMORISING_MEMBERS = 256

PREPROCESSING = (
    "sklearn.datasets.load_digits 8x8 counts v in 0..16 -> uint8 round(v * 255 / 16) -> "
    "core.data.images_from_array (Pillow LANCZOS) to {size}x{size} -> uint8 round((x + 1) / 2 * 255) "
    "-> [-1, 1] as 2 * (u / 255) - 1 (exactly what core.data gives for the same PNG)"
)


def digit_id(index: int) -> str:
    """The id of digit ``index`` of ``load_digits`` (its position in scikit-learn's array)."""
    return f"digits-{index:04d}"


@lru_cache(maxsize=4)
def _digits(size: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    counts = load_digits().images  # (1797, 8, 8) float64 in 0..16
    grey = np.rint(counts * (255.0 / 16.0)).astype(np.uint8)
    upsampled = images_from_array(grey, channels=1, size=size, ids_prefix=DATASET).images
    quantised = _to_uint8(upsampled)
    images = images_from_array(quantised, channels=1, size=size, ids_prefix=DATASET).images
    return images, tuple(digit_id(i) for i in range(len(images)))


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensors (N, 1, H, W) to uint8 (N, H, W), rounding as ``core.data.to_uint8_image``."""
    pixels = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
    return torch.round(pixels * 255.0).to(torch.uint8)[:, 0].numpy()


def digits_images(size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """All 1,797 digits as a float32 tensor (1797, 1, size, size) in [-1, 1], and their ids."""
    if int(size) != size or size < 8:
        raise DataError(f"The digits are 8x8; choose a size of 8 or more, got {size}.")
    images, ids = _digits(int(size))
    return images.clone(), list(ids)


def digits_uint8(size: int = 16) -> np.ndarray:
    """The digits as the uint8 pictures (1797, size, size) that PNG files of them hold."""
    images, _ = digits_images(size)
    return _to_uint8(images)


def digits_split(
    n_members: int = MEMORISING_MEMBERS, *, n_heldout: int = N_HELDOUT, seed: int = SPLIT_SEED
) -> SplitManifest:
    """The demo split: ids of ``n_members`` members and ``n_heldout`` held-out digits.

    The held-out set depends only on ``seed`` and ``n_heldout``, and a smaller member set is
    contained in a larger one, so every demo model is audited against the same held-out set.
    """
    if n_members < 1 or n_heldout < 1 or n_members + n_heldout > N_IMAGES:
        raise DataError(
            f"A digits split needs members >= 1, held-out >= 1 and members + held-out <= {N_IMAGES}; "
            f"got {n_members} and {n_heldout}."
        )
    order = _order(seed)
    heldout = sorted(order[:n_heldout].tolist())
    members = sorted(order[n_heldout:n_heldout + n_members].tolist())
    return SplitManifest(
        dataset=DATASET,
        member_ids=[digit_id(i) for i in members],
        heldout_ids=[digit_id(i) for i in heldout],
        seed=seed,
        notes=f"permutation of {N_IMAGES} indices with numpy default_rng({seed}); first {n_heldout} held out",
    )


def _order(seed: int) -> np.ndarray:
    """The one seeded permutation of the digits that every split is cut from."""
    return np.random.default_rng(seed).permutation(N_IMAGES)


def digits_outside_ids(n: int, *, n_members: int, n_heldout: int = N_HELDOUT, seed: int = SPLIT_SEED) -> list[str]:
    """Ids of ``n`` digits that are neither members nor held out of the split with these sizes.

    They are the LAST ``n`` entries of the split's permutation, so they stay clear of that split's
    members and held-out digits (a text demo trains its autoencoder on them).
    """
    if n < 1 or n_members + n_heldout + n > N_IMAGES:
        raise DataError(
            f"Only {N_IMAGES - n_members - n_heldout} digits lie outside a split of {n_members} members and "
            f"{n_heldout} held-out digits; asked for {n}."
        )
    return [digit_id(i) for i in sorted(_order(seed)[N_IMAGES - n:].tolist())]


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STROKE_WORDS = ("thin", "thick")


@lru_cache(maxsize=1)
def _captions() -> tuple[str, ...]:
    """One caption per digit, from its label and how much ink it has compared with its own class.

    "a handwritten three"; the lightest third of each class (total ink of the 8x8 counts, ties
    broken by index) is "a thin handwritten three" and the heaviest third "a thick handwritten
    three". Both facts are read off the data, so the captions are honest and deterministic.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = digits.images.reshape(len(digits.images), -1).sum(1)
    captions = [""] * len(ink)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        ranked = members[np.lexsort((members, ink[members]))]  # by ink, then by index
        third = len(ranked) // 3
        for rank, index in enumerate(ranked):
            stroke = STROKE_WORDS[0] + " " if rank < third else STROKE_WORDS[1] + " " if rank >= len(ranked) - third else ""
            captions[index] = f"a {stroke}handwritten {DIGIT_WORDS[label]}"
    return tuple(captions)


def digit_captions(ids: list[str]) -> list[str]:
    """The caption of each digit id, e.g. "a thick handwritten three" (see ``_captions``)."""
    captions = _captions()
    out = []
    for image_id in ids:
        match = re.fullmatch(r"digits-(\d{4})", image_id)
        if match is None or int(match.group(1)) >= N_IMAGES:
            raise DataError(f"{image_id!r} is not a digit id like 'digits-0042'.")
        out.append(captions[int(match.group(1))])
    return out


def caption_words() -> list[str]:
    """Every word the digit captions use, in a fixed order: the vocabulary of the text demo's tokenizer."""
    return ["a", "handwritten", *STROKE_WORDS, *DIGIT_WORDS]


def dataset_record(size: int, n_members: int, n_heldout: int = N_HELDOUT, seed: int = SPLIT_SEED) -> dict:
    """How a manifest describes the demo data, enough for :func:`split_images` to rebuild it."""
    import sklearn

    return {
        "name": DATASET,
        "sklearn_version": sklearn.__version__,
        "size": int(size),
        "channels": 1,
        "split_seed": int(seed),
        "n_members": int(n_members),
        "n_heldout": int(n_heldout),
        "preprocessing": PREPROCESSING.format(size=size),
    }


def split_images(manifest: dict, which: str) -> tuple[torch.Tensor, list[str]]:
    """The member or held-out images named by a model's manifest, and their ids.

    ``which`` is "members" or "heldout". The manifest's ``dataset`` says how the images were
    made and its ``member_ids`` / ``heldout_ids`` say which ones to take.
    """
    if which not in ("members", "heldout"):
        raise DataError(f"Choose 'members' or 'heldout', got {which!r}.")
    dataset = manifest.get("dataset") if isinstance(manifest, dict) else None
    if not isinstance(dataset, dict) or dataset.get("name") not in DATASETS:
        name = dataset.get("name") if isinstance(dataset, dict) else dataset
        raise DataError(
            f"This model's manifest names dataset {name!r}; only {' and '.join(map(repr, DATASETS))} are known, "
            "so give its member and held-out images as files instead."
        )
    key = "member_ids" if which == "members" else "heldout_ids"
    ids = manifest.get(key)
    if not isinstance(ids, list) or not ids:
        raise DataError(f"The model's manifest has no {key}; give its {which} images as files instead.")
    return images_by_ids(dataset["name"], ids, int(dataset.get("size", 16))), list(ids)


def images_by_ids(dataset: str, ids: list[str], size: int) -> torch.Tensor:
    """The images of a known dataset (:data:`DATASETS`) with the given ids, in that order, in [-1, 1]."""
    if dataset == photos.DATASET:
        return photos.photos_by_ids(ids, size)
    return digits_by_ids(ids, size)


def data_split(data: dict) -> SplitManifest:
    """The split a training config's ``data`` section describes, of the dataset it names."""
    if data["dataset"] == photos.DATASET:
        return photos.photos_split(data["members"], n_heldout=data["heldout"], seed=data["split_seed"])
    return digits_split(data["members"], n_heldout=data["heldout"], seed=data["split_seed"])


def data_record(data: dict) -> dict:
    """How a manifest describes the data of a training config's ``data`` section."""
    if data["dataset"] == photos.DATASET:
        return photos.photos_record(data["size"], data["members"], data["heldout"], data["split_seed"])
    return dataset_record(data["size"], data["members"], data["heldout"], data["split_seed"])


def digits_by_ids(ids: list[str], size: int = 16) -> torch.Tensor:
    """The digits with the given ids, in that order, as (len(ids), 1, size, size) in [-1, 1]."""
    images, all_ids = _digits(int(size))
    position = {image_id: i for i, image_id in enumerate(all_ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise DataError(
            f"{len(unknown)} ids are not digits (e.g. {unknown[0]!r}); a manifest that lists them "
            "is damaged: re-create it with `sima train`."
        )
    return images[[position[i] for i in ids]]


def demo_sets(model) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str]]:
    """(members, member_ids, heldout, heldout_ids) of a bundled demo model, as [-1, 1] images.

    Latent models need ``model.encode`` before an attack; these are images, not latents.
    """
    manifest = getattr(model, "manifest", None)
    if not isinstance(manifest, dict) or "member_ids" not in manifest or "heldout_ids" not in manifest:
        raise DataError(
            f"{getattr(model, 'name', 'This model')} has no manifest with its member and held-out ids, "
            "so 'demo' sets are not known; give member and non-member images as files instead."
        )
    members, member_ids = split_images(manifest, "members")
    heldout, heldout_ids = split_images(manifest, "heldout")
    return members, member_ids, heldout, heldout_ids


def demo_captions(model):
    """The captions of a captioned demo's member and held-out digits (a CaptionTable by id), or
    None for a model whose manifest records none. They are what the model was trained with, so
    ``--members demo`` on a text-to-image demo is conditioned on each image's own caption."""
    from core.conditioning import CaptionTable

    manifest = getattr(model, "manifest", None)
    captions = manifest.get("captions") if isinstance(manifest, dict) else None
    if not isinstance(captions, dict) or not captions:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in captions.items()):
        raise DataError(f"The captions in {getattr(model, 'name', 'the model')}'s manifest must map ids to text; "
                        "re-create it with `sima train`.")
    return CaptionTable(captions, f"{getattr(model, 'name', 'the model')}'s manifest")


def write_examples(folder: str | Path, manifest: dict, model: str, *, per_side: int = 8) -> list[dict]:
    """Save the first ``per_side`` members and held-out digits of a demo model as PNG files.

    Writes ``examples.csv`` (file, id, label, model) beside them and returns its rows. The PNGs
    hold the exact uint8 pictures, so loading one through ``core.data`` gives the training tensor.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = int(manifest["dataset"]["size"])
    images, ids = _digits(size)
    pictures, position = _to_uint8(images), {image_id: i for i, image_id in enumerate(ids)}
    rows = []
    for label, key in (("member", "member_ids"), ("heldout", "heldout_ids")):
        for image_id in manifest[key][:per_side]:
            name = f"{label}-{image_id}.png"
            Image.fromarray(pictures[position[image_id]]).save(folder / name)
            rows.append({"file": name, "id": image_id, "label": label, "model": model})
    with open(folder / "examples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "id", "label", "model"])
        writer.writeheader()
        writer.writerows(rows)
    return rows
