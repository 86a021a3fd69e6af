"""One conformance test run over every model adapter: the DiffusionModel contract."""

import pytest
import torch

import core
from core.attacks import SimA
from core.errors import ModelError
from core.models.base import DiffusionModel
from tests.helpers import save_tiny_pixel_model


def _pixel(tmp_path):
    return core.load_model(save_tiny_pixel_model(tmp_path / "pixel"))


def _pixel_v(tmp_path):
    return core.load_model(save_tiny_pixel_model(tmp_path / "pixel-v", prediction_type="v_prediction"))


def _empirical(tmp_path):
    from core.models.empirical import EmpiricalDenoiser

    reference = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return EmpiricalDenoiser(reference, name="empirical")


def _latent(tmp_path):
    from tests.test_latent import save_latent

    return core.load_model(save_latent(tmp_path / "latent"))


def _pytorch_ddpm(tmp_path):
    """A papers' checkpoint whose architecture diffusers cannot express: our module of the original."""
    from core.models.pytorch_ddpm import OriginalUNetModel
    from tests.test_pytorch_ddpm import ORIGINAL_ONLY, write_checkpoint

    ckpt = tmp_path / "run" / "ckpt.pt"
    if not ckpt.exists():
        write_checkpoint(ckpt.parent, ORIGINAL_ONLY)
    model = core.load_model(ckpt, allow_pickle=True)
    assert isinstance(model, OriginalUNetModel)
    return model


ADAPTERS = [_pixel, _pixel_v, _empirical, _latent, _pytorch_ddpm]


@pytest.fixture(params=ADAPTERS, ids=lambda f: f.__name__.strip("_"))
def make(request, tmp_path):
    return lambda: request.param(tmp_path)


def test_contract(make):
    model = make()
    assert isinstance(model, DiffusionModel)
    abar = model.alphas_cumprod
    assert abar.dtype == torch.float64 and abar.ndim == 1 and model.num_train_timesteps == len(abar)
    assert bool((abar > 0).all() and (abar < 1).all() and (abar[1:] < abar[:-1]).all())
    images = torch.rand(5, *model.image_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = model.encode(images)
    assert tuple(x.shape) == (5, *model.sample_shape)
    assert tuple(model.decode(x).shape) == (5, *model.image_shape)
    t = torch.tensor([0, 7, 100, 500, model.num_train_timesteps - 1])
    mixed = model.eps(x, t)
    assert mixed.shape == x.shape and torch.isfinite(mixed).all()
    one_by_one = torch.cat([model.eps(x[i:i + 1], int(t[i])) for i in range(5)])
    torch.testing.assert_close(mixed, one_by_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.eps(x, t), mixed, rtol=0, atol=0)
    with pytest.raises(ModelError):
        model.eps(x, model.num_train_timesteps)
    with pytest.raises(ModelError):
        model.eps(x, -1)
    info = model.info()
    assert info.kind in ("pixel", "latent", "empirical") and info.kind == model.kind
    assert model.name in info.describe()
    assert SimA().statistic(model, x, 10).shape == (5,)


def test_fingerprint_is_stable_across_constructions(make):
    a, b = make(), make()
    assert isinstance(a.fingerprint, str) and len(a.fingerprint) >= 12
    assert a.fingerprint == b.fingerprint
