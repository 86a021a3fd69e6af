"""Reliability on hostile and random inputs (issue 7): nothing may crash, nothing may be silently wrong.

    python benchmarks/reliability.py           # 500 random inputs of each family
    python benchmarks/reliability.py --n 50    # a short run

Regenerates the hostile corpus of benchmarks/hostile.py in a temporary folder and runs every case
through ``core.data.load_images`` and through the real ``sima score`` (each file alone in one
driver process, and the whole corpus in one ``python -m core.cli`` process). Then random
inputs, seeded with numpy: random and damaged byte strings and random valid images through
``core.images.load_image``, random score/label arrays through ``core.metrics.evaluate``, and
random audits through the audit protocol (``core.audit.split_halves`` and ``assemble_result``).

An input is handled when it gives a valid result (a finite tensor of the model's shape in
[-1, 1]; metrics equal to a brute-force count) or is refused with a one-line message (naming
the file, for files). Anything else is crashed: another exception, a traceback, an unclear
message or a wrong number. Writes docs/reliability.md and benchmarks/results/reliability.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from core import metrics  # noqa: E402
from core.audit import assemble_result, split_halves  # noqa: E402
from core.data import load_images  # noqa: E402
from core.images import load_image  # noqa: E402
from core.errors import DataError, ImageError  # noqa: E402
from hostile import (  # noqa: E402
    LOADED,
    REFUSED,
    SIZE,
    by_file,
    judge_cli,
    judge_loaded,
    random_pixels,
    score_all,
    score_each,
    write_corpus,
    write_models,
)

RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
DOC = ROOT / "docs" / "reliability.md"
HANDLED, CRASHED = ("loaded", "refused", "defined"), "crashed"


def _crash(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()


# ----------------------------------------------------------------------------- the corpus


def corpus_through_loader(folder: Path, cases) -> list[dict]:
    """Each corpus file alone through load_images, for the model its cases aim at."""
    rows = []
    for name, file_cases in by_file(cases).items():
        channels = file_cases[0].channels
        try:
            loaded = load_images([folder / name], channels=channels, size=SIZE)
        except Exception as error:  # load_images must not raise for a file that exists
            rows += [_case_row(case, CRASHED, _crash(error), [f"raised {_crash(error)}"]) for case in file_cases]
            continue
        for case in file_cases:
            problems = judge_loaded([case], _only(loaded, case.id), channels)
            if case.id in loaded.ids:
                outcome, text = LOADED, "; ".join(loaded.notes[loaded.ids.index(case.id)]) or "(no notes)"
            else:
                mine = [p.message for p in loaded.errors if p.message.startswith(f"{case.id}: ")]
                outcome, text = (REFUSED, mine[0]) if len(mine) == 1 else (CRASHED, "no one-line message")
            rows.append(_case_row(case, outcome, text, problems))
    return rows


def _only(loaded, image_id: str):
    """The part of a LoadedImages that concerns one id (an archive holds several)."""
    keep = [i for i, found in enumerate(loaded.ids) if found == image_id]
    return type(loaded)(
        loaded.images[keep], [loaded.ids[i] for i in keep], [loaded.notes[i] for i in keep],
        [p for p in loaded.errors if p.message.startswith(f"{image_id}: ")],
    )


def _case_row(case, outcome: str, text: str, problems: list[str]) -> dict:
    return {
        "id": case.id, "file": case.file, "kind": case.kind, "input": case.input,
        "channels": case.channels, "expected": case.outcome, "expect": case.expect,
        "outcome": outcome, "message_or_note": text, "as_expected": not problems, "problems": problems,
    }


def cli_jobs(folder: Path, cases, models: dict[int, Path]) -> list[tuple[Path, Path]]:
    return [(folder / name, models[group[0].channels]) for name, group in by_file(cases).items()]


def judge_cli_runs(cases, each, whole) -> dict:
    groups = by_file(cases)
    per_file = []
    for (name, group), run in zip(groups.items(), each):
        problems = judge_cli(group, run)
        per_file.append({
            "file": name, "exit": run.code, "expected_exit": 2 if any(c.outcome == REFUSED for c in group) else 0,
            "traceback": _traceback(run), "as_expected": not problems, "problems": problems,
        })
    whole_problems = judge_cli(cases, whole)
    scored = json.loads(whole.stdout) if whole.stdout.strip().startswith("[") else []
    return {
        "per_file": per_file,
        "whole": {
            "files": len(groups), "exit": whole.code, "scored": len(scored),
            "named_on_stderr": sum(line.startswith("warning: skipped ") for line in whole.stderr.splitlines()),
            "traceback": _traceback(whole), "as_expected": not whole_problems, "problems": whole_problems,
        },
    }


def _traceback(run) -> bool:
    return run.code is None or "Traceback" in run.stdout + run.stderr


# ----------------------------------------------------------------------------- random files

# the formats that can hold each mode, so that every decoder sees every mode it supports
FORMATS = {
    "1": ("PNG", "TIFF", "BMP"),
    "L": ("PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP"),
    "LA": ("PNG", "TIFF"),
    "P": ("PNG", "TIFF", "GIF", "BMP"),
    "RGB": ("PNG", "TIFF", "JPEG", "BMP", "WEBP"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "CMYK": ("TIFF", "JPEG"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
}
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
              b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"qoif")


def random_image(rng: np.random.Generator) -> tuple[bytes, str]:
    """A valid image of a random mode, size and format (sometimes animated or EXIF-rotated)."""
    mode = str(rng.choice(sorted(FORMATS)))
    fmt = str(rng.choice(FORMATS[mode]))
    if rng.random() < 0.1:  # extreme aspect ratios
        width, height = (int(rng.integers(1, 4)), int(rng.integers(100, 600)))[:: int(rng.choice([1, -1]))]
    else:
        width, height = int(rng.integers(1, 65)), int(rng.integers(1, 65))
    image = random_pixels(rng, mode, width, height)
    options: dict = {"lossless": True} if fmt == "WEBP" else {}
    if fmt in ("GIF", "PNG", "WEBP") and rng.random() < 0.2:
        options.update(save_all=True, append_images=[random_pixels(rng, mode, width, height)], duration=50)
    if fmt == "JPEG" and rng.random() < 0.3:
        exif = Image.Exif()
        exif[0x0112] = int(rng.integers(1, 9))
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue(), f"{mode} {width}x{height} {fmt}"


def random_bytes(rng: np.random.Generator) -> tuple[bytes, str]:
    """Pure noise, a format signature then noise, or a valid image cut short and damaged."""
    family = int(rng.integers(0, 3))
    if family == 0:
        return rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes(), "noise"
    if family == 1:
        signature = SIGNATURES[int(rng.integers(0, len(SIGNATURES)))]
        noise = rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
        return signature + noise, "signature + noise"
    payload = bytearray(random_image(rng)[0])
    for _ in range(int(rng.integers(0, 9))):
        payload[int(rng.integers(0, len(payload)))] = int(rng.integers(0, 256))
    if rng.random() < 0.5:  # flipped bytes only: some of these still decode
        return bytes(payload), "damaged image"
    return bytes(payload[: max(1, len(payload) - int(rng.integers(0, len(payload))))]), "damaged, cut image"


def try_image(payload: bytes, name: str, channels: int, size: tuple[int, int]) -> tuple[str, str]:
    """(outcome, detail) of one load_image call."""
    try:
        tensor, notes = load_image(payload, name=name, channels=channels, size=size)
    except ImageError as error:
        message = str(error)
        if message.startswith(f"{name}: ") and "\n" not in message:
            return "refused", message
        return CRASHED, f"unclear message: {message!r}"
    except Exception as error:  # the thing this benchmark hunts for
        return CRASHED, _crash(error)
    ok = (tuple(tensor.shape) == (channels, *size) and tensor.dtype == torch.float32
          and bool(torch.isfinite(tensor).all()) and -1 <= float(tensor.min()) <= float(tensor.max()) <= 1)
    if not ok or any("\n" in note for note in notes):
        return CRASHED, f"bad tensor {tuple(tensor.shape)} or notes {notes}"
    return "loaded", "; ".join(notes)


def fuzz_files(n: int, seed: int, make) -> dict:
    rng = np.random.default_rng(seed)
    tally, crashes = {}, []
    for i in range(n):
        payload, what = make(rng)
        channels, size = int(rng.choice([1, 3])), (int(rng.integers(1, 17)), int(rng.integers(1, 17)))
        outcome, detail = try_image(payload, f"input-{i}", channels, size)
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome == CRASHED:
            crashes.append({"input": i, "what": what, "detail": detail})
    return {"tried": n, **tally, "crash_examples": crashes[:10]}


# ----------------------------------------------------------------------------- random metrics


def random_labelled(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels with ties, constants, one class, NaN and infinities now and then."""
    kind = rng.random()
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    if kind < 0.1:
        labels[:] = int(rng.integers(0, 2))
    scores = {0: rng.normal(size=n) + labels, 1: rng.integers(0, 4, n).astype(float),
              2: np.full(n, rng.normal())}[int(rng.integers(0, 3))]
    if n and rng.random() < 0.1:
        scores[int(rng.integers(0, n))] = rng.choice([np.nan, np.inf, -np.inf])
    return scores, labels


def brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    members, nonmembers = scores[labels == 1], scores[labels == 0]
    wins = (members[:, None] > nonmembers).sum() + 0.5 * (members[:, None] == nonmembers).sum()
    return wins / (members.size * nonmembers.size)


def _measurable(n_nonmembers: int) -> bool:
    return n_nonmembers >= 100


def check_metrics(scores: np.ndarray, labels: np.ndarray, seed: int) -> tuple[str, str]:
    expect_error = (labels.sum() in (0, labels.size)) or not np.isfinite(scores).all()
    try:
        result = metrics.evaluate(membership_scores=scores, labels=labels, n_bootstrap=20, seed=seed)
    except DataError as error:
        if not expect_error:
            return CRASHED, f"refused a valid input: {error}"
        return ("refused", str(error)) if "\n" not in str(error) else (CRASHED, "multi-line message")
    except Exception as error:
        return CRASHED, _crash(error)
    if expect_error:
        return CRASHED, "a number for an input with one class or NaN"
    tpr = result.tpr_at_1pct_fpr
    right = (abs(result.auc.value - brute_auc(scores, labels)) < 1e-12
             and tpr.measurable == _measurable(int((labels == 0).sum()))
             and (tpr.value is None or 0 <= tpr.value <= 1))
    return ("defined", "") if right else (CRASHED, "wrong AUC or TPR measurability")


def fuzz_metrics(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tally, crashes = {}, []
    for i in range(n):
        size = int(rng.integers(0, 6)) if rng.random() < 0.2 else int(rng.integers(6, 400))
        scores, labels = random_labelled(rng, size)
        outcome, detail = check_metrics(scores, labels, i)
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome == CRASHED:
            crashes.append({"input": i, "detail": detail})
    return {"tried": n, **tally, "crash_examples": crashes[:10]}


def check_audit(rng: np.random.Generator, seed: int) -> tuple[str, str]:
    """One random audit: t chosen on the selection half, metrics on the report half."""
    n_m, n_n = (int(rng.integers(0, 5)) if rng.random() < 0.2 else int(rng.integers(5, 260)) for _ in range(2))
    width, select = int(rng.integers(1, 4)), str(rng.choice(["auc", "tpr1"]))
    columns = [random_labelled(rng, n_m + n_n)[0] for _ in range(width)]
    stats = np.stack(columns, axis=1) if n_m + n_n else np.empty((0, width))
    labels = np.repeat([1, 0], [n_m, n_n])
    try:
        sel = split_halves(n_m, n_n, seed)
        result = assemble_result(
            statistics=stats, labels=labels, selection_half=sel, timesteps=list(range(width)),
            member_when="lower", select=select, seed=seed, n_bootstrap=20, ids=[str(i) for i in range(n_m + n_n)],
            attack="sima", attack_params={}, model_fingerprint="f", model_name="random", queries_per_sample=1,
            wall_time_s=0.0,
        )
    except DataError as error:
        sel_nonmembers = n_n // 2
        expected = (min(n_m, n_n) < 2 or not np.isfinite(stats).all()
                    or (select == "tpr1" and not _measurable(sel_nonmembers)))
        return ("refused", str(error)) if expected else (CRASHED, f"refused a valid audit: {error}")
    except Exception as error:
        return CRASHED, _crash(error)
    report = ~sel
    scores = -stats[report, result.timesteps.index(result.chosen_t)]
    right = (abs(result.metrics.auc.value - brute_auc(scores, labels[report])) < 1e-12
             and result.metrics.tpr_at_1pct_fpr.measurable == _measurable(int((labels[report] == 0).sum())))
    return ("defined", "") if right else (CRASHED, "wrong report-half AUC or TPR measurability")


def fuzz_audits(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tally, crashes = {}, []
    for i in range(n):
        outcome, detail = check_audit(rng, i)
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome == CRASHED:
            crashes.append({"input": i, "detail": detail})
    return {"tried": n, **tally, "crash_examples": crashes[:10]}


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def summary_rows(result: dict) -> list[dict]:
    rows = []
    loader = result["corpus"]["loader"]
    rows.append(_summary("hostile corpus through the loader", len(loader),
                         [r["outcome"] for r in loader], sum(not r["as_expected"] for r in loader)))
    cli = result["corpus"]["cli"]
    runs = cli["per_file"] + [cli["whole"]]
    crashed = sum(r["traceback"] or r["exit"] not in (0, 2) for r in runs)
    rows.append({"family": "`sima score` runs (each file alone + whole corpus)", "tried": len(runs),
                 "handled": len(runs) - crashed, "crashed": crashed,
                 "not as expected": sum(not r["as_expected"] for r in runs)})
    for key, label in [("random_bytes", "random and damaged byte strings"), ("random_images", "random valid images"),
                       ("random_metrics", "random score/label arrays (metrics)"), ("random_audits", "random audits")]:
        family = result[key]
        rows.append({"family": label, "tried": family["tried"], "handled": family["tried"] - family.get(CRASHED, 0),
                     "crashed": family.get(CRASHED, 0), "not as expected": family.get(CRASHED, 0),
                     **{k: family.get(k, 0) for k in HANDLED}})
    return rows


def _summary(label: str, tried: int, outcomes: list[str], unexpected: int) -> dict:
    crashed = outcomes.count(CRASHED)
    return {"family": label, "tried": tried, "handled": tried - crashed, "crashed": crashed,
            "not as expected": unexpected, **{k: outcomes.count(k) for k in HANDLED}}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: dict) -> str:
    exits = {r["file"]: r["exit"] for r in result["corpus"]["cli"]["per_file"]}
    whole = result["corpus"]["cli"]["whole"]
    rows = result["summary"]
    totals = {k: sum(r[k] for r in rows) for k in ("tried", "handled", "crashed")}
    m = result["machine"]
    lines = [
        "# Reliability: hostile files, random inputs and edge cases",
        "",
        "Generated by `benchmarks/reliability.py` (issue 7); do not edit by hand. Every input below is built",
        "in code (benchmarks/hostile.py and the script's seeded generators); no binary file is committed.",
        "",
        f"Command: `{result['command']}` ({result['n']} random inputs per family, seed {result['seed']},"
        f" {result['wall_s']:.0f} s).",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), Python {m['python']},"
        f" torch {m['torch']}, Pillow {m['pillow']}, numpy {m['numpy']}; load average {m['load_average_1min']}.",
        "",
        "An input is **handled** when it gives a valid result (a finite tensor of the model's shape in [-1, 1];",
        "metrics equal to a brute-force pairwise count, TPR@1%FPR measurable exactly when there are 100 or more",
        "non-members) or is **refused** with a one-line message (for a file, one that starts with its name).",
        "Anything else is **crashed**: any other exception, a traceback, an unclear message or a wrong number.",
        "",
        "## Summary",
        "",
        "| inputs | tried | handled | loaded / defined | refused | crashed | not as expected |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        good = r.get("loaded", 0) + r.get("defined", 0)
        refused = r.get("refused", "")
        lines.append(f"| {r['family']} | {r['tried']} | {r['handled']} | {good if 'loaded' in r else ''} | {refused} |"
                     f" {r['crashed']} | {r['not as expected']} |")
    lines.append(f"| **total** | **{totals['tried']}** | **{totals['handled']}** | | | **{totals['crashed']}** | |")
    lines += [
        "",
        f"`sima score` over the whole corpus at once ({whole['files']} files): exit status {whole['exit']},"
        f" {whole['scored']} images scored, {whole['named_on_stderr']} bad images named on stderr,"
        f" {'a traceback' if whole['traceback'] else 'no traceback'}. Each file alone:"
        f" {sum(code == 0 for code in exits.values())} exited 0 (all its images good),"
        f" {sum(code == 2 for code in exits.values())} exited 2 (a bad image),"
        f" {sum(r['traceback'] for r in result['corpus']['cli']['per_file'])} printed a traceback.",
        "",
        "## The hostile corpus",
        "",
        f"Each file alone through `core.data.load_images` for an {SIZE}x{SIZE} model (3 channels unless the case says",
        "otherwise) and through `sima score --json FILE`. `sima score` exits 2 when any image of the file is bad",
        "(the good ones are still scored), 0 when all are good.",
        "",
        "| case | input | id | outcome | message or note | `sima score` exit |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["corpus"]["loader"]:
        flag = "" if r["as_expected"] else " (NOT AS EXPECTED)"
        lines.append(f"| {_cell(r['kind'])} | {_cell(r['input'])} | `{r['id']}` | {r['outcome']}{flag} |"
                     f" {_cell(r['message_or_note'])} | {exits.get(r['file'])} |")
    for key, label in [("random_bytes", "random and damaged byte strings"), ("random_images", "random valid images"),
                       ("random_metrics", "random metrics"), ("random_audits", "random audits")]:
        for example in result[key]["crash_examples"]:
            lines.append(f"\nCrash ({label}): {_cell(json.dumps(example))}")
    return "\n".join(lines) + "\n"


def run(n: int, seed: int) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sima-reliability-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "corpus"
        cases = write_corpus(folder)
        models = write_models(tmp / "models")
        files = [folder / name for name in by_file(cases)]
        with ThreadPoolExecutor(2) as pool:  # the two CLI processes run while this one fuzzes
            each = pool.submit(score_each, cli_jobs(folder, cases, models), tmp / "cache-each")
            whole = pool.submit(score_all, files, models[3], tmp / "cache-all")
            loader = corpus_through_loader(folder, cases)
            fuzz = {
                "random_bytes": fuzz_files(n, seed, random_bytes),
                "random_images": fuzz_files(n, seed + 1, random_image),
                "random_metrics": fuzz_metrics(n, seed + 2),
                "random_audits": fuzz_audits(n, seed + 3),
            }
            cli = judge_cli_runs(cases, each.result(), whole.result())
    result = {
        "command": "python benchmarks/reliability.py" + ("" if n == 500 else f" --n {n}")
                   + ("" if seed == 0 else f" --seed {seed}"),
        "n": n, "seed": seed, "machine": machine(), "corpus": {"loader": loader, "cli": cli}, **fuzz,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    result["summary"] = summary_rows(result)
    return result


def main(argv=None) -> int:
    # Pillow warns about every damaged tag it skips; damaged files are the point here
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="random inputs per family (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed of the random inputs (default 0)")
    args = parser.parse_args(argv)
    result = run(args.n, args.seed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(markdown(result))
    for row in result["summary"]:
        print(f"{row['family']}: tried {row['tried']}, handled {row['handled']}, crashed {row['crashed']},"
              f" not as expected {row['not as expected']}")
    print(f"Wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    failed = sum(row["crashed"] + row["not as expected"] for row in result["summary"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
