"""The latent bottleneck as a defence: does an autoencoder's KL weight hide the training set?"""

from __future__ import annotations

import math

import streamlit as st

from core import bottleneck, demo_names
from core.errors import SimaError
from explorer import charts, reading, state, widgets
from explorer.choices import PERFECT_MEMORISER, PIXEL_VS_LATENT
from explorer.progress import RunStopped

st.title("The latent bottleneck as a defence")
st.markdown(
    "A latent diffusion model never sees pixels: an autoencoder turns each image into a smaller "
    "latent, and the diffusion model learns those latents. The SimA paper finds that latent models "
    "leak much less than pixel models, and that the autoencoder's KL weight β moves the leakage, "
    "which would make β a defence a model trainer can choose. Here is what that claim looks like "
    "when measured on a fair set-up: every autoencoder below was trained on digits that are neither "
    "members nor held-out images, and every latent model on the pixel model's members with the "
    "pixel model's training budget."
)
try:
    study = bottleneck.load_study()
except SimaError as error:
    st.info(f"The measured study is not available: {error}")
    study = None
if study is not None:
    st.subheader("Leakage and its cost against β")
    widgets.plot(charts.bottleneck_figure(study), key="bottleneck_curve")
    st.markdown("**Measured, the diffusion model trained on posterior samples** (as Stable Diffusion's trainer "
                f"does): {bottleneck.direction(study).sentence()}")
    means = bottleneck.posterior_mean_series(study)
    if means is not None:
        st.markdown(f"**Measured, trained on posterior means:** {bottleneck.direction(means).sentence()}")
    st.markdown(f"**What follows for a model trainer:** {bottleneck.recommendation(study)}")
    st.caption(
        f"From `python benchmarks/latent.py` ({study['date']}). Autoencoder loss per image: squared error "
        "averaged over pixels + β × KL summed over the 64 latent numbers, so β binds across the range. "
        "AUC: SimA with t chosen on the selection half, 95% bootstrap interval on the report half. Precision "
        f"and recall: {study['samples']} generated digits against the held-out digits (realism and variety); "
        "reconstruction: the autoencoder's round trip on held-out digits."
    )
    if study.get("curve"):
        st.subheader("The other lever: how long the model trains")
        widgets.plot(charts.learning_curve_figure(study["curve"]), key="bottleneck_training")
        st.markdown(bottleneck.curve_sentence(study))
        st.caption("The pixel model's own config retrained with its seed, its network saved every 250 steps, "
                   "and each saved network audited like the model itself.")

st.subheader("Audit the shipped models yourself")
choices = widgets.require_choices()
available = set(demo_names())
models = [name for name in PIXEL_VS_LATENT if name in available]
if PERFECT_MEMORISER in available:
    models.append(PERFECT_MEMORISER)
if len(models) < 2:
    st.info("This page needs the bundled pixel and latent demos "
            f"({', '.join(PIXEL_VS_LATENT)}), which are not installed here.")
    st.stop()
st.caption(
    f"Attack, timesteps, device and seed come from the sidebar ({choices.attack}, {len(choices.grid)} timesteps); "
    "the model picker is not used here. Each model is audited on its own split."
)
run_key = (choices.attack, choices.grid, choices.seed, choices.device)
if st.button("Audit the pixel and latent models", type="primary"):
    st.session_state["latent_run"] = run_key
if st.session_state.get("latent_run") != run_key:
    st.info(f"Press the button to audit {len(models)} models ({', '.join(models)}); results are kept for this session.")
    st.stop()

results, infos = {}, {}
run = "latent:" + "|".join(map(str, run_key))  # Stop stops the whole page's run, not one model
with widgets.user_errors():
    for name in models:
        try:
            split = state.model_split(name, choices.device)
            results[name] = state.audit(choices, split, spec=name, run=run)
            infos[name] = state.get_model(name, choices.device).info()
        except RunStopped:
            raise
        except SimaError as error:
            st.error(f"{name}: {error}")
if not results:
    st.stop()

widgets.plot(charts.auc_curves_figure(results), key="latent_curves")
table = charts.metrics_table(results, label="model")
table.insert(1, "kind", [infos[n].kind for n in results])
table.insert(2, "space", ["×".join(map(str, infos[n].sample_shape)) for n in results])
betas = [reading.kl_weight(infos[n].manifest) for n in results]
table.insert(3, "KL weight β", ["" if beta is None else f"{beta:g}" for beta in betas])
st.dataframe(table.drop(columns=["wall time (s)"]), hide_index=True)

pixel = PIXEL_VS_LATENT[0]
latents = [n for n in results if infos[n].kind == "latent"]
if pixel in results and latents:
    from core.audit import compare_results

    def against_pixel(name: str) -> str:
        reference = results[pixel].metrics.auc.value
        try:
            # The demos share one split, so both audits hold the same report-half images.
            paired = compare_results(results[name], results[pixel])
        except SimaError:
            return f"compared with the pixel model's {reference:.3f} (not the same images, so no paired test)"
        if not paired.auc.distinguishable:
            where = "not distinguishable at 95% from"
        else:
            where = "above" if paired.auc.value > 0 else "below"
        return f"{where} the pixel model's {reference:.3f} (paired AUC difference {paired.auc.describe()})"

    lines = [
        f"- **{name}** (β = {reading.kl_weight(infos[name].manifest) or '?'}): AUC {results[name].metrics.auc.value:.3f}, "
        f"{against_pixel(name)}"
        for name in latents
    ]
    st.markdown("**On these models**, at each one's chosen t (a paired bootstrap on the same report-half images "
                "decides, at 95%):\n" + "\n".join(lines))

    st.subheader("What the bottleneck keeps")
    split = state.model_split(pixel, choices.device)
    originals = split.members[:4]
    try:
        recon = {n: state.reconstructions(n, choices.device, originals) for n in latents}
    except SimaError as error:
        st.error(str(error))
        recon = {}
    if recon:
        rows = [[(split.member_ids[i], originals[i].numpy()) for i in range(len(originals))]]
        rows += [[("", recon[n][i]) for i in range(len(originals))] for n in recon]
        # Short row titles (they are drawn vertically): the autoencoder's β names it.
        titles = ["training image"] + [
            n if reading.kl_weight(infos[n].manifest) is None else f"β = {reading.kl_weight(infos[n].manifest):g}" for n in recon
        ]
        widgets.plot(charts.image_grid_figure(rows, row_titles=titles, panel_px=150), key="latent_recon")
        shapes = ", ".join(
            f"{n}: {'×'.join(map(str, infos[n].sample_shape))} = {math.prod(infos[n].sample_shape)} latent numbers" for n in recon
        )
        c, h, w = infos[pixel].image_shape
        st.caption(
            f"Training images after a round trip through each autoencoder ({shapes}, for {c * h * w} pixels). "
            "Detail an autoencoder drops is detail its latent model cannot have memorised, but a faithful round "
            "trip does not mean the latent model leaks: these diffusion models trained on posterior samples, and "
            "the noise of a larger β blurs each member's latent for the diffusion model even where the decoder "
            "still draws the digit well (the study above measures both)."
        )

st.markdown(
    "**How to read this.** The higher an AUC curve, the easier it is to tell the model's training "
    "images from new ones; the star marks the t each audit chose on its selection half. What these "
    "curves show is measured on these small models and this split, not assumed. A lower AUC does "
    "not make a model private: it means this attack, at these timesteps, finds less."
)
