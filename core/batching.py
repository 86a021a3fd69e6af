"""The forward-pass batch size and thread count that run fastest for a model here.

On CPU a bigger batch is often slower (cache pressure), so the size is measured: a short
calibration times ``model.eps`` at a few sizes and keeps the fastest. Threads are measured
too: on a 2-core machine where anything else is running (the app's server, a browser), torch's
two spinning threads can run several times slower than one. The answer is cached in memory
and on disk per (model fingerprint, device, available cores), with the rate it measured and
when. A calibration is measured again when it is older than ``MAX_AGE_S``, and when a sweep
runs at less than ``SLOW_FRACTION`` of the rate it predicted (the machine got busier, or the
calibration was measured while it was busy): see :func:`check_rate`. A sweep that runs below the
full thread count tries the full count on a batch now and then (:class:`ThreadTuner`), since a
choice made on a busy machine slows every sweep once the machine is quiet again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from dataclasses import astuple, dataclass
from typing import Iterator

import torch

from core.cache import default_dir
from core.models.base import DiffusionModel

CANDIDATES = (8, 16, 32, 64, 128)
FILE_NAME = "batch_sizes.json"
#: Calibration stops growing the batch once one forward pass takes this long (seconds).
MAX_PASS_SECONDS = 2.0
#: A calibration older than this (seconds) is measured again: machines and their loads change.
MAX_AGE_S = 7 * 24 * 3600
#: A sweep slower than this fraction of its calibration's rate has the calibration measured again.
SLOW_FRACTION = 0.5
#: ... once it has run this long (seconds), so that a first slow batch is not taken for a trend.
MIN_CHECK_SECONDS = 3.0


@dataclass(frozen=True)
class Calibration:
    """The fastest (batch size, threads) measured for a model, its rate there and when."""

    batch_size: int
    threads: int
    rate: float  # model evaluations per second at these settings
    measured_at: float  # time.time() of the measurement

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.measured_at > MAX_AGE_S


_memory: dict[str, Calibration] = {}
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
        if torch.get_num_threads() != before:  # the block may have changed it too (a ThreadTuner)
            torch.set_num_threads(before)


def _disk() -> dict:
    path = default_dir() / FILE_NAME
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _save(key: str, value: list) -> None:
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


def calibrate(model: DiffusionModel) -> Calibration:
    """Measure the fastest (batch size, threads) for ``model``; threads 1 and the default are tried."""
    best, best_rate = (CANDIDATES[0], MAX_THREADS), 0.0
    for threads in sorted({1, MAX_THREADS}):
        if model.device.type != "cpu" and threads != MAX_THREADS:
            continue
        with torch_threads(threads):
            rates = measure(model)
        size = max(rates, key=rates.get)
        if rates[size] > best_rate:
            best, best_rate = (size, threads), rates[size]
    return Calibration(best[0], best[1], best_rate, time.time())


def _stored(value) -> Calibration | None:
    """A calibration read from disk, or None when it is malformed or from an older format."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    size, threads, rate, when = value
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, threads)):
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (rate, when)):
        return None
    return Calibration(size, threads, float(rate), float(when))


def calibration(model: DiffusionModel) -> Calibration:
    """The stored calibration for ``model`` while it is fresh; otherwise measured now and stored."""
    key = _key(model)
    with _lock:
        found = _memory.get(key) or _stored(_disk().get(key))
        if found is None or found.expired():
            _remember(key, calibrate(model))
        else:
            _memory[key] = found
        return _memory[key]


def _remember(key: str, found: Calibration) -> None:
    """Keep ``found`` as the calibration under ``key``, in memory and on disk (the caller holds _lock)."""
    _memory[key] = found
    _save(key, list(astuple(found)))


def best_settings(model: DiffusionModel) -> tuple[int, int]:
    """The calibrated (batch size, threads) for ``model`` (see :func:`calibration`)."""
    found = calibration(model)
    return found.batch_size, found.threads


def check_rate(model: DiffusionModel, evaluations: int, seconds: float) -> Calibration | None:
    """Called by a sweep as it runs: when ``evaluations`` model calls took ``seconds`` and that
    is less than ``SLOW_FRACTION`` of the calibrated rate, measure again (now) and return the
    new calibration; otherwise None. Short runs (under ``MIN_CHECK_SECONDS``) are not judged."""
    if seconds < MIN_CHECK_SECONDS or evaluations <= 0:
        return None
    key = _key(model)
    with _lock:
        found = _memory.get(key)
    if found is None or evaluations / seconds >= SLOW_FRACTION * found.rate:
        return None
    return recalibrate(model)


def recalibrate(model: DiffusionModel) -> Calibration:
    """Measure the model's calibration now and store it, whatever was stored before."""
    fresh = calibrate(model)
    with _lock:
        _remember(_key(model), fresh)
    return fresh


#: A sweep running below torch's full thread count (a choice made while the machine was busy) runs
#: one batch at the full count after PROBE_AFTER batches, and again every PROBE_EVERY: load is
#: transient, and a stale one-thread choice ran a sweep on a quiet 2-core machine at 0.56x of what
#: two threads gave (benchmarks/speed.py --official-only).
PROBE_AFTER = 3
PROBE_EVERY = 50
#: The probe must beat the median rate of the recent batches by this factor for the sweep to switch.
PROBE_MARGIN = 1.1
#: How many recent batches that median is taken over.
PROBE_WINDOW = 5


class ThreadTuner:
    """Keeps a running sweep on the faster thread count while the machine's load changes.

    Call :meth:`observe` after each batch with its model evaluations and compute seconds; it sets
    torch's thread count for the next batch. A sweep much slower than its calibration measures it
    again (:func:`check_rate`); one below the full thread count tries the full count on one batch
    now and then and keeps it, storing it as the model's calibration, when that batch runs faster.
    Thread counts change only speed, never a statistic.
    """

    def __init__(self, model: DiffusionModel, threads: int):
        self.model, self.threads = model, threads
        self.rates: list[float] = []
        self.evaluations, self.seconds = 0, 0.0
        self.probing = False

    def observe(self, evaluations: int, seconds: float) -> None:
        rate = evaluations / max(seconds, 1e-9)
        if self.probing:
            self.probing = False
            recent = sorted(self.rates[-PROBE_WINDOW:])
            if rate > PROBE_MARGIN * recent[len(recent) // 2]:
                self._switch(MAX_THREADS)
                self.rates = [rate]
                _adopt(self.model, MAX_THREADS, rate)
            else:
                torch.set_num_threads(self.threads)
            return
        self.rates.append(rate)
        self.evaluations, self.seconds = self.evaluations + evaluations, self.seconds + seconds
        fresh = check_rate(self.model, self.evaluations, self.seconds)
        if fresh is not None:
            self._switch(fresh.threads)
        elif self.threads < MAX_THREADS and len(self.rates) % PROBE_EVERY == PROBE_AFTER % PROBE_EVERY:
            self.probing = True
            torch.set_num_threads(MAX_THREADS)

    def _switch(self, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)
        self.rates, self.evaluations, self.seconds = [], 0, 0.0


def _adopt(model: DiffusionModel, threads: int, rate: float) -> None:
    """Store ``threads`` (at ``rate``) as the model's calibration, keeping its batch size."""
    key = _key(model)
    with _lock:
        before = _memory.get(key) or _stored(_disk().get(key))
        _remember(key, Calibration(before.batch_size if before else CANDIDATES[0], threads, rate, time.time()))


def best_batch_size(model: DiffusionModel) -> int:
    """The calibrated batch size for ``model`` (see :func:`best_settings`)."""
    return best_settings(model)[0]
