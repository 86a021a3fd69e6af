"""Membership attacks: each turns (model, samples, timestep) into a statistic per sample."""

from core.attacks.base import Attack, keyed_noise, noised
from core.attacks.conditional import CLiD, ConditioningGap
from core.attacks.loss import Loss
from core.attacks.pfami import PFAMI
from core.attacks.pia import PIA, PIAN
from core.attacks.registry import ALL_ATTACK_NAMES, ATTACK_NAMES, CONDITIONAL_ATTACK_NAMES, get_attack, parse_attacks
from core.attacks.secmi import SecMI
from core.attacks.sima import SimA, SimAMC

__all__ = [
    "ALL_ATTACK_NAMES",
    "ATTACK_NAMES",
    "Attack",
    "CLiD",
    "CONDITIONAL_ATTACK_NAMES",
    "ConditioningGap",
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
