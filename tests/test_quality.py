"""Sample quality: DDIM against a closed form, precision/recall and the copy ratio against brute force."""

import numpy as np
import pytest
import torch

from core.errors import SimaError
from core.models.empirical import EmpiricalDenoiser
from core.quality import copy_ratio, features, precision_recall, sample


def test_ddim_on_the_exact_denoiser_of_one_image_returns_that_image():
    """With one training image x*, eps(x, t) = (x - sqrt(abar) x*) / sqrt(1 - abar), so every DDIM
    step predicts x0 = x* exactly and the last step lands on it, whatever the starting noise."""
    target = torch.linspace(-0.9, 0.9, 2 * 4 * 4).reshape(1, 2, 4, 4)
    model = EmpiricalDenoiser(target)
    out = sample(model, 3, steps=7, seed=5)
    torch.testing.assert_close(out, target.expand(3, -1, -1, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(sample(model, 3, steps=7, seed=5), out, atol=0, rtol=0)


def test_samples_of_the_exact_denoiser_copy_its_training_images():
    members = torch.rand(6, 1, 4, 4) * 2 - 1
    heldout = torch.rand(6, 1, 4, 4) * 2 - 1
    generated = sample(EmpiricalDenoiser(members), 12, steps=50, seed=0)
    assert np.all(copy_ratio(generated, members, heldout) < 0.05)


def test_precision_and_recall_match_a_hand_count():
    # real 0, 1, 2, 3: each ball (k = 1) has radius 1. fake 0.5, 10, 10.5: radii 9.5, 0.5, 0.5.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0], [10.5]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(1 / 3) and recall == 1.0
    with pytest.raises(SimaError, match="need more than 3"):
        precision_recall(real, fake, k=3)


def test_copy_ratio_is_zero_for_copies_and_refuses_unequal_sets():
    members, heldout = torch.rand(5, 1, 3, 3), torch.rand(5, 1, 3, 3) + 2
    assert np.all(copy_ratio(members.clone(), members, heldout) == 0)
    assert np.all(copy_ratio(heldout.clone(), members, heldout) == np.inf)
    with pytest.raises(SimaError, match="as many held-out images as members"):
        copy_ratio(members, members, heldout[:3])


def test_features_are_principal_components_of_the_reference():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(50, 1, 3, 3, generator=gen) * torch.arange(1, 10).reshape(1, 1, 3, 3)
    ref, again = features(reference, reference, dims=4)
    np.testing.assert_allclose(ref, again)
    np.testing.assert_allclose(ref.mean(0), 0, atol=1e-12)
    variances = ref.var(0)
    assert np.all(np.diff(variances) <= 1e-9)  # ordered by explained variance
    cov = np.cov(ref.T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-9)  # uncorrelated
