"""core.tiny_clip: a CLIP tokenizer and text encoder built from a word list, offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from core import SimaError, datasets, tiny_clip

WORDS = datasets.caption_words()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip.write_tokenizer(tmp_path_factory.mktemp("tok"), WORDS)


def test_each_caption_word_is_one_token_and_a_caption_is_framed_by_clips_special_tokens(tokenizer):
    vocab, _ = tiny_clip.vocabulary(WORDS)
    ids = tokenizer("A Thick  handwritten three")["input_ids"]  # CLIP lower-cases and folds spaces
    expected = [vocab[w + "</w>"] for w in ("a", "thick", "handwritten", "three")]
    assert ids == [vocab[tiny_clip.BOS], *expected, vocab[tiny_clip.EOS]]
    assert tokenizer("")["input_ids"] == [vocab[tiny_clip.BOS], vocab[tiny_clip.EOS]]


@pytest.mark.parametrize("text", ["x" * 5000, "ünïcödé 字", "tab\tnew\nline\x00\x07", "three-ish!?"])
def test_any_text_tokenizes_into_known_ids_padded_or_cut_to_77(tokenizer, text):
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert len(ids) == 77 and all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.unk_token_id not in ids[1:ids.index(tokenizer.eos_token_id)]  # bytes, never "unknown"


def test_the_files_are_clips_and_rebuilt_identically(tmp_path, tokenizer):
    for folder in (tmp_path / "a", tmp_path / "b"):
        tiny_clip.write_tokenizer(folder, WORDS)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "merges.txt").read_text().splitlines()[:2] == ["#version: 0.2", "h a"]
    again = CLIPTokenizer(vocab=str(tmp_path / "a" / "vocab.json"), merges=str(tmp_path / "a" / "merges.txt"))
    assert again("a thin handwritten six")["input_ids"] == tokenizer("a thin handwritten six")["input_ids"]


def test_the_encoder_matches_the_tokenizer_and_tells_captions_apart(tokenizer):
    config = tiny_clip.text_encoder_config(tokenizer, {"hidden_size": 8, "intermediate_size": 16,
                                                       "num_hidden_layers": 1, "num_attention_heads": 2})
    assert (config.vocab_size, config.eos_token_id, config.max_position_embeddings) == (len(tokenizer), tokenizer.eos_token_id, 77)
    encoder = CLIPTextModel(config).eval()
    prompts = ["", "a handwritten three", "a handwritten four"]
    table = tiny_clip.prompt_embeddings(tokenizer, encoder, prompts)
    assert table.shape == (3, 77, 8)
    assert all(not torch.allclose(table[i], table[j]) for i, j in ((0, 1), (1, 2)))
    with pytest.raises(SimaError, match="tokenizer implies"):
        tiny_clip.text_encoder_config(tokenizer, {"vocab_size": 10})
    with pytest.raises(SimaError, match="lower-case ASCII"):
        tiny_clip.vocabulary(["Three"])
