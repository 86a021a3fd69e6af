"""Audit a dataset: how well does the attack tell members from non-members, with honest CIs?"""

from __future__ import annotations

import json

import streamlit as st

from core import metrics
from explorer import charts, reading, report, sets, state, uploads, widgets
from explorer.progress import progress_bar

st.title("Audit a dataset")
st.markdown(
    "Score a set of images the model **was** trained on (members) and a set it **was not** "
    "(non-members). The attack's timestep is chosen on one half of each set and every number is "
    "reported on the other half, so the result is not tuned to the data it reports."
)
choices = widgets.require_choices()
model = state.get_model(choices.spec, choices.device)
split, no_split = state.split_or_reason(choices)

OWN, UPLOAD = "The model's own split", "Upload members and non-members"
options = [OWN, UPLOAD] if split is not None else [UPLOAD]
source = st.radio("Labelled sets", options, key="audit_source", horizontal=True)
if split is None:
    widgets.missing_split(model, no_split)

data = None
if source == OWN:
    data = split
    st.caption(f"{len(split.member_ids):,} training members and {len(split.nonmember_ids):,} held-out images of {model.name}.")
else:
    left, right = st.columns(2)
    kinds = uploads.UPLOAD_TYPES
    with left:
        member_files = st.file_uploader("Members (training images)", accept_multiple_files=True, key="audit_members", type=kinds)
    with right:
        nonmember_files = st.file_uploader("Non-members (never trained on)", accept_multiple_files=True, key="audit_nonmembers", type=kinds)
    st.caption(f"Several files or zips per side; at most {uploads.MAX_UPLOAD_FILES:,} images each. Both sides need at least 2 images."
               + (" A text-to-image model reads each image's caption from a NAME.txt beside it in the zip." if model.conditional else ""))
    signature = tuple((f.name, f.size) for f in (member_files or [])), tuple((f.name, f.size) for f in (nonmember_files or []))
    stored = st.session_state.get(widgets.UPLOADED_SET)
    if stored is not None and stored["signature"] == signature and stored["spec"] == choices.spec:
        data = stored["data"]
    elif st.button("Run the audit", type="primary", disabled=not (member_files and nonmember_files)):
        with widgets.user_errors():
            update, close = progress_bar("Reading members")
            members = uploads.load_uploads(member_files, model.image_shape, progress=update)
            close()
            update, close = progress_bar("Reading non-members")
            nonmembers = uploads.load_uploads(nonmember_files, model.image_shape, progress=update)
            close()
            widgets.show_load_problems(members, "member files")
            widgets.show_load_problems(nonmembers, "non-member files")
            members.raise_if_empty()
            nonmembers.raise_if_empty()
            data = sets.labelled_set(
                members.images, members.ids, nonmembers.images, nonmembers.ids, "your uploaded sets",
                member_captions=uploads.all_or_none(uploads.captions_of_uploads(member_files, members.ids)),
                nonmember_captions=uploads.all_or_none(uploads.captions_of_uploads(nonmember_files, nonmembers.ids)),
            )
        st.session_state[widgets.UPLOADED_SET] = {"signature": signature, "spec": choices.spec, "data": data}

if data is None:
    st.info("Add member and non-member images, then press **Run the audit**.")
    st.stop()

with widgets.user_errors():
    widgets.time_estimate(choices, data, key="audit_estimate", what=f"{len(data):,} images")
    result = state.audit(choices, data)

# ----------------------------------------------------------------------------- headline
report_n = int(result.report_mask().sum())
chosen = (f"t chosen by {result.selection.upper()} on the selection half ({len(result.ids) - report_n} images)"
          if result.uses_timestep else "this attack ignores t, so none is chosen")
st.subheader(f"Result at t = {result.chosen_t}" if result.uses_timestep else "Result")
st.caption(
    f"{reading.attack_summary(choices.attack, result.chosen_t)}. {chosen[0].upper() + chosen[1:]}; metrics on the report "
    f"half ({report_n} images) with 95% bootstrap intervals ({result.n_bootstrap} resamples).",
    help=reading.HALVES_HELP,
)
caution = metrics.small_sample_warning(result.metrics.n_members, result.metrics.n_nonmembers)
if caution:
    st.warning(caution)
HEADLINE = (("auc", "AUC"), ("asr", "ASR"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("tpr_at_0_1pct_fpr", "TPR@0.1%FPR"))
for place, (key, name) in zip(st.columns(len(HEADLINE)), HEADLINE):
    estimate = getattr(result.metrics, key)
    with place:
        if estimate.value is None or not estimate.measurable:
            st.metric(name, "n/a", help=f"{reading.METRIC_HELP[key]} Here: {estimate.reason}.")
            st.caption("not measurable with this many non-members")
        else:
            st.metric(name, f"{estimate.value:.3f}", help=reading.METRIC_HELP[key])
            if estimate.ci_low is not None:
                st.caption(f"95% CI [{estimate.ci_low:.3f}, {estimate.ci_high:.3f}]")

baseline = result.blind_baseline
if baseline is not None:
    # The one check that needs no model: if this fires, the AUC above measures the split too.
    (st.warning if baseline.separable else st.caption)(baseline.sentence())

roc_linear, roc_log = st.columns(2)
figures = {
    "ROC": charts.roc_figure({result.attack: result}),
    "ROC, log-log": charts.roc_figure({result.attack: result}, log=True),
}
with roc_linear:
    widgets.plot(figures["ROC"], key="audit_roc")
with roc_log:
    widgets.plot(figures["ROC, log-log"], key="audit_roc_log")
    st.caption("The log-log view shows the low false-positive region, where a privacy attack matters.")

st.dataframe(charts.single_metrics_table(result), hide_index=True)

mask = result.report_mask()
column = result.column(result.chosen_t)
label = reading.statistic_label(choices.attack)
figures["Score distributions (report half)"] = charts.histogram_figure(
    result.statistics[mask & (result.labels == 1), column], result.statistics[mask & (result.labels == 0), column],
    statistic=label, t=result.chosen_t,
)
figures["Metrics against t (report half)"] = charts.metric_curve_figure(result.per_t, chosen_t=result.chosen_t, current_t=result.chosen_t)
hist, curve = st.columns(2)
with hist:
    widgets.plot(figures["Score distributions (report half)"], key="audit_hist")
    st.caption("The report half at the chosen t: the images every metric above is measured on.")
with curve:
    widgets.plot(figures["Metrics against t (report half)"], key="audit_curve")

st.subheader("Per image")
st.dataframe(charts.samples_table(result, result.chosen_t), hide_index=True, height=320, column_config={
    f"statistic at t={result.chosen_t}": st.column_config.NumberColumn(format="%.4e"),
    "membership score": st.column_config.NumberColumn(format="%.4e"),
})

# ----------------------------------------------------------------------------- downloads
stem = f"audit-{result.model_name}-{result.attack}".replace("/", "_")
csv_col, json_col, html_col = st.columns(3)
# Callables: each file is built only when its button is pressed (the report embeds plotly.js).
with csv_col:
    st.download_button("Per-image CSV", lambda: result.to_frame().to_csv(index=False), file_name=f"{stem}.csv",
                       mime="text/csv", on_click="ignore", key="audit_csv")
with json_col:
    st.download_button("Result JSON", lambda: json.dumps(result.to_dict(), indent=2), file_name=f"{stem}.json",
                       mime="application/json", on_click="ignore", key="audit_json")
with html_col:
    st.download_button(
        "HTML report (opens offline)", file_name=f"{stem}.html", mime="text/html", on_click="ignore", key="audit_html",
        data=lambda: report.html_report(result, figures, model_description=model.info().describe(), data_source=data.source),
    )
