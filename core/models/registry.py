"""Resolve a model spec (bundled demo name, local folder or hub id) to a DiffusionModel."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ModelError

if TYPE_CHECKING:  # torch is imported only when a model is loaded: listing demos stays instant
    from core.models import loading
    from core.models.base import DiffusionModel

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_DIR = ASSETS / "models"
MANIFEST = "manifest.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def demo_names() -> list[str]:
    """Names of the bundled demo models (folders under assets/models with a manifest)."""
    if not DEMO_DIR.is_dir():
        return []
    return sorted(p.name for p in DEMO_DIR.iterdir() if (p / MANIFEST).is_file())


#: A manifest lists the ids of the training images: ~25 bytes each, so 32 MiB is over a million.
MAX_MANIFEST_BYTES = 32 << 20


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    from core.models import loading

    return loading.read_json(path, max_bytes=MAX_MANIFEST_BYTES, root=folder)


def resolve(spec: str | Path) -> tuple[Path, dict]:
    """(folder, extra arguments for the adapter) for a bundled demo name, a local diffusers
    folder or a hub id; a ModelError that says what was expected otherwise."""
    text = str(spec).strip()
    if not text:
        raise ModelError("No model given: name a bundled demo, a diffusers folder or a hub id.")
    if text in demo_names():
        return DEMO_DIR / text, {}
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"{path} is a file; give the diffusers folder that holds the model's config.json, "
                f"or a pytorch-ddpm checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})."
            )
        return path, {}
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        return _download(text), {"name": text}
    demos = ", ".join(demo_names()) or "none installed"
    raise ModelError(f"{text!r} is not a bundled demo ({demos}), an existing folder, or a hub id like 'owner/name'.")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def load_model(
    spec: str | Path | DiffusionModel, *, device: str = "cpu", allow_pickle: bool = False,
    lora: str | Path | None = None, lora_scale: float = 1.0, weights: str | None = None,
    precision: str = "fp32", compile: bool = False, channels_last: bool = False, **kwargs,
) -> DiffusionModel:
    """A DiffusionModel from a bundled demo name, a local diffusers folder, a hub id, or a
    pytorch-ddpm ``ckpt.pt`` (the papers' checkpoints; ``weights`` "ema", the default, or "net").

    Pickle-based weights load only with ``allow_pickle=True``; remote code never runs; nothing
    is allocated before the folder has been checked (see core.models.loading).
    ``lora`` (a .safetensors file, a folder holding one, or a hub id) adds a LoRA adapter at
    ``lora_scale`` to a Stable Diffusion / SDXL model. ``precision``, ``compile`` and
    ``channels_last`` are the speed settings of :meth:`DiffusionModel.accelerate`. Extra keyword
    arguments go to the adapter (e.g. ``scaling_factor`` for latent models).
    """
    from core.models.base import DiffusionModel

    if lora is not None and str(lora).strip():
        kwargs.update(lora=lora, lora_scale=lora_scale)
    if isinstance(spec, DiffusionModel):
        if "lora" in kwargs:
            raise ModelError("A LoRA is applied while loading: pass the model's folder or hub id, not a loaded model.")
        return spec
    checkpoint = _checkpoint(spec)
    if checkpoint is not None:
        from core.models.pytorch_ddpm import load_checkpoint

        _drop_foreign(kwargs, "a pytorch-ddpm checkpoint", [k for k in kwargs if k != "name"])
        model = load_checkpoint(checkpoint, allow_pickle=allow_pickle, weights=weights or "ema", device=device, **kwargs)
        return model.accelerate(precision=precision, compile=compile, channels_last=channels_last)
    if weights is not None:
        raise ModelError(f"weights={weights!r} (--weights) applies to pytorch-ddpm ckpt.pt files only, not to {spec}.")
    folder, extra = resolve(spec)
    model = load_folder(folder, device=device, allow_pickle=allow_pickle, **{**extra, **kwargs})
    return model.accelerate(precision=precision, compile=compile, channels_last=channels_last)


def plan_model(spec: str | Path, *, allow_pickle: bool = False) -> loading.ModelPlan | None:
    """What loading ``spec`` will take (parameters and bytes), found without allocating the
    networks; None for a model without networks (the empirical demo) and for a pytorch-ddpm
    checkpoint, which is sized only by unpickling it. Raises the ModelError that loading would
    raise for a folder that fails a check, or for a checkpoint without ``allow_pickle``."""
    checkpoint = _checkpoint(spec)
    if checkpoint is not None:
        from core.models.pytorch_ddpm import require_pickle_opt_in

        require_pickle_opt_in(checkpoint, allow_pickle)
        return None
    folder, _ = resolve(spec)
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("kind") == "empirical":
        return None
    return _adapter(folder).plan(folder, allow_pickle=allow_pickle)


def load_folder(folder: Path, *, device: str = "cpu", allow_pickle: bool = False, **kwargs) -> DiffusionModel:
    manifest = read_manifest(folder)
    kwargs.setdefault("name", folder.name)
    if manifest is not None and manifest.get("kind") == "empirical":
        from core.models.empirical import EmpiricalDenoiser
        from core.datasets import split_images

        members, _ = split_images(manifest, "members")
        return EmpiricalDenoiser(members, name=kwargs["name"], manifest=manifest)
    family = model_family(folder)
    if family != "text-to-image" and "lora" in kwargs:
        raise ModelError(f"{folder} is not a Stable Diffusion or SDXL pipeline; a LoRA adapter applies only to those.")
    if family == "pixel":
        _drop_foreign(kwargs, "a pixel model", ["scaling_factor"])
    return _adapter(folder).from_folder(folder, allow_pickle=allow_pickle, manifest=manifest, device=device, **kwargs)


#: Pipelines named in model_index.json that resolve to our conditional adapters. The name only
#: chooses among our own adapters: no class is ever imported by the name a file gives.
TEXT_TO_IMAGE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
CLASS_CONDITIONAL_PIPELINES = ("DiTPipeline",)


def model_family(folder: Path) -> str:
    """"text-to-image", "class-conditional", "latent" or "pixel", from model_index.json's
    _class_name and the components the folder holds."""
    from core.models import loading

    index = folder / "model_index.json"
    name = loading.read_json(index, root=folder).get("_class_name") if index.is_file() else None
    unet_config = folder / "unet" / "config.json"
    unet_class = loading.read_json(unet_config, root=folder).get("_class_name") if unet_config.is_file() else None
    if name in TEXT_TO_IMAGE_PIPELINES or unet_class == "UNet2DConditionModel" or (folder / "text_encoder").is_dir():
        return "text-to-image"
    if name in CLASS_CONDITIONAL_PIPELINES or (folder / "transformer").is_dir():
        return "class-conditional"
    return "latent" if (folder / "vae").is_dir() else "pixel"


def _adapter(folder: Path):
    """The adapter class for a diffusers folder, by its family (see :func:`model_family`)."""
    family = model_family(folder)
    if family == "text-to-image":
        from core.models.conditional import TextToImageModel

        return TextToImageModel
    if family == "class-conditional":
        from core.models.transformer import ClassConditionalModel

        return ClassConditionalModel
    if family == "latent":
        from core.models.latent import LatentModel

        return LatentModel
    from core.models.pixel import PixelModel

    return PixelModel


def _checkpoint(spec: str | Path) -> Path | None:
    """The path of a pytorch-ddpm checkpoint file, or None when ``spec`` names something else."""
    path = Path(str(spec).strip()).expanduser()
    return path if path.suffix in CHECKPOINT_SUFFIXES and path.is_file() else None


def _drop_foreign(kwargs: dict, what: str, foreign: list[str]) -> None:
    """Options meant for another kind of model are an error when set, not silently ignored."""
    for key in foreign:
        if kwargs.get(key) is not None:
            raise ModelError(f"The option {key!r} does not apply to {what}.")
        kwargs.pop(key, None)


#: What a hub model needs: the configs, weights and tokenizer files of the components we load;
#: not the single-file checkpoints, half-precision variants or safety checkers many repos also
#: hold (gigabytes). Patterns match across "/", so components are named one by one.
_COMPONENTS = ("unet", "vae", "scheduler", "transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
MODEL_FILES = (
    "model_index.json", "manifest.json", "config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors",
    *(f"{c}/{name}" for c in _COMPONENTS for name in (
        "config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors", "model.safetensors",
        "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")),
)


def _download(repo_id: str, patterns: tuple[str, ...] = MODEL_FILES) -> Path:
    """Fetch only configs and safetensors of a hub repo; a clear message when offline."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as exc:  # offline mode, no network, unknown repo, gated repo...
        reason = type(exc).__name__
        raise ModelError(
            f"Could not fetch hub model {repo_id!r} ({reason}). If you are offline, download it on a "
            "connected machine and pass its folder instead; bundled demos always work offline."
        ) from None
