"""The one interface every model family is reduced to: eps(x, t) in model space.

Attacks, local means and audits only ever see a :class:`DiffusionModel`. Adapters (pixel,
latent, empirical) turn whatever a model predicts (eps, v or x0, with or without a learned
variance half) into the noise prediction of docs/methods.md, section 1.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from core.errors import ModelError

if TYPE_CHECKING:
    from core.conditioning import Conditioning

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: Autocast precisions of the network's forward pass; fp32 means no autocast.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_eps(output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a network's raw prediction to a noise prediction.

    ``abar`` holds alphas_cumprod[t] per sample (shape [N]). A learned-variance output with
    twice the input channels keeps only its first half, which is the mean (eps/v/x0) part.
    """
    channels = x.shape[1]
    if output.shape[1] == 2 * channels:
        output = output[:, :channels]
    elif output.shape[1] != channels:
        raise ModelError(
            f"The model returned {output.shape[1]} channels for a {channels}-channel input; "
            f"expected {channels} (or {2 * channels} with a learned variance). Check the model's config."
        )
    if prediction_type == "epsilon":
        return output
    a = abar.to(dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))
    if prediction_type == "v_prediction":
        return a.sqrt() * output + (1 - a).sqrt() * x
    if prediction_type == "sample":
        return (x - a.sqrt() * output) / (1 - a).sqrt()
    raise ModelError(
        f"Unknown prediction_type {prediction_type!r}; expected one of {', '.join(PREDICTION_TYPES)}."
    )


@dataclass
class ModelInfo:
    """What a user sees when a model loads."""

    name: str
    kind: str  # "pixel", "latent" or "empirical"
    image_shape: tuple[int, int, int]
    sample_shape: tuple[int, int, int]
    parameters: int
    num_train_timesteps: int
    prediction_type: str
    training_set_size: int | None = None
    fingerprint: str = ""
    manifest: dict | None = field(default=None, repr=False)
    #: "caption" (text-to-image) or "label" (class-conditional); None for unconditional models.
    condition_kind: str | None = None

    def describe(self) -> str:
        c, h, w = self.image_shape
        size = f"{self.training_set_size:,} training images" if self.training_set_size else "training set unknown"
        space = "" if self.kind != "latent" else f", latent {tuple(self.sample_shape)}"
        conditioned = {"caption": "text-to-image ", "label": "class-conditional "}.get(self.condition_kind or "", "")
        return (
            f"{self.name}: {conditioned}{self.kind} model, {h}x{w}x{c}{space}, {self.parameters:,} parameters, "
            f"{self.num_train_timesteps} timesteps, predicts {self.prediction_type}, {size}"
        )


class DiffusionModel(abc.ABC):
    """A diffusion model seen as a noise predictor over a DDPM schedule.

    Subclasses set ``alphas_cumprod`` (float64, length T), ``image_shape`` (C, H, W of the
    [-1, 1] images it accepts), ``sample_shape`` (C, H, W in model space), ``name`` and
    ``prediction_type``, and implement :meth:`_raw` (the network's own output). Pixel models
    use the identity for :meth:`encode` and :meth:`decode`.
    """

    name: str = "model"
    kind: str = "pixel"
    #: True for text- or class-conditional models: their ``_raw`` takes a third argument, the
    #: batch's :class:`~core.conditioning.Conditioning`, and they implement ``condition`` and
    #: ``empty_condition``.
    conditional: bool = False
    #: What a conditional model is conditioned on: "caption" (text-to-image) or "label" (class-conditional).
    condition_kind: str | None = None
    prediction_type: str = "epsilon"
    alphas_cumprod: torch.Tensor
    image_shape: tuple[int, int, int]
    sample_shape: tuple[int, int, int]
    manifest: dict | None = None
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    compiled: bool = False
    #: "channels_last" when accelerate() changed the network's layout from the adapter's default.
    layout: str = ""

    @property
    def is_latent(self) -> bool:
        return self.kind == "latent"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abc.abstractmethod
    def _raw(self, x: torch.Tensor, t: torch.Tensor, *cond: "Conditioning") -> torch.Tensor:
        """The network's prediction for model-space ``x`` at integer timesteps ``t`` (shape [N]).

        Unconditional models take ``(x, t)``; conditional ones ``(x, t, cond)`` with one row of
        conditioning per sample, already on the model's device.
        """

    def condition(self, captions: Sequence[str]) -> "Conditioning":
        """The conditioning for one caption (or class label) per sample; conditional models only."""
        raise ModelError(f"{self.name} is an unconditional model: it takes no captions or labels.")

    def empty_condition(self, n: int) -> "Conditioning":
        """The empty prompt (or null class) for ``n`` samples; conditional models only."""
        raise ModelError(f"{self.name} is an unconditional model: it has no empty condition.")

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Hash of weights and config, stable across processes; used as a cache key."""

    def parameter_count(self) -> int:
        return 0

    def training_set_size(self) -> int | None:
        if self.manifest and "member_ids" in self.manifest:
            return len(self.manifest["member_ids"])
        return None

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            image_shape=tuple(self.image_shape),
            sample_shape=tuple(self.sample_shape),
            parameters=self.parameter_count(),
            num_train_timesteps=self.num_train_timesteps,
            prediction_type=self.prediction_type,
            training_set_size=self.training_set_size(),
            fingerprint=self.fingerprint,
            manifest=self.manifest,
            condition_kind=self.condition_kind,
        )

    def timesteps(self, t: int | torch.Tensor, n: int) -> torch.Tensor:
        """Validate timesteps and broadcast a single one to a batch of ``n``."""
        t = torch.as_tensor(t)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ModelError("Timesteps must be whole numbers.")
        t = t.to(torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ModelError(f"Got {t.numel()} timesteps for {n} samples; give one, or one per sample.")
        if n and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ModelError(
                f"Timestep out of range: this model has timesteps 0 to {self.num_train_timesteps - 1}."
            )
        if n and bool((self.alphas_cumprod[t.cpu()] <= 0).any()):
            raise ModelError(
                f"Timestep {int(t.max())} is pure noise in this model's zero-terminal-SNR schedule "
                "(alphas_cumprod = 0), so it says nothing about the image; choose an earlier one."
            )
        return t

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at integer timesteps, float64 on the CPU."""
        return self.alphas_cumprod[t.to("cpu")]

    def eps(self, x: torch.Tensor, t: int | torch.Tensor, cond: "Conditioning | Sequence[str] | None" = None) -> torch.Tensor:
        """Noise prediction eps_theta(x, t, c) for a model-space batch ``x``; one t or one per sample.

        ``cond`` gives each sample's conditioning (a Conditioning, or captions / labels as
        strings); None means the empty condition on a conditional model, and is the only value
        an unconditional model accepts.
        """
        from core.conditioning import resolve

        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.sample_shape):
            raise ModelError(
                f"{self.name} expects model-space samples of shape (N, {', '.join(map(str, self.sample_shape))}), "
                f"got {tuple(x.shape)}. Load images with core.data, which converts them to the model's size."
            )
        t = self.timesteps(t, x.shape[0])
        cond = resolve(self, cond, x.shape[0])
        half = PRECISIONS[self.precision]
        with torch.inference_mode():
            args = () if cond is None else (cond.to(self.device),)
            with torch.autocast(self.device.type, dtype=half, enabled=half is not None):
                out = self._raw(x.to(self.device), t.to(self.device), *args)
            if half is not None:
                out = out.float()
            eps = to_eps(out, x.to(self.device), self.abar(t), self.prediction_type)
        if not torch.isfinite(eps).all():
            raise ModelError(
                f"{self.name} returned NaN or Inf for some inputs; its weights may be corrupt or "
                "it may need a different precision or device."
            )
        return eps

    def accelerate(self, *, precision: str = "fp32", compile: bool = False, channels_last: bool = False) -> "DiffusionModel":
        """Speed settings for large runs: the network's forward pass under bf16 or fp16 autocast
        (the autoencoder and every statistic stay in fp32), ``torch.compile`` of the network, and
        the channels-last memory layout for a network that does not use it already (pixel
        models do by default; latent models only when asked).

        Each changes the last digits of the statistics, so each is part of :attr:`numerics` and
        of every cache key. Returns the model.
        """
        if precision not in PRECISIONS:
            raise ModelError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
        if precision == "fp16" and self.device.type == "cpu":
            raise ModelError("fp16 autocast needs a GPU (--device cuda); on a CPU use bf16 or fp32.")
        self.precision = precision
        network = getattr(self, "unet", None)
        if channels_last and network is not None and not getattr(self, "channels_last", False):
            network.to(memory_format=torch.channels_last)
            self.channels_last = True
            self.layout = "channels_last"
        if compile and not self.compiled and network is not None:
            _ = self.fingerprint  # compiled modules rename their weights; hash the originals first
            self.unet = torch.compile(network)
            self.compiled = True
        return self

    @property
    def numerics(self) -> str:
        """The device and arithmetic settings, which change the numbers (part of cache keys)."""
        parts = [str(self.device), "" if self.precision == "fp32" else self.precision, self.layout, "compiled" if self.compiled else ""]
        return "|".join(p for p in parts if p)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, C, H, W) to model space; identity for pixel models."""
        return images

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space back to [-1, 1] images; identity for pixel models."""
        return z

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info().describe()}>"
