"""Property tests for core.data: hostile bytes only ever raise ImageError; valid images of
every mode and size always become a finite tensor of the model's shape in [-1, 1]."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.data import load_images
from core.images import load_image
from benchmarks.hostile import random_pixels
from core.errors import ImageError

# Pillow warns about the damaged TIFF tags it skips; damage is the point here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# the formats that can hold each mode, so that every decoder sees every mode it supports
FORMATS = {
    "1": ["PNG", "TIFF", "BMP"],
    "L": ["PNG", "TIFF", "JPEG", "BMP", "GIF"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "TIFF", "GIF", "BMP"],
    "RGB": ["PNG", "TIFF", "JPEG", "BMP", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["TIFF", "JPEG"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    # both accepted float ranges, alternating with the seed
    return random_pixels(np.random.default_rng(seed), mode, width, height, scale=255.0 if seed % 2 else 1.0)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def assert_valid(tensor: torch.Tensor, channels: int, h: int, w: int) -> None:
    assert tensor.shape == (channels, h, w) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


@FUZZ
@given(
    mode=st.sampled_from(sorted(FORMATS)),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
    channels=st.sampled_from([1, 3]),
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    data=st.data(),
)
def test_any_valid_image_gives_a_finite_tensor_in_range(
    mode, width, height, seed, channels, h, w, data
):
    fmt = data.draw(st.sampled_from(FORMATS[mode]), label="format")
    payload = encode(random_image(mode, width, height, seed), fmt)
    tensor, notes = load_image(payload, name=f"x.{fmt.lower()}", channels=channels, size=(h, w))
    assert_valid(tensor, channels, h, w)
    assert all(isinstance(note, str) and "\n" not in note for note in notes)


def must_be_image_error_or_valid(payload: bytes) -> None:
    try:
        tensor, _ = load_image(payload, name="fuzz.bin", channels=3, size=8)
    except ImageError as error:
        message = str(error)
        assert message.startswith("fuzz.bin: ") and "\n" not in message
    else:
        assert_valid(tensor, 3, 8, 8)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_image_error(payload):
    must_be_image_error_or_valid(payload)


SEEDS = {
    fmt: encode(random_image("RGB", 12, 9, 0), fmt)
    for fmt in ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
}


@FUZZ
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
)
def test_damaged_real_files_only_raise_image_error(fmt, cut, flips):
    # start from a valid file so that the bytes get past each format's magic number
    payload = bytearray(SEEDS[fmt])
    for position, value in flips:
        payload[position % len(payload)] = value
    must_be_image_error_or_valid(bytes(payload[: max(1, len(payload) - cut % len(payload))]))


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a.png", "b.zip", "c.npz", "d.jpg"]), st.binary(max_size=256)),
        max_size=4,
    )
)
def test_batches_of_junk_never_raise(uploads):
    loaded = load_images(uploads, channels=1, size=4)
    assert loaded.images.shape == (len(loaded.ids), 1, 4, 4)
    # every upload that is not an archive is accounted for, as an image or as a problem
    accounted = {problem.source for problem in loaded.errors}
    accounted |= {image_id.split("[")[0] for image_id in loaded.ids}
    assert {name for name, _ in uploads if not name.endswith(".zip")} <= accounted
