"""Attacks by their lower-case names, as the CLI, the app and ``core.audit`` refer to them."""

from __future__ import annotations

import inspect
from typing import Iterable

from core.attacks.base import Attack
from core.attacks.conditional import CLiD, ConditioningGap
from core.attacks.loss import Loss
from core.attacks.pfami import PFAMI
from core.attacks.pia import PIA, PIAN
from core.attacks.secmi import SecMI
from core.attacks.sima import SimA, SimAMC
from core.errors import SimaError

_GENERAL = (SimA, SimAMC, PIA, PIAN, SecMI, Loss, PFAMI)
_CONDITIONAL = (ConditioningGap, CLiD)
_ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in _GENERAL + _CONDITIONAL}

#: The attacks that run on any model, SimA first and the multi-query baselines after it.
ATTACK_NAMES: tuple[str, ...] = tuple(cls.name for cls in _GENERAL)
#: The text-to-image baselines, which compare a caption (or class label) with weaker
#: conditions and so need a conditional model and its captions.
CONDITIONAL_ATTACK_NAMES: tuple[str, ...] = tuple(cls.name for cls in _CONDITIONAL)
ALL_ATTACK_NAMES: tuple[str, ...] = ATTACK_NAMES + CONDITIONAL_ATTACK_NAMES


def get_attack(name: str, **params) -> Attack:
    """A new attack by name (case and surrounding spaces ignored), with hyperparameters ``params``."""
    key = str(name).strip().lower()
    if key not in _ATTACKS:
        raise SimaError(f"Unknown attack {name!r}; choose one of {', '.join(ALL_ATTACK_NAMES)}.")
    cls = _ATTACKS[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SimaError(
            f"{key} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(accepted) or 'none'}."
        )
    return cls(**params)


def parse_attacks(spec: str | Attack | Iterable[str | Attack]) -> list[Attack]:
    """Attacks from 'sima,pia,secmi' (or a list of names and Attack objects), in order, each once."""
    items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, Attack) else list(spec)
    attacks: list[Attack] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        attack = item if isinstance(item, Attack) else get_attack(item)
        if any(a.name == attack.name for a in attacks):
            raise SimaError(f"The attack {attack.name} is listed twice; name each attack once.")
        attacks.append(attack)
    if not attacks:
        raise SimaError(f"No attack named in {spec!r}; choose from {', '.join(ALL_ATTACK_NAMES)}.")
    return attacks
