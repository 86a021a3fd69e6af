"""Image sources: files, folders, zips, .npz arrays and uploads -> batches of [-1, 1] tensors.

Each image is decoded by ``core.images`` under one stated ``POLICY``. Hostile or broken files
never crash a batch: the good images are returned and the bad ones are listed with a
one-line reason naming the file. Archives are read in memory, never extracted.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
import torch

from core.errors import ImageError
from core.images import (
    MAX_PIXELS,
    REDUCING_GAP,
    SLACK,
    ImageProblem,
    LoadedImages,
    Size,
    images_from_array,
    load_image,
    one_line,
    stack_images,
    target_shape,
)

MAX_ARCHIVE_BYTES = 2 * 1024**3
"""Zips and .npz files that unpack to more bytes than this are refused (zip bombs)."""

MAX_ARCHIVE_MEMBERS = 100_000
"""Zips with more entries than this are refused."""

IMAGE_EXTENSIONS = frozenset(
    {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".tif", ".tiff",
     ".webp", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi"}
)
"""The files a folder or zip contributes; an image path named explicitly may have any name."""

ARCHIVE_EXTENSIONS = frozenset({".zip", ".npz"})
"""Files that hold many images (a zip of image files, a .npz array), unpacked in memory."""

SOURCE_EXTENSIONS = IMAGE_EXTENSIONS | ARCHIVE_EXTENSIONS
"""Every file kind a loader (and so every uploader of the app) accepts."""

POLICY = f"""\
How images are converted (the same for every file, folder, zip, .npz and upload):
1. Sources: a folder gives its files with image extensions ({", ".join(sorted(IMAGE_EXTENSIONS))}), \
sorted by name, without sub-folders; a zip gives such members at any depth, read in memory, \
skipping folders, __MACOSX and hidden files. Ids are file names, "archive.zip:member" or "name.npz[i]".
2. Safety: images over {MAX_PIXELS:,} pixels (max_pixels) are refused before decoding; every image \
is decoded in full, so truncated files are reported, never padded; zips and .npz files that unpack \
to more than {MAX_ARCHIVE_BYTES:,} bytes or hold more than {MAX_ARCHIVE_MEMBERS:,} entries are refused.
3. Multi-frame files (animated GIF, PNG or WebP, multi-page TIFF): the first frame only (noted).
4. EXIF orientation is applied (noted).
5. Colour: transparent pixels are composited onto a white background (noted); palette, 1-bit \
and CMYK (no colour profile) images become RGB or greyscale; 16-bit greyscale (I;16) and 32-bit \
integer (I) pixels are divided by 65535 (I clipped to 0..65535 first); 32-bit float (F) pixels are \
used as they are when within [0, 1], divided by 255 when within [0, 255], and refused otherwise.
6. Channels: greyscale given to a colour model is copied to 3 channels; colour given to a \
1-channel model becomes luminance 0.299 R + 0.587 G + 0.114 B (both noted).
7. Geometry: centre-crop to the model's aspect ratio (square for a square model; any input \
size or aspect ratio, 1x1 included, is accepted), then resize to the model's H x W with Pillow \
LANCZOS (reducing_gap={REDUCING_GAP}) in 32-bit float, then clip to [0, 1].
8. Values: pixel p in [0, 1] becomes 2p - 1 in [-1, 1]; a float32 tensor (C, H, W).
Arrays (.npz: the array named "x", else the first; or in-memory arrays): uint8 is divided by 255, \
uint16 by 65535; floats are taken as [0, 1] when no value is negative and as [-1, 1] otherwise, \
decided once per array and noted (other ranges are refused; a rounding slack of {SLACK:g} is allowed). Shapes: (H, W); (N, H, W) greyscale; \
(H, W, C), (N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4 (4 = RGBA). Steps 5-8 then apply.
"""
Progress = Callable[[int, int], None]

# ----------------------------------------------------------------------------- many sources


@dataclass(frozen=True)
class _Item:
    """One file to load: an image, or an .npz holding many images."""

    id: str
    fetch: Callable[[], Any]  # a path or the bytes
    is_array: bool = False


def load_images(
    sources: Any,
    *,
    channels: int,
    size: Size,
    max_pixels: int = MAX_PIXELS,
    max_files: int | None = None,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    progress: Progress | None = None,
    first_file: int = 0,
) -> LoadedImages:
    """Load every image from a folder, zip, .npz, image path, or a list of these, by ``POLICY``.

    ``sources`` is a path, or a list of paths, ``(name, bytes)`` pairs or uploaded-file
    objects (with ``.name`` and ``.read()``); names ending in .zip or .npz are unpacked.
    The good images are returned; the bad ones (and unusable archives) are in ``errors``.
    ``max_files`` keeps only the first files in order (``skipped`` counts the rest);
    ``first_file`` starts that many files into the listing (see ``iter_images``);
    ``progress(done, total)`` is called after each file. Raises ImageError only when a
    single path given as ``sources`` does not exist.
    """
    c, h, w = target_shape(channels, size)
    batches = list(iter_images(
        sources, channels=channels, size=size, max_pixels=max_pixels, max_files=max_files,
        max_archive_bytes=max_archive_bytes, progress=progress, first_file=first_file,
    ))
    return LoadedImages(
        images=torch.cat([b.images for b in batches]) if batches else stack_images([], c, h, w),
        ids=[i for b in batches for i in b.ids],
        notes=[n for b in batches for n in b.notes],
        errors=[e for b in batches for e in b.errors],
        skipped=sum(b.skipped for b in batches),
    )


def iter_images(
    sources: Any,
    *,
    channels: int,
    size: Size,
    batch_files: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_files: int | None = None,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    progress: Progress | None = None,
    first_file: int = 0,
) -> Iterator[LoadedImages]:
    """``load_images`` one batch of ``batch_files`` files at a time, so memory holds one batch.

    Listing problems (a missing path in a list, an unusable archive) come with the first
    batch; each batch carries the errors of its own files. An .npz counts as one file and is
    read whole. ``batch_files=None`` reads everything as one batch. ``first_file`` skips that
    many files of the listing (and its listing problems, which belong to the first file), so
    that a worker can read files ``[first_file, first_file + max_files)`` of a large source on
    its own and get exactly the batch a single reader gets there.
    """
    c, h, w = target_shape(channels, size)
    if isinstance(sources, (str, os.PathLike)) and not Path(sources).exists():
        raise ImageError(
            f"{sources}: the path does not exist; give a folder, a .zip, a .npz or an image file."
        )
    with contextlib.ExitStack() as stack:
        errors: list[ImageProblem] = []
        items = _expand_all(_as_list(sources), stack, max_archive_bytes, errors)
        if first_file:
            items, errors = items[first_file:], []
        skipped = 0
        if max_files is not None and len(items) > max_files:
            skipped = len(items) - max_files
            items = items[:max_files]
        step = batch_files or max(1, len(items))
        seen: set[str] = set()  # ids must be unique across batches, not only within one
        for start in range(0, max(1, len(items)), step):
            result = LoadedImages(stack_images([], c, h, w), [], [], errors if start == 0 else [], skipped if start == 0 else 0)
            tensors: list[torch.Tensor] = []
            for done, item in enumerate(items[start:start + step], start=start + 1):
                _load_item(item, (c, h, w), max_pixels, max_archive_bytes, result, tensors, seen)
                if progress is not None:
                    progress(done, len(items))
            result.images = stack_images(tensors, c, h, w)
            yield result


def _as_list(sources: Any) -> list[Any]:
    if isinstance(sources, (str, os.PathLike)) or _is_upload_pair(sources):
        return [sources]
    return list(sources)


def _is_upload_pair(source: Any) -> bool:
    return (
        isinstance(source, tuple)
        and len(source) == 2
        and isinstance(source[0], str)
        and isinstance(source[1], (bytes, bytearray))
    )


def _expand_all(
    sources: list[Any], stack: contextlib.ExitStack, max_bytes: int, errors: list[ImageProblem]
) -> list[_Item]:
    items: list[_Item] = []
    for source in sources:
        try:
            items += _expand(source, stack, max_bytes)
        except ImageError as error:
            errors.append(ImageProblem(_source_label(source), str(error)))
    return items


def _source_label(source: Any) -> str:
    if _is_upload_pair(source):
        return source[0]
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", source))


def _expand(source: Any, stack: contextlib.ExitStack, max_bytes: int) -> list[_Item]:
    if isinstance(source, (str, os.PathLike)):
        return _expand_path(Path(source), stack, max_bytes)
    if _is_upload_pair(source):
        name, data = source[0], bytes(source[1])
    elif hasattr(source, "read") and hasattr(source, "name"):
        name = Path(str(source.name)).name
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
    else:
        raise ImageError(
            f"{source!r}: not a path, a (name, bytes) pair or an uploaded file; "
            "give one of those."
        )
    return _expand_named(name, lambda: data, lambda: io.BytesIO(data), stack, max_bytes)


def _expand_path(path: Path, stack: contextlib.ExitStack, max_bytes: int) -> list[_Item]:
    if not path.exists():
        raise ImageError(f"{path}: the path does not exist; check the spelling.")
    if path.is_dir():
        return [
            _Item(child.name, lambda child=child: child)
            for child in sorted(path.iterdir(), key=lambda child: child.name)
            if child.is_file() and _wanted(child.name)
        ]
    return _expand_named(path.name, lambda: path, lambda: path, stack, max_bytes)


def _expand_named(
    name: str,
    fetch: Callable[[], Any],
    open_archive: Callable[[], Any],
    stack: contextlib.ExitStack,
    max_bytes: int,
) -> list[_Item]:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".zip":
        return _zip_items(name, open_archive(), stack, max_bytes)
    return [_Item(name, fetch, is_array=suffix == ".npz")]


def _wanted(member: str) -> bool:
    parts = PurePosixPath(member).parts
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in parts)
    return not hidden and PurePosixPath(member).suffix.lower() in IMAGE_EXTENSIONS


def open_zip(name: str, archive: Any, max_bytes: int) -> zipfile.ZipFile:
    """Open a zip and refuse it when it would unpack to too much (sizes from its directory)."""
    try:
        zf = zipfile.ZipFile(archive)
    except Exception as error:  # BadZipFile, truncated directories, odd headers
        raise ImageError(f"{name}: not a readable zip file ({one_line(error)}).") from None
    infos = zf.infolist()
    total = sum(info.file_size for info in infos)
    if len(infos) > MAX_ARCHIVE_MEMBERS or total > max_bytes:
        zf.close()
        raise ImageError(
            f"{name}: holds {len(infos):,} entries unpacking to {total:,} bytes, more than the "
            f"limits of {MAX_ARCHIVE_MEMBERS:,} entries and {max_bytes:,} bytes (a possible zip "
            "bomb); split it into smaller archives."
        )
    return zf


def _zip_items(
    name: str, archive: Any, stack: contextlib.ExitStack, max_bytes: int
) -> list[_Item]:
    zf = stack.enter_context(open_zip(name, archive, max_bytes))
    members = sorted(
        (info for info in zf.infolist() if not info.is_dir() and _wanted(info.filename)),
        key=lambda info: info.filename,
    )
    # zipfile stops reading at each member's declared size, so the total checked above holds
    return [
        _Item(f"{name}:{info.filename}", lambda info=info: zf.read(info)) for info in members
    ]


def _load_item(
    item: _Item,
    target: tuple[int, int, int],
    max_pixels: int,
    max_bytes: int,
    result: LoadedImages,
    tensors: list[torch.Tensor],
    seen: set[str],
) -> None:
    c, h, w = target
    try:
        source = item.fetch()
    except Exception as error:  # a corrupt archive member: bad CRC, encrypted, odd compression
        result.errors.append(
            ImageProblem(item.id, f"{item.id}: could not be read ({one_line(error)}).")
        )
        return
    try:
        if item.is_array:
            loaded = images_from_array(
                _read_npz(item.id, source, max_bytes), channels=c, size=(h, w), ids_prefix=item.id
            )
            batch = list(zip(loaded.images, loaded.ids, loaded.notes))
            result.errors.extend(loaded.errors)
        else:
            tensor, notes = load_image(
                source, name=item.id, channels=c, size=(h, w), max_pixels=max_pixels
            )
            batch = [(tensor, item.id, notes)]
    except ImageError as error:
        result.errors.append(ImageProblem(item.id, str(error)))
        return
    for tensor, image_id, notes in batch:
        _append(result, tensors, tensor, image_id, notes, seen)


def _append(
    result: LoadedImages,
    tensors: list[torch.Tensor],
    tensor: torch.Tensor,
    image_id: str,
    notes: list[str],
    seen: set[str],
) -> None:
    if image_id in seen:
        result.errors.append(
            ImageProblem(
                image_id,
                f"{image_id}: another image already has this name; rename one of them.",
            )
        )
        return
    seen.add(image_id)
    tensors.append(tensor)
    result.ids.append(image_id)
    result.notes.append(notes)


def _read_npz(name: str, source: Any, max_bytes: int) -> np.ndarray:
    """The array named "x", else the first, from an .npz (or .npy) without unpickling."""
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    if zipfile.is_zipfile(data):
        open_zip(name, data, max_bytes).close()
    if hasattr(data, "seek"):
        data.seek(0)
    try:
        loaded = np.load(data, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            if not loaded.files:
                raise ImageError(f"{name}: the .npz holds no arrays; save the images as x.")
            return loaded["x" if "x" in loaded.files else loaded.files[0]]
    except ImageError:
        raise
    except Exception as error:  # not a numpy file, pickled objects, corrupt members
        raise ImageError(
            f"{name}: could not be read as a numpy .npz ({one_line(error)}); "
            "save it with numpy.savez(path, x=images)."
        ) from None
