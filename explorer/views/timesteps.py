"""Timestep explorer: slide t and watch members and non-members separate and merge."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from explorer import charts, reading, state, widgets

GALLERY = 8
#: Timesteps added to the sidebar's grid on this page, so that the curves can be seen to merge.
LARGE_T = (300, 500, 700, 900)

st.title("Timestep explorer")
st.markdown(
    "The attack asks the model for its noise prediction at one timestep t. At t = 0 the image is "
    "clean and the model is asked for noise that is not there, a case it barely trained on, so "
    "members and non-members separate less than they do with a little noise. As t grows, a model "
    "that memorised its training images predicts almost no noise for them while it must guess for "
    "new images: the two groups move apart. At large t every image looks like noise and the "
    "groups merge again. Move the slider and watch the two colours move apart and together. "
    "Everything is scored once; the slider only redraws."
)
choices = widgets.require_choices()
data = widgets.labelled_data(choices, key="explorer_data")
T = state.get_model(choices.spec, choices.device).num_train_timesteps
extra = tuple(t for t in LARGE_T if t < T and t not in choices.grid)
if extra and st.toggle(
    f"Add large timesteps ({', '.join(map(str, extra))}), where the two groups merge", value=True, key="explorer_large_t",
    help="The sidebar's grid stops where the signal is strongest; these show what happens after.",
):
    choices = replace(choices, grid=tuple(sorted(set(choices.grid) | set(extra))))
with widgets.user_errors():
    result = state.audit(choices, data)
best, worst = max(result.per_t, key=lambda row: row["auc"]), min(result.per_t, key=lambda row: row["auc"])
st.caption(
    f"On this model and data the groups separate best at t = {best['t']} (AUC {best['auc']:.3f}) and least "
    f"at t = {worst['t']} (AUC {worst['auc']:.3f}), on the report half."
)

t = widgets.timestep_slider(
    result.timesteps, result.chosen_t, key="explorer_t", choices=choices, share=True,
    why=f"the t the audit chose on the selection half (best {result.selection.upper()})",
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
