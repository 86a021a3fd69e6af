"""Captions and labels per image: the readers, the matching of names to image ids, Conditioning."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from core.conditioning import (
    EMPTY_KEY, Conditioning, caption_key, read_captions, read_labels, sidecar_captions,
)
from core.errors import DataError


def test_csv_and_jsonl_captions_match_ids_with_or_without_folder_and_extension():
    table = read_captions(("caps.csv", "file,caption\nimgs/a.png,a cat\nb.jpg,\"a dog, running\"\n".encode()))
    assert table.lookup("a.png") == "a cat"
    assert table.lookup("set.zip:imgs/a.png") == "a cat"
    assert table.lookup("b.jpg") == "a dog, running" and table.lookup("c.png") is None
    jsonl = read_captions(("caps.jsonl", b'{"file": "a.png", "caption": "x"}\n\n{"file": "b", "caption": "y"}\n'))
    assert jsonl.for_ids(["a.png", "b.png"]) == ["x", "y"]
    labels = read_labels(("labels.jsonl", b'{"file": "a.png", "label": 3}\n'))
    assert labels.for_ids(["a.png"]) == ["3"]


def test_two_files_sharing_a_short_name_need_their_exact_name():
    table = read_captions(("caps.csv", b"file,caption\ntrain/a.png,first\nheld/a.png,second\n"))
    assert table.lookup("train/a.png") == "first" and table.lookup("held/a.png") == "second"
    assert table.lookup("a.png") is None  # ambiguous: refused, never a guess


@pytest.mark.parametrize("name, data, message", [
    ("caps.csv", b"name,text\na.png,x\n", "'file' and 'caption'"),
    ("caps.csv", b"file,caption\na.png,x\na.png,y\n", "listed twice"),
    ("caps.jsonl", b'{"file": "a.png"}\n', '"file" and "caption"'),
    ("caps.jsonl", b"not json\n", "line 1: not valid JSON"),
    ("caps.txt", b"a.png,x\n", ".csv"),
    ("caps.csv", b"file,caption\n", "no captions"),
    ("caps.jsonl", b'{"file": "a.png", "caption": ["x"]}\n', "must be text"),
])
def test_bad_caption_files_give_one_line_naming_the_file(name, data, message):
    with pytest.raises(DataError, match=message) as error:
        read_captions((name, data))
    assert name in str(error.value) and "\n" not in str(error.value)


def test_sidecar_captions_come_from_uploads_zips_and_folders(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/a.png", b"")
        archive.writestr("set/a.txt", "  a cat \n")
        archive.writestr("__MACOSX/set/._a.txt", "junk")
    table = sidecar_captions([("set.zip", buffer.getvalue()), ("b.txt", "un chien".encode())])
    assert table.for_ids(["set.zip:set/a.png", "b.png"]) == ["a cat", "un chien"]
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "c.txt").write_text("a bird")
    assert sidecar_captions(tmp_path).for_ids(["c.png"]) == ["a bird"]
    with pytest.raises(DataError, match="No caption for image 'd.png'"):
        sidecar_captions(tmp_path).for_ids(["c.png", "d.png"])


def test_conditioning_indexes_repeats_and_joins_rows_together():
    cond = Conditioning({"e": torch.arange(6.0).view(3, 2)}, ["k0", "k1", "k2"], ["a", "b", "c"])
    picked = cond[torch.tensor([2, 0])]
    assert picked.keys == ["k2", "k0"] and picked.texts == ["c", "a"]
    assert torch.equal(picked.tensors["e"], torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert cond[torch.tensor([True, False, True])].keys == ["k0", "k2"] and cond[1:].texts == ["b", "c"]
    repeated = cond.repeat_interleave(2)
    assert repeated.keys == ["k0", "k0", "k1", "k1", "k2", "k2"] and repeated.tensors["e"].shape == (6, 2)
    joined = Conditioning.cat([cond, cond[:1]])
    assert len(joined) == 4 and joined.texts[-1] == "a"
    with pytest.raises(DataError, match="rows"):
        Conditioning({"e": torch.zeros(2, 1)}, ["only one"])
    assert caption_key("x") != caption_key("x ") and caption_key("") != EMPTY_KEY
