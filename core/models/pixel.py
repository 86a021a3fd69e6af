"""Pixel-space diffusers models: a ``UNet2DModel`` plus its DDPM/DDIM scheduler config."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ModelError
from core.hashing import fingerprint_tensors
from core.models import loading
from core.models.base import DiffusionModel


class PixelModel(DiffusionModel):
    """eps(x, t) from a diffusers ``UNet2DModel`` that works directly on [-1, 1] images."""

    kind = "pixel"

    def __init__(
        self,
        unet: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        *,
        prediction_type: str = "epsilon",
        name: str = "pixel-model",
        manifest: dict | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool = True,
    ):
        config = unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        self.unet = unet.eval().requires_grad_(False).to(device)
        # channels_last runs the UNet's convolutions faster on CPU (benchmarks/speed.py).
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type = prediction_type
        self.name = name
        self.manifest = manifest
        self.device = torch.device(device)
        self.image_shape = (int(config.in_channels), int(size), int(size))
        self.sample_shape = self.image_shape
        self._fingerprint: str | None = None

    @classmethod
    def plan(cls, folder: str | Path, *, allow_pickle: bool = False) -> loading.ModelPlan:
        """Check a pipeline folder (``unet/`` + ``scheduler/``) or a flat one (both configs side by
        side) and size its network, allocating nothing (see core.models.loading)."""
        from diffusers import UNet2DModel

        folder = Path(folder)
        unet_dir = loading.find_component(folder, "unet") or folder
        config_path = unet_dir / "config.json"
        config = loading.read_json(config_path, root=folder)
        check_unet_config(config, config_path)
        unet = loading.plan_component(UNet2DModel, unet_dir, allow_pickle=allow_pickle, root=folder, config=config)
        return loading.ModelPlan(folder, {"unet": unet}, *loading.read_schedule(folder))

    @classmethod
    def from_plan(cls, plan: loading.ModelPlan, **kwargs) -> "PixelModel":
        """Load a planned folder, once its bytes fit the memory budget."""
        kwargs.setdefault("name", plan.folder.name)
        unet = plan.materialise()["unet"]
        return cls(unet, plan.alphas_cumprod, prediction_type=plan.prediction_type, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, *, allow_pickle: bool = False, **kwargs) -> "PixelModel":
        """Load a pipeline folder (``unet/`` + ``scheduler/``) or a flat one (both configs side by side)."""
        return cls.from_plan(cls.plan(folder, allow_pickle=allow_pickle), **kwargs)

    def _raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, t).sample

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_tensors(
                self.unet.state_dict(), (dict(self.unet.config), self.prediction_type, self.alphas_cumprod.tolist())
            )
        return self._fingerprint

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())


#: The samples an attack feeds a model are (channels, size, size) each and are not weights, so
#: the memory budget does not see them. Published models use up to 1024 pixels a side and 16
#: latent channels; these caps keep one float32 sample under 270 MB.
MAX_SAMPLE_SIZE = 2048
MAX_CHANNELS = 16


def check_unet_config(config: dict, path: Path) -> None:
    """Fields an attack relies on must be present, consistent and of a sane size."""
    in_ch = loading.require_int(config, "in_channels", path, maximum=MAX_CHANNELS)
    out_ch = loading.require_int(config, "out_channels", path, maximum=2 * MAX_CHANNELS)
    loading.require_int(config, "sample_size", path, maximum=MAX_SAMPLE_SIZE)
    if out_ch not in (in_ch, 2 * in_ch):
        raise ModelError(
            f"{path}: 'out_channels' is {out_ch} but 'in_channels' is {in_ch}; a noise predictor returns "
            f"{in_ch} channels, or {2 * in_ch} with a learned variance."
        )
