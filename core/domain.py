"""Can this model judge this image? An out-of-domain check to run beside every verdict.

A p-value only means something for images like the reference non-members it is computed
against. A colour photo shrunk to a 16x16 greyscale digits model's size is not such an image:
its statistic is large for reasons that have nothing to do with membership, and "not flagged,
p = 1" would be an answer to a question the model cannot address. Two checks, both applied to
the image *after* core.data converted it to the model's size and channels (so that a photo,
an 8x8 thumbnail and a 2000x1500 JPEG are judged as the model sees them):

1. Features (model-free): per channel, the 5/25/50/75/95% quantiles, mean and standard
   deviation of the pixel values, and the same quantiles of the absolute differences between
   neighbouring pixels (how much edge there is). Each feature is centred on the reference's
   median and scaled by the reference's standard deviation (at least ``SCALE_FLOOR``, so a
   feature that never varies in the reference, such as a black background's 5% quantile,
   cannot turn a tiny difference into a huge distance). The image's distance to the reference
   is the mean distance to its ``K`` nearest reference images in that space. The threshold is
   ``DISTANCE_FACTOR`` times the 99th percentile of the same distance for each reference image
   against the others (leave one out), so it adapts to how varied the reference is.
2. Statistic: the attack's statistic at the verdict's t, in log space, further than
   ``STATISTIC_Z`` robust standard deviations (1.4826 x the median absolute deviation) beyond
   the reference's median on the non-member side. Only that side: an extreme on the member
   side is what the attack is for.

Either check alone makes the image "out of domain". The false-alarm rate on in-domain images
is measured by ``benchmarks/domain.py`` (held-out and unseen digits on the digits demos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import DataError

#: Quantiles of the pixel values and of the neighbour differences that describe an image.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Smallest scale of a feature, in pixel units of [-1, 1] (2.5% of the range).
SCALE_FLOOR = 0.05
#: Neighbours the distance to the reference is averaged over.
K = 5
#: An image is out of domain beyond this multiple of the reference's own 99th-percentile distance.
DISTANCE_FACTOR = 2.5
#: An image is out of domain when its log statistic lies this many robust SDs beyond the median.
STATISTIC_Z = 8.0
#: Fewer reference images than this give no usable spread: the check is then not made.
MIN_REFERENCE = 20
#: What the app and the CLI say instead of a verdict.
CANNOT_JUDGE = "this model cannot judge this image"


def image_features(images: torch.Tensor) -> torch.Tensor:
    """Model-free features (N, 12 C) of [-1, 1] images (N, C, H, W); see the module docstring."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError("Give a non-empty batch of images shaped (N, C, H, W).")
    x = images.detach().to(torch.float64).cpu()
    flat = x.flatten(2)
    levels = torch.tensor(QUANTILES, dtype=torch.float64)
    values = torch.quantile(flat, levels, dim=2).permute(1, 2, 0).flatten(1)
    parts = [values, flat.mean(2), flat.std(2, correction=0)]
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(2)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(2)
    edges = torch.cat([dx, dy], 2)
    if edges.shape[2]:
        parts.append(torch.quantile(edges, levels, dim=2).permute(1, 2, 0).flatten(1))
    else:  # a 1x1 model has no neighbours: no edge features
        parts.append(torch.zeros(x.shape[0], x.shape[1] * len(QUANTILES), dtype=torch.float64))
    return torch.cat(parts, 1)


@dataclass(frozen=True)
class DomainCheck:
    """Whether the model can judge one image, and why not when it cannot."""

    judgeable: bool
    reason: str | None
    distance: float | None
    threshold: float | None

    def sentence(self) -> str:
        """One line for the user: empty when the image is judgeable."""
        return "" if self.judgeable else f"{CANNOT_JUDGE[0].upper()}{CANNOT_JUDGE[1:]}: {self.reason}"


class DomainReference:
    """The reference images' features, fitted once, against which images are checked.

    ``fit`` returns None when the reference has fewer than ``MIN_REFERENCE`` images: too few
    to know what "far" means, so no image is called out of domain.
    """

    def __init__(self, features: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor, threshold: float):
        self.features_ = features
        self.centre_ = centre
        self.scale_ = scale
        self.threshold_ = threshold

    @classmethod
    def fit(cls, images: torch.Tensor) -> "DomainReference | None":
        if len(images) < MIN_REFERENCE:
            return None
        raw = image_features(images)
        centre = raw.median(0).values
        scale = raw.std(0).clamp_min(SCALE_FLOOR)
        features = (raw - centre) / scale
        own = _knn_distance(features, features, leave_one_out=True)
        threshold = DISTANCE_FACTOR * float(np.quantile(own.numpy(), 0.99))
        return cls(features, centre, scale, threshold)

    def distances(self, images: torch.Tensor) -> np.ndarray:
        """Each image's mean distance to its K nearest reference images, in scaled feature space."""
        query = (image_features(images) - self.centre_) / self.scale_
        return _knn_distance(query, self.features_).numpy()

    def check(
        self, images: torch.Tensor, statistics: np.ndarray | None = None,
        reference_statistics: np.ndarray | None = None, member_when: str = "lower",
    ) -> list[DomainCheck]:
        """One DomainCheck per image; with statistics (of the images and of the reference at
        the verdict's t) the statistic check is made too."""
        distances = self.distances(images)
        far_stat = (
            statistic_outliers(statistics, reference_statistics, member_when)
            if statistics is not None and reference_statistics is not None else np.zeros(len(distances), bool)
        )
        checks = []
        for distance, outlier in zip(distances.tolist(), far_stat.tolist()):
            reasons = []
            if distance > self.threshold_:
                reasons.append(
                    f"it looks unlike every reference image (its distance to them, {distance:.3g}, is "
                    f"{distance / (self.threshold_ / DISTANCE_FACTOR):.1f}x what reference images have among themselves)"
                )
            if outlier:
                reasons.append("its score lies far outside the range of the reference images' scores")
            reason = " and ".join(reasons) + "; the images it can judge look like its training data" if reasons else None
            checks.append(DomainCheck(not reasons, reason, float(distance), float(self.threshold_)))
        return checks


def statistic_outliers(statistics, reference_statistics, member_when: str) -> np.ndarray:
    """True where a statistic lies ``STATISTIC_Z`` robust SDs beyond the reference on the
    non-member side, in log space (statistics are norms and losses: positive, skewed)."""
    stats = np.asarray(statistics, dtype=np.float64).ravel()
    ref = np.asarray(reference_statistics, dtype=np.float64).ravel()
    ref = ref[np.isfinite(ref)]
    if len(ref) < MIN_REFERENCE or not (ref > 0).all():
        return np.zeros(len(stats), dtype=bool)  # a signed statistic has no log scale to judge on
    log_ref = np.log(ref)
    median = float(np.median(log_ref))
    spread = 1.4826 * float(np.median(np.abs(log_ref - median)))
    if not spread > 0:
        return np.zeros(len(stats), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log(np.where(stats > 0, stats, np.nan)) - median) / spread
    beyond = z if member_when == "lower" else -z
    return np.nan_to_num(beyond, nan=0.0) > STATISTIC_Z


def domain_checks(
    images: torch.Tensor, reference_images: torch.Tensor, *, statistics: np.ndarray | None = None,
    reference_statistics: np.ndarray | None = None, member_when: str = "lower",
) -> list[DomainCheck | None]:
    """Checks of ``images`` against ``reference_images`` (both converted to the model's size);
    None for each image when the reference is too small to check against."""
    fitted = DomainReference.fit(reference_images)
    if fitted is None:
        return [None] * len(images)
    return list(fitted.check(images, statistics, reference_statistics, member_when))


def _knn_distance(query: torch.Tensor, reference: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its K nearest reference rows, in chunks."""
    k = min(K, reference.shape[0] - (1 if leave_one_out else 0))
    out = torch.empty(query.shape[0], dtype=torch.float64)
    step = max(1, int(2_000_000 // max(1, reference.shape[0])))
    for start in range(0, query.shape[0], step):
        d = torch.cdist(query[start:start + step], reference)
        if leave_one_out:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = math.inf
        out[start:start + step] = d.topk(k, dim=1, largest=False).values.mean(1)
    return out
