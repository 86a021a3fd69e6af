"""SimA-MC's two reductions compared on the bundled demos, to justify its default.

    python benchmarks/sima_mc.py            # every unconditional demo, ~1 minute each at one thread
    python benchmarks/sima_mc.py --report   # only rewrite the docs section from the JSON

SimA-MC draws k noises, queries eps_theta(x_t(eps_k), t) for each and reduces them either as
the mean of the k norms ("mean_norm") or as the norm of the mean prediction ("norm_of_mean", the
quantity docs/methods.md writes, and the default since this measurement). For each model both reductions are
computed at the t its card chose (``core.scoring.calibrate``: SimA's t from the selection half,
never from these images) on the report half only, with the same seed and so the same noise
draws, and compared by a paired, stratified bootstrap of the AUC difference on the same images
(``core.metrics.compare``). Writes benchmarks/results/sima_mc.json and the "SimA-MC reduction"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from common import RESULTS, card_report_half, describe_machine, machine, replace_section, save_results

from core import demo_names, load_model  # noqa: E402
from core.attacks import SimAMC  # noqa: E402
from core.cache import ScoreCache  # noqa: E402
from core.metrics import compare, evaluate, membership_scores  # noqa: E402
from core.scoring import statistics_at  # noqa: E402

SECTION = "SimA-MC reduction"
OUT = RESULTS / "sima_mc.json"
REDUCTIONS = ("mean_norm", "norm_of_mean")
K = 10


def measure(name: str, seed: int) -> dict:
    model, calibration, members, heldout = card_report_half(name)
    images = torch.cat([members, heldout])
    labels = np.r_[np.ones(len(members)), np.zeros(len(heldout))]
    started = time.perf_counter()
    scores = {}
    for reduce in REDUCTIONS:
        attack = SimAMC(k=K, reduce=reduce)
        # cached, so a rerun (or a run after more demos are added) recomputes nothing it has
        stats = statistics_at(model, images, attack, calibration.t, seed=seed, cache=ScoreCache()).numpy()
        scores[reduce] = membership_scores(stats, attack.member_when)
    paired = compare(labels, scores["mean_norm"], scores["norm_of_mean"], names=REDUCTIONS, seed=seed)
    row = {"model": name, "t": calibration.t, "n_members": len(members), "n_heldout": len(heldout), "k": K,
           "comparison": paired.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
    for reduce in REDUCTIONS:
        auc = evaluate(membership_scores=scores[reduce], labels=labels, seed=seed).auc
        row[reduce] = {"auc": auc.value, "ci_low": auc.ci_low, "ci_high": auc.ci_high}
    return row


def markdown(payload: dict) -> str:
    lines = [
        f"Measured by `python benchmarks/sima_mc.py` on {payload['date']}: {describe_machine(payload['machine'])}.",
        "",
        f"SimA-MC with k = {K} noise draws, at each model's card t, on its report half; the same noise draws for both "
        "reductions, compared by a paired bootstrap of the AUC difference (mean_norm minus norm_of_mean) on the same images.",
        "",
        "| model | t | mean_norm AUC [95% CI] | norm_of_mean AUC [95% CI] | difference [95% CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        a, b, d = r["mean_norm"], r["norm_of_mean"], r["comparison"]["auc_difference"]
        lines.append(
            f"| {r['model']} | {r['t']} | {a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | "
            f"{b['auc']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] | {d['value']:+.3f} [{d['ci_low']:+.3f}, "
            f"{d['ci_high']:+.3f}] | {r['comparison']['verdict']} |"
        )
    lines += ["", default_sentence(payload)]
    return "\n".join(lines)


def default_sentence(payload: dict) -> str:
    """Why the default is what it is, from the measured verdicts."""
    verdicts = [r["comparison"]["verdict"] for r in payload["rows"]]
    better = sum(v == "mean_norm > norm_of_mean" for v in verdicts)
    worse = sum(v == "norm_of_mean > mean_norm" for v in verdicts)
    tied = len(verdicts) - better - worse
    text = (f"mean_norm is stronger on {better} model(s), norm_of_mean on {worse}, and {tied} are not distinguishable at 95%. ")
    default = SimAMC().reduce
    if better > worse:
        return text + f"The measurements favour mean_norm (the default is {default})."
    if worse > better:
        return text + f"The measurements favour norm_of_mean (the default is {default})."
    return text + f"Neither is measurably better (the default is {default})."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated demo names (default: the unconditional demos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only rewrite the docs section from the JSON")
    args = parser.parse_args(argv)
    if args.report:
        replace_section(SECTION, markdown(json.loads(OUT.read_text())))
        return 0
    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else [
        n for n in demo_names() if not load_model(n).conditional]
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "seed": args.seed, "rows": []}
    for name in names:
        payload["rows"].append(measure(name, args.seed))
        r = payload["rows"][-1]
        print(f"{name}: mean_norm {r['mean_norm']['auc']:.3f}, norm_of_mean {r['norm_of_mean']['auc']:.3f}, "
              f"{r['comparison']['verdict']}", flush=True)
    save_results(OUT, payload, SECTION, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
