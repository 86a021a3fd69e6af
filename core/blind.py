"""The blind baseline: can the members be told from the non-members without the model?

Member and non-member sets that differ in distribution (another source, date, resolution or
compression) make every attack look strong. A classifier that never queries the diffusion
model measures that difference: when it separates the two sets, an attack's AUC reflects the
split as well as membership, by an amount nobody can tell (CopyMark, arXiv 2410.03640; Das et
al. 2024, "Blind baselines beat membership inference attacks for foundation models").

Features of each image in [-1, 1], per channel (C channels):

- the image area-averaged to 8 x 8 (64 C values): layout and brightness;
- a 16-bin histogram of the channel's values over [-1, 1], as fractions (16 C): the intensity
  histogram of a grey image, the colour histograms of an RGB one;
- the mean absolute difference between horizontally and between vertically neighbouring
  pixels (2 C): sharpness, noise and compression artefacts.

They are computed a chunk of images at a time, so a streamed audit keeps only these numbers.
The classifier (standardised features, L2-regularised logistic regression with balanced class
weights, from scikit-learn) is fitted on the audit's selection half and scored on its report
half; the AUC's CI is the percentile bootstrap of the report half, the fitted classifier held
fixed. Everything is deterministic: the same images, split and seed give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core import metrics

GRID = 8
BINS = 16
FEATURES = (
    f"logistic regression (scikit-learn, standardised features, C=1, balanced classes) on each channel's "
    f"{GRID}x{GRID} area-downsampled pixels, {BINS}-bin intensity histogram and mean absolute horizontal and "
    "vertical neighbour differences; fitted on the selection half, scored on the report half"
)


def features(images: torch.Tensor) -> np.ndarray:
    """Model-free features (N, C * (GRID**2 + BINS + 2)) of [-1, 1] images (N, C, H, W)."""
    x = images.detach().to(device="cpu", dtype=torch.float32)
    n, c = x.shape[:2]
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, GRID).reshape(n, -1)
    # one small call per (image, channel): a vectorised bin count would need an index per pixel
    hist = torch.stack([
        torch.stack([torch.histc(x[i, k], bins=BINS, min=-1.0, max=1.0) for k in range(c)]) for i in range(n)
    ]).reshape(n, -1) / float(x[0, 0].numel())
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(2, 3)) if x.shape[3] > 1 else torch.zeros(n, c)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(2, 3)) if x.shape[2] > 1 else torch.zeros(n, c)
    return torch.cat([pooled, hist, dx, dy], dim=1).numpy().astype(np.float64)


@dataclass(frozen=True)
class BlindBaseline:
    """The blind classifier's AUC on the report half, with its CI and what it looked at."""

    auc: float
    ci_low: float | None
    ci_high: float | None
    features: str

    @property
    def separable(self) -> bool:
        """True when the CI excludes 0.5: the two sets differ without the model."""
        return self.ci_low is not None and (self.ci_low > 0.5 or self.ci_high < 0.5)

    def describe(self) -> str:
        ci = "" if self.ci_low is None else f" [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        return f"AUC {self.auc:.3f}{ci}"

    def sentence(self) -> str:
        """One line for any audit report: the warning when separable, else what was checked."""
        if self.separable:
            return self.warning()
        if self.ci_low is None:
            return f"Blind baseline (no model queries): {self.describe()}, no CI computed, so the split was not checked."
        return (f"Blind baseline (no model queries): {self.describe()}; its CI covers 0.5, so members and "
                "non-members are not told apart without the model.")

    def warning(self) -> str:
        return (f"Members and non-members are distinguishable without the model (a blind classifier on pixels and "
                f"histograms reaches {self.describe()} on the report half), so the two sets differ in distribution and "
                "the attack's AUC overstates membership leakage by an unknown amount.")

    def to_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "ci_low": self.ci_low, "ci_high": self.ci_high, "features": self.features}

    @classmethod
    def from_dict(cls, data: dict | None) -> "BlindBaseline | None":
        """The stored baseline, or None for results written before audits had one."""
        if not data:
            return None
        return cls(float(data["auc"]), data.get("ci_low"), data.get("ci_high"), str(data.get("features", "")))


def blind_baseline(
    feature_rows: np.ndarray, labels: np.ndarray, selection_half: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0,
) -> BlindBaseline:
    """Fit the blind classifier on the selection half and measure its AUC on the report half.

    ``feature_rows`` come from ``features`` (one row per sample, in the audit's order),
    ``labels`` are 1 for members and 0 for non-members.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(feature_rows, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    sel = np.asarray(selection_half, dtype=bool)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    classifier.fit(x[sel], y[sel])
    scores = classifier.decision_function(x[~sel])
    auc = metrics.evaluate(membership_scores=scores, labels=y[~sel], n_bootstrap=n_bootstrap, seed=seed).auc
    return BlindBaseline(auc=float(auc.value), ci_low=auc.ci_low, ci_high=auc.ci_high, features=FEATURES)
