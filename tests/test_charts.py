"""The explorer's figure and table builders, on real (tiny) audit results."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from core import metrics
from core.audit import run_audit
from core.models.empirical import EmpiricalDenoiser
from explorer import charts, report

TIMESTEPS = [0, 10, 50, 400]


@pytest.fixture(scope="module")
def result():
    """A perfect memoriser (the empirical denoiser over its members) audited on 12 + 12 images."""
    g = torch.Generator().manual_seed(0)
    members = torch.rand(12, 1, 4, 4, generator=g) * 2 - 1
    nonmembers = torch.rand(12, 1, 4, 4, generator=g) * 2 - 1
    model = EmpiricalDenoiser(members, name="tiny-empirical")
    return run_audit(model, members, nonmembers, attack="sima", timesteps=TIMESTEPS, n_bootstrap=50, seed=0)


def _vlines(fig):
    return [s for s in fig.layout.shapes if s.x0 == s.x1]


# ----------------------------------------------------------------------------- histograms


def test_histogram_counts_every_sample_and_uses_a_log_axis_for_positive_values():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.lognormal(0, 1, 30), rng.lognormal(3, 1, 50)
    fig = charts.histogram_figure(members, nonmembers, statistic="norm", t=10)
    assert [trace.type for trace in fig.data] == ["bar", "bar"]
    assert [sum(trace.y) for trace in fig.data] == [30, 50]
    assert fig.layout.xaxis.type == "log"
    # log-spaced bins: every bin spans the same ratio
    widths = np.asarray(fig.data[0].width)
    centres = np.asarray(fig.data[0].x)
    lower = centres**2 / (centres + widths / 2)  # from c = sqrt(lo * hi) and w = hi - lo
    ratios = (lower + widths) / lower
    assert np.allclose(ratios, ratios[0])


def test_histogram_falls_back_to_linear_for_signed_values_and_marks_queries():
    fig = charts.histogram_figure(np.array([-1.0, 0.5]), np.array([2.0, 3.0]), statistic="s", marks={"img.png": 1.25, "b": 2.5})
    assert fig.layout.xaxis.type == "linear"
    assert sorted(s.x0 for s in _vlines(fig)) == [1.25, 2.5]
    assert [a.text for a in fig.layout.annotations] == ["img.png", "b"]


def test_histogram_fixed_range_keeps_the_axis_when_the_data_move():
    low = charts.histogram_figure(np.array([1.0, 2.0]), np.array([3.0]), statistic="s", x_range=(0.1, 1000.0))
    high = charts.histogram_figure(np.array([50.0]), np.array([500.0]), statistic="s", x_range=(0.1, 1000.0))
    assert list(low.layout.xaxis.range) == pytest.approx([-1, 3])
    assert list(high.layout.xaxis.range) == pytest.approx([-1, 3])


def test_statistic_range_ignores_non_finite_values():
    assert charts.statistic_range(np.array([[3.0, np.inf], [0.5, 7.0]])) == (0.5, 7.0)


# ----------------------------------------------------------------------------- ROC


def test_roc_figure_draws_the_report_half_roc_and_chance(result):
    fig = charts.roc_figure({"sima": result})
    assert [t.name for t in fig.data] == [f"sima (t = {result.chosen_t})", "chance"]
    mask = result.report_mask()
    fpr, tpr, _ = metrics.roc(scores=result.membership_scores()[mask], labels=result.labels[mask])
    assert np.allclose(fig.data[0].x, fpr) and np.allclose(fig.data[0].y, tpr)
    assert fig.layout.xaxis.type == "linear" and fig.layout.yaxis.type == "linear"


def test_log_roc_has_log_axes_drops_zeros_and_starts_at_one_over_n(result):
    fig = charts.roc_figure({"a": result, "b": result}, log=True)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    for trace in fig.data[:2]:
        assert np.all(np.asarray(trace.x) > 0) and np.all(np.asarray(trace.y) > 0)
    n0 = int(np.sum(result.labels[result.report_mask()] == 0))
    assert fig.layout.xaxis.range[0] == pytest.approx(math.log10(1 / n0) - 0.05)
    assert fig.data[-1].name == "chance" and fig.data[-1].x[0] == pytest.approx(1 / n0)


# ----------------------------------------------------------------------------- curves over t


def test_metric_curve_marks_the_current_t_and_the_chosen_t(result):
    fig = charts.metric_curve_figure(result.per_t, current_t=50, chosen_t=result.chosen_t)
    names = [t.name for t in fig.data]
    assert names == ["AUC", "TPR@1%FPR", "t chosen on the selection half"]
    assert list(fig.data[0].x) == TIMESTEPS
    assert list(fig.data[0].y) == pytest.approx([row["auc"] for row in result.per_t])
    assert [s.x0 for s in _vlines(fig)] == [50]
    assert fig.data[2].x == (result.chosen_t,)


def test_metric_curve_leaves_gaps_for_unmeasurable_values(result):
    # 6 report-half non-members: TPR@1%FPR is not measurable and must not be drawn as 0
    assert all(row["tpr_at_1pct_fpr"] is None for row in result.per_t)
    fig = charts.metric_curve_figure(result.per_t, current_t=10)
    assert all(math.isnan(y) for y in fig.data[1].y)


def test_moving_t_moves_only_the_marker(result):
    a = charts.metric_curve_figure(result.per_t, current_t=0)
    b = charts.metric_curve_figure(result.per_t, current_t=400)
    assert [s.x0 for s in _vlines(a)] == [0] and [s.x0 for s in _vlines(b)] == [400]
    assert json.loads(a.to_json())["data"] == json.loads(b.to_json())["data"]


def test_auc_curves_one_line_and_one_star_per_result(result):
    fig = charts.auc_curves_figure({"x": result, "y": result}, current_t=10)
    assert [t.name for t in fig.data] == ["x", "x chosen t", "y", "y chosen t"]
    assert fig.data[1].x == (result.chosen_t,)
    assert [s.x0 for s in _vlines(fig)] == [10]


def test_norm_curve_bands_are_the_quartiles(result):
    members = result.statistics[result.labels == 1]
    nonmembers = result.statistics[result.labels == 0]
    fig = charts.norm_curve_figure(TIMESTEPS, {"q.png": nonmembers[0]}, members, nonmembers, statistic="s", current_t=10)
    names = [t.name for t in fig.data]
    assert names == ["members: middle half", "members: median", "non-members: middle half", "non-members: median", "q.png"]
    assert np.allclose(fig.data[1].y, np.median(members, axis=0))
    band = np.asarray(fig.data[0].y)
    assert np.allclose(band[: len(TIMESTEPS)], np.percentile(members, 75, axis=0))
    assert np.allclose(band[len(TIMESTEPS):], np.percentile(members, 25, axis=0)[::-1])
    assert fig.layout.yaxis.type == "log"
    assert [s.x0 for s in _vlines(fig)] == [10]


def test_norm_curve_without_reference_shows_the_image_only():
    fig = charts.norm_curve_figure([0, 10], {"q": np.array([1.0, -2.0])}, None, None, statistic="s")
    assert [t.name for t in fig.data] == ["q"] and fig.layout.yaxis.type == "linear"


def test_effective_figure_log_axis_reference_line_and_marker():
    fig = charts.effective_figure([0, 10, 100], {"img": np.array([1.0, 3.0, 200.0]), "member 1": np.ones(3)},
                                  current_t=10, reference_size=256)
    assert fig.layout.yaxis.type == "log"
    assert fig.data[1].line.color == charts.MEMBER
    horizontal = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert [s.y0 for s in horizontal] == [256]
    assert [s.x0 for s in _vlines(fig)] == [10]


# ----------------------------------------------------------------------------- local means


def test_weights_figure_puts_the_heaviest_on_top():
    fig = charts.weights_figure([0.7, 0.2, 0.1], ["a", "b", "c"])
    assert fig.data[0].orientation == "h"
    assert list(fig.data[0].y) == ["c", "b", "a"] and list(fig.data[0].x) == [0.1, 0.2, 0.7]


def test_difference_map_is_the_channel_mean_of_absolute_differences():
    a = np.zeros((3, 2, 2))
    b = np.stack([np.full((2, 2), 0.3), np.full((2, 2), -0.6), np.zeros((2, 2))])
    assert np.allclose(charts.difference_map(a, b), 0.3)


def test_image_grid_draws_grey_colour_and_difference_panels_pixel_for_pixel():
    grey = np.linspace(-1, 1, 16).reshape(1, 4, 4)
    colour = np.zeros((3, 4, 4))
    fig = charts.image_grid_figure([[("x", grey), ("d", charts.difference_map(grey, -grey))], [("c", colour)]],
                                   row_titles=["one", "two"])
    assert [t.type for t in fig.data] == ["heatmap", "heatmap", "image"]
    assert np.allclose(fig.data[0].z, grey[0]) and (fig.data[0].zmin, fig.data[0].zmax) == (-1, 1)
    assert fig.data[1].zmax == charts.DIFF_MAX and fig.data[1].colorscale[0][1] != fig.data[0].colorscale[0][1]
    assert np.asarray(fig.data[2].z).shape == (4, 4, 3) and np.asarray(fig.data[2].z).max() == 128
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 at the top, as in the image
    assert fig.layout.yaxis3.scaleanchor == "x3"  # square pixels in every panel
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["x", "d", "c"] and "one" in titles and "two" in titles


# ----------------------------------------------------------------------------- cost and tables


def test_cost_figure_places_each_attack_at_its_queries_with_its_ci(result):
    fig = charts.cost_figure({"sima": result})
    auc = result.metrics.auc
    assert fig.layout.xaxis.type == "log"
    assert fig.data[0].x == (result.queries_per_sample,) and fig.data[0].y == (auc.value,)
    assert fig.data[0].error_y.array[0] == pytest.approx(auc.ci_high - auc.value)
    assert fig.data[0].error_y.arrayminus[0] == pytest.approx(auc.value - auc.ci_low)


def test_metrics_tables_show_values_cis_and_unmeasurable_tprs(result):
    table = charts.metrics_table({"sima": result})
    row = table.iloc[0]
    assert row["attack"] == "sima" and row["chosen t"] == result.chosen_t
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", row["AUC"])
    assert row["TPR@1%FPR"] == "not measurable"
    single = charts.single_metrics_table(result)
    assert list(single["metric"]) == ["AUC", "ASR", "TPR@1%FPR", "TPR@0.1%FPR"]
    assert single["value"][0] == pytest.approx(round(result.metrics.auc.value, 4))
    assert single["note"][2].startswith("not measurable")


def test_samples_table_ranks_by_membership_score(result):
    table = charts.samples_table(result, 10)
    scores = result.membership_scores(10)
    assert list(table["membership score"]) == pytest.approx(list(scores))
    best = int(np.argmax(scores))
    assert table["rank (1 = most member-like)"][best] == 1
    assert sorted(table["rank (1 = most member-like)"]) == list(range(1, len(scores) + 1))
    assert set(table["truth"]) == {"member", "non-member"}


def test_estimate_text():
    assert charts.estimate_text(metrics.Estimate(0.91234, 0.8, 0.95)) == "0.912 [0.800, 0.950]"
    assert charts.estimate_text(metrics.Estimate(0.5)) == "0.500"
    assert charts.estimate_text(metrics.Estimate(None, measurable=False, reason="r")) == "not measurable"


# ----------------------------------------------------------------------------- HTML report


def test_html_report_is_self_contained(result):
    figures = {"ROC": charts.roc_figure({"sima": result}), "ROC, log-log": charts.roc_figure({"sima": result}, log=True)}
    page = report.html_report(result, figures, model_description="a tiny model", data_source="test sets")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script src=" not in page  # nothing fetched from a CDN: it opens offline
    assert page.count("Plotly.newPlot") == 2
    assert len(page) > 1_000_000  # plotly.js itself is inside
    assert f"t = {result.chosen_t}" in page and f"{result.metrics.auc.value:.3f}" in page
    assert "<h2>Blind baseline</h2>" in page and result.blind_baseline.describe() in page
