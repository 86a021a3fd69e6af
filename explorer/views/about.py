"""About: the idea in plain words and in formulas, how to read each plot, and the limits."""

from __future__ import annotations

import streamlit as st

st.title("About: why a diffusion model gives its training images away")

st.header("The idea in five sentences")
st.markdown(
    "1. A diffusion model is trained to look at a noisy picture and predict the noise that was added.\n"
    "2. The best possible noise predictor for a finite training set points from a weighted average of the "
    "training images closest to the input (the *local mean*) towards the input.\n"
    "3. Give such a model a clean training image and the local mean is the image itself, so it predicts "
    "almost no noise; give it a new image and the local mean is a blend of look-alikes, so it predicts "
    "a lot of noise.\n"
    "4. SimA asks the model once, at one small timestep, and uses the size of the predicted noise as the "
    "score: small means \"probably seen in training\".\n"
    "5. Comparing that score with the scores of images the model certainly never saw gives a p-value and "
    "a verdict at a false-positive rate you choose."
)

st.header("The formulas")
st.markdown("Images live in [−1, 1]. The forward process mixes an image with Gaussian noise ε at timestep t:")
st.latex(r"x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon\sim\mathcal N(0, I)")
st.markdown("For a training set $\\{y_1,\\dots,y_N\\}$ the noise predictor with the lowest possible training loss is")
st.latex(r"\varepsilon^*(x,t) = \frac{x - \sqrt{\bar\alpha_t}\,\mu_t(x)}{\sqrt{1-\bar\alpha_t}},\qquad \mu_t(x) = \sum_i w_i(x)\,y_i")
st.latex(r"w_i(x) = \operatorname{softmax}_i\!\left(-\frac{\lVert x-\sqrt{\bar\alpha_t}\,y_i\rVert^2}{2\,(1-\bar\alpha_t)}\right),\qquad N_\text{eff}(x) = \frac{1}{\sum_i w_i(x)^2}")
st.markdown("SimA's score is the size of the model's prediction at the clean image, one query:")
st.latex(r"s_\text{SimA}(x_0, t) = \lVert \varepsilon_\theta(x_0, t) \rVert_4^4 \qquad(\text{member when small})")
st.markdown("The model's own estimate of the local mean needs no training data (Tweedie's formula):")
st.latex(r"\hat x_0(x,t) = \frac{x - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x,t)}{\sqrt{\bar\alpha_t}}")
st.markdown("With membership scores $r_1..r_n$ of $n$ known non-members, an image with score $s$ gets the empirical p-value")
st.latex(r"p = \frac{1 + \#\{j : r_j \ge s\}}{1 + n},\qquad \text{flag as member when } p \le \alpha \text{ (the target FPR)}")

st.header("How to read each plot")
st.markdown(
    "- **Distributions** (Check an image, Audit, Timestep explorer): orange bars are training members, blue "
    "bars images the model never saw, on a log axis. The further apart, the more the model leaks. A black "
    "line is the image you are checking.\n"
    "- **Noise norm against t**: the bands hold the middle half of members and of non-members at each "
    "timestep; your image's line shows which band it follows. The gap is widest at moderately small t.\n"
    "- **ROC curve**: each point is a threshold; up and to the left is better, the dotted diagonal is "
    "guessing. AUC is the area under it: the chance that a random member scores as more member-like than a "
    "random non-member.\n"
    "- **Log-log ROC**: the same curve stretched near zero false positives, where an attack must work to "
    "matter (\"TPR at 1% FPR\": the share of members caught while flagging at most 1% of non-members).\n"
    "- **AUC and TPR against t**: how the signal depends on the timestep; the dashed line is the current "
    "t, the star the t chosen on the selection half.\n"
    "- **Local mean panels**: the image, the weighted average of its nearest training images, the model's "
    "own estimate, and their differences (dark = equal). For a member at small t all are the same picture.\n"
    "- **Neighbour weights** and **effective neighbours**: how many training images the local mean "
    "really averages; 1 means the image is (almost) a training image.\n"
    "- **Compare attacks**: AUC against model queries per image; up and to the left finds more for less."
)

st.header("The protocol, and why the numbers are honest")
st.markdown(
    "Members and non-members are each split in half with a fixed seed. The timestep is chosen on one half "
    "and every metric is reported on the other, with 95% bootstrap intervals (members and non-members "
    "resampled separately). TPR at 1% FPR uses only thresholds whose realised FPR is at most 1%, and is "
    "reported as *not measurable* when there are fewer than 100 non-members."
)

st.header("What a verdict cannot tell you")
st.markdown(
    "- A p-value is **not** the probability that the image was in the training set. It says how rarely "
    "images the model never saw score this member-like.\n"
    "- At a target FPR of α, about α of all images the model never saw are flagged anyway: one flag among "
    "many checks is expected.\n"
    "- The reference non-members must come from the same kind of images as yours; a photo unlike the "
    "reference set can look unusual for reasons that have nothing to do with training.\n"
    "- A near-duplicate of a training image (re-encoded, cropped, a frame from the same video) can be "
    "flagged although the file itself was never used.\n"
    "- *Not flagged* is not proof of absence. Models that generalise well, large training sets, and "
    "latent models whose autoencoder's posterior noise hides each image (see the Latent bottleneck page) "
    "leak less; a member can look ordinary.\n"
    "- With n reference non-members the smallest possible p-value is 1/(n+1): a verdict at α below that "
    "cannot be made, and the app says so instead of guessing."
)

st.header("Source")
st.markdown(
    "Qu, Moyer and Rao, *Score-based Membership Inference on Diffusion Models* (arXiv 2509.25003, 2025), "
    "which introduces SimA. The baselines are PIA, SecMI, the loss attack and PFAMI. The bundled demos are "
    "small models trained on scikit-learn's handwritten digits, so every answer can be checked against "
    "the known training set. Nothing here needs the internet."
)
