"""Uploaded files to the model's image size, in memory, by core.data's one conversion policy.

Uploads are read from memory (Streamlit keeps them there) and never written to disk.
"""

from __future__ import annotations

from typing import Callable, Sequence

from core.data import IMAGE_EXTENSIONS, SOURCE_EXTENSIONS, load_images
from core.images import LoadedImages

#: Most files one uploader accepts (a zip counts its images); the rest are skipped, with a note.
MAX_UPLOAD_FILES = 2_000
#: Most images the check page scores at once (each gets its own panel).
MAX_CHECK_IMAGES = 24
#: What every uploader accepts: the file kinds core's loader reads, without the dot.
UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in SOURCE_EXTENSIONS)
#: What an uploader of one single image accepts.
IMAGE_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_EXTENSIONS)


def load_uploads(
    files: Sequence, image_shape: Sequence[int], *, progress: Callable[[int, int], None] | None = None,
) -> LoadedImages:
    """Uploaded files (objects with ``.name`` and ``.getvalue()``, or (name, bytes) pairs) in
    memory to the model's image size by core.data's policy; zips are unpacked in memory."""
    pairs = [f if isinstance(f, tuple) else (f.name, f.getvalue()) for f in files]
    c, h, w = image_shape
    return load_images(pairs, channels=c, size=(h, w), max_files=MAX_UPLOAD_FILES, progress=progress)


def captions_of_uploads(files: Sequence, ids: Sequence[str]) -> list[str | None]:
    """Each uploaded image's caption from a sidecar NAME.txt inside its zip (None where there is none)."""
    from core.conditioning import sidecar_captions

    pairs = [f if isinstance(f, tuple) else (f.name, f.getvalue()) for f in files]
    table = sidecar_captions(pairs) if pairs else None
    return [table.lookup(i) if table is not None else None for i in ids]


def all_or_none(captions: Sequence[str | None]) -> list[str] | None:
    """The captions when every image has one, else None (caption mode then says what is missing)."""
    return None if not captions or any(c is None for c in captions) else list(captions)
