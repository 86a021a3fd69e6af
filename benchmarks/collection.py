"""Validity and power of the collection test ("was my collection used?") on the bundled demos.

    python benchmarks/collection.py                 # 1,000 collections per size, two demos
    python benchmarks/collection.py --draws 200     # a short run
    python benchmarks/collection.py --report        # only rewrite the docs section from the JSON

For each model, t and the attack come from its model card (``core.scoring.calibrate``), and
the statistic of every member and held-out image of its own split is computed once at that t.
The images that chose t (the card audit's selection half) are left out everywhere. From the
rest (the report half):

- null: ``--draws`` times per size n, a seeded random n of the held-out images is the
  collection and the other held-out images are the reference (so the two never overlap); the
  false-positive rate is the fraction of p-values at or below alpha, with its binomial
  standard error sqrt(alpha (1 - alpha) / draws). A valid test sits within about 2 SE of alpha.
- power: ``--draws`` collections of n members against all held-out images of the report half.

p-values are those of ``core.collection.collection_test`` (exact or normal, as the CLI picks).
Writes benchmarks/results/collection.json and the "Collection test" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from common import RESULTS, card_report_half, describe_machine, machine, replace_section, save_results

from core.attacks import get_attack  # noqa: E402
from core.collection import collection_test, exact_false_positive_rate, images_needed  # noqa: E402
from core.metrics import membership_scores  # noqa: E402
from core.scoring import statistics_at  # noqa: E402

SECTION = "Collection test"
OUT = RESULTS / "collection.json"
MODELS = ("digits-ddpm-memorising", "digits-ddpm-generalising")
SIZES = (5, 20, 100)
ALPHAS = (0.05, 0.01)


def model_scores(name: str) -> dict:
    """Membership scores of the report-half members and held-out images at the card's t."""
    model, calibration, members, heldout = card_report_half(name)
    attack = get_attack(calibration.attack)
    start = time.perf_counter()

    def scores(images: torch.Tensor) -> np.ndarray:
        return membership_scores(statistics_at(model, images, attack, calibration.t).numpy(), attack.member_when)

    return {
        "members": scores(members), "heldout": scores(heldout),
        "info": {"t": calibration.t, "attack": calibration.attack, "per_image_auc": calibration.per_image_auc,
                 "calibration": calibration.source, "n_members": len(members), "n_heldout": len(heldout),
                 "scoring_s": round(time.perf_counter() - start, 1)},
    }


def draw_p_values(collection_pool: np.ndarray, reference_pool: np.ndarray | None, n: int, draws: int,
                  rng: np.random.Generator) -> np.ndarray:
    """p-values of ``draws`` collections of n drawn from ``collection_pool``; the reference is
    ``reference_pool``, or (None) the rest of the collection pool."""
    out = np.empty(draws)
    for k in range(draws):
        picked = np.zeros(collection_pool.size, dtype=bool)
        picked[rng.choice(collection_pool.size, size=n, replace=False)] = True
        reference = collection_pool[~picked] if reference_pool is None else reference_pool
        out[k] = collection_test(collection_pool[picked], reference, n_bootstrap=0).p_value
    return out


def run(models, sizes, draws: int, seed: int) -> dict:
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "draws": draws, "seed": seed,
               "models": {}, "null_fpr": [], "power": []}
    for name in models:
        data = model_scores(name)
        info = data["info"]
        start = time.perf_counter()
        for n in sizes:
            # One generator per (model, size, kind), so a row can be rerun alone and come out the same.
            null = draw_p_values(data["heldout"], None, n, draws, np.random.default_rng([seed, n, 0]))
            power = draw_p_values(data["members"], data["heldout"], n, draws, np.random.default_rng([seed, n, 1]))
            for alpha in ALPHAS:
                fpr = float(np.mean(null <= alpha))
                se = math.sqrt(alpha * (1 - alpha) / draws)
                m = info["n_heldout"] - n
                payload["null_fpr"].append({
                    "model": name, "n": n, "m": m, "alpha": alpha, "fpr": fpr, "draws": draws,
                    "se": se, "within_2se": abs(fpr - alpha) <= 2 * se,
                    "exact_fpr": exact_false_positive_rate(n, m, alpha),
                })
                payload["power"].append({
                    "model": name, "n": n, "m": info["n_heldout"], "alpha": alpha,
                    "power": float(np.mean(power <= alpha)), "draws": draws,
                })
            print(f"{name} n={n}: FPR@0.05 {np.mean(null <= 0.05):.3f}, power@0.01 {np.mean(power <= 0.01):.3f}", flush=True)
        info["needed"] = {str(a): images_needed(info["per_image_auc"], a, m=info["n_heldout"]) for a in ALPHAS}
        # The power statement checked on real scores: collections of the closed-form size should
        # reach p < alpha about 80% of the time.
        info["power_at_needed"] = {}
        for alpha in ALPHAS:
            n = info["needed"][str(alpha)]
            if n is not None and n <= data["members"].size:
                p = draw_p_values(data["members"], data["heldout"], n, draws, np.random.default_rng([seed, n, 2]))
                info["power_at_needed"][str(alpha)] = float(np.mean(p < alpha))
        info["draws_s"] = round(time.perf_counter() - start, 1)
        payload["models"][name] = info
    payload["family"] = family_check(payload["null_fpr"])
    return payload


def family_check(rows: list[dict], level: float = 0.05) -> dict:
    """The null table judged as one family: each cell's deviation from alpha in binomial SEs, the
    Bonferroni bound that all cells of a valid test stay within with probability 1 - level, and the
    chance that a valid test leaves at least one cell outside 2 SE."""
    from statistics import NormalDist

    z = [(r["fpr"] - r["alpha"]) / r["se"] for r in rows]
    z_family = NormalDist().inv_cdf(1 - level / (2 * len(rows)))
    p_one = 2 * (1 - NormalDist().cdf(2))
    return {"cells": len(rows), "z": [round(v, 3) for v in z], "max_abs_z": max(abs(v) for v in z),
            "z_family": z_family, "within_family": all(abs(v) <= z_family for v in z),
            "p_any_outside": 1 - (1 - p_one) ** len(rows)}


def markdown(payload: dict) -> str:
    lines = [
        f"Measured by `python benchmarks/collection.py` on {payload['date']}: {describe_machine(payload['machine'])}.",
        "",
        f"t and attack from each model's card; images that chose t left out. Null: {payload['draws']:,} collections "
        "of held-out images per size, each tested against the other held-out images of the report half (m = "
        "pool - n); the false-positive rate should sit within 2 binomial standard errors of alpha (about 1 cell "
        "in 20 falls outside by chance). Power: as many collections of members of the report half, against all "
        "its held-out images. p-values from `core.collection.collection_test` (exact Mann-Whitney U up to "
        "10,000 pairs, else the tie-corrected normal approximation). The exact size is the test's true "
        "false-positive rate for untied scores, computed from U's exact null distribution "
        "(`core.collection.exact_false_positive_rate`), with no simulation noise.",
        "",
        "| model | n | m | alpha | false-positive rate | 2 SE | within 2 SE | exact size | power |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    power = {(r["model"], r["n"], r["alpha"]): r["power"] for r in payload["power"]}
    for r in payload["null_fpr"]:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['m']} | {r['alpha']:g} | {r['fpr']:.4f} | {2 * r['se']:.4f} | "
            f"{'yes' if r['within_2se'] else '**no**'} | {r['exact_fpr']:.4f} | "
            f"{power[(r['model'], r['n'], r['alpha'])]:.3f} |"
        )
    outside = [r for r in payload["null_fpr"] if not r["within_2se"]]
    worst = max(payload["null_fpr"], key=lambda r: abs(r["exact_fpr"] - r["alpha"]) / r["alpha"])
    family = family_check(payload["null_fpr"])
    lines += ["", f"{len(outside)} of {len(payload['null_fpr'])} measured false-positive rates lie outside 2 SE of alpha; "
              f"a valid test puts each cell outside with probability about 0.046, so at least one of "
              f"{family['cells']} outside happens in {100 * family['p_any_outside']:.0f}% of runs. Judged as one family "
              f"(Bonferroni over the {family['cells']} cells, two-sided 5%), every cell must lie within "
              f"{family['z_family']:.2f} SE: the largest deviation is {family['max_abs_z']:.2f} SE "
              f"({'within' if family['within_family'] else '**outside**'}). Each draw's p-value depends only on which "
              "ranks of the pool form the collection, a uniformly random subset, so the draws are independent and the "
              f"binomial SE is exact. The exact sizes, free of simulation noise, are within "
              f"{100 * abs(worst['exact_fpr'] - worst['alpha']) / worst['alpha']:.1f}% of alpha in every row."]
    lines += ["", "Per-image AUC (card audit, report half), the closed-form collection size for power 0.8, and the "
              "power measured on collections of that size (same draws count):", ""]
    for name, info in payload["models"].items():
        needed = ", ".join(
            f"{v if v is not None else 'none'} at alpha {a}"
            + (f" (measured power {info['power_at_needed'][a]:.3f})" if a in info["power_at_needed"] else "")
            for a, v in info["needed"].items()
        )
        lines.append(f"- {name}: SimA at t = {info['t']}, per-image AUC {info['per_image_auc']:.3f}; "
                     f"images needed: {needed} (against {info['n_heldout']} reference non-members).")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only rewrite the docs section from the JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        replace_section(SECTION, markdown(json.loads(OUT.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    payload = run(args.models.split(","), [int(n) for n in args.sizes.split(",")], args.draws, args.seed)
    save_results(OUT, payload, SECTION, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
