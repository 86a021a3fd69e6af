"""Local mean: the picture that explains why the noise norm reveals membership."""

from __future__ import annotations

import streamlit as st

from core.hashing import tensor_digest
from explorer import charts, state, uploads, widgets
from explorer.examples import load_examples, suited_to

st.title("Local mean")
st.markdown(
    "A denoiser that memorised its training set predicts noise that points from a **kernel-weighted "
    "average of the training images nearest to the query** (the local mean μ) towards the query. "
    "For a training image at small t that average is the image itself, so the predicted noise is "
    "tiny; for a new image it is a blend of look-alikes, and the noise is large. Compare the "
    "model's own estimate x̂₀ (from its noise prediction, no training data needed) with the local mean."
)
choices = widgets.require_choices()
model = state.get_model(choices.spec, choices.device)
split, no_split = state.split_or_reason(choices)
if model.conditional:
    st.caption("For a conditional model, x̂₀ here is its estimate with the empty prompt (no caption); the local "
               "mean needs no model and no caption.")

FROM_CHECK, MEMBER, HELDOUT, EXAMPLE, UPLOAD = (
    "Sent from Check an image", "A training member", "A held-out image", "A bundled example", "Upload an image",
)

# ----------------------------------------------------------------------------- reference set
reference_images, reference_ids, reference_key = None, None, None
if split is not None:
    reference_images, reference_ids = split.members, split.member_ids
    reference_key = split.key + ":members"
    st.caption(f"Reference set: the model's {len(reference_ids):,} training members.")
else:
    st.info(f"{no_split} Upload the images it was trained on (or a stand-in set) to see local means; "
            "without them only the model's own estimate x̂₀ is shown.")
    files = st.file_uploader(
        "Reference set (training images)", accept_multiple_files=True, key="lm_reference", type=uploads.UPLOAD_TYPES,
    )
    if files:
        with widgets.user_errors():
            loaded = uploads.load_uploads(files, model.image_shape)
            widgets.show_load_problems(loaded)
            loaded.raise_if_empty()
        reference_images, reference_ids = loaded.images, loaded.ids
        reference_key = tensor_digest(loaded.images)
reference = state.model_space(choices, reference_images) if reference_images is not None else None

# ----------------------------------------------------------------------------- query
sent = st.session_state.get("local_mean_query")
if sent is not None and tuple(sent["image"].shape[1:]) != tuple(model.image_shape):
    sent = None  # sent for another model
examples = suited_to(state.examples(), model)
sources = ([FROM_CHECK] if sent else []) + ([MEMBER, HELDOUT] if split is not None else []) + ([EXAMPLE] if examples else []) + [UPLOAD]
source = st.radio("Image", sources, key="lm_source", horizontal=True)
query, query_name = None, None
if source == FROM_CHECK:
    query, query_name = sent["image"], sent["name"]
elif source in (MEMBER, HELDOUT):
    ids = split.member_ids if source == MEMBER else split.nonmember_ids
    pool = split.members if source == MEMBER else split.nonmembers
    key = f"lm_pick_{source == MEMBER}"
    widgets.forget_stale(key, len(ids))
    chosen = st.selectbox("Which one", range(len(ids)), format_func=lambda i: ids[i], key=key)
    query, query_name = pool[chosen : chosen + 1], ids[chosen]
elif source == EXAMPLE:
    by_name = {e.name: e for e in examples}
    name = st.selectbox("Example", list(by_name), format_func=lambda n: by_name[n].title(), key="lm_example")
    with widgets.user_errors():
        loaded = load_examples([by_name[name]], model.image_shape)
        loaded.raise_if_empty()
    query, query_name = loaded.images[:1], name
else:
    file = st.file_uploader("An image", key="lm_upload", type=uploads.IMAGE_TYPES)
    if file is None:
        st.info("Upload an image to see its local mean.")
        st.stop()
    with widgets.user_errors():
        loaded = uploads.load_uploads([file], model.image_shape)
        widgets.show_load_problems(loaded)
        loaded.raise_if_empty()
    query, query_name = loaded.images[:1], file.name

steps = sorted(set(choices.grid) | {s for s in state.EFFECTIVE_T if s < model.num_train_timesteps})
t = widgets.timestep_slider(
    steps, choices.grid[len(choices.grid) // 2], key="lm_t", choices=choices, share=True,
    why="the middle of the sidebar's grid",
    help="The sidebar's grid plus larger timesteps, where the kernel widens.",
)
with widgets.user_errors():
    view = state.local_mean_view(choices, query, reference, reference_key, t)


def _panels(v: state.LocalMeanView) -> list[tuple[str, object]]:
    panels = [("query x₀", v.query)]
    if v.mean is not None:
        panels.append(("local mean μ", v.mean))
    panels.append(("model's x̂₀", v.x0_hat))
    if v.mean is not None:
        panels.append(("|x₀ − μ|", charts.difference_map(v.query, v.mean)))
    panels.append(("|x₀ − x̂₀|", charts.difference_map(v.query, v.x0_hat)))
    return panels


st.subheader(f"{query_name} at t = {t}")
widgets.plot(charts.image_grid_figure([_panels(view)]), key="lm_panels")
notes = [f"Difference maps share one colour scale, saturating at {charts.DIFF_MAX} (a quarter of the pixel range)."]
if view.space == "latent":
    notes.append("This is a latent model: μ and x̂₀ are computed in the autoencoder's latent space and decoded for display.")
if model.kind == "empirical":
    notes.append("This model is the exact optimal denoiser over its members, so x̂₀ equals μ.")
st.caption(" ".join(notes))

if view.mean is not None:
    a, b, c = st.columns(3)
    a.metric("Effective neighbours", f"{view.effective:.3g}", help="1 / Σ wᵢ²: 1 when one image takes all the weight.")
    b.metric("Weight of the nearest image", f"{view.top_weights[0]:.3f}")
    c.metric("Distance to the nearest image", f"{view.nearest_distance:.3g}", help=f"Nearest: {reference_ids[view.nearest_index]}")

    st.subheader(f"The {len(view.top_indices)} heaviest neighbours")
    st.caption("The training images that make up the local mean, heaviest first.")
    widgets.image_strip(
        [reference_images[i] for i in view.top_indices],
        [f"{reference_ids[i]} · w={w:.3f}" for i, w in zip(view.top_indices, view.top_weights)], px=96,
    )
    widgets.plot(charts.weights_figure(view.top_weights, [reference_ids[i] for i in view.top_indices], height=260), key="lm_weights")

# ----------------------------------------------------------------------------- contrast
if split is not None and reference is not None:
    st.subheader("A member and a held-out image, side by side")
    st.caption("The same t for both: the member's local mean is the member itself; the held-out image's is its "
               "nearest training image at small t, and a blend of look-alikes as t grows.")
    pick_m, pick_h = st.columns(2)
    widgets.forget_stale("lm_contrast_member", len(split.member_ids))
    widgets.forget_stale("lm_contrast_heldout", len(split.nonmember_ids))
    m = pick_m.selectbox("Member", range(len(split.member_ids)), format_func=lambda i: split.member_ids[i], key="lm_contrast_member")
    h = pick_h.selectbox("Held-out", range(len(split.nonmember_ids)), format_func=lambda i: split.nonmember_ids[i], key="lm_contrast_heldout")
    member_query, heldout_query = split.members[m : m + 1], split.nonmembers[h : h + 1]
    with widgets.user_errors():
        member_view = state.local_mean_view(choices, member_query, reference, reference_key, t)
        heldout_view = state.local_mean_view(choices, heldout_query, reference, reference_key, t)
    widgets.plot(
        charts.image_grid_figure([_panels(member_view), _panels(heldout_view)],
                                 row_titles=[f"member {split.member_ids[m]}", f"held-out {split.nonmember_ids[h]}"]),
        key="lm_contrast",
    )
    a, b = st.columns(2)
    a.metric("Member: distance to the nearest training image", f"{member_view.nearest_distance:.3g}",
             help=f"Effective neighbours {member_view.effective:.3g}")
    b.metric("Held-out: distance to the nearest training image", f"{heldout_view.nearest_distance:.3g}",
             help=f"Effective neighbours {heldout_view.effective:.3g}")

if reference is not None:
    st.subheader("How many training images share the weight, as t grows")
    curves = {}
    with widgets.user_errors():
        ts, curves[f"{query_name}"] = state.effective_curve(choices, query, reference, reference_key)
        if split is not None:
            _, curves[f"member {split.member_ids[m]}"] = state.effective_curve(choices, member_query, reference, reference_key)
            _, curves[f"held-out {split.nonmember_ids[h]}"] = state.effective_curve(choices, heldout_query, reference, reference_key)
    widgets.plot(charts.effective_figure(ts, curves, current_t=t, reference_size=len(reference_ids)), key="lm_effective")
    st.caption("At small t the kernel is narrow and the nearest training image takes all the weight: for a member "
               "that is the image itself, so the local mean equals it and the predicted noise vanishes; for a "
               "held-out image it is a different picture. As t grows the kernel widens until every training image "
               "counts the same, and the difference between members and the rest fades.")
