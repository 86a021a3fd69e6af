"""What a model's samples are worth, measured offline: the cost side of a privacy defence.

A defence that stops a model leaking is only useful if the model still generates well, so a
leakage figure is reported beside these:

- :func:`sample`: deterministic DDIM samples (eta = 0, Song et al. 2021) from any
  :class:`~core.models.base.DiffusionModel`, decoded to [-1, 1] images.
- :func:`precision_recall`: improved precision and recall (Kynkaenniemi et al. 2019) in a
  feature space: precision is the share of generated images that fall inside the real images'
  k-nearest-neighbour balls (are they realistic?), recall the share of real images inside the
  generated ones' balls (is the variety covered?).
- :func:`copy_ratio`: for each generated image, the distance to its nearest training image over
  the distance to its nearest held-out image, of the same count. About 1 when samples are new
  digits; well below 1 when the model reproduces its training images.

The feature space is the real images' first principal components (pixels, no network): it
needs no download, and for 16x16 digits it keeps most of the variance. A deep feature space
would judge realism better; these figures compare models with each other, not with papers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.errors import SimaError


def sample(model, n: int, *, steps: int = 100, seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """``n`` DDIM samples (eta = 0) over ``steps`` evenly spaced timesteps, as [-1, 1] images."""
    if getattr(model, "conditional", False):
        raise SimaError("Sampling here is unconditional; a conditional model needs its captions.")
    T = model.num_train_timesteps
    if not 1 <= steps <= T:
        raise SimaError(f"steps must be between 1 and {T}, got {steps}.")
    grid = np.linspace(T - 1, 0, steps).round().astype(int)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        x = torch.randn((min(batch_size, n - start), *model.sample_shape), generator=gen, dtype=torch.float64)
        for i, t in enumerate(grid):
            a = float(model.abar(torch.tensor(t)))
            a_next = float(model.abar(torch.tensor(grid[i + 1]))) if i + 1 < len(grid) else 1.0
            eps = model.eps(x.to(torch.float32), int(t)).to(torch.float64)
            x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
            x = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps
        with torch.no_grad():
            out.append(model.decode(x.to(torch.float32)).clamp(-1, 1))
    return torch.cat(out)


def features(reference: torch.Tensor, *others: torch.Tensor, dims: int = 32) -> list[np.ndarray]:
    """The reference images and any others projected on the reference's first ``dims`` principal components."""
    ref = reference.flatten(1).to(torch.float64).numpy()
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    basis = vt[:dims].T
    return [(x.flatten(1).to(torch.float64).numpy() - mean) @ basis for x in (reference, *others)]


def _kth_distance(points: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(queries[:, None] - centres[None], axis=-1)
    return (d <= radii[None]).any(axis=1)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` feature vectors (rows)."""
    if min(len(real), len(fake)) <= k:
        raise SimaError(f"precision and recall with k = {k} need more than {k} real and generated images.")
    precision = _inside(fake, real, _kth_distance(real, k)).mean()
    recall = _inside(real, fake, _kth_distance(fake, k)).mean()
    return float(precision), float(recall)


def copy_ratio(generated: torch.Tensor, members: torch.Tensor, heldout: torch.Tensor) -> np.ndarray:
    """Per generated image: pixel distance to the nearest member / to the nearest held-out image.

    ``members`` and ``heldout`` must be the same size, so that neither side is nearer merely for
    having more images.
    """
    if len(members) != len(heldout):
        raise SimaError(f"copy_ratio needs as many held-out images as members, got {len(heldout)} and {len(members)}.")
    return (nearest_distance(generated, members) / nearest_distance(generated, heldout)).numpy()


def nearest_distance(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each image's pixel (L2) distance to its nearest reference image, in float64."""
    return torch.cdist(images.flatten(1).to(torch.float64), reference.flatten(1).to(torch.float64)).min(1).values


@dataclass(frozen=True)
class Quality:
    precision: float
    recall: float
    copy_ratio_median: float
    nearest_member_distance_median: float
    samples: int
    sampler: str

    def to_dict(self) -> dict:
        return asdict(self)


def sample_quality(model, members: torch.Tensor, heldout: torch.Tensor, *, n: int = 500, steps: int = 100,
                   seed: int = 0, k: int = 3) -> Quality:
    """Precision and recall against the held-out images, and how close samples come to members."""
    generated = sample(model, n, steps=steps, seed=seed)
    real, fake = features(heldout, generated)
    precision, recall = precision_recall(real, fake, k)
    ratio = copy_ratio(generated, members, heldout[: len(members)])
    return Quality(precision=precision, recall=recall, copy_ratio_median=float(np.median(ratio)),
                   nearest_member_distance_median=float(nearest_distance(generated, members).median()), samples=n,
                   sampler=f"DDIM eta 0, {steps} steps, seed {seed}; PCA-32 pixel features of the held-out images, k = {k}")
