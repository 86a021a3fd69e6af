"""Safe loading of model components from a folder: config, weights and scheduler.

Weights are read by this module, not by ``from_pretrained``, so that the rules are ours and
visible: safetensors by default; a pickle-based ``.bin``/``.pt`` file only with an explicit
opt-in, and then through ``torch.load(weights_only=True)``; never remote code. Every problem
names the file and, where there is one, the field.

A model folder is treated as hostile until checked. The order is the point:

1. every file is resolved and must lie inside the model folder (:func:`check_inside`), and
   JSON and text files are read only up to a size cap (:func:`read_json`,
   :func:`check_text_file`);
2. the network is built on the ``meta`` device, which allocates nothing, so its parameter count
   and bytes are known for free (:func:`plan_component`);
3. every parameter and buffer is compared, by shape, with the weights file's own header;
4. the bytes loading will take are compared with a memory budget (:func:`check_budget`);
5. only then are the weights read (refusing NaN / Inf, :func:`check_finite`) and assigned to
   the network, which is never randomly initialised in real memory (:func:`materialise`).

Weights stored in float64 (or float16 / bfloat16) are converted to the network's float32 rather
than refused: a float64 file is usually a float32 model saved carelessly, whose values round-trip
exactly; the budget counts both the file's bytes and the converted copy, and a value beyond
float32's range becomes Inf and is refused like any other non-finite weight.

Other component loaders (text encoders, tokenizers, LoRA files, papers' checkpoints) are meant
to reuse these functions rather than write their own.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from core.errors import ModelError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PICKLE_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.pt")
SCHEDULER_CONFIG = "scheduler_config.json"

#: Configs are a few KB; 1 MiB still holds a 100,000-entry ``trained_betas`` list.
MAX_CONFIG_BYTES = 1 << 20
#: A safetensors header lists names, dtypes, shapes and offsets: about 150 bytes a tensor, so
#: 16 MiB is ~100,000 tensors, ten times SDXL's whole pipeline.
MAX_HEADER_BYTES = 16 << 20
#: Building a network creates Python objects even on the meta device (about 80 us and 2 KB
#: each); SDXL's UNet has 3,609 submodules and parameter tensors, so a config asking for more
#: than five times that is refused mid-build.
MAX_MODULES = 20_000
#: Published DDPM/DDIM schedules use 1,000 steps, improved DDPM 4,000; 100,000 leaves a wide
#: margin while every per-timestep array stays under a megabyte.
MAX_TIMESTEPS = 100_000
#: Environment variable that sets the memory budget for loading a model, in bytes.
BUDGET_ENV = "SIMA_MAX_MODEL_BYTES"
#: Share of available memory one model may take: the rest is for activations, other sessions
#: of the app, and the operating system.
BUDGET_SHARE = 0.75

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ----------------------------------------------------------------------------- files


def check_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The resolved ``path``, or a ModelError when it (or a symlink on the way) leaves ``root``.

    A hub snapshot (``models--owner--name/snapshots/REV``) is made of symlinks into the same
    repository's ``blobs`` folder; those targets are allowed, nothing else outside ``root`` is.
    """
    root_abs = Path(os.path.abspath(root))
    real = Path(os.path.realpath(path))
    allowed = [Path(os.path.realpath(root_abs))]
    for base in (root_abs, allowed[0]):
        for parent in base.parents:
            if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
                allowed.append(Path(os.path.realpath(parent.parent / "blobs")))
                break
    if not any(real == a or a in real.parents for a in allowed):
        raise ModelError(
            f"{path} points outside the model folder {root} (to {real}); copy the file into the folder "
            "instead of linking to it."
        )
    return real


def read_capped(path: str | os.PathLike, max_bytes: int, *, root: str | os.PathLike | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, which must lie inside ``root`` when
    given; never reads more than ``max_bytes + 1`` bytes, whatever the file claims or becomes."""
    path = Path(path)
    if root is not None:
        check_inside(root, path)
    if not path.is_file():
        raise ModelError(f"Missing {path}: the model folder needs this file.")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ModelError(f"{path} is larger than the {human_size(max_bytes)} such a file may have; it is not a genuine model file.")
    return data


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_CONFIG_BYTES, root: str | os.PathLike | None = None) -> dict:
    """A JSON object from ``path``, or a ModelError that names the file.

    The file must be at most ``max_bytes`` long and, when ``root`` is given, lie inside it.
    """
    path = Path(path)
    data = read_capped(path, max_bytes, root=root)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelError(f"{path} is not valid JSON ({reason}); re-save the model with diffusers.") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} should hold a JSON object.")
    return value


def check_text_file(path: str | os.PathLike, max_bytes: int, *, root: str | os.PathLike | None = None) -> Path:
    """The resolved path of a UTF-8 text file (a tokenizer's vocab or merges) of at most
    ``max_bytes``, inside ``root`` when given, for a library that opens the file itself; a
    ModelError naming the file otherwise."""
    path = Path(path)
    try:
        read_capped(path, max_bytes, root=root).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path} is not UTF-8 text (byte {exc.start}); it is not a genuine file of this kind.") from None
    return Path(os.path.realpath(path))


def require_int(config: dict, field: str, path: Path, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``config[field]`` as an int in [minimum, maximum], or a ModelError naming file and field."""
    value = config.get(field)
    if isinstance(value, (list, tuple)) and field == "sample_size" and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ModelError(f"{path}: field {field!r} must be a whole number >= {minimum}, found {value!r}.")
    if maximum is not None and value > maximum:
        raise ModelError(f"{path}: field {field!r} is {value:,}; at most {maximum:,} is supported.")
    return value


# ----------------------------------------------------------------------------- memory


def available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (free pages where that file does not exist)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(budget: int | None = None) -> tuple[int, str]:
    """(bytes a model may take, where that number comes from): ``budget`` if given, else
    $SIMA_MAX_MODEL_BYTES, else 75% of the memory available now."""
    if budget is not None:
        return int(budget), "the budget given"
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            value = 0
        if value <= 0:
            raise ModelError(f"{BUDGET_ENV} is {text!r}; set it to a number of bytes such as 4e9, or unset it.")
        return value, BUDGET_ENV
    return int(BUDGET_SHARE * available_memory()), f"{BUDGET_SHARE:.0%} of available memory; set {BUDGET_ENV} to change"


def check_budget(nbytes: int, what: str, path: str | os.PathLike, *, budget: int | None = None) -> None:
    """Refuse, in one line naming ``path``, to load ``what`` when ``nbytes`` exceeds the budget
    (:func:`memory_budget`). Call it before allocating anything of that size."""
    limit, source = memory_budget(budget)
    if nbytes > limit:
        raise ModelError(
            f"{path}: {what} needs {human_size(nbytes)} of memory, more than the {human_size(limit)} allowed ({source}). "
            "Use a smaller model or free memory."
        )


def human_size(nbytes: float) -> str:
    """Bytes as a short string in decimal units (``4.5 MB``)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- weights files


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a weights file describes it, before it is read."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def safetensors_header(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of the tensors in a safetensors file, read from its header only.

    The header is length-checked before it is parsed; no tensor is read.
    """
    path = Path(path)
    if root is not None:
        check_inside(root, path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
        if len(raw) < 8:
            raise ModelError(f"{path} is too short to be a safetensors file; the file may be corrupt.")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ModelError(f"{path}: the safetensors header claims {human_size(length)}, more than the {human_size(MAX_HEADER_BYTES)} allowed; the file is corrupt or hostile.")
        found = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                dtype = _DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise ModelError(f"{path}: tensor {name!r} is stored as {piece.get_dtype()}; supported: {', '.join(_DTYPES)}.")
                found[name] = TensorInfo(dtype, tuple(int(n) for n in piece.get_shape()))
        return found
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read as safetensors ({exc}); the file may be corrupt.") from None


def check_finite(name: str, tensor: torch.Tensor, path: str | os.PathLike) -> torch.Tensor:
    """``tensor`` unchanged, or a ModelError naming the tensor and file when it holds NaN or Inf."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ModelError(f"{path}: tensor {name!r} holds NaN or Inf values; the weights are corrupt.")
    return tensor


def read_safetensors(path: str | os.PathLike, *, dtypes: Mapping[str, torch.dtype] | None = None,
                     root: str | os.PathLike | None = None, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (or those named in ``only``), one at a time, each
    checked to be finite.

    ``dtypes`` maps names to the dtype the caller keeps (float64 or float16 weights become the
    model's float32, say); a value out of the target's range becomes Inf and is refused.
    """
    path = Path(path)
    header = safetensors_header(path, root=root)
    state = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in header:
                if only is not None and name not in only:
                    continue
                tensor = handle.get_tensor(name)
                if dtypes and name in dtypes and tensor.dtype != dtypes[name]:
                    tensor = tensor.to(dtypes[name])
                state[name] = check_finite(name, tensor, path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read as safetensors ({exc}); the file may be corrupt.") from None
    return state


def load_pickle(path: str | os.PathLike, *, allow_pickle: bool = False, root: str | os.PathLike | None = None,
                budget: int | None = None) -> Any:
    """The object in a pickle-based torch checkpoint, through the restricted unpickler only.

    Refused unless ``allow_pickle``; the file must fit the memory budget; only tensors and plain
    containers load (``weights_only=True``), memory-mapped where the format allows.
    """
    path = Path(path)
    if root is not None:
        check_inside(root, path)
    if not allow_pickle:
        raise ModelError(
            f"{path} is a pickle-based checkpoint, which can hide code. Convert it to safetensors, "
            "or opt in with allow_pickle=True (--allow-pickle) if you trust its source."
        )
    check_budget(path.stat().st_size, "this checkpoint", path, budget=budget)
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)  # the pre-zip format
    except Exception as exc:  # torch raises many types for a hostile or broken pickle
        raise ModelError(f"{path} was refused by the safe loader ({type(exc).__name__}); it is not a plain weight file.") from None


def find_weights(folder: Path) -> Path:
    """The weights file of a component folder: safetensors preferred, then a pickle name."""
    for name in WEIGHT_NAMES + PICKLE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"No weights in {folder}: expected {WEIGHT_NAMES[0]} (or a .bin with --allow-pickle).")


def _pickle_state(path: Path, allow_pickle: bool, root, budget: int | None = None) -> dict[str, torch.Tensor]:
    state = load_pickle(path, allow_pickle=allow_pickle, root=root, budget=budget)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelError(f"{path} does not hold a plain mapping of names to tensors.")
    return state


def load_weights(folder: Path, *, allow_pickle: bool = False, root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``folder``: safetensors preferred, pickle only when allowed; every
    tensor finite."""
    path = find_weights(folder)
    if path.suffix == ".safetensors":
        return read_safetensors(path, root=root if root is not None else folder)
    state = _pickle_state(path, allow_pickle, root if root is not None else folder)
    return {name: check_finite(name, tensor, path) for name, tensor in state.items()}


# ----------------------------------------------------------------------------- networks


class _TooManyModules(Exception):
    pass


@contextmanager
def _module_cap(limit: int) -> Iterator[None]:
    """Abort a network build in this thread once it has registered ``limit`` submodules and
    parameter tensors together."""
    owner, count = threading.get_ident(), [0]

    def hook(module, name, value):
        if threading.get_ident() == owner:
            count[0] += 1
            if count[0] > limit:
                raise _TooManyModules

    hooks = torch.nn.modules.module
    handles = [hooks.register_module_module_registration_hook(hook), hooks.register_module_parameter_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered in this thread go to the meta device (buffers stay real), so that
    a constructor's random initialisation touches no memory."""
    owner = threading.get_ident()

    def hook(module, name, param):
        if param is not None and threading.get_ident() == owner and param.device.type != "meta":
            return torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return None

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _size_fields(config: Mapping) -> Iterator[tuple[str, list[int]]]:
    """(field, the whole numbers it holds) for each public config field holding some."""
    for key, value in config.items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        ints = [n for n in numbers if isinstance(n, int) and not isinstance(n, bool)]
        if ints and not key.startswith("_"):
            yield key, ints


def largest_size_field(config: Mapping) -> str:
    """The config field holding the largest whole number (``'block_out_channels' = [2048, ...]``),
    which is what usually makes a network big; named when a network is refused for its size."""
    best, best_value = None, 0
    for key, ints in _size_fields(config):
        if max(ints) > best_value:
            best, best_value = key, max(ints)
    if best is None:
        return "no size field"
    value = config[best]
    shown = json.dumps(value if not isinstance(value, (list, tuple)) or len(value) <= 4 else [*value[:4], "..."])
    return f"field {best!r} = {shown}"


def _build(factory: Callable[[dict], torch.nn.Module], config: dict, config_path: Path, what: str) -> torch.nn.Module:
    try:
        with _module_cap(MAX_MODULES):
            return factory(config)
    except _TooManyModules:
        raise ModelError(
            f"{config_path} describes a {what} of more than {MAX_MODULES:,} layers and tensors ({largest_size_field(config)}); "
            "it is not a model this tool can load."
        ) from None
    except Exception as exc:  # diffusers/transformers raise ValueError/TypeError/KeyError... for bad configs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{config_path} does not describe a valid {what}: {first}") from None


@dataclass
class ComponentPlan:
    """A network described, sized and checked against its weights file, not yet in memory."""

    name: str  # the class name, for messages
    folder: Path
    config_path: Path
    config: dict
    weights_path: Path
    factory: Callable[[dict], torch.nn.Module]
    parameters: int
    nbytes: int  # what loading takes: the file's tensors, plus conversions and extra buffers
    meta: torch.nn.Module = field(repr=False)
    state: dict | None = field(default=None, repr=False)  # already read (pickle files only)
    #: file tensor name -> network tensor name, when they differ (see :func:`plan_component`'s ``rename``)
    names: dict[str, str] | None = field(default=None, repr=False)


#: ``rename(file_names, meta_network) -> {file name: network name}``: how a component loader maps
#: the tensor names of checkpoints saved by older library versions to today's network; names
#: left out are not loaded.
Rename = Callable[[list[str], torch.nn.Module], dict[str, str]]


def _renamed(values: Mapping[str, Any], names: Mapping[str, str] | None) -> dict[str, Any]:
    return dict(values) if names is None else {names[k]: v for k, v in values.items() if k in names}


def _stored_computed_buffers(meta: torch.nn.Module, found: Mapping[str, Any]) -> set[str]:
    """Names in a file that are buffers the network computes itself (non-persistent, such as a
    text encoder's position ids, which older library versions saved): not weights, not loaded."""
    computed = {f"{prefix}.{name}" if prefix else name
                for prefix, sub in meta.named_modules() for name in sub._non_persistent_buffers_set}
    return computed & set(found)


def expected_tensors(module: torch.nn.Module) -> dict[str, TensorInfo]:
    """Name -> dtype and shape of every tensor a module's state dict holds (works on meta)."""
    return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in module.state_dict().items()}


def check_shapes(expected: Mapping[str, TensorInfo], found: Mapping[str, TensorInfo], weights_path: Path,
                 config_path: Path | str, *, strict: bool = True, config: Mapping | None = None) -> None:
    """Refuse, naming the first tensor that differs (and the ``config`` field that sets its size,
    when one can be told), weights whose shapes, kinds or names differ from what the config
    builds. With ``strict=False`` (an adapter such as LoRA) only the names present in both are
    compared, and names on one side only are allowed."""
    for name, want in expected.items():
        have = found.get(name)
        if have is None:
            continue
        if have.shape != want.shape:
            fields = _fields_holding(config or {}, set(want.shape) - set(have.shape))
            raise ModelError(
                f"{weights_path}: tensor {name!r} is {list(have.shape)} but {config_path}{fields} makes it "
                f"{list(want.shape)}; the config and weights come from different models."
            )
        if have.dtype.is_floating_point != want.dtype.is_floating_point:
            raise ModelError(f"{weights_path}: tensor {name!r} is stored as {have.dtype} where the model needs {want.dtype}.")
    if strict:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise ModelError(f"The weights in {weights_path} do not match {config_path} ({detail}); the config and weights come from different models.")


def _fields_holding(config: Mapping, values: set[int]) -> str:
    """`` (field 'block_out_channels' holds 2048)`` for the config fields holding one of
    ``values``; empty when none does."""
    hits = []
    for key, ints in _size_fields(config):
        held = sorted(n for n in ints if n in values)
        if held:
            hits.append(f"field {key!r} holds {held[0]}")
    return f" ({', '.join(hits[:2])})" if hits else ""


def plan_component(cls: Any, folder: Path, *, allow_pickle: bool = False, root: str | os.PathLike | None = None,
                   factory: Callable[[dict], torch.nn.Module] | None = None,
                   config: dict | None = None, rename: Rename | None = None) -> ComponentPlan:
    """Read ``folder/config.json``, build the network on the meta device (nothing allocated),
    and compare each tensor with the weights file's header. Nothing big is read or allocated.

    ``factory(config) -> module`` builds the network (default ``cls.from_config``; for a
    transformers model, e.g. ``lambda c: CLIPTextModel(CLIPTextConfig(**c))``). ``root`` is
    the model folder every file must stay inside (default ``folder``). ``config`` skips
    reading the config when the caller already has it. ``rename`` maps the file's tensor names
    to the network's where a library renamed layers between versions (:data:`Rename`).
    """
    folder = Path(folder)
    root = folder if root is None else root
    config_path = folder / "config.json"
    if config is None:
        config = read_json(config_path, root=root)
    name = getattr(cls, "__name__", str(cls))
    factory = factory or cls.from_config
    with torch.device("meta"):
        meta = _build(factory, config, config_path, name)
    expected = expected_tensors(meta)
    weights_path = find_weights(folder)
    state = None
    if weights_path.suffix == ".safetensors":
        found = safetensors_header(weights_path, root=root)
    else:
        state = _pickle_state(weights_path, allow_pickle, root)
        found = {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in state.items()}
    names = rename(list(found), meta) if rename is not None else {k: k for k in found}
    computed = _stored_computed_buffers(meta, set(names.values()))
    names = {k: v for k, v in names.items() if v not in computed}
    if names == {k: k for k in found}:
        names = None
    found, state = _renamed(found, names), None if state is None else _renamed(state, names)
    check_shapes(expected, found, weights_path, config_path, config=config)
    nbytes = sum(info.nbytes for info in found.values())
    nbytes += sum(want.nbytes for key, want in expected.items() if found[key].dtype != want.dtype)
    persistent = set(expected)
    nbytes += sum(b.numel() * b.element_size() for key, b in meta.named_buffers() if key not in persistent)
    parameters = sum(p.numel() for p in meta.parameters())
    return ComponentPlan(name, folder, config_path, config, weights_path, factory, parameters, nbytes, meta, state, names)


def materialise(plan: ComponentPlan) -> torch.nn.Module:
    """The planned network with the file's weights, in eval mode without gradients (a plan is
    materialised once: its meta network becomes the loaded one).

    Call :func:`check_budget` on ``plan.nbytes`` first (:func:`build_component` does). Weights
    are assigned, not copied, into a network whose parameters were never allocated; a network
    with buffers that the file does not hold (a text encoder's position ids) is rebuilt with
    real buffers and parameters on meta.
    """
    expected = expected_tensors(plan.meta)
    dtypes = {name: info.dtype for name, info in expected.items()}
    if plan.state is None and plan.names is not None:
        wanted = {old: dtypes[new] for old, new in plan.names.items()}
        state = _renamed(read_safetensors(plan.weights_path, dtypes=wanted, only=set(wanted)), plan.names)
    elif plan.state is None:
        state = read_safetensors(plan.weights_path, dtypes=dtypes)
    else:
        state = {k: check_finite(k, v.to(dtypes[k]), plan.weights_path) for k, v in plan.state.items()}
    module = plan.meta
    if any(b.is_meta for key, b in module.named_buffers() if key not in expected):
        with _parameters_on_meta():
            module = _build(plan.factory, plan.config, plan.config_path, plan.name)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelError(f"The weights in {plan.weights_path} do not fit {plan.config_path}: {first}") from None
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{plan.config_path}: the {plan.name} has tensors no file provides ({left[:3]}); it cannot be loaded from weights alone.")
    return module.eval().requires_grad_(False)


def build_component(cls: Any, folder: Path, *, allow_pickle: bool = False, root: str | os.PathLike | None = None,
                    factory: Callable[[dict], torch.nn.Module] | None = None, budget: int | None = None,
                    rename: Rename | None = None) -> tuple[Any, dict]:
    """A network from ``folder/config.json`` and its weights: planned on the meta device,
    checked against the weights file and the memory budget, then loaded (see the module doc)."""
    plan = plan_component(cls, folder, allow_pickle=allow_pickle, root=root, factory=factory, rename=rename)
    check_budget(plan.nbytes, f"a {plan.name} of {plan.parameters:,} parameters ({largest_size_field(plan.config)})",
                 plan.config_path, budget=budget)
    return materialise(plan), plan.config


@dataclass
class ModelPlan:
    """Every network of a model folder planned (nothing allocated), with its checked schedule."""

    folder: Path
    components: dict[str, ComponentPlan]
    alphas_cumprod: torch.Tensor
    prediction_type: str

    @property
    def parameters(self) -> int:
        return sum(plan.parameters for plan in self.components.values())

    @property
    def nbytes(self) -> int:
        return sum(plan.nbytes for plan in self.components.values())

    def describe(self) -> str:
        """``1,112,801 parameters, 4.5 MB``: what loading will take."""
        return f"{self.parameters:,} parameters, {human_size(self.nbytes)}"

    def materialise(self, *, budget: int | None = None) -> dict[str, torch.nn.Module]:
        """Every network loaded, after checking their bytes together against the budget."""
        biggest = max(self.components.values(), key=lambda plan: plan.nbytes)
        what = f"this model ({self.parameters:,} parameters; {biggest.name} {largest_size_field(biggest.config)})"
        check_budget(self.nbytes, what, biggest.config_path, budget=budget)
        return {key: materialise(plan) for key, plan in self.components.items()}


# ----------------------------------------------------------------------------- schedulers


def _probability(value: Any, field: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < 1:
        raise ModelError(f"{path}: field {field!r} is {value!r}; it must be a number strictly between 0 and 1.")
    return float(value)


def check_scheduler_config(config: dict, path: Path) -> int:
    """The number of training timesteps, after checking every field the schedule is built from:
    at most :data:`MAX_TIMESTEPS` steps, betas finite and in (0, 1), one trained beta per step."""
    steps = require_int(config, "num_train_timesteps", path, maximum=MAX_TIMESTEPS) if "num_train_timesteps" in config else 1000
    for name in ("beta_start", "beta_end"):
        if name in config:
            _probability(config[name], name, path)
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or len(trained) != steps:
            found = f"{len(trained):,} values" if isinstance(trained, list) else f"a {type(trained).__name__}"
            raise ModelError(f"{path}: field 'trained_betas' has {found}; it needs one beta per timestep ({steps:,}).")
        for i, value in enumerate(trained):
            _probability(value, f"trained_betas[{i}]", path)
    return steps


NOISE_SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                         "rescale_betas_zero_snr")
"""The fields of diffusers' DDPMScheduler / DDIMScheduler (0.42) that change alphas_cumprod: all honoured.

Their other fields steer sampling only and leave alphas_cumprod alone: variance_type (a learned
variance shows as twice the output channels, handled by the adapters), clip_sample,
clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value,
timestep_spacing, steps_offset and DDIM's set_alpha_to_one (the value used after the last
sampling step); prediction_type is read by :func:`prediction_type`.
"""

_SCHEDULE_CHANGING = {"snr_shift_scale": 1.0, "use_flow_sigmas": False}
"""Fields of other diffusers schedulers that would change the noise schedule, with the value that does not."""


def alphas_cumprod_from_scheduler(config: dict, path: Path) -> torch.Tensor:
    """abar_t in float64 from a DDPM/DDIM scheduler config, as diffusers defines the betas.

    Every field that changes the schedule is honoured or refused, never dropped. With
    ``rescale_betas_zero_snr`` the last step has abar = 0 (pure noise); the model's timestep
    check refuses it.
    """
    from diffusers import DDPMScheduler

    kind = str(config.get("_class_name", ""))
    if kind.startswith("FlowMatch"):
        raise ModelError(f"{path}: a {kind} is a flow-matching schedule; this tool audits DDPM-family (noise-prediction) models.")
    for name, neutral in _SCHEDULE_CHANGING.items():
        if name in config and config[name] != neutral:
            raise ModelError(f"{path}: field {name!r} is {config[name]!r}; it changes the noise schedule in a way this "
                             f"tool does not model (only {neutral!r} is supported).")
    steps = check_scheduler_config(config, path)
    known = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"}
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and schedule not in known:
        raise ModelError(f"{path}: field 'beta_schedule' is {schedule!r}; supported: {', '.join(sorted(known))}.")
    rescale = config.get("rescale_betas_zero_snr", False)
    if not isinstance(rescale, bool):
        raise ModelError(f"{path}: field 'rescale_betas_zero_snr' must be true or false, found {rescale!r}.")
    fields = {k: config[k] for k in NOISE_SCHEDULE_FIELDS[1:] if k in config}
    try:
        scheduler = DDPMScheduler(num_train_timesteps=steps, **fields)
    except Exception as exc:
        raise ModelError(f"{path}: the noise schedule could not be built ({exc}).") from None
    abar = torch.cumprod(1 - scheduler.betas.to(torch.float64), 0)
    inside = (abar > 0) & (abar < 1)
    if rescale:
        inside[-1] = abar[-1] >= 0  # zero terminal SNR: the last step is pure noise by design
    if not torch.isfinite(abar).all() or not bool(inside.all()):
        raise ModelError(f"{path}: the noise schedule gives alphas_cumprod outside (0, 1).")
    return abar


def prediction_type(config: dict, path: Path) -> str:
    from core.models.base import PREDICTION_TYPES

    value = config.get("prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise ModelError(f"{path}: field 'prediction_type' is {value!r}; expected one of {', '.join(PREDICTION_TYPES)}.")
    return value


def read_schedule(folder: Path) -> tuple[torch.Tensor, str]:
    """(alphas_cumprod, prediction_type) from the scheduler config of a model folder, checked."""
    path = find_scheduler_config(folder)
    config = read_json(path, root=folder)
    return alphas_cumprod_from_scheduler(config, path), prediction_type(config, path)


def find_component(folder: Path, name: str) -> Path | None:
    """``folder/name`` in a pipeline layout, or ``folder`` itself in a flat one."""
    if (folder / name / "config.json").is_file():
        return folder / name
    return None


def find_scheduler_config(folder: Path) -> Path:
    for path in (folder / "scheduler" / SCHEDULER_CONFIG, folder / SCHEDULER_CONFIG):
        if path.is_file():
            return path
    raise ModelError(
        f"No scheduler config in {folder}: expected scheduler/{SCHEDULER_CONFIG} (pipeline layout) "
        f"or {SCHEDULER_CONFIG} beside config.json (flat layout)."
    )
