"""The explorer's cached loaders: the only place the app touches Streamlit's caches.

Models are cached with ``st.cache_resource`` (one object shared by every session). Sweeps and
other results are cached with ``st.cache_data`` keyed by plain values only: the model's
fingerprint, the attack and its hyperparameters, the timestep grid, the seed and a content
digest of the images. Model objects and tensors travel in arguments whose names start with an
underscore, which Streamlit leaves out of the key. Statistics also go through core's
persistent score cache, so a reopened app does not recompute them either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
import torch

from core.attacks import get_attack
from core.domain import DomainReference
from core.errors import DataError, SimaError
from core.hashing import tensor_digest
from core.metrics import N_BOOTSTRAP
from core.models.base import DiffusionModel
from explorer import examples as bundled
from explorer.choices import Choices, parse_spec
from explorer.progress import progress_bar, raise_if_stopped, stop_button
from explorer.sets import LabelledSet, captions_digest, labelled_set

if TYPE_CHECKING:
    from core.audit import AuditResult
    from core.cache import ScoreCache
    from core.collection import CollectionResult
    from core.scoring import Calibration

#: Neighbours shown on the local-mean page.
TOP_K = 8
#: Timesteps of the effective-neighbours curve: dense where the kernel is narrow, sparse after.
EFFECTIVE_T = (0, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def attack_params(name: str) -> str:
    """The attack's hyperparameters as one string: with its name, part of every cache key."""
    return json.dumps(get_attack(name).get_params(), sort_keys=True, default=repr)


# ----------------------------------------------------------------------------- models


@st.cache_resource(show_spinner=False, max_entries=8)
def get_model(spec: str, device: str) -> DiffusionModel:
    """A model by spec (see :func:`explorer.choices.model_spec`: a LoRA adapter travels in it),
    loaded once per process and shared by every session."""
    from core import load_model

    model, extra = parse_spec(spec)
    return load_model(model, device=device, **extra)


@st.cache_data(show_spinner=False, max_entries=32)
def model_size(spec: str) -> tuple[int, int] | None:
    """(parameters, bytes) that loading ``spec`` will take, found without allocating it; None
    for a model without networks. Raises the ModelError that loading would raise."""
    from core.models.registry import plan_model

    plan = plan_model(parse_spec(spec)[0])  # the base model: a LoRA adapter is small beside it
    return None if plan is None else (plan.parameters, plan.nbytes)


@st.cache_resource(show_spinner=False, max_entries=8)
def model_split(spec: str, device: str) -> LabelledSet:
    """The model's own members and held-out images; DataError when its manifest has none."""
    from core.datasets import demo_captions, demo_sets

    model = get_model(spec, device)
    members, member_ids, heldout, heldout_ids = demo_sets(model)
    table = demo_captions(model) if getattr(model, "conditional", False) else None
    captions = {} if table is None else {
        "member_captions": table.for_ids(member_ids), "nonmember_captions": table.for_ids(heldout_ids)}
    return labelled_set(members, member_ids, heldout, heldout_ids, "the model's own split", **captions)


def split_or_reason(choices: Choices) -> tuple[LabelledSet | None, str | None]:
    """The model's split, or why there is none (a model without a manifest of its members)."""
    try:
        return model_split(choices.spec, choices.device), None
    except SimaError as error:
        return None, str(error)


@st.cache_data(show_spinner=False)
def examples(folder: str = str(bundled.EXAMPLES_DIR)) -> list[bundled.Example]:
    """The bundled example images, with labels from examples.csv when it is there."""
    return bundled.read_examples(folder)


# ----------------------------------------------------------------------------- sweeps


@st.cache_data(show_spinner=False, max_entries=64)
def _estimate_seconds(
    fingerprint: str, device: str, attack: str, params: str, grid: tuple[int, ...], seed: int, data_key: str,
    _spec: str, _data: LabelledSet,
) -> float:
    from core.audit import estimate_seconds

    with st.spinner(f"Timing one batch of {get_attack(attack).title}…"):
        return estimate_seconds(get_model(_spec, device), get_attack(attack), _data.images(), list(grid), seed=seed)


def estimate_seconds(choices: Choices, attack: str, data: LabelledSet) -> float:
    """Seconds an audit of ``data`` with ``attack`` will take on this machine, timed on one batch."""
    model = get_model(choices.spec, choices.device)
    return _estimate_seconds(
        model.fingerprint, choices.device, attack, attack_params(attack), tuple(choices.grid), choices.seed, data.key,
        choices.spec, data,
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def _domain_reference(digest: str, _images: torch.Tensor) -> DomainReference | None:
    return DomainReference.fit(_images)


def domain_reference(images: torch.Tensor) -> DomainReference | None:
    """Reference images fitted for the out-of-domain check (core.domain), once per content."""
    return _domain_reference(tensor_digest(images), images)


@st.cache_resource(show_spinner=False)
def score_cache() -> ScoreCache | None:
    """core's persistent score cache, or None when its folder cannot be written."""
    from core.cache import ScoreCache

    cache = ScoreCache()
    try:
        cache.get("probe", "probe", [], [])
    except SimaError:
        return None
    return cache


def captions_for(choices: Choices, captions, what: str = "these images") -> list[str] | None:
    """The captions to condition on in the chosen mode: the given ones in caption mode, None
    (the empty prompt, or an unconditional model) otherwise; a DataError when caption mode has
    no captions to use."""
    if choices.condition != "caption":
        return None
    if captions is None:
        raise DataError(
            f"The model is conditioned on each image's caption, but {what} have none. Add captions "
            "(NAME.txt beside each image in a zip), or choose the empty prompt in the sidebar."
        )
    return list(captions)


@st.cache_data(show_spinner=False, max_entries=64)
def _audit(
    fingerprint: str, device: str, attack: str, params: str, grid: tuple[int, ...], seed: int, data_key: str,
    n_bootstrap: int, persistent: bool, condition: str | None, _spec: str, _data: LabelledSet, _why: str,
):
    from core.audit import run_audit

    model = get_model(_spec, device)
    update, close = progress_bar(
        f"{_why}Scoring {len(_data):,} images at {len(grid)} timesteps with {get_attack(attack).title} on {model.name}",
        "image-timestep pairs",
    )
    try:
        return run_audit(
            model, _data.members, _data.nonmembers, attack=get_attack(attack),
            timesteps=grid, seed=seed, member_ids=_data.member_ids, nonmember_ids=_data.nonmember_ids,
            n_bootstrap=n_bootstrap, progress=update, cache=score_cache() if persistent else None,
            member_cond=None if condition != "caption" else list(_data.member_captions),
            nonmember_cond=None if condition != "caption" else list(_data.nonmember_captions),
        )
    finally:
        close()


def audit(
    choices: Choices, data: LabelledSet, *, attack: str | None = None, spec: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP, persistent: bool = True, why: str = "", run: str | None = None,
) -> AuditResult:
    """The audit of ``data`` under the chosen (or given) model and attack, computed once.

    ``persistent=False`` skips the on-disk score cache, so that the wall time is a real
    measurement (the attack comparison reports it). ``why`` starts the progress bar's text;
    it is not part of the cache key. While it runs, a Stop button is shown; ``run`` names what
    a press stops (default: this audit alone) and RunStopped is raised until it is resumed.
    """
    spec = spec or choices.spec
    name = attack or choices.attack
    model = get_model(spec, choices.device)
    condition = choices.condition if getattr(model, "conditional", False) else None
    if condition == "caption" and not data.captioned:
        captions_for(choices, None, f"the images of {data.source}")
    key = (model.fingerprint, choices.device, name, attack_params(name), tuple(choices.grid), choices.seed,
           data.key, n_bootstrap, persistent, condition)
    run = run or hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    what = f"scoring with {get_attack(name).title} on {model.name}"
    raise_if_stopped(run, what[0].upper() + what[1:])
    remove = stop_button(run, what)
    try:
        return _audit(*key, spec, data, why)
    finally:
        remove()


@st.cache_data(show_spinner=False, max_entries=256)
def _image_statistics(
    fingerprint: str, device: str, attack: str, params: str, grid: tuple[int, ...], seed: int, digest: str,
    captions_key: str, _spec: str, _images: torch.Tensor, _captions: list[str] | None,
) -> np.ndarray:
    from core.audit import image_statistics

    model = get_model(_spec, device)
    return image_statistics(model, _images, get_attack(attack), list(grid), seed=seed, cache=score_cache(),
                            cond=_captions).numpy()


def image_statistics(choices: Choices, images: torch.Tensor, captions=None) -> np.ndarray:
    """Raw statistics (N, T) of [-1, 1] images over the grid, with the same keyed noise as audits.

    ``captions`` (one per image) condition a conditional model in caption mode.
    """
    model = get_model(choices.spec, choices.device)
    used = captions_for(choices, captions) if getattr(model, "conditional", False) else None
    return _image_statistics(
        model.fingerprint, choices.device, choices.attack, attack_params(choices.attack), tuple(choices.grid),
        choices.seed, tensor_digest(images), captions_digest(used), choices.spec, images, used,
    )


# ----------------------------------------------------------------------------- collections


@st.cache_data(show_spinner=False, max_entries=16)
def _calibration(fingerprint: str, device: str, attack: str, seed: int, t: int | None, _spec: str):
    from core.scoring import calibrate

    update, close = progress_bar("Calibrating t on the model's own split", "image-timestep pairs")
    try:
        return calibrate(get_model(_spec, device), attack=attack, t=t, seed=seed, cache=score_cache(), progress=update)
    finally:
        close()


def calibration(choices: Choices, t: int | None = None) -> Calibration:
    """Where t and the attack come from for this model (``core.scoring.calibrate``), computed once."""
    fingerprint = get_model(choices.spec, choices.device).fingerprint
    return _calibration(fingerprint, choices.device, choices.attack, choices.seed, t, choices.spec)


@st.cache_data(show_spinner=False, max_entries=32)
def _collection(
    fingerprint: str, device: str, attack: str, t: int, source: str, images_key: str, reference_key: str,
    alpha: float, seed: int, _spec: str, _calibration, _images: torch.Tensor, _reference: torch.Tensor,
    _reference_ids: tuple[str, ...],
):
    from core.collection import check_collection

    return check_collection(
        get_model(_spec, device), _images, _reference, list(_reference_ids), calibration=_calibration,
        alpha=alpha, seed=seed, cache=score_cache(),
    )


def collection(choices: Choices, calibrated: Calibration, images: torch.Tensor, reference: torch.Tensor,
               reference_ids: list[str], alpha: float) -> CollectionResult:
    """The collection test (``core.collection.check_collection``) of ``images``, computed once."""
    fingerprint = get_model(choices.spec, choices.device).fingerprint
    return _collection(
        fingerprint, choices.device, calibrated.attack, calibrated.t, calibrated.source, tensor_digest(images),
        tensor_digest(reference), float(alpha), choices.seed, choices.spec, calibrated, images, reference,
        tuple(reference_ids),
    )


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
    model = get_model(spec, device)
    return _reconstructions(model.fingerprint, device, tensor_digest(images), spec, images)
