"""The loss attack: the model's own training loss at one fresh noise draw (docs/methods.md, section 3).

Matsumoto et al., "Membership Inference Attacks against Diffusion Models" (2023), and the
"Loss" baseline of SecMI and PIA: members were trained on, so the denoising error is lower.

    statistic = || eps - eps_theta(x_t(eps), t) ||_2^2,  eps ~ N(0, I)     (member when lower)

One query and one noise draw per sample and timestep. The papers leave open whether to sum or
average over entries: we sum, as the norm notation of docs/methods.md says; the mean differs by the constant
C*H*W and ranks identically. The noise is drawn fresh per (sample, t) through the sweep's keyed
noise, as the baseline draws fresh noise per evaluation.
"""

from __future__ import annotations

import torch

from core.attacks.base import Attack, noised


class Loss(Attack):
    """Squared error of the noise prediction at x_t(eps) for one fresh noise draw; members lower."""

    name = "loss"
    title = "Loss"
    blurb = "Loss: the training loss at one noise draw"
    statistic_label = "denoising loss ‖ε − ε̂(xₜ, t)‖²"
    member_when = "lower"
    noise_draws = 1

    def __init__(self):
        """No hyperparameters; defined so that ``get_params`` reads an empty signature."""

    def queries_per_sample(self, t: int) -> int:
        return 1

    def _statistic(self, model, x0, t, noise, cond):
        eps = noise[:, 0]
        pred = model.eps(noised(model, x0, t, eps), t, cond)
        return (eps.to(torch.float64) - pred.to(torch.float64)).pow(2).flatten(1).sum(1)
