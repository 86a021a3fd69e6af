"""The arithmetic of docs/scale.md: 10 million images on 64 GPUs, from counted FLOPs.

    python benchmarks/scale_plan.py      # ~1 minute; no GPU, no download

Takes the FLOPs of one forward pass of Stable Diffusion 1.5's UNet (64x64x4 latents, 77 text
tokens) and of its autoencoder's encoder (512x512 images) from benchmarks/sd_cost.py, which
counts them with torch's FlopCounterMode on the "meta" device (shapes only: no weights) for
SD 1.5's published configuration; the parameter counts next to the FLOPs check that.
FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matrix products (norms,
activations and softmax are left out: a few percent).
Times decoding and converting a 512x512 JPEG with core.images on this CPU. Everything else (GPU
peak, utilisation, price, image size) is an assumption, stated in ASSUMPTIONS and in the doc.

Writes benchmarks/results/scale_plan.json and the "plan" block of docs/scale.md.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time

import numpy as np

from common import ROOT, RESULTS, machine, replace_marked_block

IMAGES = 10_000_000
GPUS = 64
ASSUMPTIONS = {
    "gpu": "NVIDIA A100 80GB SXM",
    "gpu_peak_bf16_tflops": 312.0,  # dense bf16 tensor-core peak, NVIDIA's A100 datasheet
    "utilisation": 0.35,  # assumed share of peak a UNet batch of 32-64 reaches; not measured here
    "gpu_hour_usd": 2.0,  # assumed cloud price per A100-hour
    "jpeg_kb": 100,  # assumed mean size of a stored 512x512 JPEG in the shards
    "chunk_images": 512,  # core.audit.CHUNK_IMAGES
    "tar_shard_images": 1000,  # WebDataset shards as img2dataset writes them by default
    "grid_timesteps": 11,  # t chosen over 0:200:20 on a labelled subset
    "subset_images": 20_000,  # 10k members + 10k non-members to choose t on
    "worker_start_s": 180,  # assumed: import, load SD 1.5 from local disk, torch.compile
}


def sd15_counts() -> dict:
    """SD 1.5's counts from benchmarks/sd_cost.py (the one place that builds and counts the networks)."""
    from sd_cost import MODELS, measure

    name = next(n for n in MODELS if n.startswith("SD 1.5"))
    return measure(name, MODELS[name])


def decode_ms() -> float:
    """Milliseconds to decode a 512x512 photo-like JPEG and convert it to a 3x512x512 tensor."""
    from PIL import Image

    from core.images import load_image

    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(512, 512, 3)), 0), 1)
    pixels = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    load_image(data, name="x.jpg", channels=3, size=512)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            load_image(data, name="x.jpg", channels=3, size=512)
        best = min(best, (time.perf_counter() - start) / 10)
    return round(best * 1000, 1)


def plan(counts: dict, decode: float) -> dict:
    a = ASSUMPTIONS
    effective = a["gpu_peak_bf16_tflops"] * a["utilisation"] * 1e3  # GFLOP/s
    unet, encode = counts["unet_gflop_per_query"], counts["vae_encoder_gflop_per_image"]
    per_image_one_t = encode + unet
    per_gpu = effective / per_image_one_t
    per_image_grid = encode + a["grid_timesteps"] * unet
    subset_gpu_s = a["subset_images"] * per_image_grid / effective
    score_s = IMAGES / (per_gpu * GPUS)
    wall_s = a["worker_start_s"] + subset_gpu_s / GPUS + score_s
    grid_all_s = IMAGES * per_image_grid / effective / GPUS
    # today an actor decodes a chunk, then sweeps it: per image, decode time plus GPU time
    serial_s = a["worker_start_s"] + subset_gpu_s / GPUS + IMAGES * (1 / per_gpu + decode / 1000) / GPUS
    chunks = math.ceil(a["tar_shard_images"] / a["chunk_images"]) * math.ceil(IMAGES / a["tar_shard_images"])
    return {
        "gflops_per_image_one_t": round(per_image_one_t, 1),
        "images_per_s_per_gpu": round(per_gpu, 1),
        "images_per_s_total": round(per_gpu * GPUS),
        "choose_t_gpu_hours": round(subset_gpu_s / 3600, 2),
        "score_all_wall_minutes": round(score_s / 60, 1),
        "total_wall_minutes": round(wall_s / 60, 1),
        "total_cost_usd": round(wall_s / 3600 * GPUS * a["gpu_hour_usd"]),
        "total_wall_minutes_serial_decode": round(serial_s / 60, 1),
        "total_cost_usd_serial_decode": round(serial_s / 3600 * GPUS * a["gpu_hour_usd"]),
        "grid_on_all_wall_hours": round(grid_all_s / 3600, 2),
        "grid_on_all_cost_usd": round(grid_all_s / 3600 * GPUS * a["gpu_hour_usd"]),
        "input_tb": round(IMAGES * a["jpeg_kb"] / 1e9, 2),
        "input_mb_per_s_per_gpu": round(per_gpu * a["jpeg_kb"] / 1e3, 1),
        "decode_ms_per_image_here": decode,
        "decode_cores_per_gpu": round(per_gpu * decode / 1000, 1),
        "gpu_idle_share_serial_decode": round(decode / 1000 / (decode / 1000 + 1 / per_gpu), 2),
        "chunks": chunks,
        "gpu_s_per_chunk": round(a["chunk_images"] / per_gpu, 1),
        "statistics_mb": round(IMAGES * (8 + 24 + 40) / 1e6),
    }


def markdown(r: dict) -> str:
    c, p, a = r["counts"], r["plan"], r["assumptions"]
    return "\n".join([
        f"Written by `python benchmarks/scale_plan.py` on {r['date']} (FLOPs counted, decode timed on "
        f"{r['machine']['cpu_count']} shared CPU cores at load {r['machine']['load_average_1min']}; the rest is arithmetic).",
        "",
        "| quantity | value | how |",
        "|---|---|---|",
        f"| SD 1.5 UNet forward, 64x64x4 latents | {c['unet_gflop_per_query']:.0f} GFLOPs ({c['parameters']['unet'] / 1e6:.0f}M parameters) | counted (sd_cost.py) |",
        f"| SD 1.5 VAE encoder, 512x512 image | {c['vae_encoder_gflop_per_image']:.0f} GFLOPs (VAE {c['parameters']['vae'] / 1e6:.0f}M parameters) | counted |",
        f"| one image at one t (encode + 1 forward) | {p['gflops_per_image_one_t']:.0f} GFLOPs | sum |",
        f"| one GPU at {a['utilisation']:.0%} of {a['gpu_peak_bf16_tflops']:.0f} TFLOP/s (bf16) | {p['images_per_s_per_gpu']:.0f} images/s | assumed utilisation |",
        f"| {GPUS} GPUs | {p['images_per_s_total']:,} images/s | x {GPUS} |",
        f"| choose t: {a['subset_images']:,} labelled images x {a['grid_timesteps']} timesteps | {p['choose_t_gpu_hours']:.1f} GPU-hours | |",
        f"| score {IMAGES:,} images at the chosen t | {p['score_all_wall_minutes']:.0f} min | |",
        f"| whole run incl. {a['worker_start_s']} s worker start | **{p['total_wall_minutes']:.0f} min, about ${p['total_cost_usd']:,}** | at ${a['gpu_hour_usd']:.2f}/GPU-hour |",
        f"| the same with today's engine (an actor decodes a chunk, then sweeps it) | {p['total_wall_minutes_serial_decode']:.0f} min, about ${p['total_cost_usd_serial_decode']:,} | + {p['decode_ms_per_image_here']:.0f} ms per image per GPU |",
        f"| (the full {a['grid_timesteps']}-step grid on every image instead) | {p['grid_on_all_wall_hours']:.1f} h, about ${p['grid_on_all_cost_usd']:,} | |",
        f"| input read | {p['input_tb']:.1f} TB in all, {p['input_mb_per_s_per_gpu']:.1f} MB/s per GPU | {a['jpeg_kb']} KB per JPEG |",
        f"| decode + convert a 512x512 JPEG (core.images, 1 core here) | {p['decode_ms_per_image_here']:.0f} ms: {p['decode_cores_per_gpu']:.1f} cores per GPU | timed |",
        f"| GPU idle while its actor decodes the next chunk (today's engine) | {p['gpu_idle_share_serial_decode']:.0%} | decode / (decode + sweep) |",
        f"| chunks ({a['chunk_images']} images, never across {a['tar_shard_images']}-image tar shards) | {p['chunks']:,}, {p['gpu_s_per_chunk']:.0f} GPU-s each | |",
        f"| statistics written (id, digest, one float per t) | about {p['statistics_mb']:,} MB of Parquet | |",
    ])


def main() -> int:
    counts = sd15_counts()
    result = {"counts": counts, "assumptions": ASSUMPTIONS, "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    result["plan"] = plan(counts, decode_ms())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_plan.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    print(table)
    replace_marked_block(ROOT / "docs" / "scale.md", "plan", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
