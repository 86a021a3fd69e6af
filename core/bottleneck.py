"""The latent bottleneck study: what benchmarks/latent.py measured, and what follows from it.

The study (rows of SimA leakage, reconstruction error and sample quality against the
autoencoder's KL weight beta, the pixel model as the reference, and the pixel model's learning
curve) is written by the benchmark; this module reads it and words its conclusion, so that the
docs and the app say the same thing from the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import SimaError

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "latent.json"


def load_study(path: str | Path = STUDY) -> dict:
    """The study's JSON; a clear error when it has not been measured here."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise SimaError(f"{path} is missing: run `python benchmarks/latent.py` to measure the study.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SimaError(f"{path} is not a readable study ({exc}); rerun `python benchmarks/latent.py`.") from None
    if not payload.get("rows") or "pixel" not in payload:
        raise SimaError(f"{path} holds no study rows; rerun `python benchmarks/latent.py`.")
    return payload


def _apart(a: dict, b: dict) -> bool:
    return a["ci_high"] < b["ci_low"] or b["ci_high"] < a["ci_low"]


@dataclass(frozen=True)
class Direction:
    beta_low: float
    beta_high: float
    auc_low: float
    auc_high: float
    #: whether the 95% CIs of the two ends of the curve do not overlap
    distinguishable: bool
    #: Kendall's tau of AUC against beta over all rows (+1: leakage rises with beta, -1: falls)
    kendall_tau: float
    pixel_auc: float
    #: betas whose AUC CI lies wholly below the pixel model's
    below_pixel: tuple[float, ...]

    @property
    def change(self) -> float:
        return self.auc_high - self.auc_low

    def sentence(self) -> str:
        ends = "distinguishable" if self.distinguishable else "not distinguishable"
        return (f"From beta = {self.beta_low:g} to {self.beta_high:g}, SimA's AUC goes from {self.auc_low:.3f} to "
                f"{self.auc_high:.3f} ({self.change:+.3f}; the two ends' 95% intervals are {ends}); Kendall's tau "
                f"of AUC against beta is {self.kendall_tau:+.2f}. The pixel model's AUC is {self.pixel_auc:.3f}.")


def posterior_mean_series(payload: dict) -> dict | None:
    """The study's second series (diffusion models trained on posterior means) in the shape
    :func:`direction` takes, or None when it was not measured."""
    rows = payload.get("rows_posterior_mean")
    return {"rows": rows, "pixel": payload["pixel"]} if rows else None


def direction(payload: dict) -> Direction:
    rows = sorted(payload["rows"], key=lambda r: r["beta"])
    aucs = [r["auc"] for r in rows]
    order = sum((b > a) - (b < a) for i, a in enumerate(aucs) for b in aucs[i + 1:])
    pixel = payload["pixel"]
    return Direction(
        beta_low=rows[0]["beta"], beta_high=rows[-1]["beta"], auc_low=rows[0]["auc"], auc_high=rows[-1]["auc"],
        distinguishable=_apart(rows[0], rows[-1]), kendall_tau=order / max(1, len(aucs) * (len(aucs) - 1) // 2),
        pixel_auc=pixel["auc"], below_pixel=tuple(r["beta"] for r in rows if r["ci_high"] < pixel["ci_low"]),
    )


#: A latent model "keeps its quality" when its samples' precision and recall are each at least
#: this share of the pixel model's.
QUALITY_KEPT = 0.9


def quality_kept(row: dict, pixel: dict) -> bool:
    q, p = row["quality"], pixel["quality"]
    return q["precision"] >= QUALITY_KEPT * p["precision"] and q["recall"] >= QUALITY_KEPT * p["recall"]


def _against(row: dict, pixel: dict) -> str:
    if row["ci_high"] < pixel["ci_low"]:
        return f"below the pixel model's {pixel['auc']:.3f} (intervals apart)"
    if row["ci_low"] > pixel["ci_high"]:
        return f"above the pixel model's {pixel['auc']:.3f} (intervals apart)"
    return f"not distinguishable from the pixel model's {pixel['auc']:.3f}"


def quality_kept_rows(payload: dict) -> list[dict]:
    """The rows (by beta) whose samples kept the pixel model's quality (:func:`quality_kept`)."""
    return [r for r in sorted(payload["rows"], key=lambda r: r["beta"]) if quality_kept(r, payload["pixel"])]


def least_leaky_kept(payload: dict) -> dict | None:
    """The row with the lowest AUC among those that kept their quality; None when none did."""
    return min(quality_kept_rows(payload), key=lambda r: r["auc"], default=None)


def _betas(rows: list[dict]) -> str:
    return ", ".join(f"{r['beta']:g}" for r in rows)


def _recalls(rows: list[dict]) -> str:
    return ", ".join(f"{r['quality']['recall']:.2f}" for r in rows)


def recommendation(payload: dict) -> str:
    """What a model trainer should take from the measured curve, whichever way it went."""
    d = direction(payload)
    rows = sorted(payload["rows"], key=lambda r: r["beta"])
    pixel = payload["pixel"]
    good, best = quality_kept_rows(payload), least_leaky_kept(payload)
    parts = []
    if best is not None:
        parts.append(
            f"Of the latent models whose samples kept at least {QUALITY_KEPT:.0%} of the pixel model's precision and "
            f"recall (beta = {_betas(good)}), the least leaky is beta = {best['beta']:g}: "
            f"AUC {best['auc']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}], {_against(best, pixel)}.")
    else:
        parts.append(f"No latent model kept {QUALITY_KEPT:.0%} of the pixel model's sample precision and recall.")
    below = [r for r in rows if r["beta"] in d.below_pixel]
    if not below:
        parts.append("No latent model leaked measurably less than the pixel model: on these models the bottleneck is "
                     "not a defence to rely on.")
    elif all(not quality_kept(r, pixel) for r in below):
        parts.append(f"Leakage measurably below the pixel model's came only with beta = "
                     f"{_betas(below)}, where the samples lost their quality (recall "
                     f"{_recalls(below)}): there the bottleneck protects the "
                     "members by destroying the model.")
    else:
        parts.append(f"Leakage measurably below the pixel model's came with beta = "
                     f"{_betas(below)}; the largest beta whose samples are still good "
                     "enough for you is the defence this curve supports.")
    means = posterior_mean_series(payload)
    if means:
        m = direction(means)
        measured = (f"Trained on posterior means instead of samples, the same autoencoders gave AUC {m.auc_low:.3f} at "
                    f"beta = {m.beta_low:g} and {m.auc_high:.3f} at {m.beta_high:g}")
        if m.distinguishable and m.change < 0:
            parts.append(measured + ": a larger beta lowered leakage there too.")
        else:
            parts.append(measured + ": there beta gave no protection, so whatever the KL weight hides reaches the "
                         "members only through the posterior noise the diffusion model trains on; a trainer who "
                         "feeds it posterior means should not count on beta.")
    parts.append("Whatever you choose, audit the model you trained: these are small models on one split.")
    return " ".join(parts)


def curve_sentence(payload: dict) -> str:
    """The pixel demo's learning curve in one sentence: leakage against training length."""
    curve = payload.get("curve") or []
    if len(curve) < 2:
        return ""
    first, last = curve[0], curve[-1]
    peak = max(curve, key=lambda p: p["auc"])
    above = next((p for p in curve if p["ci_low"] > 0.5), None)
    start = (f"SimA first separates members from held-out images (AUC interval above 0.5) after {above['step']:,} steps"
             if above else "SimA never separates members from held-out images distinguishably")
    return (f"{start}; its AUC goes from {first['auc']:.3f} at {first['step']:,} steps to {last['auc']:.3f} at "
            f"{last['step']:,} (peak {peak['auc']:.3f} at {peak['step']:,}).")
