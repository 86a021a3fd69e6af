"""Words and orderings the pages show about core results: attack captions, comparisons of
estimates, the most and least member-like samples, a latent demo's KL weight."""

from __future__ import annotations

import numpy as np

from core.attacks import get_attack


def attack_title(name: str) -> str:
    """How people write the attack's name ("SimA", "PFAMI")."""
    return get_attack(name).title


def statistic_label(name: str) -> str:
    """What the attack's raw statistic is, for axis labels and table headers."""
    return get_attack(name).statistic_label


def attack_summary(name: str, t: int) -> str:
    """'SimA: ... (1 model query per image; members score lower)' for captions."""
    attack = get_attack(name)
    n = attack.queries_per_sample(t)
    return (
        f"{attack.blurb} ({n} model {'query' if n == 1 else 'queries'} per image; "
        f"members score {attack.member_when})"
    )


def extremes(result, t: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k most and the k least member-like samples at t (by membership score)."""
    order = np.argsort(-result.membership_scores(t), kind="stable")
    k = min(k, len(order))
    return order[:k], order[::-1][:k]


def kl_weight(manifest: dict | None) -> float | None:
    """The beta-VAE's KL weight from a latent demo's manifest, when it records one."""
    config = (manifest or {}).get("config") or {}
    value = (config.get("vae_train") or {}).get("beta")
    return float(value) if isinstance(value, (int, float)) else None
