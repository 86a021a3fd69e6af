"""The empirical optimal denoiser (docs/methods.md, section 2): a "model" that memorises perfectly.

Over a finite reference set the noise predictor that minimises the DDPM training loss exactly is

    eps*(x, t) = (x - sqrt(abar_t) mu_t(x)) / sqrt(1 - abar_t),

with mu_t the kernel-weighted local mean of :mod:`core.local_mean`. It needs no training and
no weights, so it is the ground truth for what a fully memorising model would leak, and a
fast stand-in for a network in tests.
"""

from __future__ import annotations

from functools import cached_property

import torch

from core.errors import DataError, ModelError
from core.hashing import fingerprint_tensors
from core.local_mean import local_mean
from core.models.base import DiffusionModel


def ddpm_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) for linearly spaced betas, float64, length T.

    diffusers builds the same "linear" schedule in float32; float64 keeps 1 - abar_t exact
    enough at t = 0, where it is only 1e-4.
    """
    if int(T) != T or T < 1:
        raise ModelError(f"The number of timesteps T must be a positive whole number, got {T}.")
    if not 0 < beta_start <= beta_end < 1:
        raise ModelError(
            f"Betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}."
        )
    betas = torch.linspace(beta_start, beta_end, int(T), dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class EmpiricalDenoiser(DiffusionModel):
    """The exact optimal noise predictor over ``reference`` (M, C, H, W), images in [-1, 1].

    ``alphas_cumprod`` defaults to DDPM's linear schedule (T = 1000, betas 1e-4 to 0.02).
    Each query costs one pass over the whole reference set.
    """

    kind = "empirical"
    prediction_type = "epsilon"

    def __init__(
        self,
        reference: torch.Tensor,
        alphas_cumprod: torch.Tensor | None = None,
        name: str = "empirical",
        manifest: dict | None = None,
    ):
        self.reference = _checked_reference(reference)
        self.alphas_cumprod = _checked_schedule(
            ddpm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        )
        self.image_shape = self.sample_shape = tuple(self.reference.shape[1:])
        self.name = name
        self.manifest = manifest

    def _raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar(t).to(x.device)
        # float64 throughout: for a member at t = 0, x - sqrt(a) mu is only 5e-5 of x.
        mu = local_mean(x.to(torch.float64), self.reference, a)
        a = a.view(-1, *([1] * (x.dim() - 1)))
        return ((x.to(torch.float64) - a.sqrt() * mu) / (1 - a).sqrt()).to(x.dtype)

    @cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        # Hashed once: the reference set is private to this object and never changes.
        return fingerprint_tensors(
            {"reference": self.reference, "alphas_cumprod": self.alphas_cumprod},
            {"kind": self.kind, "prediction_type": self.prediction_type},
        )

    def parameter_count(self) -> int:
        return 0

    def training_set_size(self) -> int:
        return int(self.reference.shape[0])


def _checked_reference(reference: torch.Tensor) -> torch.Tensor:
    if not isinstance(reference, torch.Tensor) or reference.dim() != 4 or reference.shape[0] == 0:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise DataError(f"Give the reference set as a non-empty tensor shaped (M, C, H, W), got {shape}.")
    if not reference.is_floating_point() or not torch.isfinite(reference).all():
        raise DataError("The reference set must hold finite floating-point values; check how it was loaded.")
    if reference.min() < -1 or reference.max() > 1:
        raise DataError(
            "The reference images must lie in [-1, 1]; map pixels p in [0, 1] to 2p - 1 (core.data does this)."
        )
    # A private copy, so that the cached fingerprint stays true to the data.
    return reference.detach().to("cpu").clone().contiguous()


def _checked_schedule(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).reshape(-1).clone()
    if a.numel() == 0 or not bool(((a > 0) & (a < 1)).all()):
        raise ModelError(
            "alphas_cumprod must be a non-empty list of values strictly between 0 and 1 "
            "(at abar = 1 the noise level is 0 and eps is undefined); check the noise schedule."
        )
    return a
