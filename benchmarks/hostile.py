"""The hostile corpus of issue 7: odd and malicious image files, generated in code.

``write_corpus(folder)`` writes every file and returns one ``Case`` per image id the loader
reports (an archive can give several: a zip with a good and a bad member is two cases), each
with the outcome the loader must give. Nothing here is a committed binary; every file is built
from its format's specification or by Pillow, numpy and zipfile.

The corpus is also run through the real ``sima score`` command line: ``score_each`` scores
every file alone (all in one Python process, so torch is imported once) and ``score_all``
scores the whole corpus in one ``python -m core.cli`` process; ``judge_loaded`` and
``judge_cli`` list what differs from the cases' expectations. tests/test_reliability.py and
benchmarks/reliability.py share all of it.

Run as ``python -m benchmarks.hostile`` it is that driver: it reads a JSON list of argument lists
on stdin, calls ``core.cli.main`` on each with stdout and stderr captured, and prints one JSON
line of results.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import time
import traceback
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

SIZE = 8
"""The model size (H = W) the expected notes assume: the tiny models of write_models."""

LOADED, REFUSED = "loaded", "refused"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@dataclass(frozen=True)
class Case:
    """One image id of the corpus and what the loader must do with it.

    ``expect`` is, for a loaded case, a substring of one of its notes ("" = no notes at all),
    and for a refused case a substring of its one-line message. ``member`` is the id the
    loader reports when it is not the file name (zip members, .npz images). ``channels`` is
    the model the case is aimed at (1 for colour given to a greyscale model). ``header_only``
    cases must be refused from their headers alone, before any pixel or member is decoded.
    """

    file: str
    kind: str
    input: str
    outcome: str
    expect: str
    member: str = ""
    channels: int = 3
    header_only: bool = False

    @property
    def id(self) -> str:
        return self.member or self.file


# ----------------------------------------------------------------------------- file builders


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noisy(width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def two_frames(fmt: str) -> bytes:
    """A two-frame animation (red, then blue) in GIF or PNG (APNG)."""
    first, second = Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def write(folder: Path, name: str, payload: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of the given members; a name ending in "/" is a folder entry.

    Every entry is dated 1980-01-01 (ZipInfo's default), so the same members give the same bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, payload in members.items():
            if name.endswith("/"):
                archive.writestr(zipfile.ZipInfo(name), b"")
            else:
                archive.writestr(zipfile.ZipInfo(name), payload, compress_type=method)
    return buffer.getvalue()


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return struct.pack(">I", len(body)) + kind + body + crc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data holds one grey pixel."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + _png_chunk(b"IEND", b"")
    )


def black_one_bit_png(width: int, height: int, *, palette: bool = False) -> bytes:
    """A complete, valid 1-bit PNG (greyscale or 2-colour palette) with every pixel 0.

    Each row is a filter byte and width / 8 zero bytes; zlib squeezes long runs of zeros
    about 1000:1, so 20000 x 20000 pixels take about 50 KB on disk.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 3 if palette else 0, 0, 0, 0)
    row = bytes(1 + math.ceil(width / 8))
    rows_per_feed = max(1, (1 << 22) // len(row))  # feed zlib about 4 MB at a time
    packer = zlib.compressobj(9)
    data = []
    for start in range(0, height, rows_per_feed):
        data.append(packer.compress(row * min(rows_per_feed, height - start)))
    data.append(packer.flush())
    chunks = [_png_chunk(b"IHDR", header)]
    if palette:
        chunks.append(_png_chunk(b"PLTE", bytes(BLUE + RED)))
    chunks += [_png_chunk(b"IDAT", b"".join(data)), _png_chunk(b"IEND", b"")]
    return _PNG_SIGNATURE + b"".join(chunks)


def png_with_text_bomb(inflated_bytes: int) -> bytes:
    """A valid 8x8 PNG carrying a zTXt comment that inflates to ``inflated_bytes`` zeros."""
    plain = encode(Image.new("RGB", (8, 8), GREEN))
    comment = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(inflated_bytes), 9))
    ihdr_end = len(_PNG_SIGNATURE) + 25  # signature, then the 25-byte IHDR chunk
    return plain[:ihdr_end] + comment + plain[ihdr_end:]


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP whose header claims width x height, followed by 12 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = bytes(12)
    offset = 14 + len(info)
    return struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset) + info + pixels


def overlapping_zip_bomb(entries: int, member_bytes: int) -> bytes:
    """A zip whose ``entries`` directory records all point at one deflated block of zeros.

    Each record honestly says its member unpacks to ``member_bytes``, so the archive unpacks
    to entries x member_bytes while holding one compressed block (the overlapping-file zip
    bomb). Built from the zip format's own records: zipfile cannot write shared data.
    """
    zeros = bytes(member_bytes)
    crc = zlib.crc32(zeros)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    block = packer.compress(zeros) + packer.flush()
    names = [f"zeros{i:05d}.png".encode() for i in range(entries)]
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(block), member_bytes, len(names[0]), 0
    )
    central = b"".join(
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(block), member_bytes, len(name), 0, 0, 0, 0, 0, 0,
        ) + name
        for name in names
    )
    start = len(local) + len(names[0]) + len(block)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, len(central), start, 0)
    return local + names[0] + block + central + end


def _exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (32, 16), RED)  # left half red, right half blue
    image.paste(BLUE, (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(image, "JPEG", quality=95, exif=exif)


def _palette_image(transparent: bool) -> bytes:
    image = Image.new("P", (8, 8))
    image.putpalette([*RED, *BLUE])
    image.paste(1, (4, 0, 8, 8))
    return encode(image, transparency=1) if transparent else encode(image)


def _with_alpha(mode: str) -> bytes:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (8, 8, len(mode)), dtype=np.uint8)
    return encode(Image.fromarray(pixels, mode))


def _multipage_tiff() -> bytes:
    first, second = Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)
    return encode(first, "TIFF", save_all=True, append_images=[second])


def _float_tiff_with_nan() -> bytes:
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[3, 3] = np.nan
    return encode(Image.fromarray(pixels), "TIFF")


def _int32_tiff() -> bytes:
    levels = np.linspace(-1000, 100_000, 64, dtype=np.int64).reshape(8, 8).astype(np.int32)
    return encode(Image.fromarray(levels), "TIFF")


def _sixteen_bit_png() -> bytes:
    levels = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    return encode(Image.fromarray(levels))


def _npz_with_nan() -> bytes:
    images = np.random.default_rng(6).random((2, SIZE, SIZE)).astype(np.float32)
    images[1, 2, 5] = np.nan
    return npz(x=images)


def _pickled_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"payload": "unpickling me would run code"}], dtype=object))
    return buffer.getvalue()


_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def _truncated(fmt: str) -> bytes:
    whole = encode(noisy(), fmt)
    return whole[: len(whole) // 2]


def _corrupt_png() -> bytes:
    whole = bytearray(encode(noisy()))
    middle = len(whole) // 2
    whole[middle : middle + 40] = b"\xff" * 40
    return bytes(whole)


def _random(count: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()


def _rgb(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def _grey(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))


# ----------------------------------------------------------------------------- the corpus

Spec = tuple[str, Callable[[], bytes], list[Case]]


def _one(file: str, build: Callable[[], bytes], kind: str, input: str, outcome: str,
         expect: str, **options) -> Spec:
    return file, build, [Case(file, kind, input, outcome, expect, **options)]


def _specs() -> list[Spec]:
    """Every corpus file: its name, how to build its bytes, and its cases."""
    mixed_zip = lambda: zipped({"good.png": _rgb(SIZE, SIZE, 7), "bad.png": b"not a picture"})  # noqa: E731
    return [
        _one("good.png", lambda: _rgb(SIZE, SIZE, 1), "control: a plain image",
             f"{SIZE}x{SIZE} RGB PNG, the model's own size", LOADED, ""),
        _one("noise.jpg", lambda: _random(2048, 3), "not an image",
             "2 KB of random bytes named .jpg", REFUSED, "not an image"),
        _one("text.png", lambda: b"This is a text file that was renamed to .png\n",
             "text file renamed .png", "45 bytes of ASCII text", REFUSED, "not an image"),
        _one("empty.png", lambda: b"", "empty file", "0 bytes", REFUSED, "the file is empty"),
        _one("truncated.png", lambda: _truncated("PNG"), "truncated PNG",
             "first half of a 64x64 noise PNG", REFUSED, "truncated"),
        _one("truncated.jpg", lambda: _truncated("JPEG"), "truncated JPEG",
             "first half of a 64x64 noise JPEG", REFUSED, "truncated"),
        _one("corrupt.png", _corrupt_png, "corrupt PNG data",
             "40 bytes in the middle of the compressed pixels overwritten", REFUSED,
             "could not be decoded"),
        _one("zero_width.png", lambda: png_claiming(0, 10), "impossible header",
             "PNG header claiming 0x10 pixels", REFUSED, "not an image"),
        _one("bomb_cap.png", lambda: black_one_bit_png(7000, 7000), "decompression bomb (our cap)",
             "valid 1-bit PNG, 7000x7000 = 49 Mpx, 6 KB on disk", REFUSED,
             "more than the limit of 40,000,000", header_only=True),
        _one("bomb_palette.png", lambda: black_one_bit_png(20_000, 20_000, palette=True),
             "decompression bomb (Pillow's limit)",
             "valid 1-bit palette PNG, 20000x20000 = 400 Mpx, 50 KB on disk", REFUSED,
             "decompression bomb", header_only=True),
        _one("bomb_header.bmp", lambda: bmp_claiming(50_000, 50_000), "huge-dimension BMP header",
             "66-byte BMP claiming 50000x50000 24-bit pixels", REFUSED, "decompression bomb",
             header_only=True),
        _one("text_bomb.png", lambda: png_with_text_bomb(16 << 20), "metadata bomb",
             "8x8 PNG with a zTXt comment inflating to 16 MiB", REFUSED, "too large",
             header_only=True),
        _one("nan.tiff", _float_tiff_with_nan, "NaN pixel", "32-bit float TIFF, one pixel NaN",
             REFUSED, "NaN"),
        _one("ghostscript.eps", lambda: _EPS, "unsupported format (would run Ghostscript)",
             "an EPS drawing", REFUSED, "not an image in a supported format"),
        _one("bomb.zip", lambda: overlapping_zip_bomb(600, 4 << 20), "zip bomb",
             "600 zip entries sharing one deflated 4 MiB block: 2.5 GB from 40 KB", REFUSED,
             "zip bomb", header_only=True),
        _one("not_a_zip.zip", lambda: b"PK but not really a zip\n", "broken zip",
             "text named .zip", REFUSED, "not a readable zip"),
        ("mixed.zip", mixed_zip, [
            Case("mixed.zip", "zip: good member", "good.png inside mixed.zip", LOADED, "",
                 member="mixed.zip:good.png"),
            Case("mixed.zip", "zip: bad member", "bad.png (text) inside mixed.zip", REFUSED,
                 "not an image", member="mixed.zip:bad.png"),
        ]),
        ("nan.npz", _npz_with_nan, [
            Case("nan.npz", ".npz: finite image", "image 0 of a float (2, 8, 8) array", LOADED,
                 "float values read as [0, 1]", member="nan.npz[0]"),
            Case("nan.npz", ".npz: image with a NaN", "image 1, one value NaN", REFUSED,
                 "NaN or infinite", member="nan.npz[1]"),
        ]),
        _one("wrong_shape.npz", lambda: npz(x=np.zeros((2, 2, 5, 5, 5), dtype=np.uint8)),
             ".npz of the wrong shape", "uint8 array of shape (2, 2, 5, 5, 5)", REFUSED,
             "is not images"),
        _one("pickle.npz", _pickled_npz, ".npz holding pickled objects",
             "object array (loading it would unpickle)", REFUSED,
             "could not be read as a numpy .npz"),
        _one("animated.gif", lambda: two_frames("GIF"), "animated GIF",
             "2 frames, red then blue", LOADED, "first frame of an animated GIF used"),
        _one("animated.png", lambda: two_frames("PNG"), "APNG", "2 frames, red then blue",
             LOADED, "first frame of an animated PNG (APNG) used"),
        _one("multipage.tiff", _multipage_tiff, "multi-page TIFF", "2 pages", LOADED,
             "first image of a multi-image TIFF file used"),
        _one("sixteen_bit.png", _sixteen_bit_png, "16-bit PNG", "8x8 I;16 greyscale ramp",
             LOADED, "16-bit greyscale divided by 65535"),
        _one("int32.tiff", _int32_tiff, "32-bit integer TIFF", "values -1000..100000",
             LOADED, "clipped"),
        _one("cmyk.jpg", lambda: encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
             "CMYK JPEG", "16x16 CMYK red, no colour profile", LOADED,
             "converted from CMYK to RGB"),
        _one("palette.png", lambda: _palette_image(False), "palette image",
             "8x8 P mode, 2 colours", LOADED, "palette colours expanded to RGB"),
        _one("palette_transparent.png", lambda: _palette_image(True),
             "palette with transparency", "8x8 P mode, one colour transparent", LOADED,
             "composited on a white background"),
        _one("grey_alpha.png", lambda: _with_alpha("LA"), "LA alpha",
             "8x8 greyscale + random alpha", LOADED, "composited on a white background"),
        _one("rgba.png", lambda: _with_alpha("RGBA"), "RGBA alpha", "8x8 RGB + random alpha",
             LOADED, "composited on a white background"),
        _one("exif_rotated.jpg", _exif_rotated_jpeg, "EXIF-rotated JPEG",
             "32x16 JPEG, EXIF orientation 6", LOADED, "EXIF orientation (6)"),
        _one("one_pixel.png", lambda: _rgb(1, 1, 8), "1x1 image", "1x1 RGB PNG", LOADED,
             "resized from 1x1"),
        _one("wide.png", lambda: _rgb(1000, 1, 9), "extreme aspect ratio",
             "1000x1 RGB PNG", LOADED, "centre-cropped from 1000x1 to 1x1"),
        _one("tall.png", lambda: _rgb(1, 1000, 10), "extreme aspect ratio",
             "1x1000 RGB PNG", LOADED, "centre-cropped from 1x1000 to 1x1"),
        _one("grey.png", lambda: _grey(SIZE, SIZE, 11), "greyscale to a colour model",
             f"{SIZE}x{SIZE} L PNG, 3-channel model", LOADED, "converted from greyscale"),
        _one("colour.png", lambda: _rgb(SIZE, SIZE, 12), "colour to a greyscale model",
             f"{SIZE}x{SIZE} RGB PNG, 1-channel model", LOADED, "luminance", channels=1),
    ]


def write_corpus(folder: str | os.PathLike) -> list[Case]:
    """Write every hostile or odd file into ``folder`` and return their cases."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for file, build, file_cases in _specs():
        write(folder, file, build())
        cases += file_cases
    return cases


def by_file(cases: Iterable[Case]) -> dict[str, list[Case]]:
    """Cases grouped by file, in corpus order."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.file].append(case)
    return dict(groups)


# ----------------------------------------------------------------------------- judging the loader


def judge_loaded(cases: list[Case], loaded, channels: int) -> list[str]:
    """What differs between ``load_images`` over these cases' files and the cases ([] = none).

    Every case must come out exactly once, as it expects: loaded with its note and a finite
    (channels, SIZE, SIZE) tensor in [-1, 1], or refused with one line that starts with its id.
    Nothing else may come out.
    """
    found: list[str] = []
    ids = list(loaded.ids)
    messages = [problem.message for problem in loaded.errors]
    for case in cases:
        if case.outcome == LOADED:
            found += _judge_one_loaded(case, loaded, ids, channels)
        else:
            found += _judge_one_refused(case, ids, messages)
    known = {case.id for case in cases}
    found += [f"{image_id}: loaded but not in the corpus" for image_id in ids if image_id not in known]
    found += [f"unexpected problem: {m}" for m in messages if not any(m.startswith(f"{i}: ") for i in known)]
    return found


def _judge_one_loaded(case: Case, loaded, ids: list[str], channels: int) -> list[str]:
    if ids.count(case.id) != 1:
        return [f"{case.id}: expected loaded, found {ids.count(case.id)} times among the images"]
    index = ids.index(case.id)
    notes, tensor = loaded.notes[index], loaded.images[index]
    found = []
    if case.expect and not any(case.expect in note for note in notes):
        found.append(f"{case.id}: no note contains {case.expect!r} (notes: {notes})")
    if not case.expect and notes:
        found.append(f"{case.id}: expected no notes, got {notes}")
    if tuple(tensor.shape) != (channels, SIZE, SIZE) or not bool(tensor.isfinite().all()):
        found.append(f"{case.id}: tensor of shape {tuple(tensor.shape)} is not finite or not the model's")
    elif float(tensor.min()) < -1 or float(tensor.max()) > 1:
        found.append(f"{case.id}: values outside [-1, 1]")
    return found


def _judge_one_refused(case: Case, ids: list[str], messages: list[str]) -> list[str]:
    if case.id in ids:
        return [f"{case.id}: expected refused, but it was loaded"]
    mine = [m for m in messages if m.startswith(f"{case.id}: ")]
    if len(mine) != 1:
        return [f"{case.id}: expected one message starting with its name, found {len(mine)}"]
    found = []
    if case.expect not in mine[0]:
        found.append(f"{case.id}: message lacks {case.expect!r}: {mine[0]}")
    if "\n" in mine[0]:
        found.append(f"{case.id}: message is not one line")
    return found


# ----------------------------------------------------------------------------- the command line


@dataclass(frozen=True)
class CliRun:
    """One ``sima score`` invocation: its arguments, exit status and output.

    ``code`` is None when ``core.cli.main`` raised instead of returning (the traceback is then
    in ``stderr``); ``seconds`` is the wall time of the call (of the whole process for
    ``score_all``, torch import included). ``peak_bytes`` is the driver process's peak resident
    memory (VmHWM) after the call, so in ``score_each`` it only grows from call to call.
    """

    argv: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_bytes: int | None = None


#: The tiny random UNet the corpus's expected notes assume (also the tests' tiny models, tests/helpers.py).
TINY_UNET = {
    "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D"),
}


def write_models(folder: str | os.PathLike) -> dict[int, Path]:
    """Tiny random 3x8x8 and 1x8x8 pixel models (seeded, DDPM layout) saved under ``folder``."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    out = {}
    for channels in (3, 1):
        out[channels] = Path(folder) / f"tiny-{channels}ch"
        torch.manual_seed(0)
        UNet2DModel(sample_size=SIZE, in_channels=channels, out_channels=channels, **TINY_UNET).save_pretrained(
            out[channels] / "unet")
        DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_pretrained(out[channels] / "scheduler")
    return out


def cli_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    """The environment of a test run: offline, with its own score cache."""
    return dict(os.environ, HF_HUB_OFFLINE="1", SIMA_CACHE_DIR=str(cache_dir))


def score_argv(model: Path, files: list[Path], t: int = 50) -> list[str]:
    return ["score", "--model", str(model), "--t", str(t), "--json", *map(str, files)]


def score_each(jobs: list[tuple[Path, Path]], cache_dir: str | os.PathLike, timeout: float = 600,
               address_limit: int | None = None, env: dict[str, str] | None = None) -> list[CliRun]:
    """``sima score --json FILE`` for each (file, model), every file alone, in one process.

    ``address_limit`` caps that process's address space (bytes), so that a regression that
    allocates a huge model fails the test instead of taking the machine's memory; ``env`` adds
    environment variables.
    """
    argvs = [score_argv(model, [path]) for path, model in jobs]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hostile"], input=json.dumps(argvs), capture_output=True,
        text=True, cwd=ROOT, env={**cli_env(cache_dir), **(env or {})}, timeout=timeout,
        preexec_fn=None if address_limit is None else lambda: _limit_address_space(address_limit),
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the sima score driver failed ({done.returncode}): {done.stderr[-3000:]}")
    return [CliRun(**run) for run in json.loads(done.stdout.strip().splitlines()[-1])]


def _limit_address_space(nbytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (VmHWM), None where /proc is missing."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def score_all(files: list[Path], model: Path, cache_dir: str | os.PathLike, timeout: float = 600) -> CliRun:
    """``python -m core.cli score --json FILE...`` over all the files, as a real process."""
    argv = score_argv(model, files)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", *argv], capture_output=True, text=True, cwd=ROOT,
        env=cli_env(cache_dir), timeout=timeout,
    )
    return CliRun(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def judge_cli(cases: list[Case], run: CliRun) -> list[str]:
    """What differs between one ``sima score --json`` run over these cases' files and the cases.

    Any bad image means exit status 2, and one ``warning: skipped`` line naming it on stderr;
    the good images are scored (finite statistics in the JSON on stdout), and when there are
    none the command ends with one ``error:`` line. No traceback anywhere.
    """
    found = []
    output = run.stdout + run.stderr
    if run.code is None or "Traceback" in output:
        found.append("crashed: a traceback was printed")
    expected_code = 2 if any(case.outcome == REFUSED for case in cases) else 0
    if run.code != expected_code:
        found.append(f"exit status {run.code}, expected {expected_code}")
    good = sorted(case.id for case in cases if case.outcome == LOADED)
    found += _judge_scores(good, run)
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: skipped ")]
    for case in cases:
        if case.outcome == REFUSED and not any(f": {case.id}: " in line for line in warnings):
            found.append(f"{case.id}: not named in a 'warning: skipped' line on stderr")
    return found


def _judge_scores(good: list[str], run: CliRun) -> list[str]:
    if not good:
        last = run.stderr.strip().splitlines()[-1:] or [""]
        bad = [] if last[0].startswith("error: ") else ["no good image, but no 'error:' line at the end"]
        return bad + ([] if not run.stdout.strip() else ["no good image, yet something on stdout"])
    try:
        records = json.loads(run.stdout)
    except json.JSONDecodeError:
        return ["stdout is not the JSON of the scores"]
    scored = sorted(record["file"] for record in records)
    found = [] if scored == good else [f"scored {scored}, expected {good}"]
    if not all(math.isfinite(record["statistic"]) for record in records):
        found.append("a statistic is not finite")
    return found


def _drive(argvs: list[list[str]]) -> list[dict]:
    """Call ``core.cli.main`` on each argument list, capturing what it prints."""
    from core.cli import main

    results = []
    for argv in argvs:
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse's own usage errors
                code = stop.code if isinstance(stop.code, int) else 2
            except Exception:  # a crash is what this driver exists to catch: record it
                code = None
                traceback.print_exc()
        results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                        "seconds": time.perf_counter() - start, "peak_bytes": peak_rss()})
    return results


if __name__ == "__main__":
    print(json.dumps(_drive(json.load(sys.stdin))))


def random_pixels(rng: np.random.Generator, mode: str, width: int, height: int, scale: float | None = None) -> Image.Image:
    """A random image of any Pillow mode; float images in [0, 1] or [0, 255] (drawn when scale is None)."""
    shape = (height, width)
    if mode == "1":
        return Image.fromarray(rng.random(shape) < 0.5)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32))
    if mode == "F":
        values = rng.random(shape)
        return Image.fromarray((values * (rng.choice([1.0, 255.0]) if scale is None else scale)).astype(np.float32))
    raw = rng.integers(0, 256, width * height * len(mode), dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, (width, height), raw)
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image
