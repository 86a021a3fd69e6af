"""The latent bottleneck study's conclusions: worded from the numbers, whichever way they go."""

import json

import pytest

from core import bottleneck
from core.errors import SimaError


def study(aucs, pixel=(0.99, 0.98, 1.0), width=0.02, recall=None):
    recall = recall or [0.7] * len(aucs)

    def row(auc, r):
        return {"auc": auc, "ci_low": auc - width, "ci_high": auc + width, "recon_mse": 0.01,
                "quality": {"precision": 0.8, "recall": r}}

    rows = [{"beta": 10.0 ** (-6 + i), **row(a, r)} for i, (a, r) in enumerate(zip(aucs, recall))]
    pixel = {"auc": pixel[0], "ci_low": pixel[1], "ci_high": pixel[2], "quality": {"precision": 0.8, "recall": 0.7}}
    return {"rows": rows, "pixel": pixel, "samples": 10}


def test_leakage_falling_with_beta_is_reported_as_a_defence():
    s = study([0.95, 0.9, 0.8, 0.7, 0.6])
    d = bottleneck.direction(s)
    assert d.kendall_tau == -1 and d.distinguishable and d.change == pytest.approx(-0.35)
    assert d.below_pixel == tuple(r["beta"] for r in s["rows"])
    text = bottleneck.recommendation(s)
    assert "the least leaky is beta = 0.01: AUC 0.600 [0.580, 0.620], below the pixel model's 0.990" in text
    assert "the largest beta whose samples are still good enough" in text


def test_leakage_rising_with_beta_says_a_tighter_bottleneck_is_not_safer():
    s = study([0.90, 0.92, 0.94, 0.99, 1.0], pixel=(0.97, 0.96, 0.98))
    d = bottleneck.direction(s)
    assert d.kendall_tau == 1 and d.distinguishable and d.below_pixel == (1e-6, 1e-5)
    assert "the least leaky is beta = 1e-06: AUC 0.900" in bottleneck.recommendation(s)


def test_a_defence_that_only_works_by_destroying_the_samples_is_called_that():
    s = study([0.97, 0.96, 0.97, 0.8, 0.5], pixel=(0.97, 0.96, 0.98), recall=[0.7, 0.7, 0.7, 0.2, 0.0])
    text = bottleneck.recommendation(s)
    assert "kept at least 90% of the pixel model's precision and recall (beta = 1e-06, 1e-05, 0.0001)" in text
    assert "came only with beta = 0.001, 0.01, where the samples lost their quality (recall 0.20, 0.00)" in text
    means = study([0.96, 0.99, 1.0, 1.0, 1.0])["rows"]
    with_means = bottleneck.recommendation({**s, "rows_posterior_mean": means})
    assert "Trained on posterior means instead of samples, the same autoencoders gave AUC 0.960 at beta = 1e-06" in with_means
    assert "should not count on beta" in with_means


def test_no_latent_model_below_the_pixel_one_means_no_defence():
    s = study([0.99, 0.99, 0.985, 0.99, 0.99])
    d = bottleneck.direction(s)
    assert not d.distinguishable and d.below_pixel == ()
    assert "not a defence to rely on" in bottleneck.recommendation(s)
    assert "the least leaky is beta = 0.0001: AUC 0.985" in bottleneck.recommendation(s)
    assert "not distinguishable" in d.sentence()


def test_a_missing_or_empty_study_is_one_clear_error(tmp_path):
    with pytest.raises(SimaError, match="run `python benchmarks/latent.py`"):
        bottleneck.load_study(tmp_path / "latent.json")
    (tmp_path / "latent.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SimaError, match="holds no study rows"):
        bottleneck.load_study(tmp_path / "latent.json")


def test_the_learning_curve_sentence_names_where_leakage_starts():
    curve = [{"step": 250, "auc": 0.52, "ci_low": 0.45, "ci_high": 0.58},
             {"step": 500, "auc": 0.7, "ci_low": 0.62, "ci_high": 0.77},
             {"step": 750, "auc": 0.9, "ci_low": 0.85, "ci_high": 0.94}]
    text = bottleneck.curve_sentence({"curve": curve})
    assert "after 500 steps" in text and "from 0.520 at 250 steps to 0.900 at 750" in text
    assert bottleneck.curve_sentence({"curve": curve[:1]}) == ""
