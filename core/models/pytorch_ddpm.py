"""The checkpoints the membership-inference papers evaluate: pytorch-ddpm ``ckpt.pt`` files.

SecMI, PIA and SimA audit DDPMs trained with the pytorch-ddpm code (github.com/w86763777/
pytorch-ddpm), the PyTorch port of Ho et al.'s DDPM ("Denoising Diffusion Probabilistic
Models", NeurIPS 2020). Such a run leaves two files:

- ``ckpt.pt``: a torch pickle with the state dicts ``net_model`` (raw weights) and
  ``ema_model`` (their exponential moving average, which the papers evaluate), plus optimiser
  state. Keys carry a ``module.`` prefix when the run used ``DataParallel``.
- ``flagfile.txt`` beside it: the run's flags in absl's flag-file format, one ``--name=value``
  a line, a list flag repeated once per item (``--ch_mult=1`` then ``--ch_mult=2`` ...).

:class:`PytorchDDPMUNet` is our own module with the original architecture and parameter names,
so the state dicts load into it unchanged. When the first level of ``ch_mult`` is 1 (every
published configuration), a diffusers ``UNet2DModel`` computes exactly the same function, and
the weights are moved into one, checked against this module on a random batch, so that every
feature of the project works on it. Otherwise the module itself is the model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelError
from core.hashing import fingerprint_tensors
from core.models import loading
from core.models.base import DiffusionModel

FLAGFILE = "flagfile.txt"
WEIGHTS = {"ema": "ema_model", "net": "net_model"}
MAX_FLAGFILE_BYTES = 1024**2
PARITY_TOLERANCE = 1e-4
"""Largest difference, relative to the output's scale, between the converted and the original network."""

_GROUPS = 32  # every GroupNorm of the original uses 32 groups
_PREDICTIONS = {"epsilon": "epsilon", "xstart": "sample"}


@dataclass(frozen=True)
class Flags:
    """The flags of a pytorch-ddpm run that fix the network and its noise schedule."""

    T: int = 1000
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    attn: tuple[int, ...] = (1,)
    num_res_blocks: int = 2
    dropout: float = 0.1
    beta_1: float = 1e-4
    beta_T: float = 0.02
    img_size: int = 32
    mean_type: str = "epsilon"

    def describe(self) -> str:
        return (f"ch {self.ch}, ch_mult {' '.join(map(str, self.ch_mult))}, attn {' '.join(map(str, self.attn)) or 'none'}, "
                f"{self.num_res_blocks} res blocks, T {self.T}, betas {self.beta_1:g} to {self.beta_T:g}, "
                f"{self.img_size}x{self.img_size}")

    @property
    def prediction_type(self) -> str:
        return _PREDICTIONS[self.mean_type]

    @property
    def diffusers_can_represent(self) -> bool:
        # diffusers sizes its input convolution and time embedding by the first level's width,
        # pytorch-ddpm by ch; they agree only when that level keeps ch channels.
        return self.ch_mult[0] == 1


_INTEGERS = ("T", "ch", "num_res_blocks", "img_size")
_FLOATS = ("dropout", "beta_1", "beta_T")
_LISTS = ("ch_mult", "attn")


def read_flagfile(path: Path) -> Flags:
    """The architecture flags in an absl flag file; flags that do not shape the network are ignored.

    absl writes a list flag as one line per item; a comma-separated list is read too. An empty
    list cannot be told from an absent flag in this format (absl writes nothing for it), so an
    absent ``attn`` means the default, as it does for the original code.
    """
    try:
        lines = loading.read_capped(path, MAX_FLAGFILE_BYTES).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text; it is not an absl flag file.") from None
    values: dict[str, object] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(("#", "//")):
            continue
        if not line.startswith("-"):
            raise ModelError(f"{path}, line {number}: {line[:60]!r} is not a flag; absl flag files hold lines like --ch=128.")
        name, has_value, text = line.lstrip("-").partition("=")
        if len(name.split()) > 1:  # absl reads one flag a line; "--ch 128" would not set ch
            raise ModelError(f"{path}, line {number}: {line[:60]!r} should read --{name.split()[0]}={name.split()[1]}.")
        if name == "flagfile":
            raise ModelError(f"{path}, line {number}: nested flag files are not followed; copy their flags into {path.name}.")
        if name not in _INTEGERS + _FLOATS + _LISTS + ("mean_type",):
            continue  # training, logging and sampling flags do not change the network
        if not has_value:
            raise ModelError(f"{path}, line {number}: --{name} needs a value (--{name}=...).")
        if name in _LISTS:
            items = [_integer(path, number, name, item) for item in text.split(",") if item.strip()]
            values[name] = [*values.get(name, []), *items]  # type: ignore[list-item]
        elif name in _INTEGERS:
            values[name] = _integer(path, number, name, text)
        elif name in _FLOATS:
            values[name] = _number(path, number, name, text)
        else:
            values[name] = text.strip()
    flags = Flags(**{k: tuple(v) if k in _LISTS else v for k, v in values.items()})  # type: ignore[arg-type]
    check_flags(flags, str(path))
    return flags


def _integer(path: Path, number: int, name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ModelError(f"{path}, line {number}: --{name} must be a whole number, found {text.strip()!r}.") from None


def _number(path: Path, number: int, name: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ModelError(f"{path}, line {number}: --{name} must be a number, found {text.strip()!r}.")
    return value


def check_flags(flags: Flags, source: str) -> None:
    """Refuse flags the original code could not have trained with, naming the flag."""
    for name in ("T", "ch", "num_res_blocks", "img_size"):
        if getattr(flags, name) < 1:
            raise ModelError(f"{source}: --{name} must be at least 1, found {getattr(flags, name)}.")
    if not flags.ch_mult or min(flags.ch_mult) < 1:
        raise ModelError(f"{source}: --ch_mult must list positive multipliers, found {list(flags.ch_mult)}.")
    if flags.ch % _GROUPS:
        raise ModelError(f"{source}: --ch is {flags.ch}; the network's GroupNorm needs a multiple of {_GROUPS}.")
    bad = [i for i in flags.attn if not 0 <= i < len(flags.ch_mult)]
    if bad:
        raise ModelError(f"{source}: --attn names level {bad[0]}, but --ch_mult has levels 0 to {len(flags.ch_mult) - 1}.")
    factor = 2 ** (len(flags.ch_mult) - 1)
    if flags.img_size % factor:
        raise ModelError(f"{source}: --img_size {flags.img_size} is not divisible by {factor}, the network's total downsampling.")
    if not 0 < flags.beta_1 < flags.beta_T < 1:
        raise ModelError(f"{source}: betas must satisfy 0 < beta_1 < beta_T < 1, found {flags.beta_1:g} and {flags.beta_T:g}.")
    if flags.mean_type not in _PREDICTIONS:
        raise ModelError(
            f"{source}: --mean_type is {flags.mean_type!r}; supported: epsilon, xstart ('xprev' predicts the "
            "previous step's mean, which has no noise prediction at a clean input)."
        )


# ----------------------------------------------------------------------------- the network


class _Attention(nn.Module):
    """Single-head self-attention over all positions, added to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(_GROUPS, channels)
        self.proj_q = nn.Conv2d(channels, channels, 1)
        self.proj_k = nn.Conv2d(channels, channels, 1)
        self.proj_v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.group_norm(x)
        q, k, v = (p(normed).reshape(b, c, h * w) for p in (self.proj_q, self.proj_k, self.proj_v))
        weights = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) * c**-0.5, dim=-1)
        mixed = torch.einsum("bnm,bcm->bcn", weights, v).reshape(b, c, h, w)
        return x + self.proj(mixed)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-dropout-conv,
    a residual (1x1 conv when the width changes), then attention at the chosen levels."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(_GROUPS, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(_GROUPS, out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = _Attention(out_ch) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class _Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class _Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class _TimeEmbedding(nn.Module):
    """A table of sinusoids (sin and cos of t / 10000^(2i/ch), interleaved), then Linear-SiLU-Linear."""

    def __init__(self, steps: int, ch: int, tdim: int):
        super().__init__()
        table = nn.Embedding(steps, ch)
        table.weight.requires_grad_(False)
        with torch.no_grad():
            table.weight.copy_(sinusoid_table(steps, ch))
        self.timembedding = nn.Sequential(table, nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


def sinusoid_table(steps: int, ch: int) -> torch.Tensor:
    """Row t: sin(t w_0), cos(t w_0), sin(t w_1), ... with w_i = 10000^(-2i/ch), in float32 as trained."""
    frequencies = torch.exp(-(torch.arange(0, ch, 2) / ch) * math.log(10000))
    angles = torch.arange(steps).float()[:, None] * frequencies[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(steps, ch)


class PytorchDDPMUNet(nn.Module):
    """The DDPM UNet of pytorch-ddpm, with the parameter names of its state dicts.

    ``head`` conv; ``downblocks``: per level ``num_res_blocks`` residual blocks, then a strided
    conv except at the last level; ``middleblocks``: residual block with attention, residual
    block; ``upblocks``: per level (deepest first) ``num_res_blocks + 1`` residual blocks, each
    fed the matching skip activation, then a nearest-neighbour upsampling conv except at level
    0; ``tail``: GroupNorm, SiLU, conv back to 3 channels.
    """

    def __init__(self, flags: Flags):
        super().__init__()
        ch, tdim = flags.ch, 4 * flags.ch
        self.time_embedding = _TimeEmbedding(flags.T, ch, tdim)
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        widths, width = [ch], ch
        self.downblocks = nn.ModuleList()
        for level, mult in enumerate(flags.ch_mult):
            for _ in range(flags.num_res_blocks):
                self.downblocks.append(_ResBlock(width, ch * mult, tdim, flags.dropout, level in flags.attn))
                width = ch * mult
                widths.append(width)
            if level != len(flags.ch_mult) - 1:
                self.downblocks.append(_Down(width))
                widths.append(width)
        self.middleblocks = nn.ModuleList([
            _ResBlock(width, width, tdim, flags.dropout, True),
            _ResBlock(width, width, tdim, flags.dropout, False),
        ])
        self.upblocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(flags.ch_mult))):
            for _ in range(flags.num_res_blocks + 1):
                self.upblocks.append(_ResBlock(widths.pop() + width, ch * mult, tdim, flags.dropout, level in flags.attn))
                width = ch * mult
            if level != 0:
                self.upblocks.append(_Up(width))
        self.tail = nn.Sequential(nn.GroupNorm(_GROUPS, width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_embedding(t)
        h = self.head(x)
        skips = [h]
        for block in self.downblocks:
            h = block(h, temb)
            skips.append(h)
        for block in self.middleblocks:
            h = block(h, temb)
        for block in self.upblocks:
            if isinstance(block, _ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, temb)
        return self.tail(h)


# ----------------------------------------------------------------------------- to diffusers


def diffusers_config(flags: Flags) -> dict:
    """The ``UNet2DModel`` config that computes the same function as :class:`PytorchDDPMUNet`.

    The sinusoid table becomes a "learned" time embedding holding the same table, so the
    timestep features are bit-identical; attention is single-head (head dim = width).
    """
    levels = range(len(flags.ch_mult))
    return {
        "sample_size": flags.img_size,
        "in_channels": 3,
        "out_channels": 3,
        "time_embedding_type": "learned",
        "num_train_timesteps": flags.T,
        "block_out_channels": [flags.ch * m for m in flags.ch_mult],
        "down_block_types": ["AttnDownBlock2D" if i in flags.attn else "DownBlock2D" for i in levels],
        "up_block_types": ["AttnUpBlock2D" if i in flags.attn else "UpBlock2D" for i in reversed(levels)],
        "layers_per_block": flags.num_res_blocks,
        "mid_block_type": "UNetMidBlock2D",
        "attention_head_dim": None,
        "norm_num_groups": _GROUPS,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "dropout": flags.dropout,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "resnet_time_scale_shift": "default",
        "add_attention": True,
    }


def scheduler_config(flags: Flags) -> dict:
    """A DDPM scheduler config with the run's linear betas (float32 linspace, as the original)."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": flags.T,
        "beta_start": flags.beta_1,
        "beta_end": flags.beta_T,
        "beta_schedule": "linear",
        "prediction_type": flags.prediction_type,
        "variance_type": "fixed_large",
        "clip_sample": True,
    }


def _renames(flags: Flags) -> list[tuple[str, str, str]]:
    """(original prefix, diffusers prefix, kind) for every block; kind says how its leaves map."""
    pairs = [("time_embedding.timembedding.0", "time_proj", "table"),
             ("time_embedding.timembedding.1", "time_embedding.linear_1", "plain"),
             ("time_embedding.timembedding.3", "time_embedding.linear_2", "plain"),
             ("head", "conv_in", "plain"), ("tail.0", "conv_norm_out", "plain"), ("tail.2", "conv_out", "plain")]

    def block(source: str, target: str, attention: str | None) -> None:
        pairs.append((source, target, "res"))
        if attention is not None:
            pairs.append((f"{source}.attn", attention, "attn"))

    last = len(flags.ch_mult) - 1
    index = 0
    for level in range(last + 1):
        for j in range(flags.num_res_blocks):
            attn = f"down_blocks.{level}.attentions.{j}" if level in flags.attn else None
            block(f"downblocks.{index}", f"down_blocks.{level}.resnets.{j}", attn)
            index += 1
        if level != last:
            pairs.append((f"downblocks.{index}.main", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
            index += 1
    block("middleblocks.0", "mid_block.resnets.0", "mid_block.attentions.0")
    block("middleblocks.1", "mid_block.resnets.1", None)
    index = 0
    for position, level in enumerate(reversed(range(last + 1))):
        for j in range(flags.num_res_blocks + 1):
            attn = f"up_blocks.{position}.attentions.{j}" if level in flags.attn else None
            block(f"upblocks.{index}", f"up_blocks.{position}.resnets.{j}", attn)
            index += 1
        if level != 0:
            pairs.append((f"upblocks.{index}.main", f"up_blocks.{position}.upsamplers.0.conv", "plain"))
            index += 1
    return pairs


_RES_LEAVES = {"block1.0": "norm1", "block1.2": "conv1", "temb_proj.1": "time_emb_proj",
               "block2.0": "norm2", "block2.3": "conv2", "shortcut": "conv_shortcut"}
_ATTN_LEAVES = {"group_norm": "group_norm", "proj_q": "to_q", "proj_k": "to_k", "proj_v": "to_v", "proj": "to_out.0"}


def diffusers_state_dict(state: dict[str, torch.Tensor], flags: Flags) -> dict[str, torch.Tensor]:
    """The original state dict renamed (and 1x1 attention convs flattened) for ``UNet2DModel``."""
    out: dict[str, torch.Tensor] = {}
    for source, target, kind in _renames(flags):
        if kind in ("plain", "table"):
            for leaf in ("weight", "bias"):
                if f"{source}.{leaf}" in state:
                    out[f"{target}.{leaf}"] = state[f"{source}.{leaf}"]
            continue
        leaves = _RES_LEAVES if kind == "res" else _ATTN_LEAVES
        for old, new in leaves.items():
            for leaf in ("weight", "bias"):
                key = f"{source}.{old}.{leaf}"
                if key in state:
                    value = state[key]
                    out[f"{target}.{new}.{leaf}"] = value.flatten(1) if kind == "attn" and value.dim() == 4 else value
    return out


def to_diffusers(net: PytorchDDPMUNet, flags: Flags):
    """A ``UNet2DModel`` holding ``net``'s weights, or None when diffusers cannot express it."""
    if not flags.diffusers_can_represent:
        return None
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_config(diffusers_config(flags))
    unet.load_state_dict(diffusers_state_dict(net.state_dict(), flags), strict=True)
    return unet.eval().requires_grad_(False)


def parity_gap(net: nn.Module, unet: nn.Module, flags: Flags, *, samples: int = 1) -> float:
    """Largest output difference of the two networks on a seeded random batch, relative to the
    original's largest output, over the first, a middle and the last timestep."""
    generator = torch.Generator().manual_seed(0)
    size = flags.img_size
    x = torch.randn(samples * 3, 3, size, size, generator=generator)
    t = torch.tensor([0, flags.T // 2, flags.T - 1]).repeat_interleave(samples)
    with torch.inference_mode():
        expected = net(x, t)
        got = unet(x, t).sample
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """An original network read from a ckpt.pt, with where its architecture came from."""

    net: PytorchDDPMUNet
    flags: Flags
    path: Path
    weights: str
    flags_source: str


def require_pickle_opt_in(path: Path, allow_pickle: bool) -> None:
    """A checkpoint is a pickle: refuse it without the opt-in, naming the way round it."""
    if not allow_pickle:
        raise ModelError(
            f"{path} is a pickle, which can hide code: opt in with --allow-pickle (allow_pickle=True) if you trust "
            f"its source, or convert it once with `sima convert {path} OUT_DIR --allow-pickle` and load OUT_DIR."
        )


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False, weights: str = "ema") -> Checkpoint:
    """The ``weights`` ("ema" or "net") of a pytorch-ddpm ckpt.pt in the original network.

    The architecture comes from ``flagfile.txt`` beside the file; without one, the published
    CIFAR-10 defaults are assumed and a warning says so in one line.
    """
    path = Path(path)
    if weights not in WEIGHTS:
        raise ModelError(f"--weights must be one of {', '.join(WEIGHTS)} (EMA or raw weights), got {weights!r}.")
    flagfile = path.parent / FLAGFILE
    if flagfile.is_file():
        flags, source = read_flagfile(flagfile), str(flagfile)
    else:
        flags, source = Flags(), "the published CIFAR-10 defaults"
        warnings.warn(f"No {FLAGFILE} beside {path}: assuming the published CIFAR-10 architecture ({flags.describe()}).",
                      stacklevel=2)
    require_pickle_opt_in(path, allow_pickle)
    content = loading.load_pickle(path, allow_pickle=allow_pickle)  # memory budget, weights_only
    state = _select(content, path, weights)
    net = PytorchDDPMUNet(flags)
    missing, unexpected = sorted(set(net.state_dict()) - set(state)), sorted(set(state) - set(net.state_dict()))
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise ModelError(f"The {weights} weights in {path} do not fit the architecture from {source} ({detail}); "
                         f"give the {FLAGFILE} of the run that wrote this checkpoint.")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).strip().splitlines()[-1])
        raise ModelError(f"The {weights} weights in {path} do not fit the architecture from {source}: {first}") from None
    return Checkpoint(net.eval().requires_grad_(False), flags, path, weights, source)


def _select(content: object, path: Path, weights: str) -> dict[str, torch.Tensor]:
    key = WEIGHTS[weights]
    if not isinstance(content, dict) or key not in content:
        found = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
        other = next((k for k, v in WEIGHTS.items() if v != key and isinstance(content, dict) and v in content), None)
        hint = f"; use --weights {other}" if other else "; it is not a pytorch-ddpm checkpoint"
        raise ModelError(f"{path} has no {key!r} entry (found {found}){hint}.")
    state = content[key]
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path}: {key!r} is not a state dict of named tensors.")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DataParallel wrapper
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ModelError(f"{path}: {key}[{name!r}] is not a floating-point tensor; the checkpoint is damaged.")
        loading.check_finite(f"{key}.{name}", value, path)
    return state


class OriginalUNetModel(DiffusionModel):
    """eps(x, t) from :class:`PytorchDDPMUNet` itself, for architectures diffusers cannot express."""

    kind = "pixel"

    def __init__(self, checkpoint: Checkpoint, alphas_cumprod: torch.Tensor, *, name: str, device: str | torch.device = "cpu"):
        self.net = checkpoint.net.to(device)
        self.flags = checkpoint.flags
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type = checkpoint.flags.prediction_type
        self.name = name
        self.manifest = None
        self.device = torch.device(device)
        self.image_shape = self.sample_shape = (3, checkpoint.flags.img_size, checkpoint.flags.img_size)
        self._fingerprint: str | None = None

    def _raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            config = (asdict(self.flags), self.prediction_type, self.alphas_cumprod.tolist())
            self._fingerprint = fingerprint_tensors(self.net.state_dict(), config)
        return self._fingerprint

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def _converted(checkpoint: Checkpoint):
    """The diffusers UNet for a checkpoint, parity-checked, or None when diffusers cannot express it."""
    unet = to_diffusers(checkpoint.net, checkpoint.flags)
    if unet is not None:
        gap = parity_gap(checkpoint.net, unet, checkpoint.flags)
        if not gap <= PARITY_TOLERANCE:
            raise ModelError(f"Converting {checkpoint.path} to diffusers changed its output (relative gap {gap:.2e}); "
                             "please report this with the flagfile.")
    return unet


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False, weights: str = "ema",
                    device: str | torch.device = "cpu", name: str | None = None) -> DiffusionModel:
    """A DiffusionModel from a pytorch-ddpm ckpt.pt: a diffusers UNet when it can express the
    architecture exactly (checked on a random batch), else the original network."""
    from core.models.pixel import PixelModel

    checkpoint = read_checkpoint(path, allow_pickle=allow_pickle, weights=weights)
    sched = scheduler_config(checkpoint.flags)
    abar = loading.alphas_cumprod_from_scheduler(sched, checkpoint.path)
    name = name or f"{checkpoint.path.parent.name or checkpoint.path.stem} ({weights} weights)"
    unet = _converted(checkpoint)
    if unet is None:
        return OriginalUNetModel(checkpoint, abar, name=name, device=device)
    return PixelModel(unet, abar, prediction_type=sched["prediction_type"], name=name, device=device)


def convert_checkpoint(path: str | Path, out: str | Path, *, allow_pickle: bool = False, weights: str = "ema") -> Path:
    """Write a pytorch-ddpm ckpt.pt as a diffusers folder (``unet/`` with safetensors, ``scheduler/``)
    that loads without pickle, and check that the written folder computes what the original does."""
    from core.models.pixel import PixelModel

    checkpoint = read_checkpoint(path, allow_pickle=allow_pickle, weights=weights)
    unet = _converted(checkpoint)
    if unet is None:
        raise ModelError(
            f"{checkpoint.path}: ch_mult starts at {checkpoint.flags.ch_mult[0]}, which a diffusers UNet2DModel cannot "
            "express exactly; use the checkpoint itself (--model ckpt.pt --allow-pickle)."
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} exists and is not empty; choose a new folder for the converted model.")
    unet.save_pretrained(out / "unet", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / loading.SCHEDULER_CONFIG).write_text(json.dumps(scheduler_config(checkpoint.flags), indent=2) + "\n")
    written = PixelModel.from_folder(out)
    gap = parity_gap(checkpoint.net, written.unet, checkpoint.flags)
    if not gap <= PARITY_TOLERANCE:
        raise ModelError(f"The converted folder {out} does not reproduce {checkpoint.path} (relative gap {gap:.2e}).")
    record = {"source": str(checkpoint.path), "weights": weights, "architecture_from": checkpoint.flags_source,
              "flags": asdict(checkpoint.flags), "parity_relative_gap": gap}
    (out / "converted_from.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
