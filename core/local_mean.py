"""The kernel-weighted local mean of docs/methods.md, section 2, and the neighbours that make it up.

For a reference set y_1 .. y_M and a query x at noise level abar (alphas_cumprod[t]):

    w_i(x) = softmax_i( -||x - sqrt(abar) y_i||^2 / (2 (1 - abar)) )
    mu(x)  = sum_i w_i(x) y_i

mu(x) is E[x0 | x_t = x] when x0 is drawn uniformly from the reference set: the output of the
empirical optimal denoiser, and what a memorising model's Tweedie estimate approximates.

All tensors are in model space, shaped (N, *S) for queries and (M, *S) for the reference set
(S is (C, H, W) for images). For a latent model, pass latent tensors (``model.encode``) for
both, and decode the mean with ``model.decode`` to show it; weights, neighbour indices and
distances are then those of the latent space.

Numerics. Squared distances are expanded as ||x||^2 - 2 sqrt(a) x.y + a ||y||^2 in float64
(clamped at 0): at t = 0 the kernel width 2 (1 - abar) is 2e-4, so the logits amplify rounding
errors by 5e3, and float32 rounding of ||x||^2 (about 1e3 for a CIFAR image) alone would move
them by 0.3 or more: weights off by a third. The softmax is a log-sum-exp.

Memory. The reference set is never converted to float64 as a whole. Queries go in blocks and
the reference set in chunks, with a streaming (online) log-sum-exp that rescales the running
sums whenever the running maximum logit grows. Sizes come from ``MEMORY_BUDGET_BYTES`` (256
MiB): the query side (the float64 queries, the running mean and one update of the same size)
gets at most half of it, and one reference chunk in float64 plus four (block x chunk) float64
matrices get at most the other half, with chunks further capped at ``CHUNK_BYTES_MAX`` (32
MiB) for speed. The extra memory of a call is therefore bounded by the budget plus the
outputs: about 130 MiB measured for 256 queries x 10,000 references of 3x32x32
(benchmarks/local_mean.py). Chunk boundaries depend on the sample size only, not on the number
of queries, so the rest of a batch changes a query's result by rounding at most (the last bit
of a float64; float32 results came out identical).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import DataError
from core.models.base import DiffusionModel

#: Working memory one call aims for; see the module docstring for how it is split.
MEMORY_BUDGET_BYTES = 256 * 2**20
#: At most this many queries per block, so that small samples do not shrink reference chunks.
QUERY_BLOCK_MAX = 1024
#: At most this many bytes of float64 reference rows per chunk. Smaller chunks stay in cache and
#: reuse the allocator's memory; larger ones mean fewer parallel regions, which matters when other
#: processes share the cores. For one CIFAR query over 10,000 references on 2 cores, 32 MiB took
#: 0.3 s under load (8 MiB: 0.5-1.1 s, 57 MiB: 0.5 s) and about 0.1 s idle.
CHUNK_BYTES_MAX = 32 * 2**20
#: float64 matrices of shape (query block, reference chunk) alive at once during a scan.
_PAIR_MATRICES = 4
#: float64 tensors of the query block's shape alive at once (queries, running mean, update).
_QUERY_COPIES = 3
_F64 = 8


@dataclass
class LocalMeanResult:
    """Everything the local mean of a batch of queries is made of, from one pass.

    ``mean`` has the queries' shape and dtype; the rest is float64 (indices: int64), one row
    per query. ``top_weights`` are sorted in decreasing order, ``top_indices`` index the
    reference set. ``nearest_distance`` is the plain Euclidean distance ||x - y|| to the
    closest reference sample, ignoring the noise level.
    """

    mean: torch.Tensor
    top_indices: torch.Tensor
    top_weights: torch.Tensor
    effective_neighbours: torch.Tensor
    nearest_index: torch.Tensor
    nearest_distance: torch.Tensor


@dataclass
class _Scan:
    """Raw running sums of one pass; ``shift`` is the maximum logit per query."""

    shift: torch.Tensor
    total: torch.Tensor
    weighted_sum: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None
    top_logits: torch.Tensor | None = None
    top_indices: torch.Tensor | None = None
    nearest_sq: torch.Tensor | None = None
    nearest_index: torch.Tensor | None = None

    @property
    def log_normaliser(self) -> torch.Tensor:
        return self.shift + self.total.log()


def _plan(dim: int) -> tuple[int, int]:
    """(query block, reference chunk) sizes for samples of ``dim`` entries."""
    half = MEMORY_BUDGET_BYTES // 2
    block = max(1, min(QUERY_BLOCK_MAX, half // (_QUERY_COPIES * _F64 * dim)))
    chunk = max(1, min(CHUNK_BYTES_MAX // (_F64 * dim), half // (_F64 * (dim + _PAIR_MATRICES * block))))
    return block, chunk


def _check_pair(queries: torch.Tensor, reference: torch.Tensor) -> None:
    if not isinstance(queries, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise DataError("Give the queries and the reference set as torch tensors shaped (N, C, H, W).")
    if queries.dim() < 2:
        raise DataError(
            f"Queries must be a batch shaped (N, C, H, W), got shape {tuple(queries.shape)}; "
            "use x.unsqueeze(0) for a single sample."
        )
    if reference.dim() < 2 or reference.shape[0] == 0:
        raise DataError("The reference set is empty: give at least one reference sample shaped (M, C, H, W).")
    if tuple(queries.shape) == tuple(reference.shape[1:]):
        raise DataError("Queries must be a batch: use x.unsqueeze(0) for a single sample.")
    if tuple(reference.shape[1:]) != tuple(queries.shape[1:]):
        raise DataError(
            f"Queries have sample shape {tuple(queries.shape[1:])} but the reference set has "
            f"{tuple(reference.shape[1:])}; encode or resize both into the same model space."
        )


def _check_abar(abar_t: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """abar as a float64 tensor of one value per query."""
    a = torch.as_tensor(abar_t, dtype=torch.float64).reshape(-1)
    if a.numel() == 1:
        a = a.expand(n)
    if a.numel() != n:
        raise DataError(f"Got {a.numel()} noise levels (abar_t) for {n} queries; give one, or one per query.")
    if n and not bool(((a > 0) & (a < 1)).all()):
        raise DataError(
            "abar_t (alphas_cumprod at the timestep) must lie strictly between 0 and 1; "
            "read it from model.abar(t) rather than passing a timestep or a beta."
        )
    return a.to(device)


def _check_k(k: int, m: int) -> int:
    if int(k) != k or not 1 <= k <= m:
        raise DataError(f"k must be a whole number from 1 to the reference size {m}, got {k}.")
    return int(k)


def _scan(
    x: torch.Tensor,
    reference: torch.Tensor,
    a: torch.Tensor | None,
    *,
    mean: bool = False,
    second_moment: bool = False,
    k: int = 0,
    nearest: bool = False,
    logits_out: torch.Tensor | None = None,
    chunk: int,
) -> _Scan:
    """One streaming pass of a float64 query block ``x`` (q, d) over the whole reference set.

    With ``a`` (abar per query) it accumulates the log-sum-exp of the kernel logits and, on
    request, the weighted sum of references, the sum of squared weights, the top-k logits, and
    the logits themselves; ``nearest`` tracks the unscaled nearest distance from the same dot
    products.
    """
    q, m = x.shape[0], reference.shape[0]
    ref = reference.flatten(1)
    xx = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
    sa, aa, width = None, None, None
    if a is not None:
        sa, aa, width = a.sqrt().unsqueeze(1), a.unsqueeze(1), (-2 * (1 - a)).unsqueeze(1)
    state = _Scan(
        shift=torch.full((q,), -torch.inf, dtype=torch.float64, device=x.device),
        total=torch.zeros(q, dtype=torch.float64, device=x.device),
    )
    if mean:
        state.weighted_sum = torch.zeros_like(x)
    if second_moment:
        state.total_sq = torch.zeros_like(state.total)
    for start in range(0, m, chunk):
        y = ref[start:start + chunk].to(device=x.device, dtype=torch.float64)
        yy = torch.linalg.vector_norm(y, dim=1).square_().unsqueeze(0)  # no chunk-sized temporary
        xy = x @ y.T
        if not torch.isfinite(xy).all() or not torch.isfinite(yy).all():
            raise DataError("The queries or the reference set contain NaN or Inf; check how they were loaded.")
        idx = torch.arange(start, start + y.shape[0], device=x.device)
        if nearest:
            _update_nearest(state, (xx - 2 * xy + yy).clamp_min_(0), idx)
        if a is None:
            continue
        logits = (xx - 2 * sa * xy).addcmul_(aa, yy).clamp_min_(0).div_(width)
        if logits_out is not None:
            logits_out[:, start:start + y.shape[0]] = logits
        if k:
            _update_top(state, logits, idx, k)
        _update_sums(state, logits, y)
    return state


def _update_nearest(state: _Scan, dist_sq: torch.Tensor, idx: torch.Tensor) -> None:
    best, where = dist_sq.min(1)
    where = idx[where]
    if state.nearest_sq is None:
        state.nearest_sq, state.nearest_index = best, where
        return
    better = best < state.nearest_sq
    state.nearest_sq = torch.where(better, best, state.nearest_sq)
    state.nearest_index = torch.where(better, where, state.nearest_index)


def _update_top(state: _Scan, logits: torch.Tensor, idx: torch.Tensor, k: int) -> None:
    cand = logits
    cand_idx = idx.unsqueeze(0).expand_as(logits)
    if state.top_logits is not None:
        cand = torch.cat([state.top_logits, logits], 1)
        cand_idx = torch.cat([state.top_indices, cand_idx], 1)
    top, where = cand.topk(min(k, cand.shape[1]), dim=1)
    state.top_logits, state.top_indices = top, cand_idx.gather(1, where)


def _update_sums(state: _Scan, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Online log-sum-exp: rescale the running sums to the new maximum, then add this chunk."""
    shift = torch.maximum(state.shift, logits.amax(1))
    rescale = (state.shift - shift).exp()  # exp(-inf) = 0 on the first chunk
    p = logits.sub_(shift.unsqueeze(1)).exp_()
    state.total.mul_(rescale).add_(p.sum(1))
    if state.weighted_sum is not None:
        state.weighted_sum.mul_(rescale.unsqueeze(1)).addmm_(p, y)
    if state.total_sq is not None:
        state.total_sq.mul_(rescale.square()).add_(p.square().sum(1))
    state.shift = shift


def _blocks(queries: torch.Tensor, block: int):
    """Float64 flattened query blocks with their first row; one empty block for no queries,
    so that callers need no special case."""
    flat = queries.flatten(1)
    for start in range(0, max(1, flat.shape[0]), block):
        yield start, flat[start:start + block].to(torch.float64)


def _scans(
    queries: torch.Tensor,
    reference: torch.Tensor,
    abar_t: float | torch.Tensor | None,
    logits_out: torch.Tensor | None = None,
    **wanted,
):
    """Validate now, then iterate (rows, scan) over the query blocks; ``wanted`` selects what
    :func:`_scan` accumulates. Without ``abar_t`` only nearest distances can be asked for."""
    _check_pair(queries, reference)
    a = None if abar_t is None else _check_abar(abar_t, queries.shape[0], queries.device)
    if "k" in wanted:
        wanted["k"] = _check_k(wanted["k"], reference.shape[0])
    block, chunk = _plan(reference[0].numel())

    def blocks():
        for start, x in _blocks(queries, block):
            rows = slice(start, start + x.shape[0])
            part = None if logits_out is None else logits_out[rows]
            yield rows, _scan(x, reference, None if a is None else a[rows], logits_out=part, chunk=chunk, **wanted)

    return blocks()


def _mean_into(out: torch.Tensor, rows: slice, state: _Scan) -> None:
    mu = state.weighted_sum.div_(state.total.unsqueeze(1))
    out[rows] = mu.view(-1, *out.shape[1:]).to(out.dtype)


def kernel_weights(queries: torch.Tensor, reference: torch.Tensor, abar_t: float | torch.Tensor) -> torch.Tensor:
    """w_i(x) for every query and reference sample: float64 (Q, M), rows sum to 1.

    ``abar_t`` is alphas_cumprod at the timestep: one float, or one value per query.
    """
    _check_pair(queries, reference)
    out = torch.empty(queries.shape[0], reference.shape[0], dtype=torch.float64, device=queries.device)
    for rows, state in _scans(queries, reference, abar_t, logits_out=out):
        out[rows].sub_(state.log_normaliser.unsqueeze(1)).exp_()
    return out


def local_mean(queries: torch.Tensor, reference: torch.Tensor, abar_t: float | torch.Tensor) -> torch.Tensor:
    """mu_t(x) = sum_i w_i(x) y_i for each query; shaped and typed like ``queries``.

    ``abar_t`` is alphas_cumprod at the timestep: one float, or one value per query.
    """
    scans = _scans(queries, reference, abar_t, mean=True)
    out = torch.empty_like(queries)
    for rows, state in scans:
        _mean_into(out, rows, state)
    return out


def top_neighbours(
    queries: torch.Tensor, reference: torch.Tensor, abar_t: float | torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k reference samples of largest weight: (indices int64 (Q, k), weights float64 (Q, k)),
    in decreasing order of weight."""
    parts = [state for _, state in _scans(queries, reference, abar_t, k=k)]
    return torch.cat([s.top_indices for s in parts]), torch.cat([_top_weights(s) for s in parts])


def _top_weights(state: _Scan) -> torch.Tensor:
    return (state.top_logits - state.log_normaliser.unsqueeze(1)).exp()


def effective_neighbours(queries: torch.Tensor, reference: torch.Tensor, abar_t: float | torch.Tensor) -> torch.Tensor:
    """1 / sum_i w_i^2 per query (float64): 1 when one sample takes all the weight, M when uniform."""
    return torch.cat([_effective(s) for _, s in _scans(queries, reference, abar_t, second_moment=True)])


def _effective(state: _Scan) -> torch.Tensor:
    # sum_i w_i^2 = sum_i p_i^2 / (sum_i p_i)^2 with p_i = exp(logit_i - shift).
    return state.total.square() / state.total_sq


def nearest_distance(queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ||x - y|| from each query to its closest reference sample (float64)."""
    index = torch.cat([s.nearest_index for _, s in _scans(queries, reference, None, nearest=True)])
    return _distance_to(queries, reference, index)


def _distance_to(queries: torch.Tensor, reference: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Exact distances to chosen references: the expansion is only accurate to ~1e-7 near 0,
    and a member should sit at distance exactly 0 from itself."""
    nearest = reference[index.to(reference.device)].to(device=queries.device, dtype=torch.float64)
    return (queries.to(torch.float64) - nearest).flatten(1).norm(dim=1)


def explain(
    queries: torch.Tensor, reference: torch.Tensor, abar_t: float | torch.Tensor, k: int = 5
) -> LocalMeanResult:
    """The local mean with its top-k neighbours, effective number of neighbours and nearest
    reference sample, all from one pass over the reference set (for display: one call per
    image shown). For a latent model, decode ``mean`` and index the images of the reference."""
    scans = _scans(queries, reference, abar_t, mean=True, second_moment=True, k=k, nearest=True)
    mean = torch.empty_like(queries)
    parts = []
    for rows, state in scans:
        _mean_into(mean, rows, state)
        parts.append(state)
    nearest_index = torch.cat([s.nearest_index for s in parts])
    return LocalMeanResult(
        mean=mean,
        top_indices=torch.cat([s.top_indices for s in parts]),
        top_weights=torch.cat([_top_weights(s) for s in parts]),
        effective_neighbours=torch.cat([_effective(s) for s in parts]),
        nearest_index=nearest_index,
        nearest_distance=_distance_to(queries, reference, nearest_index),
    )


def tweedie_x0(model: DiffusionModel, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """The model's own estimate of the local mean (docs/methods.md, section 2), in model space:
    x0_hat = (x - sqrt(1 - abar_t) eps_theta(x, t)) / sqrt(abar_t), typed like ``x``.

    Computed in float64 because at large t dividing by sqrt(abar_t) magnifies rounding.
    """
    t = model.timesteps(t, x.shape[0])
    a = model.abar(t).to(device=x.device).view(-1, *([1] * (x.dim() - 1)))
    eps = model.eps(x, t).to(device=x.device, dtype=torch.float64)
    return ((x.to(torch.float64) - (1 - a).sqrt() * eps) / a.sqrt()).to(x.dtype)
