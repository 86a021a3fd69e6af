"""Image sets as a user names them ('demo', a folder, zip, npz, image files, or Parquet / tar
shards), loaded for a model.

The command line and the Python API resolve a set the same way: 'demo' is a bundled model's
own split; anything else goes through ``core.data`` at the model's image size. Files that
cannot be used are handed to ``on_problem`` (one line each) and skipped.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from core.errors import ImageError
from core.images import ImageProblem

OnProblem = Callable[[ImageProblem], None]


def _report(problems: Sequence[ImageProblem], on_problem: OnProblem | None) -> None:
    if on_problem is not None:
        for problem in problems:
            on_problem(problem)


def load_set(spec: str, model, which: str, *, on_problem: OnProblem | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images and ids from 'demo' (the bundled model's own ``which`` side: "members" or
    "heldout") or from a folder / zip / npz / image file."""
    if spec == "demo":
        from core.datasets import demo_sets

        members, member_ids, heldout, heldout_ids = demo_sets(model)
        return (members, member_ids) if which == "members" else (heldout, heldout_ids)
    return load_files([spec], model, on_problem=on_problem)


def reference_set(spec: str, model, calibration, *, on_problem: OnProblem | None = None) -> tuple[torch.Tensor, list[str]]:
    """Known non-members: 'demo' (the model's held-out images less those that chose t, by
    ``calibration``, a ``core.scoring.Calibration``) or files, folders, zips, npz."""
    if spec == "demo":
        from core.scoring import demo_reference

        return demo_reference(model, calibration)
    return load_files([spec], model, on_problem=on_problem)


def stream_set(spec: str, model, which: str, *, on_problem: OnProblem | None = None) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Like :func:`load_set`, but a file source is read one chunk at a time (memory stays flat)."""
    if spec == "demo":
        yield load_set(spec, model, which)
        return
    from core.audit import CHUNK_IMAGES
    from core.data import iter_images
    from core.shards import is_shard_source, iter_units

    c, h, w = model.image_shape
    count = 0
    if is_shard_source(spec):
        chunks = iter_units(spec, channels=c, size=(h, w), chunk=CHUNK_IMAGES)
    else:
        chunks = iter_images(spec, channels=c, size=(h, w), batch_files=CHUNK_IMAGES)
    for batch in chunks:
        _report(batch.errors, on_problem)
        count += len(batch)
        if len(batch):
            yield batch.images, batch.ids
    if count == 0:
        raise ImageError(f"No images could be loaded from {spec}; give a folder, zip or npz of images, or Parquet or tar shards.")


def load_files(sources: Sequence[str], model, *, on_problem: OnProblem | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images and ids from files, folders, zips or npz at the model's image size; raises
    ImageError when none could be loaded."""
    from core.data import load_images

    c, h, w = model.image_shape
    loaded = load_images(sources if len(sources) > 1 else sources[0], channels=c, size=(h, w))
    _report(loaded.errors, on_problem)
    loaded.raise_if_empty()
    return loaded.images, loaded.ids
