"""Text-to-image baselines that compare an image's caption with weaker conditions.

A model fine-tuned on (image, caption) pairs fits the prediction conditioned on a member's own
caption more closely than its unconditional prediction: the conditioning gap and CLiD measure
that difference (docs/methods.md, "Conditional models").

- :class:`ConditioningGap`, the one-query-per-condition SimA analogue:
  gap = ||eps_theta(x0, t, "")||_p^p - ||eps_theta(x0, t, c)||_p^p, member when higher.
- :class:`CLiD` (Zhai et al., "Membership Inference on Text-to-Image Diffusion Models via
  Conditional Likelihood Discrepancy", NeurIPS 2024): the denoising loss under the caption,
  compared with the loss under reduced captions and the empty one, at a few timesteps with
  the same noise for every condition.
"""

from __future__ import annotations

import math

import torch

from core.attacks.base import Attack, noised, norm_order
from core.conditioning import EMPTY_KEY, Conditioning
from core.errors import SimaError

#: CLiD's timesteps: three around t = 450, ten apart, as the authors' code queries them.
CLID_TIMESTEPS = (440, 450, 460)
#: Fractions of a caption's words that CLiD's reduced captions remove, as in the authors' code.
CLID_CUT_RATES = (0.3, 0.5, 0.7)


def _require_captions(attack: Attack, cond: Conditioning) -> None:
    if all(key == EMPTY_KEY for key in cond.keys):
        raise SimaError(
            f"{attack.name} compares each image's caption (or label) with the empty condition, so it needs the "
            "captions: give --captions FILE (or --labels FILE) and leave --condition at 'caption'."
        )


class ConditioningGap(Attack):
    """||eps(x0, t, empty)||_p^p - ||eps(x0, t, caption)||_p^p: two queries, members higher."""

    name = "gap"
    title = "Conditioning gap"
    blurb = "Conditioning gap: SimA with the empty prompt minus SimA with the caption"
    statistic_label = "‖ε̂(x₀, t, ∅)‖₄⁴ − ‖ε̂(x₀, t, c)‖₄⁴"
    member_when = "higher"
    needs_condition = True

    def __init__(self, p: float = 4):
        self.p = norm_order(p)

    def queries_per_sample(self, t: int) -> int:
        return 2

    def _statistic(self, model, x0, t, noise, cond):
        _require_captions(self, cond)
        n = x0.shape[0]
        both = Conditioning.cat([cond, model.empty_condition(n)])
        eps = model.eps(torch.cat([x0, x0]), torch.cat([t, t]), both).to(torch.float64)
        norms = eps.abs().pow(self.p).flatten(1).sum(1)
        return norms[n:] - norms[:n]


def reduced_caption(text: str, rate: float) -> str:
    """``text`` without its last ceil(rate * words) words (see the CLiD notes in docs/methods.md)."""
    words = text.split()
    keep = len(words) - math.ceil(rate * len(words) - 1e-9)
    return " ".join(words[:max(0, keep)])


class CLiD(Attack):
    """CLiD's threshold statistic: (1 - alpha) L(x, c) - alpha * mean_i [L(x, c*_i) - L(x, c)].

    L(x, c) is the mean squared noise-prediction error over CLiD's timesteps (one noise draw
    each, shared by every condition) and all entries; c*_i are the caption with a fraction
    ``cut_rates[i]`` of its words removed, and the empty caption (the null class for a
    class-conditional model, which has no words to cut). Members are lower.
    """

    name = "clid"
    title = "CLiD"
    blurb = "CLiD: denoising loss under the caption against weakened captions"
    statistic_label = "(1 − α) L(x, c) − α · mean discrepancy"
    member_when = "lower"
    needs_condition = True
    uses_timestep = False

    def __init__(self, timesteps: tuple[int, ...] = CLID_TIMESTEPS, cut_rates: tuple[float, ...] = CLID_CUT_RATES,
                 alpha: float = 1.0):
        steps = tuple(int(s) for s in timesteps)
        if not steps or steps != tuple(timesteps) or min(steps) < 0:
            raise SimaError(f"CLiD's timesteps must be a non-empty list of whole numbers >= 0, got {timesteps!r}.")
        rates = tuple(float(r) for r in cut_rates)
        if not all(0 < r < 1 for r in rates):
            raise SimaError(f"CLiD's cut rates must lie strictly between 0 and 1, got {cut_rates!r}.")
        if not 0 <= alpha <= 1:
            raise SimaError(f"CLiD's alpha (the weight of the discrepancy against the loss) must lie in [0, 1], got {alpha}.")
        self.timesteps = steps
        self.cut_rates = rates
        self.alpha = alpha

    @property
    def noise_draws(self) -> int:  # type: ignore[override]
        return len(self.timesteps)

    def queries_per_sample(self, t: int) -> int:
        return len(self.timesteps) * (2 + len(self.cut_rates))

    def queries_at(self, model, t: int) -> int:
        # a class label has no words to cut: the label and the null class only
        if getattr(model, "condition_kind", None) == "label":
            return len(self.timesteps) * 2
        return self.queries_per_sample(t)

    def conditions(self, model, cond: Conditioning) -> list[Conditioning]:
        """The caption's conditioning first, then each reduced caption's, then the empty one."""
        reduced = []
        if cond.texts is not None:
            reduced = [model.condition([reduced_caption(text or "", r) for text in cond.texts]) for r in self.cut_rates]
        elif self.cut_rates and getattr(model, "condition_kind", None) == "caption":
            raise SimaError("CLiD needs each caption's text to shorten it; pass captions as strings.")
        return [cond, *reduced, model.empty_condition(len(cond))]

    def _statistic(self, model, x0, t, noise, cond):
        _require_captions(self, cond)
        if max(self.timesteps) >= model.num_train_timesteps:
            raise SimaError(
                f"CLiD's timesteps go up to {max(self.timesteps)} but {model.name} has timesteps 0 to "
                f"{model.num_train_timesteps - 1}; give CLiD timesteps within that range."
            )
        n, d = x0.shape[0], len(self.timesteps)
        steps = torch.tensor(self.timesteps, dtype=torch.long).repeat(n)
        eps = noise.reshape(n * d, *x0.shape[1:])
        xt = noised(model, x0.repeat_interleave(d, dim=0), steps, eps)
        conds = self.conditions(model, cond)
        m = len(conds)
        pred = model.eps(xt.repeat(m, *([1] * (xt.dim() - 1))), steps.repeat(m),
                         Conditioning.cat([c.repeat_interleave(d) for c in conds]))
        err = (pred.to(torch.float64).view(m, n * d, -1) - eps.to(torch.float64).view(1, n * d, -1)).pow(2).mean(2)
        loss = err.view(m, n, d).mean(2).cpu()
        discrepancy = (loss[1:] - loss[:1]).mean(0)
        return (1 - self.alpha) * loss[0] - self.alpha * discrepancy
