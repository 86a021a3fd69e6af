"""Attack strength and cost of SimA and the baselines, through the same audit code path.

    python benchmarks/attacks.py            # every bundled demo model, every attack
    python benchmarks/attacks.py --quick    # 100 members + 100 held-out per demo, t in 0:100:20
    python benchmarks/attacks.py --report   # only rewrite the tables from benchmarks/results/attacks.json
    python benchmarks/attacks.py --backfill-scores  # report-half scores for rows run before they were kept

For every model and attack, ``core.audit.run_audit`` splits members and held-out images 50/50
(seeded), chooses t by AUC on the selection half and reports AUC, ASR and TPR@1%FPR with 95%
bootstrap CIs on the report half (docs/methods.md, section 5). Beside them: the chosen t, the queries
per sample at that t, and the wall time per 1,000 images, both for the whole timestep sweep
and for one pass at the chosen t alone (measured on up to 256 images and scaled).

A text-to-image demo (digits-sd-captioned) is audited in caption mode, as ``sima audit
--members demo`` audits it: every image conditioned on its own caption from the demo's
manifest (``core.datasets.demo_captions``); by default it also runs the conditional attacks
(gap, clid), which compare each caption with the empty prompt.

Each row's report-half membership scores at its chosen t go to benchmarks/results/
attack_scores.npz, and every ordering between two attacks of a model comes from a paired,
stratified bootstrap of their AUC difference on those same samples (``core.metrics.compare``):
"A > B" only when its 95% CI excludes 0. The published rows have no per-sample data, so no
ordering is claimed for them, and the table says so.

Writes benchmarks/results/attacks.json (attacks-quick.json with --quick; models not re-run
keep their earlier entries), the scores file, the "Attacks" section of docs/benchmarks.md and
the README table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from common import DOC, RESULTS, ROOT, machine, replace_marked_block, replace_section

from core import demo_names, load_model  # noqa: E402
from core.attacks import ALL_ATTACK_NAMES, ATTACK_NAMES, CONDITIONAL_ATTACK_NAMES, parse_attacks  # noqa: E402
from core.audit import DEFAULT_TIMESTEPS, encode_batched, image_statistics, parse_timesteps, run_audit, split_halves  # noqa: E402
from core.hashing import row_digests  # noqa: E402
from core.metrics import auc as point_auc, compare, membership_scores  # noqa: E402

SECTION = "Attacks"
README = ROOT / "README.md"
#: Timing pass at the chosen t: this many images at most, scaled to 1,000.
TIMING_IMAGES = 256

#: The SimA authors' table (AUC / TPR@1%FPR, best over t), for comparison.
PUBLISHED = {
    "DDPM CIFAR-10": {"sima": (.905, .359), "pia": (.919, .295), "secmi": (.897, .334), "loss": (.847, .241), "pfami": (.803, .082)},
    "DDPM CIFAR-100": {"sima": (.899, .388), "pia": (.896, .288), "secmi": (.886, .300), "loss": (.822, .196), "pfami": (.771, .084)},
    "DDPM STL10-U": {"sima": (.963, .728), "pia": (.963, .663), "secmi": (.952, .662), "loss": (.914, .477), "pfami": (.837, .170)},
    "DDPM CelebA": {"sima": (.829, .209), "pia": (.822, .184), "secmi": (.815, .146), "loss": (.760, .152), "pfami": (.702, .081)},
    "LDM ImageNet": {"sima": (.561, .020), "pia": (.568, .021), "secmi": (.569, .023), "loss": (.479, .006), "pfami": (.488, .006)},
}


# ----------------------------------------------------------------------------- data


def subsample(images: torch.Tensor, ids: list[str], n: int | None, seed: int) -> tuple[torch.Tensor, list[str]]:
    """A seeded subset of n images (all of them when n is None or not smaller)."""
    if n is None or n >= len(images):
        return images, ids
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return images[keep], [ids[i] for i in keep]


# -------------------------------------------------------------------------- the audits


def seconds_per_1000_at(model, attack, images: torch.Tensor, t: int, seed: int, batch_size: int | None,
                        cond: list[str] | None = None) -> float:
    """Wall time of one pass of ``attack`` at t over (up to TIMING_IMAGES) images, per 1,000 images
    (``cond``: each image's caption, for a text-to-image model audited in caption mode)."""
    sample = images[:TIMING_IMAGES]
    keys = row_digests(sample)
    encoded = encode_batched(model, sample)
    start = time.perf_counter()
    attack.sweep(model, encoded, [t], seed=seed, keys=keys, batch_size=batch_size,
                 cond=None if cond is None else cond[:TIMING_IMAGES])
    return (time.perf_counter() - start) / len(sample) * 1000


def attacks_for(model, names: str | None) -> list:
    """The attacks asked for; by default every general attack, and on a conditional model also
    the conditional ones (which compare the caption with the empty prompt)."""
    if names is None:
        conditional = getattr(model, "conditional", False)
        names = ",".join(ATTACK_NAMES + (CONDITIONAL_ATTACK_NAMES if conditional else ()))
    return parse_attacks(names)


def audit_model(model, members, member_ids, heldout, heldout_ids, args, grid: list[int],
                captions=None) -> Iterator[tuple[dict, dict]]:
    """One result row per attack, with its report-half scores (see store_scores), yielded as each finishes.

    ``captions`` (a CaptionTable by id, from ``core.datasets.demo_captions``) audits a text-to-image
    model in caption mode: each image conditioned on its own caption, as ``sima audit --members demo``
    does; None leaves a conditional model on the empty prompt.
    """
    n_images = len(members) + len(heldout)
    member_cond = None if captions is None else captions.for_ids(member_ids)
    heldout_cond = None if captions is None else captions.for_ids(heldout_ids)
    for attack in attacks_for(model, args.attacks):
        print(f"  {attack.describe()} ...", flush=True)
        result = run_audit(model, members, heldout, attack=attack, timesteps=grid, seed=args.seed,
                           member_ids=member_ids, nonmember_ids=heldout_ids, batch_size=args.batch_size,
                           n_bootstrap=args.bootstrap, member_cond=member_cond, nonmember_cond=heldout_cond)
        m = result.metrics.to_dict()
        t = result.chosen_t
        row = {
            "attack": attack.name,
            "attack_params": result.attack_params,
            "member_when": attack.member_when,
            "condition": result.extra.get("condition"),
            "uses_timestep": attack.uses_timestep,
            "chosen_t": t if attack.uses_timestep else None,
            "auc": m["auc"],
            "asr": m["asr"],
            "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"],
            "report_members": result.metrics.n_members,
            "report_nonmembers": result.metrics.n_nonmembers,
            "queries_per_sample_at_t": attack.queries_at(model, t),
            "queries_per_sample_grid": attack.queries_for_grid(grid),
            "sweep_wall_s": result.wall_time_s,
            "sweep_s_per_1000_images": result.wall_time_s / n_images * 1000,
            "s_per_1000_images_at_t": seconds_per_1000_at(
                model, attack, torch.cat([members, heldout]), t, args.seed, args.batch_size,
                None if captions is None else member_cond + heldout_cond),
            "per_t": result.per_t,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": machine()["load_average_1min"],
        }
        print(f"    AUC {row['auc']['value']:.3f}  TPR@1%FPR {row['tpr_at_1pct_fpr']['value']}  t={t}  "
              f"{row['sweep_wall_s']:.0f} s", flush=True)
        report = result.report_mask()
        yield row, {"scores": result.membership_scores()[report], "labels": result.labels[report],
                    "ids": np.asarray(result.ids, dtype=str)[report]}


# --------------------------------------------------------------------------- reporting


def _ci(estimate: dict) -> str:
    if estimate.get("measurable") is False or estimate["value"] is None:
        return "n/a"
    text = f"{estimate['value']:.3f}"
    if estimate["ci_low"] is not None:
        text += f" [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"
    return text


DISPLAY = {"sima": "SimA", "pia": "PIA", "secmi": "SecMI", "loss": "Loss", "pfami": "PFAMI"}


PAIRS = [("sima", "pia"), ("sima", "secmi")] + [(hi, lo) for hi in ("sima", "pia", "secmi") for lo in ("loss", "pfami")]
#: Every pair a paired test is run on: the published ordering's, and SimA against each other attack.
COMPARED = PAIRS + [("sima", a) for a in ALL_ATTACK_NAMES if a != "sima" and ("sima", a) not in PAIRS]


def _ordering(rows: list[dict], comparisons: list[dict]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(reversed pairs, pairs not shown apart, pairs not compared, attacks not run) of the published
    ordering, over the pairs whose two attacks were both run.

    A pair counts by the 95% CI of its paired AUC difference: reversed when the CI lies below 0,
    shown apart when above. Point AUCs alone never order a pair.
    """
    auc = {r["attack"]: r["auc"]["value"] for r in rows if r["auc"]["value"] is not None}
    missing = [DISPLAY[a] for a in DISPLAY if a not in auc]
    tested = {(c["attack_a"], c["attack_b"]): c["auc_difference"] for c in comparisons}
    reversed_, unshown, uncompared = [], [], []
    for hi, lo in PAIRS:
        if hi not in auc or lo not in auc:
            continue
        if (hi, lo) in tested:
            d = tested[(hi, lo)]
            below, above = d["ci_high"] < 0, d["ci_low"] > 0
        else:
            uncompared.append(f"{DISPLAY[hi]} vs {DISPLAY[lo]}")
            continue
        if below:
            reversed_.append(f"{DISPLAY[hi]} < {DISPLAY[lo]}")
        elif lo in ("loss", "pfami") and not above:
            # Only the strict "above Loss and PFAMI" pairs need a shown difference.
            unshown.append(f"{DISPLAY[hi]} ≈ {DISPLAY[lo]}")
    return reversed_, unshown, uncompared, missing


def _point_only(rows: list[dict], comparisons: list[dict]) -> bool:
    """True for one of our models run before per-sample scores were stored: no pair can be tested."""
    run = {r["attack"] for r in rows}
    return not comparisons and any(a in run and b in run for a, b in COMPARED)


def ordering_note(rows: list[dict], comparisons: list[dict]) -> str:
    """Whether SimA is not below PIA and SecMI, and all three are above Loss and PFAMI."""
    if _point_only(rows, comparisons):
        return ("No paired test is possible here: this model's per-sample scores were not stored, so no ordering "
                "of its attacks is claimed.")
    reversed_, unshown, uncompared, missing = _ordering(rows, comparisons)
    basis = "by a paired bootstrap of each AUC difference on the same report half (95% CI)"
    extra = ""
    if uncompared:
        extra += f" Not compared (no per-sample scores stored): {', '.join(uncompared)}."
    if missing:
        extra += f" ({', '.join(missing)} not run, so the pairs with {'it' if len(missing) == 1 else 'them'} are unchecked.)"
    if reversed_:
        return f"The published ordering does not hold here {basis}: " + "; ".join(reversed_ + unshown) + "." + extra
    if unshown:
        return (f"No pair is reversed {basis}, but these are not distinguishable at 95%, so the ordering is not shown: "
                + "; ".join(unshown) + "." + extra)
    if missing or uncompared:
        return f"No pair that was compared is reversed {basis}." + extra
    return (f"The published ordering holds here {basis}: SimA is not below PIA or SecMI, and all three are above "
            "Loss and PFAMI.")


def ordering_short(rows: list[dict], comparisons: list[dict]) -> str:
    if _point_only(rows, comparisons):
        return "not tested (no per-sample scores stored)"
    reversed_, unshown, uncompared, missing = _ordering(rows, comparisons)
    if reversed_:
        text = "no: " + ", ".join(reversed_)
    elif unshown:
        text = "not shown: " + ", ".join(unshown)
    else:
        text = "yes"
    if uncompared:
        text = ("partly" if text == "yes" else text) + "; not compared: " + ", ".join(uncompared)
    if missing:
        text = ("partly: " if text == "yes" else text + "; ") + ", ".join(missing) + " not run"
    return text


def comparisons_table(entry: dict) -> list[str]:
    """Markdown lines: each paired comparison of this model, or why there are none."""
    comparisons = entry.get("comparisons") or []
    run = {r["attack"] for r in entry["attacks"]}
    done = {(c["attack_a"], c["attack_b"]) for c in comparisons}
    skipped = [f"{DISPLAY.get(a, a)} vs {DISPLAY.get(b, b)}" for a, b in COMPARED if a in run and b in run and (a, b) not in done]
    lines = []
    if comparisons:
        c0 = comparisons[0]
        lines += [f"Paired comparisons on the same report half ({c0['n_members']} members, {c0['n_nonmembers']} "
                  f"non-members), each attack at its own chosen t; stratified bootstrap, {c0['n_bootstrap']} resamples "
                  f"(seed {c0['seed']}), 95% CIs, two-sided p. A pair is ordered only when the CI of its AUC "
                  "difference excludes 0.", "",
                  "| A vs B | AUC A - B | p | TPR@1%FPR A - B | p | verdict (AUC) |", "|---|---|---|---|---|---|"]
        for c in comparisons:
            lines.append(f"| {c['a']} vs {c['b']} | {_diff(c['auc_difference'])} | {_p(c['auc_difference'])} | "
                         f"{_diff(c['tpr_at_1pct_fpr_difference'])} | {_p(c['tpr_at_1pct_fpr_difference'])} | {c['verdict']} |")
        lines.append("")
    if skipped:
        lines += [("Not compared" if comparisons else "No paired comparison") + " (this model's per-sample scores "
                  "were not stored, so no paired test is possible): " + ", ".join(skipped) + ".", ""]
    return lines


def _diff(d: dict) -> str:
    if not d["measurable"] or d["value"] is None:
        return "n/a"
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _p(d: dict) -> str:
    return "" if d["p_value"] is None else f"{d['p_value']:.3f}"


# ------------------------------------------------------------------- per-sample scores


def scores_path(quick: bool) -> Path:
    """Report-half membership scores of every row, the data the paired comparisons are computed from."""
    return RESULTS / ("attack_scores-quick.npz" if quick else "attack_scores.npz")


def load_scores(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def store_scores(path: Path, model_name: str, fingerprint: str, attack: str, sample: dict) -> None:
    """Add one attack's report-half scores to the file (keys "model|attack", "model|labels", "model|ids",
    "model|fingerprint"); a model's other entries are dropped when its fingerprint or samples changed."""
    stored = load_scores(path)
    prefix = f"{model_name}|"
    same = (str(stored.get(prefix + "fingerprint", "")) == fingerprint
            and np.array_equal(stored.get(prefix + "ids", np.array([])), sample["ids"]))
    if not same:
        stored = {k: v for k, v in stored.items() if not k.startswith(prefix)}
    stored.update({prefix + "fingerprint": np.array(fingerprint), prefix + "ids": sample["ids"],
                   prefix + "labels": np.asarray(sample["labels"], dtype=np.int8), prefix + attack: sample["scores"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **stored)
    tmp.replace(path)


def _reproduces(scores: np.ndarray, labels: np.ndarray, row: dict) -> bool:
    """Whether scores give the row's AUC to within one member/non-member pair.

    A pair whose two scores differ only by float rounding may order differently when the
    network runs in other batches (SecMI's shared inversion path does); anything more than one
    such pair means the scores are not the row's.
    """
    n1 = int(np.sum(labels == 1))
    one_pair = 1.0 / (n1 * (len(labels) - n1))
    return abs(point_auc(scores=scores, labels=labels) - row["auc"]["value"]) <= one_pair + 1e-12


def _matching_scores(stored: dict, name: str, row: dict) -> np.ndarray | None:
    """The stored scores of a row, when they exist and reproduce the row's AUC (else they are stale)."""
    scores = stored.get(f"{name}|{row['attack']}")
    labels = stored.get(f"{name}|labels")
    if scores is None or labels is None or row["auc"]["value"] is None:
        return None
    return scores if _reproduces(scores, labels, row) else None


def add_comparisons(payload: dict, path: Path, n_bootstrap: int, seed: int) -> None:
    """Set each model's "comparisons": a paired bootstrap of every pair in COMPARED whose two attacks
    have stored report-half scores matching their rows."""
    stored = load_scores(path)
    for name, entry in payload["models"].items():
        scores = {r["attack"]: _matching_scores(stored, name, r) for r in entry["attacks"]}
        labels = stored.get(f"{name}|labels")
        entry["comparisons"] = [
            {"attack_a": a, "attack_b": b, **compare(
                scores_a=scores[a], scores_b=scores[b], labels=labels, names=(DISPLAY.get(a, a), DISPLAY.get(b, b)),
                n_bootstrap=n_bootstrap, seed=seed).to_dict()}
            for a, b in COMPARED if scores.get(a) is not None and scores.get(b) is not None
        ]


#: The README table's columns: the published attacks, and SimA-MC, which the paper does not tabulate.
HEADLINE_COLUMNS = {**DISPLAY, "sima-mc": "SimA-MC"}


def headline(payload: dict) -> str:
    """The README table: AUC and TPR@1%FPR with 95% CIs of each attack on our models, and the paper's points."""
    def cell(rows: dict, name: str) -> str:
        r = rows.get(name)
        if r is None or r["auc"]["value"] is None:
            return "not run"
        return f"{_ci(r['auc'])}<br>{_ci(r['tpr_at_1pct_fpr'])}"

    def published(row: dict, name: str) -> str:
        return f"{row[name][0]:.3f}<br>{row[name][1]:.3f}" if name in row else "not published"

    lines = ["| model | " + " | ".join(HEADLINE_COLUMNS.values()) + " | SimA ≥ PIA, SecMI; all > Loss, PFAMI (AUC) |",
             "|---" * (len(HEADLINE_COLUMNS) + 2) + "|"]
    for name, entry in payload["models"].items():
        rows = {r["attack"]: r for r in entry["attacks"]}
        verdict = ordering_short(entry["attacks"], entry.get("comparisons") or [])
        mode = ", caption mode" if entry.get("condition") else ""
        lines.append(f"| {name} (ours{mode}) | " + " | ".join(cell(rows, a) for a in HEADLINE_COLUMNS) + f" | {verdict} |")
    for name, row in PUBLISHED.items():
        # an ordering is claimed only from a paired test, which the paper's point AUCs do not allow
        verdict = "not tested (published point AUCs)"
        lines.append(f"| {name} (published) | " + " | ".join(published(row, a) for a in HEADLINE_COLUMNS) + f" | {verdict} |")
    lines += ["", "Each cell: AUC, then TPR@1%FPR. Ours: the report half, with 95% bootstrap CIs. Published: the "
              "SimA authors' point values, best over t on the evaluation labels. "
              "Ordering, ours: each pair by a paired bootstrap of its AUC difference on the same report half "
              "(95% CI; \"≈\": not distinguishable at 95%). Published rows: point AUCs only; without their "
              "per-sample scores no paired test is possible, so no ordering is claimed for them."]
    return "\n".join(lines)


def markdown(payload: dict) -> str:
    lines = [
        f"Produced by `python benchmarks/attacks.py{' --quick' if payload['quick'] else ''}` "
        f"({payload['date']}, {payload['machine']['cpu_count']} CPU cores, torch {payload['machine']['torch']}). "
        "t is chosen by AUC on the selection half; AUC, ASR and TPR@1%FPR come from the report half with "
        "95% bootstrap CIs. Queries are model evaluations per sample: at the chosen t alone, and for the whole "
        "grid (SecMI shares one inversion path across the grid). Times are wall "
        "seconds per 1,000 images: one pass at the chosen t, and the whole sweep over the timestep grid. "
        "PFAMI ignores t (it averages over its own 10 steps), so it has no chosen t. Orderings between attacks "
        "come from paired bootstrap comparisons on the report-half scores kept in "
        "benchmarks/results/attack_scores.npz (for rows measured before scores were kept, recomputed by "
        "`--backfill-scores` at the recorded t and stored only where they reproduce the row's AUC to within one "
        "member/non-member pair: float rounding in batched network arithmetic can reorder one near-tied pair).",
        "",
    ]
    for name, entry in payload["models"].items():
        grid = entry["timesteps"]
        lines += [f"### {name}", "", entry["description"], "",
                  f"{entry['n_members']} members, {entry['n_heldout']} held-out; timesteps {grid[0]}..{grid[-1]} "
                  f"({len(grid)} values). Measured {entry['date']} with {entry['machine']['torch_threads']} torch "
                  f"thread(s), 1-minute load {entry['machine']['load_average_1min']} at the start.", ""]
        if entry.get("condition"):
            lines += [f"Text-to-image model, audited in caption mode ({entry['condition']}): every attack conditions "
                      "members and held-out images alike on their captions; gap and clid compare each caption with "
                      "the empty prompt.", ""]
        lines += ["| attack | t | AUC | ASR | TPR@1%FPR | queries at t | queries, grid | s / 1k images at t | s / 1k images, grid |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in entry["attacks"]:
            t = "-" if r["chosen_t"] is None else r["chosen_t"]
            lines.append(f"| {r['attack']} | {t} | {_ci(r['auc'])} | {_ci(r['asr'])} | {_ci(r['tpr_at_1pct_fpr'])} | "
                         f"{r['queries_per_sample_at_t']} | {r['queries_per_sample_grid']} | {r['s_per_1000_images_at_t']:.1f} | "
                         f"{r['sweep_s_per_1000_images']:.1f} |")
        lines += ["", *comparisons_table(entry), ordering_note(entry["attacks"], entry.get("comparisons") or []), ""]
    lines += ["### Beside the published figures (the SimA authors' table)", "", headline(payload), "",
              "The published figures pick each metric's best t on the evaluation labels; ours choose t on a "
              "separate half, so they are not optimistic in that way and are expected to be lower.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 members + 100 held-out per demo, t in 0:100:20, 200 bootstrap resamples")
    p.add_argument("--report", action="store_true", help="only rewrite the docs section and README table from the results file")
    p.add_argument("--backfill-scores", action="store_true",
                   help="store the report-half scores of rows run before they were kept (each attack at its recorded "
                        "t only, checked against the row's AUC), then redo the paired comparisons and the reports")
    p.add_argument("--models", default=None, help="comma-separated demo names (default: every bundled demo)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated attack names (default: every general attack, plus the conditional ones "
                        "on a conditional model)")
    p.add_argument("--timesteps", default=None, help="grid for the demos, e.g. 0:200:10 (default: the audit's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; 1 leaves a core free on a 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; 200 with --quick)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_quick = 100 if args.quick else None
    args.bootstrap = args.bootstrap or (200 if args.quick else 1000)
    grid = parse_timesteps(args.timesteps) if args.timesteps else (
        list(range(0, 101, 20)) if args.quick else list(DEFAULT_TIMESTEPS))
    out_file = RESULTS / ("attacks-quick.json" if args.quick else "attacks.json")
    run_info = {"quick": args.quick, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "seed": args.seed}

    def load_results() -> dict:
        # Re-read before each write: runs of different models or attacks may share the file.
        payload = json.loads(out_file.read_text()) if out_file.is_file() else {"models": {}}
        return {**payload, **run_info}

    if args.report:
        if not out_file.is_file():
            raise SystemExit(f"{out_file} does not exist yet: run the benchmark first.")
        write_reports(json.loads(out_file.read_text()), args.quick)
        return 0
    if args.backfill_scores:
        if not out_file.is_file():
            raise SystemExit(f"{out_file} does not exist yet: run the benchmark first.")
        payload = json.loads(out_file.read_text())
        backfill_scores(payload, args, n_quick)
        finish(payload, out_file, args)
        return 0
    names = args.models.split(",") if args.models else demo_names()
    if not names:
        raise SystemExit("Nothing to run: no bundled demo models are installed.")
    for name in names:
        model, members, mids, heldout, hids, description, captions = _demo(name, args, n_quick)
        print(f"{name}: {len(members)} members, {len(heldout)} held-out, {len(grid)} timesteps", flush=True)
        entry = {"description": description, "fingerprint": model.fingerprint, "timesteps": grid,
                 "n_members": len(members), "n_heldout": len(heldout),
                 "condition": None if captions is None else f"caption: each image's own, from {captions.source}",
                 "date": run_info["date"], "machine": run_info["machine"]}
        for row, sample in audit_model(model, members, mids, heldout, hids, args, grid, captions):
            store_scores(scores_path(args.quick), name, model.fingerprint, row["attack"], sample)
            payload = load_results()
            # Rows already there for the same model, data and grid are kept (an earlier run, or another
            # process auditing other attacks now), so attacks can be added a run at a time.
            before = payload["models"].get(name, {})
            same = all(before.get(k) == entry[k] for k in ("fingerprint", "timesteps", "n_members", "n_heldout", "condition"))
            rows = {r["attack"]: r for r in before.get("attacks", [])} if same else {}
            rows[row["attack"]] = row
            payload["models"][name] = {**entry, "attacks": [rows[a] for a in ALL_ATTACK_NAMES if a in rows]}
            RESULTS.mkdir(parents=True, exist_ok=True)
            _write_json(payload, out_file)
    finish(load_results(), out_file, args)
    return 0


def _write_json(payload: dict, out_file: Path) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file.with_suffix(".tmp").write_text(json.dumps(payload, indent=1) + "\n")
    out_file.with_suffix(".tmp").replace(out_file)


def finish(payload: dict, out_file: Path, args) -> None:
    """Paired comparisons from the stored scores into the results file, then the reports."""
    add_comparisons(payload, scores_path(args.quick), args.bootstrap, args.seed)
    _write_json(payload, out_file)
    write_reports(payload, args.quick)


def backfill_scores(payload: dict, args, n_quick: int | None) -> None:
    """Report-half scores for the rows of bundled demos that have none stored.

    The audit's split depends only on the set sizes and the seed, and each statistic only on
    (seed, image, t), so scoring the report half at a row's recorded chosen t reproduces the
    scores its metrics came from; they are stored only when they reproduce the row's AUC (to
    within one member/non-member pair, see ``_reproduces``); a miss is reported, never stored.
    """
    path = scores_path(args.quick)
    for name, entry in payload["models"].items():
        stored = load_scores(path)
        todo = [r for r in entry["attacks"] if _matching_scores(stored, name, r) is None]
        if not todo:
            continue
        if name not in demo_names():
            print(f"{name}: not a bundled demo, its scores can only come from a new run (skipped)", flush=True)
            continue
        model, members, mids, heldout, hids, _, captions = _demo(name, args, n_quick)
        if model.fingerprint != entry["fingerprint"] or (len(members), len(heldout)) != (entry["n_members"], entry["n_heldout"]):
            print(f"{name}: the model or its split changed since the rows were measured (skipped)", flush=True)
            continue
        report = ~split_halves(len(members), len(heldout), args.seed)
        images = torch.cat([members, heldout])[torch.from_numpy(report)]
        labels = np.r_[np.ones(len(members), dtype=np.int64), np.zeros(len(heldout), dtype=np.int64)][report]
        ids = np.asarray(mids + hids, dtype=str)[report]
        cond = None if captions is None else [c for c, keep in zip(captions.for_ids(mids + hids), report) if keep]
        for row in todo:
            attack = parse_attacks(row["attack"])[0]
            t = row["chosen_t"] if attack.uses_timestep else entry["timesteps"][0]
            # An attack that shares work across t (SecMI's one inversion path) is scored on the row's
            # whole grid, as the audit did: alone at t its arithmetic differs in the last bits.
            grid = entry["timesteps"] if attack.shares_work_across_t else [t]
            start = time.perf_counter()
            stats = image_statistics(model, images, attack, grid, seed=args.seed, batch_size=args.batch_size,
                                     cond=cond)[:, grid.index(t)]
            scores = membership_scores(stats.numpy(), attack.member_when)
            got = point_auc(scores=scores, labels=labels)
            verdict = "stored" if _reproduces(scores, labels, row) else "NOT stored: the row's AUC is not reproduced"
            print(f"{name} {row['attack']} t={t}: AUC {got:.6f} (row {row['auc']['value']:.6f}), "
                  f"{time.perf_counter() - start:.0f} s, {verdict}", flush=True)
            if verdict == "stored":
                store_scores(path, name, model.fingerprint, row["attack"], {"scores": scores, "labels": labels, "ids": ids})


def write_reports(payload: dict, quick: bool) -> None:
    """The docs section (and, for a full run, the README table) from the results."""
    replace_section(SECTION, markdown(payload))
    if not quick:
        replace_marked_block(README, "attack-benchmark", headline(payload))
    print(f"wrote the '{SECTION}' section of {DOC}" + ("" if quick else f" and the table in {README}"))


def _demo(name: str, args, n: int | None):
    from core.datasets import demo_captions, demo_sets

    model = load_model(name, device=args.device)
    members, mids, heldout, hids = demo_sets(model)
    members, mids = subsample(members, mids, n, args.seed)
    heldout, hids = subsample(heldout, hids, n, args.seed + 1)
    description = (model.manifest or {}).get("demo") or model.info().describe()
    # A captioned demo is audited in caption mode, with the captions its manifest records.
    return model, members, mids, heldout, hids, description, demo_captions(model)


if __name__ == "__main__":
    raise SystemExit(main())
