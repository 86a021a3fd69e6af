"""The latent bottleneck as a defence: SimA's leakage against the autoencoder's KL weight beta.

    python benchmarks/latent.py --train          # train every beta's model (resumable; ~5 min of one core each)
    python benchmarks/latent.py --curve          # retrain the pixel demo, saving it every 250 steps (~20 min)
    python benchmarks/latent.py                  # measure the trained models and the pixel reference
    python benchmarks/latent.py --report         # only rewrite the docs section from the JSON

For each beta a beta-VAE (16x16x1 -> 4x4x4) is trained on the 397 digits that are neither members
nor held out of any demo's split (``vae_train_ids`` in each manifest), with the loss per image
"squared error averaged over pixels + beta * KL summed over latent elements" (so beta binds
across the range), then a latent DDPM on the same 256 members with the pixel demo's budget
(3,000 AdamW steps of batch 32, lr 2e-3, cosine). Runs go to ``--runs`` (default
benchmarks/.cache/latent), outside the repository's tracked files.

Measured per model (rows of benchmarks/results/latent.json):
- leakage: the training check's SimA audit (``core.audit.run_audit``: t chosen on the selection
  half, AUC and TPR@1%FPR with bootstrap CIs on the report half);
- recon_mse: the VAE's mean squared reconstruction error per pixel on the held-out digits;
- quality: ``core.quality.sample_quality`` of 500 DDIM samples (precision / recall against
  held-out digits, and the samples' nearest-member distance relative to a held-out image's).
The pixel demo digits-ddpm-memorising is measured the same way as the reference point, and its
learning curve (the other lever a trainer has) comes from retraining its config with the same
seed and saving the network every 250 steps: the same SimA audit on each saved network.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from common import RESULTS, ROOT, describe_machine, machine, replace_marked_block, replace_section, save_results

from core import load_model  # noqa: E402
from core import datasets  # noqa: E402
from core import train as training  # noqa: E402
from core.bottleneck import (  # noqa: E402
    QUALITY_KEPT, curve_sentence, direction, least_leaky_kept, posterior_mean_series, recommendation,
)
from core.datasets import demo_sets  # noqa: E402
from core.quality import sample_quality  # noqa: E402

SECTION = "Latent bottleneck"
OUT = RESULTS / "latent.json"
RUNS = ROOT / "benchmarks" / ".cache" / "latent"
BETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PIXEL = "digits-ddpm-memorising"
#: The largest demo split (digits-ddpm-generalising's 900 members) and the shared held-out set:
#: the autoencoders train on every digit outside it, so none has seen a digit any demo is audited on.
LARGEST_SPLIT = 900
VAE_IMAGES = datasets.N_IMAGES - LARGEST_SPLIT - datasets.N_HELDOUT
LATENTS = ("sample", "mean")
SERIES = {"sample": "rows", "mean": "rows_posterior_mean"}


def config(beta: float, latents: str = "sample") -> dict:
    """The latent config for one beta: the pixel demo's members, data and DDPM budget. The
    diffusion model trains on posterior samples (as Stable Diffusion's trainer does) or means."""
    name = f"digits-ldm-{'sampled-' if latents == 'sample' else ''}beta-{beta:.0e}"
    pixel = json.loads((ROOT / "assets" / "models" / PIXEL / "train.json").read_text())
    return {
        "kind": "latent",
        "name": name,
        "demo": (f"Latent DDPM on the same 256 members as {PIXEL}, with its training budget. The autoencoder "
                 f"(16x16x1 -> 4x4x4 latents, KL weight beta = {beta:g}) was trained on the {VAE_IMAGES} digits outside "
                 "every demo's split, as a model trainer would use an autoencoder trained elsewhere."),
        "seed": 0,
        "threads": 1,
        "data": copy.deepcopy(pixel["data"]),
        "scheduler": copy.deepcopy(pixel["scheduler"]),
        "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                 "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]},
        "train": copy.deepcopy(pixel["train"]),
        "vae_train": {"steps": 1500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "schedule": "cosine",
                      "grad_clip": 1.0, "checkpoint_every": 250, "beta": beta, "images": VAE_IMAGES, "reconstruction": "mean",
                      "latents": latents},
        "check": copy.deepcopy(pixel["check"]),
    }


def train_all(betas, runs: Path, series) -> None:
    for cfg in (config(beta, latents) for beta in betas for latents in series):
        started = time.perf_counter()
        training.train(cfg, runs / cfg["name"], progress=False)
        print(f"{cfg['name']}: trained in {time.perf_counter() - started:.0f} s", flush=True)


def train_curve(runs: Path) -> None:
    """The pixel demo's config retrained with its seed, the network saved at every checkpoint."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    cfg = training.resolve_config(json.loads((ROOT / "assets" / "models" / PIXEL / "train.json").read_text()))
    folder = runs / "curve"
    members = datasets.digits_by_ids(datasets.digits_split(cfg["data"]["members"], n_heldout=cfg["data"]["heldout"],
                                                           seed=cfg["data"]["split_seed"]).member_ids, cfg["data"]["size"])
    scheduler = DDPMScheduler(**cfg["scheduler"])
    torch.manual_seed(training.init_seed(int(cfg["seed"]), "unet"))
    unet = UNet2DModel(**cfg["unet"])
    manifest = json.loads((ROOT / "assets" / "models" / PIXEL / "manifest.json").read_text())

    def save(step: int, network: torch.nn.Module) -> None:
        out = folder / f"step-{step:05d}"
        DDPMPipeline(unet=network, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
        # the demo's split, so the audit below uses the same members and held-out digits
        (out / "manifest.json").write_text(json.dumps({**{k: manifest[k] for k in (
            "format", "version", "kind", "dataset", "preprocessing", "member_ids", "heldout_ids")},
            "name": f"{PIXEL}@{step}"}))

    result = training.fit_ddpm(unet, members, scheduler.alphas_cumprod, cfg["train"], seed=int(cfg["seed"]),
                               checkpoint_dir=folder / "checkpoint", progress=False, on_checkpoint=save)
    print(f"pixel learning curve trained in {result['wall_time_s']:.0f} s", flush=True)


def leakage(check: dict) -> dict:
    """The SimA audit's figures on the report half, from a training check."""
    return {"t": check["t"], "auc": check["auc"], "ci_low": check["auc_ci"][0], "ci_high": check["auc_ci"][1],
            "tpr_at_1pct_fpr": check["tpr_at_1pct_fpr"], "tpr_ci": check["tpr_at_1pct_fpr_ci"]}


def measure_model(folder, samples: int) -> dict:
    model = load_model(folder)
    manifest = model.manifest
    overlap = set(manifest.get("vae_train_ids", ())) & (set(manifest["member_ids"]) | set(manifest["heldout_ids"]))
    if overlap:
        raise SystemExit(f"{manifest['name']}: the autoencoder saw {len(overlap)} audited digits; the study is not fair.")
    members, _, heldout, _ = demo_sets(model)
    started = time.perf_counter()
    quality = sample_quality(model, members, heldout, n=samples).to_dict()
    recon = (manifest.get("vae_reconstruction_mse") or {}).get("heldout", 0.0)
    return {**leakage(manifest["check"]), "recon_mse": recon, "quality": quality,
            "quality_s": round(time.perf_counter() - started, 1)}


def measure_curve(runs: Path) -> list[dict]:
    from core.attacks import SimA
    from core.audit import run_audit
    from core.cache import ScoreCache

    points = []
    for out in sorted((runs / "curve").glob("step-*")):
        model = load_model(out)
        members, member_ids, heldout, heldout_ids = demo_sets(model)
        # the score cache makes a rerun of the measurement (or of --report's inputs) cheap
        result = run_audit(model, members, heldout, attack=SimA(), timesteps=list(range(0, 201, 10)), seed=0,
                           member_ids=member_ids, nonmember_ids=heldout_ids, cache=ScoreCache())
        m = result.metrics.to_dict()
        points.append({"step": int(out.name.split("-")[1]), "t": result.chosen_t, "auc": m["auc"]["value"],
                       "ci_low": m["auc"]["ci_low"], "ci_high": m["auc"]["ci_high"],
                       "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"]["value"]})
        print(f"step {points[-1]['step']}: AUC {points[-1]['auc']:.3f}", flush=True)
    return points


def measure(betas, runs: Path, samples: int) -> dict:
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "samples": samples}
    for latents in LATENTS:
        payload[SERIES[latents]] = []
        for beta in betas:
            folder = runs / config(beta, latents)["name"]
            row = {"beta": beta, "model": folder.name, **measure_model(folder, samples)}
            payload[SERIES[latents]].append(row)
            print(f"{folder.name}: AUC {row['auc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}], recon "
                  f"{row['recon_mse']:.4f}, precision {row['quality']['precision']:.3f}, recall "
                  f"{row['quality']['recall']:.3f}", flush=True)
    payload["pixel"] = {"model": PIXEL, **measure_model(PIXEL, samples)}
    payload["curve"] = measure_curve(runs) if (runs / "curve").is_dir() else []
    return payload


def markdown(payload: dict) -> str:
    lines = [
        f"Measured by `python benchmarks/latent.py` on {payload['date']}: {describe_machine(payload['machine'])}.",
        "",
        f"Each latent model: a beta-VAE (16x16x1 -> 4x4x4) trained on the {VAE_IMAGES} digits outside every demo's "
        "split (`vae_train_ids` in its manifest), loss per image = squared error averaged over pixels + beta * KL "
        "summed over latent elements; then a latent DDPM on the pixel demo's 256 members with the pixel demo's budget "
        "(3,000 steps of batch 32). Leakage: SimA, t chosen on the selection half, AUC and TPR@1%FPR with 95% "
        "bootstrap CIs on the report half (128 members, 250 held-out). recon MSE: the VAE's reconstruction error per "
        f"pixel on the held-out digits ([-1, 1] scale). Quality: {payload['samples']} DDIM samples (100 steps); "
        "precision and recall against the held-out digits in PCA-32 pixel features (k = 3), and the median copy "
        "ratio (distance to the nearest member / to the nearest of as many held-out digits; about 1 for new digits). "
        "Two series: the diffusion model trained on a fresh posterior sample of each member at every step (as Stable "
        "Diffusion's trainer does; `rows`), and on each member's posterior mean (`rows_posterior_mean`).",
        "",
        "| latents | beta | t | SimA AUC [95% CI] | TPR@1%FPR [95% CI] | recon MSE | precision | recall | copy ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, beta, r):
        q = r["quality"]
        return (f"| {name} | {beta} | {r['t']} | {r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                f"{r['tpr_at_1pct_fpr']:.3f} [{r['tpr_ci'][0]:.3f}, {r['tpr_ci'][1]:.3f}] | {r['recon_mse']:.4f} | "
                f"{q['precision']:.3f} | {q['recall']:.3f} | {q['copy_ratio_median']:.2f} |")

    for latents in LATENTS:
        for r in sorted(payload[SERIES[latents]], key=lambda r: r["beta"]):
            lines.append(row("samples" if latents == "sample" else "posterior means", f"{r['beta']:g}", r))
    lines.append(row(f"pixel model ({payload['pixel']['model']})", "none", payload["pixel"]))
    lines += ["", f"Trained on posterior samples: {direction(payload).sentence()}", "",
              f"Trained on posterior means: {direction(posterior_mean_series(payload)).sentence()}", "",
              recommendation(payload)]
    if payload.get("curve"):
        lines += ["", "Learning curve of the pixel demo (its config retrained with its seed, saved every 250 steps; "
                  "the same SimA audit on each):", "", "| steps | t | SimA AUC [95% CI] | TPR@1%FPR |", "|---|---|---|---|"]
        lines += [f"| {p['step']} | {p['t']} | {p['auc']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] | "
                  f"{p['tpr_at_1pct_fpr']:.3f} |" for p in payload["curve"]]
        lines += ["", curve_sentence(payload)]
    return "\n".join(lines)


def headline(payload: dict) -> str:
    """The README's paragraph: the two series' ends, the quality cost and the pixel reference."""
    rows = sorted(payload["rows"], key=lambda r: r["beta"])
    means = sorted(payload["rows_posterior_mean"], key=lambda r: r["beta"])
    pixel = payload["pixel"]
    low, high = rows[0], rows[-1]
    best = least_leaky_kept(payload)
    kept = ("" if best is None else
            f"; at beta = {best['beta']:g} it is {best['auc']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}], the lowest "
            f"of the models whose samples keep {QUALITY_KEPT:.0%} of the pixel model's precision and recall (recall "
            f"{best['quality']['recall']:.2f} against {pixel['quality']['recall']:.2f})")

    m = direction(posterior_mean_series(payload))
    mechanism = ("." if m.distinguishable and m.change < 0 else
                 ": the KL weight hid members only through the posterior noise the diffusion model trained on.")

    def span(series):
        return f"{min(r['auc'] for r in series):.3f} to {max(r['auc'] for r in series):.3f}"

    return (
        f"Trained on posterior samples (as Stable Diffusion's trainer does), the latent models' SimA AUC goes from "
        f"{low['auc']:.3f} at beta = {low['beta']:g} to {high['auc']:.3f} at {high['beta']:g}, against the pixel "
        f"model's {pixel['auc']:.3f}{kept}; at {high['beta']:g} recall is {high['quality']['recall']:.2f}. Trained on posterior means, the same autoencoders give AUC {span(means)} at "
        f"every beta{mechanism} "
        f"Measured on {payload['date']} by `python benchmarks/latent.py`; all figures, sample quality and the pixel "
        "model's learning curve in [docs/benchmarks.md](docs/benchmarks.md#latent-bottleneck), drawn on the app's "
        "Latent bottleneck page."
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--latents", default=",".join(LATENTS), help="which series: sample, mean or both")
    parser.add_argument("--train", action="store_true", help="train the models (resumes a stopped run)")
    parser.add_argument("--curve", action="store_true", help="retrain the pixel demo, saving it every 250 steps")
    parser.add_argument("--samples", type=int, default=500, help="generated images per model for the quality figures")
    parser.add_argument("--report", action="store_true", help="only rewrite the docs section from the JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    if args.report:
        payload = json.loads(OUT.read_text())
        replace_section(SECTION, markdown(payload))
        replace_marked_block(ROOT / "README.md", "latent-study", headline(payload))
        return 0
    torch.set_num_threads(1)
    if args.train:
        train_all(betas, args.runs, args.latents.split(","))
        return 0
    if args.curve:
        train_curve(args.runs)
        return 0
    payload = measure(betas, args.runs, args.samples)
    save_results(OUT, payload, SECTION, markdown(payload))
    replace_marked_block(ROOT / "README.md", "latent-study", headline(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
