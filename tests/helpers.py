"""Builders of tiny models for tests (diffusers' own tests use the same kind of dummy sizes)."""

from pathlib import Path

import torch

from benchmarks.hostile import TINY_UNET


def tiny_unet(channels: int = 3, size: int = 8, out_channels: int | None = None, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=out_channels or channels, **TINY_UNET).eval()


def save_tiny_pixel_model(folder: Path, *, layout: str = "pipeline", prediction_type: str = "epsilon",
                          scheduler: str = "ddpm", out_channels: int | None = None, **unet_kwargs) -> Path:
    from diffusers import DDIMScheduler, DDPMScheduler

    unet = tiny_unet(out_channels=out_channels, **unet_kwargs)
    cls = DDPMScheduler if scheduler == "ddpm" else DDIMScheduler
    sched = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, prediction_type=prediction_type)
    if layout == "pipeline":
        unet.save_pretrained(folder / "unet")
        sched.save_pretrained(folder / "scheduler")
    else:
        unet.save_pretrained(folder)
        sched.save_pretrained(folder)
    return folder


def ddpm_abar(steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """The linear-beta DDPM schedule written out directly, independent of diffusers."""
    betas = torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def out_of_domain_files() -> list[tuple[str, bytes]]:
    """Images a 16x16 greyscale digits model cannot judge, as (name, bytes) uploads: a 256x256
    colour photo, an 8x8 colour thumbnail and a 2000x1500 JPEG (scikit-learn's sample photos)."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    def encoded(picture: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        return buffer.getvalue()

    china = Image.fromarray(load_sample_image("china.jpg"))
    flower = Image.fromarray(load_sample_image("flower.jpg"))
    return [
        ("photo-256.png", encoded(china.crop((200, 100, 456, 356)), "PNG")),
        ("thumbnail-8.png", encoded(flower.resize((8, 8), Image.LANCZOS), "PNG")),
        ("photo-2000x1500.jpg", encoded(flower.resize((2000, 1500), Image.BICUBIC), "JPEG")),
    ]
