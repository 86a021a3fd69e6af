"""Pixel adapter: both folder layouts, every prediction type, safe weights, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import core
from core.errors import ModelError
from core.models.base import to_eps
from core.models.pixel import PixelModel
from tests.helpers import ddpm_abar, save_tiny_pixel_model, tiny_unet


def _direct(folder, x, t, subdir="unet"):
    unet = tiny_unet()
    unet.load_state_dict(load_file(str(folder / subdir / "diffusion_pytorch_model.safetensors")))
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), t)).sample


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_loads_both_layouts_and_schedulers(tmp_path, layout, scheduler):
    folder = save_tiny_pixel_model(tmp_path / "m", layout=layout, scheduler=scheduler)
    model = core.load_model(folder)
    assert isinstance(model, PixelModel)
    assert model.image_shape == model.sample_shape == (3, 8, 8)
    assert model.num_train_timesteps == 1000
    # diffusers builds linear betas in float32; the schedule must match the textbook one closely.
    torch.testing.assert_close(model.alphas_cumprod, ddpm_abar(), atol=1e-6, rtol=0)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    expected = _direct(folder, x, 30, subdir="unet" if layout == "pipeline" else "")
    torch.testing.assert_close(model.eps(x, 30), expected, atol=1e-5, rtol=1e-5)


def test_to_eps_closed_forms():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    abar = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01], dtype=torch.float64)
    a = abar.float().view(-1, 1, 1, 1)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(to_eps(eps, x, abar, "epsilon"), eps)
    torch.testing.assert_close(to_eps(v, x, abar, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(to_eps(x0, x, abar, "sample"), eps, atol=1e-4, rtol=1e-4)
    doubled = torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)
    torch.testing.assert_close(to_eps(doubled, x, abar, "epsilon"), eps)
    with pytest.raises(ModelError, match="channels"):
        to_eps(eps[:, :2], x, abar, "epsilon")


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_adapter_converts_prediction_types(tmp_path, prediction_type):
    folder = save_tiny_pixel_model(tmp_path / "m", prediction_type=prediction_type)
    model = core.load_model(folder)
    assert model.prediction_type == prediction_type
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    t = torch.tensor([5, 100, 700])
    raw = torch.cat([_direct(folder, x[i:i + 1], int(t[i])) for i in range(3)])
    a = model.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        expected = a.sqrt() * raw + (1 - a).sqrt() * x
    else:
        expected = (x - a.sqrt() * raw) / (1 - a).sqrt()
    torch.testing.assert_close(model.eps(x, t), expected, atol=1e-4, rtol=1e-4)


def test_learned_variance_model_gives_eps_half(tmp_path):
    folder = save_tiny_pixel_model(tmp_path / "m", out_channels=6)
    model = core.load_model(folder)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    unet = tiny_unet(out_channels=6)
    unet.load_state_dict(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")))
    with torch.no_grad():
        full = unet(x, torch.full((2,), 20)).sample
    assert model.eps(x, 20).shape == (2, 3, 8, 8)
    torch.testing.assert_close(model.eps(x, 20), full[:, :3], atol=1e-5, rtol=1e-5)


def test_fingerprint_is_stable_and_tracks_weights(tmp_path):
    a = core.load_model(save_tiny_pixel_model(tmp_path / "a"))
    b = core.load_model(save_tiny_pixel_model(tmp_path / "b"))
    c = core.load_model(save_tiny_pixel_model(tmp_path / "c", seed=1))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 16


def test_pickle_weights_need_opt_in(tmp_path):
    folder = save_tiny_pixel_model(tmp_path / "m")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelError, match="pickle"):
        core.load_model(folder)
    assert core.load_model(folder, allow_pickle=True).eps(torch.zeros(1, 3, 8, 8), 1).shape == (1, 3, 8, 8)


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    folder = save_tiny_pixel_model(tmp_path / "m")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Payload()}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match="refused by the safe loader"):
        core.load_model(folder, allow_pickle=True)


def test_missing_and_inconsistent_configs_name_file_and_field(tmp_path):
    folder = save_tiny_pixel_model(tmp_path / "m")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelError, match="scheduler_config.json"):
        core.load_model(folder)

    folder = save_tiny_pixel_model(tmp_path / "n")
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["out_channels"] = 5
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="out_channels|do not match|do not fit"):
        core.load_model(folder)

    config["out_channels"] = 3
    config["in_channels"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="config.json"):
        core.load_model(folder)

    config_path.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        core.load_model(folder)


def test_bad_specs_and_hub_offline(tmp_path):
    with pytest.raises(ModelError, match="not a bundled demo"):
        core.load_model("no-such-model")
    with pytest.raises(ModelError, match="offline|Could not fetch"):
        core.load_model("someone/some-model-that-is-not-cached")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        core.load_model(tmp_path / "file.txt")


def test_eps_validates_inputs_and_detects_nan(tiny_model_dir):
    model = core.load_model(tiny_model_dir)
    with pytest.raises(ModelError, match="shape"):
        model.eps(torch.zeros(1, 3, 16, 16), 0)
    with pytest.raises(ModelError, match="out of range"):
        model.eps(torch.zeros(1, 3, 8, 8), 1000)
    with pytest.raises(ModelError, match="one per sample"):
        model.eps(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with torch.no_grad():
        next(model.unet.parameters()).fill_(float("nan"))
    with pytest.raises(ModelError, match="NaN or Inf"):
        model.eps(torch.zeros(1, 3, 8, 8), 0)
