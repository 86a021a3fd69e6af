"""The out-of-domain check: what a digits model cannot judge, and how often it cries wolf."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import domain
from core.data import load_images
from core.datasets import digits_images, digits_split
from tests.helpers import out_of_domain_files


@pytest.fixture(scope="module")
def digits():
    """(held-out digits, digits in neither the held-out set nor any demo's members) at 16x16."""
    images, ids = digits_images(16)
    split = digits_split()
    index = {image_id: i for i, image_id in enumerate(ids)}
    heldout = images[[index[i] for i in split.heldout_ids]]
    used = set(split.heldout_ids) | set(split.member_ids)
    unseen = images[[i for i, image_id in enumerate(ids) if image_id not in used]]
    return heldout, unseen


def test_features_are_quantiles_moments_and_edge_quantiles_per_channel():
    image = torch.tensor([[[[-1.0, 0.0, 1.0], [0.5, -0.5, 0.25]]]])  # (1, 1, 2, 3)
    values = image.flatten().double().numpy()
    edges = np.abs(np.concatenate([np.diff(image[0, 0].numpy(), axis=1).ravel(), np.diff(image[0, 0].numpy(), axis=0).ravel()]))
    expected = np.concatenate([
        np.quantile(values, domain.QUANTILES), [values.mean(), values.std()], np.quantile(edges, domain.QUANTILES),
    ])
    np.testing.assert_allclose(domain.image_features(image)[0].numpy(), expected, rtol=1e-12)
    assert domain.image_features(torch.zeros(2, 3, 4, 4)).shape == (2, 12 * 3)


def test_photos_thumbnails_and_large_jpegs_cannot_be_judged_by_a_digits_model(digits):
    heldout, _ = digits
    loaded = load_images(out_of_domain_files(), channels=1, size=(16, 16))
    assert len(loaded) == 3 and not loaded.errors
    checks = domain.domain_checks(loaded.images, heldout)
    assert [c.judgeable for c in checks] == [False, False, False]
    assert all(c.sentence().startswith("This model cannot judge this image: it looks unlike") for c in checks)


def test_in_domain_digits_are_rarely_called_out_of_domain(digits):
    heldout, unseen = digits
    fitted = domain.DomainReference.fit(heldout)
    false_alarms = float((fitted.distances(unseen) > fitted.threshold_).mean())
    assert false_alarms <= 0.01, f"{false_alarms:.3%} of {len(unseen)} unseen digits called out of domain"
    # the reference's own images, each left out of a reference of the others
    left_out = [fitted_without(heldout, i) for i in range(0, len(heldout), 25)]
    assert sum(left_out) == 0


def fitted_without(images: torch.Tensor, i: int) -> bool:
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[i] = False
    fitted = domain.DomainReference.fit(images[keep])
    return bool(fitted.distances(images[i:i + 1])[0] > fitted.threshold_)


def test_a_statistic_far_beyond_the_reference_on_the_non_member_side_is_out_of_domain():
    rng = np.random.default_rng(0)
    reference = np.exp(rng.normal(2.0, 0.5, 400))
    spread = 1.4826 * np.median(np.abs(np.log(reference) - np.median(np.log(reference))))
    far = np.exp(np.median(np.log(reference)) + (domain.STATISTIC_Z + 1) * spread)
    near = np.exp(np.median(np.log(reference)) + (domain.STATISTIC_Z - 1) * spread)
    tiny = np.exp(np.median(np.log(reference)) - (domain.STATISTIC_Z + 1) * spread)
    got = domain.statistic_outliers([far, near, tiny], reference, "lower")
    assert got.tolist() == [True, False, False]  # tiny is the member side: what the attack looks for
    assert domain.statistic_outliers([far, near, tiny], reference, "higher").tolist() == [False, False, True]
    # a statistic that can be negative has no log scale: no statistic check
    assert not domain.statistic_outliers([1e9], np.r_[reference, -1.0], "lower").any()


def test_a_reference_too_small_to_know_what_far_means_makes_no_check():
    few = torch.rand(domain.MIN_REFERENCE - 1, 1, 8, 8) * 2 - 1
    assert domain.DomainReference.fit(few) is None
    assert domain.domain_checks(torch.zeros(2, 1, 8, 8), few) == [None, None]
