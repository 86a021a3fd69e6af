"""The empirical optimal denoiser against docs/methods.md, section 2, on tiny synthetic reference sets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from sklearn.metrics import roc_auc_score

from core.attacks import SimA
from core.errors import DataError, ModelError
from core.local_mean import local_mean, tweedie_x0
from core.models.empirical import EmpiricalDenoiser, ddpm_alphas_cumprod

SHAPE = (3, 8, 8)


def _images(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(n, *SHAPE, dtype=dtype).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def members() -> torch.Tensor:
    return _images(24, 0)


@pytest.fixture
def model(members) -> EmpiricalDenoiser:
    return EmpiricalDenoiser(members, name="toy")


def test_default_schedule_is_ddpm_linear():
    a = ddpm_alphas_cumprod()
    assert a.dtype == torch.float64 and a.shape == (1000,)
    betas = [1e-4 + (0.02 - 1e-4) * s / 999 for s in range(1000)]
    for s in (0, 1, 10, 500, 999):
        product = 1.0
        for b in betas[: s + 1]:
            product *= 1 - b
        assert a[s].item() == pytest.approx(product, rel=1e-12)


def test_info_describes_an_empirical_model(model, members):
    info = model.info()
    assert (info.kind, info.prediction_type, info.parameters) == ("empirical", "epsilon", 0)
    assert info.image_shape == info.sample_shape == SHAPE
    assert info.training_set_size == len(members) and info.num_train_timesteps == 1000


def test_fingerprint_follows_reference_and_schedule(model, members):
    assert EmpiricalDenoiser(members.clone(), name="other name").fingerprint == model.fingerprint
    assert EmpiricalDenoiser(members[:-1]).fingerprint != model.fingerprint
    assert EmpiricalDenoiser(members, ddpm_alphas_cumprod(500)).fingerprint != model.fingerprint
    members.mul_(0.5)  # the model holds its own copy
    assert EmpiricalDenoiser(_images(24, 0)).fingerprint == model.fingerprint


def test_eps_is_the_optimal_denoiser_formula(model, members):
    x = torch.cat([_images(3, 1), members[:2]]).double()
    t = torch.tensor([0, 10, 100, 500, 999])
    a = ddpm_alphas_cumprod()[t]
    expected = torch.empty_like(x)
    for i in range(len(x)):  # softmax of -||x - sqrt(a) y||^2 / (2 (1 - a)), then eps*, by hand
        d2 = ((x[i] - a[i].sqrt() * members.double()) ** 2).flatten(1).sum(1)
        w = torch.softmax(-d2 / (2 * (1 - a[i])), 0)
        mu = (w.view(-1, 1, 1, 1) * members.double()).sum(0)
        expected[i] = (x[i] - a[i].sqrt() * mu) / (1 - a[i]).sqrt()
    torch.testing.assert_close(model.eps(x, t), expected, rtol=1e-9, atol=1e-9)


def test_mixed_timesteps_equal_separate_calls(model):
    x = _images(4, 2)
    t = torch.tensor([3, 40, 40, 700])
    together = model.eps(x, t)
    for i in range(len(x)):
        torch.testing.assert_close(together[i:i + 1], model.eps(x[i:i + 1], int(t[i])), rtol=0, atol=0)


@pytest.mark.parametrize("t", [0, 20, 150, 600, 999])
def test_tweedie_estimate_is_the_local_mean(model, members, t):
    x = torch.cat([_images(4, 3), members[:2]])
    torch.testing.assert_close(tweedie_x0(model, x, t), local_mean(x, members, model.abar(torch.tensor(t))), rtol=0, atol=2e-5)


@pytest.mark.parametrize("t", [0, 10, 50])
def test_member_noise_norm_has_the_closed_form(model, members, t):
    a = model.alphas_cumprod[t]
    x0 = members.double()
    expected = (1 - a.sqrt()) * x0.flatten(1).norm(dim=1) / (1 - a).sqrt()
    torch.testing.assert_close(model.eps(x0, t).flatten(1).norm(dim=1), expected, rtol=1e-9, atol=0)


def test_sima_separates_members_from_held_out_images(model, members):
    held_out = _images(24, 1)
    stats = SimA().statistic(model, torch.cat([members, held_out]), 20)
    labels = [1] * len(members) + [0] * len(held_out)
    assert roc_auc_score(labels, (-stats).numpy()) == 1.0


def test_eps_stays_finite_when_abar_is_one_minus_tiny(members):
    m = EmpiricalDenoiser(members, torch.tensor([1 - 1e-12, 0.5], dtype=torch.float64))
    eps = m.eps(torch.cat([members[:2], _images(2, 4)]).double(), 0)
    assert torch.isfinite(eps).all()
    assert eps[:2].abs().max() < 1e-4  # members: (1 - sqrt(a)) x / sqrt(1 - a) ~ 5e-7 x


@pytest.mark.parametrize(
    "reference, schedule, error",
    [
        (torch.empty(0, *SHAPE), None, DataError),
        (torch.zeros(*SHAPE), None, DataError),
        (torch.full((2, *SHAPE), 1.5), None, DataError),
        (torch.full((2, *SHAPE), float("nan")), None, DataError),
        (torch.zeros(2, *SHAPE), torch.tensor([1.0, 0.5]), ModelError),
        (torch.zeros(2, *SHAPE), torch.tensor([]), ModelError),
    ],
)
def test_bad_construction_raises(reference, schedule, error):
    with pytest.raises(error):
        EmpiricalDenoiser(reference, schedule)


@pytest.mark.parametrize("args", [(0,), (10, 0.02, 0.01), (10, 0.0, 0.01), (10, 1e-4, 1.0)])
def test_bad_schedule_raises(args):
    with pytest.raises(ModelError):
        ddpm_alphas_cumprod(*args)
