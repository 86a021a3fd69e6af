"""Training the small demo models from a JSON config: a pixel DDPM, a beta-VAE + latent DDPM, or a
captioned text-to-image model in Stable Diffusion 1.x layout.

``train(config, out_dir)`` trains on the member split of the bundled digits
(:mod:`core.datasets`) and writes a diffusers folder (safetensors) with a ``manifest.json``
that records everything needed to audit and re-create the model. Randomness comes from one
seeded ``torch.Generator`` per phase, and checkpoints hold that generator's state with the
weights and optimizer state, so a resumed run ends with the same weights as an uninterrupted
one.

Config keys (missing ones take :data:`DEFAULTS`; an unknown key is an error):

- ``kind``: "pixel", "latent", "text" or "empirical" (no training: the closed-form denoiser over
  the members, :mod:`core.models.empirical`, rebuilt from the manifest at load time).
- ``name`` (default: the output folder's name); ``demo`` (one sentence for the model card);
  ``seed``; ``threads`` (``torch.set_num_threads``; null leaves torch's default).
- ``data``: ``size`` (side in pixels), ``members``, ``heldout``, ``split_seed``.
- ``scheduler``: DDPMScheduler fields (T = 1000, linear betas 1e-4..0.02, epsilon).
- ``unet``: UNet2DModel fields. Its channels and sample size follow from the data (pixel) or
  the VAE (latent) when left out.
- ``train``: the DDPM phase: ``steps``, ``batch_size``, ``lr``, ``weight_decay``,
  ``warmup_steps``, ``schedule`` ("cosine" decay to 0 or "constant"), ``grad_clip``,
  ``checkpoint_every``.
- ``vae`` / ``vae_train`` (latent and text): AutoencoderKL fields; the VAE phase as ``train`` plus
  ``beta`` (the KL weight), ``images`` (how many digits that are neither members nor held out
  train the autoencoder, so it has seen no digit it will be audited on) and ``reconstruction``:
  "mean" (loss per image = the squared error averaged over pixels + beta * KL summed over latent
  elements, so a beta between about 1e-6 and 1e-1 moves the bottleneck) or "sum" (the squared
  error summed over pixels + beta * KL, where KL barely binds; the captioned demo used it), and
  ``latents`` (latent kind): what the diffusion model trains on, "mean" (each member's posterior
  mean) or "sample" (a fresh posterior sample at every step, as Stable Diffusion's trainer does;
  only then does the KL weight's posterior noise reach the diffusion model).
- ``text`` only: ``text_encoder`` (CLIPTextConfig fields; vocabulary and special ids come from the
  tokenizer built from the caption words, :mod:`core.tiny_clip`) and ``conditioning``:
  ``caption_dropout`` (the share of training steps' captions replaced by the empty prompt, so the
  empty prompt means "unconditional" as in classifier-free guidance training). ``unet`` holds
  UNet2DConditionModel fields. The text encoder is random and frozen (see ``TEXT_ENCODER_NOTE``).
  Each member is captioned by :func:`core.datasets.digit_captions`.
- ``check``: after training, a SimA audit of members vs held-out (``core.audit.run_audit``:
  t chosen on the selection half, metrics on the report half); null skips it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from core import datasets, photos
from core.errors import SimaError

KINDS = ("pixel", "latent", "text", "empirical")
_NETWORK_KEYS = ("scheduler", "unet", "train")
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "train.json"
MANIFEST_FILE = "manifest.json"

_PHASE = {
    "steps": 3000, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 100, "schedule": "cosine",
    "grad_clip": 1.0, "checkpoint_every": 250,
}

DEFAULTS: dict[str, Any] = {
    "kind": "pixel",
    "name": None,
    "demo": "",
    "seed": 0,
    "threads": None,
    "data": {"dataset": "sklearn-digits", "size": 16, "members": 256, "heldout": 500, "split_seed": 0},
    "scheduler": {
        "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
        "beta_schedule": "linear", "prediction_type": "epsilon",
    },
    "unet": {
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    },
    "train": dict(_PHASE),
    "vae": {
        "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
        "mid_block_add_attention": False,
    },
    "vae_train": {**_PHASE, "steps": 1500, "batch_size": 32, "beta": 1e-4, "images": 1000, "reconstruction": "mean",
                  "latents": "mean"},
    "check": {"attack": "sima", "timesteps": list(range(0, 201, 10)), "seed": 0},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "conditioning": {"caption_dropout": 0.1},
}
_LATENT_ONLY = ("vae", "vae_train")
_TEXT_ONLY = ("text_encoder", "conditioning")
_TEXT_UNET = {
    "block_out_channels": [32, 48], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}
TEXT_ENCODER_NOTE = (
    "The text encoder is a randomly initialised CLIPTextModel (seeded), frozen during training: the "
    "usual Stable Diffusion fine-tunes (DreamBooth, LoRA) leave the text encoder as it is and train the "
    "UNet, so the UNet alone learns what each caption means. A frozen encoder also makes the prompt "
    "embeddings a fixed function of the caption, computed once per distinct caption."
)
LOSS_NOTE = (
    "Per step: mean over the batch and over every latent element of (eps - eps_theta(z_t, t, c))^2 "
    "(torch.nn.functional.mse_loss, reduction mean), t uniform on 0..T-1; latents z = scaling_factor * "
    "posterior mean, scaling_factor = 1 / std of the autoencoder-training digits' posterior means."
)


# ----------------------------------------------------------------------------- config


def resolve_config(config: dict) -> dict:
    """The full config: defaults filled in, derived shapes set, and everything checked."""
    if not isinstance(config, dict):
        raise SimaError("A training config is a JSON object; see core.train.DEFAULTS for its keys.")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise SimaError(f"Unknown training config keys {unknown}; the keys are {sorted(DEFAULTS)}.")
    kind = config.get("kind", "pixel")
    if kind not in KINDS:
        raise SimaError(f"Config 'kind' must be one of {', '.join(KINDS)}, got {kind!r}.")
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in copy.deepcopy(config).items():
        if isinstance(cfg[key], dict) and isinstance(value, dict) and key not in ("unet", "vae"):
            typos = sorted(set(value) - set(cfg[key])) if key != "scheduler" else []
            if typos:
                raise SimaError(f"Unknown keys {typos} in config '{key}'; its keys are {sorted(cfg[key])}.")
            cfg[key].update(value)
        else:
            cfg[key] = value  # architectures are replaced whole: a half-merged one is rarely meant
    if kind == "text" and "unet" not in config:
        cfg["unet"] = copy.deepcopy(_TEXT_UNET)  # the default UNet is unconditional
    if kind != "text":
        for key in _TEXT_ONLY:
            cfg.pop(key)
    dataset = cfg["data"]["dataset"]
    if dataset not in datasets.DATASETS:
        raise SimaError(f"data.dataset must be one of {', '.join(datasets.DATASETS)}, got {dataset!r}.")
    if dataset == photos.DATASET and kind != "pixel":
        raise SimaError(f"The photo data ({photos.DATASET}) trains pixel models only; set kind to 'pixel'.")
    if kind == "empirical":
        for key in _NETWORK_KEYS + _LATENT_ONLY:
            cfg.pop(key)
    elif kind == "pixel":
        for key in _LATENT_ONLY:
            cfg.pop(key)
        channels = photos.CHANNELS if dataset == photos.DATASET else 1
        _derive(cfg["unet"], "unet", channels=channels, size=cfg["data"]["size"])
    else:
        _derive(cfg["vae"], "vae", in_channels=1, out_channels=1, sample_size=cfg["data"]["size"])
        levels = len(cfg["vae"]["block_out_channels"]) - 1
        if cfg["data"]["size"] % 2**levels:
            raise SimaError(f"data.size {cfg['data']['size']} is not divisible by the VAE's downsampling {2**levels}.")
        _derive(cfg["unet"], "unet", channels=cfg["vae"]["latent_channels"], size=cfg["data"]["size"] // 2**levels)
        if kind == "text":
            _derive(cfg["unet"], "unet", cross_attention_dim=cfg["text_encoder"]["hidden_size"])
            dropout = cfg["conditioning"]["caption_dropout"]
            if not 0 <= dropout < 1:
                raise SimaError(f"conditioning.caption_dropout must be in [0, 1), got {dropout!r}.")
        if cfg["vae_train"]["latents"] not in ("mean", "sample") or (kind == "text" and cfg["vae_train"]["latents"] != "mean"):
            raise SimaError(f"vae_train.latents must be 'mean' or 'sample' (text models: 'mean'), got "
                            f"{cfg['vae_train']['latents']!r}.")
        if cfg["vae_train"]["reconstruction"] not in RECONSTRUCTION:
            raise SimaError(f"vae_train.reconstruction must be one of {', '.join(RECONSTRUCTION)}, "
                            f"got {cfg['vae_train']['reconstruction']!r}.")
    return cfg


def _derive(section: dict, name: str, *, channels: int | None = None, size: int | None = None, **fields) -> None:
    """Fill derived fields, refusing a config that sets them to something else."""
    if channels is not None:
        fields.update(in_channels=channels, out_channels=channels)
    if size is not None:
        fields["sample_size"] = size
    for field, value in fields.items():
        given = section.setdefault(field, value)
        if given != value:
            raise SimaError(f"Config {name}.{field} is {given!r} but the data and model imply {value}; remove it or fix it.")


def _load_config(config: dict | str | Path) -> tuple[dict, Path | None]:
    if isinstance(config, dict):
        return config, None
    path = Path(config)
    try:
        return json.loads(path.read_text()), path
    except FileNotFoundError:
        raise SimaError(f"{path}: no such training config; give the path of a JSON file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimaError(f"{path}: not a readable JSON training config ({exc}).") from None


def phase_digests(cfg: dict) -> dict[str, str]:
    """What each phase's checkpoint must match: the config entries that change its numbers.

    The VAE phase does not depend on the UNet's settings, so changing those keeps a finished VAE.
    """
    vae = {key: cfg.get(key) for key in ("kind", "seed", "data", "vae", "vae_train")}
    unet = {**vae, **{key: cfg.get(key) for key in ("scheduler", "unet", "train")}}
    return {phase: hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
            for phase, part in (("vae", vae), ("unet", unet))}


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Per-phase weights, optimizer state, generator state and step in ``folder``."""

    def __init__(self, folder: Path, digests: dict[str, str]):
        self.folder, self.digests = folder, digests

    def _state_path(self) -> Path:
        return self.folder / "progress.json"

    def progress(self) -> dict:
        """{"phases": {phase: {"step", "digest"}}, "wall_time_s"}; refuses another config's checkpoint."""
        path = self._state_path()
        if not path.is_file():
            return {"phases": {}, "wall_time_s": 0.0}
        state = json.loads(path.read_text())
        for phase, saved in state["phases"].items():
            if saved["digest"] != self.digests[phase]:
                raise SimaError(
                    f"{self.folder} holds a {phase} checkpoint of a different training config; delete that "
                    "folder or train with resume=False to start again."
                )
        return state

    def save(self, phase: str, module: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             step: int, wall_time_s: float, loss: float) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        _atomic(self.folder / f"{phase}.safetensors", lambda p: save_file(weights, str(p)))
        extra = {"optimizer": opt.state_dict(), "generator": gen.get_state(), "step": step, "loss": loss}
        _atomic(self.folder / f"{phase}.state.pt", lambda p: torch.save(extra, p))
        state = self.progress()
        state["phases"][phase] = {"step": step, "digest": self.digests[phase]}
        state["wall_time_s"] = wall_time_s
        _atomic(self._state_path(), lambda p: p.write_text(json.dumps(state)))

    def restore(self, phase: str, module: torch.nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator) -> tuple[int, float]:
        """Load the phase's latest checkpoint into the objects; returns its step (0 if none) and loss."""
        from safetensors.torch import load_file

        if phase not in self.progress()["phases"]:
            return 0, math.nan
        module.load_state_dict(load_file(str(self.folder / f"{phase}.safetensors")), strict=True)
        extra = torch.load(self.folder / f"{phase}.state.pt", weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        gen.set_state(extra["generator"])
        return int(extra["step"]), float(extra["loss"])


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file so an interrupted save never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


# ----------------------------------------------------------------------------- loops


def _fit(phase: str, module: torch.nn.Module, loss_fn: Callable, settings: dict, seed: int,
         ckpt: Checkpoints, clock: Callable[[], float], progress: bool,
         on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None) -> float:
    """Optimise ``module`` with AdamW for ``settings['steps']`` steps.

    Returns the mean loss over the last checkpoint interval (one batch alone is too noisy).
    ``on_checkpoint(step, module)`` runs after each checkpoint is saved, in eval mode.
    """
    from tqdm import tqdm

    from core.hashing import seed_for

    gen = torch.Generator().manual_seed(seed_for((seed, phase)))
    opt = torch.optim.AdamW(module.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    step, interval_loss = ckpt.restore(phase, module, opt, gen)
    steps, every = settings["steps"], max(1, settings["checkpoint_every"])
    module.train()
    losses: list[float] = []
    with tqdm(total=steps, initial=step, desc=phase, file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        while step < steps:
            for group in opt.param_groups:
                group["lr"] = learning_rate(settings, step)
            loss = loss_fn(module, gen, settings["batch_size"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings["grad_clip"])
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % every == 0 or step == steps:
                interval_loss = sum(losses) / len(losses)
                ckpt.save(phase, module, opt, gen, step, clock(), interval_loss)
                losses.clear()
                if on_checkpoint is not None:
                    module.eval()
                    on_checkpoint(step, module)
                    module.train()
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1] if losses else interval_loss:.4f}", refresh=False)
    module.eval()
    return interval_loss


def learning_rate(settings: dict, step: int) -> float:
    """Linear warm-up (large early AdamW updates destabilise training), then constant or cosine decay to 0."""
    warmup = max(1, settings["warmup_steps"])
    if step < warmup:
        return settings["lr"] * (step + 1) / warmup
    if settings["schedule"] == "cosine":
        progress = (step - warmup) / max(1, settings["steps"] - warmup)
        return settings["lr"] * 0.5 * (1 + math.cos(math.pi * progress))
    return settings["lr"]


def _ddpm_loss(data: torch.Tensor, abar: torch.Tensor, spread: torch.Tensor | None = None) -> Callable:
    """MSE between the true and predicted noise at a uniform random timestep (epsilon prediction).

    With ``spread`` (a latent model's scaled posterior standard deviations), each step trains on
    a fresh posterior sample data + spread * noise instead of the posterior mean ``data``.
    """

    def loss(unet, gen, batch_size):
        pick = torch.randint(len(data), (batch_size,), generator=gen)
        x0 = data[pick]
        t = torch.randint(len(abar), (batch_size,), generator=gen)
        if spread is not None:
            x0 = x0 + spread[pick] * torch.randn(x0.shape, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        return F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample, eps)

    return loss


def fit_ddpm(unet: torch.nn.Module, data: torch.Tensor, alphas_cumprod: torch.Tensor, settings: dict, *, seed: int,
             checkpoint_dir: str | Path, progress: bool = True,
             on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train an epsilon-prediction ``unet`` on ``data`` ([-1, 1] images) with the demo trainer's loop.

    For models trained outside the digits configs (the CIFAR-10 benchmark model): the same
    AdamW steps, warm-up, schedule, clipping and resumable checkpoints as ``train``.
    ``settings`` are the ``train`` phase keys (missing ones take the defaults). A checkpoint in
    ``checkpoint_dir`` is resumed only if it was made with the same settings, seed, data shape
    and architecture. Returns ``{"final_loss", "wall_time_s"}``; the wall time includes resumed runs.
    """
    unknown = sorted(set(settings) - set(_PHASE))
    if unknown:
        raise SimaError(f"Unknown training settings {unknown}; the keys are {sorted(_PHASE)}.")
    settings = {**_PHASE, **settings}
    identity = {"settings": settings, "seed": seed, "data": list(data.shape), "unet": dict(unet.config)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    ckpt = Checkpoints(Path(checkpoint_dir), {"unet": digest})
    done_before = ckpt.progress()["wall_time_s"]
    started = time.perf_counter()

    def clock() -> float:
        return done_before + time.perf_counter() - started

    loss = _fit("unet", unet, _ddpm_loss(data, alphas_cumprod.to(torch.float32)), settings, seed, ckpt, clock,
                progress, on_checkpoint)
    return {"final_loss": loss, "wall_time_s": clock()}


RECONSTRUCTION = {
    "mean": "squared error averaged over pixels ([-1, 1] scale) + beta * KL(q(z|x) || N(0, I)) summed over latent "
            "elements, per image, averaged over the batch",
    "sum": "squared error summed over pixels ([-1, 1] scale) + beta * KL(q(z|x) || N(0, I)) summed over latent "
           "elements, per image, averaged over the batch",
}


LATENTS = {
    "mean": "each member's posterior mean, times the scaling factor",
    "sample": "a fresh posterior sample of each member at every step (mean + std * noise), times the scaling factor",
}


def _vae_loss(data: torch.Tensor, beta: float, reconstruction: str) -> Callable:
    """beta-VAE loss per image as :data:`RECONSTRUCTION` words it."""

    def loss(vae, gen, batch_size):
        x = data[torch.randint(len(data), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        error = (recon - x).pow(2).flatten(1)
        error = error.mean(1) if reconstruction == "mean" else error.sum(1)
        return error.mean() + beta * posterior.kl().mean()

    return loss


def _fit_vae(cfg: dict, ckpt: Checkpoints, clock: Callable[[], float], progress: bool, summary: dict):
    """The autoencoder, trained on digits outside the split, with its scaling factor set from them."""
    from diffusers import AutoencoderKL

    data, settings = cfg["data"], cfg["vae_train"]
    vae_ids = datasets.digits_outside_ids(settings["images"], n_members=data["members"], n_heldout=data["heldout"],
                                          seed=data["split_seed"])
    vae_images = datasets.digits_by_ids(vae_ids, data["size"])
    torch.manual_seed(init_seed(int(cfg["seed"]), "vae"))
    vae = _build(AutoencoderKL, cfg["vae"], "vae")
    summary["vae_final_loss"] = _fit("vae", vae, _vae_loss(vae_images, float(settings["beta"]), settings["reconstruction"]),
                                     settings, int(cfg["seed"]), ckpt, clock, progress)
    # unit-variance latents, as LDMs use, measured on the autoencoder's own digits: of the posterior
    # means, or of posterior samples (mean spread plus posterior variance) when the DDPM trains on samples
    mean, std = (part.to(torch.float64) for part in posterior_stats(vae, vae_images))
    variance = mean.var() + (std.pow(2).mean() if settings["latents"] == "sample" else 0.0)
    vae.register_to_config(scaling_factor=float(1.0 / variance.sqrt()))
    summary["vae_train_ids"] = vae_ids
    return vae


def posterior_stats(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled posterior means E[z | x] and standard deviations of a VAE, computed in batches."""
    with torch.no_grad():
        dists = [vae.encode(images[i:i + batch_size]).latent_dist for i in range(0, len(images), batch_size)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


# ----------------------------------------------------------------------------- the entry point


def train(config: dict | str | Path, out_dir: str | Path | None = None, *, progress: bool = True, resume: bool = True) -> Path:
    """Train the model a config describes and save it, with its manifest, into ``out_dir``.

    ``out_dir`` defaults to the config file's folder (so ``sima train
    assets/models/NAME/train.json`` re-creates that demo). A checkpoint left in
    ``out_dir/checkpoint`` by an interrupted run is resumed unless ``resume=False``; it is
    deleted once the model is saved. Returns the model folder.
    """
    raw, source = _load_config(config)
    cfg = resolve_config(raw)
    if out_dir is None:
        if source is None:
            raise SimaError("Give out_dir: the folder to save the trained model in.")
        out_dir = source.parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        return _train(cfg, source, out, progress=progress, resume=resume)
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its own setting


def _train(cfg: dict, source: Path | None, out: Path, *, progress: bool, resume: bool) -> Path:
    ckpt = Checkpoints(out / CHECKPOINT_DIR, phase_digests(cfg))
    if not resume and ckpt.folder.exists():
        shutil.rmtree(ckpt.folder)
    done_before = ckpt.progress()["wall_time_s"]
    started = time.perf_counter()

    def clock() -> float:
        """Training wall time so far, including the runs this one resumes."""
        return done_before + time.perf_counter() - started

    data = cfg["data"]
    split, record = datasets.data_split(data), datasets.data_record(data)
    summary: dict[str, Any] = {}
    if cfg["kind"] == "text":
        _save_folder(out, *_train_text(cfg, split, ckpt, clock, progress, summary))
    elif cfg["kind"] != "empirical":  # the empirical denoiser is rebuilt from the member ids at load time
        members = datasets.images_by_ids(record["name"], split.member_ids, data["size"])
        _save_folder(out, *_train_networks(cfg, members, ckpt, clock, progress, summary))
    wall = clock()
    if source is None or source.resolve() != (out / CONFIG_FILE).resolve():
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    manifest = _manifest(cfg, out, record, split, wall, summary)
    _write_manifest(out, manifest)
    model = _load(out)
    manifest["parameters"] = model.parameter_count()
    manifest["fingerprint"] = model.fingerprint
    if model.is_latent:
        manifest["scaling_factor"] = model.scaling_factor
        manifest["vae_reconstruction_mse"] = _reconstruction(model, record, split, manifest.get("vae_train_ids"))
    if cfg["check"]:
        manifest["check"] = run_check(model, record, split, cfg["check"])
    _write_manifest(out, manifest)
    if ckpt.folder.exists():
        shutil.rmtree(ckpt.folder)
    return out


def _train_networks(cfg: dict, members: torch.Tensor, ckpt: Checkpoints, clock: Callable[[], float],
                    progress: bool, summary: dict) -> tuple:
    """(unet, scheduler, vae or None) trained on the members; final losses go into ``summary``."""
    from diffusers import DDPMScheduler, UNet2DModel

    scheduler = DDPMScheduler(**cfg["scheduler"])
    seed, vae, data_space, spread = int(cfg["seed"]), None, members, None
    if cfg["kind"] == "latent":
        vae = _fit_vae(cfg, ckpt, clock, progress, summary)
        mean, std = (part.to(torch.float64) for part in posterior_stats(vae, members))
        data_space = (vae.config.scaling_factor * mean).to(torch.float32)
        if cfg["vae_train"]["latents"] == "sample":
            spread = (vae.config.scaling_factor * std).to(torch.float32)
    torch.manual_seed(init_seed(seed, "unet"))
    unet = _build(UNet2DModel, cfg["unet"], "unet")
    loss = _ddpm_loss(data_space, scheduler.alphas_cumprod.to(torch.float32), spread)
    summary["unet_final_loss"] = _fit("unet", unet, loss, cfg["train"], seed, ckpt, clock, progress)
    return unet, scheduler, vae


CURVE_TIMESTEPS = (20, 50, 100)
CURVE_FILE = "curve.json"


def _train_text(cfg: dict, split, ckpt: Checkpoints, clock: Callable[[], float], progress: bool,
                summary: dict) -> tuple:
    """(unet, scheduler, vae, text_encoder, tokenizer) of a captioned latent text-to-image model.

    The autoencoder trains on digits outside the split (so it has seen no member and no held-out
    digit), the text encoder is random and frozen, and the conditional UNet trains on the members'
    latents with their captions, each replaced by the empty prompt with probability
    ``caption_dropout``. After each checkpoint SimA's AUC (members vs held-out, with the caption and
    with the empty prompt) is appended to a learning curve in ``summary["curve"]``.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from core import tiny_clip

    data, seed, cond = cfg["data"], int(cfg["seed"]), cfg["conditioning"]
    scheduler = DDPMScheduler(**cfg["scheduler"])
    vae = _fit_vae(cfg, ckpt, clock, progress, summary)
    scale = vae.config.scaling_factor

    tokenizer = tiny_clip.write_tokenizer(ckpt.folder / "tokenizer", datasets.caption_words())
    torch.manual_seed(init_seed(seed, "text_encoder"))
    text_encoder = CLIPTextModel(tiny_clip.text_encoder_config(tokenizer, cfg["text_encoder"])).eval()
    text_encoder.requires_grad_(False)
    captions = datasets.digit_captions(split.member_ids)
    # index 0, the empty prompt, is what caption dropout uses; held-out captions are embedded for the curve
    prompts = [""] + sorted(set(captions) | set(datasets.digit_captions(split.heldout_ids)))
    table = tiny_clip.prompt_embeddings(tokenizer, text_encoder, prompts)
    index = torch.tensor([prompts.index(c) for c in captions])

    def latents(ids: list[str]) -> torch.Tensor:
        return (scale * posterior_stats(vae, datasets.digits_by_ids(ids, data["size"]))[0]).to(torch.float32)

    members = latents(split.member_ids)
    abar = scheduler.alphas_cumprod.to(torch.float32)
    dropout = float(cond["caption_dropout"])

    def loss(unet, gen, batch_size):
        pick = torch.randint(len(members), (batch_size,), generator=gen)
        t = torch.randint(len(abar), (batch_size,), generator=gen)
        eps = torch.randn((batch_size, *members.shape[1:]), generator=gen)
        keep = torch.rand(batch_size, generator=gen) >= dropout
        a = abar[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * members[pick] + (1 - a).sqrt() * eps
        return F.mse_loss(unet(z_t, t, encoder_hidden_states=table[torch.where(keep, index[pick], 0)]).sample, eps)

    heldout_ids = split.heldout_ids[: len(split.member_ids)]
    curve_sets = (members, index, latents(heldout_ids),
                  torch.tensor([prompts.index(c) for c in datasets.digit_captions(heldout_ids)]))

    torch.manual_seed(init_seed(seed, "unet"))
    unet = _build(UNet2DConditionModel, cfg["unet"], "unet")
    record = _curve_recorder(ckpt, table, curve_sets, scheduler.alphas_cumprod, progress)
    saved = ckpt.progress()["phases"].get("unet", {}).get("step", 0)
    if saved and saved not in [p["step"] for p in _read_curve(ckpt)]:
        # A run stopped between saving a checkpoint and recording its point: the saved weights
        # are exactly that step's, so the point is recorded from them now.
        from safetensors.torch import load_file

        unet.load_state_dict(load_file(str(ckpt.folder / "unet.safetensors")))
        record(saved, unet.eval())
    summary["unet_final_loss"] = _fit("unet", unet, loss, cfg["train"], seed, ckpt, clock, progress, record)
    summary["curve"] = _read_curve(ckpt)
    return unet, scheduler, vae, text_encoder, tokenizer


def _read_curve(ckpt: Checkpoints) -> list[dict]:
    path = ckpt.folder / CURVE_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _curve_recorder(ckpt: Checkpoints, table: torch.Tensor, sets: tuple, alphas_cumprod: torch.Tensor,
                    progress: bool) -> Callable[[int, torch.nn.Module], None]:
    """A checkpoint hook that appends SimA's AUC at a few t to ``curve.json`` beside the checkpoint.

    SimA here is ||eps_theta(z0, t, c)||_4^4 on the clean latent, as the attack defines it; this is
    only the training's learning curve, the model card's figures come from ``sima audit``.
    """
    from core.metrics import auc

    members, member_prompt, heldout, heldout_prompt = sets
    latents = torch.cat([members, heldout])
    prompt = torch.cat([member_prompt, heldout_prompt])
    labels = [1] * len(members) + [0] * len(heldout)

    def record(step: int, unet: torch.nn.Module) -> None:
        point: dict[str, Any] = {"step": step,
                                 "loss": float(torch.load(ckpt.folder / "unet.state.pt", weights_only=True)["loss"])}
        with torch.no_grad():
            for mode, which in (("caption", prompt), ("empty", torch.zeros_like(prompt))):
                for t in CURVE_TIMESTEPS:
                    steps = torch.full((len(latents),), t)
                    eps = unet(latents, steps, encoder_hidden_states=table[which]).sample
                    stat = eps.pow(4).flatten(1).sum(1)
                    point[f"auc_{mode}_t{t}"] = round(auc(scores=(-stat).numpy(), labels=labels), 4)
        curve = [p for p in _read_curve(ckpt) if p["step"] < step]
        _atomic(ckpt.folder / CURVE_FILE, lambda p: p.write_text(json.dumps(curve + [point])))
        if progress:
            print(json.dumps(point), file=sys.stderr, flush=True)

    return record


def init_seed(seed: int, phase: str) -> int:
    """The global seed set before building a network, so its initial weights are reproducible."""
    from core.hashing import seed_for

    return seed_for((seed, phase, "init"))


def _build(cls: Any, fields: dict, name: str) -> torch.nn.Module:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise SimaError(f"Config '{name}' is not a valid {cls.__name__}: {exc}") from None


def _save_folder(out: Path, unet, scheduler, vae, text_encoder=None, tokenizer=None) -> None:
    if text_encoder is not None:
        from diffusers import StableDiffusionPipeline

        # model_index.json too: the folder is a Stable Diffusion 1.x pipeline diffusers can load and sample from
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(out, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):  # the tokenizer's source files, as Stable Diffusion ships them
            shutil.copyfile(Path(tokenizer.name_or_path) / name, out / "tokenizer" / name)
        return
    if vae is None:
        from diffusers import DDPMPipeline

        # model_index.json too, so diffusers' own DDPMPipeline can sample from the folder
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
        return
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    vae.save_pretrained(out / "vae", safe_serialization=True)


def _load(out: Path):
    from core.models.registry import load_folder

    return load_folder(out)


def _write_manifest(out: Path, manifest: dict) -> None:
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _manifest(cfg: dict, out: Path, record: dict, split, wall: float, summary: dict) -> dict:
    steps = {phase: cfg[key]["steps"] for phase, key in (("unet", "train"), ("vae", "vae_train")) if key in cfg}
    return {
        "format": "sima-model-manifest",
        "version": 1,
        "name": cfg["name"] or out.name,
        "kind": cfg["kind"],
        "demo": cfg["demo"],
        "dataset": record,
        "preprocessing": record["preprocessing"],
        "member_ids": split.member_ids,
        "heldout_ids": split.heldout_ids,
        **_vae_fields(cfg, summary),
        **_text_fields(cfg, split, summary),
        "seed": cfg["seed"],
        "steps": steps,
        "wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "training": {k: round(v, 6) for k, v in summary.items() if isinstance(v, float)},
        "config": cfg,
        "packages": package_versions(),
    }


def _vae_fields(cfg: dict, summary: dict) -> dict:
    """What a latent or text model's manifest adds: the autoencoder's own digits and its loss."""
    if "vae_train" not in cfg:
        return {}
    settings = cfg["vae_train"]
    return {"vae_train_ids": summary["vae_train_ids"],
            "vae_loss": {"beta": settings["beta"], "reconstruction": settings["reconstruction"],
                         "normalisation": RECONSTRUCTION[settings["reconstruction"]]},
            "diffusion_latents": LATENTS[settings["latents"]]}


def _text_fields(cfg: dict, split, summary: dict) -> dict:
    """What a text model's manifest adds: the autoencoder's digits, the captions, and how it was trained."""
    if cfg["kind"] != "text":
        return {}
    ids = split.member_ids + split.heldout_ids
    return {
        "captions": dict(zip(ids, datasets.digit_captions(ids))),
        "captioning": (
            "core.datasets.digit_captions: 'a handwritten <digit>', with 'thin' for the third of each "
            "class with the least ink and 'thick' for the third with the most"
        ),
        "caption_dropout": cfg["conditioning"]["caption_dropout"],
        "text_encoder": TEXT_ENCODER_NOTE,
        "loss": LOSS_NOTE,
        "learning_curve": summary["curve"],
    }


def package_versions() -> dict[str, str]:
    import diffusers
    import numpy
    import PIL
    import safetensors
    import sklearn
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "scikit-learn": sklearn.__version__, "numpy": numpy.__version__, "safetensors": safetensors.__version__,
        "pillow": PIL.__version__,
        "transformers": transformers.__version__,
    }


def _reconstruction(model, record: dict, split, vae_ids: list[str] | None = None) -> dict:
    """Mean squared reconstruction error (per pixel, [-1, 1] scale) of the VAE on each split, and
    on its own training digits when they are not the members."""
    out = {}
    sets = (("members", split.member_ids), ("heldout", split.heldout_ids)) + ((("vae_train", vae_ids),) if vae_ids else ())
    for which, ids in sets:
        images = datasets.images_by_ids(record["name"], ids, record["size"])
        with torch.no_grad():
            out[which] = round(float((model.decode(model.encode(images)) - images).pow(2).mean()), 6)
    return out


def run_check(model, record: dict, split, check: dict) -> dict:
    """A SimA audit of members vs held-out by the protocol of ``core.audit.run_audit``; a
    text-to-image model is conditioned on each digit's caption."""
    from core.attacks.sima import SimA
    from core.audit import run_audit

    if check.get("attack", "sima") != "sima":
        raise SimaError("The training check runs SimA only; set check.attack to 'sima' or check to null.")
    members = datasets.images_by_ids(record["name"], split.member_ids, record["size"])
    heldout = datasets.images_by_ids(record["name"], split.heldout_ids, record["size"])
    seed = int(check.get("seed", 0))
    captions = {}
    if getattr(model, "conditional", False):
        captions = {"member_cond": datasets.digit_captions(split.member_ids),
                    "nonmember_cond": datasets.digit_captions(split.heldout_ids)}
    result = run_audit(model, members, heldout, attack=SimA(), timesteps=check["timesteps"], seed=seed, **captions)
    m = result.metrics.to_dict()
    return {
        "attack": "sima",
        **({"condition": "caption"} if captions else {}),
        "p": 4,
        "protocol": "core.audit.run_audit: t chosen by AUC on the selection half, metrics on the report half",
        "seed": seed,
        "timesteps": result.timesteps,
        "t": result.chosen_t,
        "auc": m["auc"]["value"],
        "auc_ci": [m["auc"]["ci_low"], m["auc"]["ci_high"]],
        "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"]["value"],
        "tpr_at_1pct_fpr_ci": [m["tpr_at_1pct_fpr"]["ci_low"], m["tpr_at_1pct_fpr"]["ci_high"]],
        "realised_fpr": m["tpr_at_1pct_fpr"]["realised_fpr"],
        "per_t": result.per_t,
        "wall_time_s": round(result.wall_time_s, 1),
    }
