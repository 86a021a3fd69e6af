"""How fast the explorer answers: page renders, slider redraws, and the first sweep.

Measures, against the issue's targets:

1. the first render of each page in a new session once the model is cached (target < 5 s),
   through Streamlit's AppTest, which runs the real page scripts;
2. a timestep-slider redraw with 1,000 samples in the sweep (target < 200 ms), median of
   several moves after the sweep is cached;
3. the full sweep of the memorising demo's split (256 members + 500 held-out) over 21
   timesteps, as the app runs it (run_audit with 1,000 bootstrap resamples; target < 60 s on
   2 cores). The batch-size calibration that precedes a model's first sweep is timed apart.

Wall-clock and process CPU seconds are both reported: on a shared machine a slow wall time
with a low CPU time means other processes held the cores. Writes
benchmarks/results/app.json and prints a markdown table.

    python benchmarks/app.py [--threads 2] [--quick]
    python benchmarks/app.py --estimates   # the Compare page's time estimates against real runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "app.json"
APP = str(ROOT / "explorer" / "app.py")
GRID = "0:200:10"
REDRAW_SAMPLES = 1_000
TARGETS = {"first_render_s": 5.0, "slider_redraw_ms": 200.0, "sweep_s": 60.0}


def _timed(fn):
    start, start_cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - start, time.process_time() - start_cpu


def first_renders(model: str, pages: list[str]) -> dict[str, float]:
    """Seconds for a new session's first run of each page, with model and sweep cached."""
    from streamlit.testing.v1 import AppTest

    os.environ["SIMA_EXPLORER_MODEL"] = model
    warm = AppTest.from_file(APP, default_timeout=900).run()  # loads the model into the cache
    for page in pages:
        warm.switch_page(f"views/{page}.py").run()
    times = {}
    for page in ["check"] + pages:
        at = AppTest.from_file(APP, default_timeout=900)
        start = time.perf_counter()
        at.run()
        if page != "check":
            at.switch_page(f"views/{page}.py").run()
        times[page] = time.perf_counter() - start
        assert not at.exception, [e.message for e in at.exception]
    return times


def slider_redraws(moves: int) -> tuple[list[float], int]:
    """Milliseconds per slider move on the timestep explorer with 1,000 samples in the sweep."""
    from streamlit.testing.v1 import AppTest

    from core.datasets import digits_images
    from explorer import sets, widgets

    images, ids = digits_images(16)
    half = REDRAW_SAMPLES // 2
    data = sets.labelled_set(images[:half], ids[:half], images[half:REDRAW_SAMPLES], ids[half:REDRAW_SAMPLES], "benchmark")
    # The empirical demo keeps the one-off sweep short; the redraw does not depend on the model.
    os.environ["SIMA_EXPLORER_MODEL"] = "digits-empirical"
    at = AppTest.from_file(APP, default_timeout=900).run()
    at.session_state[widgets.UPLOADED_SET] = {"signature": None, "spec": "digits-empirical", "data": data}
    at.session_state["explorer_data"] = widgets.UPLOADED
    at.switch_page("views/timesteps.py").run()  # computes and caches the sweep
    assert not at.exception, [e.message for e in at.exception]
    grid = at.select_slider(key="explorer_t").options
    times = []
    for i in range(moves):
        at.select_slider(key="explorer_t").set_value(int(grid[(i * 7 + 3) % len(grid)]))
        start = time.perf_counter()
        at.run()
        times.append(1000 * (time.perf_counter() - start))
        assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    return times, len(data)


def sweep(threads: int) -> dict:
    """The memorising demo's split over 21 timesteps, as the app computes it: through the score
    cache (empty at the start), which the page renders below then read."""
    import torch

    from core import load_model
    from core.cache import ScoreCache
    from core.audit import parse_timesteps, run_audit
    from core.batching import best_batch_size
    from core.datasets import demo_sets

    torch.set_num_threads(threads)
    model = load_model("digits-ddpm-memorising")
    members, member_ids, heldout, heldout_ids = demo_sets(model)
    batch, calibration_s, _ = _timed(lambda: best_batch_size(model))
    result, wall, cpu = _timed(lambda: run_audit(
        model, members, heldout, attack="sima", timesteps=parse_timesteps(GRID), seed=0,
        member_ids=member_ids, nonmember_ids=heldout_ids, n_bootstrap=1000, cache=ScoreCache(),
    ))
    n = len(members) + len(heldout)
    return {
        "samples": n, "timesteps": len(result.timesteps), "forward_passes": n * len(result.timesteps),
        "batch_size": batch, "calibration_s": round(calibration_s, 2), "sweep_s": round(wall, 2),
        "sweep_cpu_s": round(cpu, 2), "images_per_s": round(n * len(result.timesteps) / wall, 1),
        "auc": round(result.metrics.auc.value, 4), "chosen_t": result.chosen_t,
    }


ESTIMATES = OUT.parent / "compare-estimates.json"


def estimates(attacks: list[str], per_side: int) -> dict:
    """The Compare page's time estimate (one batch of each attack, core.audit.estimate_seconds)
    against the audit it predicts, run right after it, on the page's default subset of the
    memorising demo (``per_side`` members and non-members, five timesteps of the default grid)."""
    from core import load_model
    from core.attacks import get_attack
    from core.audit import DEFAULT_TIMESTEPS, estimate_seconds, run_audit
    from core.datasets import demo_sets
    from explorer.sets import labelled_set, subset

    model = load_model("digits-ddpm-memorising")
    split = labelled_set(*demo_sets(model), "the model's own split")
    data = subset(split, per_side, 0)
    grid = list(DEFAULT_TIMESTEPS)[:: -(-len(DEFAULT_TIMESTEPS) // 5)]
    rows = []
    for name in attacks:
        attack = get_attack(name)
        estimate = estimate_seconds(model, attack, data.images(), grid)
        start = time.perf_counter()
        run_audit(model, data.members, data.nonmembers, attack=attack, timesteps=grid, n_bootstrap=1000)
        real = time.perf_counter() - start
        rows.append({"attack": name, "estimated_s": round(estimate, 2), "real_s": round(real, 2),
                     "real_over_estimate": round(real / estimate, 2), "load_average_1min": round(os.getloadavg()[0], 2)})
    return {"model": model.name, "images": len(data), "timesteps": grid, "rows": rows,
            "within_1_5x": all(1 / 1.5 <= r["real_over_estimate"] <= 1.5 for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target is for 2 cores)")
    parser.add_argument("--quick", action="store_true", help="fewer slider moves, fewer pages")
    parser.add_argument("--estimates", action="store_true",
                        help="only the Compare page's time estimates against the real runs (compare-estimates.json)")
    args = parser.parse_args()
    if args.estimates:
        os.environ["SIMA_CACHE_DIR"] = tempfile.mkdtemp(prefix="sima-bench-")
        record = estimates(["sima", "loss", "pia", "secmi"], 100)
        ESTIMATES.write_text(json.dumps(record, indent=2) + "\n")
        print("\n".join(f"{r['attack']}: estimated {r['estimated_s']} s, took {r['real_s']} s "
                        f"({r['real_over_estimate']}x; load {r['load_average_1min']})" for r in record["rows"]))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["SIMA_CACHE_DIR"] = tempfile.mkdtemp(prefix="sima-bench-")  # nothing cached before
    os.environ["SIMA_EXPLORER_GRID"] = GRID
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    swept = sweep(args.threads)
    pages = ["timesteps", "about"] if args.quick else ["audit", "timesteps", "local_mean", "compare", "latent", "about"]
    renders = first_renders("digits-ddpm-memorising", pages)
    redraws, n = slider_redraws(5 if args.quick else 15)
    record = {
        "machine": {
            "cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "first_render_s": {page: round(s, 3) for page, s in renders.items()},
        "first_render_max_s": round(max(renders.values()), 3),
        "slider_redraw_ms": {"samples": n, "median": round(statistics.median(redraws), 1), "max": round(max(redraws), 1),
                             "moves": len(redraws)},
        "sweep": swept,
        "targets": TARGETS,
    }
    record["met"] = {
        "first_render": record["first_render_max_s"] < TARGETS["first_render_s"],
        "slider_redraw": record["slider_redraw_ms"]["median"] < TARGETS["slider_redraw_ms"],
        "sweep": swept["sweep_s"] < TARGETS["sweep_s"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    ok = {True: "yes", False: "**no**"}
    lines = [
        "| measure | value | target | met |", "|---|---|---|---|",
        f"| first page render, model cached (slowest of {len(renders)} pages) | {record['first_render_max_s']:.2f} s "
        f"| < 5 s | {ok[record['met']['first_render']]} |",
        f"| slider redraw, {n:,} samples (median of {len(redraws)}) | {record['slider_redraw_ms']['median']:.0f} ms "
        f"| < 200 ms | {ok[record['met']['slider_redraw']]} |",
        f"| sweep of the memorising split, {swept['samples']} images x {swept['timesteps']} t | {swept['sweep_s']:.1f} s "
        f"(CPU {swept['sweep_cpu_s']:.1f} s; calibration {swept['calibration_s']:.1f} s apart) | < 60 s | {ok[record['met']['sweep']]} |",
        "",
        f"{args.threads} torch threads on {os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, "
        f"{record['machine']['load_average_after'][0]:.1f} after. Per page (s): "
        + ", ".join(f"{p} {s:.2f}" for p, s in renders.items()),
    ]
    print("\n".join(lines))
    if not args.quick:
        from common import replace_section

        replace_section("App", "Measured by `python benchmarks/app.py` (AppTest, no browser).\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
