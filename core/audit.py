"""Audits: the evaluation protocol of docs/methods.md, section 5, from images to an AuditResult.

Members and non-members are each split 50/50 (seeded) into a selection half and a report
half. The timestep is chosen on the selection half only; every reported metric comes from
the report half at that timestep, with bootstrap confidence intervals. The full per-timestep
curves are kept for display. Every audit also fits the blind baseline (``core.blind``) on the
same halves, and two audits of the same split can be compared pairwise (``compare_results``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from core import metrics
from core.attacks.base import Attack
from core.blind import BlindBaseline, blind_baseline, features as blind_features
from core.cache import ScoreCache
from core.conditioning import Conditioning
from core.errors import DataError, SimaError
from core.hashing import row_digests
from core.models.base import DiffusionModel

SELECTIONS = ("auc", "tpr1")
#: The default timestep grid (the paper's: 21 timesteps, where SimA's signal is strongest for
#: DDPMs), as a user would type it; ``DEFAULT_TIMESTEPS`` is the same grid as numbers.
DEFAULT_GRID = "0:200:10"
RESULT_FILE = "result.json"
SCORES_FILE = "scores.npz"
SAMPLES_FILE = "samples.csv"
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]


def parse_timesteps(text: str) -> list[int]:
    """'0:200:10' (inclusive stop), '50' or '10,50,100' to a sorted list of distinct integers."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] <= 0):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            steps = list(range(start, stop + 1, step))
        else:
            steps = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SimaError(f"Cannot read timesteps {text!r}: use START:STOP:STEP (e.g. 0:200:10), or a list like 10,50,100.") from None
    if not steps:
        raise SimaError(f"Timesteps {text!r} give an empty grid.")
    return sorted(set(steps))


DEFAULT_TIMESTEPS = tuple(parse_timesteps(DEFAULT_GRID))


def split_halves(n_members: int, n_nonmembers: int, seed: int) -> np.ndarray:
    """True where a sample is in the selection half; members and non-members split separately."""
    if n_members < 2 or n_nonmembers < 2:
        raise DataError(
            f"An audit needs at least 2 members and 2 non-members (got {n_members} and {n_nonmembers}) "
            "so that both halves hold both classes."
        )
    rng = np.random.default_rng(seed)
    halves = []
    for n in (n_members, n_nonmembers):
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.permutation(n)[: n // 2]] = True
        halves.append(chosen)
    return np.concatenate(halves)


def choose_timestep(stats: np.ndarray, labels: np.ndarray, member_when: str, timesteps: Sequence[int], select: str) -> tuple[int, list[float | None]]:
    """Index of the best timestep by AUC or TPR@1%FPR on the given samples, and each t's value.

    Ties go to the earliest timestep, so the choice is deterministic.
    """
    values: list[float | None] = []
    for j in range(len(timesteps)):
        scores = metrics.membership_scores(stats[:, j], member_when)
        if select == "auc":
            values.append(metrics.auc(scores=scores, labels=labels))
        else:
            values.append(metrics.tpr_at_fpr(scores=scores, labels=labels, target_fpr=0.01).value)
    if all(v is None for v in values):
        raise DataError(
            "TPR@1%FPR cannot be measured on the selection half (it needs at least 100 non-members there); "
            "select by AUC instead (--select auc) or add non-members."
        )
    best = max(range(len(values)), key=lambda j: (values[j] is not None, values[j] or 0.0, -j))
    return best, values


@dataclass
class AuditResult:
    """Everything an audit produced; enough to recompute every metric from the raw statistics."""

    attack: str
    attack_params: dict
    member_when: str
    timesteps: list[int]
    ids: list[str]
    labels: np.ndarray  # 1 member, 0 non-member
    selection_half: np.ndarray  # True where the sample chose t
    statistics: np.ndarray  # (N, T) raw statistic, for display and recomputation
    chosen_t: int
    selection: str
    metrics: metrics.Metrics
    per_t: list[dict]
    seed: int
    model_fingerprint: str
    model_name: str
    queries_per_sample: int
    wall_time_s: float
    n_bootstrap: int = metrics.N_BOOTSTRAP
    extra: dict = field(default_factory=dict)
    #: A model-free classifier on the same split (None for results saved before audits had one).
    blind_baseline: BlindBaseline | None = None
    #: False for attacks that ignore t (PFAMI): chosen_t is then only the grid's first value.
    uses_timestep: bool = True

    @property
    def n_members(self) -> int:
        return int(self.labels.sum())

    @property
    def n_nonmembers(self) -> int:
        return int((1 - self.labels).sum())

    def column(self, t: int) -> int:
        if t not in self.timesteps:
            raise SimaError(f"t={t} is not in this audit's grid {self.timesteps}.")
        return self.timesteps.index(t)

    def membership_scores(self, t: int | None = None) -> np.ndarray:
        """Scores where higher means member, at t (default: the chosen t), for all samples."""
        return metrics.membership_scores(self.statistics[:, self.column(self.chosen_t if t is None else t)], self.member_when)

    def report_mask(self) -> np.ndarray:
        return ~self.selection_half

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "attack": self.attack,
            "attack_params": self.attack_params,
            "member_when": self.member_when,
            "chosen_t": self.chosen_t,
            "selection": self.selection,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "model_fingerprint": self.model_fingerprint,
            "model_name": self.model_name,
            "uses_timestep": self.uses_timestep,
            "queries_per_sample": self.queries_per_sample,
            "wall_time_s": round(self.wall_time_s, 3),
            "timesteps": self.timesteps,
            "metrics": self.metrics.to_dict(),
            "per_t": self.per_t,
            "blind_baseline": None if self.blind_baseline is None else self.blind_baseline.to_dict(),
            **({"extra": self.extra} if self.extra else {}),
        }

    @property
    def label(self) -> str:
        """The attack's name, with the condition when a conditional model was audited: "sima (empty)"."""
        condition = self.extra.get("condition")
        return f"{self.attack} ({condition})" if condition else self.attack

    def summary(self) -> str:
        m = self.metrics.to_dict()

        def fmt(key: str) -> str:
            e = m[key]
            if e["value"] is None:
                return "not measurable"
            ci = "" if e["ci_low"] is None else f" [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
            return f"{e['value']:.3f}{ci}"

        report = int(self.report_mask().sum())
        chosen = (
            f"t chosen on the selection half by {self.selection}: t = {self.chosen_t} (grid {self.timesteps[0]}..{self.timesteps[-1]}, {len(self.timesteps)} steps)"
            if self.uses_timestep else f"{self.attack} ignores t (it uses its own steps); no t was chosen"
        )
        lines = [
            f"{self.model_name} | attack {self.attack} | {self.n_members} members, {self.n_nonmembers} non-members",
            chosen,
            f"Report half ({report} samples), 95% bootstrap CIs ({self.n_bootstrap} resamples):",
            f"  AUC          {fmt('auc')}",
            f"  ASR          {fmt('asr')}",
            f"  TPR@1%FPR    {fmt('tpr_at_1pct_fpr')}",
            f"  TPR@0.1%FPR  {fmt('tpr_at_0_1pct_fpr')}",
            f"Queries per sample{' at the chosen t' if self.uses_timestep else ''}: {self.queries_per_sample}; wall time {self.wall_time_s:.1f} s",
        ]
        if self.blind_baseline is not None:
            lines.append(self.blind_baseline.sentence())
        return "\n".join(lines)

    def to_frame(self):
        """Per-sample table: id, label, half, then the raw statistic at each timestep."""
        import pandas as pd

        frame = pd.DataFrame({"id": self.ids, "label": self.labels.astype(int), "half": self.halves()})
        for j, t in enumerate(self.timesteps):
            frame[f"t{t}"] = self.statistics[:, j]
        return frame

    def halves(self) -> list[str]:
        return ["selection" if s else "report" for s in self.selection_half]

    def save(self, folder: str | Path) -> Path:
        """Write result.json, scores.npz and the per-sample CSV into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=2))
        np.savez(
            folder / SCORES_FILE,
            statistics=self.statistics,
            labels=self.labels,
            selection_half=self.selection_half,
            timesteps=np.asarray(self.timesteps),
            ids=np.asarray(self.ids, dtype=str),
        )
        self.write_csv(folder / SAMPLES_FILE)
        return folder

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label", "half", *(f"t{t}" for t in self.timesteps)])
            for i, half in enumerate(self.halves()):
                writer.writerow([self.ids[i], int(self.labels[i]), half, *(repr(float(v)) for v in self.statistics[i])])

    @classmethod
    def load(cls, folder: str | Path) -> "AuditResult":
        """Read a saved audit back; metrics are recomputed from the raw statistics and checked."""
        folder = Path(folder)
        try:
            info = json.loads((folder / RESULT_FILE).read_text())
            arrays = np.load(folder / SCORES_FILE, allow_pickle=False)
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise DataError(f"{folder} does not hold a readable audit ({exc}); run `sima audit --out {folder}` again.") from None
        return assemble_result(
            statistics=arrays["statistics"],
            labels=arrays["labels"],
            selection_half=arrays["selection_half"],
            ids=[str(i) for i in arrays["ids"]],
            timesteps=[int(t) for t in arrays["timesteps"]],
            attack=info["attack"],
            attack_params=info["attack_params"],
            member_when=info["member_when"],
            select=info["selection"],
            seed=info["seed"],
            n_bootstrap=info["n_bootstrap"],
            model_fingerprint=info["model_fingerprint"],
            model_name=info["model_name"],
            queries_per_sample=info["queries_per_sample"],
            wall_time_s=info["wall_time_s"],
            extra=info.get("extra", {}),
            blind_baseline=BlindBaseline.from_dict(info.get("blind_baseline")),
            uses_timestep=info.get("uses_timestep", _uses_timestep(info["attack"])),
        )


def compare_results(a: AuditResult, b: AuditResult, *, n_bootstrap: int | None = None, seed: int | None = None) -> metrics.Comparison:
    """Paired comparison of two audits of the same samples: each attack's report-half scores at
    its own chosen t, resampled together (``core.metrics.compare``).

    Both audits must hold the same images in the same order with the same halves (the same
    sets and seed); anything else is not a paired comparison and is refused.
    """
    if a.ids != b.ids or not np.array_equal(a.labels, b.labels) or not np.array_equal(a.selection_half, b.selection_half):
        raise DataError(
            f"{a.attack} and {b.attack} were not audited on the same samples and halves, so they cannot be compared "
            "pairwise; audit both on the same members, non-members and seed."
        )
    report = a.report_mask()
    return metrics.compare(
        scores_a=a.membership_scores()[report], scores_b=b.membership_scores()[report], labels=a.labels[report],
        names=(a.label, b.label), n_bootstrap=a.n_bootstrap if n_bootstrap is None else n_bootstrap,
        seed=a.seed if seed is None else seed,
    )


def _uses_timestep(attack: str) -> bool:
    """Whether a registered attack reads t (for results saved before they said so)."""
    from core.attacks import ATTACK_NAMES, get_attack

    return get_attack(attack).uses_timestep if attack in ATTACK_NAMES else True


def assemble_result(*, statistics, labels, selection_half, timesteps, member_when, select, seed, n_bootstrap, **rest) -> AuditResult:
    """An AuditResult from raw statistics (N, T), labels and the selection half: t chosen on the
    selection half, every metric on the report half. ``rest`` holds the result's other fields
    (ids, attack, model names, wall time...). Public so that statistics computed elsewhere (a
    benchmark's synthetic scores, another engine) go through the same protocol."""
    sel, rep = selection_half, ~selection_half
    best, sel_values = choose_timestep(statistics[sel], labels[sel], member_when, timesteps, select)
    sel_auc = sel_values if select == "auc" else [
        metrics.auc(scores=metrics.membership_scores(statistics[sel, j], member_when), labels=labels[sel]) for j in range(len(timesteps))
    ]
    per_t = []
    for j, t in enumerate(timesteps):
        scores = metrics.membership_scores(statistics[rep, j], member_when)
        per_t.append({
            "t": int(t),
            "selection_auc": sel_auc[j],
            "auc": metrics.auc(scores=scores, labels=labels[rep]),
            "asr": metrics.asr(scores=scores, labels=labels[rep]),
            "tpr_at_1pct_fpr": metrics.tpr_at_fpr(scores=scores, labels=labels[rep], target_fpr=0.01).value,
        })
    report_scores = metrics.membership_scores(statistics[rep, best], member_when)
    return AuditResult(
        statistics=statistics,
        labels=labels,
        selection_half=selection_half,
        timesteps=list(timesteps),
        member_when=member_when,
        selection=select,
        seed=seed,
        n_bootstrap=n_bootstrap,
        chosen_t=int(timesteps[best]),
        metrics=metrics.evaluate(membership_scores=report_scores, labels=labels[rep], n_bootstrap=n_bootstrap, seed=seed),
        per_t=per_t,
        **rest,
    )


def encode_batched(model: DiffusionModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images to model space, in batches so a large set never goes through the encoder at once."""
    if not model.is_latent:
        return images
    with torch.inference_mode():
        return torch.cat([model.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def image_statistics(
    model: DiffusionModel, images: torch.Tensor, attack: Attack, timesteps: Sequence[int], *, seed: int = 0,
    batch_size: int | None = None, progress: Progress | None = None, cache: ScoreCache | None = None,
    cond: Conditioning | Sequence[str] | None = None,
) -> torch.Tensor:
    """Raw statistics (N, T) of [-1, 1] images: encoded to model space, but keyed (for noise and
    cache) by the images' pixel content, so audits, scores and the app share every entry.

    ``cond`` conditions a conditional model per image: a caption (or class label) per image,
    or a Conditioning; None is the empty condition there.
    """
    return attack.sweep(
        model, encode_batched(model, images), timesteps, seed=seed, keys=row_digests(images),
        batch_size=batch_size, progress=progress, cache=cache, cond=cond,
    )


def estimate_seconds(
    model: DiffusionModel, attack: Attack, images: torch.Tensor, timesteps: Sequence[int], *, seed: int = 0,
    repeats: int = 2,
) -> float:
    """Seconds a sweep of ``images`` over ``timesteps`` will take here, timed on one batch.

    The sample is the images that fill one batch of the sweep as it will run (the calibrated
    batch size; for attacks that share work across t, that many whole images), so each model
    call sees the batch it will see in the real run. One untimed sweep of the sample (the first
    calls at new shapes allocate), then the mean of ``repeats`` timed ones, scaled to the whole
    set. No cache is used.
    """
    from core.batching import best_settings

    steps = sorted({int(t) for t in timesteps})
    if len(images) == 0 or not steps:
        return 0.0
    batch = best_settings(model)[0]
    if attack.shares_work_across_t:
        m = batch
    else:
        pairs_per_batch = max(1, batch // max(attack.queries_per_sample(t) for t in steps))
        m = math.ceil(pairs_per_batch / (len(steps) if attack.uses_timestep else 1))
    sample = images[:max(1, min(m, len(images)))]
    image_statistics(model, sample, attack, steps, seed=seed)  # the first calls at a batch's shapes allocate
    elapsed = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        image_statistics(model, sample, attack, steps, seed=seed)
        elapsed += time.perf_counter() - start
    return elapsed / repeats * len(images) / len(sample)


#: Images swept together when a set is streamed: enough (sample, t) pairs to fill any batch,
#: few enough that memory stays flat however large the set is.
CHUNK_IMAGES = 512

ImageSet = Union[torch.Tensor, Iterable[tuple[torch.Tensor, Sequence[str]]]]
#: A set's conditioning: one caption (or label) per image in the set's order, a Conditioning,
#: or a function from a chunk's image ids to their captions (what a streamed set needs; a
#: :class:`~core.conditioning.CaptionTable`'s ``for_ids`` is one).
SetCondition = Union[Conditioning, Sequence[str], Callable[[list[str]], Sequence[str]], None]


def _chunk_condition(cond: SetCondition, offset: int, ids: list[str]):
    """The conditioning of one chunk of a set: ids[offset : offset + len(ids)] of it."""
    if cond is None:
        return None
    if callable(cond) and not isinstance(cond, Conditioning):
        return list(cond(ids))
    part = cond[offset:offset + len(ids)]
    if len(part) != len(ids):
        raise DataError(f"Got conditioning for {len(cond)} images but the set holds more; give one per image.")
    return part


def _chunks(images: ImageSet, ids: Sequence[str] | None, prefix: str) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images, ids) batches from a tensor (sliced) or from a stream of batches (as given)."""
    if isinstance(images, torch.Tensor):
        ids = list(ids) if ids is not None else [f"{prefix}-{i}" for i in range(len(images))]
        if len(ids) != len(images):
            raise DataError(f"Got {len(ids)} ids for {len(images)} {prefix} images.")
        for start in range(0, len(images), CHUNK_IMAGES):
            yield images[start:start + CHUNK_IMAGES], ids[start:start + CHUNK_IMAGES]
    else:
        for batch, batch_ids in images:
            yield batch, list(batch_ids)


def run_audit(
    model: DiffusionModel,
    members: ImageSet,
    nonmembers: ImageSet,
    *,
    attack: Attack | str = "sima",
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    select: str = "auc",
    seed: int = 0,
    member_ids: Sequence[str] | None = None,
    nonmember_ids: Sequence[str] | None = None,
    batch_size: int | None = None,
    n_bootstrap: int = metrics.N_BOOTSTRAP,
    progress: Progress | None = None,
    cache: ScoreCache | None = None,
    member_cond: SetCondition = None,
    nonmember_cond: SetCondition = None,
) -> AuditResult:
    """Audit one attack on one model.

    ``members`` and ``nonmembers`` are [-1, 1] image tensors (ids optional), or streams of
    ``(images, ids)`` batches (e.g. from ``core.data.iter_images``) so that a set of any size
    is swept holding one batch of images in memory (the blind baseline keeps only its small
    features of each batch). With a ``cache``, statistics computed
    before (by any audit, score or app session on the same model, images, attack and seed)
    are reused and new ones are stored as they finish. ``member_cond`` and ``nonmember_cond``
    condition a conditional model (see ``SetCondition``); None is the empty condition.
    """
    if isinstance(attack, str):
        from core.attacks import get_attack

        attack = get_attack(attack)
    if select not in SELECTIONS:
        raise SimaError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}.")
    timesteps = sorted({int(t) for t in timesteps})
    known = sum(len(s) for s in (members, nonmembers) if isinstance(s, torch.Tensor))
    streamed = not all(isinstance(s, torch.Tensor) for s in (members, nonmembers))
    start = time.perf_counter()
    parts: list[torch.Tensor] = []
    feature_parts: list[np.ndarray] = []  # the blind baseline's, small, so a stream keeps no images
    ids: list[str] = []
    counts = []
    done_pairs = 0
    sets = ((members, member_ids, "member", member_cond), (nonmembers, nonmember_ids, "nonmember", nonmember_cond))
    for images, given, prefix, set_cond in sets:
        count = 0
        for batch, batch_ids in _chunks(images, given, prefix):
            if tuple(batch.shape[1:]) != tuple(model.image_shape):
                raise DataError(
                    f"The images are {tuple(batch.shape[1:])} but {model.name} takes {tuple(model.image_shape)}; "
                    "load them with core.data so they are converted to the model's size."
                )
            def chunk_progress(done: int, total: int, offset: int = done_pairs) -> None:
                # A stream's length is unknown until it ends; show what is known so far.
                if progress is not None:
                    progress(offset + done, offset + total if streamed else known * len(timesteps))

            parts.append(image_statistics(
                model, batch, attack, timesteps, seed=seed, batch_size=batch_size, progress=chunk_progress, cache=cache,
                cond=_chunk_condition(set_cond, count, batch_ids),
            ))
            feature_parts.append(blind_features(batch))
            ids += batch_ids
            count += len(batch_ids)
            done_pairs += len(batch_ids) * len(timesteps)
        counts.append(count)
    return audit_from_statistics(
        torch.cat(parts).numpy() if parts else np.empty((0, len(timesteps))), ids, counts, model=model, attack=attack,
        features=np.concatenate(feature_parts) if feature_parts else np.empty((0, 0)), timesteps=timesteps,
        select=select, seed=seed, n_bootstrap=n_bootstrap, wall_time_s=time.perf_counter() - start,
        conditions=(member_cond, nonmember_cond),
    )


def audit_from_statistics(
    statistics: np.ndarray, ids: Sequence[str], counts: Sequence[int], *, model, attack: Attack, features: np.ndarray,
    timesteps: Sequence[int], select: str, seed: int, n_bootstrap: int, wall_time_s: float,
    conditions: tuple[SetCondition, SetCondition] = (None, None),
) -> AuditResult:
    """The AuditResult of raw statistics (N, T), members first: ``counts`` is (members, non-members).

    Every engine that computes statistics (this process, or Ray workers whose shards were
    merged in the same order) ends here, so the split, the choice of t and every metric are
    one piece of code. ``features`` are the blind baseline's (``core.blind.features``, one row
    per sample in the same order). ``model`` needs only ``fingerprint``, ``name`` and
    ``conditional``; ``conditions`` (members', non-members') say what conditioned it.
    """
    n_m, n_n = counts
    if len(ids) != n_m + n_n or len(statistics) != n_m + n_n:
        raise DataError(f"Got {len(ids)} ids and {len(statistics)} rows of statistics for {n_m} + {n_n} samples.")
    selection_half = split_halves(n_m, n_n, seed)
    labels = np.concatenate([np.ones(n_m, dtype=np.int64), np.zeros(n_n, dtype=np.int64)])
    baseline = blind_baseline(features, labels, selection_half, n_bootstrap=n_bootstrap, seed=seed)
    result = assemble_result(
        statistics=statistics,
        labels=labels,
        selection_half=selection_half,
        ids=list(ids),
        timesteps=list(timesteps),
        attack=attack.name,
        attack_params=_jsonable(attack.get_params()),
        member_when=attack.member_when,
        select=select,
        seed=seed,
        n_bootstrap=n_bootstrap,
        model_fingerprint=model.fingerprint,
        model_name=model.name,
        queries_per_sample=max(attack.queries_per_sample(t) for t in timesteps),
        wall_time_s=wall_time_s,
        extra=_condition_note(model, *conditions),
        blind_baseline=baseline,
        uses_timestep=attack.uses_timestep,
    )
    # The cost of the attack as reported: at the t it chose (SecMI's grows with t).
    result.queries_per_sample = attack.queries_at(model, result.chosen_t)
    return result


def _condition_note(model: DiffusionModel, *conds: SetCondition) -> dict:
    """What conditioned a conditional model's audit, for result.json and model cards."""
    if not getattr(model, "conditional", False):
        return {}
    given = [c is not None for c in conds]
    return {"condition": "caption" if all(given) else "empty" if not any(given) else "caption for one set only"}


def _jsonable(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in params.items()}
