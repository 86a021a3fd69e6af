"""The `sima` command: the same core calls as the app, from the shell.

A user error exits with status 2 and one line on stderr that says what to do; progress bars
go to stderr so that ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from core.errors import SimaError

if TYPE_CHECKING:
    from core.conditioning import CaptionTable
    from core.models.base import DiffusionModel

EXIT_USER_ERROR = 2


def _progress(desc: str, quiet: bool):
    """A progress callback drawing a tqdm bar on stderr, or None when quiet."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="pair", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _skipped(problem) -> None:
    _warn(f"skipped {problem.source}: {problem.message}")


def _loading(args) -> dict:
    """What every copy of the model is loaded with: weights, adapters, pickle consent."""
    options = {"weights": args.weights, "scaling_factor": args.scaling_factor}
    return {"allow_pickle": args.allow_pickle, "lora": args.lora, "lora_scale": args.lora_scale,
            **{k: v for k, v in options.items() if v is not None}}


def _speed(args) -> dict:
    """How a working copy is loaded: as every copy, on the device, with the speed settings of
    DiffusionModel.accelerate."""
    return {**_loading(args), "device": args.device, "precision": args.precision, "compile": args.compile,
            "channels_last": args.channels_last}


def _model(args):
    from core import load_model

    if args.engine == "ray":
        # The workers load their own copies (on their GPUs); this one only names and splits.
        return load_model(args.model, **_loading(args))
    return load_model(args.model, **_speed(args))


def _ray_options(args, update) -> dict:
    return {"workers": args.workers, "address": args.address, "shard_dir": args.shards, "load_kwargs": _speed(args),
            "progress": update}


def _no_captions_on_ray(args, modes) -> None:
    if args.engine == "ray" and any(mode == "caption" for mode, _ in modes):
        raise SimaError("The Ray engine scores a conditional model with the empty condition only; drop "
                        "--captions/--labels (or give --condition empty), or run without --engine ray.")


def conditions(args: argparse.Namespace, model: DiffusionModel, sources: Sequence[str]) -> list[tuple[str | None, object]]:
    """(condition mode, captions table or None) for each mode the arguments ask for.

    ``--captions FILE`` reads a CSV / JSONL; ``--captions sidecar`` reads NAME.txt files beside
    the images in ``sources``; ``--labels FILE`` gives a class-conditional model its labels.
    ``--condition caption,empty`` asks for both modes (``sima audit`` only). An unconditional
    model gives [(None, None)]. A 'demo' source of a captioned demo brings the captions its
    manifest records, so caption mode is the default there too.
    """
    from core.conditioning import CONDITION_MODES, CaptionTable, read_captions, read_labels, sidecar_captions
    from core.datasets import demo_captions

    kind = getattr(model, "condition_kind", None)
    demo = demo_captions(model) if kind == "caption" and "demo" in sources else None
    given = args.captions or args.labels
    if args.captions and args.labels:
        raise SimaError("Give --captions (text-to-image models) or --labels (class-conditional models), not both.")
    if given and kind is None:
        raise SimaError(f"{model.name} is an unconditional model: it takes no captions or labels. Drop --captions/--labels.")
    if args.captions and kind == "label":
        raise SimaError(f"{model.name} is class-conditional: give its class labels with --labels FILE, not --captions.")
    if args.labels and kind == "caption":
        raise SimaError(f"{model.name} is a text-to-image model: give its captions with --captions FILE, not --labels.")
    modes = [m.strip() for m in args.condition.split(",")] if args.condition else ["caption" if given or demo else "empty"]
    if any(m not in CONDITION_MODES for m in modes) or len(set(modes)) != len(modes):
        raise SimaError(f"--condition takes caption, empty or caption,empty; got {args.condition!r}.")
    if kind is None:
        if "caption" in modes:
            raise SimaError(f"{model.name} is an unconditional model: it has no caption to condition on. Drop --condition.")
        return [(None, None)]
    if "caption" in modes and not given and demo is None:
        flag = "--labels FILE" if kind == "label" else "--captions FILE (or --captions sidecar)"
        raise SimaError(f"--condition caption needs the captions: add {flag}, or use --condition empty.")
    table = None
    if "caption" in modes and args.labels:
        table = read_labels(args.labels)
    elif "caption" in modes and args.captions == "sidecar":
        table = sidecar_captions([s for s in sources if s != "demo"])
        if not len(table):
            raise SimaError("--captions sidecar found no NAME.txt caption files beside the images; add them or give a captions file.")
    elif "caption" in modes and args.captions:
        table = read_captions(args.captions)
    if "caption" in modes and demo is not None and table is not None:
        table = CaptionTable({**demo.entries, **table.entries}, f"{demo.source} and {table.source}")
    elif "caption" in modes and demo is not None:
        table = demo
    return [(mode, table if mode == "caption" else None) for mode in modes]


def set_condition(table: CaptionTable | None, ids: Sequence[str]) -> list[str] | None:
    """One set's conditioning for run_audit / score_images: captions by image id, or None."""
    return None if table is None else table.for_ids(list(ids))


def _cache(args):
    from core.cache import ScoreCache

    return None if args.no_cache else ScoreCache(args.cache_dir)


def _audit_sets(args):
    """A function of the model giving fresh (members, non-members) chunk streams for each attack:
    from --members / --nonmembers, or from a dataset archive and a split file."""
    if args.dataset is None and args.split is None:
        from core.sets import stream_set

        if args.members is None or args.nonmembers is None:
            raise SimaError("Give --members and --nonmembers (or --dataset NAME:DIR with --split FILE.npz).")
        return lambda model: (stream_set(args.members, model, "members", on_problem=_skipped),
                              stream_set(args.nonmembers, model, "heldout", on_problem=_skipped))
    if args.dataset is None or args.split is None or args.members is not None or args.nonmembers is not None:
        raise SimaError("--dataset and --split go together, and replace --members and --nonmembers.")
    from core.archives import split_sets, tensor_chunks
    from core.audit import CHUNK_IMAGES

    sides = split_sets(args.dataset, args.split)

    def streams(model):
        c, h, w = model.image_shape
        return tuple(tensor_chunks(pictures, ids, channels=c, size=(h, w), chunk=CHUNK_IMAGES) for pictures, ids in sides)

    return streams


def _audit_on_ray(args, model, attacks, timesteps) -> list:
    from core import distributed

    if args.dataset is not None or args.split is not None:
        raise SimaError("The Ray engine reads --members and --nonmembers sources; --dataset/--split run without --engine ray.")

    update, close = _progress("chunks", args.quiet)
    try:
        return distributed.run_audit(
            args.model, args.members, args.nonmembers, attacks=attacks, timesteps=timesteps, select=args.select,
            seed=args.seed, batch_size=args.batch_size, n_bootstrap=args.bootstrap, warn=_skipped, local_model=model,
            **_ray_options(args, update),
        )
    finally:
        close()


def cmd_audit(args: argparse.Namespace) -> int:
    from core.attacks import parse_attacks
    from core.audit import parse_timesteps, run_audit
    from core.cards import audit_notes, comparisons, results_table, write_card

    attacks = parse_attacks(args.attack)
    timesteps = parse_timesteps(args.timesteps)
    sets = _audit_sets(args)
    model = _model(args)
    modes = conditions(args, model, [s for s in (args.members, args.nonmembers) if s is not None])
    runs = [(mode, table, attack) for mode, table in modes for attack in attacks
            if not (len(modes) > 1 and mode == "empty" and attack.needs_condition)]
    results = []
    _no_captions_on_ray(args, modes)
    if args.engine == "ray":
        results = _audit_on_ray(args, model, attacks, timesteps)
        runs = []  # all swept in that one Ray run, which reads each image once for every attack
    for mode, table, attack in runs:
        by_ids = None if table is None else table.for_ids
        update, close = _progress(f"{attack.name} sweep" + (f" ({mode})" if mode else ""), args.quiet)
        try:
            results.append(run_audit(
                model, *sets(model),
                attack=attack, timesteps=timesteps, select=args.select, seed=args.seed, batch_size=args.batch_size, n_bootstrap=args.bootstrap, progress=update, cache=_cache(args),
                member_cond=by_ids, nonmember_cond=by_ids,
            ))
        finally:
            close()
    if args.out:
        out = Path(args.out)
        for r in results:
            name = r.attack if len(modes) == 1 else f"{r.attack}-{r.extra['condition']}"
            r.save(out if len(results) == 1 else out / name)
    if args.card:
        write_card(Path(args.card), results, "sima " + " ".join(args.argv))
    if args.json:
        audits = [r.to_dict() for r in results]
        # several attacks: each audit, and every "A is stronger than B" decided by a paired bootstrap
        payload = audits[0] if len(audits) == 1 else {
            "audits": audits, "comparisons": [c.to_dict() for c in comparisons(results)]}
        print(json.dumps(payload, indent=2))
        baseline = results[0].blind_baseline
        if baseline is not None and baseline.separable:
            _warn(baseline.warning())
    else:
        print(f"{model.info().describe()}")
        print(f"{results[0].n_members} members, {results[0].n_nonmembers} non-members; t chosen on the selection "
              f"half by {args.select}; metrics on the report half with 95% bootstrap CIs.\n")
        print(results_table(results))
        print("\n" + "\n".join(audit_notes(results)))
        if args.out:
            print(f"\nWrote {args.out}")
    return 0


def _calibration(args, model):
    """Where `sima score` takes t from. Only 'demo' needs to know which held-out images chose t
    (they are never in its reference); a reference of files is used as given."""
    from core.scoring import Calibration, calibrate

    if args.reference == "demo":
        return calibrate(model, attack=args.attack, t=args.t, seed=args.seed, cache=_cache(args))
    return Calibration(args.attack, args.t, None, "given")


def cmd_score(args: argparse.Namespace) -> int:
    from core.attacks import get_attack
    from core.scoring import CANNOT_JUDGE, score_images
    from core.sets import load_files, reference_set

    if args.fdr is not None and not args.reference:
        raise SimaError("--fdr needs --reference: a verdict compares each image with known non-members.")
    model = _model(args)
    modes = conditions(args, model, [*args.images, *([args.reference] if args.reference else [])])
    if len(modes) > 1:
        raise SimaError("sima score takes one --condition (caption or empty); run it once for each.")
    table = modes[0][1]
    problems: list = []

    def skipped(problem) -> None:
        _skipped(problem)
        problems.append(problem)

    _no_captions_on_ray(args, modes)
    if args.engine == "ray":
        records, reference = _score_on_ray(args, model, skipped)
    else:
        images, ids = load_files(args.images, model, on_problem=skipped)
        reference, reference_ids = None, []
        if args.reference:
            reference, reference_ids = reference_set(args.reference, model, _calibration(args, model), on_problem=_skipped)
        records = score_images(
            model, images, ids, attack=get_attack(args.attack), t=args.t, reference=reference, fpr=args.fpr, fdr=args.fdr,
            seed=args.seed, batch_size=args.batch_size, cache=_cache(args), cond=set_condition(table, ids),
            reference_cond=set_condition(table, reference_ids) if reference is not None else None,
        )
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    else:
        for r in records:
            line = f"{r.file}\tt={r.t}\tstatistic={r.statistic:.6g}"
            if r.p_value is not None:
                line += f"\tp={r.p_value:.4f}"
                if r.adjusted_p is not None:
                    line += f"\tBH-adjusted p={r.adjusted_p:.4f}"
                line += f"\t{r.verdict}"
            if r.verdict == CANNOT_JUDGE:
                line += f"\t({r.explanation})"
            print(line)
        if reference is not None:
            rate = f"false discovery rate {args.fdr}" if args.fdr is not None else f"FPR {args.fpr}"
            judged = [r for r in records if r.verdict != CANNOT_JUDGE]
            print(f"\nVerdicts at {rate} against {len(reference)} reference non-members."
                  + (f" {judged[0].explanation}" if judged else ""))
    return EXIT_USER_ERROR if problems else 0


def cmd_collection(args: argparse.Namespace) -> int:
    from core.collection import check_collection
    from core.scoring import calibrate
    from core.sets import load_files, reference_set

    model = _model(args)
    if any(mode == "caption" for mode, _ in conditions(args, model, args.images)):
        raise SimaError("sima collection scores a conditional model with the empty prompt only; drop --captions/--labels "
                        "(or give --condition empty).")
    update, close = _progress("calibration audit", args.quiet)
    try:
        calibration = calibrate(model, attack=args.attack, t=args.t, seed=args.seed, batch_size=args.batch_size,
                                cache=_cache(args), progress=update)
    finally:
        close()
    problems: list = []

    def skipped(problem) -> None:
        _skipped(problem)
        problems.append(problem)

    if args.engine == "ray":
        result = _collection_on_ray(args, model, calibration, skipped)
    else:
        images, _ = load_files(args.images, model, on_problem=skipped)
        reference, reference_ids = reference_set(args.reference, model, calibration, on_problem=_skipped)
        result = check_collection(
            model, images, reference, reference_ids, calibration=calibration, alpha=args.alpha,
            n_bootstrap=args.bootstrap, seed=args.seed, batch_size=args.batch_size, cache=_cache(args),
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(model.info().describe())
        print(result.summary())
    return EXIT_USER_ERROR if problems else 0


def _sweep_on_ray(args, model, attack, t: int, skipped, calibration):
    """The images and the reference of `sima score` / `sima collection`, swept by Ray workers:
    (image ids, statistics, digests) and (reference statistics, digests, ids)."""
    import numpy as np

    from core import distributed
    from core.errors import ImageError

    sets = [("images", spec) for spec in args.images] + ([("heldout", args.reference)] if args.reference else [])
    update, close = _progress(f"{attack.name} chunks", args.quiet)
    try:
        swept = distributed.sweep_sets(args.model, sets, attacks=[attack], timesteps=[t], seed=args.seed,
                                       batch_size=args.batch_size, local_model=model, **_ray_options(args, update))[0]
    finally:
        close()
    images = swept[:len(args.images)]
    problems = [p for r in images for p in r.errors]
    for problem in problems:
        skipped(problem)
    ids = [i for r in images for i in r.ids]
    if not ids:
        raise ImageError(f"No images could be loaded: {'; '.join(p.message for p in problems[:3])}.")
    stats = np.concatenate([r.statistics[:, 0] for r in images])
    found = (ids, stats, [d for r in images for d in r.digests])
    if not args.reference:
        return found, None
    ref = swept[-1]
    # as core.sets.reference_set: 'demo' leaves out the held-out images that chose t
    excluded = set(calibration.selection_ids) if args.reference == "demo" else set()
    keep = [i for i, image_id in enumerate(ref.ids) if image_id not in excluded]
    if not keep:
        raise ImageError(f"No reference images could be loaded from {args.reference}.")
    return found, (ref.statistics[keep, 0], [ref.digests[i] for i in keep], [ref.ids[i] for i in keep])


def _score_on_ray(args, model, skipped):
    """`sima score --engine ray`: records, and the reference statistics (None without one)."""
    from core.attacks import get_attack
    from core.scoring import records_from_statistics

    attack = get_attack(args.attack)
    calibration = _calibration(args, model) if args.reference else None
    (ids, stats, digests), reference = _sweep_on_ray(args, model, attack, args.t, skipped, calibration)
    if reference is None:
        return records_from_statistics(ids, stats, attack=attack, t=args.t), None
    ref_stats, ref_digests, _ = reference
    records = records_from_statistics(
        ids, stats, attack=attack, t=args.t, reference=ref_stats, fpr=args.fpr, fdr=args.fdr, digests=digests,
        reference_digests=ref_digests,
    )
    return records, ref_stats


def _collection_on_ray(args, model, calibration, skipped):
    """`sima collection --engine ray`: the collection test of statistics swept by Ray workers."""
    from core.attacks import get_attack
    from core.collection import collection_from_statistics
    from core.scoring import overlap_free

    (_, stats, digests), (ref_stats, ref_digests, _) = _sweep_on_ray(
        args, model, get_attack(calibration.attack), calibration.t, skipped, calibration)
    keep = overlap_free(ref_digests, digests)
    return collection_from_statistics(
        stats, ref_stats[keep], calibration=calibration, alpha=args.alpha, n_bootstrap=args.bootstrap, seed=args.seed,
        overlap=len(ref_digests) - len(keep),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from core.train import train

    folder = train(args.config, args.out, progress=not args.quiet)
    print(f"Saved {folder}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from core.cache import ScoreCache

    cache = ScoreCache(args.cache_dir)
    if args.action == "clear":
        from core.batching import forget

        print(f"Removed {cache.clear():,} cached statistics from {cache.path} "
              f"and {forget()} stored batch-size calibration(s); they are measured again on next use.")
    else:
        print(cache.info().describe())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from core.models.pytorch_ddpm import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, allow_pickle=args.allow_pickle, weights=args.weights)
    print(f"Wrote {out} (diffusers UNet2DModel with safetensors weights, and its scheduler); load it with --model {out}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    import subprocess

    app = Path(__file__).resolve().parents[1] / "explorer" / "app.py"
    if not app.is_file():
        raise SimaError(f"The explorer app is missing ({app}); reinstall sima-explorer from its source folder.")
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)]
    return subprocess.call(command, cwd=app.parents[1])


def build_parser() -> argparse.ArgumentParser:
    from core.audit import DEFAULT_GRID
    from core.metrics import N_BOOTSTRAP

    parser = argparse.ArgumentParser(prog="sima", description="Membership inference on diffusion models (SimA and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="bundled demo name, diffusers folder, hub id, or pytorch-ddpm ckpt.pt")
        p.add_argument("--seed", type=int, default=0, help="seed for splits, noise and bootstrap (default 0)")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--allow-pickle", action="store_true", help="allow pickle-based .bin/.pt weights (only from a source you trust)")
        p.add_argument("--weights", choices=["ema", "net"], help="pytorch-ddpm ckpt.pt only: EMA weights (default) or the raw net")
        p.add_argument("--scaling-factor", type=float, help="latent models only: the latent scaling factor, when the VAE config lacks one")
        p.add_argument("--json", action="store_true", help="print JSON to stdout")
        p.add_argument("--batch-size", type=int, default=None, help="forward-pass batch size (default: measured fastest, then cached)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--no-cache", action="store_true", help="recompute everything; neither read nor write the score cache")
        p.add_argument("--cache-dir", help="score cache folder (default $SIMA_CACHE_DIR or ~/.cache/sima-explorer)")
        p.add_argument("--captions", help="captions per image for a text-to-image model: a CSV (columns file,caption), "
                       "a JSONL (\"file\", \"caption\"), or 'sidecar' for NAME.txt files beside the images")
        p.add_argument("--labels", help="class labels per image for a class-conditional model (DiT): CSV file,label or JSONL")
        p.add_argument("--condition", default=None,
                       help="caption: condition on each image's caption (or label); empty: on the empty prompt / "
                       "null class; caption,empty: both, one result each (audit only). Default: caption when "
                       "--captions/--labels is given, else empty")
        p.add_argument("--lora", help="LoRA adapter on a Stable Diffusion / SDXL model: a .safetensors file, its folder, or a hub id")
        p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA adapter weight (default 1.0)")
        speed = p.add_argument_group("large runs (GPU, Ray)")
        speed.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                           help="autocast precision of the network's forward pass (default fp32; fp16 needs a GPU)")
        speed.add_argument("--compile", action="store_true", help="torch.compile the network (pays off on long GPU runs)")
        speed.add_argument("--channels-last", action="store_true", help="channels-last layout for a latent model's UNet (pixel models use it already)")
        speed.add_argument("--engine", default="local", choices=["local", "ray"],
                           help="'ray': score on a Ray cluster with Ray Data (pip install -e '.[ray]'); default: this process")
        speed.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local Ray on this machine)")
        speed.add_argument("--workers", type=int, default=1, help="Ray workers, each with one model copy (one GPU each with --device cuda)")
        speed.add_argument("--shards", help="folder or fsspec URL for the Ray engine's per-chunk Parquet statistics, "
                           "shared by every worker (default: under the score cache); a rerun skips the chunks done")

    audit = sub.add_parser("audit", help="score members and non-members, choose t on one half, report on the other")
    common(audit)
    audit.add_argument("--members", help="'demo', a folder, zip or npz of training images")
    audit.add_argument("--nonmembers", help="'demo', a folder, zip or npz of held-out images")
    audit.add_argument("--dataset", help="cifar10:DIR or cifar100:DIR, the archive (binary or python version, or its .tar.gz); needs --split")
    audit.add_argument("--split", help="split file (.npz) whose mia_train_idxs / mia_eval_idxs pick members / non-members from the training split")
    audit.add_argument("--attack", default="sima", help="attack name(s), comma separated (default sima)")
    audit.add_argument("--timesteps", default=DEFAULT_GRID, help=f"START:STOP:STEP inclusive, or a list (default {DEFAULT_GRID})")
    audit.add_argument("--select", default="auc", choices=["auc", "tpr1"], help="metric that chooses t on the selection half")
    audit.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help=f"bootstrap resamples for CIs (default {N_BOOTSTRAP})")
    audit.add_argument("--out", help="folder for result.json, samples.csv and scores.npz")
    audit.add_argument("--card", help="model card (README.md) whose audit section is rewritten with the results")
    audit.set_defaults(func=cmd_audit)

    score = sub.add_parser("score", help="score images; with --reference, a p-value and verdict for each")
    common(score)
    score.add_argument("images", nargs="+", help="image files, folders, zips or npz")
    score.add_argument("--attack", default="sima")
    score.add_argument("--t", type=int, default=50, help="timestep (default 50)")
    score.add_argument("--reference", help="known non-members ('demo' for a bundled model's held-out set)")
    score.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of the verdict (default 0.01)")
    score.add_argument("--fdr", type=float, default=None,
                       help="instead of --fpr, flag images so that the false discovery rate over them is at most FDR "
                       "(Benjamini-Hochberg), e.g. 0.1")
    score.set_defaults(func=cmd_score)

    coll = sub.add_parser("collection", help="was this collection of images, as a group, used in training?")
    common(coll)
    coll.add_argument("--images", nargs="+", required=True, help="the collection: image files, folders, zips or npz")
    coll.add_argument("--reference", required=True,
                      help="known non-members: 'demo' (the model's held-out images less those that chose t), or files")
    coll.add_argument("--attack", default=None, help="attack (default: the model card's, else sima)")
    coll.add_argument("--t", type=int, default=None,
                      help="timestep (default: the model card's, else chosen by a calibration audit on the model's split)")
    coll.add_argument("--alpha", type=float, default=0.01, help="significance level of the verdict (default 0.01)")
    coll.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC's CI (default 1000)")
    coll.set_defaults(func=cmd_collection)

    train = sub.add_parser("train", help="train a demo model from a JSON config")
    train.add_argument("config", help="training config JSON (e.g. assets/models/NAME/train.json)")
    train.add_argument("--out", help="output folder (default: from the config)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train)
    cache = sub.add_parser("cache", help="show or clear the score cache (clear also forgets batch-size calibrations)")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir", help="score cache folder (default $SIMA_CACHE_DIR or ~/.cache/sima-explorer)")
    cache.set_defaults(func=cmd_cache)

    convert = sub.add_parser("convert", help="convert a pytorch-ddpm ckpt.pt into a diffusers folder (safetensors, no pickle)")
    convert.add_argument("checkpoint", help="ckpt.pt, with the run's flagfile.txt beside it")
    convert.add_argument("out", help="new folder for the diffusers model")
    convert.add_argument("--weights", choices=["ema", "net"], default="ema", help="EMA weights (default) or the raw net")
    convert.add_argument("--allow-pickle", action="store_true", help="required: ckpt.pt is a pickle (only from a source you trust)")
    convert.set_defaults(func=cmd_convert)

    explore = sub.add_parser("explore", help="open the explorer app in the browser")
    explore.add_argument("--port", type=int, default=8501)
    explore.set_defaults(func=cmd_explore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *rest, **kw: _warn(str(message))
            return args.func(args)
    except SimaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
