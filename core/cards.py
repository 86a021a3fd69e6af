"""Audit tables in markdown, and the model cards (README.md) whose audit section they fill."""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path
from typing import Sequence

CARD_START, CARD_END = "<!-- sima-audit:start -->", "<!-- sima-audit:end -->"


def _fmt(estimate: dict) -> str:
    if estimate["value"] is None:
        return "n/a"
    if estimate.get("ci_low") is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def results_table(results: Sequence) -> str:
    """A markdown table of audit results (``AuditResult``), one row per attack ("-" for the t of an
    attack that ignores it); with a condition column (caption or empty) when the model was conditional."""
    conditioned = any("condition" in r.extra for r in results)
    extra_head, extra_rule = ("condition | ", "---|") if conditioned else ("", "")
    rows = [
        f"| attack | {extra_head}chosen t | AUC | ASR | TPR@1%FPR | TPR@0.1%FPR | queries at t | wall time (s) |",
        f"|---|{extra_rule}---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.metrics.to_dict()
        condition = f"{r.extra.get('condition', '')} | " if conditioned else ""
        rows.append(
            f"| {r.attack} | {condition}{r.chosen_t if r.uses_timestep else '-'} | {_fmt(m['auc'])} | {_fmt(m['asr'])} | {_fmt(m['tpr_at_1pct_fpr'])} | "
            f"{_fmt(m['tpr_at_0_1pct_fpr'])} | {r.queries_per_sample} | {r.wall_time_s:.1f} |"
        )
    return "\n".join(rows)


NO_RESAMPLES = "No paired comparison of the attacks: it needs bootstrap resamples (--bootstrap 1 or more)."


def comparisons(results: Sequence) -> list:
    """SimA (else the first attack) against each other attack, by a paired bootstrap on the shared
    report half (``metrics.Comparison``); none for one attack or without bootstrap resamples."""
    from core.audit import compare_results

    if len(results) < 2 or results[0].n_bootstrap < 1:
        return []
    first = next((r for r in results if r.attack == "sima"), results[0])
    return [compare_results(first, r) for r in results if r is not first]


def comparison_lines(results: Sequence) -> list[str]:
    """One sentence per pair of :func:`comparisons`."""
    if len(results) > 1 and results[0].n_bootstrap < 1:
        return [NO_RESAMPLES]
    return [c.sentence() for c in comparisons(results)]


def audit_notes(results: Sequence) -> list[str]:
    """The lines under the results table: the pairwise comparisons, then the blind baseline."""
    lines = comparison_lines(results)
    baseline = results[0].blind_baseline
    if baseline is not None:
        lines.append(("Warning: " if baseline.separable else "") + baseline.sentence())
    return lines


def write_card(path: Path, results: Sequence, command: str) -> None:
    """Replace the audit section of a model card (README.md) with these results, or append one."""
    import torch

    r = results[0]
    body = "\n".join([
        CARD_START,
        f"Written by `{command}` on {date.today().isoformat()} ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}).",
        f"{r.n_members} members, {r.n_nonmembers} held-out images; t chosen on the selection half by {r.selection}; "
        f"metrics on the report half with 95% bootstrap CIs ({r.n_bootstrap} resamples, seed {r.seed}). "
        "Queries are model evaluations per sample at the chosen t; wall time is this run's, and statistics already "
        "in the score cache were not recomputed.",
        "",
        results_table(results),
        "",
        *(f"{line}  " for line in audit_notes(results)),
        CARD_END,
    ])
    text = path.read_text() if path.is_file() else ""
    replaced = replace_marked(text, CARD_START, CARD_END, body)
    path.write_text(replaced if replaced is not None else text.rstrip() + ("\n\n" if text else "") + "## Audit\n\n" + body + "\n")


def replace_marked(text: str, start: str, end: str, body: str) -> str | None:
    """``text`` with everything from marker ``start`` to marker ``end`` replaced by ``body`` (which
    carries the markers again); None when the markers are missing."""
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    return head + body + rest.split(end, 1)[1]
