"""Safe loading of diffusers components from a folder: config, weights and scheduler.

Weights are read by this module, not by ``from_pretrained``, so that the rules are ours and
visible: safetensors by default; a pickle-based ``.bin``/``.pt`` file only with an explicit
opt-in, and then through ``torch.load(weights_only=True)``; never remote code. Every problem
names the file and, where there is one, the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from core.errors import ModelError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PICKLE_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.pt")
SCHEDULER_CONFIG = "scheduler_config.json"


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a ModelError that names the file."""
    if not path.is_file():
        raise ModelError(f"Missing {path}: a diffusers folder needs this file.")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); re-save the model with diffusers.") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} should hold a JSON object.")
    return value


def require_int(config: dict, field: str, path: Path, *, minimum: int = 1) -> int:
    value = config.get(field)
    if isinstance(value, (list, tuple)) and field == "sample_size" and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ModelError(f"{path}: field {field!r} must be a whole number >= {minimum}, found {value!r}.")
    return value


def load_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``folder``: safetensors preferred, pickle only when allowed."""
    for name in WEIGHT_NAMES:
        path = folder / name
        if path.is_file():
            try:
                return load_file(str(path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ModelError(f"{path} could not be read as safetensors ({exc}); the file may be corrupt.") from None
    for name in PICKLE_NAMES:
        path = folder / name
        if path.is_file():
            if not allow_pickle:
                raise ModelError(
                    f"{path} is a pickle-based checkpoint, which can hide code. Convert it to safetensors, "
                    "or opt in with allow_pickle=True (--allow-pickle) if you trust its source."
                )
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for a hostile or broken pickle
                raise ModelError(f"{path} was refused by the safe loader ({type(exc).__name__}); it is not a plain weight file.") from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ModelError(f"{path} does not hold a plain mapping of names to tensors.")
            return state
    raise ModelError(f"No weights in {folder}: expected {WEIGHT_NAMES[0]} (or a .bin with --allow-pickle).")


def build_component(cls: Any, folder: Path, *, allow_pickle: bool = False) -> tuple[Any, dict]:
    """Instantiate a diffusers model class from ``folder/config.json`` and load its weights strictly."""
    config_path = folder / "config.json"
    config = read_json(config_path)
    try:
        module = cls.from_config(config)
    except Exception as exc:  # diffusers raises ValueError/TypeError/KeyError for bad configs
        raise ModelError(f"{config_path} does not describe a valid {cls.__name__}: {exc}") from None
    state = load_weights(folder, allow_pickle=allow_pickle)
    missing, unexpected = _key_mismatch(module, state)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelError(f"The weights in {folder} do not match {config_path} ({detail}); the config and weights come from different models.")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelError(f"The weights in {folder} do not fit {config_path}: {first}") from None
    module.eval().requires_grad_(False)
    return module, config


def _key_mismatch(module: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def alphas_cumprod_from_scheduler(config: dict, path: Path) -> torch.Tensor:
    """abar_t in float64 from a DDPM/DDIM scheduler config, as diffusers defines the betas."""
    from diffusers import DDPMScheduler

    steps = require_int(config, "num_train_timesteps", path) if "num_train_timesteps" in config else 1000
    known = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"}
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and schedule not in known:
        raise ModelError(f"{path}: field 'beta_schedule' is {schedule!r}; supported: {', '.join(sorted(known))}.")
    fields = {k: config[k] for k in ("beta_start", "beta_end", "beta_schedule", "trained_betas") if k in config}
    try:
        scheduler = DDPMScheduler(num_train_timesteps=steps, **fields)
    except Exception as exc:
        raise ModelError(f"{path}: the noise schedule could not be built ({exc}).") from None
    abar = torch.cumprod(1 - scheduler.betas.to(torch.float64), 0)
    if not torch.isfinite(abar).all() or not bool(((abar > 0) & (abar < 1)).all()):
        raise ModelError(f"{path}: the noise schedule gives alphas_cumprod outside (0, 1).")
    return abar


def prediction_type(config: dict, path: Path) -> str:
    from core.models.base import PREDICTION_TYPES

    value = config.get("prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise ModelError(f"{path}: field 'prediction_type' is {value!r}; expected one of {', '.join(PREDICTION_TYPES)}.")
    return value


def find_component(folder: Path, name: str) -> Path | None:
    """``folder/name`` in a pipeline layout, or ``folder`` itself in a flat one."""
    if (folder / name / "config.json").is_file():
        return folder / name
    return None


def find_scheduler_config(folder: Path) -> Path:
    for path in (folder / "scheduler" / SCHEDULER_CONFIG, folder / SCHEDULER_CONFIG):
        if path.is_file():
            return path
    raise ModelError(
        f"No scheduler config in {folder}: expected scheduler/{SCHEDULER_CONFIG} (pipeline layout) "
        f"or {SCHEDULER_CONFIG} beside config.json (flat layout)."
    )
