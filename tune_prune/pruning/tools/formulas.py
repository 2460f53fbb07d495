"""Sparsity schedules as pure functions: the sparsity of the ORIGINAL model after
``iteration`` of ``total`` steps toward ``target``.

Shared by the formula task generators and the search's dry run, so a schedule shape is
written once. ``curve_fraction`` is the fraction of the target a named curve reaches at
progress ``p = iteration / total``; :func:`schedule` lists a whole schedule, like
Torch-Pruning's ``linear_scheduler(pruning_ratio, steps)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Formula = Callable[[float, int, int], float]


def linear(target: float, iteration: int, total: int) -> float:
    """Even steps: ``S * i / N``."""
    return target * iteration / total


def agp(target: float, iteration: int, total: int) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017): ``S * (1 - (1 - i/N)**3)``."""
    return target * (1 - (1 - iteration / total) ** 3)


def lottery_ticket(target: float, iteration: int, total: int) -> float:
    """Every round prunes the same fraction of what is left: ``1 - (1 - S)**(i/N)``."""
    return 1 - (1 - target) ** (iteration / total)


def curve_fraction(curve: str, progress: float, target: float, exponent: float = 3.0) -> float:
    """Fraction of ``target`` a named curve reaches at ``progress`` in [0, 1] (clipped to [0, 1]).

    ``poly``: ``1 - (1 - p)**exponent`` (``linear`` and ``agp``: exponent 1 and 3);
    ``cosine``: ``(1 - cos(pi p)) / 2``; ``geometric``: the lottery-ticket shape
    ``(1 - (1 - S)**p) / S``.
    """
    if curve == "cosine":
        value = (1 - math.cos(math.pi * progress)) / 2
    elif curve == "geometric":
        value = (1 - (1 - target) ** progress) / target if target > 0 else progress
    else:
        exponent = {"linear": 1.0, "agp": 3.0}.get(curve, exponent)
        value = 1 - (1 - progress) ** exponent
    return min(max(value, 0.0), 1.0)


def schedule(formula: Formula, target: float, total: int) -> list[float]:
    """The sparsity after each of iterations 0..total (iteration 0: the dense model)."""
    return [formula(target, i, total) for i in range(total + 1)]
