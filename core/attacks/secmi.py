"""SecMI (stat): the error of one deterministic DDIM round trip (docs/methods.md, section 3).

Duan et al., "Are Diffusion Models Vulnerable to Membership Inference Attacks?" (ICML 2023).
x0 is inverted with deterministic DDIM steps of stride k up to the comparison step t, giving
x_t_tilde; one more DDIM step takes it to t + k and one step back gives x_t_hat. Members, whose
denoising the model has fitted, come back closer:

    statistic = || x_t_tilde - x_t_hat ||_2^2          (member when lower)

DDIM step from s to u (either direction), with e = eps_theta(x_s, s):
x_u = sqrt(abar_u) * (x_s - sqrt(1 - abar_s) e) / sqrt(abar_s) + sqrt(1 - abar_u) e.

Naming: the timestep t of this attack is the step where the comparison happens. SecMI's own
code names a comparison by its upper step t + k: its "t_sec = 100" compares at 90
(90 -> 100 -> 90), which is our t = 90. The usual default t = 100 is in our naming (SecMI's
t_sec = 110). The attack itself has no default t: the sweep's grid supplies it.

Choices the papers leave open:

- Inversion steps run 0 -> k -> 2k -> ... as in SecMI's code. When t is not a multiple of k, the
  last inversion step is shorter (... -> floor(t / k) k -> t) and the round trip still uses a
  full stride k, so samples at different t share every inversion step up to their own t.
- Queries per sample: ceil(t / k) inversion steps + 2 (t / k + 2 when k divides t; 12 at
  t = 100, k = 10, the count the SimA paper gives for SecMI). t = 0 needs no inversion: 2.
- The round trip needs step t + k, so t must be at most T - 1 - k; a larger t is an error
  rather than a silently shortened stride.
- A sweep shares one inversion trajectory across its grid (``_grid_statistic``): a sample's
  statistics at t = 10, 20, ..., 200 cost 20 inversion steps + 2 per t = 60 queries instead
  of 250 when each t is inverted from 0. The numbers are those of the per-t definition: each t
  branches off the shared path at floor(t / k) k exactly where its own inversion would.
- The trajectory is computed in the samples' dtype (the dtype the model is queried in); the
  squared distance is accumulated in float64.
"""

from __future__ import annotations

import math

import torch

from core.attacks.base import Attack
from core.conditioning import Conditioning, select
from core.errors import SimaError
from core.models.base import DiffusionModel


def ddim_step(model: DiffusionModel, x: torch.Tensor, s: torch.Tensor, u: torch.Tensor,
              cond: Conditioning | None = None) -> torch.Tensor:
    """One deterministic DDIM step of each sample from step s to step u (LongTensors [N])."""
    e = model.eps(x, s, cond)
    shape = (-1, *([1] * (x.dim() - 1)))
    a_s = model.abar(s).to(dtype=x.dtype, device=x.device).view(shape)
    a_u = model.abar(u).to(dtype=x.dtype, device=x.device).view(shape)
    return a_u.sqrt() * (x - (1 - a_s).sqrt() * e) / a_s.sqrt() + (1 - a_u).sqrt() * e


class SecMI(Attack):
    """||x_t_tilde - x_t_hat||_2^2 after DDIM inversion to t and a round trip t -> t + k -> t."""

    name = "secmi"
    title = "SecMI"
    blurb = "SecMI: error of a DDIM inversion round trip"
    statistic_label = "DDIM round-trip error ‖x̃ₜ − x̂ₜ‖²"
    member_when = "lower"
    shares_work_across_t = True

    def __init__(self, k: int = 10):
        if int(k) != k or k < 1:
            raise SimaError(f"k (the DDIM stride) must be a positive whole number, got {k}.")
        self.k = int(k)

    def queries_per_sample(self, t: int) -> int:
        return math.ceil(int(t) / self.k) + 2

    def queries_for_grid(self, timesteps) -> int:
        steps = sorted({int(t) for t in timesteps})
        return max(steps) // self.k + sum(2 + (t % self.k != 0) for t in steps)

    def invert(self, model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """x_t_tilde: x0 carried by DDIM steps 0 -> k -> 2k -> ... -> t, each sample to its own t."""
        x = x0.clone()
        start = torch.zeros_like(t)
        # Every sample takes the same steps until it reaches its t; only those still short of
        # their t are queried, so mixed timesteps cost no extra model calls.
        while bool((active := start < t).any()):
            end = torch.minimum(start + self.k, t)
            x[active] = ddim_step(model, x[active], start[active], end[active], select(cond, active))
            start = end
        return x

    def _check_range(self, model: DiffusionModel, largest: int) -> None:
        limit = model.num_train_timesteps - 1 - self.k
        if largest > limit:
            raise SimaError(
                f"SecMI compares at t after a round trip to t + k, so t can be at most {limit} for this "
                f"model with k = {self.k}; got t = {largest}. Choose smaller timesteps or a smaller k."
            )

    def _round_trip_error(self, model: DiffusionModel, x_tilde: torch.Tensor, t: torch.Tensor,
                          cond: Conditioning | None) -> torch.Tensor:
        x_up = ddim_step(model, x_tilde, t, t + self.k, cond)
        x_hat = ddim_step(model, x_up, t + self.k, t, cond)
        return (x_tilde.to(torch.float64) - x_hat.to(torch.float64)).pow(2).flatten(1).sum(1)

    def _statistic(self, model, x0, t, noise, cond):
        self._check_range(model, int(t.max()))
        return self._round_trip_error(model, self.invert(model, x0, t, cond), t, cond)

    def _grid_statistic(self, model, x0, timesteps, cond):
        self._check_range(model, max(timesteps))
        out = torch.empty(len(x0), len(timesteps), dtype=torch.float64)
        x, at = x0.clone(), 0

        def full(step: int) -> torch.Tensor:
            return torch.full((len(x0),), step, dtype=torch.long)

        for j in sorted(range(len(timesteps)), key=lambda j: timesteps[j]):
            t = timesteps[j]
            while at + self.k <= t:  # the shared path: whole strides up to floor(t / k) k
                x, at = ddim_step(model, x, full(at), full(at + self.k), cond), at + self.k
            x_tilde = x if at == t else ddim_step(model, x, full(at), full(t), cond)
            out[:, j] = self._round_trip_error(model, x_tilde, full(t), cond)
        return out
