"""Latent diffusion models: an autoencoder plus a ``UNet2DModel`` that denoises its latents.

Attacks run in latent space: an image x0 in [-1, 1] becomes z0 = s * (E(x0) - b), where E is
the encoder's posterior MEAN (an ``AutoencoderKL``) or its pre-quantisation output (a
``VQModel``), never a sample, so scores are deterministic (docs/methods.md, section 1). The
scaling factor s comes from the autoencoder's own config FILE (``scaling_factor``) unless overridden, not from diffusers'
config object, which fills a missing one with 0.18215 without saying so: a config without it
is an error that says how to pass it. The shift b comes from ``shift_factor`` (0 when the
config has none, as in Stable Diffusion 1.x, 2.x and SDXL). Both change every score, so both
are part of the fingerprint.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

from core.errors import ModelError
from core.hashing import fingerprint_tensors, row_digests
from core.models import loading
from core.models.base import DiffusionModel
from core.models.pixel import MAX_CHANNELS, MAX_SAMPLE_SIZE, check_unet_config

AUTOENCODERS = ("AutoencoderKL", "VQModel")
#: Bytes of latents a model object keeps (4,000 Stable Diffusion latents of 512 px images).
LATENT_CACHE_BYTES = 256 * 2**20


def read_vae_config(folder: Path, kinds: tuple[str, ...]) -> dict:
    """``folder/vae/config.json``, checked: an autoencoder of one of ``kinds``, of bounded size."""
    path = folder / "vae" / "config.json"
    config = loading.read_json(path, root=folder)
    kind = config.get("_class_name", "AutoencoderKL")
    if kind not in kinds:
        raise ModelError(f"{path}: field '_class_name' is {kind!r}; supported autoencoders: {', '.join(kinds)}.")
    for name, most in (("in_channels", MAX_CHANNELS), ("sample_size", MAX_SAMPLE_SIZE)):
        if name in config:  # else diffusers' defaults, which are small
            loading.require_int(config, name, path, maximum=most)
    return config


def legacy_attention_names(names: list[str], meta: torch.nn.Module) -> dict[str, str]:
    """Old diffusers checkpoints (the Stable Diffusion VAEs among them) name the VAE's attention
    layers query/key/value/proj_attn; diffusers renames them on load, and so do we, with its
    own mapping."""
    fix = getattr(meta, "_fix_state_dict_keys_on_load", None)
    if fix is None:
        return {n: n for n in names}
    return {old: new for new, old in fix({n: n for n in names}).items()}


def plan_vae(folder: Path, vae_config: dict, *, allow_pickle: bool) -> loading.ComponentPlan:
    """``folder/vae`` planned from its config (read and checked by :func:`read_vae_config`), for
    every latent family, with old attention tensor names mapped to the network's."""
    import diffusers

    cls = getattr(diffusers, vae_config.get("_class_name", "AutoencoderKL"))
    return loading.plan_component(cls, folder / "vae", allow_pickle=allow_pickle, root=folder, config=vae_config,
                                  rename=legacy_attention_names)


def _size(value) -> int:
    return int(value if isinstance(value, int) else value[0])


def check_latent_configs(vae_config: dict, unet_config: dict, vae_label: str, unet_label: str) -> None:
    """The UNet must denoise exactly the latents the autoencoder produces."""
    latent = vae_config.get("latent_channels")
    if unet_config.get("in_channels") != latent:
        raise ModelError(
            f"{unet_label}: 'in_channels' is {unet_config.get('in_channels')!r} but {vae_label} has "
            f"'latent_channels' {latent!r}; the UNet and the autoencoder come from different models."
        )
    levels = len(vae_config.get("block_out_channels", ())) - 1
    expected = _size(vae_config["sample_size"]) // 2**levels if "sample_size" in vae_config else None
    if expected is not None and _size(unet_config.get("sample_size", expected)) != expected:
        raise ModelError(
            f"{unet_label}: 'sample_size' is {unet_config.get('sample_size')!r} but {vae_label} makes "
            f"{expected}x{expected} latents ('sample_size' {vae_config['sample_size']} downsampled by "
            f"{2**levels}); the UNet and the autoencoder come from different models."
        )


class LatentModel(DiffusionModel):
    """eps(z, t) from a latent ``UNet2DModel``; encode/decode through an ``AutoencoderKL`` or ``VQModel``."""

    kind = "latent"

    def __init__(
        self,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        *,
        scaling_factor: float,
        prediction_type: str = "epsilon",
        name: str = "latent-model",
        manifest: dict | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ):
        kind = type(vae).__name__
        if kind not in AUTOENCODERS:
            raise ModelError(f"The autoencoder is a {kind}; supported: {', '.join(AUTOENCODERS)}.")
        check_latent_configs(dict(vae.config), dict(unet.config), "the autoencoder config", "the UNet config")
        self.vae = vae.eval().requires_grad_(False).to(device)
        self.unet = unet.eval().requires_grad_(False).to(device)
        # Off by default so that latent statistics stay as they were; accelerate() turns it on.
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.scaling_factor = _scaling(scaling_factor, "The scaling_factor given")
        self.shift_factor = _shift(vae.config)
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type = prediction_type
        self.name = name
        self.manifest = manifest
        self.device = torch.device(device)
        self.image_shape = (int(vae.config.in_channels), _size(vae.config.sample_size), _size(vae.config.sample_size))
        self.sample_shape = (int(unet.config.in_channels), _size(unet.config.sample_size), _size(unet.config.sample_size))
        self._fingerprint: str | None = None
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def plan(cls, folder: str | Path, *, allow_pickle: bool = False) -> loading.ModelPlan:
        """Check a folder with ``vae/``, ``unet/`` and ``scheduler/`` (diffusers pipeline layout)
        and size its networks, allocating nothing (see core.models.loading)."""
        import diffusers

        folder = Path(folder)
        vae_dir, unet_dir = folder / "vae", loading.find_component(folder, "unet")
        if unet_dir is None:
            raise ModelError(f"{folder} has vae/ but no unet/config.json; a latent model needs both.")
        vae_path, unet_path = vae_dir / "config.json", unet_dir / "config.json"
        vae_config = read_vae_config(folder, AUTOENCODERS)
        unet_config = loading.read_json(unet_path, root=folder)
        check_unet_config(unet_config, unet_path)
        check_latent_configs(vae_config, unet_config, str(vae_path), str(unet_path))
        components = {
            "vae": plan_vae(folder, vae_config, allow_pickle=allow_pickle),
            "unet": loading.plan_component(diffusers.UNet2DModel, unet_dir, allow_pickle=allow_pickle, root=folder, config=unet_config),
        }
        return loading.ModelPlan(folder, components, *loading.read_schedule(folder))

    @classmethod
    def from_plan(cls, plan: loading.ModelPlan, *, scaling_factor: float | None = None, **kwargs) -> "LatentModel":
        """Load a planned folder, once its bytes fit the memory budget."""
        scaling = planned_scaling(plan, scaling_factor)
        kwargs.setdefault("name", plan.folder.name)
        modules = plan.materialise()
        return cls(modules["vae"], modules["unet"], plan.alphas_cumprod, scaling_factor=scaling,
                   prediction_type=plan.prediction_type, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, *, allow_pickle: bool = False, scaling_factor: float | None = None,
                    **kwargs) -> "LatentModel":
        """Load a folder with ``vae/``, ``unet/`` and ``scheduler/`` (diffusers pipeline layout)."""
        return cls.from_plan(cls.plan(folder, allow_pickle=allow_pickle), scaling_factor=scaling_factor, **kwargs)

    def _raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, t).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, C, H, W) to scaled latents s * (E(x) - b): deterministic, no sampling.

        Each image is encoded once per model object: its latent is kept by the image's content
        (least recently used first out, within ``LATENT_CACHE_BYTES``), since the encoder of a
        large autoencoder can cost more than the denoiser queries an attack makes.
        """
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ModelError(
                f"{self.name} encodes images of shape (N, {', '.join(map(str, self.image_shape))}), got "
                f"{tuple(images.shape)}. Load images with core.data, which converts them to the model's size."
            )
        keys = row_digests(images)
        missing = list(dict.fromkeys(k for k in keys if k not in self._latents))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            fresh = self._encode(images[[first[k] for k in missing]])
            for key, z in zip(missing, fresh):
                self._latents[key] = z.cpu()
        for key in keys:
            self._latents.move_to_end(key)
        out = torch.stack([self._latents[k] for k in keys])
        per_latent = out[0].numel() * out.element_size()
        while len(self._latents) > max(len(missing), LATENT_CACHE_BYTES // per_latent):
            self._latents.popitem(last=False)
        return out.to(images.device)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.vae.encode(images.to(self.device))
            z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
            return (self.scaling_factor * (z - self.shift_factor)).to(images.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents back to [-1, 1] images: the autoencoder's decoder applied to z / s + b."""
        with torch.inference_mode():
            return self.vae.decode(z.to(self.device) / self.scaling_factor + self.shift_factor).sample.to(z.device)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
            tensors.update({f"unet.{k}": v for k, v in self.unet.state_dict().items()})
            config = (dict(self.vae.config), dict(self.unet.config), self.prediction_type,
                      self.scaling_factor, self.alphas_cumprod.tolist())
            if self.shift_factor:  # appended only when used, so unshifted models keep their fingerprints
                config += (self.shift_factor,)
            self._fingerprint = fingerprint_tensors(tensors, config)
        return self._fingerprint

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.vae.parameters()) + sum(p.numel() for p in self.unet.parameters())


def _shift(config) -> float:
    value = config.get("shift_factor", None)
    value = 0.0 if value is None else value
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ModelError(f"The autoencoder config's 'shift_factor' is {config.get('shift_factor')!r}; it must be a number.")
    return value


def planned_scaling(plan: loading.ModelPlan, override: float | None) -> float:
    """The latent scaling factor of a planned model: ``override``, else the value in its
    autoencoder's config file as written (the plan keeps the raw JSON, without diffusers'
    defaults); a ModelError that says how to pass it when the file has none."""
    if override is not None:
        return _scaling(override, "The scaling_factor given")
    vae = plan.components["vae"]
    if vae.config.get("scaling_factor") is None:
        raise ModelError(
            f"{vae.config_path} has no 'scaling_factor', the factor its latents were scaled by in training; pass it "
            "as load_model(..., scaling_factor=S) or --scaling-factor S (0.18215 for Stable Diffusion 1.x and 2.x)."
        )
    return _scaling(vae.config["scaling_factor"], f"{vae.config_path}: field 'scaling_factor'")


def _scaling(value, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ModelError(f"{source} is {value!r}; it must be a positive number (e.g. 0.18215 for Stable Diffusion).")
    return number
