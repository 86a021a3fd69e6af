"""The Ray engine against the single-process audit, on the same images, on this machine.

    python benchmarks/scale.py              # ~5 minutes on 2 shared cores
    python benchmarks/scale.py --quick      # a smoke run (writes scale-quick.json)

Times `sima audit` end to end (reading PNGs, the sweep, the metrics) three ways on the
memorising demo's split written out as PNG folders (256 members, 500 held out): in one process, and with the Ray engine on one and on two workers of a local Ray
instance started beforehand (its start is not timed; each run's actor start is). Every run
has one torch thread per process, the same forward batch size and no score cache, and every
Ray run writes fresh shards. Checks that the three give identical samples.csv files. Also
times the network's forward pass on this CPU in fp32, under bf16 autocast, and compiled.

Writes benchmarks/results/scale.json and the "Scale-out" block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

from common import DOC, RESULTS, describe_machine, machine, replace_marked_block  # noqa: E402

from core import load_model  # noqa: E402
from core.cli import main as sima  # noqa: E402
from core.images import to_uint8_image  # noqa: E402
from core.datasets import demo_sets  # noqa: E402

MODEL = "digits-ddpm-memorising"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def write_pngs(folder: Path, images: torch.Tensor, ids: list[str]) -> None:
    folder.mkdir(parents=True)
    for image, name in zip(images, ids):
        to_uint8_image(image).save(folder / f"{name}.png")


def timed_audit(argv: list[str]) -> tuple[float, float]:
    before = load()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = sima(argv)
    if rc != 0:
        raise SystemExit(f"sima {' '.join(argv)} failed")
    return time.perf_counter() - start, before


def forward_rates(compiled: bool, batch: int = 64, seconds: float = 3.0) -> dict:
    """Images per second of the model's forward pass on this CPU under each speed setting."""
    rates = {}
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    settings = [("fp32", {}), ("bf16", {"precision": "bf16"})] + ([("fp32_compiled", {"compile": True})] if compiled else [])
    for label, kwargs in settings:
        model = load_model(MODEL, **kwargs)
        start = time.perf_counter()
        model.eps(x, 50)  # first call: compiles when asked
        first = time.perf_counter() - start
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.eps(x, 50)
            done += batch
        rates[label] = {"images_per_s": round(done / (time.perf_counter() - start), 1), "first_call_s": round(first, 2)}
    return rates


def markdown(result: dict) -> str:
    s = result["settings"]
    runs = result["runs"]
    rows = [
        "| engine | round | images/s | wall time (s) | load average at start |",
        "|---|---|---|---|---|",
        *(f"| {r['engine']} | {r['round'] + 1} | {r['images_per_s']:.1f} | {r['wall_s']:.1f} | {r['load_before']} |" for r in runs),
    ]
    f = result["forward_cpu"]
    compiled = (f"torch.compile {f['fp32_compiled']['images_per_s']:.0f} images/s (its first call, which compiles, took "
                f"{f['fp32_compiled']['first_call_s']:.0f} s with whatever torch's on-disk kernel cache already held)"
                if "fp32_compiled" in f else "torch.compile not measured in this run")
    return "\n".join([
        f"Written by `python benchmarks/scale.py` on {result['date']}: {describe_machine(result['machine'])}.",
        f"`sima audit` of {s['images']} digits ({s['members']} members + {s['nonmembers']} held out, PNG folders) on "
        f"`{MODEL}` with `--attack sima --timesteps {s['timesteps']} --batch-size {s['batch_size']} --no-cache`, "
        f"chunks of {s['chunk']} images, one torch thread per process; Ray runs on a local 2-CPU Ray started beforehand "
        "(each run's actor start is in its time; workers at the same priority as the single process). "
        f"{s['repeats']} rounds, alternating the engines; the headline figure is each engine's best round. "
        f"All runs' samples.csv files are identical: {result['identical']}.",
        "",
        *rows,
        "",
        f"Best rounds: single process {result['single_images_per_s']:.1f}, one Ray worker {result['ray_1_images_per_s']:.1f}, "
        f"two Ray workers {result['ray_2_images_per_s']:.1f} images/s. "
        f"Two Ray workers over the single process: **{result['ray_2_over_single']:.2f}x**; two workers over one: "
        f"{result['ray_2_over_ray_1']:.2f}x. This machine has 2 cores shared with other work (see the load), so these "
        "ratios say that the engine runs and what its overhead is here, not what a cluster gains; the plan for a "
        "cluster is in [scale.md](scale.md).",
        "",
        f"The network's forward pass on this CPU (batch 64): fp32 {f['fp32']['images_per_s']:.0f} images/s, "
        f"bf16 autocast {f['bf16']['images_per_s']:.0f} images/s, {compiled}. "
        "GPU throughput (`--device cuda --precision bf16|fp16 --compile`) is not yet measured: no GPU was available.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 members and 64 held-out images, 2 timesteps")
    parser.add_argument("--timesteps", default="20,60,100,140", help="timestep grid (default 20,60,100,140)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=128, help="images per chunk in both engines (default 128)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three runs, alternating (default 2)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (its compilation took minutes here)")
    args = parser.parse_args()
    quick = args.quick
    if quick:
        args.timesteps = "50,100"

    import ray

    from core import audit

    audit.CHUNK_IMAGES = args.chunk  # the same chunks in both engines, enough of them for two workers
    members, member_ids, heldout, heldout_ids = demo_sets(load_model(MODEL))  # (imports diffusers before any timing)
    keep = 64 if quick else None
    work = Path(tempfile.mkdtemp(prefix="sima-scale-"))
    write_pngs(work / "members", members[:keep], member_ids[:keep])
    write_pngs(work / "nonmembers", heldout[:keep], heldout_ids[:keep])
    n_m, n_n = len(members[:keep]), len(heldout[:keep])
    n = n_m + n_n
    common = ["audit", "--model", MODEL, "--members", str(work / "members"), "--nonmembers", str(work / "nonmembers"),
              "--attack", "sima", "--timesteps", args.timesteps, "--batch-size", str(args.batch_size),
              "--bootstrap", "100", "--quiet", "--no-cache"]
    info = machine()
    # Ray starts its workers at nice 15; on a shared machine that alone would slow them against
    # the single process, which runs at nice 0. Same priority for both.
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    engines = (("single process", []), ("ray, 2 workers", ["--engine", "ray", "--workers", "2"]),
               ("ray, 1 worker", ["--engine", "ray", "--workers", "1"]))
    runs, outputs = [], []
    # Rounds alternate the engines, so that a change in the machine's load hits all of them.
    for round_ in range(args.repeats):
        for engine, extra in engines:
            out = work / f"{round_}-{engine.replace(' ', '').replace(',', '_')}"
            shards = ["--shards", str(out / "shards")] if extra else []
            wall, before = timed_audit([*common, *extra, *shards, "--out", str(out)])
            runs.append({"engine": engine, "round": round_, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 2),
                         "load_before": before})
            outputs.append(out)
    ray.shutdown()
    csvs = {(out / "samples.csv").read_bytes() for out in outputs}
    best = {engine: max(r["images_per_s"] for r in runs if r["engine"] == engine) for engine, _ in engines}
    single, ray2, ray1 = (best[engine] for engine, _ in engines)
    result = {
        "single_images_per_s": single,
        "ray_1_images_per_s": ray1,
        "ray_2_images_per_s": ray2,
        "ray_2_over_single": round(ray2 / single, 3),
        "ray_2_over_ray_1": round(ray2 / ray1, 3),
        "identical": len(csvs) == 1,
        "date": time.strftime("%Y-%m-%d"),
        "machine": info,
        "load_average_1min_after": load(),
        "settings": {"images": n, "members": n_m, "nonmembers": n_n, "timesteps": args.timesteps,
                     "batch_size": args.batch_size, "chunk": args.chunk, "torch_threads_per_process": 1,
                     "ray_num_cpus": 2, "ray_worker_niceness": 0, "repeats": args.repeats, "figure": "best of the rounds"},
        "runs": runs,
        "forward_cpu": forward_rates(args.compile),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("scale-quick.json" if quick else "scale.json")).write_text(json.dumps(result, indent=2))
    table = markdown(result)
    print(table)
    if not quick:
        replace_marked_block(DOC, "scale", table)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
