"""Stable content hashes: cache keys, model fingerprints and per-sample noise seeds."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch


def _update(h: "hashlib._Hash", value: torch.Tensor) -> None:
    value = value.detach().to("cpu").contiguous()
    h.update(str(value.dtype).encode())
    h.update(str(tuple(value.shape)).encode())
    if value.numel():
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(value: torch.Tensor) -> str:
    """Hex digest of one tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()[:24]


def row_digests(batch: torch.Tensor) -> list[str]:
    """One content digest per sample of a batch: the key of that image in caches and noise."""
    return [tensor_digest(row) for row in batch]


def fingerprint_tensors(tensors: dict[str, torch.Tensor], config: Any) -> str:
    """A stable hash of named weights plus a config: equal models give equal fingerprints."""
    h = hashlib.sha256()
    h.update(repr(config).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        _update(h, tensors[name])
    return h.hexdigest()[:16]


def seed_for(parts: Iterable[Any]) -> int:
    """A 63-bit seed derived from any printable parts, identical across processes."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
