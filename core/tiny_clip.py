"""A tiny CLIP tokenizer and text encoder made locally from a list of words, with nothing downloaded.

The tokenizer is a byte-level BPE in CLIP's format (``vocab.json`` + ``merges.txt``): every one of
the 256 byte symbols, alone and as a word end ("x</w>"), so that ANY text tokenizes (an unknown
word falls apart into bytes instead of failing), plus merges that make each given word one
token, then CLIP's start and end tokens. ``transformers.CLIPTokenizer`` reads the two files as
it reads Stable Diffusion's. The text encoder is a ``CLIPTextModel`` built from a small
``CLIPTextConfig`` whose vocabulary and special ids match that tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import SimaError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"
MAX_LENGTH = 77  # Stable Diffusion pads every prompt to 77 tokens; the demo does the same


def vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE in which each of ``words`` is a single token.

    Each word is built left to right, one symbol at a time; its merges only ever join a word's
    prefix to the next symbol, so the merges of one word cannot split another (checked by
    :func:`build_tokenizer`).
    """
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in symbols + [s + WORD_END for s in symbols]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        if not word or word != word.lower() or not word.isascii() or not word.isalpha():
            raise SimaError(f"Tokenizer words must be lower-case ASCII letters, got {word!r}.")
        parts = list(word[:-1]) + [word[-1] + WORD_END]
        merged = parts[0]
        for part in parts[1:]:
            pair = (merged, part)
            merged += part
            if merged not in vocab:
                merges.append(pair)
                vocab[merged] = len(vocab)
    for token in (BOS, EOS):
        vocab[token] = len(vocab)
    return vocab, merges


def write_tokenizer(folder: str | Path, words: list[str], *, max_length: int = MAX_LENGTH):
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config into ``folder``; return the tokenizer.

    The tokenizer is loaded back from the folder and each word is checked to be one token.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocabulary(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids != [vocab[word + WORD_END]]:
            raise SimaError(f"The built tokenizer splits {word!r} into {ids}; its merges interfere.")
    return tokenizer


def text_encoder_config(tokenizer, fields: dict):
    """A ``CLIPTextConfig`` with ``fields`` (hidden size, layers...) and the tokenizer's vocabulary and ids."""
    from transformers import CLIPTextConfig

    derived = {
        "vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    clash = {k: v for k, v in fields.items() if k in derived and v != derived[k]}
    if clash:
        raise SimaError(f"Config text_encoder sets {clash}, but the tokenizer implies {derived}; remove those fields.")
    try:
        return CLIPTextConfig(**{**fields, **derived})
    except (TypeError, ValueError) as exc:
        raise SimaError(f"Config 'text_encoder' is not a valid CLIPTextConfig: {exc}") from None


def prompt_embeddings(tokenizer, text_encoder, prompts: list[str]):
    """The last hidden state for each prompt padded to the tokenizer's length, as Stable Diffusion 1.x uses it."""
    import torch

    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        return text_encoder(tokens.input_ids)[0]
