"""What every benchmark script shares: paths, the machine description, the markdown report."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """The facts a reader needs to compare figures across machines."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": None if load is None else round(load, 2),
    }


def describe_machine(info: dict) -> str:
    return (f"{info['cpu_count']} CPU cores ({info['processor']}), {info['torch_threads']} torch threads, "
            f"torch {info['torch']}, Python {info['python']}; 1-minute load average {info['load_average_1min']} at the start")


def replace_section(title: str, body: str, path: Path = DOC) -> None:
    """Replace (or append) the level-2 section ``## title`` of a markdown file, keeping the rest."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`; rerun it to check.\n"
    header = f"## {title}\n"
    lines = text.splitlines(keepends=True)
    if header in lines:
        start = lines.index(header)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [header, "\n", body.rstrip("\n") + "\n", "\n"]
        text = "".join(lines)
    else:
        text = text.rstrip("\n") + "\n\n" + header + "\n" + body.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def card_report_half(name: str) -> tuple:
    """(model, calibration, members, heldout) of a bundled demo: its card's calibration
    (``core.scoring.calibrate``) and the member and held-out images that did not choose its t."""
    from core import load_model
    from core.datasets import demo_sets
    from core.scoring import calibrate

    model = load_model(name)
    calibration = calibrate(model)
    members, member_ids, heldout, heldout_ids = demo_sets(model)
    chose_t = set(calibration.selection_ids)
    keep_m = [i for i, x in enumerate(member_ids) if x not in chose_t]
    keep_h = [i for i, x in enumerate(heldout_ids) if x not in chose_t]
    return model, calibration, members[keep_m], heldout[keep_h]


def save_results(path: Path, payload: dict, section: str, body: str) -> None:
    """Write a benchmark's JSON and its section of the benchmarks doc, and say so."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    replace_section(section, body)
    print(f"wrote {path} and the '{section}' section of the benchmarks doc")


def replace_marked_block(path: Path, name: str, body: str) -> None:
    """Rewrite the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` of a file."""
    from core.cards import replace_marked

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = replace_marked(path.read_text(), start, end, f"{start}\n{body.strip()}\n{end}")
    if text is None:
        raise SystemExit(f"{path} has no {start} ... {end} block to rewrite.")
    path.write_text(text)
