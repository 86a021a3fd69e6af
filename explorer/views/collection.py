"""Check a collection: were these images, as a group, used to train the model?"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.collection import VERDICT_WORDS
from core.errors import SimaError
from explorer import charts, reading, state, uploads, verdicts, widgets

LIKELY, NOT_FLAGGED, CANNOT_DECIDE = VERDICT_WORDS
ALPHAS = (0.001, 0.01, 0.05)
TRY_MEMBERS = 20

st.title("Check a collection")
st.markdown(
    "One image of a model that generalises rarely stands out; many images from one owner can. Add a "
    "**collection** (many images, or a zip): its scores are compared with those of images the model never "
    "saw, and you get one **p-value** for the whole collection, how strongly it stands out (**AUC**), and "
    "how many images a collection needs on this model."
)
choices = widgets.require_choices()
model = state.get_model(choices.spec, choices.device)
split, no_split = state.split_or_reason(choices)
if split is None and widgets.split_listed(model):
    widgets.missing_split(model, no_split)
if model.conditional:
    st.info("This page does not read captions yet: it scores a conditional model's images, and its reference, "
            "with the empty prompt, whatever the sidebar's condition.")


def _try_members() -> None:
    st.session_state["collection_try"] = True


files = st.file_uploader(
    "Images, or a zip of images", accept_multiple_files=True, key="collection_uploads",
    type=uploads.UPLOAD_TYPES,
    help=f"Up to {uploads.MAX_UPLOAD_FILES:,} images. They stay in this app's memory.",
)
tried = split is not None and st.session_state.get("collection_try") and not files
if not files and not tried:
    st.info("Upload a collection of images to start.")
    if split is not None:
        st.button(f"Try {TRY_MEMBERS} of the model's training members", on_click=_try_members, key="collection_start",
                  type="primary")
    st.stop()

with widgets.user_errors():
    if tried:
        images, names = split.members[:TRY_MEMBERS], split.member_ids[:TRY_MEMBERS]
        st.caption(f"The collection: the first {len(names)} training members of {model.name}.")
    else:
        loaded = uploads.load_uploads(files, model.image_shape)
        widgets.show_load_problems(loaded)
        loaded.raise_if_empty()
        images, names = loaded.images, loaded.ids
widgets.image_strip(images[:12], names[:12], px=64)
if len(names) > 12:
    st.caption(f"…and {len(names) - 12:,} more.")

# ----------------------------------------------------------------------------- t, attack, reference
try:
    calibrated = state.calibration(choices)
except SimaError as error:
    st.warning(str(error))
    t = st.number_input("Timestep t, chosen on other images", min_value=0, max_value=model.num_train_timesteps - 1,
                        value=None, step=1, key="collection_t")
    if t is None:
        st.stop()
    with widgets.user_errors():
        calibrated = state.calibration(choices, int(t))

reference = None
with widgets.user_errors():
    if split is not None:
        reference, reference_ids = verdicts.collection_reference(choices, calibrated)
    else:
        st.warning(
            "This model's training set is not known, so there is no reference of images it never saw. Upload "
            "images that surely were not in its training data (for example, newer than the model)."
        )
        ref_files = st.file_uploader("Known non-members (reference)", accept_multiple_files=True, key="collection_reference")
        if not ref_files:
            st.stop()
        ref_loaded = uploads.load_uploads(ref_files, model.image_shape)
        widgets.show_load_problems(ref_loaded)
        ref_loaded.raise_if_empty()
        reference, reference_ids = ref_loaded.images, ref_loaded.ids

alpha = st.select_slider(
    "Significance level (alpha)", options=list(ALPHAS), value=0.01, key="collection_alpha",
    format_func=lambda v: f"{100 * v:g}%",
    help="About this fraction of collections of images the model never saw would be flagged.",
)
with widgets.user_errors():
    result = state.collection(choices, calibrated, images, reference, reference_ids, alpha)

# ----------------------------------------------------------------------------- answer
st.caption(f"Attack and timestep: {reading.attack_title(result.attack)} at t = {result.t}, from {calibrated.source}. "
           "They were fixed before this collection was seen.")
if result.overlap:
    st.info(f"{result.overlap} of your images {'are' if result.overlap > 1 else 'is'} also in the reference "
            "(same content); left out of the reference.")
cols = st.columns(4)
cols[0].metric("Collection images (n)", f"{result.n:,}")
cols[1].metric("Reference non-members (m)", f"{result.m:,}")
cols[2].metric("p-value", f"{result.p_value:.3g}", help=f"One-sided Mann-Whitney U ({result.method}).")
ci = "" if result.ci_low is None else f" [{result.ci_low:.3f}, {result.ci_high:.3f}]"
cols[3].metric("AUC", f"{result.auc:.3f}", help=f"95% bootstrap CI{ci}. 0.5: the collection scores like the reference.")
if result.verdict == LIKELY:
    st.error(f"**Likely used in training** (at alpha = {alpha:g})")
elif result.verdict == NOT_FLAGGED:
    st.success(f"**Not flagged** (at alpha = {alpha:g})")
else:
    st.warning(f"**Cannot decide** (at alpha = {alpha:g})")
st.caption(result.sentence)
st.markdown(f"**Images needed.** {result.power_sentence}")
st.caption(f"AUC of the collection against the reference: {result.auc:.3f}{ci} (95% bootstrap CI).")
widgets.plot(charts.histogram_figure(
    np.asarray(result.collection_scores), np.asarray(result.reference_scores),
    statistic="membership score (higher: more like a training image)", member_label="your collection",
    nonmember_label="reference non-members"), key="collection_histogram")
st.caption("The test asks whether the collection sits to the right of the reference as a whole; single images "
           "of a model that generalises overlap the reference, and that is why a collection can say more than "
           "any one of its images.")
