"""PFAMI, metric variant without a reference model (docs/methods.md, section 3).

Fu et al., "A Probabilistic Fluctuation based Membership Inference Attack for Diffusion
Models" (PFAMI). A member sits at a local maximum of the model's likelihood, so slightly
perturbed copies of it ("neighbours") are fitted worse, relative to the image itself, than
neighbours of a non-member are. With the denoising loss as a likelihood proxy,

    L(x)      = mean over s in {0, 50, .., 450} of mean_i (eps_theta(x_s(eps_s), s) - eps_s)_i^2
    x_lambda  = centre crop of x to lambda of its side, resized back, lambda in linspace(0.95, 0.70, 10)
    statistic = mean over lambda of (L(x_lambda) - L(x)) / L(x)             (member when higher)

It costs len(timesteps) x (len(lambdas) + 1) = 10 x 11 = 110 queries per sample, every model
evaluation counted (the SimA paper's table lists 20), and it ignores the sweep's t
(``uses_timestep = False``): its own grid of steps replaces it.

Choices the papers leave open:

- Noise: one standard normal draw eps_s per PFAMI step s and sample, shared by the image and
  all its neighbours (common random numbers), so that each relative difference measures the
  model's fit and not the luck of the draw. PFAMI's authors are reported to use the same noise
  for a fair comparison (not checked against their code); the SimA authors' port of PFAMI
  draws fresh noise for every evaluation instead. Hence ``noise_draws = len(timesteps)``.
- Crop and resize: one bilinear resampling. Output pixel i (of ``side``) reads the input at
  (side - 1) / 2 + lambda (i + 0.5 - side / 2), clamped to the outermost pixel centres of the
  crop window [(1 - lambda) side / 2, (1 + lambda) side / 2 - 1] as a resize of the cropped
  patch is: a centre crop to exactly lambda of the side followed by a bilinear resize back.
  The original crops to int(lambda * side) whole pixels and then resizes (torchvision
  CenterCrop + Resize); the two agree whenever lambda * side is a whole number of the same
  parity as the side, and the continuous crop keeps ten distinct neighbours even on tiny
  images, where whole-pixel crops collapse (on 8x8 images, 0.95, 0.92 and 0.89 all crop to 7
  pixels). Antialiasing does not arise: the crop is enlarged, never shrunk.
- Latent models: the crop acts on images, so neighbours are encode(crop(decode(z0))). The image
  itself goes through the same round trip, encode(decode(z0)), so that the autoencoder's
  reconstruction error is not counted as fluctuation (lambda = 1 would give 0). The loss is
  the mean over latent entries. Pixel models use the identity for both maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.attacks.base import Attack, noised
from core.conditioning import repeat
from core.errors import SimaError
from core.models.base import DiffusionModel

DEFAULT_TIMESTEPS = tuple(range(0, 500, 50))
DEFAULT_LAMBDAS = tuple(float(v) for v in np.linspace(0.95, 0.70, 10))


def _grid_coordinates(side: int, lambdas: tuple[float, ...]) -> torch.Tensor:
    """Where each output pixel reads the input, per lambda, in grid_sample's units: (L, side)."""
    lam = torch.tensor(lambdas, dtype=torch.float64)[:, None]
    src = (side - 1) / 2 + lam * (torch.arange(side, dtype=torch.float64) + 0.5 - side / 2)
    # A resize of the cropped patch reads nothing outside it: clamp to its outermost pixel centres.
    src = torch.minimum(torch.maximum(src, (1 - lam) * side / 2), (1 + lam) * side / 2 - 1)
    return (2 * src + 1) / side - 1


def centre_crop_resize(images: torch.Tensor, lambdas: tuple[float, ...]) -> torch.Tensor:
    """Each image (N, C, H, W) cropped to the central lambda of its sides and resized back: (N, L, C, H, W)."""
    n, c, h, w = images.shape
    if min(lambdas) * min(h, w) < 1:
        raise SimaError(
            f"A crop strength of {min(lambdas)} leaves less than one pixel of a {h}x{w} image; "
            "use crop strengths of at least 1 / side."
        )
    rows = _grid_coordinates(h, lambdas)
    cols = _grid_coordinates(w, lambdas)
    grid = torch.stack(torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1)
    grid = grid.to(dtype=images.dtype, device=images.device).repeat(n, 1, 1, 1)
    source = images.repeat_interleave(len(lambdas), dim=0)
    # A gather with fixed weights per pixel: each output depends on its own image only.
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(n, len(lambdas), c, h, w)


class PFAMI(Attack):
    """Mean relative rise of the denoising loss from an image to its crop neighbours; members higher."""

    name = "pfami"
    title = "PFAMI"
    blurb = "PFAMI: loss change under small crops (ignores t)"
    statistic_label = "relative loss rise under crops"
    member_when = "higher"
    uses_timestep = False

    def __init__(self, timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS):
        steps = tuple(int(s) for s in timesteps)
        if not steps or steps != tuple(timesteps) or min(steps) < 0:
            raise SimaError(f"PFAMI's timesteps must be a non-empty list of whole numbers >= 0, got {timesteps!r}.")
        strengths = tuple(float(v) for v in lambdas)
        if not strengths or not all(0 < v <= 1 for v in strengths):
            raise SimaError(f"PFAMI's crop strengths (lambdas) must lie in (0, 1], got {lambdas!r}.")
        self.timesteps = steps
        self.lambdas = strengths

    @property
    def noise_draws(self) -> int:  # type: ignore[override]
        return len(self.timesteps)

    def queries_per_sample(self, t: int) -> int:
        return len(self.timesteps) * (len(self.lambdas) + 1)

    def neighbourhood(self, model: DiffusionModel, x0: torch.Tensor) -> torch.Tensor:
        """Each sample and its neighbours in model space: (N, 1 + len(lambdas), *sample_shape), itself first."""
        images = model.decode(x0)
        group = torch.cat([images.unsqueeze(1), centre_crop_resize(images, self.lambdas)], dim=1)
        if not model.is_latent:
            return group
        return model.encode(group.flatten(0, 1)).view(x0.shape[0], group.shape[1], *x0.shape[1:])

    def _statistic(self, model, x0, t, noise, cond):
        if max(self.timesteps) >= model.num_train_timesteps:
            raise SimaError(
                f"PFAMI's timesteps go up to {max(self.timesteps)} but {model.name} has timesteps 0 to "
                f"{model.num_train_timesteps - 1}; give PFAMI a grid within that range."
            )
        group = self.neighbourhood(model, x0)
        n, m = group.shape[:2]
        flat = group.flatten(0, 1)
        # every neighbour keeps its image's caption
        flat_cond = repeat(cond, m)
        loss = torch.zeros(n * m, dtype=torch.float64)
        for j, step in enumerate(self.timesteps):
            # The same draw for an image and all of its neighbours (see the module docstring).
            eps = noise[:, j].repeat_interleave(m, dim=0)
            steps = torch.full((n * m,), step, dtype=torch.long)
            pred = model.eps(noised(model, flat, steps, eps), steps, flat_cond)
            loss += (pred.to(torch.float64) - eps.to(torch.float64)).pow(2).flatten(1).mean(1).cpu()
        loss = (loss / len(self.timesteps)).view(n, m)
        return ((loss[:, 1:] - loss[:, :1]) / loss[:, :1]).mean(1)
