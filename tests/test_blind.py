"""The blind baseline: a model-free classifier on the audit's own split, in every audit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.audit import AuditResult, run_audit, split_halves
from core.blind import BlindBaseline, blind_baseline, features
from core.cli import main


def _uint8(images: torch.Tensor) -> np.ndarray:
    return ((images[:, 0].numpy() + 1) / 2 * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def digits():
    from core import load_model
    from core.datasets import demo_sets

    model = load_model("digits-empirical")
    return model, demo_sets(model)


def test_features_are_per_image_and_state_what_they_are():
    x = torch.rand(5, 3, 12, 12) * 2 - 1
    f = features(x)
    assert f.shape == (5, 3 * (64 + 16 + 2))
    np.testing.assert_array_equal(features(x[2:3]), f[2:3])  # a chunk's rows do not depend on the rest
    hist = f[:, 3 * 64:3 * 80].reshape(5, 3, 16)
    np.testing.assert_allclose(hist.sum(axis=2), 1.0)
    assert "logistic regression" in blind_baseline(f, [1, 1, 0, 0, 1], [True, False, True, False, False]).features


def test_a_split_that_differs_only_in_jpeg_compression_is_flagged_by_sima_audit(digits, tmp_path, capsys):
    # The same digits and model; only the non-members went through JPEG (quality 50).
    model, (members, _, heldout, _) = digits
    for folder, images, fmt in (("members", members[:60], "PNG"), ("nonmembers", heldout[:60], "JPEG")):
        (tmp_path / folder).mkdir()
        for i, pixels in enumerate(_uint8(images)):
            Image.fromarray(pixels).save(tmp_path / folder / f"{i:03d}.{fmt.lower()}", format=fmt, quality=50)
    out = tmp_path / "out"
    rc = main(["audit", "--model", "digits-empirical", "--members", str(tmp_path / "members"), "--nonmembers",
               str(tmp_path / "nonmembers"), "--timesteps", "10", "--bootstrap", "200", "--quiet", "--no-cache",
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("distinguishable without the model") == 1
    assert "overstates membership leakage by an unknown amount" in printed
    stored = json.loads((out / "result.json").read_text())["blind_baseline"]
    assert set(stored) == {"auc", "ci_low", "ci_high", "features"} and stored["ci_low"] > 0.5
    assert AuditResult.load(out).blind_baseline.separable


@pytest.mark.parametrize("demo", ["digits-ddpm-memorising", "digits-ddpm-generalising"])
def test_the_demo_splits_are_not_separable_without_the_model(demo):
    from core import load_model
    from core.datasets import demo_sets

    members, _, heldout, _ = demo_sets(load_model(demo))
    f = np.concatenate([features(members), features(heldout)])
    labels = np.r_[np.ones(len(members)), np.zeros(len(heldout))]
    baseline = blind_baseline(f, labels, split_halves(len(members), len(heldout), 0), n_bootstrap=1000, seed=0)
    assert baseline.ci_low < 0.5 < baseline.ci_high and not baseline.separable


def test_sima_audit_on_a_demo_split_reports_a_ci_covering_one_half(capsys):
    rc = main(["audit", "--model", "digits-empirical", "--members", "demo", "--nonmembers", "demo",
               "--timesteps", "10", "--bootstrap", "200", "--quiet", "--no-cache"])
    printed = capsys.readouterr().out
    assert rc == 0 and "its CI covers 0.5" in printed and "Warning" not in printed


def test_the_audit_baseline_is_deterministic_streamed_or_not_and_loads_from_old_files(digits, tmp_path, monkeypatch):
    import core.audit as audit_module

    model, (members, mids, heldout, hids) = digits
    members, heldout = members[:40], heldout[:40]
    whole = run_audit(model, members, heldout, timesteps=[10], n_bootstrap=100, seed=3)
    monkeypatch.setattr(audit_module, "CHUNK_IMAGES", 7)
    chunked = run_audit(model, members, heldout, timesteps=[10], n_bootstrap=100, seed=3)
    assert chunked.blind_baseline == whole.blind_baseline
    other_seed = run_audit(model, members, heldout, timesteps=[10], n_bootstrap=100, seed=4)
    assert other_seed.blind_baseline != whole.blind_baseline
    folder = whole.save(tmp_path / "new")
    assert AuditResult.load(folder).blind_baseline == whole.blind_baseline
    info = json.loads((folder / "result.json").read_text())
    del info["blind_baseline"], info["uses_timestep"]  # as written before audits had them
    (folder / "result.json").write_text(json.dumps(info))
    old = AuditResult.load(folder)
    assert old.blind_baseline is None and old.uses_timestep and "Blind baseline" not in old.summary()
    assert BlindBaseline.from_dict(None) is None
