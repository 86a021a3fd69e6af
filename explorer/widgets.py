"""Pieces of Streamlit UI shared by the pages: the sidebar, the timestep slider, image strips.

The sidebar's widgets live in the entrypoint, so their keys and values persist across pages;
it stores its decision as a :class:`explorer.Choices` under ``CHOICES`` in the session.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import streamlit as st
import torch
from PIL import Image

from core import demo_names
from core.attacks import ATTACK_NAMES, CONDITIONAL_ATTACK_NAMES, get_attack
from core.errors import SimaError
from core.models.loading import human_size
from explorer import reading, state
from explorer.choices import (
    CONDITION_MODES, DEFAULT_MODEL, DEFAULT_SEED, Choices, default_grid, default_model, devices, model_spec,
    parse_grid, spec_title,
)
from explorer.progress import RunStopped, resume
from explorer.sets import LabelledSet

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from core.data import LoadedImages
from explorer.uploads import MAX_UPLOAD_FILES

CHOICES = "choices"
PROBLEM = "choices_problem"
SHARED_T = "shared_t"
FOLDER = "A local model folder…"
HUB = "A Hugging Face hub id…"
#: Thumbnails are scaled up by whole factors with nearest-neighbour so pixels stay sharp.
THUMB_PX = 112


# ----------------------------------------------------------------------------- errors


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a user-caused error as one line (st.error) and stop the page, never a traceback."""
    try:
        yield
    except RunStopped as stopped:
        st.warning(str(stopped))
        st.button("Run it again", key=f"resume:{stopped.run}", on_click=resume, args=(stopped.run,), type="primary")
        st.stop()
    except SimaError as error:
        st.error(str(error))
        st.stop()


# ----------------------------------------------------------------------------- sidebar


def _model_options() -> list[str]:
    return demo_names() + [FOLDER, HUB]


def _initial_model(options: list[str]) -> None:
    """Seed the picker once per session from SIMA_EXPLORER_MODEL, else the default demo."""
    if "model_choice" in st.session_state:
        return
    wanted = default_model()
    if wanted in options:
        st.session_state["model_choice"] = wanted
    elif wanted == DEFAULT_MODEL:  # the default demo is missing: any demo will do
        st.session_state["model_choice"] = options[0]
    elif Path(wanted).expanduser().exists() or "/" not in wanted:
        st.session_state["model_choice"] = FOLDER
        st.session_state["model_folder"] = wanted
    else:
        st.session_state["model_choice"] = HUB
        st.session_state["model_hub"] = wanted


def _model_spec() -> str:
    """The model box: a bundled demo, a folder or a hub id, and an optional LoRA adapter on it."""
    model = _base_model()
    if not model:
        return ""
    with st.expander("LoRA adapter (optional)", expanded=bool(st.session_state.get("model_lora"))):
        lora = st.text_input(
            "LoRA", key="model_lora", placeholder="/path/to/adapter or owner/name",
            help="A LoRA fine-tune of a Stable Diffusion or SDXL model: a .safetensors file, its folder, or a hub "
            "id (online only). It is loaded onto the model above through diffusers' own LoRA loading.",
        )
        scale = st.number_input("Scale", value=1.0, step=0.1, key="model_lora_scale", disabled=not lora.strip(),
                                help="The adapter's weight: 1.0 is the fine-tune as trained, 0 the base model.")
    return model_spec(model, lora, scale)


def _base_model() -> str:
    options = _model_options()
    _initial_model(options)
    if st.session_state.get("model_choice") not in options:
        st.session_state["model_choice"] = options[0]
    choice = st.selectbox(
        "Model", options, key="model_choice",
        help="Bundled demos have a known training set, so every answer can be checked against the truth.",
    )
    if choice == FOLDER:
        return st.text_input(
            "Folder", key="model_folder", placeholder="/path/to/diffusers-model",
            help="A diffusers folder (unet/ + scheduler/, and vae/ for a latent model). Only safetensors "
            "weights are read; no code from the folder runs.",
        ).strip()
    if choice == HUB:
        return st.text_input(
            "Hub id", key="model_hub", placeholder="owner/name",
            help="Downloaded once (configs and safetensors only) when you are online; offline, give a folder.",
        ).strip()
    return choice


def _size_line(size: tuple[int, int]) -> str:
    parameters, nbytes = size
    return f"{parameters:,} parameters, {human_size(nbytes)} in memory"


def _describe(info, size: tuple[int, int] | None = None) -> str:
    c, h, w = info.image_shape
    conditioned = {"caption": "text-to-image ", "label": "class-conditional "}.get(getattr(info, "condition_kind", None) or "", "")
    lines = [f"**{info.name}**: {conditioned}{info.kind} model, {h}×{w} pixels, {c} channel{'s' if c > 1 else ''}"]
    if info.kind == "latent":
        lines.append(f"latent space {'×'.join(map(str, info.sample_shape))}")
    if size:
        lines.append(_size_line(size))
    elif info.parameters:
        lines.append(f"{info.parameters:,} parameters")
    lines.append(f"{info.num_train_timesteps} timesteps, predicts {info.prediction_type}")
    if info.training_set_size:
        lines.append(f"trained on {info.training_set_size:,} known images")
    else:
        lines.append("training set unknown")
    return "  \n".join(lines)


def sidebar() -> Choices | None:
    """Draw the shared choices and load the model; returns (and stores) the Choices or None.

    When there are no Choices, ``PROBLEM`` holds what the pages should say instead.
    """
    st.session_state[CHOICES] = None
    st.session_state[PROBLEM] = "Choose a model in the sidebar to begin: the bundled demos work offline."
    with st.sidebar:
        spec = _model_spec()
        if not spec:
            st.info("Type a folder path or hub id to load a model.")
            return None
        device_options = devices()
        if st.session_state.get("device") not in device_options:
            st.session_state["device"] = device_options[0]
        device = st.selectbox("Device", device_options, key="device",
                              help="GPU appears when torch can see one.", disabled=len(device_options) == 1)
        caption = st.empty()
        try:
            # Sized from the configs and the weights' headers first, so a model too big for this
            # machine is refused before it is allocated, and the user sees what loading takes.
            size = state.model_size(spec)
            if size:
                caption.caption(f"Loading {spec_title(spec)}: {_size_line(size)}.")
            with st.spinner(f"Loading {spec_title(spec)}…"):
                model = state.get_model(spec, device)
        except SimaError as error:
            caption.empty()
            st.error(str(error))
            st.session_state[PROBLEM] = f"The model could not be loaded: {error} Choose another in the sidebar."
            return None
        info = model.info()
        caption.caption(_describe(info, size))
        if info.manifest and info.manifest.get("demo"):
            with st.expander("About this model"):
                st.caption(info.manifest["demo"])

        condition = _condition_mode(model)
        names = ATTACK_NAMES + (CONDITIONAL_ATTACK_NAMES if condition == "caption" else ())
        if st.session_state.get("attack") not in names:
            st.session_state["attack"] = names[0]
        attack = st.selectbox("Attack", names, key="attack", format_func=reading.attack_title)
        st.caption(get_attack(attack).blurb)
        if "grid" not in st.session_state:
            st.session_state["grid"] = default_grid()
        text = st.text_input("Timesteps", key="grid", help="START:STOP:STEP (stop included), or a list like 10,50,100.")
        try:
            grid, note = parse_grid(text, model.num_train_timesteps)
        except SimaError as error:
            st.error(str(error))
            st.session_state[PROBLEM] = f"The timesteps in the sidebar cannot be used: {error}"
            return None
        st.caption(f"{len(grid)} timestep{'s' if len(grid) > 1 else ''}, {grid[0]} to {grid[-1]}.")
        if note:
            st.warning(note)
        with st.expander("Advanced"):
            seed = st.number_input("Seed", min_value=0, value=DEFAULT_SEED, step=1, key="seed",
                                   help="Fixes the noise of random attacks, the selection/report split and the bootstrap.")
        st.caption("Everything runs on this machine; uploads stay in memory and are never sent anywhere.")
    choices = Choices(spec=spec, device=device, attack=attack, grid=tuple(grid), seed=int(seed), condition=condition)
    st.session_state[CHOICES] = choices
    return choices


def _condition_mode(model) -> str | None:
    """For a conditional model, what every page conditions it on: each image's caption (or
    class label) or the empty prompt; None for an unconditional model."""
    if not getattr(model, "conditional", False):
        return None
    what = "class label" if getattr(model, "condition_kind", None) == "label" else "caption"
    labels = {"caption": f"each image's {what}", "empty": "the empty prompt" if what == "caption" else "the null class"}
    if st.session_state.get("condition") not in CONDITION_MODES:
        st.session_state["condition"] = "caption"
    return st.radio(
        "Condition on", list(CONDITION_MODES), key="condition", format_func=labels.get,
        help=f"A {'text-to-image' if what == 'caption' else 'class-conditional'} model predicts the noise given a "
        f"condition. Members were trained with their own {what}, so conditioning on it usually shows more; the "
        "empty condition is what classifier-free guidance trains as 'unconditional'.",
    )


def require_choices() -> Choices:
    """The sidebar's choices, or a friendly stop when no model is loaded."""
    choices = st.session_state.get(CHOICES)
    if choices is None:
        st.info(st.session_state.get(PROBLEM) or "Choose a model in the sidebar to begin.")
        st.stop()
    return choices


# ----------------------------------------------------------------------------- timestep


def split_listed(model) -> bool:
    """Whether the model's manifest names its training members: then a missing split means its
    images are not on this machine (the photo demo without its data file), not an unknown set."""
    return bool((getattr(model, "manifest", None) or {}).get("member_ids"))


def missing_split(model, reason: str) -> None:
    """Why the model's own split is not offered: a warning when its images are missing, else a note."""
    (st.warning if split_listed(model) else st.caption)(reason)


def timestep_slider(
    grid: Sequence[int], chosen: int, *, key: str, choices: Choices, why: str, label: str = "Timestep t",
    help: str | None = None, share: bool = False,
) -> int:
    """A slider over the grid that opens at ``chosen`` (the t a calibration chose, said ``why``).

    The slider keeps the user's t only for the model, attack, seed and chosen t it was moved
    for: another model, or a new calibration, opens at its own chosen t. Pages that teach (``share=True``) share one t
    between them for the same choices; a page that gives verdicts never takes another page's t.
    Whenever the t differs from ``chosen`` a button takes it back.
    """
    grid = list(grid)
    model = repr((choices.spec, choices.attack, choices.seed))
    context = repr((model, chosen))  # a new calibration (another grid, say) opens at its own t
    shared = st.session_state.get(SHARED_T, {}) if share else {}
    if st.session_state.get(f"{key}__for") != context or st.session_state.get(key) not in grid:
        start = shared.get(model, chosen)
        st.session_state[key] = start if start in grid else min(grid, key=lambda t: abs(t - start))
        st.session_state[f"{key}__for"] = context
    if len(grid) == 1:
        st.caption(f"{label}: {grid[0]} (the grid has one timestep)")
        value = grid[0]
    else:
        value = st.select_slider(label, options=grid, key=key, help=help)
    if value == chosen:
        st.caption(f"t = {chosen}: {why}.")
    else:
        note, back = st.columns([3, 1])
        note.caption(f"t = {value}, moved by you; {why} is t = {chosen}.")
        back.button(f"Back to t = {chosen}", key=f"{key}__back", on_click=_set, args=(key, chosen),
                    help="Return to the t the calibration chose.")
    if share:  # only a t the user chose travels to the other pages
        st.session_state[SHARED_T] = {model: value} if value != chosen else {}
    return value


def _set(key: str, value) -> None:
    st.session_state[key] = value


def forget_stale(key: str, n_options: int) -> None:
    """Drop an index picked for another model's set when it is out of range for this one."""
    value = st.session_state.get(key)
    if value is not None and not (isinstance(value, int) and 0 <= value < n_options):
        del st.session_state[key]


# ----------------------------------------------------------------------------- images


def thumbnail(image: np.ndarray | torch.Tensor, px: int = THUMB_PX) -> Image.Image:
    """A (C, H, W) image in [-1, 1] as a picture scaled up by a whole factor, pixels kept sharp."""
    from core.images import to_uint8_image

    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
    picture = to_uint8_image(tensor)
    factor = max(1, px // max(picture.size))
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def image_strip(images: Sequence, captions: Sequence[str], *, px: int = THUMB_PX) -> None:
    """Images in a row (wrapping), each with its caption."""
    if len(images):
        st.image([thumbnail(im, px) for im in images], caption=list(captions), width=px)


def show_load_problems(loaded: LoadedImages, what: str = "files") -> None:
    """One st.error line per unusable file, and a note on files beyond the upload limit."""
    for problem in loaded.errors[:20]:
        st.error(problem.message if problem.message.startswith(problem.source) else f"{problem.source}: {problem.message}")
    if len(loaded.errors) > 20:
        st.error(f"…and {len(loaded.errors) - 20} more {what} could not be used.")
    if loaded.skipped:
        st.warning(f"Only the first {MAX_UPLOAD_FILES:,} {what} were read; {loaded.skipped:,} more were skipped.")


# ----------------------------------------------------------------------------- labelled data

UPLOADED_SET = "uploaded_set"
OWN_SPLIT = "The model's own split"
UPLOADED = "Your uploaded sets (from Audit a dataset)"


def labelled_data(choices: Choices, *, key: str) -> LabelledSet:
    """The members and non-members a page works on: the model's split, or the sets uploaded
    on the audit page; stops the page with a hint when neither exists."""
    split, reason = state.split_or_reason(choices)
    uploaded = st.session_state.get(UPLOADED_SET)
    if uploaded is not None and uploaded.get("spec") != choices.spec:
        uploaded = None
    options = ([OWN_SPLIT] if split is not None else []) + ([UPLOADED] if uploaded is not None else [])
    if not options:
        st.info(
            f"{reason} Upload member and non-member images on the **Audit a dataset** page, "
            "then come back here."
        )
        st.stop()
    choice = options[0] if len(options) == 1 else st.radio("Data", options, key=key, horizontal=True)
    return split if choice == OWN_SPLIT else uploaded["data"]


def plot(figure: go.Figure, key: str) -> None:
    """A plotly figure as built (no Streamlit theme), so the screen matches the HTML report."""
    st.plotly_chart(figure, key=key, theme=None, config={"displaylogo": False})


# ----------------------------------------------------------------------------- conditioning


def caption_editor(model, choices: Choices, names: Sequence[str], known: Sequence[str | None], *, key: str) -> list[str] | None:
    """An editable table with one caption per image, prefilled with the captions already known
    (a sidecar NAME.txt, the model's manifest); returns the captions in caption mode, None in
    empty mode. Stops the page, naming the images, while a caption is missing in caption mode."""
    import hashlib

    what = "label" if getattr(model, "condition_kind", None) == "label" else "caption"
    # The table's edits are kept per set of images, so a new upload starts from its own captions.
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    edited = st.data_editor(
        {"image": list(names), what: [k or "" for k in known]},
        key=f"{key}_{digest}", hide_index=True, num_rows="fixed", disabled=["image"], width="stretch",
        column_config={what: st.column_config.TextColumn(
            what.capitalize(), help=f"The {what} to condition the model on for this image (a NAME.txt beside an "
            "image inside an uploaded zip fills it in).", max_chars=2000)},
    )
    if choices.condition != "caption":
        st.caption(f"The sidebar conditions the model on the empty prompt, so these {what}s are not used.")
        return None
    captions = [str(c or "").strip() for c in edited[what]]
    missing = [n for n, c in zip(names, captions) if not c]
    if missing:
        st.warning(
            f"Type a {what} for {', '.join(missing[:5])}{' and others' if len(missing) > 5 else ''}, "
            "or condition on the empty prompt in the sidebar."
        )
        st.stop()
    return captions


#: Runs expected to take longer than this wait for the user to press a button first.
LONG_RUN_S = 60.0


def time_estimate(choices: Choices, data: LabelledSet, *, key: str, what: str, attack: str | None = None,
                  extra_images: int = 0) -> None:
    """Say how long scoring ``data`` (and ``extra_images`` more) will take here, from one timed
    batch of this model; stop the page until the user starts a run longer than :data:`LONG_RUN_S`."""
    name = attack or choices.attack
    n_images = len(data) + extra_images
    evaluations = n_images * get_attack(name).queries_for_grid(list(choices.grid))
    seconds = state.estimate_seconds(choices, name, data) * n_images / max(1, len(data))
    text = f"{seconds / 60:.0f} min" if seconds > 90 else f"{max(seconds, 1):.0f} s"
    note = (f"At most about {text} for {what} on this machine ({evaluations:,} model evaluations, timed on one batch; "
            "results already in the score cache are not recomputed).")
    if seconds <= LONG_RUN_S or st.session_state.get(key) == (choices, n_images):
        st.caption(note)
        return
    st.info(note)
    if st.button(f"Start (about {text})", key=f"{key}_start", type="primary"):
        st.session_state[key] = (choices, n_images)
        st.rerun()
    st.stop()
