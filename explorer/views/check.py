"""Check an image: was this picture in the model's training set?"""

from __future__ import annotations

import streamlit as st
import torch

from core.data import POLICY
from core.hashing import row_digests
from core.scoring import CANNOT_DECIDE
from explorer import charts, reading, state, uploads, verdicts, widgets
from explorer.choices import DEFAULT_FPR, FPR_CHOICES
from explorer.examples import load_examples

LOCAL_MEAN_PAGE = "views/local_mean.py"


def split_caption(split, side: str, k: int) -> str | None:
    """The caption the model was trained with (or held out with), from the model's manifest."""
    captions = split.member_captions if side == "member" else split.nonmember_captions
    return None if captions is None else captions[k]

st.title("Check an image")
st.markdown(
    "Was this picture used to train the model? Add one or more images: each gets its **score**, "
    "where that score sits among images the model did and did not see, a **p-value** and a "
    "**verdict** at the false-positive rate you choose."
)
choices = widgets.require_choices()
model = state.get_model(choices.spec, choices.device)
c, h, w = model.image_shape

# ----------------------------------------------------------------------------- images
examples = state.examples()
by_name = {e.name: e for e in examples}
split, no_split = state.split_or_reason(choices)
split_names = (
    {f"member {i}": ("member", k) for k, i in enumerate(split.member_ids)}
    | {f"held-out {i}": ("held-out", k) for k, i in enumerate(split.nonmember_ids)}
) if split is not None else {}


def _try_examples() -> None:
    """One member and one held-out image: the quickest way to see both answers."""
    if examples:
        picks = [next((e.name for e in examples if e.label == label), None) for label in ("member", "held-out")]
        st.session_state["check_examples"] = [p for p in picks if p] or [e.name for e in examples[:2]]
    elif split is not None:
        st.session_state["check_split"] = [f"member {split.member_ids[0]}", f"held-out {split.nonmember_ids[0]}"]


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
        st.button("Try one member and one held-out example", on_click=_try_examples)
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
    if examples or split is not None:
        st.button("Show me a member and a held-out image", on_click=_try_examples, type="primary", key="check_start")
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
reference = None
with widgets.user_errors():
    if split is not None:
        widgets.time_estimate(choices, len(split) + len(names), key="check_estimate",
                              what="scoring the model's own split as the reference and your images")
        result = state.audit(choices, split, why="First, the model's own known images are scored once as the reference. ")
        reference = verdicts.reference_from_audit(result, split)
    else:
        st.warning(
            "This model's training set is not known, so there is no reference of images it never saw. "
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
left, right = st.columns([3, 1])
with left:
    t = widgets.timestep_slider(
        grid, reference.chosen_t if reference and reference.chosen_t is not None else grid[len(grid) // 2],
        key="check_t", help="The audit of the model's split chooses a t (on its selection half); you can move it.",
    )
with right:
    fdr_on = st.toggle(
        "Hold the false discovery rate", key="check_fdr_on", disabled=reference is None,
        help="For many images at once: flag images so that, among those flagged, at most this fraction are "
        "expected to be non-members (Benjamini-Hochberg), instead of a false-positive rate per image.",
    )
    fpr = st.select_slider(
        "Target false discovery rate" if fdr_on else "Target false-positive rate", options=list(FPR_CHOICES),
        value=DEFAULT_FPR, key="check_fpr", format_func=lambda v: f"{100 * v:g}%",
        help="About this fraction of images the model never saw would be flagged as members." if not fdr_on else
        "About this fraction of the flagged images would be non-members.",
    )
rate = f"{100 * fpr:g}% {'FDR' if fdr_on else 'FPR'}"
column = grid.index(t)
label = reading.statistic_label(choices.attack)
st.caption(reading.attack_summary(choices.attack, t) + (f". Reference: {reference.source}." if reference else "."))

answers = (verdicts.check(reference, t, stats[:, column], fpr, digests, fdr=fpr if fdr_on else None)
           if reference else [None] * len(names))
results = []
for i, name in enumerate(names):
    truth = (split.truth(digests[i]) if split is not None else None) or labels.get(name)
    results.append((answers[i], truth))

table = {
    "image": names,
    **({"caption": captions} if captions is not None else {}),
    label + f" at t={t}": [float(stats[i, column]) for i in range(len(names))],
}
if reference:
    table["p-value"] = [r[0].p_value for r in results]
    if fdr_on:
        table["BH-adjusted p"] = [r[0].adjusted_p for r in results]
    table[f"verdict at {rate}"] = [r[0].words for r in results]
if any(r[1] for r in results):
    table["truth (known split)"] = [r[1] or "" for r in results]
st.dataframe(table, hide_index=True, column_config={
    label + f" at t={t}": st.column_config.NumberColumn(format="%.3e"),
    "p-value": st.column_config.NumberColumn(format="%.4f"),
    "BH-adjusted p": st.column_config.NumberColumn(format="%.4f"),
})

# ----------------------------------------------------------------------------- per image
for i, name in enumerate(names):
    verdict, truth = results[i]
    with st.expander(f"{name}", expanded=i < 2):
        pic, answer, where = st.columns([1, 2, 3])
        with pic:
            st.image(widgets.thumbnail(images[i], 160), caption="as the model sees it", width=160)
            for note in notes[i]:
                st.caption(note)
            if captions is not None:
                st.caption(f"Conditioned on “{captions[i]}”")
        with answer:
            st.metric(label, f"{stats[i, column]:.4g}", help=f"At t = {t}. {reading.attack_summary(choices.attack, t)}.")
            if verdict is None:
                st.info("Raw score only: no reference non-members, so no p-value or verdict.")
            else:
                st.metric("p-value", f"{verdict.p_value:.3g}", help="(1 + reference images scoring at least as member-like) / (1 + reference size)")
                if verdict.words == CANNOT_DECIDE:
                    st.warning(f"**Cannot decide** at {rate}.")
                elif verdict.likely_member:
                    st.error(f"**Likely a member** (flagged at {rate})")
                else:
                    st.success(f"**Not flagged** at {rate}")
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
