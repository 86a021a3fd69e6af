"""SimA and its Monte Carlo variant (docs/methods.md, section 3): the norm of the predicted noise."""

from __future__ import annotations

import torch

from core.attacks.base import Attack, noised, norm_order
from core.conditioning import repeat
from core.errors import SimaError

REDUCTIONS = ("mean_norm", "norm_of_mean")


class SimA(Attack):
    """||eps_theta(x0, t)||_p^p at the clean input, no noise added: one query per sample.

    Members get small values (the prediction points towards a local mean that is the sample
    itself), so ``member_when = "lower"``.
    """

    name = "sima"
    title = "SimA"
    blurb = "SimA: norm of the predicted noise at the clean image"
    statistic_label = "noise norm ‖ε̂(x₀, t)‖₄⁴"
    member_when = "lower"

    def __init__(self, p: float = 4):
        self.p = norm_order(p)

    def queries_per_sample(self, t: int) -> int:
        return 1

    def _statistic(self, model, x0, t, noise, cond):
        eps = model.eps(x0, t, cond).to(torch.float64)
        return eps.abs().pow(self.p).flatten(1).sum(1)


class SimAMC(Attack):
    """Monte Carlo SimA over ``k`` noise draws at x_t(eps_k).

    ``reduce="norm_of_mean"`` (the default): ||mean_k eps_theta(x_t(eps_k), t)||_p, the quantity of
    docs/methods.md, section 2 whose expectation points from the local mean to x0. Averaging the
    predictions first cancels their noise-driven parts, so the member signal survives: on the
    bundled demos it is measurably stronger than the other reduction on some and never weaker
    (a paired bootstrap on the same images and noise: ``python benchmarks/sima_mc.py``,
    docs/benchmarks.md, "SimA-MC reduction").
    ``reduce="mean_norm"``: the mean over k of ||eps_theta(x_t(eps_k), t)||_p.
    """

    name = "sima-mc"
    title = "SimA-MC"
    blurb = "SimA-MC: SimA averaged over noisy copies"
    statistic_label = "noise norm of the mean prediction over noisy copies"
    member_when = "lower"

    def __init__(self, k: int = 10, reduce: str = "norm_of_mean", p: float = 4):
        if int(k) != k or k < 1:
            raise SimaError(f"k (the number of noise draws) must be a positive whole number, got {k}.")
        if reduce not in REDUCTIONS:
            raise SimaError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}.")
        self.k = int(k)
        self.reduce = reduce
        self.p = norm_order(p)

    @property
    def noise_draws(self) -> int:  # type: ignore[override]
        return self.k

    def queries_per_sample(self, t: int) -> int:
        return self.k

    def _statistic(self, model, x0, t, noise, cond):
        n, k = x0.shape[0], self.k
        xt = noised(model, x0, t, noise).reshape(n * k, *x0.shape[1:])
        eps = model.eps(xt, t.repeat_interleave(k), repeat(cond, k)).to(torch.float64).reshape(n, k, -1)
        if self.reduce == "norm_of_mean":
            return eps.mean(1).abs().pow(self.p).sum(1).pow(1 / self.p)
        return eps.abs().pow(self.p).sum(2).pow(1 / self.p).mean(1)
