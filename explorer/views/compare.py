"""Compare attacks: every attack on the same split, the same protocol, side by side."""

from __future__ import annotations

import streamlit as st

from core.attacks import ATTACK_NAMES, CONDITIONAL_ATTACK_NAMES, get_attack
from core.errors import SimaError
from explorer import charts, reading, state, widgets

st.title("Compare attacks")
st.markdown(
    "Every attack scores the same members and non-members under the same protocol (t chosen on "
    "the selection half, metrics on the report half). SimA asks the model once per image and "
    "timestep; the baselines ask it several times, so they take longer. Wall times are measured "
    "here, without the score cache."
)
choices = widgets.require_choices()
data = widgets.labelled_data(choices, key="compare_data")
# The text-to-image baselines compare each image's caption with the empty prompt.
names = list(ATTACK_NAMES) + (list(CONDITIONAL_ATTACK_NAMES) if choices.condition == "caption" else [])
# The widget forgets its value when another page is shown; the choice is kept beside it.
if "compare_attacks" not in st.session_state:
    st.session_state["compare_attacks"] = [n for n in st.session_state.get("compare_chosen", names) if n in names]
chosen = st.multiselect("Attacks", names, key="compare_attacks", format_func=reading.attack_title)
st.session_state["compare_chosen"] = chosen
if not chosen:
    st.info("Choose at least one attack.")
    st.stop()

grid = list(choices.grid)
costs = {name: len(data) * get_attack(name).queries_for_grid(grid) for name in chosen}
seconds = sum(costs.values()) / state.forward_rate(choices)
estimate = f"{seconds / 60:.0f} min" if seconds > 90 else f"{seconds:.0f} s"
st.caption(
    f"{len(data):,} images × {len(grid)} timesteps: about {sum(costs.values()):,} model evaluations in all, "
    f"roughly {estimate} on this machine ("
    + ", ".join(f"{reading.attack_title(n)} {c:,}" for n, c in costs.items()) + ")."
)
run_key = (choices, tuple(chosen), data.key)
if st.button("Run the comparison", type="primary"):
    st.session_state["compare_run"] = run_key
if st.session_state.get("compare_run") != run_key:
    st.info("Press **Run the comparison** to score every chosen attack (results are kept for this session).")
    st.stop()

results = {}
for name in chosen:
    try:
        results[name] = state.audit(choices, data, attack=name, persistent=False)
    except SimaError as error:
        st.error(f"{name}: {error}")
if not results:
    st.stop()

linear, log = st.columns(2)
with linear:
    widgets.plot(charts.roc_figure(results), key="compare_roc")
with log:
    widgets.plot(charts.roc_figure(results, log=True), key="compare_roc_log")
st.dataframe(charts.metrics_table(results), hide_index=True)
st.caption("Each attack at its own t, chosen on the selection half; 95% bootstrap intervals on the report half. "
           "PFAMI ignores t, so it has none.")

if len(results) > 1:
    from core.audit import compare_results

    st.subheader("Which attack is stronger?")
    first = "sima" if "sima" in results else next(iter(results))
    with widgets.user_errors():
        comparisons = [compare_results(results[first], r) for name, r in results.items() if name != first]
    st.dataframe(charts.comparison_table(comparisons), hide_index=True)
    st.caption(
        f"{reading.attack_title(first)} against each other attack on the same report-half images, each at its own t: "
        "a paired bootstrap resamples the images once for both attacks. One attack is called stronger only when the "
        "95% interval of the AUC difference excludes 0; overlapping intervals of the two AUCs above are not a test."
    )

cost, curves = st.columns(2)
with cost:
    widgets.plot(charts.cost_figure(results), key="compare_cost")
    st.caption("Higher and further left is better: more leakage found for fewer model queries.")
with curves:
    widgets.plot(charts.auc_curves_figure(results), key="compare_curves")
    st.caption("AUC against t (report half). An attack that ignores t (PFAMI) is flat.")
