"""core.local_mean against plain float64 formulas written out here, on tiny random data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import core.local_mean as lm
from core.errors import DataError
from core.models.base import DiffusionModel

SHAPE = (3, 4, 4)
DDPM_T0_ABAR = 1 - 1e-4  # abar at t = 0 of DDPM's linear schedule


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.empty(n, *SHAPE, dtype=torch.float64).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def ref() -> torch.Tensor:
    return _data(13, 0)


@pytest.fixture
def queries() -> torch.Tensor:
    return _data(5, 1)


def brute_logits(queries: torch.Tensor, reference: torch.Tensor, abar) -> torch.Tensor:
    """-||x - sqrt(a) y||^2 / (2 (1 - a)), one pair at a time, distances taken directly."""
    abar = torch.as_tensor(abar, dtype=torch.float64).reshape(-1).expand(len(queries))
    out = torch.empty(len(queries), len(reference), dtype=torch.float64)
    for i, x in enumerate(queries.double()):
        a = abar[i]
        for j, y in enumerate(reference.double()):
            out[i, j] = -((x - a.sqrt() * y) ** 2).sum() / (2 * (1 - a))
    return out


def brute_weights(queries, reference, abar) -> torch.Tensor:
    logits = brute_logits(queries, reference, abar)
    e = (logits - logits.max(1, keepdim=True).values).exp()
    return e / e.sum(1, keepdim=True)


def brute_mean(queries, reference, abar) -> torch.Tensor:
    w = brute_weights(queries, reference, abar)
    return (w @ reference.double().flatten(1)).view(queries.shape)


MIXED = torch.tensor([DDPM_T0_ABAR, 0.9, 0.5, 0.05, 4e-5], dtype=torch.float64)


@pytest.mark.parametrize("abar", [DDPM_T0_ABAR, 0.9, 0.3, 1e-3, MIXED])
def test_weights_and_mean_match_brute_force(queries, ref, abar):
    w = lm.kernel_weights(queries, ref, abar)
    torch.testing.assert_close(w, brute_weights(queries, ref, abar), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.sum(1), torch.ones(len(queries), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(lm.local_mean(queries, ref, abar), brute_mean(queries, ref, abar), rtol=1e-9, atol=1e-12)


def test_mixed_abar_equals_one_call_per_query(queries, ref):
    together = lm.local_mean(queries, ref, MIXED)
    for i, a in enumerate(MIXED.tolist()):
        torch.testing.assert_close(together[i:i + 1], lm.local_mean(queries[i:i + 1], ref, a), rtol=1e-12, atol=1e-14)


def test_mean_keeps_the_query_dtype(queries, ref):
    mu = lm.local_mean(queries.float(), ref.float(), 0.9)
    assert mu.dtype == torch.float32 and mu.shape == queries.shape
    torch.testing.assert_close(mu.double(), brute_mean(queries.float(), ref.float(), 0.9), rtol=0, atol=1e-6)


@pytest.mark.parametrize("budget, qmax, plan", [(1, 1024, (1, 1)), (4800, 2, (2, 5))])
def test_chunked_equals_unchunked(queries, ref, monkeypatch, budget, qmax, plan):
    whole = lm.explain(queries, ref, MIXED, k=4)
    weights = lm.kernel_weights(queries, ref, MIXED)
    monkeypatch.setattr(lm, "MEMORY_BUDGET_BYTES", budget)
    monkeypatch.setattr(lm, "QUERY_BLOCK_MAX", qmax)
    assert lm._plan(ref[0].numel()) == plan  # several query blocks and reference chunks
    assert lm._plan(ref[0].numel())[1] < len(ref)
    parts = lm.explain(queries, ref, MIXED, k=4)
    torch.testing.assert_close(lm.kernel_weights(queries, ref, MIXED), weights, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(lm.local_mean(queries, ref, MIXED), whole.mean, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(lm.effective_neighbours(queries, ref, MIXED), whole.effective_neighbours, rtol=1e-12, atol=0)
    torch.testing.assert_close(lm.nearest_distance(queries, ref), whole.nearest_distance, rtol=1e-12, atol=0)
    for name in ("mean", "top_weights", "effective_neighbours", "nearest_distance"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), rtol=1e-12, atol=1e-15)
    assert torch.equal(parts.top_indices, whole.top_indices)
    assert torch.equal(parts.nearest_index, whole.nearest_index)


def test_member_at_small_t_weighs_only_itself(ref):
    w = lm.kernel_weights(ref, ref, DDPM_T0_ABAR)
    assert (w.diagonal() > 1 - 1e-12).all()
    torch.testing.assert_close(lm.local_mean(ref, ref, DDPM_T0_ABAR), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lm.effective_neighbours(ref, ref, DDPM_T0_ABAR), torch.ones(len(ref), dtype=torch.float64))


def test_large_t_tends_to_the_reference_mean(queries, ref):
    centre = ref.mean(0, keepdim=True)
    gaps = [(lm.local_mean(queries, ref, a) - centre).abs().max().item() for a in (0.5, 1e-2, 1e-4, 1e-8)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-3
    eff = lm.effective_neighbours(queries, ref, 1e-8)
    torch.testing.assert_close(eff, torch.full_like(eff, len(ref)), rtol=1e-3, atol=0)


def test_effective_neighbours_is_inverse_sum_of_squared_weights(queries, ref):
    w = brute_weights(queries, ref, MIXED)
    torch.testing.assert_close(lm.effective_neighbours(queries, ref, MIXED), 1 / w.square().sum(1), rtol=1e-9, atol=0)


def test_top_neighbours_follow_brute_force_order(queries, ref):
    w = brute_weights(queries, ref, 0.05)
    assert (w > 1e-12).all()  # no underflowed ties, so the order is defined
    order = w.argsort(1, descending=True)
    for k in (1, 4, len(ref)):
        idx, weights = lm.top_neighbours(queries, ref, 0.05, k)
        assert torch.equal(idx, order[:, :k])
        torch.testing.assert_close(weights, w.gather(1, order[:, :k]), rtol=1e-9, atol=1e-15)
        assert (weights[:, :-1] >= weights[:, 1:]).all()


def test_nearest_distance_matches_cdist(queries, ref):
    both = torch.cat([queries, ref[:2]])
    expected = torch.cdist(both.flatten(1), ref.flatten(1)).min(1).values
    got = lm.nearest_distance(both, ref)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(got[-2:], torch.zeros(2, dtype=torch.float64))  # members sit exactly on themselves


def test_explain_agrees_with_the_single_functions(queries, ref):
    r = lm.explain(queries.float(), ref.float(), 0.2, k=3)
    assert r.mean.dtype == torch.float32
    torch.testing.assert_close(r.mean, lm.local_mean(queries.float(), ref.float(), 0.2))
    idx, w = lm.top_neighbours(queries.float(), ref.float(), 0.2, 3)
    assert torch.equal(r.top_indices, idx)
    torch.testing.assert_close(r.top_weights, w)
    d = (queries - ref[r.nearest_index]).flatten(1).norm(dim=1)
    torch.testing.assert_close(r.nearest_distance, d, rtol=1e-6, atol=1e-6)


def test_no_queries_give_empty_results(ref):
    none = ref[:0]
    assert lm.local_mean(none, ref, 0.5).shape == none.shape
    assert lm.kernel_weights(none, ref, 0.5).shape == (0, len(ref))
    assert lm.top_neighbours(none, ref, 0.5, 2)[0].shape == (0, 2)
    assert lm.nearest_distance(none, ref).shape == (0,)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, r: lm.local_mean(q, r[:0], 0.5), "reference set is empty"),
        (lambda q, r: lm.local_mean(q, r[:, :, :2], 0.5), "sample shape"),
        (lambda q, r: lm.local_mean(q[0], r, 0.5), "unsqueeze"),
        (lambda q, r: lm.local_mean(q, r, 0.0), "strictly between 0 and 1"),
        (lambda q, r: lm.kernel_weights(q, r, 1.0), "strictly between 0 and 1"),
        (lambda q, r: lm.effective_neighbours(q, r, torch.tensor([0.5, 1.5, 0.5, 0.5, 0.5])), "strictly between"),
        (lambda q, r: lm.local_mean(q, r, torch.tensor([0.5, 0.5])), "one per query"),
        (lambda q, r: lm.top_neighbours(q, r, 0.5, len(r) + 1), "k must be"),
        (lambda q, r: lm.top_neighbours(q, r, 0.5, 0), "k must be"),
        (lambda q, r: lm.local_mean(q, torch.cat([r, torch.full_like(r[:1], float("nan"))]), 0.5), "NaN"),
        (lambda q, r: lm.nearest_distance(q, torch.cat([r, torch.full_like(r[:1], float("inf"))])), "NaN or Inf"),
    ],
)
def test_bad_inputs_raise_data_errors(queries, ref, call, match):
    with pytest.raises(DataError, match=match):
        call(queries, ref)


class _ConstantX0(DiffusionModel):
    """Predicts x0 = 0.3 everywhere, through the 'sample' parameterisation."""

    prediction_type = "sample"
    image_shape = sample_shape = SHAPE
    fingerprint = "constant"

    def __init__(self):
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 20, dtype=torch.float64)

    def _raw(self, x, t):
        return torch.full_like(x, 0.3)


def test_tweedie_recovers_an_x0_prediction(queries):
    x = queries.float()
    got = lm.tweedie_x0(_ConstantX0(), x, torch.tensor([0, 5, 10, 15, 19]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.full_like(x, 0.3), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_256_queries_over_10000_cifar_sized_references_fit_in_memory():
    """Peak resident memory of the call, measured in a fresh process, stays under 2 GiB extra."""
    script = textwrap.dedent(
        """
        import resource, torch
        from core.local_mean import local_mean
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        ref = torch.empty(10000, 3, 32, 32).uniform_(-1, 1, generator=g)
        q = torch.empty(256, 3, 32, 32).uniform_(-1, 1, generator=g)
        page = resource.getpagesize()
        before = int(open('/proc/self/statm').read().split()[1]) * page
        mu = local_mean(q, ref, 0.9)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert torch.isfinite(mu).all()
        print(peak - before)
        """
    )
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux /proc to read resident memory")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60, check=True)
    extra = int(out.stdout.split()[-1])
    assert extra < 2 * 2**30, f"{extra / 2**20:.0f} MiB extra"
