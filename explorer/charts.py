"""Plotly figures and display tables built from core results: pure functions, no Streamlit.

Every function takes plain arrays or core result objects and returns a ``go.Figure`` (or a
pandas table), so the same figure goes on screen, into the HTML report and under test.
Colours are fixed across the app: members orange, non-members blue, the image being checked
black, the current timestep a dashed grey line.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core import metrics

MEMBER = "#c2410c"
NONMEMBER = "#2563eb"
QUERY = "#111827"
CURRENT = "#6b7280"
SERIES = ("#c2410c", "#2563eb", "#059669", "#7c3aed", "#db2777", "#ca8a04", "#0891b2", "#4b5563")
FONT = dict(family="sans-serif", size=14)
#: |difference| maps saturate here (a quarter of the [-1, 1] pixel range), so that a member's
#: near-zero map and a non-member's bright one are drawn on one scale and can be compared.
DIFF_MAX = 0.5
#: Inferno (black = no difference), written as rgb() stops: Streamlit's chart element recolours
#: some of the hex stops of plotly's named scales (seen with theme=None in Streamlit 1.67).
DIFF_SCALE = [
    [i / (len(pc.sequential.Inferno) - 1), "rgb({}, {}, {})".format(*pc.hex_to_rgb(colour))]
    for i, colour in enumerate(pc.sequential.Inferno)
]


def _layout(fig: go.Figure, title: str | None = None, height: int = 360, **extra) -> go.Figure:
    # The legend goes under the plot: above it, it would collide with the title and with the
    # "t = ..." label of the current-t line.
    extra.setdefault("margin", dict(l=60, r=20, t=60 if title else 40, b=40))
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left") if title else None,
        height=height,
        font=FONT,
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
        template="plotly_white",
        **extra,
    )
    return fig


def _mark_t(fig: go.Figure, t: int | None, label: str = "current t", **kwargs) -> None:
    """A dashed vertical line at timestep t, named in layout.shapes so tests can find it."""
    if t is None:
        return
    fig.add_vline(
        x=t, line=dict(color=CURRENT, dash="dash", width=2), name=label,
        annotation_text=f"t = {t}", annotation_position="top", **kwargs,
    )


# ----------------------------------------------------------------------------- distributions


def log_scale_ok(*arrays: np.ndarray) -> bool:
    """True when every value is finite and positive, so a log axis shows them all."""
    values = np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in arrays if np.size(a)] or [np.zeros(0)])
    return bool(values.size) and bool(np.all(np.isfinite(values))) and bool(np.all(values > 0))


def _log_axis(*arrays) -> dict:
    """A log axis with one tick per power of ten when that gives a handful of ticks; plotly's own
    choice otherwise (its 2-5-10 minor labels crowd a short axis)."""
    values = np.concatenate([np.ravel(np.asarray(a, float)) for a in arrays if np.size(a)])
    values = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(values.max()) - np.log10(values.min()) if values.size else 0
    return dict(type="log", dtick=1) if decades <= 8 else dict(type="log")


def _edges(values: np.ndarray, log: bool, bins: int, x_range: tuple[float, float] | None) -> np.ndarray:
    lo, hi = x_range if x_range is not None else (float(np.min(values)), float(np.max(values)))
    if not hi > lo:
        lo, hi = (lo / 2, lo * 2) if log else (lo - 0.5, lo + 0.5)
    if not log:
        return np.linspace(lo, hi, bins + 1)
    edges = np.logspace(np.log10(lo), np.log10(hi), bins + 1)
    edges[0], edges[-1] = lo, hi  # exact ends: 10**log10(v) can miss v and drop it from the counts
    return edges


def histogram_figure(
    members: np.ndarray,
    nonmembers: np.ndarray,
    *,
    statistic: str,
    t: int | None = None,
    marks: Mapping[str, float] | None = None,
    x_range: tuple[float, float] | None = None,
    bins: int = 40,
    member_label: str = "members",
    nonmember_label: str = "non-members",
    height: int = 400,
) -> go.Figure:
    """Overlaid histograms of a raw statistic for members and non-members.

    Bins are equal on a log scale when every value is positive (noise norms span orders of
    magnitude), else linear. ``marks`` draws a vertical line per named value (the images
    being checked). ``x_range`` fixes the axis, so that moving t moves the bars, not the axis.
    """
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    mark_values = np.asarray(list((marks or {}).values()), float)
    log = log_scale_ok(members, nonmembers, mark_values, np.asarray(x_range or [1.0], float))
    everything = np.concatenate([members, nonmembers, mark_values])
    edges = _edges(everything, log, bins, x_range)
    fig = go.Figure()
    for values, name, colour in ((members, member_label, MEMBER), (nonmembers, nonmember_label, NONMEMBER)):
        counts, _ = np.histogram(values, bins=edges)
        centres = np.sqrt(edges[:-1] * edges[1:]) if log else (edges[:-1] + edges[1:]) / 2
        fig.add_trace(go.Bar(
            x=centres, y=counts, width=np.diff(edges), name=f"{name} ({values.size})",
            marker=dict(color=colour, line=dict(width=0)), opacity=0.6,
            hovertemplate=f"{name}: %{{y}} images<extra></extra>",
        ))
    for name, value in (marks or {}).items():
        fig.add_vline(x=value, line=dict(color=QUERY, width=3), name=name)
        # Annotations on a log axis take log10 coordinates, unlike shapes.
        fig.add_annotation(x=np.log10(value) if log else value, y=1, yref="paper", text=name, showarrow=False,
                           yanchor="bottom", font=dict(color=QUERY))
    axis = dict(title=statistic + (" (log scale)" if log else ""), **(_log_axis(edges) if log else dict(type="linear")))
    if x_range is not None:
        lo, hi = edges[0], edges[-1]
        axis["range"] = [np.log10(lo), np.log10(hi)] if log else [lo, hi]
    title = None if t is None else f"Distributions at t = {t}"
    return _layout(fig, title, height, barmode="overlay", bargap=0, xaxis=axis, yaxis=dict(title="images"))


def statistic_range(statistics: np.ndarray) -> tuple[float, float]:
    """Fixed axis limits over a whole sweep (all samples, all t)."""
    values = np.asarray(statistics, float)
    values = values[np.isfinite(values)]
    return float(values.min()), float(values.max())


# ----------------------------------------------------------------------------- ROC


def report_roc(result) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of an audit on its report half at its chosen t."""
    mask = result.report_mask()
    fpr, tpr, _ = metrics.roc(scores=result.membership_scores()[mask], labels=result.labels[mask])
    return fpr, tpr


def roc_figure(results: Mapping[str, object], *, log: bool = False, height: int = 420) -> go.Figure:
    """ROC curves of audits (report half, chosen t), on linear or log-log axes.

    On log-log axes the points with FPR or TPR of zero cannot be drawn and are left out; the
    x axis starts at 1 / (number of non-members), the smallest FPR the data can show.
    """
    fig = go.Figure()
    smallest = 1.0
    for i, (name, result) in enumerate(results.items()):
        fpr, tpr = report_roc(result)
        n0 = int(np.sum(result.labels[result.report_mask()] == 0))
        smallest = min(smallest, 1.0 / max(n0, 1))
        if log:
            keep = (fpr > 0) & (tpr > 0)
            fpr, tpr = fpr[keep], tpr[keep]
        fig.add_trace(go.Scatter(
            x=fpr, y=tpr, mode="lines", name=f"{name} (t = {result.chosen_t})",
            line=dict(color=SERIES[i % len(SERIES)], width=3, shape="hv"),
            hovertemplate="FPR %{x:.3g}, TPR %{y:.3g}<extra>" + name + "</extra>",
        ))
    lo = smallest if log else 0.0
    fig.add_trace(go.Scatter(
        x=[lo, 1], y=[lo, 1], mode="lines", name="chance", line=dict(color=CURRENT, dash="dot", width=1),
        hoverinfo="skip",
    ))
    axis = dict(type="log", range=[np.log10(smallest) - 0.05, 0.02], dtick=1) if log else dict(type="linear", range=[-0.01, 1.01])
    return _layout(
        fig, "ROC, log-log axes (the low-FPR region)" if log else "ROC", height,
        xaxis=dict(title="false-positive rate", **axis), yaxis=dict(title="true-positive rate", **axis),
    )


# ----------------------------------------------------------------------------- curves over t


_METRIC_NAMES = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR@1%FPR", "asr": "ASR", "selection_auc": "AUC (selection half)"}


def metric_curve_figure(
    per_t: Sequence[Mapping],
    *,
    current_t: int | None = None,
    chosen_t: int | None = None,
    keys: Sequence[str] = ("auc", "tpr_at_1pct_fpr"),
    height: int = 400,
) -> go.Figure:
    """Metrics of an audit's report half against t, the current t marked by a dashed line.

    Values that are not measurable (None) leave gaps rather than being drawn as zero.
    """
    ts = [row["t"] for row in per_t]
    fig = go.Figure()
    for i, key in enumerate(keys):
        ys = [row.get(key) for row in per_t]
        fig.add_trace(go.Scatter(
            x=ts, y=[np.nan if y is None else y for y in ys], mode="lines+markers",
            name=_METRIC_NAMES.get(key, key), line=dict(color=SERIES[i % len(SERIES)], width=3),
            hovertemplate="t = %{x}: %{y:.3f}<extra></extra>",
        ))
    if chosen_t is not None and chosen_t in ts:
        row = per_t[ts.index(chosen_t)]
        fig.add_trace(go.Scatter(
            x=[chosen_t], y=[row.get(keys[0])], mode="markers", name="t chosen on the selection half",
            marker=dict(symbol="star", size=16, color=QUERY), hoverinfo="skip",
        ))
    _mark_t(fig, current_t)
    return _layout(fig, None, height, xaxis=dict(title="timestep t"), yaxis=dict(title="metric", range=[0, 1.05]))


def auc_curves_figure(results: Mapping[str, object], *, current_t: int | None = None, height: int = 420) -> go.Figure:
    """AUC against t for several audits (attacks or models), each chosen t starred."""
    fig = go.Figure()
    for i, (name, result) in enumerate(results.items()):
        colour = SERIES[i % len(SERIES)]
        ts = [row["t"] for row in result.per_t]
        aucs = [np.nan if row["auc"] is None else row["auc"] for row in result.per_t]
        fig.add_trace(go.Scatter(
            x=ts, y=aucs, mode="lines+markers", name=name, line=dict(color=colour, width=3),
            hovertemplate="t = %{x}: AUC %{y:.3f}<extra>" + name + "</extra>",
        ))
        fig.add_trace(go.Scatter(
            x=[result.chosen_t], y=[aucs[ts.index(result.chosen_t)]], mode="markers", showlegend=False,
            marker=dict(symbol="star", size=15, color=colour, line=dict(color=QUERY, width=1)),
            name=f"{name} chosen t", hoverinfo="skip",
        ))
    fig.add_hline(y=0.5, line=dict(color=CURRENT, dash="dot", width=1))
    _mark_t(fig, current_t)
    return _layout(fig, None, height, xaxis=dict(title="timestep t"), yaxis=dict(title="AUC (report half)", range=[0.4, 1.02]))


def _auc_bars(points: Sequence[Mapping]) -> dict:
    """Error bars from each point's AUC to its 95% CI ends (keys auc, ci_low, ci_high)."""
    return dict(type="data", symmetric=False, array=[p["ci_high"] - p["auc"] for p in points],
                arrayminus=[p["auc"] - p["ci_low"] for p in points])


def bottleneck_figure(study: Mapping, height: int = 560) -> go.Figure:
    """The latent bottleneck study: leakage (AUC with 95% CIs) and what it costs (sample precision
    and recall, reconstruction error, of the models trained on posterior samples) against the
    autoencoder's KL weight, the pixel model as a band."""
    rows = sorted(study["rows"], key=lambda r: r["beta"])
    betas = [r["beta"] for r in rows]
    pixel = study["pixel"]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("leakage: SimA AUC on the report half", "cost: sample quality and reconstruction"))
    fig.add_hrect(y0=pixel["ci_low"], y1=pixel["ci_high"], fillcolor=MEMBER, opacity=0.15, line_width=0, row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[betas[0], betas[-1]], y=[pixel["auc"]] * 2, mode="lines", name="pixel model (band: 95% CI)",
        line=dict(color=MEMBER, dash="dash", width=2), hoverinfo="skip"), row=1, col=1)
    series = (("rows", "latent, trained on posterior samples", "solid"),
              ("rows_posterior_mean", "latent, trained on posterior means", "dot"))
    for key, name, dash in series:
        points = sorted(study.get(key) or [], key=lambda r: r["beta"])
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=[r["beta"] for r in points], y=[r["auc"] for r in points], mode="lines+markers", name=name,
            error_y=_auc_bars(points),
            line=dict(color=NONMEMBER, width=3, dash=dash), hovertemplate="beta %{x:g}: AUC %{y:.3f}<extra></extra>"),
            row=1, col=1)
    for i, (key, label) in enumerate((("precision", "sample precision"), ("recall", "sample recall"))):
        fig.add_trace(go.Scatter(
            x=betas, y=[r["quality"][key] for r in rows], mode="lines+markers", name=label,
            line=dict(color=SERIES[2 + i], width=3), hovertemplate=f"beta %{{x:g}}: {label} %{{y:.3f}}<extra></extra>"),
            row=2, col=1)
    fig.add_trace(go.Scatter(
        x=betas, y=[r["recon_mse"] for r in rows], mode="lines+markers", name="reconstruction MSE (held-out)",
        line=dict(color=SERIES[4], width=2, dash="dot"), hovertemplate="beta %{x:g}: MSE %{y:.4f}<extra></extra>"),
        row=2, col=1)
    fig.update_xaxes(type="log", dtick=1, title_text="autoencoder KL weight beta", row=2, col=1)
    fig.update_xaxes(type="log", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="AUC", range=[0.4, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="value", range=[0, 1.02], row=2, col=1)
    return _layout(fig, None, height)


def learning_curve_figure(curve: Sequence[Mapping], height: int = 360) -> go.Figure:
    """Leakage against training length: SimA's AUC (95% CI) of each saved checkpoint."""
    steps = [p["step"] for p in curve]
    fig = go.Figure(go.Scatter(
        x=steps, y=[p["auc"] for p in curve], mode="lines+markers", name="SimA AUC (report half)",
        error_y=_auc_bars(curve),
        line=dict(color=MEMBER, width=3), hovertemplate="step %{x}: AUC %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.5, line=dict(color=CURRENT, dash="dot", width=1))
    return _layout(fig, None, height, xaxis=dict(title="training steps (batch 32)"),
                   yaxis=dict(title="AUC", range=[0.4, 1.02]))


def norm_curve_figure(
    timesteps: Sequence[int],
    queries: Mapping[str, np.ndarray],
    members: np.ndarray | None,
    nonmembers: np.ndarray | None,
    *,
    statistic: str,
    current_t: int | None = None,
    height: int = 400,
) -> go.Figure:
    """An image's statistic over t against the members' and non-members' medians and
    interquartile bands (rows are samples, columns timesteps)."""
    ts = list(timesteps)
    fig = go.Figure()
    for values, name, colour in ((members, "members", MEMBER), (nonmembers, "non-members", NONMEMBER)):
        if values is None or not len(values):
            continue
        q1, med, q3 = np.percentile(np.asarray(values, float), [25, 50, 75], axis=0)
        fig.add_trace(go.Scatter(
            x=ts + ts[::-1], y=list(q3) + list(q1[::-1]), fill="toself", fillcolor=colour, opacity=0.18,
            line=dict(width=0), name=f"{name}: middle half", hoverinfo="skip",
        ))
        fig.add_trace(go.Scatter(x=ts, y=med, mode="lines", name=f"{name}: median", line=dict(color=colour, width=2)))
    for i, (name, values) in enumerate(queries.items()):
        fig.add_trace(go.Scatter(
            x=ts, y=np.asarray(values, float), mode="lines+markers", name=name,
            line=dict(color=QUERY if i == 0 else SERIES[(i + 2) % len(SERIES)], width=3),
        ))
    arrays = [np.asarray(v, float) for v in queries.values()] + [a for a in (members, nonmembers) if a is not None]
    log = log_scale_ok(*arrays)
    _mark_t(fig, current_t)
    return _layout(
        fig, None, height, xaxis=dict(title="timestep t"),
        yaxis=dict(title=statistic + (" (log scale)" if log else ""), **(_log_axis(*arrays) if log else dict(type="linear"))),
    )


def effective_figure(
    timesteps: Sequence[int], curves: Mapping[str, np.ndarray], *, current_t: int | None = None,
    reference_size: int | None = None, height: int = 400,
) -> go.Figure:
    """Effective number of neighbours 1 / sum w_i^2 against t, on a log axis."""
    fig = go.Figure()
    colours = {"member": MEMBER, "held-out": NONMEMBER}
    for i, (name, values) in enumerate(curves.items()):
        colour = next((c for key, c in colours.items() if name.startswith(key)), QUERY if i == 0 else SERIES[i % len(SERIES)])
        fig.add_trace(go.Scatter(
            x=list(timesteps), y=np.asarray(values, float), mode="lines+markers", name=name,
            # dotted, so that a query equal to the member or held-out image below stays visible
            line=dict(color=colour, width=3, dash="dot" if colour == QUERY else "solid"),
            hovertemplate="t = %{x}: %{y:.3g} neighbours<extra></extra>",
        ))
    if reference_size:
        fig.add_hline(y=reference_size, line=dict(color=CURRENT, dash="dot", width=1))
        # Annotations on a log axis take log10 coordinates, unlike shapes.
        # Mid-axis, under the line: the curves sit far below it there (small t: 1, large t: near it).
        fig.add_annotation(x=0.5, xref="paper", y=np.log10(reference_size), text=f"all {reference_size} reference images",
                           showarrow=False, xanchor="center", yanchor="top")
    _mark_t(fig, current_t)
    return _layout(fig, None, height, xaxis=dict(title="timestep t"), yaxis=dict(title="effective neighbours", type="log", dtick=1))


# ----------------------------------------------------------------------------- local means


def weights_figure(weights: Sequence[float], labels: Sequence[str], colours: Sequence[str] | None = None,
                   height: int = 300) -> go.Figure:
    """Horizontal bars of the top neighbours' kernel weights, largest on top."""
    fig = go.Figure(go.Bar(
        x=list(weights)[::-1], y=list(labels)[::-1], orientation="h",
        marker=dict(color=list(colours)[::-1] if colours else MEMBER),
        text=[f"{w:.3f}" for w in list(weights)[::-1]], textposition="auto",
        hovertemplate="%{y}: weight %{x:.4f}<extra></extra>",
    ))
    return _layout(fig, None, height, xaxis=dict(title="kernel weight w_i", range=[0, 1]), yaxis=dict(type="category"))


def difference_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| averaged over channels: an (H, W) map for (C, H, W) images."""
    return np.abs(np.asarray(a, float) - np.asarray(b, float)).mean(axis=0)


def _image_trace(image: np.ndarray) -> go.BaseTraceType:
    image = np.asarray(image, float)
    if image.ndim == 2:  # a difference map
        return go.Heatmap(
            z=image, zmin=0, zmax=DIFF_MAX, colorscale=DIFF_SCALE, showscale=False,
            hovertemplate="|difference| %{z:.3f}<extra></extra>",
        )
    if image.shape[0] == 1:
        return go.Heatmap(
            z=image[0], zmin=-1, zmax=1, colorscale="gray", showscale=False,
            hovertemplate="value %{z:.2f}<extra></extra>",
        )
    pixels = np.clip(np.rint((image.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)
    return go.Image(z=pixels)


def image_grid_figure(rows: Sequence[Sequence[tuple[str, np.ndarray]]], *, row_titles: Sequence[str] | None = None,
                      panel_px: int = 170) -> go.Figure:
    """A grid of images in [-1, 1] (C, H, W) and |difference| maps (H, W), one trace per panel,
    drawn pixel for pixel (no smoothing) with the titles above them."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    titles = []
    for row in rows:
        titles += [title for title, _ in row] + [""] * (n_cols - len(row))
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.02,
        vertical_spacing=0.12 if n_rows > 1 else 0.05, row_titles=list(row_titles) if row_titles else None,
    )
    for r, row in enumerate(rows, start=1):
        for c, (_, image) in enumerate(row, start=1):
            fig.add_trace(_image_trace(image), row=r, col=c)
    hidden = dict(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_xaxes(**hidden)
    fig.update_yaxes(autorange="reversed", **hidden)
    for i in range(1, n_rows * n_cols + 1):  # square pixels in every panel
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    margin = dict(l=10, r=40 if row_titles else 10, t=40, b=10)
    return _layout(fig, None, panel_px * n_rows + 40, showlegend=False, margin=margin)


# ----------------------------------------------------------------------------- cost


def cost_figure(results: Mapping[str, object], height: int = 400) -> go.Figure:
    """AUC (with its CI) against model queries per image, log x: what each attack costs."""
    fig = go.Figure()
    for i, (name, result) in enumerate(results.items()):
        auc = result.metrics.auc
        low = auc.value - auc.ci_low if auc.ci_low is not None else 0
        high = auc.ci_high - auc.value if auc.ci_high is not None else 0
        fig.add_trace(go.Scatter(
            x=[result.queries_per_sample], y=[auc.value], mode="markers+text", name=name, text=[name],
            # alternate label sides: attacks with equal cost and AUC would print over each other
            textposition="top center" if i % 2 == 0 else "bottom center",
            marker=dict(size=14, color=SERIES[i % len(SERIES)]),
            error_y=dict(type="data", symmetric=False, array=[high], arrayminus=[low]),
        ))
    return _layout(fig, None, height, showlegend=False,
                   xaxis=dict(title="model queries per image (log scale)", type="log", dtick=1),
                   yaxis=dict(title="AUC at chosen t (report half)", range=[0.4, 1.05]))


# ----------------------------------------------------------------------------- tables


def estimate_text(estimate) -> str:
    """'0.912 [0.890, 0.931]', or 'not measurable' for a TPR the data cannot support."""
    if estimate.value is None or not estimate.measurable:
        return "not measurable"
    if estimate.ci_low is None:
        return f"{estimate.value:.3f}"
    return f"{estimate.value:.3f} [{estimate.ci_low:.3f}, {estimate.ci_high:.3f}]"


def metrics_table(results: Mapping[str, object], label: str = "attack") -> pd.DataFrame:
    """One row per audit: chosen t, AUC / ASR / TPR@FPR with 95% CIs, cost."""
    rows = []
    for name, r in results.items():
        m = r.metrics
        rows.append({
            label: name,
            # an attack that ignores t (PFAMI) has no chosen t to show
            "chosen t": r.chosen_t if r.uses_timestep else None,
            "AUC": estimate_text(m.auc),
            "ASR": estimate_text(m.asr),
            "TPR@1%FPR": estimate_text(m.tpr_at_1pct_fpr),
            "TPR@0.1%FPR": estimate_text(m.tpr_at_0_1pct_fpr),
            "queries / image at t": r.queries_per_sample,
            "wall time (s)": round(r.wall_time_s, 2),
        })
    return pd.DataFrame(rows)


def comparison_table(comparisons) -> pd.DataFrame:
    """One row per paired comparison (``core.metrics.Comparison``): the differences, their CIs and
    p-values, and the verdict, which names a winner only when the AUC difference's CI excludes 0."""
    def diff(d) -> str:
        return f"{d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]" if d.measurable else "not measurable"

    return pd.DataFrame([{
        "A vs B": f"{c.name_a} vs {c.name_b}",
        "AUC A − B (95% CI)": diff(c.auc),
        "p (AUC)": round(c.auc.p_value, 4),
        "TPR@1%FPR A − B (95% CI)": diff(c.tpr_at_1pct_fpr),
        "verdict (AUC)": c.order("auc"),
    } for c in comparisons])


def single_metrics_table(result) -> pd.DataFrame:
    """The four metrics of one audit as rows, with value, CI and the realised FPR of TPRs."""
    rows = []
    for key, name in (("auc", "AUC"), ("asr", "ASR"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("tpr_at_0_1pct_fpr", "TPR@0.1%FPR")):
        e = getattr(result.metrics, key)
        measurable = e.value is not None and e.measurable
        rows.append({
            "metric": name,
            "value": round(e.value, 4) if measurable else None,
            "95% CI": f"[{e.ci_low:.3f}, {e.ci_high:.3f}]" if measurable and e.ci_low is not None else "",
            "realised FPR": f"{100 * e.realised_fpr:.2f}%" if e.realised_fpr is not None else "",
            "note": "" if measurable else (e.reason or "not measurable"),
        })
    return pd.DataFrame(rows)


def samples_table(result, t: int) -> pd.DataFrame:
    """Per-sample rows at t: id, truth, half, raw statistic, membership score and its rank."""
    column = result.column(t)
    scores = result.membership_scores(t)
    rank = np.empty(len(scores), dtype=int)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return pd.DataFrame({
        "id": result.ids,
        "truth": np.where(result.labels == 1, "member", "non-member"),
        "half": result.halves(),
        f"statistic at t={t}": result.statistics[:, column],
        "membership score": scores,
        "rank (1 = most member-like)": rank,
    })
