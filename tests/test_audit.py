"""The audit protocol: t chosen on the selection half only, metrics on the report half."""

import json

import numpy as np
import pytest
import torch

from core import metrics
from core.attacks import SimA
from core.audit import AuditResult, assemble_result, parse_timesteps, run_audit, split_halves
from core.errors import DataError, SimaError
from core.models.empirical import EmpiricalDenoiser


def _assemble_synthetic(stats, labels, sel):
    return assemble_result(
        statistics=stats, labels=labels, selection_half=sel, timesteps=[10, 20], member_when="lower",
        select="auc", seed=0, n_bootstrap=50, ids=[str(i) for i in range(len(labels))], attack="sima",
        attack_params={"p": 4}, model_fingerprint="f", model_name="synthetic", queries_per_sample=1, wall_time_s=0.0,
    )


def test_timestep_is_chosen_on_the_selection_half_only():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.repeat([1, 0], n)
    sel = split_halves(n, n, seed=3)
    stats = rng.normal(size=(2 * n, 2))
    # t=10 separates perfectly on the selection half but is noise on the report half;
    # t=20 is the reverse. Choosing on the report half would pick t=20.
    member = labels == 1
    stats[sel & member, 0] -= 10
    stats[~sel & member, 1] -= 10
    result = _assemble_synthetic(stats, labels, sel)
    assert result.chosen_t == 10
    assert result.per_t[0]["selection_auc"] == 1.0 and result.per_t[1]["auc"] == 1.0
    report_auc = metrics.auc(scores=-stats[~sel, 0], labels=labels[~sel])
    assert result.metrics.auc.value == pytest.approx(report_auc)
    assert result.metrics.auc.value < 0.9


def test_split_is_per_class_seeded_and_needs_two_of_each():
    sel = split_halves(11, 6, seed=1)
    assert sel[:11].sum() == 5 and sel[11:].sum() == 3
    assert np.array_equal(sel, split_halves(11, 6, seed=1))
    assert not np.array_equal(sel, split_halves(11, 6, seed=2))
    with pytest.raises(DataError, match="at least 2"):
        split_halves(1, 6, seed=0)


def test_parse_timesteps():
    assert parse_timesteps("0:20:10") == [0, 10, 20]
    assert parse_timesteps("50") == [50]
    assert parse_timesteps("100,10,10") == [10, 100]
    for bad in ("a:b", "0:10:0", ""):
        with pytest.raises(SimaError):
            parse_timesteps(bad)


def _separable_sets(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    members = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    nonmembers = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return members, nonmembers


def test_end_to_end_on_the_optimal_denoiser_and_round_trip(tmp_path):
    members, nonmembers = _separable_sets()
    model = EmpiricalDenoiser(members, name="empirical")
    result = run_audit(model, members, nonmembers, attack=SimA(), timesteps=[5, 20, 900], seed=0, n_bootstrap=100)
    assert result.metrics.auc.value == 1.0 and result.chosen_t in (5, 20)
    assert result.per_t[-1]["t"] == 900
    assert result.metrics.to_dict()["tpr_at_0_1pct_fpr"]["value"] is None  # 12 report non-members
    folder = result.save(tmp_path / "audit")
    info = json.loads((folder / "result.json").read_text())
    for key in ("attack", "chosen_t", "selection", "n_members", "n_nonmembers", "seed", "model_fingerprint", "metrics", "per_t"):
        assert key in info
    assert set(info["per_t"][0]) >= {"t", "selection_auc", "auc", "asr", "tpr_at_1pct_fpr"}
    header = (folder / "samples.csv").read_text().splitlines()[0]
    assert header == "id,label,half,t5,t20,t900"
    again = AuditResult.load(folder)
    assert again.chosen_t == result.chosen_t and again.metrics.to_dict() == result.metrics.to_dict()
    np.testing.assert_array_equal(again.statistics, result.statistics)
    assert "AUC" in result.summary() and len(result.to_frame()) == 48


def test_audit_is_deterministic_and_checks_shapes():
    members, nonmembers = _separable_sets()
    model = EmpiricalDenoiser(members)
    a = run_audit(model, members, nonmembers, timesteps=[10, 50], seed=4, n_bootstrap=50)
    b = run_audit(model, members, nonmembers, timesteps=[10, 50], seed=4, n_bootstrap=50)
    assert a.to_dict() | {"wall_time_s": 0} == b.to_dict() | {"wall_time_s": 0}
    with pytest.raises(DataError, match="takes"):
        run_audit(model, torch.zeros(4, 3, 4, 4), torch.zeros(4, 3, 4, 4), timesteps=[10])
    with pytest.raises(SimaError, match="select"):
        run_audit(model, members, nonmembers, timesteps=[10], select="best")


def test_streamed_sets_give_the_same_audit_as_tensors(monkeypatch):
    import core.audit as audit_module

    members, nonmembers = _separable_sets(n=10)
    model = EmpiricalDenoiser(members)
    whole = run_audit(model, members, nonmembers, timesteps=[5, 50], n_bootstrap=20)
    monkeypatch.setattr(audit_module, "CHUNK_IMAGES", 3)
    chunked = run_audit(model, members, nonmembers, timesteps=[5, 50], n_bootstrap=20)

    def stream(images, prefix):
        for i in range(0, len(images), 4):
            yield images[i:i + 4], [f"{prefix}-{j}" for j in range(i, min(i + 4, len(images)))]

    seen = []
    streamed = run_audit(model, stream(members, "member"), stream(nonmembers, "nonmember"), timesteps=[5, 50],
                         n_bootstrap=20, progress=lambda done, total: seen.append((done, total)))
    for other in (chunked, streamed):
        np.testing.assert_allclose(other.statistics, whole.statistics, rtol=1e-6)
        assert other.ids == whole.ids and other.chosen_t == whole.chosen_t
    assert seen[-1] == (40, 40) and all(d <= t for d, t in seen)
