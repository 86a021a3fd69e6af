"""Membership attacks: each turns (model, samples, timestep) into a statistic per sample."""

from core.attacks.base import Attack, keyed_noise
from core.attacks.sima import SimA, SimAMC

__all__ = ["Attack", "SimA", "SimAMC", "keyed_noise"]
