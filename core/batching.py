"""The forward-pass batch size and thread count that run fastest for a model here.

On CPU a bigger batch is often slower (cache pressure), so the size is measured: a short
calibration times ``model.eps`` at a few sizes and keeps the fastest. Threads are measured
too: on a 2-core machine where anything else is running (the app's server, a browser), torch's
two spinning threads can run several times slower than one. The answer is cached in memory
and on disk per (model fingerprint, device, available cores), so it is measured once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from typing import Iterator

import torch

from core.cache import default_dir
from core.models.base import DiffusionModel

CANDIDATES = (8, 16, 32, 64, 128)
FILE_NAME = "batch_sizes.json"
#: Calibration stops growing the batch once one forward pass takes this long (seconds).
MAX_PASS_SECONDS = 2.0

_memory: dict[str, tuple[int, int]] = {}
_lock = threading.Lock()
#: torch's thread count when this module was imported: the most a calibration tries.
MAX_THREADS = torch.get_num_threads()


def _key(model: DiffusionModel) -> str:
    return f"{model.fingerprint}|{model.numerics}|cores={os.cpu_count()}|max_threads={MAX_THREADS}"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads; only a speed setting, never a result."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def _disk() -> dict:
    path = default_dir() / FILE_NAME
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _save(key: str, value: list[int]) -> None:
    folder = default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        table = _disk()
        table[key] = value
        tmp = folder / f"{FILE_NAME}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(folder / FILE_NAME)  # atomic: readers see the old or the new table
    except OSError:
        pass  # an unwritable cache only means calibrating again next time


def forget() -> int:
    """Drop every stored calibration, in memory and on disk; returns how many there were.

    A calibration measured while the machine was busy stays wrong until it is forgotten.
    """
    with _lock:
        count = len(set(_memory) | set(_disk()))
        _memory.clear()
        (default_dir() / FILE_NAME).unlink(missing_ok=True)
    return count


def measure(model: DiffusionModel, candidates=CANDIDATES, repeats: int = 2) -> dict[int, float]:
    """Images per second of ``model.eps`` at each batch size (best of ``repeats``), current threads."""
    rates: dict[int, float] = {}
    g = torch.Generator().manual_seed(0)
    # One sample first: a model slower than MAX_PASS_SECONDS per sample (a Stable Diffusion UNet
    # on a CPU takes half a minute) runs at batch 1, since timing a batch of 8 would take minutes.
    x, t = torch.randn(1, *model.sample_shape, generator=g).to(model.device), torch.full((1,), model.num_train_timesteps // 10)
    model.eps(x, t)  # warm-up
    start = time.perf_counter()
    model.eps(x, t)
    single = time.perf_counter() - start
    if single > MAX_PASS_SECONDS:
        return {1: 1 / single}
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


def calibrate(model: DiffusionModel) -> tuple[int, int]:
    """(batch size, threads) measured fastest for ``model``; threads 1 and the default are tried."""
    best, best_rate = (CANDIDATES[0], MAX_THREADS), 0.0
    for threads in sorted({1, MAX_THREADS}):
        if model.device.type != "cpu" and threads != MAX_THREADS:
            continue
        with torch_threads(threads):
            rates = measure(model)
        size = max(rates, key=rates.get)
        if rates[size] > best_rate:
            best, best_rate = (size, threads), rates[size]
    return best


def best_settings(model: DiffusionModel) -> tuple[int, int]:
    """The calibrated (batch size, threads) for ``model``: measured on first use, then cached."""
    key = _key(model)
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = _disk().get(key)
        if isinstance(stored, list) and len(stored) == 2 and all(isinstance(v, int) and v > 0 for v in stored):
            _memory[key] = (stored[0], stored[1])
            return _memory[key]
        settings = calibrate(model)
        _memory[key] = settings
        _save(key, list(settings))
        return settings


def best_batch_size(model: DiffusionModel) -> int:
    """The calibrated batch size for ``model`` (see :func:`best_settings`)."""
    return best_settings(model)[0]
