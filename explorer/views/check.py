"""Check an image: was this picture in the model's training set?"""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from core.data import POLICY
from core.hashing import row_digests
from core.scoring import CANNOT_DECIDE, CANNOT_JUDGE
from explorer import charts, examples as bundled, reading, state, uploads, verdicts, welcome, widgets
from explorer.choices import DEFAULT_FPR, FPR_CHOICES
from explorer.examples import load_examples

LOCAL_MEAN_PAGE = "views/local_mean.py"
WANT_PAIR = "check_want_pair"
P_VALUE_HELP = (
    "(1 + reference non-members at least as member-like as this image) / (1 + reference size): "
    "small means few images the model never saw score like this one."
)


def split_caption(split, side: str, k: int) -> str | None:
    """The caption the model was trained with (or held out with), from the model's manifest."""
    captions = split.member_captions if side == "member" else split.nonmember_captions
    return None if captions is None else captions[k]

st.title("Check an image")
welcome.show()
choices = widgets.require_choices()
model = state.get_model(choices.spec, choices.device)
c, h, w = model.image_shape

# ----------------------------------------------------------------------------- images
examples = bundled.suited_to(state.examples(), model)
by_name = {e.name: e for e in examples}
split, no_split = state.split_or_reason(choices)
split_names = (
    {f"member {i}": ("member", k) for k, i in enumerate(split.member_ids)}
    | {f"held-out {i}": ("held-out", k) for k, i in enumerate(split.nonmember_ids)}
) if split is not None else {}


def _want_pair() -> None:
    st.session_state[WANT_PAIR] = True


_audits: list = []


def _reference_audit():
    """The audit of the model's split, computed (or fetched) once per run of this page."""
    if not _audits:
        _audits.append(state.audit(choices, split, why="First, the model's own known images are scored once as the reference. "))
    return _audits[0]


if st.session_state.pop(WANT_PAIR, False) and split is not None:
    # A typical member and a typical held-out image, chosen by their p-values at the chosen t:
    # the bundled examples when they belong to this model's split, else the split itself.
    with widgets.user_errors():
        result = _reference_audit()
        reference = verdicts.reference_from_audit(result, split)
        column = reference.column(result.chosen_t)
        pool = load_examples(examples, model.image_shape) if examples else None
        truths = [split.truth(d) for d in row_digests(pool.images)] if pool is not None and len(pool) else []
        if any(truths):
            stats = state.image_statistics(choices, pool.images)[:, column]
            digests = row_digests(pool.images)
            p = [v.p_value for v in verdicts.check(reference, result.chosen_t, stats, DEFAULT_FPR, digests)]
            st.session_state["check_examples"] = bundled.typical_pair(pool.ids, truths, p)
        else:
            names = [f"member {i}" for i in split.member_ids] + [f"held-out {i}" for i in split.nonmember_ids]
            labels = ["member"] * len(split.member_ids) + ["held-out"] * len(split.nonmember_ids)
            order = -result.membership_scores(result.chosen_t)  # lower = more member-like, as p-values
            st.session_state["check_split"] = bundled.typical_pair(names, labels, order.tolist())


tabs = ["Upload images"] + (["Bundled examples"] if examples else []) + (["From the model's split"] if split is not None else [])
tab = dict(zip(tabs, st.tabs(tabs)))
with tab["Upload images"]:
    uploaded = st.file_uploader(
        "Images, or a zip of images", accept_multiple_files=True, key="check_uploads",
        type=uploads.UPLOAD_TYPES,
        help=f"Up to {uploads.MAX_CHECK_IMAGES} images are scored at once. They stay in this app's memory.",
    )
    with st.expander("How images are converted before scoring"):
        st.text(POLICY)
if examples:
    with tab["Bundled examples"]:
        st.multiselect(
            "Example images", list(by_name), key="check_examples", format_func=lambda n: by_name[n].title(),
            help="Digits from the bundled demo split: the label says whether the memorising demo was trained on it.",
        )
        st.button("Show me a typical member and held-out example", on_click=_want_pair, disabled=split is None)
if split is not None:
    # Picks made for another model are dropped before the widget sees them.
    st.session_state["check_split"] = [n for n in st.session_state.get("check_split", []) if n in split_names]
    with tab["From the model's split"]:
        st.multiselect(
            "Images the model was, or was not, trained on", list(split_names), key="check_split",
            help="The model's own training members and held-out images, by id.",
        )

chosen = [by_name[n] for n in st.session_state.get("check_examples", []) if n in by_name]
from_split = [split_names[n] for n in st.session_state.get("check_split", []) if n in split_names]
if not uploaded and not chosen and not from_split:
    st.info("Upload an image, or pick one, to start.")
    if split is not None:
        st.button("Show me a member and a held-out image", on_click=_want_pair, type="primary", key="check_start",
                  help="A typical training member and a typical held-out image of this model, each with its group's median p-value.")
    st.stop()

with widgets.user_errors():
    loaded_uploads = uploads.load_uploads(uploaded or [], model.image_shape)
    loaded_examples = load_examples(chosen, model.image_shape)
widgets.show_load_problems(loaded_uploads)

split_images = [(split.members if side == "member" else split.nonmembers)[k] for side, k in from_split]
known_captions = [None] * len(loaded_examples.ids) + uploads.captions_of_uploads(uploaded or [], loaded_uploads.ids) + [
    split_caption(split, side, k) for side, k in from_split]
split_ids = [f"{(split.member_ids if side == 'member' else split.nonmember_ids)[k]} ({side})" for side, k in from_split]
images = torch.cat([loaded_examples.images, loaded_uploads.images, *(im.unsqueeze(0) for im in split_images)])
names = loaded_examples.ids + loaded_uploads.ids + split_ids
notes = loaded_examples.notes + loaded_uploads.notes + [[] for _ in split_ids]
labels = {e.name: e.truth_for(model.name) for e in chosen}
if not names:
    st.stop()
if len(names) > uploads.MAX_CHECK_IMAGES:
    st.warning(f"{len(names)} images given; the first {uploads.MAX_CHECK_IMAGES} are scored.")
    images, names, notes = images[: uploads.MAX_CHECK_IMAGES], names[: uploads.MAX_CHECK_IMAGES], notes[: uploads.MAX_CHECK_IMAGES]
    known_captions = known_captions[: uploads.MAX_CHECK_IMAGES]
digests = row_digests(images)
captions = widgets.caption_editor(model, choices, names, known_captions, key="check_captions") if model.conditional else None

# ----------------------------------------------------------------------------- reference
reference, result = None, None
with widgets.user_errors():
    if split is not None:
        widgets.time_estimate(choices, split, extra_images=len(names), key="check_estimate",
                              what="scoring the model's own split as the reference and your images")
        result = _reference_audit()
        reference = verdicts.reference_from_audit(result, split)
    else:
        st.warning(
            (f"{no_split} " if widgets.split_listed(model) else "This model's training set is not known, so there is no reference of "
             "images it never saw. ") +
            "Upload some images that surely were not in its training data (for example, newer than the "
            "model) to get a calibrated p-value; without them you get the raw score only."
        )
        ref_files = st.file_uploader(
            "Known non-members (reference)", accept_multiple_files=True, key="check_reference", type=uploads.UPLOAD_TYPES,
        )
        if ref_files:
            ref_loaded = uploads.load_uploads(ref_files, model.image_shape)
            widgets.show_load_problems(ref_loaded)
            ref_loaded.raise_if_empty()
            ref_captions = uploads.all_or_none(uploads.captions_of_uploads(ref_files, ref_loaded.ids))
            reference = verdicts.reference_from_images(choices, ref_loaded.images, ref_captions)
    stats = state.image_statistics(choices, images, captions)

# ----------------------------------------------------------------------------- controls
grid = list(choices.grid)
if result is not None:
    chosen_t, why = result.chosen_t, f"the t the audit of this model's own split chose (best {result.selection.upper()} on its selection half)"
else:
    chosen_t = grid[len(grid) // 2]
    why = "no audit chose a t for this model (its training set is unknown), so the middle of the sidebar's grid"
left, right = st.columns([3, 1])
with left:
    t = widgets.timestep_slider(grid, chosen_t, key="check_t", choices=choices, why=why,
                                help="Verdicts use the t the calibration chose unless you move it here.")
with right:
    fdr_on = st.toggle(
        "Hold the false discovery rate", key="check_fdr_on", disabled=reference is None,
        help="For many images at once: flag images so that, among those flagged, at most this fraction are "
        "expected to be non-members (Benjamini-Hochberg), instead of a false-positive rate per image.",
    )
    fpr = st.select_slider(
        "Target false discovery rate" if fdr_on else "Target false-positive rate", options=list(FPR_CHOICES),
        value=DEFAULT_FPR, key="check_fpr", format_func=reading.percent,
        help="About this fraction of images the model never saw would be flagged as members." if not fdr_on else
        "About this fraction of the flagged images would be non-members.",
    )
rate = f"{reading.percent(fpr)} {'FDR' if fdr_on else 'FPR'}"
column = grid.index(t)
label = reading.statistic_label(choices.attack)
st.caption(reading.attack_summary(choices.attack, t) + (f". Reference: {reference.source}." if reference else "."))

domains = reference.domain_checks(images, stats[:, column], t) if reference else [None] * len(names)
answers = (verdicts.check(reference, t, stats[:, column], fpr, digests, fdr=fpr if fdr_on else None)
           if reference else [None] * len(names))
results = []
for i, name in enumerate(names):
    verdict = answers[i]
    truth = (split.truth(digests[i]) if split is not None else None) or labels.get(name)
    results.append((verdict, truth, domains[i]))



def _word(verdict, domain) -> str:
    return CANNOT_JUDGE if domain is not None and not domain.judgeable else verdict.words


statistic_column = f"{label} at t={t}"
table = pd.DataFrame({
    "image": names,
    **({"caption": captions} if captions is not None else {}),
    statistic_column: [float(stats[i, column]) for i in range(len(names))],
})
if reference:
    table["p-value"] = [reading.format_p(v.p_value) for v, _, _ in results]
    if fdr_on:
        table["BH-adjusted p"] = [reading.format_p(v.adjusted_p) for v, _, _ in results]
    table[f"verdict at {rate}"] = [_word(v, d) for v, _, d in results]
if any(r[1] for r in results):
    table["truth (known split)"] = [r[1] or "" for r in results]

# ----------------------------------------------------------------------------- summary
if reference:
    words = [_word(v, d) for v, _, d in results]
    flagged, unjudged = words.count("likely member"), words.count(CANNOT_JUDGE)
    st.markdown(
        f"**{flagged} of {len(names)}** image{'s' if len(names) != 1 else ''} flagged as likely "
        f"member{'s' if flagged != 1 else ''} at {rate}"
        + (f"; **{unjudged}** this model cannot judge" if unjudged else "") + "."
    )
    missed = reading.missed_members(result, t, fpr) if result is not None and not fdr_on else None
    if missed:
        st.caption(missed)
columns = {statistic_column: st.column_config.NumberColumn(format="%.3e", help=reading.attack_summary(choices.attack, t))}
if reference:
    columns["p-value"] = st.column_config.TextColumn(help=P_VALUE_HELP)
st.dataframe(table, hide_index=True, column_config=columns)
export = table.assign(t=t, attack=choices.attack, model=model.name)
if reference:
    export["explanation"] = [d.sentence() if d is not None and not d.judgeable else v.sentence for v, _, d in results]
st.download_button("Download these results (CSV)", export.to_csv(index=False), file_name=f"check-{model.name}-t{t}.csv".replace("/", "_"),
                   mime="text/csv", on_click="ignore", key="check_csv")

# ----------------------------------------------------------------------------- per image
for i, name in enumerate(names):
    verdict, truth, domain = results[i]
    with st.expander(f"{name}", expanded=i < 2):
        pic, answer, where = st.columns([1, 2, 3])
        with pic:
            # Stretched to the column: a fixed width overflowed into the next column on narrow screens.
            st.image(widgets.thumbnail(images[i], 160), caption="as the model sees it", width="stretch")
            for note in notes[i]:
                st.caption(note)
            if captions is not None:
                st.caption(f"Conditioned on “{captions[i]}”")
        with answer:
            st.metric(label, f"{stats[i, column]:.4g}", help=f"At t = {t}. {reading.attack_summary(choices.attack, t)}.")
            if verdict is None:
                st.info("Raw score only: no reference non-members, so no p-value or verdict.")
            else:
                st.metric("p-value", reading.format_p(verdict.p_value), help=P_VALUE_HELP)
                if domain is not None and not domain.judgeable:
                    st.warning(f"**This model cannot judge this image**: {domain.reason}.")
                    st.caption("The p-value above is no evidence either way for an image like this.")
                elif verdict.words == CANNOT_DECIDE:
                    st.warning(f"**Cannot decide** at {rate}.")
                elif verdict.likely_member:
                    st.error(f"**Likely a member** (flagged at {rate})")
                else:
                    st.success(f"**Not flagged** at {rate}")
                if domain is None or domain.judgeable:
                    st.caption(verdict.sentence)
                if verdict.left_out:
                    st.caption("This image is one of the reference held-out images, so it was left out of the reference.")
            if truth:
                st.caption(f"Ground truth from the known split: **{truth}**.")
        with where:
            if reference is not None:
                marks = {name[:24]: float(stats[i, column])}
                members = reference.members[:, column] if reference.members is not None else []
                widgets.plot(
                    charts.histogram_figure(
                        members, reference.nonmembers[:, column], statistic=label, t=t, marks=marks,
                        member_label="training members", nonmember_label="held-out",
                    ),
                    key=f"check_hist_{i}",
                )
        curve = charts.norm_curve_figure(
            grid, {name[:24]: stats[i]}, reference.members if reference else None,
            reference.nonmembers if reference else None, statistic=label, current_t=t,
        )
        widgets.plot(curve, key=f"check_curve_{i}")
        if st.button("Explain with the local mean →", key=f"check_lm_{i}", help="See the training images this one is closest to."):
            st.session_state["local_mean_query"] = {"name": name, "image": images[i : i + 1].clone()}
            st.switch_page(LOCAL_MEAN_PAGE)

st.divider()
st.markdown(
    "**What a verdict cannot tell you.** A small p-value says that few images the model never saw "
    "score this member-like; it is not the probability that this image was in the training set. "
    "At a 1% false-positive rate, about 1 in 100 images the model never saw is flagged anyway, "
    "and a near-duplicate of a training image (the same picture re-encoded, cropped or from the "
    "same series) can be flagged although the file itself was never used. \"Not flagged\" is not "
    "proof of absence: models that generalise well leak little, and a member can look ordinary."
)
