"""The forward-pass batch size that runs fastest for a model on this machine.

On CPU a bigger batch is often slower (cache pressure), so the size is measured: a short
calibration times ``model.eps`` at a few sizes and keeps the fastest. The answer is cached
in memory and on disk per (model fingerprint, device, thread count), so it is measured once.
"""

from __future__ import annotations

import json
import math
import threading
import time

import torch

from core.cache import default_dir
from core.models.base import DiffusionModel

CANDIDATES = (8, 16, 32, 64, 128)
FILE_NAME = "batch_sizes.json"
#: Calibration stops growing the batch once one forward pass takes this long (seconds).
MAX_PASS_SECONDS = 2.0

_memory: dict[str, int] = {}
_lock = threading.Lock()


def _key(model: DiffusionModel) -> str:
    return f"{model.fingerprint}|{model.device}|threads={torch.get_num_threads()}"


def _disk() -> dict:
    path = default_dir() / FILE_NAME
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _save(key: str, size: int) -> None:
    folder = default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        table = _disk()
        table[key] = size
        tmp = folder / f"{FILE_NAME}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(folder / FILE_NAME)  # atomic: readers see the old or the new table
    except OSError:
        pass  # an unwritable cache only means calibrating again next time


def measure(model: DiffusionModel, candidates=CANDIDATES, repeats: int = 2) -> dict[int, float]:
    """Images per second of ``model.eps`` at each batch size (best of ``repeats``)."""
    rates: dict[int, float] = {}
    g = torch.Generator().manual_seed(0)
    for size in candidates:
        x = torch.randn(size, *model.sample_shape, generator=g).to(model.device)
        t = torch.full((size,), model.num_train_timesteps // 10)
        model.eps(x, t)  # warm-up: first calls allocate and pick kernels
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            model.eps(x, t)
            best = min(best, time.perf_counter() - start)
        rates[size] = size / max(best, 1e-9)
        if best > MAX_PASS_SECONDS:
            break
    return rates


def best_batch_size(model: DiffusionModel) -> int:
    """The calibrated batch size for ``model`` (measured on first use, then cached)."""
    key = _key(model)
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = _disk().get(key)
        if isinstance(stored, int) and stored > 0:
            _memory[key] = stored
            return stored
        rates = measure(model)
        size = max(rates, key=rates.get)
        _memory[key] = size
        _save(key, size)
        return size
