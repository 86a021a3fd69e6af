"""Membership attacks: each turns (model, samples, timestep) into a statistic per sample."""

from core.attacks.base import Attack, keyed_noise, noised
from core.attacks.loss import Loss
from core.attacks.pfami import PFAMI
from core.attacks.pia import PIA, PIAN
from core.attacks.registry import ATTACK_NAMES, get_attack, parse_attacks
from core.attacks.secmi import SecMI
from core.attacks.sima import SimA, SimAMC

__all__ = [
    "ATTACK_NAMES",
    "Attack",
    "Loss",
    "PFAMI",
    "PIA",
    "PIAN",
    "SecMI",
    "SimA",
    "SimAMC",
    "get_attack",
    "keyed_noise",
    "noised",
    "parse_attacks",
]
