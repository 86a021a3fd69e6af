"""core.data, core.images and core.splits: every hostile or odd file is generated in code (builders in benchmarks/hostile.py),
never committed as a binary."""

from __future__ import annotations

import io
import json
import os
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from core import data
from core.data import load_images
from core.images import ImageProblem, LoadedImages, images_from_array, load_image, to_uint8_image
from core.splits import SplitManifest, make_split
from core.errors import DataError, ImageError
from benchmarks.hostile import (
    BLUE,
    GREEN,
    RED,
    encode,
    noisy,
    npz,
    png_claiming,
    two_frames,
    write,
    zipped,
)


def unit(value: float) -> float:
    """The tensor value of a pixel at fraction ``value`` of full scale."""
    return 2.0 * value - 1.0


def load(payload: bytes, channels: int = 3, size=8, **kw):
    return load_image(payload, name="probe.png", channels=channels, size=size, **kw)


def expect_error(payload, *fragments: str, **kw) -> str:
    with pytest.raises(ImageError) as caught:
        load(payload, **kw)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("probe.png:")
    for fragment in fragments:
        assert fragment in message
    return message


# ----------------------------------------------------------------------------- values and geometry


def test_white_is_plus_one_black_is_minus_one_grey_is_exact():
    for colour, expected in [(255, 1.0), (0, -1.0), (128, unit(128 / 255))]:
        tensor, notes = load(encode(Image.new("RGB", (8, 8), (colour,) * 3)))
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 8, 8)
        assert torch.allclose(tensor, torch.full_like(tensor, expected), atol=1e-6)
        assert notes == []


def test_eight_bit_round_trip_through_to_uint8_image_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    tensor, _ = load(encode(Image.fromarray(pixels)), size=12)
    assert np.array_equal(np.asarray(to_uint8_image(tensor)), pixels)


def test_resized_values_stay_within_minus_one_one():
    # enlarging a hard black/white edge makes LANCZOS ring about 11% past both ends
    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[:, 4:] = 255
    tensor, notes = load(encode(Image.fromarray(pixels)), channels=1, size=29)
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    assert notes == ["resized from 8x8 to 29x29 (width x height)"]
    pixels = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)
    tensor, _ = load(encode(Image.fromarray(pixels)), channels=1, size=7)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def three_bands(width: int = 30, height: int = 10) -> Image.Image:
    image = Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, width // 3, height))
    image.paste(BLUE, (2 * width // 3, 0, width, height))
    return image


def test_centre_crop_removes_the_side_bands_exactly():
    tensor, notes = load(encode(three_bands()), size=10)
    assert torch.equal(tensor, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 10, 10))
    assert notes == ["centre-cropped from 30x10 to 10x10 (width x height)"]


def test_cropped_pixels_do_not_leak_into_the_resize():
    tensor, _ = load(encode(three_bands(90, 30)), size=7)
    expected = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 7, 7)
    assert torch.allclose(tensor, expected, atol=1e-5)


def test_non_square_target_crops_to_its_aspect_ratio():
    tall = three_bands(30, 10).rotate(90, expand=True)  # 10 wide, 30 high, bands top to bottom
    tensor, notes = load(encode(tall), size=(10, 10))
    assert torch.equal(tensor[:, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))
    tensor, notes = load(encode(tall), size=(30, 10))
    assert notes == [] and tensor.shape == (3, 30, 10)
    wide_target, notes = load(encode(tall), size=(5, 10))
    assert "centre-cropped from 10x30 to 10x5 (width x height)" in notes
    assert torch.equal(wide_target, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 5, 10))


def test_one_by_one_image_fills_the_target():
    tensor, notes = load(encode(Image.new("RGB", (1, 1), (200, 100, 50))), size=6)
    expected = torch.tensor([unit(200 / 255), unit(100 / 255), unit(50 / 255)]).view(3, 1, 1)
    assert torch.allclose(tensor, expected.expand(3, 6, 6), atol=1e-5)
    assert notes == ["resized from 1x1 to 6x6 (width x height)"]


@pytest.mark.parametrize("width,height", [(10_000, 1), (1, 10_000)])
def test_extreme_aspect_ratio_keeps_the_centre_pixel(width, height):
    image = Image.new("L", (width, height), 0)
    image.putpixel(((width - 1) // 2, (height - 1) // 2), 255)
    tensor, notes = load(encode(image), channels=1, size=4)
    assert torch.allclose(tensor, torch.ones(1, 4, 4), atol=1e-6)
    assert notes[0] == f"centre-cropped from {width}x{height} to 1x1 (width x height)"


# ----------------------------------------------------------------------------- hostile files


def test_random_bytes_and_text_are_not_images():
    noise = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    expect_error(noise, "not an image")
    expect_error(b"hello, I am a text file\n", "not an image")


def test_empty_file_and_missing_path(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"^empty\.png: the file is empty"):
        load_image(empty, channels=3, size=8)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "gone.png", channels=3, size=8)
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path, channels=3, size=8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_detected_not_padded(fmt):
    whole = encode(noisy(), fmt)
    load(whole)  # the intact file loads
    expect_error(whole[: len(whole) // 2], "truncated")


def test_corrupt_png_data_is_reported():
    whole = bytearray(encode(noisy()))
    whole[len(whole) // 2 : len(whole) // 2 + 40] = b"\xff" * 40
    expect_error(bytes(whole), "could not be decoded")


def test_pixel_cap_is_checked_before_decoding():
    small = encode(Image.new("RGB", (10, 10)))
    expect_error(small, "10x10 = 100 pixels", "limit of 99", max_pixels=99)
    load(small, max_pixels=100)
    # the header claims 48 megapixels but holds one pixel: decoding it would say "truncated"
    message = expect_error(png_claiming(8000, 6000), "decompression bomb", "limit of 40,000,000")
    assert "truncated" not in message


def test_header_far_beyond_pillows_own_limit_is_refused():
    expect_error(png_claiming(100_000, 100_000), "decompression bomb")


def test_real_large_sparse_image_is_refused_by_the_cap():
    big = encode(Image.new("1", (5000, 5000)))  # 25 megapixels, a few kilobytes of PNG
    assert len(big) < 100_000
    expect_error(big, "25,000,000 pixels", max_pixels=1_000_000)


def test_zero_width_header_is_not_an_image():
    expect_error(png_claiming(0, 10), "not an image")


# ----------------------------------------------------------------------------- formats and modes


@pytest.mark.parametrize("fmt,label", [("GIF", "GIF"), ("PNG", "PNG (APNG)")])
def test_animation_uses_the_first_frame(fmt, label):
    tensor, notes = load(two_frames(fmt))
    assert torch.equal(tensor, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8))
    assert notes[0] == f"first frame of an animated {label} used"


def test_sixteen_bit_png_is_scaled_by_65535_not_clipped():
    levels = np.array([[0, 32768, 65535, 255]], dtype=np.uint16)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    tensor, notes = load(encode(image), channels=1, size=(1, 4))
    expected = torch.tensor([-1.0, unit(32768 / 65535), 1.0, unit(255 / 65535)])
    assert torch.allclose(tensor.flatten(), expected, atol=1e-6)
    assert notes == ["16-bit greyscale divided by 65535"]


def test_thirty_two_bit_integer_is_clipped_to_sixteen_bits():
    levels = np.array([[-5, 0, 32768, 65535, 70_000]], dtype=np.int32)
    tensor, notes = load(encode(Image.fromarray(levels), "TIFF"), channels=1, size=(1, 5))
    expected = torch.tensor([-1.0, -1.0, unit(32768 / 65535), 1.0, 1.0])
    assert torch.allclose(tensor.flatten(), expected, atol=1e-6)
    assert "values outside 0..65535 (from -5 to 70000) clipped" in notes


def test_float_images_in_unit_or_byte_range_and_refused_otherwise():
    unit_range = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    tensor, notes = load(encode(unit_range, "TIFF"), channels=1, size=(1, 3))
    assert torch.allclose(tensor.flatten(), torch.tensor([-1.0, -0.5, 1.0]))
    assert notes == []
    byte_range = Image.fromarray(np.array([[0.0, 51.0, 255.0]], dtype=np.float32))
    tensor, notes = load(encode(byte_range, "TIFF"), channels=1, size=(1, 3))
    assert torch.allclose(tensor.flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    assert notes == ["32-bit float values in [0, 255] divided by 255"]
    wild = Image.fromarray(np.array([[-3.0, 1000.0]], dtype=np.float32))
    expect_error(encode(wild, "TIFF"), "span [-3, 1000]", channels=1)
    nan = Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32))
    expect_error(encode(nan, "TIFF"), "NaN", channels=1)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink-wise
    tensor, notes = load(encode(cmyk, "JPEG", quality=95), size=16)
    assert torch.allclose(tensor.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.05)
    assert "converted from CMYK to RGB (no colour profile applied)" in notes


def test_palette_image_keeps_its_colours():
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    tensor, notes = load(encode(image), size=(1, 2))
    assert torch.equal(tensor[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(tensor[:, 0, 1], torch.tensor([-1.0, -1.0, 1.0]))
    assert notes == ["palette colours expanded to RGB"]


def test_palette_transparency_becomes_white():
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    tensor, notes = load(encode(image, transparency=1), size=(1, 2))
    assert torch.equal(tensor[:, 0, 1], torch.ones(3))
    assert "transparent pixels composited on a white background" in notes


def test_rgba_composites_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 51)])
    tensor, notes = load(encode(image), size=(1, 3))
    assert torch.equal(tensor[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(tensor[:, 0, 1], torch.ones(3))
    # 20% black over white leaves 80% white: 204 of 255
    assert torch.allclose(tensor[:, 0, 2], torch.full((3,), unit(204 / 255)), atol=1 / 255)
    assert notes == ["transparent pixels composited on a white background"]


def test_la_composites_on_white_and_opaque_alpha_adds_no_note():
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (0, 255)])
    tensor, notes = load(encode(image), channels=1, size=(1, 2))
    assert torch.equal(tensor.flatten(), torch.tensor([1.0, -1.0]))
    assert notes == ["transparent pixels composited on a white background"]
    _, notes = load(encode(Image.new("RGBA", (4, 4), (9, 9, 9, 255))), size=4)
    assert notes == []


@pytest.mark.parametrize("orientation,top,bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(orientation, top, bottom):
    image = Image.new("RGB", (32, 16), RED)  # left half red, right half blue
    image.paste(BLUE, (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    tensor, notes = load(encode(image, "JPEG", quality=95, exif=exif), size=(32, 16))
    colour = lambda rgb: torch.tensor([unit(v / 255) for v in rgb])  # noqa: E731
    assert torch.allclose(tensor[:, 4:12, 4:12].mean(dim=(1, 2)), colour(top), atol=0.05)
    assert torch.allclose(tensor[:, 20:28, 4:12].mean(dim=(1, 2)), colour(bottom), atol=0.05)
    assert notes == [f"rotated/flipped as its EXIF orientation ({orientation}) says"]


def test_greyscale_to_colour_model_is_replicated_and_noted():
    tensor, notes = load(encode(Image.new("L", (4, 4), 51)), channels=3, size=4)
    assert torch.allclose(tensor, torch.full((3, 4, 4), -0.6))
    assert notes == ["converted from greyscale: the grey channel copied to R, G and B"]


def test_colour_to_one_channel_model_is_luminance_and_noted():
    tensor, notes = load(encode(Image.new("RGB", (4, 4), (255, 0, 0))), channels=1, size=4)
    assert torch.allclose(tensor, torch.full((1, 4, 4), unit(0.299)), atol=1e-6)
    assert notes == ["converted from colour to luminance 0.299 R + 0.587 G + 0.114 B"]
    _, notes = load(encode(Image.new("RGB", (4, 4), (7, 7, 7))), channels=1, size=4)
    assert notes == []  # grey stored as RGB loses nothing


def test_one_bit_image():
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    tensor, _ = load(encode(image), channels=1, size=(1, 2))
    assert torch.equal(tensor.flatten(), torch.tensor([-1.0, 1.0]))


def test_file_like_source_and_default_name(tmp_path):
    payload = encode(Image.new("RGB", (4, 4), RED))
    tensor, _ = load_image(io.BytesIO(payload), channels=3, size=4)
    path = tmp_path / "red.png"
    path.write_bytes(payload)
    assert torch.equal(tensor, load_image(path, channels=3, size=4)[0])
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match=r"^broken\.png: "):
        load_image(tmp_path / "broken.png", channels=3, size=4)


def test_bad_arguments_are_programming_errors():
    payload = encode(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError):
        load(payload, channels=2)
    with pytest.raises(ValueError):
        load(payload, size=(0, 4))
    with pytest.raises(ValueError):
        load(payload, max_pixels=0)


# ----------------------------------------------------------------------------- many files


def test_folder_loads_good_files_and_lists_bad_ones(tmp_path):
    write(tmp_path, "b_red.png", encode(Image.new("RGB", (6, 6), RED)))
    write(tmp_path, "a_blue.jpg", encode(Image.new("RGB", (6, 6), BLUE), "JPEG"))
    write(tmp_path, "c_text.png", b"not a picture")
    write(tmp_path, "d_empty.gif", b"")
    write(tmp_path, "e_cut.png", encode(noisy())[:300])
    write(tmp_path, "readme.txt", b"ignored: not an image extension")
    write(tmp_path, ".hidden.png", b"ignored: hidden")
    write(tmp_path, "sub/deeper.png", encode(Image.new("RGB", (6, 6))))  # not recursed into
    loaded = load_images(tmp_path, channels=3, size=4)
    assert loaded.ids == ["a_blue.jpg", "b_red.png"]
    assert loaded.images.shape == (2, 3, 4, 4) and len(loaded) == 2
    sources = [problem.source for problem in loaded.errors]
    assert sources == ["c_text.png", "d_empty.gif", "e_cut.png"]
    assert "empty" in loaded.errors[1].message and "truncated" in loaded.errors[2].message
    assert all("\n" not in problem.message for problem in loaded.errors)
    loaded.raise_if_empty()


def test_nothing_loaded_raises_with_the_first_problems(tmp_path):
    empty = load_images(tmp_path, channels=3, size=4)
    assert empty.images.shape == (0, 3, 4, 4)
    with pytest.raises(ImageError, match="No images were found"):
        empty.raise_if_empty()
    for index in range(5):
        write(tmp_path, f"bad{index}.png", b"junk")
    bad = load_images(tmp_path, channels=3, size=4)
    with pytest.raises(ImageError) as caught:
        bad.raise_if_empty()
    message = str(caught.value)
    assert message.startswith("No images could be loaded: bad0.png:")
    assert "bad2.png" in message and "bad3.png" not in message and "(and 2 more)" in message


def test_missing_path_raises_and_missing_list_entry_is_listed(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_images(tmp_path / "nowhere", channels=3, size=4)
    good = write(tmp_path, "good.png", encode(Image.new("RGB", (4, 4))))
    loaded = load_images([good, tmp_path / "nowhere.png"], channels=3, size=4)
    assert loaded.ids == ["good.png"]
    assert "does not exist" in loaded.errors[0].message


def test_max_files_and_progress(tmp_path):
    for index in range(3):
        write(tmp_path, f"{index}.png", encode(Image.new("L", (4, 4), index)))
    calls = []
    loaded = load_images(
        tmp_path, channels=1, size=4, max_files=2, progress=lambda d, t: calls.append((d, t))
    )
    assert loaded.ids == ["0.png", "1.png"] and loaded.skipped == 1
    assert calls == [(1, 2), (2, 2)]


def test_duplicate_names_are_listed_not_merged(tmp_path):
    first = write(tmp_path, "one/x.png", encode(Image.new("RGB", (4, 4), RED)))
    second = write(tmp_path, "two/x.png", encode(Image.new("RGB", (4, 4), BLUE)))
    loaded = load_images([first, second], channels=3, size=4)
    assert loaded.ids == ["x.png"] and loaded.images[0, 0, 0, 0] == 1.0
    assert "already has this name" in loaded.errors[0].message


def test_uploads_as_pairs_and_file_objects():
    red = encode(Image.new("RGB", (4, 4), RED))
    upload = io.BytesIO(encode(Image.new("RGB", (4, 4), BLUE)))
    upload.name = "folder/blue.png"
    loaded = load_images([("red.png", red), ("junk.png", b"??"), upload], channels=3, size=4)
    assert loaded.ids == ["red.png", "blue.png"]
    assert [problem.source for problem in loaded.errors] == ["junk.png"]
    single = load_images(("red.png", red), channels=3, size=4)
    assert single.ids == ["red.png"]
    odd = load_images([42], channels=3, size=4)
    assert odd.ids == [] and "not a path" in odd.errors[0].message


def test_zip_members_are_read_in_memory(tmp_path):
    red = encode(Image.new("RGB", (4, 4), RED))
    archive = zipped(
        {
            "pics/": b"",
            "pics/b.png": red,
            "a.png": red,
            "pics/bad.png": b"broken",
            "__MACOSX/pics/._b.png": b"resource fork",
            "pics/.secret.png": red,
            "notes.txt": b"skip",
        }
    )
    path = write(tmp_path, "set.zip", archive)
    loaded = load_images(path, channels=3, size=4)
    assert loaded.ids == ["set.zip:a.png", "set.zip:pics/b.png"]
    assert [problem.source for problem in loaded.errors] == ["set.zip:pics/bad.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.zip"]  # nothing extracted
    from_upload = load_images([("set.zip", archive)], channels=3, size=4)
    assert from_upload.ids == loaded.ids


def test_zip_bomb_is_refused_by_the_unpacked_size():
    archive = zipped({"zeros.png": bytes(2_000_000)})
    assert len(archive) < 20_000
    loaded = load_images(
        [("bomb.zip", archive)], channels=3, size=4, max_archive_bytes=1_000_000
    )
    assert loaded.ids == [] and "zip bomb" in loaded.errors[0].message
    assert loaded.errors[0].source == "bomb.zip"


def test_zip_with_a_corrupt_member_and_a_non_zip():
    members = {"a.png": encode(noisy()), "b.png": encode(noisy())}
    archive = bytearray(zipped(members, zipfile.ZIP_STORED))
    start = archive.index(b"IDAT") + 100
    archive[start : start + 10] = b"\x00" * 10  # breaks a.png's CRC inside the zip
    loaded = load_images([("x.zip", bytes(archive)), ("y.zip", b"not a zip")], channels=3, size=4)
    assert loaded.ids == ["x.zip:b.png"]
    assert "could not be read" in loaded.errors[1].message  # bad CRC
    assert "not a readable zip" in loaded.errors[0].message


def test_npz_layouts_and_ranges(tmp_path):
    rng = np.random.default_rng(3)
    nhwc = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    nchw_unit = rng.random((2, 3, 5, 5)).astype(np.float32)
    grey_signed = rng.uniform(-1, 1, (3, 5, 5))
    cases = [
        (npz(x=nhwc), 3, nhwc.transpose(0, 3, 1, 2) / 255.0),
        (npz(x=nchw_unit), 3, nchw_unit),
        (npz(images=grey_signed), 1, (grey_signed[:, None] + 1) / 2),
    ]
    for payload, channels, expected_unit in cases:
        loaded = load_images([("d.npz", payload)], channels=channels, size=5)
        assert loaded.ids == [f"d.npz[{i}]" for i in range(len(expected_unit))]
        expected = torch.from_numpy(2 * expected_unit - 1).float()
        assert torch.allclose(loaded.images, expected, atol=1e-5)


def test_npz_prefers_x_and_reads_from_disk(tmp_path):
    ones = np.ones((1, 4, 4), dtype=np.float32)
    path = write(tmp_path, "pair.npz", npz(a=np.zeros((1, 4, 4), dtype=np.float32), x=ones))
    loaded = load_images(path, channels=1, size=4)
    assert loaded.ids == ["pair.npz[0]"] and torch.equal(loaded.images, torch.ones(1, 1, 4, 4))


def test_bad_npz_files_are_listed():
    pickled = io.BytesIO()
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    loaded = load_images(
        [
            ("range.npz", npz(x=np.full((1, 4, 4), 7.0))),
            ("ints.npz", npz(x=np.zeros((1, 4, 4), dtype=np.int64))),
            ("shape.npz", npz(x=np.zeros((2, 2, 5, 5, 5), dtype=np.uint8))),
            ("pickle.npz", pickled.getvalue()),
            ("none.npz", npz()),
            ("junk.npz", b"junk"),
        ],
        channels=1,
        size=4,
    )
    assert loaded.ids == []
    messages = [problem.message for problem in loaded.errors]
    assert "float values span [7, 7]" in messages[0]
    assert "dtype int64" in messages[1]
    assert "shape (2, 2, 5, 5, 5)" in messages[2]
    assert "could not be read as a numpy .npz" in messages[3]
    assert "holds no arrays" in messages[4]
    assert "could not be read as a numpy .npz" in messages[5]


def test_npz_bomb_is_refused():
    payload = npz(x=np.zeros((40, 100, 100), dtype=np.uint8))
    loaded = load_images([("big.npz", payload)], channels=1, size=4, max_archive_bytes=100_000)
    assert loaded.ids == [] and "zip bomb" in loaded.errors[0].message


# ----------------------------------------------------------------------------- arrays


def test_array_and_file_take_the_same_code_path():
    pixels = np.random.default_rng(4).integers(0, 256, (23, 17, 3), dtype=np.uint8)
    from_file, file_notes = load(encode(Image.fromarray(pixels)), size=9)
    from_array = images_from_array(pixels[None], channels=3, size=9, ids_prefix="mem")
    assert torch.allclose(from_array.images[0], from_file, atol=1e-5)
    assert from_array.notes[0] == file_notes and from_array.ids == ["mem[0]"]


def test_digit_like_floats_and_single_images():
    digits = np.random.default_rng(5).random((4, 8, 8))
    loaded = images_from_array(digits, channels=1, size=8)
    assert torch.allclose(loaded.images[:, 0].double(), torch.from_numpy(2 * digits - 1), atol=1e-6)
    assert images_from_array(digits[0], channels=3, size=8).images.shape == (1, 3, 8, 8)
    assert images_from_array(np.zeros((8, 8, 3), np.uint8), channels=3, size=8).ids == ["array[0]"]


def test_array_alpha_is_composited_on_white_and_nan_images_are_listed():
    rgba = np.zeros((2, 2, 2, 4), dtype=np.float32)
    rgba[0, ..., 0] = 1.0  # image 0: red, fully transparent -> white
    rgba[1] = np.nan
    loaded = images_from_array(rgba, channels=3, size=2, ids_prefix="a")
    assert loaded.ids == ["a[0]"] and torch.equal(loaded.images[0], torch.ones(3, 2, 2))
    assert loaded.notes[0] == [
        "float values read as [0, 1]",
        "transparent pixels composited on a white background",
    ]
    message = "a[1]: has NaN or infinite values; fix the array."
    assert loaded.errors == [ImageProblem("a[1]", message)]


def test_float_range_rule_is_decided_for_the_whole_array_with_rounding_slack():
    almost_unit = np.array([[[-1e-6, 0.5]], [[0.25, 1 + 1e-6]]])
    loaded = images_from_array(almost_unit, channels=1, size=(1, 2))
    assert torch.allclose(loaded.images.flatten(), torch.tensor([-1.0, 0.0, -0.5, 1.0]))
    assert loaded.notes == [["float values read as [0, 1]"]] * 2
    # the second image alone would look like [0, 1]; the first one's negatives decide
    signed = np.array([[[-1.0, 0.0]], [[0.0, 0.5]]])
    loaded = images_from_array(signed, channels=1, size=(1, 2))
    assert torch.allclose(loaded.images.flatten(), torch.tensor([-1.0, 0.0, 0.0, 0.5]))
    assert loaded.notes[1] == ["float values read as [-1, 1]"]


def test_array_errors_raise():
    with pytest.raises(ImageError, match="dtype bool"):
        images_from_array(np.zeros((2, 4, 4), dtype=bool), channels=1, size=4)
    with pytest.raises(ImageError, match="holds no pixels"):
        images_from_array(np.zeros((0, 4, 4), dtype=np.uint8), channels=1, size=4)
    with pytest.raises(ImageError, match="span"):
        images_from_array(np.full((1, 4, 4), -2.0), channels=1, size=4)


# ----------------------------------------------------------------------------- display


def test_to_uint8_image_modes_and_clamping():
    grey = to_uint8_image(torch.tensor([[[-1.0, 1.0, 5.0, float("nan")]]]))
    assert grey.mode == "L" and np.asarray(grey).tolist() == [[0, 255, 255, 128]]
    colour = to_uint8_image(torch.zeros(3, 2, 2))
    assert colour.mode == "RGB" and colour.getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(ValueError):
        to_uint8_image(torch.zeros(2, 4, 4))


def test_policy_states_the_choices():
    for fragment in ["white background", "LANCZOS", "reducing_gap=3.0", "65535", "first frame",
                     "EXIF", "luminance", "2p - 1", "40,000,000", "centre-crop"]:
        assert fragment in data.POLICY


# ----------------------------------------------------------------------------- split manifests


def test_manifest_round_trip(tmp_path):
    manifest = SplitManifest("cifar-demo", ["a", "b"], ["c"], seed=7, notes="first try")
    path = tmp_path / "split.json"
    manifest.save(path)
    assert SplitManifest.load(path) == manifest
    assert json.loads(path.read_text())["format"] == "sima-split"
    ints = SplitManifest("digits", [0, 5], [3], seed=0)
    ints.save(path)
    assert SplitManifest.load(path) == ints


@pytest.mark.parametrize(
    "members,heldout,fragment",
    [
        ([], ["a"], "member_ids is empty"),
        (["a"], [], "heldout_ids is empty"),
        (["a", "b"], ["b", "c"], "both members and held out (e.g. 'b')"),
        (["a", "a"], ["c"], "repeats ids (e.g. 'a')"),
        ([1.5], ["c"], "names or integers"),
    ],
)
def test_manifest_validation(members, heldout, fragment):
    with pytest.raises(DataError) as caught:
        SplitManifest("d", members, heldout, seed=0)
    assert fragment in str(caught.value)


def test_manifest_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        SplitManifest.load(tmp_path / "none.json")
    bad = write(tmp_path, "bad.json", b"{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        SplitManifest.load(bad)
    other = write(tmp_path, "other.json", b'{"hello": 1}')
    with pytest.raises(DataError, match="not a split manifest"):
        SplitManifest.load(other)
    partial = write(tmp_path, "partial.json", b'{"format": "sima-split", "dataset": "d"}')
    with pytest.raises(DataError, match="lacks member_ids, heldout_ids, seed"):
        SplitManifest.load(partial)
    with pytest.raises(DataError, match="seed must be an integer"):
        SplitManifest("d", ["a"], ["b"], seed="7")


def test_make_split_is_seeded_disjoint_and_ordered():
    ids = [f"img{i:02d}" for i in range(20)]
    split = make_split(ids, 6, 5, seed=11, dataset="toy")
    assert split == make_split(ids, 6, 5, seed=11, dataset="toy")
    assert split != make_split(ids, 6, 5, seed=12, dataset="toy")
    assert len(split.member_ids) == 6 and len(split.heldout_ids) == 5
    assert not set(split.member_ids) & set(split.heldout_ids)
    assert split.member_ids == sorted(split.member_ids)  # the order of ids is kept
    order = np.random.default_rng(11).permutation(20)
    assert split.member_ids == [ids[i] for i in sorted(order[:6])]
    with pytest.raises(DataError, match="only 20 samples"):
        make_split(ids, 15, 6, seed=0)
    with pytest.raises(DataError, match="at least one"):
        make_split(ids, 0, 6, seed=0)
    with pytest.raises(DataError, match="ids repeat"):
        make_split(["a", "a", "b"], 2, 1, seed=0)


def test_loaded_images_len():
    empty = LoadedImages(torch.empty(0, 1, 2, 2), [], [])
    assert len(empty) == 0 and empty.errors == [] and empty.skipped == 0
