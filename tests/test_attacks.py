"""The baseline attacks (PIA, PIAN, SecMI, Loss, PFAMI) and the conformance test over every attack.

Three kinds of test:

1. Each baseline against a direct computation written out here: per-sample loops that call
   the tiny diffusers UNet itself, with the DDPM schedule from ``tests.helpers.ddpm_abar``.
   The maths is the same, but the UNet's float32 kernels round differently for a batch of one
   than for a batch of many (about 1e-6 on its outputs), so these compare to a relative
   tolerance of 1e-4 rather than bit for bit.
2. A conformance test run over every attack from ``get_attack``. It uses a model whose output
   for one sample is an elementwise function of that sample, so nothing can depend on the batch
   a sample is computed in; there, sweeps must agree bit for bit across batch sizes.
3. On the empirical optimal denoiser, which memorises perfectly, every attack separates a
   well-separated synthetic member set from fresh images at a small t.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from core.attacks import (
    ATTACK_NAMES,
    PFAMI,
    PIA,
    PIAN,
    Attack,
    Loss,
    SecMI,
    get_attack,
    keyed_noise,
    parse_attacks,
)
from core.attacks.pfami import centre_crop_resize
from core.cache import ANY_T
from core.errors import SimaError
from core.hashing import row_digests
from core.models.base import DiffusionModel
from core.models.empirical import EmpiricalDenoiser
from core.models.pixel import PixelModel
from tests.helpers import ddpm_abar, tiny_unet

ABAR = ddpm_abar()
SHAPE = (3, 8, 8)
RTOL, ATOL = 1e-4, 1e-7


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def unet_model():
    return PixelModel(tiny_unet(), ddpm_abar())


@pytest.fixture(scope="module")
def x0():
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(11)) * 2 - 1


class ElementwiseModel(DiffusionModel):
    """eps(x, t) = tanh(1.5 x - 0.7 x shifted by one pixel + sin(t / 37)): per-sample by construction."""

    def __init__(self, shape=SHAPE):
        self.alphas_cumprod = ddpm_abar()
        self.image_shape = self.sample_shape = shape
        self.name = "elementwise"
        self.queried = 0

    def _raw(self, x, t):
        self.queried += x.shape[0]
        phase = torch.sin(t.to(x.dtype) / 37).view(-1, 1, 1, 1)
        return torch.tanh(1.5 * x - 0.7 * x.roll(1, dims=-1) + phase)

    @property
    def fingerprint(self):
        return "elementwise-test-model"


class ShuffleLatentModel(ElementwiseModel):
    """A 'latent' model whose encoder is 0.5 x pixel_unshuffle: (1, 8, 8) images <-> (4, 4, 4) latents."""

    kind = "latent"

    def __init__(self):
        super().__init__(shape=(4, 4, 4))
        self.image_shape = (1, 8, 8)

    def encode(self, images):
        return 0.5 * F.pixel_unshuffle(images, 2)

    def decode(self, z):
        return F.pixel_shuffle(2 * z, 2)


# ----------------------------------------------------------------- direct computations


def unet_eps(model, x, t):
    """eps_theta for ONE sample (C, H, W) at integer t, straight from the UNet."""
    with torch.no_grad():
        return model.unet(x[None], torch.tensor([int(t)])).sample[0]


def forward(x, t, eps):
    a = float(ABAR[int(t)])
    return math.sqrt(a) * x + math.sqrt(1 - a) * eps


def direct_pia(model, x, t, rescale):
    out = []
    for xi, ti in zip(x, t.tolist()):
        eps0 = unet_eps(model, xi, 0)
        if rescale:
            eps0 = eps0 * math.sqrt(2 / math.pi) / eps0.abs().mean()
        diff = unet_eps(model, forward(xi, ti, eps0), ti) - eps0
        out.append(diff.double().abs().pow(4).sum())
    return torch.stack(out)


def direct_ddim(model, x, s, u):
    a_s, a_u = float(ABAR[s]), float(ABAR[u])
    e = unet_eps(model, x, s)
    x0_pred = (x - math.sqrt(1 - a_s) * e) / math.sqrt(a_s)
    return math.sqrt(a_u) * x0_pred + math.sqrt(1 - a_u) * e


def direct_secmi(model, x, t, k):
    out = []
    for xi, ti in zip(x, t.tolist()):
        path = list(range(0, ti, k)) + [ti]
        for s, u in zip(path, path[1:]):
            xi = direct_ddim(model, xi, s, u)
        back = direct_ddim(model, direct_ddim(model, xi, ti, ti + k), ti + k, ti)
        out.append((xi - back).double().pow(2).sum())
    return torch.stack(out)


def direct_loss(model, x, t, noise):
    return torch.stack([
        (e - unet_eps(model, forward(xi, ti, e), ti)).double().pow(2).sum()
        for xi, ti, e in zip(x, t.tolist(), noise[:, 0])
    ])


def whole_pixel_crop(image, crop):
    """Centre crop to ``crop`` whole pixels, then a bilinear resize back (the original PFAMI's way)."""
    side = image.shape[-1]
    lo = (side - crop) // 2
    patch = image[None, :, lo:lo + crop, lo:lo + crop]
    return F.interpolate(patch, size=(side, side), mode="bilinear", align_corners=False)[0]


def direct_pfami(model, x, noise, timesteps, crops):
    out = []
    for xi, ni in zip(x, noise):
        def loss(img):
            errs = [(unet_eps(model, forward(img, s, ni[j]), s) - ni[j]).double().pow(2).mean() for j, s in enumerate(timesteps)]
            return torch.stack(errs).mean()

        base = loss(xi)
        out.append(torch.stack([(loss(whole_pixel_crop(xi, c)) - base) / base for c in crops]).mean())
    return torch.stack(out)


# ----------------------------------------------------------- each attack, done by hand


@pytest.mark.parametrize("cls", [PIA, PIAN])
def test_pia_and_pian_match_direct_computation(unet_model, x0, cls):
    t = torch.tensor([0, 5, 40, 300])
    stat = cls().statistic(unet_model, x0, t)
    torch.testing.assert_close(stat, direct_pia(unet_model, x0, t, rescale=cls is PIAN), rtol=RTOL, atol=ATOL)


def test_pian_rescales_eps0_to_the_mean_absolute_value_of_a_standard_normal(unet_model, x0):
    eps0 = PIAN().initial_noise(unet_model, x0)
    torch.testing.assert_close(eps0.abs().flatten(1).mean(1), torch.full((4,), math.sqrt(2 / math.pi)))
    assert torch.equal(PIA().initial_noise(unet_model, x0), unet_model.eps(x0, 0))


def test_secmi_matches_direct_computation_including_t_off_the_stride(unet_model, x0):
    t = torch.tensor([0, 10, 25, 40])
    stat = SecMI(k=10).statistic(unet_model, x0, t)
    torch.testing.assert_close(stat, direct_secmi(unet_model, x0, t, 10), rtol=RTOL, atol=ATOL)


def test_secmi_sweep_shares_one_trajectory_and_matches_the_per_t_definition(unet_model, x0):
    grid = [40, 0, 25, 10, 30]  # unsorted, off the stride, and two t on one stride interval
    swept = SecMI(k=10).sweep(unet_model, x0, grid, batch_size=3)
    for j, t in enumerate(grid):
        expected = direct_secmi(unet_model, x0, torch.full((len(x0),), t), 10)
        torch.testing.assert_close(swept[:, j], expected, rtol=RTOL, atol=ATOL)


def test_secmi_grid_costs_the_longest_inversion_plus_the_round_trips():
    attack = SecMI(k=10)
    # 4 strides to 40, 2 per on-stride t, 3 per off-stride t (its own short step)
    assert attack.queries_for_grid([0, 10, 25, 40]) == 4 + 2 + 2 + 3 + 2
    assert attack.queries_for_grid(range(10, 201, 10)) == 20 + 2 * 20


def test_secmi_counts_inversion_steps_plus_the_round_trip():
    attack = SecMI(k=10)
    assert [attack.queries_per_sample(t) for t in (0, 10, 25, 90, 100)] == [2, 3, 5, 11, 12]


def test_secmi_refuses_a_round_trip_past_the_last_timestep():
    model = ElementwiseModel()
    with pytest.raises(SimaError, match="at most 989"):
        SecMI(k=10).statistic(model, torch.zeros(1, *SHAPE), 990)
    assert torch.isfinite(SecMI(k=10).statistic(model, torch.zeros(1, *SHAPE), 989)).all()


def test_loss_matches_direct_computation(unet_model, x0):
    t = torch.tensor([3, 50, 50, 700])
    noise = torch.randn(4, 1, *SHAPE, generator=torch.Generator().manual_seed(2))
    stat = Loss().statistic(unet_model, x0, t, noise=noise)
    torch.testing.assert_close(stat, direct_loss(unet_model, x0, t, noise), rtol=RTOL, atol=ATOL)


def test_pfami_matches_direct_computation(unet_model, x0):
    # lambda * 8 = 6 and 4 whole pixels with even margins: the original's whole-pixel crop.
    attack = PFAMI(timesteps=(0, 300), lambdas=(0.75, 0.5))
    noise = torch.randn(2, 2, *SHAPE, generator=torch.Generator().manual_seed(4))
    stat = attack.statistic(unet_model, x0[:2], 123, noise=noise)
    torch.testing.assert_close(stat, direct_pfami(unet_model, x0[:2], noise, (0, 300), (6, 4)), rtol=RTOL, atol=1e-6)
    assert attack.queries_per_sample(0) == 6 and attack.noise_draws == 2


def test_pfami_defaults_are_those_of_methods():
    attack = PFAMI()
    assert attack.timesteps == (0, 50, 100, 150, 200, 250, 300, 350, 400, 450)
    np.testing.assert_allclose(attack.lambdas, np.linspace(0.95, 0.70, 10), rtol=0, atol=1e-15)
    assert attack.noise_draws == 10 and attack.queries_per_sample(0) == 110 and attack.member_when == "higher"


def test_centre_crop_resize_is_bilinear_sampling_of_the_central_fraction():
    image = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    lam = 0.83
    out = centre_crop_resize(image, (lam, 1.0))
    # Output pixel i reads the input at 3.5 + lam (i + 0.5 - 4), kept inside the crop window's
    # outermost pixel centres (1 - lam) 4 and (1 + lam) 4 - 1.
    src = np.clip(3.5 + lam * (np.arange(8) + 0.5 - 4), (1 - lam) * 4, (1 + lam) * 4 - 1)
    lo = np.floor(src).astype(int)
    w = src - lo
    expected = torch.empty(2, 8, 8, dtype=torch.float64)
    for i in range(8):
        for j in range(8):
            top = (1 - w[j]) * image[0, :, lo[i], lo[j]] + w[j] * image[0, :, lo[i], lo[j] + 1]
            bottom = (1 - w[j]) * image[0, :, lo[i] + 1, lo[j]] + w[j] * image[0, :, lo[i] + 1, lo[j] + 1]
            expected[:, i, j] = (1 - w[i]) * top + w[i] * bottom
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], image[0])


def test_centre_crop_resize_equals_a_whole_pixel_crop_and_resize_when_the_crop_is_whole():
    images = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    out = centre_crop_resize(images, (0.75, 0.5, 0.25))
    for j, crop in enumerate((6, 4, 2)):
        torch.testing.assert_close(out[:, j], torch.stack([whole_pixel_crop(img, crop) for img in images]))
    with pytest.raises(SimaError, match="less than one pixel"):
        centre_crop_resize(images, (0.1,))


def test_pfami_crops_latent_models_in_image_space():
    model = ShuffleLatentModel()
    z = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(8)) - 0.5
    attack = PFAMI(timesteps=(0, 100), lambdas=(0.75, 0.5))
    group = attack.neighbourhood(model, z)
    images = model.decode(z)
    assert group.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(group[:, 0], model.encode(images))
    for j, crop in enumerate((6, 4), start=1):
        expected = model.encode(torch.stack([whole_pixel_crop(img, crop) for img in images]))
        torch.testing.assert_close(group[:, j], expected)


def test_pfami_ignores_the_sweep_timestep_and_checks_its_own():
    model, x = ElementwiseModel(), torch.rand(2, *SHAPE) - 0.5
    noise = torch.randn(2, 10, *SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(PFAMI().statistic(model, x, 0, noise=noise), PFAMI().statistic(model, x, 700, noise=noise))
    with pytest.raises(SimaError, match="timesteps go up to 1000"):
        PFAMI(timesteps=(0, 1000)).statistic(model, x, 0, generator=torch.Generator().manual_seed(0))


def test_an_attack_that_ignores_t_gives_the_same_sweep_on_any_grid():
    model, x = ElementwiseModel(), torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(4)) - 0.5
    a = PFAMI().sweep(model, x, [10, 50], seed=2)
    b = PFAMI().sweep(model, x, [300], seed=2)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], b[:, 0])


@pytest.mark.parametrize("params", [dict(timesteps=()), dict(timesteps=(0, 2.5)), dict(lambdas=(0.9, 1.2)), dict(lambdas=())])
def test_pfami_rejects_bad_hyperparameters(params):
    with pytest.raises(SimaError):
        PFAMI(**params)


def test_bad_hyperparameters_of_the_other_baselines_are_refused():
    for make in (lambda: PIA(p=0), lambda: PIAN(p=-1), lambda: SecMI(k=0), lambda: SecMI(k=2.5)):
        with pytest.raises(SimaError):
            make()


# -------------------------------------------------------------------------- registry


def test_registry_names_every_attack_and_builds_it_with_parameters():
    assert ATTACK_NAMES == ("sima", "sima-mc", "pia", "pian", "secmi", "loss", "pfami")
    assert get_attack(" SecMI ", k=5).get_params() == {"k": 5}
    assert [a.name for a in parse_attacks("sima,pia, secmi")] == ["sima", "pia", "secmi"]
    given = PIA(p=2)
    assert parse_attacks([given, "loss"])[0] is given


def test_registry_errors_say_what_is_valid():
    with pytest.raises(SimaError, match="sima, sima-mc, pia, pian, secmi, loss, pfami"):
        get_attack("lira")
    with pytest.raises(SimaError, match="its parameters are: k"):
        get_attack("secmi", t=100)
    with pytest.raises(SimaError, match="twice"):
        parse_attacks("pia,PIA")
    with pytest.raises(SimaError, match="No attack"):
        parse_attacks(" , ")


# ---------------------------------------------------------- conformance: every attack

GRID = [0, 10, 25]


@pytest.fixture(params=ATTACK_NAMES)
def attack(request) -> Attack:
    return get_attack(request.param)


@pytest.fixture(scope="module")
def toy():
    return ElementwiseModel()


@pytest.fixture(scope="module")
def samples():
    return torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(21)) * 2 - 1


def _stat(attack, model, x, t, seed=0):
    generator = torch.Generator().manual_seed(seed) if attack.noise_draws else None
    return attack.statistic(model, x, t, generator=generator)


def test_conformance_identity_and_parameters(attack):
    assert attack.name in ATTACK_NAMES and get_attack(attack.name).name == attack.name
    assert attack.member_when in ("lower", "higher")
    for t in GRID + [100, 500]:
        q = attack.queries_per_sample(t)
        assert isinstance(q, int) and q > 0
    clone = type(attack)(**attack.get_params())
    assert clone.get_params() == attack.get_params() and clone.describe() == attack.describe()
    # How the app and reports name it: its own words, not the base class's placeholders.
    base = Attack
    assert attack.title.lower() == attack.name and attack.blurb.startswith(f"{attack.title}: ")
    assert attack.statistic_label != base.statistic_label


def test_conformance_statistic_is_float64_finite_per_sample(attack, toy, samples):
    stat = _stat(attack, toy, samples, torch.tensor([0, 10, 25, 10, 0]))
    assert stat.dtype == torch.float64 and stat.shape == (5,) and torch.isfinite(stat).all()


def test_conformance_queries_per_sample_counts_model_evaluations(attack, samples):
    model = ElementwiseModel()
    t = torch.tensor([0, 10, 25, 7, 30])
    _stat(attack, model, samples, t)
    assert model.queried == sum(attack.queries_per_sample(s) for s in t.tolist())


def test_conformance_sweep_spends_the_queries_it_reports_for_the_grid(attack, samples):
    from core.batching import best_settings

    model = ElementwiseModel()
    best_settings(model)  # calibrate first: its timing passes are not part of the sweep
    model.queried = 0
    attack.sweep(model, samples, GRID, seed=0, batch_size=1000)
    assert model.queried == len(samples) * attack.queries_for_grid(GRID)


def test_conformance_sweep_equals_columnwise_statistic_with_keyed_noise(attack, toy, samples):
    keys = row_digests(samples)
    swept = attack.sweep(toy, samples, GRID, seed=3, keys=keys, batch_size=4)
    assert swept.shape == (5, len(GRID)) and swept.dtype == torch.float64
    for j, step in enumerate(GRID):
        noise = None
        if attack.noise_draws:
            # An attack that ignores t draws its noise once, keyed by ANY_T whatever the grid.
            key_t = step if attack.uses_timestep else ANY_T
            noise = keyed_noise(keys, torch.full((5,), key_t), attack.noise_draws, SHAPE, 3)
        assert torch.equal(swept[:, j], attack.statistic(toy, samples, step, noise=noise))


def test_conformance_sweep_does_not_depend_on_batch_size(attack, toy, samples):
    runs = [attack.sweep(toy, samples, GRID, seed=1, batch_size=b) for b in (1, 3, 64)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_conformance_determinism_and_seeds(attack, toy, samples):
    a = attack.sweep(toy, samples, GRID, seed=5)
    assert torch.equal(a, attack.sweep(toy, samples, GRID, seed=5))
    if attack.noise_draws:
        assert not torch.equal(a, attack.sweep(toy, samples, GRID, seed=6))
        with pytest.raises(SimaError, match="Generator"):
            attack.statistic(toy, samples, 10)
    else:
        assert torch.equal(attack.statistic(toy, samples, 10), attack.statistic(toy, samples, 10))


# --------------------------------------------- separation on the optimal denoiser


def test_every_attack_separates_members_of_the_empirical_optimal_denoiser():
    # Uniform random 1x8x8 images are ~6.5 apart, 100 noise widths at t = 10: the optimal
    # denoiser recognises each member, and non-members are as far from every member.
    g = torch.Generator().manual_seed(0)
    members = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    nonmembers = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    model = EmpiricalDenoiser(members)
    images = torch.cat([members, nonmembers])
    labels = np.r_[np.ones(16), np.zeros(16)]
    for name in ATTACK_NAMES:
        attack = get_attack(name)
        stat = attack.sweep(model, images, [10], seed=0)[:, 0].numpy()
        score = -stat if attack.member_when == "lower" else stat
        assert roc_auc_score(labels, score) > 0.95, name
