"""What auditing a real Stable Diffusion model costs: parameters, memory and work per query.

Builds the UNet, text encoders and VAE of Stable Diffusion 1.5, 2.1 (768 px) and SDXL from
their published architecture settings on the meta device (no weights, no download, no memory),
counts parameters and counts the floating-point operations of one UNet query, one caption
encoding and one VAE encoding with torch's FLOP counter. With ``--time`` it also times one
real SD 1.5 UNet query at batch 1 on this machine's CPU (random weights: the speed does not
depend on their values), at the current torch thread count.

    python benchmarks/sd_cost.py [--time]

Writes benchmarks/results/sd_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, describe_machine, machine

_UNET_SD = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280))
MODELS = {
    "SD 1.5 (512 px)": {
        "unet": dict(_UNET_SD, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        "text": [dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)],
        "pixels": 512,
    },
    "SD 2.1 (768 px, v-prediction)": {
        "unet": dict(_UNET_SD, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                     use_linear_projection=True),
        "text": [dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16)],
        "pixels": 768,
    },
    "SDXL base (1024 px)": {
        "unet": dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                     attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=2816),
        "text": [dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                 dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      projection_dim=1280)],
        "pixels": 1024,
    },
}
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def measure(name: str, spec: dict) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec["unet"]).eval()
        encoders = [(CLIPTextModelWithProjection if "projection_dim" in t else CLIPTextModel)(
            CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **t)).eval() for t in spec["text"]]
        vae = AutoencoderKL(**VAE).eval()
        side = spec["unet"]["sample_size"]
        z = torch.zeros(1, 4, side, side)
        context = torch.zeros(1, 77, spec["unet"]["cross_attention_dim"])
        added = ({"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
                 if spec["unet"].get("addition_embed_type") else None)
        ids = torch.zeros(1, 77, dtype=torch.long)
        pixels = torch.zeros(1, 3, spec["pixels"], spec["pixels"])
        unet_flops = _flops(lambda: unet(z, torch.tensor([50]), encoder_hidden_states=context, added_cond_kwargs=added))
        text_flops = sum(_flops(lambda e=e: e(ids)) for e in encoders)
        vae_flops = _flops(lambda: vae.encode(pixels))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {"unet": count(unet), "text_encoders": sum(count(e) for e in encoders), "vae": count(vae)}
    return {
        "model": name,
        "parameters": params,
        "fp32_weights_gb": round(4 * sum(params.values()) / 1e9, 2),
        "unet_gflop_per_query": round(unet_flops / 1e9, 1),
        "text_gflop_per_caption": round(text_flops / 1e9, 1),
        "vae_encoder_gflop_per_image": round(vae_flops / 1e9, 1),
    }


def time_sd15_query() -> dict:
    """Seconds for one SD 1.5 UNet query (64x64 latent, batch 1) with random weights, here."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**MODELS["SD 1.5 (512 px)"]["unet"]).eval()
    z, context = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
    with torch.no_grad():
        unet(z, torch.tensor([50]), encoder_hidden_states=context)  # warm-up
        start = time.perf_counter()
        unet(z, torch.tensor([50]), encoder_hidden_states=context)
    return {"sd15_unet_query_seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="also time one SD 1.5 UNet query on this CPU")
    args = parser.parse_args()
    info = machine()
    rows = [measure(name, spec) for name, spec in MODELS.items()]
    timed = time_sd15_query() if args.time else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sd_cost.json").write_text(json.dumps({"machine": info, "models": rows, **timed}, indent=2))
    print("| model | parameters (UNet / text / VAE) | fp32 weights | GFLOP per UNet query | per caption | per VAE encoding |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p = r["parameters"]
        print(f"| {r['model']} | {p['unet'] / 1e6:,.0f}M / {p['text_encoders'] / 1e6:,.0f}M / {p['vae'] / 1e6:,.0f}M | "
              f"{r['fp32_weights_gb']} GB | {r['unet_gflop_per_query']:,} | {r['text_gflop_per_caption']:,} | "
              f"{r['vae_encoder_gflop_per_image']:,} |")
    if timed:
        print(f"\nOne SD 1.5 UNet query at batch 1: {timed['sd15_unet_query_seconds']} s on {describe_machine(info)}.")


if __name__ == "__main__":
    main()
