"""Tiny text- and class-conditional pipeline folders built from configs, offline, in seconds.

A byte-level BPE tokenizer is written by the test (every byte is a token, plus a few merges),
so any caption, non-ASCII or control characters included, tokenizes without the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MAX_TOKENS = 16
IMAGE = 16  # pixels; the tiny VAE halves it to 8x8 latents


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte that byte-level BPE uses (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for _, c in sorted(zip(keep, codes))]


def write_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> dict:
    """vocab.json, merges.txt and tokenizer_config.json of a small CLIP-style BPE tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": MAX_TOKENS, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token, "tokenizer_class": "CLIPTokenizer",
    }))
    return vocab


def _text_encoder(vocab: dict, *, projection: bool, seed: int, hidden: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=8,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=IMAGE,
    ).eval()


def _scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Untrained diffusers UNets zero their last layer (eps = 0 everywhere); give it weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def sd_pipeline(folder: Path, *, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A Stable Diffusion 1.x (epsilon) or 2.x-style (v_prediction) pipeline folder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    write_tokenizer(folder / "tokenizer", pad_token="!" if prediction_type == "v_prediction" else "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    _randomise(unet, seed)
    pipe = StableDiffusionPipeline(
        vae=_vae(seed), text_encoder=_text_encoder(vocab, projection=False, seed=seed), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(prediction_type), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sdxl_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """An SDXL pipeline folder: two text encoders, pooled text_embeds and time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2", pad_token="!")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8, transformer_layers_per_block=1,
    ).eval()
    _randomise(unet, seed)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed), text_encoder=_text_encoder(vocab, projection=False, seed=seed),
        text_encoder_2=_text_encoder(vocab, projection=True, seed=seed + 1),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet, scheduler=_scheduler("epsilon"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def dit_pipeline(folder: Path, *, seed: int = 0, classes: int = 10) -> Path:
    """A DiT pipeline folder: a class-conditional transformer with a learned variance."""
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, num_layers=1,
        sample_size=IMAGE // 2, patch_size=2, num_embeds_ada_norm=classes, norm_num_groups=4,
    ).eval()
    _randomise(dit, seed)
    DiTPipeline(transformer=dit, vae=_vae(seed), scheduler=_scheduler("epsilon")).save_pretrained(folder, safe_serialization=True)
    return folder


def sd_lora(folder: Path, pipeline: Path, *, seed: int = 1, rank: int = 2) -> Path:
    """A LoRA on the tiny SD UNet's attention, made with peft and saved as diffusers saves one."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    return folder
