"""Loading fidelity: every scheduler field that changes alphas_cumprod is honoured or refused, and a
latent model's scaling (and shift) come from its autoencoder's own config file."""

import json

import pytest
import torch

from core import ModelError, load_model
from core.cli import main
from tests.helpers import save_tiny_pixel_model
from tests.test_latent import save_latent, tiny_vae


def _edit(path, **changes):
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_rescale_betas_zero_snr_is_honoured(tmp_path):
    folder = save_tiny_pixel_model(tmp_path / "m")
    _edit(folder / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True)
    model = load_model(folder)
    # Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed": shift
    # sqrt(abar) so that its last value is 0 and rescale it so that its first is unchanged.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).to(torch.float64)
    root = torch.cumprod(1 - betas, 0).sqrt()
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    assert torch.allclose(model.alphas_cumprod, expected, rtol=1e-5, atol=1e-9)
    assert model.alphas_cumprod[-1] == 0 and load_model(save_tiny_pixel_model(tmp_path / "plain")).alphas_cumprod[-1] > 0
    x = torch.zeros(1, 3, 8, 8)
    assert model.eps(x, 998).shape == x.shape
    with pytest.raises(ModelError, match="pure noise"):
        model.eps(x, 999)


@pytest.mark.parametrize("changes", [
    {"beta_schedule": "laplace"}, {"beta_schedule": "squaredcos_cap_v2"}, {"beta_schedule": "sigmoid"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {"num_train_timesteps": 500},
    {"trained_betas": [2e-5 * (i + 1) ** 1.1 for i in range(1000)]},
])
def test_every_schedule_field_is_honoured_as_diffusers_defines_it(tmp_path, changes):
    from diffusers import DDPMScheduler

    folder = save_tiny_pixel_model(tmp_path / "m")
    _edit(folder / "scheduler" / "scheduler_config.json", **changes)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    expected = DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)
    got = load_model(folder).alphas_cumprod
    assert len(got) == len(expected) and torch.allclose(got, expected, rtol=1e-5, atol=1e-12)
    assert len(got) != 1000 or not torch.allclose(got, load_model(save_tiny_pixel_model(tmp_path / "plain")).alphas_cumprod)


@pytest.mark.parametrize("changes, message", [
    ({"snr_shift_scale": 3.0}, "snr_shift_scale"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "flow-matching"),
    ({"rescale_betas_zero_snr": "yes"}, "true or false"),
    ({"beta_schedule": "exponential"}, "beta_schedule"),
])
def test_schedule_changing_fields_it_cannot_honour_are_refused(tmp_path, changes, message):
    folder = save_tiny_pixel_model(tmp_path / "m")
    _edit(folder / "scheduler" / "scheduler_config.json", **changes)
    with pytest.raises(ModelError, match=message) as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)


def test_sampling_only_fields_leave_the_schedule_alone(tmp_path):
    plain = load_model(save_tiny_pixel_model(tmp_path / "a"))
    folder = save_tiny_pixel_model(tmp_path / "b", scheduler="ddim")
    _edit(folder / "scheduler" / "scheduler_config.json", timestep_spacing="trailing", steps_offset=1,
          set_alpha_to_one=False, clip_sample=False, thresholding=True)
    assert torch.equal(load_model(folder).alphas_cumprod, plain.alphas_cumprod)


def test_a_vae_config_without_scaling_factor_is_an_error_that_says_how_to_pass_it(tmp_path, capsys):
    folder = save_latent(tmp_path / "ldm")
    _edit(folder / "vae" / "config.json", scaling_factor=None)
    with pytest.raises(ModelError, match="no 'scaling_factor'.*--scaling-factor"):
        load_model(folder)
    assert load_model(folder, scaling_factor=0.7).scaling_factor == 0.7
    image = tmp_path / "x.npz"
    import numpy as np

    np.savez(image, x=np.zeros((1, 8, 8), dtype=np.uint8))
    assert main(["score", "--model", str(folder), "--json", "--batch-size", "2", str(image)]) == 2
    assert "--scaling-factor" in capsys.readouterr().err
    assert main(["score", "--model", str(folder), "--scaling-factor", "0.7", "--json", "--batch-size", "2", str(image)]) == 0
    capsys.readouterr()
    pixel = save_tiny_pixel_model(tmp_path / "pixel")
    assert main(["score", "--model", str(pixel), "--scaling-factor", "0.7", str(image)]) == 2
    assert "does not apply to a pixel model" in capsys.readouterr().err


def test_shift_factor_in_the_vae_config_is_honoured(tmp_path):
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    folder = save_latent(tmp_path / "ldm", vae=tiny_vae(scaling_factor=0.5))
    plain = load_model(folder)
    _edit(folder / "vae" / "config.json", shift_factor=0.25)
    shifted = load_model(folder)
    assert torch.allclose(shifted.encode(images), plain.encode(images) - 0.5 * 0.25, atol=1e-6)
    z = plain.encode(images)
    assert torch.allclose(shifted.decode(shifted.encode(images)), plain.decode(z), atol=1e-5)
    assert shifted.fingerprint != plain.fingerprint
