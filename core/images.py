"""Decoding one image (file, bytes or array) into a [-1, 1] tensor by the stated policy.

Every image goes through one conversion (``core.data.POLICY`` states it whole) so that what
the app shows is what the model sees. A file that cannot be used raises ImageError with a
one-line reason naming it; nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError

MAX_PIXELS = 40_000_000
"""Images with more pixels than this are refused before decoding (decompression bombs)."""
REDUCING_GAP = 3.0
"""Pillow's reducing_gap: box-reduce first, keep >= 3x the target, then LANCZOS."""

SLACK = 1e-3
"""Float pixels may stray this far past their range (rounding) before it is misread."""

LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 luminance weights, the ones Pillow uses for RGB -> L."""

# Only the decoders a dataset plausibly needs: fewer parsers see untrusted bytes, and none of
# them shells out (Pillow's EPS reader would run Ghostscript). Pillow's JPEG reader also
# opens the multi-picture JPEGs (MPO) that phones write.
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM", "QOI")
_ANIMATED_FORMATS = {"GIF": "GIF", "PNG": "PNG (APNG)", "WEBP": "WebP"}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
Source = Union[str, "os.PathLike[str]", bytes, bytearray, IO[bytes]]
Size = Union[int, Sequence[int]]


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
    c, h, w = target_shape(channels, size)
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    name = name or _default_name(source)
    with _open(source, name, max_pixels) as opened:
        frame, notes = _decode(opened, name)
        bands, divisor, more = _bands(frame, name)
    notes += more
    return _finish(bands, divisor, c, h, w, notes), notes


def target_shape(channels: int, size: Size) -> tuple[int, int, int]:
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


def one_line(error: BaseException) -> str:
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
            f"{name}: refused as a possible decompression bomb ({one_line(error)}); "
            "use a smaller image."
        ) from None
    except Exception as error:  # any parser failure on untrusted bytes is the file's fault
        raise ImageError(
            f"{name}: could not be read ({one_line(error)}); the file is damaged or not a "
            "standard image: open it in an image editor and re-save it as PNG or JPEG."
        ) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} = {width * height:,} pixels is more than the limit of "
                f"{max_pixels:,} (a possible decompression bomb); shrink it (the model only sees "
                "it at its own size) and add it again."
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
        detail = one_line(error)
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
    if low >= -SLACK and high <= 1 + SLACK:
        return [image], 1.0, []
    if low >= -SLACK and high <= 255 + SLACK:
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
    c, h, w = target_shape(channels, size)
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
    return LoadedImages(stack_images(tensors, c, h, w), ids, notes, errors)


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
    if high <= 1 + SLACK and low >= -SLACK:
        return lambda image: image.astype(np.float32), ["float values read as [0, 1]"]
    if high <= 1 + SLACK and low >= -1 - SLACK:
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


def stack_images(tensors: list[torch.Tensor], c: int, h: int, w: int) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.empty((0, c, h, w), dtype=torch.float32)
