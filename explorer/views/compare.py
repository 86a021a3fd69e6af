"""Compare attacks: every attack on the same split, the same protocol, side by side."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import streamlit as st

from core import metrics
from core.attacks import ATTACK_NAMES, CONDITIONAL_ATTACK_NAMES, get_attack
from core.errors import SimaError
from explorer import charts, reading, sets, state, widgets
from explorer.progress import RunStopped

#: Cheap defaults: a run that takes a minute, not an afternoon; the user widens it at will.
DEFAULT_PER_SIDE = 100
DEFAULT_TIMESTEPS = 5

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
grid = list(choices.grid)
one_query = [n for n in names if get_attack(n).uses_timestep and all(get_attack(n).queries_per_sample(t) == 1 for t in grid)]
# Widgets forget their values when another page is shown; the choices are kept beside them.
remembered = st.session_state.setdefault("compare_remembered", {})
if "compare_attacks" not in st.session_state:
    st.session_state["compare_attacks"] = [n for n in remembered.get("attacks", one_query) if n in names]
thinned = grid[:: max(1, -(-len(grid) // DEFAULT_TIMESTEPS))]
if "compare_t" not in st.session_state or not set(st.session_state["compare_t"]) <= set(grid):
    kept = [t for t in remembered.get("t", thinned) if t in grid]
    st.session_state["compare_t"] = kept or thinned
largest = max(len(data.member_ids), len(data.nonmember_ids))
if "compare_n" not in st.session_state:
    st.session_state["compare_n"] = min(remembered.get("n", DEFAULT_PER_SIDE), largest)

pick_attacks, pick_t, pick_n = st.columns([3, 3, 1])
with pick_attacks:
    chosen = st.multiselect(
        "Attacks", names, key="compare_attacks", format_func=reading.attack_title,
        help="By default the attacks that ask the model once per image and timestep; the others cost 2 to 110 queries.",
    )
with pick_t:
    steps = st.multiselect("Timesteps", grid, key="compare_t", help="A subset of the sidebar's grid keeps the run short.")
with pick_n:
    per_side = st.number_input(
        "Images per group", min_value=2, max_value=largest, step=50, key="compare_n",
        help=f"At most this many members and as many non-members, drawn at random (seed {choices.seed}).",
    )
remembered.update(attacks=chosen, t=steps, n=int(per_side))
if not chosen or not steps:
    st.info("Choose at least one attack and one timestep.")
    st.stop()

subset = sets.subset(data, int(per_side), choices.seed)
run_choices = replace(choices, grid=tuple(sorted(steps)))
with widgets.user_errors():
    estimates = {name: state.estimate_seconds(run_choices, name, subset) for name in chosen}
total = sum(estimates.values())
st.caption(
    f"{len(subset):,} images × {len(steps)} timesteps: about {reading.duration(total)} on this machine, "
    "timed on one batch of each attack (" + ", ".join(f"{reading.attack_title(n)} {reading.duration(s)}" for n, s in estimates.items()) + ")."
)
run_key = (run_choices, tuple(chosen), subset.key)
if st.button("Run the comparison", type="primary"):
    st.session_state["compare_run"] = run_key
if st.session_state.get("compare_run") != run_key:
    st.info("Press **Run the comparison** to score every chosen attack (results are kept for this session).")
    st.stop()

results = {}
run = "compare:" + hashlib.sha256(repr(run_key).encode()).hexdigest()[:16]
with widgets.user_errors():
    for name in chosen:
        try:
            results[name] = state.audit(run_choices, subset, attack=name, persistent=False, run=run)
        except RunStopped:
            raise
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
st.caption(
    "Each attack at its own t, chosen on the selection half; 95% bootstrap intervals on the report half. "
    "PFAMI ignores t, so it has none. Wall time against the estimate: "
    + ", ".join(f"{reading.attack_title(n)} {reading.duration(r.wall_time_s)} (estimated {reading.duration(estimates[n])})"
                for n, r in results.items()) + ".",
    help=reading.HALVES_HELP,
)
measured = next(iter(results.values())).metrics
caution = metrics.small_sample_warning(measured.n_members, measured.n_nonmembers)
if caution:
    st.warning(caution)

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
