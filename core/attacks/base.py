"""The Attack interface and the timestep sweep every attack shares.

An attack turns one sample at one timestep into a statistic (docs/methods.md, section 3). Its
hyperparameters are set in ``__init__`` and nothing else happens there. Randomness comes only
from noise passed in explicitly, or drawn from an explicit ``torch.Generator``.

In a sweep, the noise for each (sample, timestep) pair is drawn from a generator seeded by
(seed, the sample's content key, t). A sample's noise therefore does not depend on the batch
size, on the order of the samples, or on which other samples are in the set, which is what
makes the score cache and resumed audits exact. (The network's own arithmetic may still differ
in the last bits between batch sizes.)
"""

from __future__ import annotations

import abc
import inspect
import time
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import torch

from core import conditioning
from core.conditioning import Conditioning
from core.errors import DataError, ModelError, SimaError
from core.hashing import row_digests, seed_for
from core.models.base import DiffusionModel

if TYPE_CHECKING:
    from core.cache import ScoreCache

MemberWhen = Literal["lower", "higher"]

def keyed_noise(keys: Sequence[str], t: torch.Tensor, draws: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise (N, draws, *shape), each row fixed by (seed, key, t) alone."""
    out = torch.empty(len(keys), draws, *shape)
    for i, (key, step) in enumerate(zip(keys, t.tolist())):
        g = torch.Generator().manual_seed(seed_for((seed, key, int(step))))
        out[i] = torch.randn(draws, *shape, generator=g)
    return out


def noised(model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t(eps) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for noise (N, ...) or (N, K, ...)."""
    a = model.abar(t).to(dtype=x0.dtype, device=x0.device).view(-1, *([1] * (noise.dim() - 1)))
    x0 = x0 if noise.dim() == x0.dim() else x0.unsqueeze(1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def norm_order(p: float) -> float:
    """The order p of an attack's norm ||v||_p^p, which must be positive."""
    if not p > 0:
        raise SimaError(f"The norm order p must be positive, got {p}.")
    return p


def _check_samples(x0: torch.Tensor) -> None:
    if x0.dim() != 4 or x0.shape[0] == 0:
        raise DataError("Give a non-empty batch of samples shaped (N, C, H, W).")


class Attack(abc.ABC):
    """A membership statistic. Subclasses set ``name``, ``member_when`` and ``noise_draws``.

    ``noise_draws`` is how many standard normal tensors of the sample's shape the statistic
    needs per (sample, timestep); 0 for deterministic attacks.
    """

    name: str = "attack"
    #: How people write the attack's name, and one line on what it measures (for pickers and captions).
    title: str = "Attack"
    blurb: str = ""
    #: What the raw statistic is, for axis labels.
    statistic_label: str = "statistic"
    member_when: MemberWhen = "lower"
    noise_draws: int = 0
    #: False for attacks that average over their own timestep grid and ignore t.
    uses_timestep: bool = True

    #: True for attacks that compare a sample's caption with other conditions (the
    #: conditioning gap, CLiD): they need a conditional model.
    needs_condition: bool = False

    #: True for deterministic attacks whose statistics at several t share model evaluations;
    #: they implement ``_grid_statistic`` and a sweep computes a sample's whole grid at once.
    shares_work_across_t: bool = False

    @abc.abstractmethod
    def queries_per_sample(self, t: int) -> int:
        """Model evaluations this attack spends on one sample at timestep t."""

    def queries_at(self, model: DiffusionModel, t: int) -> int:
        """Model evaluations on one sample at timestep t of this model: ``queries_per_sample``
        unless the count depends on the kind of model."""
        return self.queries_per_sample(t)

    def queries_for_grid(self, timesteps: Sequence[int]) -> int:
        """Model evaluations a sweep spends on one sample over the whole grid."""
        steps = [int(t) for t in timesteps]
        return sum(self.queries_per_sample(t) for t in (steps if self.uses_timestep else steps[:1]))

    def _grid_statistic(self, model: DiffusionModel, x0: torch.Tensor, timesteps: list[int], cond: Conditioning | None) -> torch.Tensor:
        """Statistics (float64, N x len(timesteps)) for attacks that share work across t."""
        raise NotImplementedError(f"{self.name} does not share work across timesteps.")

    @abc.abstractmethod
    def _statistic(self, model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None,
                   cond: Conditioning | None) -> torch.Tensor:
        """Statistic per sample (float64, shape [N]); ``t`` is a validated LongTensor [N].

        ``cond`` is the samples' conditioning (one row each) on a conditional model, None on
        an unconditional one; every model query passes it on, repeated where samples are.
        """

    def get_params(self) -> dict:
        """Hyperparameters by name, as given to ``__init__`` (part of every cache key)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def describe(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{self.name}({params})"

    def __repr__(self) -> str:
        return self.describe()

    def statistic(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        t: int | torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cond: Conditioning | Sequence[str] | None = None,
    ) -> torch.Tensor:
        """The raw statistic for model-space samples ``x0`` (N, *model.sample_shape) at t.

        Random attacks take ``noise`` of shape (N, noise_draws, *sample_shape), or draw it
        from ``generator``; one of the two is required so that no result is unseeded.
        ``cond`` conditions a conditional model per sample (captions as strings, or a
        Conditioning); None means the empty condition there.
        """
        _check_samples(x0)
        t = model.timesteps(t, x0.shape[0])
        cond = self._conditioning(model, cond, x0.shape[0])
        if self.noise_draws:
            expected = (x0.shape[0], self.noise_draws, *x0.shape[1:])
            if noise is None:
                if generator is None:
                    raise SimaError(
                        f"{self.name} is random: pass a seeded torch.Generator (or explicit noise) "
                        "so that its result can be reproduced."
                    )
                noise = torch.randn(expected, generator=generator)
            if tuple(noise.shape) != expected:
                raise SimaError(f"{self.name} needs noise of shape {expected}, got {tuple(noise.shape)}.")
            noise = noise.to(device=x0.device, dtype=x0.dtype)
        with torch.inference_mode():
            return self._statistic(model, x0, t, noise, cond).to(torch.float64).cpu()

    def _conditioning(self, model: DiffusionModel, cond, n: int) -> Conditioning | None:
        if self.needs_condition and not getattr(model, "conditional", False):
            raise ModelError(
                f"{self.name} compares a sample's caption with other conditions, so it needs a text- or "
                f"class-conditional model; {model.name} is unconditional. Use sima or another attack."
            )
        return conditioning.resolve(model, cond, n)

    def sweep(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        timesteps: Sequence[int],
        *,
        seed: int = 0,
        keys: Sequence[str] | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        cache: "ScoreCache | None" = None,
        cond: Conditioning | Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Statistics for every sample at every timestep: a float64 tensor (N, len(timesteps)).

        (sample, timestep) pairs are packed into mixed batches of about ``batch_size`` model
        evaluations (default: the size measured fastest for this model) so the model always
        sees full batches. ``keys`` identify samples for the noise and the cache (default:
        content digests of ``x0``). With a ``cache``, cached pairs are not recomputed and each
        finished batch is stored at once, so an interrupted sweep resumes where it stopped.
        ``progress(done, total)`` is called after each batch with counts of pairs.
        ``cond`` holds each sample's conditioning on a conditional model (see
        :meth:`statistic`); cache entries are keyed by the sample's key and its condition's
        key, so a changed caption is computed afresh, while the noise stays keyed by the
        sample alone (a caption and the empty prompt see the same draws).
        """
        from core.batching import ThreadTuner, best_settings, torch_threads
        from core.cache import ANY_T, attack_key

        n, steps = x0.shape[0], [int(s) for s in timesteps]
        if not steps:
            raise DataError("Give at least one timestep.")
        model.timesteps(torch.tensor(steps), len(steps))
        if n == 0:
            return torch.empty(0, len(steps), dtype=torch.float64)
        if keys is None and (self.noise_draws or cache is not None):
            keys = row_digests(x0)
        if keys is not None and len(keys) != n:
            raise DataError(f"Got {len(keys)} keys for {n} samples.")
        cond = self._conditioning(model, cond, n)
        stored_keys = keys if cond is None or keys is None else [f"{k}|{c}" for k, c in zip(keys, cond.keys)]
        # An attack that ignores t is computed once and copied across the grid.
        grid = steps if self.uses_timestep else steps[:1]
        stored_t = grid if self.uses_timestep else [ANY_T]
        out = torch.zeros(n, len(grid), dtype=torch.float64)
        todo = torch.ones(n, len(grid), dtype=torch.bool)
        if cache is not None:
            cache_model, cache_attack = model.fingerprint, attack_key(self, seed, model.numerics)
            found = cache.get(cache_model, cache_attack, stored_keys, stored_t)
            if found:
                # Filled through numpy views: element-wise tensor indexing would cost more than the lookup.
                rows: dict[str, list[int]] = {}
                for i, key in enumerate(stored_keys):
                    rows.setdefault(key, []).append(i)
                column = {t: j for j, t in enumerate(stored_t)}
                values, missing = out.numpy(), todo.numpy()
                for (key, t), value in found.items():
                    for i in rows[key]:
                        values[i, column[t]] = value
                        missing[i, column[t]] = False
        pending = int(todo.sum())
        total, done = out.numel(), out.numel() - pending
        if progress is not None:
            progress(done, total)
        calibrated, threads = best_settings(model) if pending else (1, torch.get_num_threads())
        # Threads are a speed setting only: the calibration measured which count runs fastest here, and
        # the tuner follows the machine's load from there (not when the caller fixed the batch size).
        tuner = ThreadTuner(model, threads) if batch_size is None else None
        with torch_threads(threads):
            batches = self._pending_batches(model, x0, grid, stored_t, todo, keys, seed, batch_size or calibrated, cond)
            last = time.perf_counter()
            for idx, col, values, cost in batches:
                if tuner is not None:
                    tuner.observe(cost, time.perf_counter() - last)  # the batch's compute time
                out[idx, col] = values
                if cache is not None:
                    cache.put(cache_model, cache_attack, (
                        (stored_keys[i], stored_t[j], v) for i, j, v in zip(idx.tolist(), col.tolist(), values.tolist())))
                done += len(idx)
                if progress is not None:
                    progress(done, total)
                last = time.perf_counter()
        return out if self.uses_timestep else out.expand(n, len(steps)).clone()

    def _pending_batches(self, model, x0, grid, stored_t, todo, keys, seed, batch_size, cond):
        """(sample indices, grid columns, statistics, model evaluations spent) for the pending
        pairs, a batch at a time.

        Pairs are packed into mixed batches of about ``batch_size`` model evaluations. An
        attack that shares work across t instead takes ``batch_size`` whole samples at a time
        (each of its model calls sees one row per sample) and computes their grid at once.
        """
        if self.shares_work_across_t:
            rows = todo.any(1).nonzero().squeeze(1)
            for start in range(0, len(rows), batch_size):
                idx = rows[start:start + batch_size]
                values = self.grid_statistic(model, x0[idx], grid, cond=conditioning.select(cond, idx))
                need = todo[idx]
                pair_rows, cols = need.nonzero(as_tuple=True)
                yield idx[pair_rows], cols, values[need], len(idx) * self.queries_for_grid(grid)
            return
        sample_idx, col_idx = todo.nonzero(as_tuple=True)
        per_batch = max(1, batch_size // max(1, max(self.queries_per_sample(s) for s in grid)))
        grid_t, stored = torch.tensor(grid), torch.tensor(stored_t)
        for start in range(0, len(sample_idx), per_batch):
            idx, col = sample_idx[start:start + per_batch], col_idx[start:start + per_batch]
            noise = None
            if self.noise_draws:
                # keyed by the stored t, so an attack that ignores t draws the same noise on any grid
                noise = keyed_noise([keys[i] for i in idx.tolist()], stored[col], self.noise_draws, x0.shape[1:], seed)
            cost = sum(self.queries_per_sample(grid[j]) for j in col.tolist())
            yield idx, col, self.statistic(model, x0[idx], grid_t[col], noise=noise, cond=conditioning.select(cond, idx)), cost

    def grid_statistic(self, model: DiffusionModel, x0: torch.Tensor, timesteps: Sequence[int],
                       cond: Conditioning | Sequence[str] | None = None) -> torch.Tensor:
        """Statistics at every t of ``timesteps`` (float64, N x len(timesteps)) with work shared across t."""
        _check_samples(x0)
        steps = [int(s) for s in timesteps]
        model.timesteps(torch.tensor(steps), len(steps))
        cond = self._conditioning(model, cond, x0.shape[0])
        with torch.inference_mode():
            return self._grid_statistic(model, x0, steps, cond).to(torch.float64).cpu()

