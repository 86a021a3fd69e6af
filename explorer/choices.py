"""What the sidebar decides (model, device, attack, timesteps, seed) and the app's defaults.

Every page reads a :class:`Choices` and nothing else from the sidebar. Defaults that core
also uses (the timestep grid, the bootstrap count, the accepted file types) live in core and
are only referred to here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from core.audit import DEFAULT_GRID, parse_timesteps
from core.errors import SimaError

#: The model a newcomer sees first; ``SIMA_EXPLORER_MODEL`` overrides it (``sima explore --model``).
DEFAULT_MODEL = "digits-ddpm-memorising"
MODEL_ENV = "SIMA_EXPLORER_MODEL"
GRID_ENV = "SIMA_EXPLORER_GRID"
DEFAULT_SEED = 0
#: FPRs a verdict can be asked at; 1% is the literature's headline operating point.
FPR_CHOICES = (0.001, 0.01, 0.05, 0.1)
DEFAULT_FPR = 0.01
#: The pixel and latent demos trained on the same members, for the "Latent bottleneck" page.
PIXEL_VS_LATENT = ("digits-ddpm-memorising", "digits-ldm-beta-low", "digits-ldm-beta-high")
PERFECT_MEMORISER = "digits-empirical"
#: How a conditional model is queried: each image's own caption (or label), or the empty prompt.
CONDITION_MODES = {"caption": "each image's caption", "empty": "the empty prompt"}


@dataclass(frozen=True)
class Choices:
    """What the sidebar decided: every page reads these and nothing else from the sidebar."""

    spec: str
    device: str
    attack: str
    grid: tuple[int, ...]
    seed: int = DEFAULT_SEED
    #: "caption" or "empty" for a text- or class-conditional model; None for an unconditional one.
    condition: str | None = None


def model_spec(model: str, lora: str = "", lora_scale: float = 1.0) -> str:
    """One string naming a model and, when given, the LoRA adapter loaded onto it.

    Pages pass a model around as this string (it keys the model cache); without a LoRA it is
    the model's own name, folder or hub id.
    """
    if not lora.strip():
        return model
    return json.dumps({"model": model, "lora": lora.strip(), "lora_scale": float(lora_scale)}, sort_keys=True)


def parse_spec(spec: str) -> tuple[str, dict]:
    """(model, load_model keyword arguments) of a :func:`model_spec` string."""
    if spec.startswith("{"):
        parts = json.loads(spec)
        return parts["model"], {"lora": parts["lora"], "lora_scale": parts["lora_scale"]}
    return spec, {}


def spec_title(spec: str) -> str:
    """How the sidebar names a spec: the model, and its LoRA adapter when there is one."""
    model, extra = parse_spec(spec)
    return f"{model} + LoRA {extra['lora']} (scale {extra['lora_scale']:g})" if extra else model


def default_model() -> str:
    """The model the sidebar opens with: ``SIMA_EXPLORER_MODEL``, else the memorising demo."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def default_grid() -> str:
    """The grid the sidebar opens with: ``SIMA_EXPLORER_GRID``, else core's default grid."""
    return os.environ.get(GRID_ENV, "").strip() or DEFAULT_GRID


def devices() -> list[str]:
    """CPU always; a GPU only when torch can see one."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def parse_grid(text: str, num_train_timesteps: int) -> tuple[tuple[int, ...], str | None]:
    """The grid from the sidebar's text, and a warning when steps were dropped."""
    steps = parse_timesteps(text)
    kept = tuple(t for t in steps if 0 <= t < num_train_timesteps)
    if not kept:
        raise SimaError(
            f"No timestep of {text!r} lies within this model's range 0 to {num_train_timesteps - 1}."
        )
    dropped = len(steps) - len(kept)
    note = None
    if dropped:
        note = (
            f"This model's timesteps run from 0 to {num_train_timesteps - 1}: {dropped} of the {len(steps)} "
            f"timesteps asked for lie outside and were left out."
        )
    return kept, note
