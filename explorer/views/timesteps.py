"""Timestep explorer: slide t and watch members and non-members separate and merge."""

from __future__ import annotations

import streamlit as st

from explorer import charts, reading, state, widgets

GALLERY = 8

st.title("Timestep explorer")
st.markdown(
    "The attack asks the model for its noise prediction at one timestep t. At small t a model that "
    "memorised its training images predicts almost no noise for them; at large t every image looks "
    "like noise and the two groups merge. Move the slider and watch the two colours move apart and "
    "together. Everything is scored once; the slider only redraws."
)
choices = widgets.require_choices()
data = widgets.labelled_data(choices, key="explorer_data")
with widgets.user_errors():
    result = state.audit(choices, data)

t = widgets.timestep_slider(
    result.timesteps, widgets.default_t(result), key="explorer_t",
    help="Only timesteps of the sidebar's grid were scored; change the grid there for others.",
)
column = result.column(t)
row = result.per_t[column]
label = reading.statistic_label(choices.attack)

auc_col, tpr_col, chosen_col = st.columns(3)
auc_col.metric("AUC at this t", f"{row['auc']:.3f}", help="On the report half of the data.")
tpr = row["tpr_at_1pct_fpr"]
tpr_col.metric("TPR@1%FPR at this t", "n/a" if tpr is None else f"{tpr:.3f}",
               help="Needs at least 100 non-members in the report half." if tpr is None else "On the report half of the data.")
chosen_col.metric("t chosen on the selection half", result.chosen_t)

left, right = st.columns(2)
with left:
    members = result.statistics[result.labels == 1, column]
    nonmembers = result.statistics[result.labels == 0, column]
    widgets.plot(
        charts.histogram_figure(members, nonmembers, statistic=label, t=t, x_range=charts.statistic_range(result.statistics)),
        key="explorer_hist",
    )
    st.caption(f"All {len(result.ids):,} images at t = {t}; the axis is fixed over the grid so the bars move, not the axis.")
with right:
    widgets.plot(charts.metric_curve_figure(result.per_t, current_t=t, chosen_t=result.chosen_t), key="explorer_curve")
    st.caption("Metrics on the report half; the star is the t the audit chose on the other half.")

st.subheader(f"Most and least member-like images at t = {t}")
most, least = reading.extremes(result, t, GALLERY)
images = data.images()


def _caption(i: int, rank: int) -> str:
    truth = "member" if result.labels[i] == 1 else "held-out"
    return f"#{rank} {truth}"


direction = "lowest" if result.member_when == "lower" else "highest"
st.caption(f"Most member-like ({direction} {label}): the attack would flag these first.")
widgets.image_strip([images[i] for i in most], [_caption(i, r + 1) for r, i in enumerate(most)], px=96)
st.caption("Least member-like: the attack is surest these were never trained on.")
n = len(result.ids)
widgets.image_strip([images[i] for i in least], [_caption(i, n - r) for r, i in enumerate(least)], px=96)
