"""The app's shared choices and cached loaders: the only place the explorer touches caches.

Models are cached with ``st.cache_resource`` (one object shared by every session). Sweeps and
other results are cached with ``st.cache_data`` keyed by plain values only: the model's
fingerprint, the attack and its hyperparameters, the timestep grid, the seed and a content
digest of the images. Model objects and tensors travel in arguments whose names start with an
underscore, which Streamlit leaves out of the key. Statistics also go through core's
persistent score cache, so a reopened app does not recompute them either.

Uploads are read from memory (Streamlit keeps them in memory) and never written to disk.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import streamlit as st
import torch

from core.errors import DataError, SimaError
from core.models.base import DiffusionModel

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "assets" / "examples"
EXAMPLES_CSV = "examples.csv"

#: Most files one uploader accepts (a zip counts its images); the rest are skipped, with a note.
MAX_UPLOAD_FILES = 2_000
#: Most images the check page scores at once (each gets its own panel).
MAX_CHECK_IMAGES = 24
#: The model a newcomer sees first; ``SIMA_EXPLORER_MODEL`` overrides it (``sima explore --model``).
DEFAULT_MODEL = "digits-ddpm-memorising"
MODEL_ENV = "SIMA_EXPLORER_MODEL"
#: The grid of the paper's README: 21 timesteps, where SimA's signal is strongest for DDPMs.
DEFAULT_GRID = "0:200:10"
GRID_ENV = "SIMA_EXPLORER_GRID"
DEFAULT_SEED = 0
N_BOOTSTRAP = 1000
#: FPRs a verdict can be asked at; 1% is the literature's headline operating point.
FPR_CHOICES = (0.001, 0.01, 0.05, 0.1)
DEFAULT_FPR = 0.01
#: Neighbours shown on the local-mean page.
TOP_K = 8
#: Timesteps of the effective-neighbours curve: dense where the kernel is narrow, sparse after.
EFFECTIVE_T = (0, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 999)
#: The pixel and latent demos trained on the same members, for the "Pixel vs latent" page.
PIXEL_VS_LATENT = ("digits-ddpm-memorising", "digits-ldm-beta-low", "digits-ldm-beta-high")
PERFECT_MEMORISER = "digits-empirical"

#: One line per attack for pickers; query counts come from the attack objects themselves.
ATTACK_BLURBS = {
    "sima": "SimA: norm of the predicted noise at the clean image",
    "sima-mc": "SimA-MC: SimA averaged over noisy copies",
    "pia": "PIA: consistency of the noise predicted at 0 and at t",
    "pian": "PIAN: PIA with normalised noise",
    "secmi": "SecMI: error of a DDIM inversion round trip",
    "loss": "Loss: the training loss at one noise draw",
    "pfami": "PFAMI: loss change under small crops (ignores t)",
}
ATTACK_TITLES = {
    "sima": "SimA", "sima-mc": "SimA-MC", "pia": "PIA", "pian": "PIAN", "secmi": "SecMI", "loss": "Loss", "pfami": "PFAMI",
}
STATISTIC_LABELS = {"sima": "noise norm ‖ε̂(x₀, t)‖₄⁴"}


# ----------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class Choices:
    """What the sidebar decided: every page reads these and nothing else from the sidebar."""

    spec: str
    device: str
    attack: str
    grid: tuple[int, ...]
    seed: int = DEFAULT_SEED


def default_model() -> str:
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def default_grid() -> str:
    return os.environ.get(GRID_ENV, "").strip() or DEFAULT_GRID


def devices() -> list[str]:
    """CPU always; a GPU only when torch can see one."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def attack_names() -> tuple[str, ...]:
    from core.attacks import ATTACK_NAMES

    return ATTACK_NAMES


def attack_title(name: str) -> str:
    return ATTACK_TITLES.get(name, name)


def statistic_label(attack: str) -> str:
    return STATISTIC_LABELS.get(attack, f"{attack} statistic")


def attack_summary(name: str, t: int) -> str:
    """'SimA: ... (1 query per image, member when lower)' for captions."""
    attack = make_attack(name)
    n = attack.queries_per_sample(t)
    direction = "lower" if attack.member_when == "lower" else "higher"
    blurb = ATTACK_BLURBS.get(name, name)
    return f"{blurb} ({n} model {'query' if n == 1 else 'queries'} per image; members score {direction})"


def make_attack(name: str):
    from core.attacks import get_attack

    return get_attack(name)


def attack_params(name: str) -> str:
    """The attack's hyperparameters as one string: with its name, part of every cache key."""
    return json.dumps(make_attack(name).get_params(), sort_keys=True, default=repr)


def parse_grid(text: str, num_train_timesteps: int) -> tuple[tuple[int, ...], str | None]:
    """The grid from the sidebar's text, and a warning when steps were dropped."""
    from core.audit import parse_timesteps

    steps = parse_timesteps(text)
    kept = tuple(t for t in steps if 0 <= t < num_train_timesteps)
    if not kept:
        raise SimaError(
            f"No timestep of {text!r} lies within this model's range 0 to {num_train_timesteps - 1}."
        )
    dropped = len(steps) - len(kept)
    note = None
    if dropped:
        note = f"{dropped} timestep(s) outside 0..{num_train_timesteps - 1} were left out."
    return kept, note


# ----------------------------------------------------------------------------- models


@st.cache_resource(show_spinner=False, max_entries=8)
def get_model(spec: str, device: str) -> DiffusionModel:
    """A model by spec, loaded once per process and shared by every session."""
    from core import load_model

    return load_model(spec, device=device)


def demo_names() -> list[str]:
    from core import demo_names as names

    return names()


@dataclass
class LabelledSet:
    """Members and non-members as [-1, 1] images, with a content key for caches."""

    members: torch.Tensor
    member_ids: list[str]
    nonmembers: torch.Tensor
    nonmember_ids: list[str]
    key: str
    source: str
    member_digests: tuple[str, ...] = ()
    nonmember_digests: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.member_ids) + len(self.nonmember_ids)

    def images(self) -> torch.Tensor:
        return torch.cat([self.members, self.nonmembers])

    def ids(self) -> list[str]:
        return self.member_ids + self.nonmember_ids

    def truth(self, digest: str) -> str | None:
        """'member' or 'held-out' when an image with this content digest is in the set."""
        if digest in self.member_digests:
            return "member"
        if digest in self.nonmember_digests:
            return "held-out"
        return None


def labelled_set(members, member_ids, nonmembers, nonmember_ids, source: str) -> LabelledSet:
    """Wrap two image batches, keyed by their content so equal uploads share cached results."""
    from core.hashing import row_digests, tensor_digest

    if len(member_ids) == 0 or len(nonmember_ids) == 0:
        raise DataError("Give at least one member and one non-member image.")
    key = tensor_digest(members) + tensor_digest(nonmembers)
    return LabelledSet(
        members, list(member_ids), nonmembers, list(nonmember_ids), key, source,
        tuple(row_digests(members)), tuple(row_digests(nonmembers)),
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def model_split(spec: str, device: str) -> LabelledSet:
    """The model's own members and held-out images; DataError when its manifest has none."""
    from core.datasets import demo_sets

    members, member_ids, heldout, heldout_ids = demo_sets(get_model(spec, device))
    return labelled_set(members, member_ids, heldout, heldout_ids, "the model's own split")


def split_or_reason(choices: Choices) -> tuple[LabelledSet | None, str | None]:
    """The model's split, or why there is none (a model without a manifest of its members)."""
    try:
        return model_split(choices.spec, choices.device), None
    except SimaError as error:
        return None, str(error)


# ----------------------------------------------------------------------------- uploads


def load_uploads(files: Sequence, image_shape: Sequence[int], *, progress: Callable[[int, int], None] | None = None):
    """Uploaded files (objects with ``.name`` and ``.getvalue()``, or (name, bytes) pairs) in
    memory to the model's image size by core.data's policy; zips are unpacked in memory."""
    from core.data import load_images

    pairs = [f if isinstance(f, tuple) else (f.name, f.getvalue()) for f in files]
    c, h, w = image_shape
    return load_images(pairs, channels=c, size=(h, w), max_files=MAX_UPLOAD_FILES, progress=progress)


@dataclass(frozen=True)
class Example:
    """A bundled example image and, when the CSV says, whether it was a training member."""

    name: str
    path: Path
    label: str | None
    id: str | None
    model: str | None = None  # the model whose training set the label refers to

    def title(self) -> str:
        if not self.label:
            return self.name
        return f"{self.name} ({self.label}{f' of {self.model}' if self.model else ''})"

    def truth_for(self, model_name: str) -> str | None:
        """The label, when it is about this model (or about no model in particular)."""
        return self.label if self.model in (None, model_name) else None


def _example_label(row: dict) -> str | None:
    raw = str(row.get("label", row.get("membership", row.get("member", "")))).strip().lower()
    if raw in ("member", "members", "1", "true", "yes", "train", "training"):
        return "member"
    if raw in ("held-out", "heldout", "held_out", "nonmember", "non-member", "0", "false", "no", "test"):
        return "held-out"
    return None


@st.cache_data(show_spinner=False)
def examples(folder: str = str(EXAMPLES_DIR)) -> list[Example]:
    """The bundled example images, with labels from examples.csv when it is there."""
    from core.data import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        return []
    rows: dict[str, dict] = {}
    table = root / EXAMPLES_CSV
    if table.is_file():
        with open(table, newline="") as handle:
            for row in csv.DictReader(handle):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                name = Path(row.get("file") or row.get("filename") or row.get("path") or "").name
                if name:
                    rows[name] = row
    found = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            row = rows.get(path.name, {})
            found.append(Example(path.name, path, _example_label(row), row.get("id") or None, row.get("model") or None))
    return found


def load_examples(chosen: Sequence[Example], image_shape: Sequence[int]):
    """Bundled examples through the same loader as uploads."""
    return load_uploads([(e.name, e.path.read_bytes()) for e in chosen], image_shape)


# ----------------------------------------------------------------------------- sweeps


@st.cache_resource(show_spinner=False, max_entries=8)
def _forward_rate(fingerprint: str, device: str, _spec: str) -> float:
    model = get_model(_spec, device)
    x = torch.randn(64, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((64,), model.num_train_timesteps // 10)
    model.eps(x, t)  # the first call allocates
    best = float("inf")
    for _ in range(3):  # the best of three: other work on the machine only slows a run down
        start = time.perf_counter()
        model.eps(x, t)
        best = min(best, time.perf_counter() - start)
    return 64 / max(best, 1e-6)


def forward_rate(choices: Choices) -> float:
    """Model evaluations per second on this machine, from one timed batch (measured once)."""
    return _forward_rate(get_model(choices.spec, choices.device).fingerprint, choices.device, choices.spec)


def attack_cost(name: str, grid: Sequence[int], n_images: int) -> int:
    """Model evaluations an audit of ``n_images`` over ``grid`` takes with this attack."""
    return n_images * make_attack(name).queries_for_grid(grid)



@st.cache_resource(show_spinner=False)
def score_cache():
    """core's persistent score cache, or None when its folder cannot be written."""
    from core.cache import ScoreCache

    cache = ScoreCache()
    try:
        cache.get("probe", "probe", [], [])
    except SimaError:
        return None
    return cache


def _progress_bar(text: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A st.progress bar with a rate and time-left estimate; returns (update, close)."""
    bar = st.progress(0.0, text=text)
    start = time.perf_counter()
    first: list[int] = []

    def update(done: int, total: int) -> None:
        if not first:
            first.append(done)  # pairs served by the score cache are not "work"
        elapsed = time.perf_counter() - start
        worked = done - first[0]
        eta = ""
        if worked > 0 and done < total:
            eta = f", about {max(1, round((total - done) * elapsed / worked))} s left"
        bar.progress(done / max(total, 1), text=f"{text}: {done:,} / {total:,} image-timestep pairs{eta}")

    return update, bar.empty


@st.cache_data(show_spinner=False, max_entries=64)
def _audit(
    fingerprint: str, device: str, attack: str, params: str, grid: tuple[int, ...], seed: int, data_key: str,
    n_bootstrap: int, persistent: bool, _spec: str, _data: LabelledSet, _why: str,
):
    from core.audit import run_audit

    model = get_model(_spec, device)
    update, close = _progress_bar(
        f"{_why}Scoring {len(_data):,} images at {len(grid)} timesteps with {attack_title(attack)} on {model.name}"
    )
    try:
        return run_audit(
            model, _data.members, _data.nonmembers, attack=make_attack(attack),
            timesteps=grid, seed=seed, member_ids=_data.member_ids, nonmember_ids=_data.nonmember_ids,
            n_bootstrap=n_bootstrap, progress=update, cache=score_cache() if persistent else None,
        )
    finally:
        close()


def audit(
    choices: Choices, data: LabelledSet, *, attack: str | None = None, spec: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP, persistent: bool = True, why: str = "",
):
    """The audit of ``data`` under the chosen (or given) model and attack, computed once.

    ``persistent=False`` skips the on-disk score cache, so that the wall time is a real
    measurement (the attack comparison reports it). ``why`` starts the progress bar's text;
    it is not part of the cache key.
    """
    spec = spec or choices.spec
    name = attack or choices.attack
    fingerprint = get_model(spec, choices.device).fingerprint
    return _audit(
        fingerprint, choices.device, name, attack_params(name), tuple(choices.grid), choices.seed,
        data.key, n_bootstrap, persistent, spec, data, why,
    )


@st.cache_data(show_spinner=False, max_entries=256)
def _image_statistics(
    fingerprint: str, device: str, attack: str, params: str, grid: tuple[int, ...], seed: int, digest: str,
    _spec: str, _images: torch.Tensor,
) -> np.ndarray:
    from core.audit import image_statistics

    model = get_model(_spec, device)
    return image_statistics(model, _images, make_attack(attack), list(grid), seed=seed, cache=score_cache()).numpy()


def image_statistics(choices: Choices, images: torch.Tensor) -> np.ndarray:
    """Raw statistics (N, T) of [-1, 1] images over the grid, with the same keyed noise as audits."""
    from core.hashing import tensor_digest

    fingerprint = get_model(choices.spec, choices.device).fingerprint
    return _image_statistics(
        fingerprint, choices.device, choices.attack, attack_params(choices.attack), tuple(choices.grid), choices.seed,
        tensor_digest(images), choices.spec, images,
    )


@dataclass
class Reference:
    """Statistics of known images over the grid, against which single images are judged."""

    timesteps: list[int]
    member_when: str
    nonmembers: np.ndarray  # (N0, T) raw statistics of known non-members
    members: np.ndarray | None  # (N1, T), when members are known
    nonmember_digests: tuple[str, ...]
    source: str
    chosen_t: int | None = None

    def column(self, t: int) -> int:
        return self.timesteps.index(t)


def reference_from_audit(result, data: LabelledSet) -> Reference:
    """The model's own split as a reference: held-out images calibrate, members show contrast."""
    return Reference(
        timesteps=list(result.timesteps), member_when=result.member_when,
        nonmembers=result.statistics[result.labels == 0], members=result.statistics[result.labels == 1],
        nonmember_digests=data.nonmember_digests, source=f"the model's {len(data.nonmember_ids):,} held-out images",
        chosen_t=result.chosen_t,
    )


def reference_from_images(choices: Choices, nonmembers: torch.Tensor) -> Reference:
    """Uploaded known non-members as the reference (members unknown)."""
    from core.hashing import row_digests

    stats = image_statistics(choices, nonmembers)
    return Reference(
        timesteps=list(choices.grid), member_when=make_attack(choices.attack).member_when,
        nonmembers=stats, members=None, nonmember_digests=tuple(row_digests(nonmembers)),
        source=f"your {len(nonmembers):,} uploaded non-members",
    )


@dataclass(frozen=True)
class Check:
    """One image's answer at one timestep."""

    statistic: float
    p_value: float
    likely_member: bool
    achievable: bool
    sentence: str
    n_reference: int
    left_out: bool


def check(reference: Reference, t: int, statistic: float, fpr: float, digest: str) -> Check:
    """The empirical p-value and verdict of one image at t against the reference non-members.

    An image that is itself one of the reference non-members is left out of the reference,
    so that it is not compared with itself.
    """
    from core import metrics

    keep = np.array([d != digest for d in reference.nonmember_digests], dtype=bool)
    ref_stats = reference.nonmembers[keep, reference.column(t)]
    score = float(metrics.membership_scores(np.array([statistic]), reference.member_when)[0])
    v = metrics.verdict(score, metrics.membership_scores(ref_stats, reference.member_when), fpr)
    return Check(statistic, v.p_value, v.likely_member, v.achievable, v.sentence, v.n_reference, not keep.all())


def kl_weight(manifest: dict | None) -> float | None:
    """The beta-VAE's KL weight from a latent demo's manifest, when it records one."""
    config = (manifest or {}).get("config") or {}
    value = (config.get("vae_train") or {}).get("beta")
    return float(value) if isinstance(value, (int, float)) else None


def compared(estimate, reference) -> str:
    """'clearly below', 'clearly above' or 'about the same as': by whether the 95% intervals overlap."""
    if None in (estimate.ci_low, estimate.ci_high, reference.ci_low, reference.ci_high):
        return "compared with"
    if estimate.ci_high < reference.ci_low:
        return "clearly below"
    if estimate.ci_low > reference.ci_high:
        return "clearly above"
    return "about the same as"


def extremes(result, t: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k most and the k least member-like samples at t (by membership score)."""
    order = np.argsort(-result.membership_scores(t), kind="stable")
    k = min(k, len(order))
    return order[:k], order[::-1][:k]


# ----------------------------------------------------------------------------- local means


@dataclass
class LocalMeanView:
    """What the local-mean page draws for one query at one t, all in image space [-1, 1]."""

    t: int
    query: np.ndarray
    mean: np.ndarray | None
    x0_hat: np.ndarray
    top_indices: list[int]
    top_weights: list[float]
    effective: float | None
    nearest_index: int | None
    nearest_distance: float | None
    space: str


@st.cache_resource(show_spinner=False, max_entries=8)
def _model_space(fingerprint: str, device: str, digest: str, _spec: str, _images: torch.Tensor) -> torch.Tensor:
    from core.audit import encode_batched

    return encode_batched(get_model(_spec, device), _images)


def model_space(choices: Choices, images: torch.Tensor) -> torch.Tensor:
    """Images encoded to the model's space (latents for a latent model), cached by content."""
    from core.hashing import tensor_digest

    model = get_model(choices.spec, choices.device)
    if not model.is_latent:
        return images
    return _model_space(model.fingerprint, choices.device, tensor_digest(images), choices.spec, images)


def _decode(model: DiffusionModel, z: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.decode(z).float().cpu().numpy() if model.is_latent else z.float().cpu().numpy()


@st.cache_data(show_spinner=False, max_entries=512)
def _local_mean_view(
    fingerprint: str, device: str, query_digest: str, reference_key: str | None, t: int, k: int,
    _spec: str, _query: torch.Tensor, _reference: torch.Tensor | None,
) -> LocalMeanView:
    from core.local_mean import explain, tweedie_x0

    model = get_model(_spec, device)
    z = _encode(model, _query)
    x0_hat = _decode(model, tweedie_x0(model, z, t))[0]
    space = "latent" if model.is_latent else "pixel"
    if _reference is None:
        return LocalMeanView(t, _query[0].numpy(), None, x0_hat, [], [], None, None, None, space)
    abar = model.abar(torch.tensor([t]))
    result = explain(z, _reference, abar, min(k, _reference.shape[0]))
    return LocalMeanView(
        t=t,
        query=_query[0].numpy(),
        mean=_decode(model, result.mean)[0],
        x0_hat=x0_hat,
        top_indices=result.top_indices[0].tolist(),
        top_weights=result.top_weights[0].tolist(),
        effective=float(result.effective_neighbours[0]),
        nearest_index=int(result.nearest_index[0]),
        nearest_distance=float(result.nearest_distance[0]),
        space=space,
    )


def _encode(model: DiffusionModel, images: torch.Tensor) -> torch.Tensor:
    from core.audit import encode_batched

    return encode_batched(model, images)


def local_mean_view(
    choices: Choices, query: torch.Tensor, reference: torch.Tensor | None, reference_key: str | None, t: int,
    k: int = TOP_K,
) -> LocalMeanView:
    """Local mean, Tweedie estimate and neighbours of one [-1, 1] image (1, C, H, W) at t.

    ``reference`` is in the model's space (see :func:`model_space`); None shows only the
    model's own estimate.
    """
    from core.hashing import tensor_digest

    model = get_model(choices.spec, choices.device)
    return _local_mean_view(
        model.fingerprint, choices.device, tensor_digest(query), reference_key, int(t), int(k),
        choices.spec, query, reference,
    )


@st.cache_data(show_spinner=False, max_entries=256)
def _effective_curve(
    fingerprint: str, device: str, query_digest: str, reference_key: str, steps: tuple[int, ...],
    _spec: str, _query: torch.Tensor, _reference: torch.Tensor,
) -> np.ndarray:
    from core.local_mean import effective_neighbours

    model = get_model(_spec, device)
    z = _encode(model, _query)
    queries = z.expand(len(steps), *z.shape[1:])
    return effective_neighbours(queries, _reference, model.abar(torch.tensor(steps))).numpy()


def effective_curve(
    choices: Choices, query: torch.Tensor, reference: torch.Tensor, reference_key: str,
) -> tuple[list[int], np.ndarray]:
    """The effective number of neighbours of one image at each of :data:`EFFECTIVE_T`."""
    from core.hashing import tensor_digest

    model = get_model(choices.spec, choices.device)
    steps = tuple(t for t in EFFECTIVE_T if t < model.num_train_timesteps)
    values = _effective_curve(
        model.fingerprint, choices.device, tensor_digest(query), reference_key, steps, choices.spec, query, reference,
    )
    return list(steps), values


@st.cache_data(show_spinner=False, max_entries=32)
def _reconstructions(fingerprint: str, device: str, digest: str, _spec: str, _images: torch.Tensor) -> np.ndarray:
    model = get_model(_spec, device)
    return _decode(model, _encode(model, _images))


def reconstructions(spec: str, device: str, images: torch.Tensor) -> np.ndarray:
    """What a latent model's autoencoder keeps of images: decode(encode(x)), in [-1, 1]."""
    from core.hashing import tensor_digest

    model = get_model(spec, device)
    return _reconstructions(model.fingerprint, device, tensor_digest(images), spec, images)
