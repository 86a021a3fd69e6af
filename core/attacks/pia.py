"""PIA and PIAN, the proximal initialization attacks (docs/methods.md, section 3).

Kong et al., "An Efficient Membership Inference Attack for the Diffusion Model by Proximal
Initialization" (ICLR 2024). Instead of fresh noise, PIA noises x0 with the model's own noise
prediction at the clean image, eps0 = eps_theta(x0, 0), and measures how far the prediction at
x_t(eps0) moves from eps0:

    R = || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps0, t) - eps0 ||_p^p,  p = 4.

Two queries per sample and no randomness. Where the paper is silent we follow the paper's code:

- the exponent is a hyperparameter ``p`` (the paper's ``lp``, default 4), and the statistic is
  the p-th power of the norm, as docs/methods.md writes it (the root would not change any ranking);
- PIAN rescales eps0 per sample so that its mean absolute value is that of a standard normal,
  sqrt(2 / pi): eps0 * sqrt(2 / pi) / mean(|eps0|), the mean taken over all entries of the
  sample. The paper introduces this because eps_theta(x0, 0) is not distributed like the
  N(0, I) noise the model was trained to remove.
"""

from __future__ import annotations

import math

import torch

from core.attacks.base import Attack, noised, norm_order
from core.conditioning import Conditioning
from core.models.base import DiffusionModel


class PIA(Attack):
    """||eps_theta(x_t(eps0), t) - eps0||_p^p with eps0 = eps_theta(x0, 0); members are lower."""

    name = "pia"
    title = "PIA"
    blurb = "PIA: consistency of the noise predicted at 0 and at t"
    statistic_label = "PIA error ‖ε̂(xₜ, t) − ε̂(x₀, 0)‖₄⁴"
    member_when = "lower"
    #: PIAN sets this to rescale eps0 to the mean absolute value of a standard normal.
    rescale_eps0 = False

    def __init__(self, p: float = 4):
        self.p = norm_order(p)

    def queries_per_sample(self, t: int) -> int:
        return 2

    def initial_noise(self, model: DiffusionModel, x0: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """eps0 = eps_theta(x0, 0), rescaled for PIAN; the noise the attack puts back into x0."""
        eps0 = model.eps(x0, 0, cond)
        if self.rescale_eps0:
            mean_abs = eps0.abs().flatten(1).mean(1).view(-1, *([1] * (eps0.dim() - 1)))
            eps0 = eps0 * math.sqrt(2 / math.pi) / mean_abs
        return eps0

    def _statistic(self, model, x0, t, noise, cond):
        eps0 = self.initial_noise(model, x0, cond)
        eps_t = model.eps(noised(model, x0, t, eps0), t, cond)
        return (eps_t.to(torch.float64) - eps0.to(torch.float64)).abs().pow(self.p).flatten(1).sum(1)


class PIAN(PIA):
    """PIA with eps0 rescaled to eps0 * sqrt(2/pi) / mean(|eps0|) per sample (the paper's PIAN)."""

    name = "pian"
    title = "PIAN"
    blurb = "PIAN: PIA with normalised noise"
    statistic_label = "PIAN error (normalised ε̂(x₀, 0))"
    rescale_eps0 = True
