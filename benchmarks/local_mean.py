"""Speed and memory of core.local_mean on CIFAR-sized data (3x32x32, seeded random values).

Measures (1) the median time of the local mean of one query over 10,000 reference images
(target: under 1 s on 2 cores) and (2) the time and peak extra resident memory of 256 queries
over the same references (target: well under 2 GiB). The memory run happens in a fresh process:
its extra memory is the peak resident set size during the call minus the resident size just
before it, an upper bound on what the call itself allocated.

Writes benchmarks/results/local_mean.json and prints one markdown table row.

    python benchmarks/local_mean.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.local_mean import MEMORY_BUDGET_BYTES, local_mean  # noqa: E402

SHAPE = (3, 32, 32)
REFERENCES = 10_000
BATCH = 256
ABAR = 0.99  # about t = 50 of DDPM: the weights are sharp, as in an attack
TARGET_S = 1.0
OUT = ROOT / "benchmarks" / "results" / "local_mean.json"


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    # Filled in place: no temporaries that would inflate the memory baseline.
    return torch.empty(n, *SHAPE).uniform_(-1, 1, generator=generator)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def single_query_times(repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds per run. CPU time shows whether a slow wall time
    came from other processes sharing the cores."""
    g = torch.Generator().manual_seed(0)
    reference, query = _uniform(REFERENCES, g), _uniform(1, g)
    local_mean(query, reference, ABAR)  # warm-up: first-call allocations and thread start-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        local_mean(query, reference, ABAR)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def batch_run() -> dict:
    """256 queries x 10,000 references, once; run in a child process for a clean memory baseline."""
    g = torch.Generator().manual_seed(1)
    reference, queries = _uniform(REFERENCES, g), _uniform(BATCH, g)
    before = _rss_bytes()
    start = time.perf_counter()
    mu = local_mean(queries, reference, ABAR)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert torch.isfinite(mu).all()
    return {"seconds": seconds, "peak_extra_mib": max(0, peak - before) / 2**20}


def _batch_in_child(threads: int) -> dict | None:
    if not Path("/proc/self/statm").exists():
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed runs instead of 9")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the target machine)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(batch_run()))
        return
    load_before = os.getloadavg()[0]
    times, cpu_times = single_query_times(3 if args.quick else 9)
    batch = _batch_in_child(args.threads)
    median = statistics.median(times)
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1min_before": load_before,
        },
        "quick": args.quick,
        "shape": list(SHAPE),
        "references": REFERENCES,
        "abar": ABAR,
        "memory_budget_mib": MEMORY_BUDGET_BYTES / 2**20,
        "single_query": {
            "median_s": median,
            "runs_s": times,
            "cpu_s": cpu_times,
            "target_s": TARGET_S,
            "meets_target": median < TARGET_S,
        },
        "batch": None if batch is None else {"queries": BATCH, **batch},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    batch_text = "n/a (needs Linux /proc)" if batch is None else (
        f"{BATCH} queries {batch['seconds']:.2f} s, peak extra {batch['peak_extra_mib']:.0f} MiB"
    )
    row = (
        f"| local mean, 1 query x {REFERENCES:,} refs {SHAPE[1]}x{SHAPE[2]}x{SHAPE[0]} "
        f"| median {median:.3f} s over {len(times)} runs (target < {TARGET_S:.0f} s) | {batch_text} "
        f"| {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load {load_before:.1f}, torch {torch.__version__} |"
    )
    print(row)
    if not args.quick:
        from common import replace_section

        replace_section("Local mean", "\n".join([
            "Measured by `python benchmarks/local_mean.py` (random seeded data; float64 distances, chunked log-sum-exp).",
            "", "| what | time | batch of queries | machine |", "|---|---|---|---|", row]))


if __name__ == "__main__":
    main()
