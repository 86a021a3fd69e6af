"""The papers' checkpoints at full size: a pytorch-ddpm ckpt.pt with the published CIFAR-10
architecture (random weights), loaded, converted and scored; writes docs/benchmarks.md#checkpoints.

    python benchmarks/checkpoints.py            # ~1 minute and ~1 GB of memory on 2 CPU cores

Measures what a user of a real checkpoint waits for and how exactly the diffusers model that
`--model ckpt.pt` builds reproduces the original network: the largest output difference on a
seeded random batch, relative to the original's largest output.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from common import RESULTS, describe_machine, machine, replace_section

from core import load_model  # noqa: E402
from core.attacks import SimA  # noqa: E402
from core.models.pytorch_ddpm import Flags, PytorchDDPMUNet, convert_checkpoint, parity_gap, read_checkpoint  # noqa: E402

IMAGES = 8


def _random_state(flags: Flags, seed: int) -> dict:
    """Every weight random (the frozen sinusoid table excepted), so that no zero hides a mix-up."""
    generator = torch.Generator().manual_seed(seed)
    state = PytorchDDPMUNet(flags).state_dict()
    for key, value in state.items():
        if key != "time_embedding.timembedding.0.weight":
            noise = torch.randn(value.shape, generator=generator)
            scale = value[0].numel() ** -0.5 if value.dim() > 1 else 0.3
            state[key] = noise * scale + (1.0 if value.dim() == 1 and key.endswith(".weight") else 0.0)
    return state


def _flagfile(flags: Flags) -> str:
    lines = [f"--ch={flags.ch}", *(f"--ch_mult={m}" for m in flags.ch_mult), *(f"--attn={a}" for a in flags.attn),
             f"--num_res_blocks={flags.num_res_blocks}", f"--dropout={flags.dropout}", f"--beta_1={flags.beta_1}",
             f"--beta_T={flags.beta_T}", f"--T={flags.T}", f"--img_size={flags.img_size}", "--mean_type=epsilon"]
    return "\n".join(lines) + "\n"


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> dict:
    torch.set_num_threads(1)
    from diffusers import UNet2DModel  # noqa: F401  (imported before the clock starts: a one-off cost)

    info = machine()
    flags = Flags()  # the published CIFAR-10 architecture
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "DDPM_CIFAR10_EPS"
        run.mkdir()
        torch.save({"net_model": _random_state(flags, 1), "ema_model": _random_state(flags, 2), "step": 0}, run / "ckpt.pt")
        (run / "flagfile.txt").write_text(_flagfile(flags))
        model, load_s = _timed(lambda: load_model(run / "ckpt.pt", allow_pickle=True))
        checkpoint = read_checkpoint(run / "ckpt.pt", allow_pickle=True)
        gap = parity_gap(checkpoint.net, model.unet, flags, samples=4)
        _, convert_s = _timed(lambda: convert_checkpoint(run / "ckpt.pt", Path(tmp) / "converted", allow_pickle=True))
        converted, reload_s = _timed(lambda: load_model(Path(tmp) / "converted"))
        images = torch.rand(IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        stat, score_s = _timed(lambda: SimA().statistic(model, images, 100))
        again = SimA().statistic(converted, images, 100)
        result = {
            "machine": info,
            "flags": asdict(flags),
            "parameters": model.parameter_count(),
            "checkpoint_bytes": (run / "ckpt.pt").stat().st_size,
            "load_ckpt_s": round(load_s, 2),
            "convert_s": round(convert_s, 2),
            "load_converted_s": round(reload_s, 2),
            "parity_relative_gap": gap,
            "sima_s_per_image": round(score_s / IMAGES, 3),
            "converted_vs_ckpt_statistic_max_relative": float(((again - stat).abs() / stat.abs()).max()),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoints.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section("Checkpoints", "\n".join([
        "A pytorch-ddpm `ckpt.pt` with the published CIFAR-10 architecture "
        f"({flags.describe()}; {result['parameters']:,} parameters, the sinusoid table included) and random "
        f"EMA and raw weights ({result['checkpoint_bytes'] / 1e6:.0f} MB), written by `python benchmarks/checkpoints.py` "
        f"on {describe_machine(info)}. Times exclude importing diffusers.",
        "",
        "| step | result |",
        "|---|---|",
        f"| `--model ckpt.pt --allow-pickle`: unpickle, build, convert to `UNet2DModel`, parity check | {result['load_ckpt_s']} s |",
        f"| largest output difference, diffusers vs original (t = 0, 500, 999; 4 images each), relative | {gap:.1e} |",
        f"| `sima convert` (safetensors, then reloaded and checked again) | {result['convert_s']} s |",
        f"| loading the converted folder (no pickle) | {result['load_converted_s']} s |",
        f"| SimA at t = 100, per 32x32 image, 1 thread | {result['sima_s_per_image']} s |",
        f"| SimA statistic, converted folder vs ckpt.pt, largest relative difference | "
        f"{result['converted_vs_ckpt_statistic_max_relative']:.1e} |",
    ]))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
