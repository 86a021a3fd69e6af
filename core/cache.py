"""A persistent score cache: nothing is ever computed twice.

One SQLite file holds every raw statistic, keyed by (model fingerprint, attack with its
hyperparameters, seed for random attacks, device, image content key, timestep). Each batch
is committed as it finishes, in a transaction, so an interrupted audit resumes where it
stopped and a crash never leaves a half-written entry. SQLite also makes concurrent readers
and writers (several app sessions, a CLI run beside the app) safe.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from core.errors import SimaError

ENV_VAR = "SIMA_CACHE_DIR"
FILE_NAME = "scores.sqlite"
#: Stored in place of t for attacks that ignore the timestep (they average over their own grid).
ANY_T = -1
#: Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "database is
#: locked" at once (without waiting on its busy timeout) when another connection is doing the
#: same; setup is therefore serialised within a process and retried across processes.
_SETUP_LOCK = threading.Lock()
_SETUP_PATIENCE_S = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, attack TEXT NOT NULL, sample TEXT NOT NULL, t INTEGER NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (model, attack, sample, t)
) WITHOUT ROWID
"""


def default_dir() -> Path:
    """$SIMA_CACHE_DIR, else $XDG_CACHE_HOME/sima-explorer, else ~/.cache/sima-explorer."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sima-explorer"


def attack_key(attack, seed: int, device: str) -> str:
    """Everything about an attack run that changes its numbers, as one string."""
    params = json.dumps(attack.get_params(), sort_keys=True, default=repr)
    seed_part = f"|seed={seed}" if attack.noise_draws else ""
    return f"{attack.name}|{params}{seed_part}|{device}"


@dataclass
class CacheInfo:
    path: Path
    entries: int
    models: int
    size_bytes: int

    def describe(self) -> str:
        return f"{self.path}: {self.entries:,} cached statistics for {self.models} model(s), {self.size_bytes / 1e6:.1f} MB"


class ScoreCache:
    """Raw statistics on disk. Thread-safe: each thread gets its own connection."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else default_dir()
        self.path = self.folder / FILE_NAME
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with _SETUP_LOCK:
                    conn = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise SimaError(
                    f"The score cache at {self.path} cannot be used ({exc}); set {ENV_VAR} to a writable "
                    "folder, or run `sima cache clear`."
                ) from None
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        deadline = time.monotonic() + _SETUP_PATIENCE_S
        while True:
            conn = sqlite3.connect(self.path, timeout=_SETUP_PATIENCE_S)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
                conn.commit()
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, model: str, attack: str, samples: Sequence[str], steps: Sequence[int]) -> dict[tuple[str, int], float]:
        """Cached values for the requested samples at the requested timesteps."""
        conn = self._connect()
        wanted_t = set(int(t) for t in steps)
        found: dict[tuple[str, int], float] = {}
        unique = list(dict.fromkeys(samples))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            rows = conn.execute(
                f"SELECT sample, t, value FROM scores WHERE model=? AND attack=? AND sample IN ({','.join('?' * len(chunk))})",
                (model, attack, *chunk),
            )
            for sample, t, value in rows:
                if t in wanted_t:
                    found[(sample, t)] = value
        return found

    def put(self, model: str, attack: str, rows: Iterable[tuple[str, int, float]]) -> None:
        """Store (sample, t, value) rows in one transaction."""
        conn = self._connect()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO scores (model, attack, sample, t, value) VALUES (?, ?, ?, ?, ?)",
                [(model, attack, s, int(t), float(v)) for s, t, v in rows],
            )

    def info(self) -> CacheInfo:
        if not self.path.exists():
            return CacheInfo(self.path, 0, 0, 0)
        conn = self._connect()
        entries, models = conn.execute("SELECT COUNT(*), COUNT(DISTINCT model) FROM scores").fetchone()
        size = sum(p.stat().st_size for p in self.folder.glob(FILE_NAME + "*"))
        return CacheInfo(self.path, entries, models, size)

    def clear(self) -> int:
        """Delete every cached statistic; returns how many there were."""
        count = self.info().entries
        if self.path.exists():
            conn = self._connect()
            with conn:
                conn.execute("DELETE FROM scores")
            conn.execute("VACUUM")
        return count
