"""LoRA adapters on a text-to-image model, loaded through diffusers' own LoRA loaders.

The adapter file is read by :func:`core.models.loading.read_safetensors` (never a pickle), its
keys are converted by diffusers (kohya / A1111 layouts included), each low-rank pair is checked
against the shape of the layer it adapts, and diffusers injects it with peft. The scale is the
adapter weight, as ``pipe.set_adapters([name], [scale])`` would set it. The adapter's bytes and
scale are part of the model fingerprint, so cached scores of the base model are never reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from core.errors import ModelError
from core.models import loading

ADAPTER = "audited_lora"
PREFERRED = "pytorch_lora_weights.safetensors"
ENCODER_PREFIXES = ("text_encoder", "text_encoder_2")


def lora_file(spec: str | Path) -> Path:
    """The .safetensors file of a LoRA given as a file, a folder holding one, or a hub id."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if not path.exists():
        from core.models.registry import _HUB_ID, _download

        if not _HUB_ID.match(text):
            raise ModelError(f"LoRA {text!r} is not an existing file or folder, or a hub id like 'owner/name'.")
        path = _download(text, ("*.json", "*.safetensors"))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelError(f"{path} is not a .safetensors file; LoRA adapters load only from safetensors (convert a .bin first).")
        return path
    if (path / PREFERRED).is_file():
        return path / PREFERRED
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise ModelError(
            f"{path} holds {len(found)} .safetensors files; name the adapter file itself (e.g. {path / PREFERRED})."
        )
    return found[0]


def _check_shapes(module: torch.nn.Module, state: dict[str, torch.Tensor], label: str, source: Path) -> None:
    """Each lora_A / lora_B pair must fit the layer it adapts: in and out sizes of its weight."""
    modules = dict(module.named_modules())
    for key, value in state.items():
        for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if part not in key or not key.endswith(".weight"):
                continue
            target = key.split(part)[0]
            base = modules.get(target)
            weight = getattr(base, "weight", None)
            if weight is None:
                raise ModelError(f"{source}: the adapter targets {label} layer {target!r}, which the base model lacks; it was made for another model.")
            if value.dim() < 2 or value.shape[axis] != weight.shape[axis]:
                size = "input" if axis == 1 else "output"
                raise ModelError(
                    f"{source}: adapter weight {key!r} has shape {tuple(value.shape)} but {label} layer {target!r} has "
                    f"{size} size {weight.shape[axis]}; the adapter was made for another base model."
                )


def load_lora(spec: str | Path, unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module], *, xl: bool,
              scale: float = 1.0) -> dict:
    """Inject the LoRA ``spec`` into ``unet`` (and the text encoders it adapts) at ``scale``.

    Returns what identifies the adapter (file name, content digest, scale) for the fingerprint.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ModelError(f"The LoRA scale must be a number, got {scale!r}.") from None
    if not torch.isfinite(torch.tensor(scale)):
        raise ModelError(f"The LoRA scale must be a finite number, got {scale}.")
    path = lora_file(spec)
    loading.check_budget(path.stat().st_size, "this LoRA adapter", path)
    raw = loading.read_safetensors(path)
    mixin = StableDiffusionXLLoraLoaderMixin if xl else StableDiffusionLoraLoaderMixin
    try:
        state, alphas = mixin.lora_state_dict(raw, unet_config=unet.config)
    except Exception as exc:  # diffusers raises ValueError/KeyError for layouts it cannot convert
        raise ModelError(f"{path} is not a LoRA layout diffusers can read ({type(exc).__name__}: {exc}).") from None
    unet_part = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    encoder_parts = [{k[len(p) + 1:]: v for k, v in state.items() if k.startswith(p + ".")}
                     for p in ENCODER_PREFIXES[:len(text_encoders)]]
    if not unet_part and not any(encoder_parts):
        raise ModelError(f"{path} holds no LoRA layers for this model's UNet or text encoders; is it a LoRA for another kind of model?")
    if unet_part and not any(".lora_A." in k for k in unet_part):
        unet_part = convert_unet_state_dict_to_peft(unet_part)
    _check_shapes(unet, unet_part, "UNet", path)
    for encoder, part in zip(text_encoders, encoder_parts):
        _check_shapes(encoder, part, "text encoder", path)
    try:
        if unet_part:
            unet.load_lora_adapter({f"unet.{k}": v for k, v in unet_part.items()}, prefix="unet",
                                   network_alphas=alphas, adapter_name=ADAPTER)
            unet.set_adapters([ADAPTER], weights=[scale])
        for encoder, prefix, part in zip(text_encoders, ENCODER_PREFIXES, encoder_parts):
            if part:
                mixin.load_lora_into_text_encoder(state, alphas, encoder, prefix=prefix, adapter_name=ADAPTER)
                set_weights_and_activate_adapters(encoder, [ADAPTER], [scale])
    except ModelError:
        raise
    except Exception as exc:  # peft and diffusers raise many types for an adapter that does not fit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"The LoRA {path} could not be applied to this model: {first}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {"file": path.name, "sha256": digest, "scale": scale}
