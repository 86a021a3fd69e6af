"""The Ray Data engine: the same audits and scores, on the workers of a Ray cluster.

A source is cut into chunks (``core.shards.Unit``: the same chunks that the single-process
audit streams). Ray Data runs ``map_batches`` over the chunks with a pool of actors, each of
which loads the model once (one GPU each with ``--device cuda``), reads and converts its chunk,
and sweeps it with the same ``core.audit.image_statistics`` as one process does. Each chunk's
per-sample statistics go to one Parquet shard whose name is a digest of the run's settings and
of the chunk's image contents, written atomically: a rerun skips every chunk whose shard
exists, and a crash loses at most the chunks in flight. Ray restarts a dead actor and retries
its chunk. The driver then merges the shards in source order and hands the statistics to
``core.audit.audit_from_statistics``, the code every audit ends in.

Exactness: the noise of random attacks is keyed by (seed, image content, t), and a chunk is
swept in the same forward batches as in one process, so with the same forward batch size
(``--batch-size``, or the same calibration) the statistics are equal to the last bit.

Shards live on local disk by default; on a cluster of several machines give a folder that
every worker can write (a shared file system or an fsspec URL such as ``s3://bucket/run``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import DataError, ImageError, SimaError
from core.images import ImageProblem
from core.shards import Unit, load_unit, plan_units

#: Environment variable naming a marker file: when set and the file is missing, the first
#: actor to take a chunk creates the file and kills its own process (fault-injection tests).
FAIL_ONCE_ENV = "SIMA_RAY_FAIL_ONCE"
DEMO = "demo"

Progress = Callable[[int, int], None]


@dataclass
class SetStatistics:
    """The statistics (N, T) of one image set, in source order, with its ids, digests, blind-baseline
    features and bad files."""

    ids: list[str]
    statistics: np.ndarray
    digests: list[str] = field(default_factory=list)  # content digests, as core.hashing.row_digests
    features: np.ndarray | None = None  # the blind baseline's (core.blind.features), one row per image
    errors: list[ImageProblem] = field(default_factory=list)


def _require_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise SimaError("The Ray engine needs Ray Data: pip install -e '.[ray]' (or 'sima-explorer[ray]').") from None
    return ray


def connect(address: str | None = None, workers: int | None = None):
    """Join the Ray cluster at ``address`` (or $RAY_ADDRESS), or start a local one; reuses a running one."""
    ray = _require_ray()
    if not ray.is_initialized():
        try:
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SimaError(f"Cannot reach a Ray cluster at {address or os.environ.get('RAY_ADDRESS')} ({exc}); "
                            "start one with `ray start --head` or leave --address out for a local one.") from None
    # The CLI draws its own progress bar; Ray Data's bars and INFO lines would interleave with it.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _units(spec: str, chunk: int, n_demo: int | None) -> list[Unit]:
    if spec == DEMO:
        # The bundled split is small and swept as one chunk, as the single-process audit does.
        return [Unit(DEMO, DEMO, 0, n_demo or 0)]
    return plan_units(spec, chunk)


class _Scorer:
    """A Ray actor: loads the model once, then reads and converts one chunk a call and sweeps it
    with every attack of the run."""

    def __init__(self, *, model, load_kwargs: dict, demo_sides: Sequence[str], attacks: list, timesteps: list[int],
                 seed: int, batch_size: int | None, shard_dir: str, fail_marker: str | None):
        from core import load_model
        from core.cache import attack_key

        self.model = load_model(model, **load_kwargs)
        self.attacks, self.timesteps, self.seed, self.batch_size = attacks, timesteps, seed, batch_size
        self.shard_dir, self.fail_marker, self.demo_sides = shard_dir, fail_marker, list(demo_sides)
        self.run_keys = [json.dumps([self.model.fingerprint, attack_key(a, seed, self.model.numerics), timesteps]) for a in attacks]

    def _load(self, side: int, unit: Unit):
        if unit.kind == DEMO:
            from core.datasets import demo_sets
            from core.images import LoadedImages

            members, member_ids, heldout, heldout_ids = demo_sets(self.model)
            images, ids = (members, member_ids) if self.demo_sides[side] == "members" else (heldout, heldout_ids)
            return LoadedImages(images, list(ids), [[] for _ in ids])
        c, h, w = self.model.image_shape
        return load_unit(unit, channels=c, size=(h, w))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"side": [], "index": [], "shards": [], "count": [], "errors": []}
        for side, index, text in zip(batch["side"], batch["index"], batch["unit"]):
            unit = Unit.from_json(str(text))
            try:
                loaded = self._load(int(side), unit)
                errors = loaded.errors
            except ImageError as error:  # an unreadable shard: listed like a bad file
                loaded, errors = None, [ImageProblem(unit.location, str(error))]
            count = 0 if loaded is None else len(loaded)
            shards = []
            if count:
                from core.blind import features

                blind = features(loaded.images)  # the blind baseline's, so the driver needs no images
                shards = [self._score(loaded, blind, j) for j in range(len(self.attacks))]
            out["side"].append(int(side))
            out["index"].append(int(index))
            out["shards"].append(json.dumps(shards))
            out["count"].append(count)
            out["errors"].append(json.dumps([[e.source, e.message] for e in errors]))
        return out

    def _score(self, loaded, blind: np.ndarray, j: int) -> str:
        """The shard of attack ``j``'s statistics for this chunk: found, or computed and written."""
        import fsspec.core
        import pyarrow as pa
        import pyarrow.parquet as pq

        from core.audit import image_statistics
        from core.hashing import row_digests

        digests = row_digests(loaded.images)
        key = hashlib.sha256(json.dumps([self.run_keys[j], loaded.ids, digests]).encode()).hexdigest()[:32]
        fs, folder = fsspec.core.url_to_fs(self.shard_dir)
        path = f"{folder.rstrip('/')}/{key}.parquet"
        if fs.exists(path):
            return fs.unstrip_protocol(path)  # done by an earlier run, or by this chunk's attempt before a crash
        stats = image_statistics(self.model, loaded.images, self.attacks[j], self.timesteps, seed=self.seed,
                                 batch_size=self.batch_size).numpy()
        self._maybe_fail()
        table = pa.table({"id": loaded.ids, "digest": digests, "blind": list(blind),
                          **{f"t{t}": stats[:, k] for k, t in enumerate(self.timesteps)}})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        fs.makedirs(folder, exist_ok=True)
        # Written under a temporary name, then renamed: a crash never leaves a partial shard.
        tmp = f"{path}.{os.getpid()}.tmp"
        fs.pipe_file(tmp, buffer.getvalue())
        fs.mv(tmp, path)
        return fs.unstrip_protocol(path)

    def _maybe_fail(self) -> None:
        # The work in flight (this chunk's statistics, not yet written) dies with the process.
        if self.fail_marker and not os.path.exists(self.fail_marker):
            open(self.fail_marker, "w").close()
            os._exit(1)


def sweep_sets(
    model, sets: Sequence[tuple[str, str]], *, attacks: Sequence, timesteps: Sequence[int], seed: int = 0,
    batch_size: int | None = None, workers: int = 1, address: str | None = None, shard_dir: str | None = None,
    load_kwargs: dict | None = None, chunk: int | None = None, progress: Progress | None = None, local_model=None,
) -> list[list[SetStatistics]]:
    """Statistics of each image set under each attack on a Ray cluster: ``result[attack][set]``.

    ``sets`` holds (side, source) pairs; ``side`` is "members" or "heldout" and picks the
    bundled split when the source is "demo". ``model`` is a model spec (demo name, folder, hub
    id) or a loaded DiffusionModel (shipped to the workers); ``load_kwargs`` go to
    ``core.load_model`` on each worker (device, precision, compile, channels_last,
    allow_pickle). With a cuda device each worker takes one GPU. ``local_model`` is the model
    as loaded in this process, if it is (for the sizes of the demo split).
    """
    from core.audit import CHUNK_IMAGES
    from core.cache import default_dir
    from core.datasets import demo_sets

    ray = connect(address, None if address else max(workers, 1))
    load_kwargs = dict(load_kwargs or {})
    attacks = list(attacks)
    timesteps = sorted({int(t) for t in timesteps})
    chunk = chunk or CHUNK_IMAGES
    shard_dir = str(shard_dir or default_dir() / "shards")
    demo_sizes = {}
    if any(spec == DEMO for _, spec in sets):
        members, _, heldout, _ = demo_sets(local_model or _driver_model(model, load_kwargs))
        demo_sizes = {"members": len(members), "heldout": len(heldout)}
    rows = [
        {"side": i, "index": k, "unit": unit.to_json()}
        for i, (side, spec) in enumerate(sets)
        for k, unit in enumerate(_units(spec, chunk, demo_sizes.get(side)))
    ]
    gpu = str(load_kwargs.get("device", "cpu")).startswith("cuda")
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        _Scorer,
        batch_size=1,
        # A fixed pool; Ray Data restarts an actor that dies and retries its chunk (its default
        # for actor pools), which the shards make safe: a retried chunk is written once.
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=1,
        num_gpus=1 if gpu else 0,
        fn_constructor_kwargs={
            "model": model, "load_kwargs": load_kwargs, "demo_sides": [side for side, _ in sets], "attacks": attacks,
            "timesteps": timesteps, "seed": seed, "batch_size": batch_size, "shard_dir": shard_dir,
            "fail_marker": os.environ.get(FAIL_ONCE_ENV),
        },
    )
    results: dict[tuple[int, int], dict] = {}
    try:
        for row in dataset.iter_rows():
            results[(int(row["side"]), int(row["index"]))] = row
            if progress is not None:
                progress(len(results), len(rows))
    except SimaError:
        raise
    except Exception as exc:  # a chunk that failed on every retry, or a lost cluster
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SimaError(f"The Ray run failed ({type(exc).__name__}: {first}); finished chunks are kept in "
                        f"{shard_dir}: run the same command again to resume.") from None
    if len(results) != len(rows):
        raise SimaError(f"{len(rows) - len(results)} chunk(s) came back from no worker; run the same command again to resume.")
    per_set = [[results[(r["side"], r["index"])] for r in rows if r["side"] == i] for i in range(len(sets))]
    return [[_merge(chunks, j, timesteps) for chunks in per_set] for j in range(len(attacks))]


def _driver_model(model, load_kwargs: dict):
    """The model on this process's CPU: its name, fingerprint and demo split, never its GPU work."""
    from core import load_model

    speed = ("device", "precision", "compile", "channels_last")
    return load_model(model, **{k: v for k, v in load_kwargs.items() if k not in speed})


def _merge(chunks: list[dict], j: int, timesteps: list[int]) -> SetStatistics:
    """One set's shards of attack ``j``, read back in chunk order: the order one process streams them in."""
    import fsspec.core
    import pyarrow.parquet as pq

    ids, digests, parts, blind, errors = [], [], [], [], []
    for row in chunks:
        errors += [ImageProblem(source, message) for source, message in json.loads(row["errors"])]
        shards = json.loads(row["shards"])
        if not shards:
            continue
        fs, path = fsspec.core.url_to_fs(shards[j])
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        if table.num_rows != int(row["count"]):
            raise DataError(f"The shard {shards[j]} holds {table.num_rows} rows for a chunk of {row['count']} images; delete it and run again.")
        ids += table.column("id").to_pylist()
        digests += table.column("digest").to_pylist()
        blind += table.column("blind").to_pylist()
        parts.append(np.stack([table.column(f"t{t}").to_numpy() for t in timesteps], axis=1))
    if len(set(ids)) != len(ids):
        raise DataError("Two images in one set have the same id; rename one of them.")
    stats = np.concatenate(parts) if parts else np.empty((0, len(timesteps)))
    return SetStatistics(ids, stats.astype(np.float64), digests, np.asarray(blind, dtype=np.float64), errors)


def run_audit(
    model, members: str, nonmembers: str, *, attacks: Sequence, timesteps: Sequence[int], select: str = "auc",
    seed: int = 0, batch_size: int | None = None, n_bootstrap: int = 1000, workers: int = 1, address: str | None = None,
    shard_dir: str | None = None, load_kwargs: dict | None = None, progress: Progress | None = None,
    warn: Callable[[ImageProblem], Any] | None = None, local_model=None,
) -> list:
    """``core.audit.run_audit`` of each attack on a Ray cluster, for sources named by path or URL
    ("demo" too). One Ray run reads each image once and sweeps it with every attack.

    Bad files go to ``warn`` (one ImageProblem each) and are skipped, as in one process. Each
    result's wall time is the whole run's, which its attacks shared.
    """
    from core.attacks import get_attack
    from core.audit import SELECTIONS, audit_from_statistics

    attacks = [get_attack(a) if isinstance(a, str) else a for a in attacks]
    if select not in SELECTIONS:
        raise SimaError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}.")
    timesteps = sorted({int(t) for t in timesteps})
    start = time.perf_counter()
    local_model = local_model or _driver_model(model, load_kwargs or {})
    swept = sweep_sets(
        model, [("members", members), ("heldout", nonmembers)], attacks=attacks, timesteps=timesteps, seed=seed,
        batch_size=batch_size, workers=workers, address=address, shard_dir=shard_dir, load_kwargs=load_kwargs,
        progress=progress, local_model=local_model,
    )
    for spec, result in zip((members, nonmembers), swept[0]):
        for problem in result.errors:
            if warn is not None:
                warn(problem)
        if not result.ids:
            raise ImageError(f"No images could be loaded from {spec}; give a folder, zip or npz of images, or Parquet or tar shards.")
    wall = time.perf_counter() - start
    return [
        audit_from_statistics(
            np.concatenate([s.statistics for s in sets]), [i for s in sets for i in s.ids], [len(s.ids) for s in sets],
            model=local_model, attack=attack, features=np.concatenate([s.features for s in sets]),
            timesteps=timesteps, select=select, seed=seed, n_bootstrap=n_bootstrap, wall_time_s=wall,
        )
        for attack, sets in zip(attacks, swept)
    ]
