"""Safe image loading: files, folders, zips, .npz arrays and uploads -> [-1, 1] tensors.

Every image, whatever its source, goes through one conversion (``POLICY``) so that what the
app shows is what the model sees. Hostile or broken files never crash a batch: the good
images are returned and the bad ones are listed with a one-line reason naming the file.
Nothing here touches the network, and archives are read in memory, never extracted.

Split manifests (which ids were members, which were held out) also live here because they
are lists of the ids this module hands out.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataError, ImageError

MAX_PIXELS = 40_000_000
"""Images with more pixels than this are refused before decoding (decompression bombs)."""

MAX_ARCHIVE_BYTES = 2 * 1024**3
"""Zips and .npz files that unpack to more bytes than this are refused (zip bombs)."""

MAX_ARCHIVE_MEMBERS = 100_000
"""Zips with more entries than this are refused."""

REDUCING_GAP = 3.0
"""Pillow's reducing_gap: box-reduce first, keep >= 3x the target, then LANCZOS."""

_SLACK = 1e-3
"""Float pixels may stray this far past their range (rounding) before it is misread."""

LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 luminance weights, the ones Pillow uses for RGB -> L."""

IMAGE_EXTENSIONS = frozenset(
    {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".tif", ".tiff",
     ".webp", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi"}
)
"""The files a folder or zip contributes; an image path named explicitly may have any name."""

ARCHIVE_EXTENSIONS = frozenset({".zip", ".npz"})
"""Files that hold many images (a zip of image files, a .npz array), unpacked in memory."""

SOURCE_EXTENSIONS = IMAGE_EXTENSIONS | ARCHIVE_EXTENSIONS
"""Every file kind a loader (and so every uploader of the app) accepts."""

# Only the decoders a dataset plausibly needs: fewer parsers see untrusted bytes, and none of
# them shells out (Pillow's EPS reader would run Ghostscript). Pillow's JPEG reader also
# opens the multi-picture JPEGs (MPO) that phones write.
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM", "QOI")
_ANIMATED_FORMATS = {"GIF": "GIF", "PNG": "PNG (APNG)", "WEBP": "WebP"}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

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
decided once per array and noted (other ranges are refused; a rounding slack of {_SLACK:g} is allowed). Shapes: (H, W); (N, H, W) greyscale; \
(H, W, C), (N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4 (4 = RGBA). Steps 5-8 then apply.
"""

Source = Union[str, "os.PathLike[str]", bytes, bytearray, IO[bytes]]
Size = Union[int, Sequence[int]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageProblem:
    """A file (or archive member) that could not be used, and why, in one line."""

    source: str
    message: str


@dataclass
class LoadedImages:
    """A batch of converted images, their ids and notes, and the files that failed.

    ``skipped`` counts the files beyond ``max_files`` that were not read.
    """

    images: torch.Tensor
    ids: list[str]
    notes: list[list[str]]
    errors: list[ImageProblem] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def raise_if_empty(self) -> None:
        """Raise ImageError, listing the first problems, when no image could be loaded."""
        if self.ids:
            return
        if not self.errors:
            raise ImageError(
                "No images were found; give a folder of image files, a .zip, a .npz "
                "or image uploads."
            )
        shown = "; ".join(problem.message for problem in self.errors[:3])
        more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        raise ImageError(f"No images could be loaded: {shown}{more}.")


# ----------------------------------------------------------------------------- one image


def load_image(
    source: Source,
    *,
    name: str | None = None,
    channels: int,
    size: Size,
    max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, list[str]]:
    """Decode one image file and convert it by ``POLICY`` into a (C, H, W) tensor in [-1, 1].

    ``source`` is a path, the file's bytes or a binary file object; ``name`` (default: the
    path's file name) is used in messages. Returns the tensor and the notes on what was done.
    Raises ImageError with a one-line message naming the file when it cannot be used.
    """
    c, h, w = _target(channels, size)
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    name = name or _default_name(source)
    with _open(source, name, max_pixels) as opened:
        frame, notes = _decode(opened, name)
        bands, divisor, more = _bands(frame, name)
    notes += more
    return _finish(bands, divisor, c, h, w, notes), notes


def _target(channels: int, size: Size) -> tuple[int, int, int]:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return channels, int(h), int(w)


def _default_name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return str(getattr(source, "name", "") or "image")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no detail"
    return f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _open(source: Source, name: str, max_pixels: int):
    """Open the file lazily (header only), refusing empty files and oversized images."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: the file does not exist; check the path.")
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image file.")
        empty, fp = path.stat().st_size == 0, path
    else:
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else source.read()
        empty, fp = len(data) == 0, io.BytesIO(data)
    if empty:
        raise ImageError(f"{name}: the file is empty (0 bytes); re-export or re-upload it.")
    try:
        image = Image.open(fp, formats=_formats())
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image in a supported format ({', '.join(_formats())}) "
            "or its header is corrupt; check that it is really an image."
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"{name}: refused as a possible decompression bomb ({_one_line(error)}); "
            "use a smaller image."
        ) from None
    except Exception as error:  # any parser failure on untrusted bytes is the file's fault
        raise ImageError(
            f"{name}: could not be read ({_one_line(error)}); the file is damaged or not a "
            "standard image: open it in an image editor and re-save it as PNG or JPEG."
        ) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} = {width * height:,} pixels is more than the limit of "
                f"{max_pixels:,} (a possible decompression bomb); shrink the image, or raise "
                "max_pixels if you trust it."
            )
        yield image


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(fmt for fmt in _FORMATS if fmt in Image.OPEN)


def _decode(image: Image.Image, name: str) -> tuple[Image.Image, list[str]]:
    """Fully decode the first frame and apply EXIF orientation."""
    notes: list[str] = []
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
            kind = _ANIMATED_FORMATS.get(image.format or "")
            notes.append(
                f"first frame of an animated {kind} used" if kind
                else f"first image of a multi-image {image.format} file used"
            )
        image.load()  # decode everything now, so that truncation raises here
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
            notes.append(f"rotated/flipped as its EXIF orientation ({orientation}) says")
    except Exception as error:  # any decoder failure on untrusted bytes is the file's fault
        detail = _one_line(error)
        what = "is truncated" if "truncated" in detail.lower() else "is corrupt"
        raise ImageError(
            f"{name}: the image {what} and could not be decoded ({detail}); "
            "re-export or re-download it."
        ) from None
    return image, notes


def _bands(image: Image.Image, name: str) -> tuple[list[Image.Image], float, list[str]]:
    """Split into 1 (grey) or 3 (RGB) single-band images and the divisor that maps to [0, 1]."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return [image.convert("F")], 65535.0, ["16-bit greyscale divided by 65535"]
    if image.mode == "I":
        return _int32_band(image)
    if image.mode == "F":
        return _float_band(image, name)
    eight_bit, notes = _to_grey_or_rgb(image, name)
    return list(eight_bit.split()), 255.0, notes


def _int32_band(image: Image.Image) -> tuple[list[Image.Image], float, list[str]]:
    notes = ["32-bit integer greyscale divided by 65535"]
    band = image.convert("F")
    low, high = band.getextrema()
    if low < 0 or high > 65535:
        # clip before resampling so that out-of-range pixels do not bleed into neighbours
        band = Image.fromarray(np.clip(np.asarray(band), 0, 65535).astype(np.float32))
        notes.append(f"values outside 0..65535 (from {low:g} to {high:g}) clipped")
    return [band], 65535.0, notes


def _float_band(image: Image.Image, name: str) -> tuple[list[Image.Image], float, list[str]]:
    values = np.asarray(image, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ImageError(f"{name}: has NaN or infinite pixel values; fix or re-export the image.")
    low, high = float(values.min()), float(values.max())
    if low >= -_SLACK and high <= 1 + _SLACK:
        return [image], 1.0, []
    if low >= -_SLACK and high <= 255 + _SLACK:
        return [image], 255.0, ["32-bit float values in [0, 255] divided by 255"]
    raise ImageError(
        f"{name}: 32-bit float pixels span [{low:g}, {high:g}], neither [0, 1] nor [0, 255]; "
        "rescale them to [0, 1] or save an 8- or 16-bit image."
    )


def _to_grey_or_rgb(image: Image.Image, name: str) -> tuple[Image.Image, list[str]]:
    """Bring any 8-bit mode to L or RGB, compositing transparency onto white."""
    notes: list[str] = []
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA")
        notes.append("palette colours expanded to RGB")
    elif mode == "CMYK":
        image = image.convert("RGB")
        notes.append("converted from CMYK to RGB (no colour profile applied)")
    elif mode in ("La", "RGBa"):
        image = image.convert(mode[:-1] + "A")  # undo premultiplication before compositing
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert(mode + "A")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            image = image.convert("RGB")
        except Exception:
            raise ImageError(
                f"{name}: colour mode {mode} is not supported; save the image as RGB or greyscale."
            ) from None
        notes.append(f"converted from {mode} to RGB")
    if image.mode in ("LA", "RGBA"):
        image, composited = _composite_on_white(image)
        if composited:
            notes.append("transparent pixels composited on a white background")
    return image, notes


def _composite_on_white(image: Image.Image) -> tuple[Image.Image, bool]:
    alpha = image.getchannel("A")
    opaque = image.convert(image.mode[:-1])
    if alpha.getextrema()[0] == 255:
        return opaque, False
    white = Image.new(opaque.mode, opaque.size, (255,) * len(opaque.mode))
    return Image.composite(opaque, white, alpha), True


# ----------------------------------------------------------------------------- geometry


def _centre_box(width: int, height: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The largest centred box with the target's aspect ratio w:h (at least 1x1)."""
    if width * h > height * w:
        crop = max(1, min(width, round(height * w / h)))
        left = (width - crop) // 2
        return left, 0, left + crop, height
    crop = max(1, min(height, round(width * h / w)))
    top = (height - crop) // 2
    return 0, top, width, top + crop


def _resample(bands: list[Image.Image], h: int, w: int, notes: list[str]) -> np.ndarray:
    """Centre-crop and resize every band alike; returns (k, h, w) float32 in band units."""
    width, height = bands[0].size
    box = _centre_box(width, height, h, w)
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    if (crop_w, crop_h) != (width, height):
        notes.append(f"centre-cropped from {width}x{height} to {crop_w}x{crop_h} (width x height)")
    if (crop_w, crop_h) != (w, h):
        notes.append(f"resized from {crop_w}x{crop_h} to {w}x{h} (width x height)")
    planes = []
    for band in bands:
        # crop before resizing: Pillow's resize(box=...) would let the filter reach past the
        # box into the pixels the crop removes
        out = band.crop(box)
        out = out if out.mode == "F" else out.convert("F")
        if out.size != (w, h):
            out = out.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        planes.append(np.asarray(out, dtype=np.float32))
    return np.stack(planes)


def _finish(
    bands: list[Image.Image], divisor: float, c: int, h: int, w: int, notes: list[str]
) -> torch.Tensor:
    """Crop, resize, match the model's channels, clip to [0, 1] and map to [-1, 1]."""
    pixels = _resample(bands, h, w, notes) / np.float32(divisor)
    pixels = _match_channels(pixels, c, notes)
    pixels = np.clip(pixels, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(2.0 * pixels - 1.0, dtype=np.float32))


def _match_channels(pixels: np.ndarray, c: int, notes: list[str]) -> np.ndarray:
    if pixels.shape[0] == c:
        return pixels
    if c == 3:
        notes.append("converted from greyscale: the grey channel copied to R, G and B")
        return np.repeat(pixels, 3, axis=0)
    if np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2]):
        return pixels[:1]  # a grey picture stored as RGB: no colour was lost
    notes.append("converted from colour to luminance 0.299 R + 0.587 G + 0.114 B")
    weights = np.asarray(LUMA, dtype=np.float32).reshape(3, 1, 1)
    return (pixels * weights).sum(axis=0, keepdims=True)


def to_uint8_image(tensor: torch.Tensor) -> Image.Image:
    """The image as the model sees it: a (C, H, W) tensor in [-1, 1] as an L or RGB picture."""
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) tensor, got shape {tuple(tensor.shape)}")
    pixels = (torch.nan_to_num(tensor.detach().float().cpu()) + 1.0) / 2.0
    values = torch.round(pixels.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(values[:, :, 0] if tensor.shape[0] == 1 else values)


# ----------------------------------------------------------------------------- arrays


def images_from_array(
    array: Any,
    *,
    channels: int,
    size: Size,
    ids_prefix: str = "array",
) -> LoadedImages:
    """Convert an in-memory array of images by ``POLICY`` (the array rules at its end).

    Ids are ``f"{ids_prefix}[{i}]"``. Raises ImageError for an unusable dtype, shape or
    value range; images with NaN or infinite values are listed in ``errors``.
    """
    c, h, w = _target(channels, size)
    batch = _as_nhwc(np.asarray(array), ids_prefix)
    to_unit, rule_notes = _unit_rule(batch, ids_prefix)
    tensors, ids, notes, errors = [], [], [], []
    for index, image in enumerate(batch):
        image_id = f"{ids_prefix}[{index}]"
        image_notes = list(rule_notes)
        try:
            tensor = _array_image(to_unit(image), image_id, c, h, w, image_notes)
        except ImageError as error:
            errors.append(ImageProblem(image_id, str(error)))
            continue
        tensors.append(tensor)
        ids.append(image_id)
        notes.append(image_notes)
    return LoadedImages(_stack(tensors, c, h, w), ids, notes, errors)


def _as_nhwc(array: np.ndarray, name: str) -> np.ndarray:
    shape = array.shape
    if array.ndim == 2:
        batch = array[None, :, :, None]
    elif array.ndim == 3:
        batch = array[None] if shape[-1] in (1, 3, 4) else array[..., None]
    elif array.ndim == 4 and shape[-1] in (1, 3, 4):
        batch = array
    elif array.ndim == 4 and shape[1] in (1, 3, 4):
        batch = array.transpose(0, 2, 3, 1)
    else:
        raise ImageError(
            f"{name}: an array of shape {shape} is not images; use (N, H, W), (N, H, W, C) "
            "or (N, C, H, W) with C = 1, 3 or 4."
        )
    if batch.shape[0] == 0 or batch.shape[1] == 0 or batch.shape[2] == 0:
        raise ImageError(f"{name}: the array of shape {shape} holds no pixels.")
    return batch


def _unit_rule(
    batch: np.ndarray, name: str
) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """How to map this array's values to [0, 1], decided once for the whole array."""
    if batch.dtype == np.uint8:
        return lambda image: image.astype(np.float32) / np.float32(255), []
    if batch.dtype == np.uint16:
        return lambda image: image.astype(np.float32) / np.float32(65535), []
    if not np.issubdtype(batch.dtype, np.floating):
        raise ImageError(
            f"{name}: arrays of dtype {batch.dtype} are not supported; use uint8 (0..255), "
            "uint16 or floats in [0, 1] or [-1, 1]."
        )
    finite = batch[np.isfinite(batch)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if high <= 1 + _SLACK and low >= -_SLACK:
        return lambda image: image.astype(np.float32), ["float values read as [0, 1]"]
    if high <= 1 + _SLACK and low >= -1 - _SLACK:
        shift = lambda image: (image.astype(np.float32) + np.float32(1)) / np.float32(2)  # noqa: E731
        return shift, ["float values read as [-1, 1]"]
    raise ImageError(
        f"{name}: float values span [{low:g}, {high:g}]; rescale them to [0, 1] or [-1, 1] "
        "(or give uint8 pixels)."
    )


def _array_image(
    unit: np.ndarray, image_id: str, c: int, h: int, w: int, notes: list[str]
) -> torch.Tensor:
    if not np.isfinite(unit).all():
        raise ImageError(f"{image_id}: has NaN or infinite values; fix the array.")
    if unit.shape[-1] == 4:
        alpha = np.clip(unit[..., -1:], 0.0, 1.0)
        if (alpha < 1).any():
            notes.append("transparent pixels composited on a white background")
        unit = unit[..., :-1] * alpha + (1.0 - alpha)
    bands = [Image.fromarray(np.ascontiguousarray(unit[..., k])) for k in range(unit.shape[-1])]
    return _finish(bands, 1.0, c, h, w, notes)


def _stack(tensors: list[torch.Tensor], c: int, h: int, w: int) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.empty((0, c, h, w), dtype=torch.float32)


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
) -> LoadedImages:
    """Load every image from a folder, zip, .npz, image path, or a list of these, by ``POLICY``.

    ``sources`` is a path, or a list of paths, ``(name, bytes)`` pairs or uploaded-file
    objects (with ``.name`` and ``.read()``); names ending in .zip or .npz are unpacked.
    The good images are returned; the bad ones (and unusable archives) are in ``errors``.
    ``max_files`` keeps only the first files in order (``skipped`` counts the rest);
    ``progress(done, total)`` is called after each file. Raises ImageError only when a
    single path given as ``sources`` does not exist.
    """
    c, h, w = _target(channels, size)
    batches = list(iter_images(
        sources, channels=channels, size=size, max_pixels=max_pixels, max_files=max_files,
        max_archive_bytes=max_archive_bytes, progress=progress,
    ))
    return LoadedImages(
        images=torch.cat([b.images for b in batches]) if batches else _stack([], c, h, w),
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
) -> Iterator[LoadedImages]:
    """``load_images`` one batch of ``batch_files`` files at a time, so memory holds one batch.

    Listing problems (a missing path in a list, an unusable archive) come with the first
    batch; each batch carries the errors of its own files. An .npz counts as one file and is
    read whole. ``batch_files=None`` reads everything as one batch.
    """
    c, h, w = _target(channels, size)
    if isinstance(sources, (str, os.PathLike)) and not Path(sources).exists():
        raise ImageError(
            f"{sources}: the path does not exist; give a folder, a .zip, a .npz or an image file."
        )
    with contextlib.ExitStack() as stack:
        errors: list[ImageProblem] = []
        items = _expand_all(_as_list(sources), stack, max_archive_bytes, errors)
        skipped = 0
        if max_files is not None and len(items) > max_files:
            skipped = len(items) - max_files
            items = items[:max_files]
        step = batch_files or max(1, len(items))
        seen: set[str] = set()  # ids must be unique across batches, not only within one
        for start in range(0, max(1, len(items)), step):
            result = LoadedImages(_stack([], c, h, w), [], [], errors if start == 0 else [], skipped if start == 0 else 0)
            tensors: list[torch.Tensor] = []
            for done, item in enumerate(items[start:start + step], start=start + 1):
                _load_item(item, (c, h, w), max_pixels, max_archive_bytes, result, tensors, seen)
                if progress is not None:
                    progress(done, len(items))
            result.images = _stack(tensors, c, h, w)
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


def _open_zip(name: str, archive: Any, max_bytes: int) -> zipfile.ZipFile:
    """Open a zip and refuse it when it would unpack to too much (sizes from its directory)."""
    try:
        zf = zipfile.ZipFile(archive)
    except Exception as error:  # BadZipFile, truncated directories, odd headers
        raise ImageError(f"{name}: not a readable zip file ({_one_line(error)}).") from None
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
    zf = stack.enter_context(_open_zip(name, archive, max_bytes))
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
            ImageProblem(item.id, f"{item.id}: could not be read ({_one_line(error)}).")
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
        _open_zip(name, data, max_bytes).close()
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
            f"{name}: could not be read as a numpy .npz ({_one_line(error)}); "
            "save it with numpy.savez(path, x=images)."
        ) from None


# ----------------------------------------------------------------------------- split manifests


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
                f"{path}: not a readable JSON split manifest ({_one_line(error)})."
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
