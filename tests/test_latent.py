"""The latent-model adapter: deterministic encoding, explicit scaling, checks, SimA in latent space."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from core import ModelError, load_model
from core.attacks import SimA
from core.models.latent import LatentModel

LATENT = 2


def tiny_vae(scaling_factor: float = 0.5, latent_channels: int = LATENT, kind: str = "kl"):
    from diffusers import AutoencoderKL, VQModel

    torch.manual_seed(1)
    common = dict(
        in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=8, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=scaling_factor,
    )
    if kind == "vq":
        return VQModel(num_vq_embeddings=16, vq_embed_dim=latent_channels, **common).eval()
    return AutoencoderKL(**common).eval()


def tiny_latent_unet(channels: int = LATENT, size: int = 4):
    from diffusers import UNet2DModel

    torch.manual_seed(2)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def save_latent(folder, vae=None, unet=None):
    from diffusers import DDPMScheduler

    (vae or tiny_vae()).save_pretrained(folder / "vae")
    (unet or tiny_latent_unet()).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture
def folder(tmp_path):
    return save_latent(tmp_path / "ldm")


@pytest.fixture
def images():
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_loads_as_latent_model_with_shapes_from_the_configs(folder):
    model = load_model(folder)
    assert isinstance(model, LatentModel) and model.is_latent and model.kind == "latent"
    assert model.image_shape == (1, 8, 8)
    assert model.sample_shape == (LATENT, 4, 4)
    assert model.scaling_factor == 0.5
    assert model.parameter_count() == sum(p.numel() for p in model.vae.parameters()) + sum(
        p.numel() for p in model.unet.parameters()
    )


def test_encode_is_the_scaled_posterior_mean_and_deterministic(folder, images):
    model = load_model(folder)
    with torch.no_grad():
        posterior = model.vae.encode(images).latent_dist
    z = model.encode(images)
    torch.testing.assert_close(z, 0.5 * posterior.mean, rtol=0, atol=0)
    assert torch.equal(z, model.encode(images))
    assert not torch.allclose(posterior.mean, posterior.sample(generator=torch.Generator().manual_seed(0)))


def test_decode_undoes_the_scaling(folder):
    model = load_model(folder)
    z = torch.randn(3, LATENT, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.vae.decode(z / 0.5).sample
    torch.testing.assert_close(model.decode(z), expected, rtol=0, atol=0)


def test_scaling_factor_override_changes_encoding_and_fingerprint(folder, images):
    default, override = load_model(folder), load_model(folder, scaling_factor=2.0)
    assert override.scaling_factor == 2.0
    torch.testing.assert_close(override.encode(images), 4 * default.encode(images))
    assert override.fingerprint != default.fingerprint
    assert load_model(folder).fingerprint == default.fingerprint


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_scaling_factor_that_is_not_positive_is_refused(folder, bad):
    with pytest.raises(ModelError, match="scaling_factor"):
        load_model(folder, scaling_factor=bad)


def test_mismatched_channels_name_the_files_and_fields(tmp_path):
    folder = save_latent(tmp_path / "bad", unet=tiny_latent_unet(channels=3))
    with pytest.raises(ModelError) as info:
        load_model(folder)
    message = str(info.value)
    for part in ("unet", "config.json", "'in_channels' is 3", "'latent_channels' 2"):
        assert part in message


def test_a_unet_of_the_wrong_latent_size_is_refused(tmp_path):
    folder = save_latent(tmp_path / "bad", unet=tiny_latent_unet(size=8))
    with pytest.raises(ModelError, match="sample_size"):
        load_model(folder)


def test_an_unknown_autoencoder_class_is_refused(folder):
    path = folder / "vae" / "config.json"
    config = json.loads(path.read_text())
    config["_class_name"] = "AutoencoderTiny"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="AutoencoderTiny"):
        load_model(folder)


def test_sima_runs_in_latent_space(folder, images):
    model = load_model(folder)
    z = model.encode(images)
    t = torch.tensor([0, 10, 50, 100, 999])
    with torch.no_grad():
        direct = model.unet(z, t).sample.to(torch.float64).abs().pow(4).sum((1, 2, 3))
    torch.testing.assert_close(SimA().statistic(model, z, t), direct, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        at_50 = model.unet(z, torch.full((5,), 50)).sample.to(torch.float64).abs().pow(4).sum((1, 2, 3))
    # the sweep may run at another thread count (calibrated), which changes float32 rounding only
    torch.testing.assert_close(SimA().sweep(model, z, [50])[:, 0], at_50, rtol=1e-5, atol=1e-8)


def test_vq_autoencoder_encodes_before_quantisation(tmp_path, images):
    folder = save_latent(tmp_path / "vq", vae=tiny_vae(scaling_factor=1.5, kind="vq"))
    model = load_model(folder)
    with torch.no_grad():
        latents = model.vae.encode(images).latents
    torch.testing.assert_close(model.encode(images), 1.5 * latents, rtol=0, atol=0)
    assert model.sample_shape == (LATENT, 4, 4)
