"""SimA and SimA-MC against direct computations on a tiny diffusers UNet."""

import pytest
import torch

import core
from core.attacks import SimA, SimAMC
from core.errors import SimaError


@pytest.fixture
def model(tiny_model_dir):
    return core.load_model(tiny_model_dir)


def _unet_eps(model, x, t):
    with torch.no_grad():
        return model.unet(x, t).sample.double()


def test_sima_is_the_fourth_power_norm_of_the_unet_output(model):
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 50, 100, 500, 999])
    expected = torch.stack([_unet_eps(model, x0[i:i + 1], t[i:i + 1]).pow(4).sum() for i in range(6)])
    stat = SimA().statistic(model, x0, t)
    assert stat.dtype == torch.float64 and stat.shape == (6,)
    torch.testing.assert_close(stat, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(SimA(p=2).statistic(model, x0, 7), _unet_eps(model, x0, torch.full((6,), 7)).pow(2).flatten(1).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduce", ["mean_norm", "norm_of_mean"])
def test_sima_mc_matches_direct_monte_carlo(model, reduce):
    k, x0 = 4, torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn(3, k, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([20, 60, 150])
    attack = SimAMC(k=k, reduce=reduce, p=4)
    expected = []
    for i in range(3):
        a = model.alphas_cumprod[t[i]].float()
        xt = a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i]  # (k, C, H, W)
        eps = _unet_eps(model, xt, t[i].repeat(k)).flatten(1)
        if reduce == "mean_norm":
            expected.append(eps.abs().pow(4).sum(1).pow(0.25).mean())
        else:
            expected.append(eps.mean(0).abs().pow(4).sum().pow(0.25))
    torch.testing.assert_close(attack.statistic(model, x0, t, noise=noise), torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert attack.queries_per_sample(50) == k and attack.noise_draws == k


def test_sima_mc_needs_explicit_randomness_and_is_seeded(model):
    x0 = torch.rand(2, 3, 8, 8)
    with pytest.raises(SimaError, match="Generator"):
        SimAMC(k=2).statistic(model, x0, 10)
    a = SimAMC(k=2).statistic(model, x0, 10, generator=torch.Generator().manual_seed(5))
    b = SimAMC(k=2).statistic(model, x0, 10, generator=torch.Generator().manual_seed(5))
    c = SimAMC(k=2).statistic(model, x0, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sweep_equals_per_timestep_statistics_for_any_batch_size(model):
    x0 = torch.rand(7, 3, 8, 8) * 2 - 1
    grid = [0, 10, 40, 90]
    columns = torch.stack([SimA().statistic(model, x0, t) for t in grid], dim=1)
    for batch_size in (1, 5, 64):
        torch.testing.assert_close(SimA().sweep(model, x0, grid, batch_size=batch_size), columns, rtol=1e-5, atol=1e-6)
    mc = [SimAMC(k=3).sweep(model, x0, grid, seed=9, batch_size=b) for b in (2, 9, 100)]
    assert torch.allclose(mc[0], mc[1], rtol=1e-6) and torch.allclose(mc[0], mc[2], rtol=1e-6)
    # a sample's noise depends on its content, not on its position or companions
    torch.testing.assert_close(SimAMC(k=3).sweep(model, x0.flip(0), grid, seed=9), mc[0].flip(0), rtol=1e-6, atol=1e-8)


def test_hyperparameters_are_validated_and_reported():
    assert SimAMC(k=5, reduce="norm_of_mean").get_params() == {"k": 5, "reduce": "norm_of_mean", "p": 4}
    for bad in (dict(k=0), dict(reduce="median"), dict(p=-1)):
        with pytest.raises(SimaError):
            SimAMC(**bad)
