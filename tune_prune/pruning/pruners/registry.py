"""Short names of the pruners (as used by search spaces and configs)."""

from __future__ import annotations

from tune_prune.errors import ConfigError
from tune_prune.pruning.pruners.activation import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
)
from tune_prune.pruning.pruners.base import Pruner
from tune_prune.pruning.pruners.fpgm import FPGMPruner
from tune_prune.pruning.pruners.level import LevelPruner
from tune_prune.pruning.pruners.norm import L1NormPruner, L2NormPruner
from tune_prune.pruning.pruners.slim import SlimPruner
from tune_prune.pruning.pruners.taylor import TaylorFOWeightPruner

PRUNERS: dict[str, type[Pruner]] = {
    "level": LevelPruner,
    "l1": L1NormPruner,
    "l2": L2NormPruner,
    "fpgm": FPGMPruner,
    "slim": SlimPruner,
    "taylorfo": TaylorFOWeightPruner,
    "apoz": ActivationAPoZRankPruner,
    "mean_activation": ActivationMeanRankPruner,
}


def get_pruner_class(name: str) -> type[Pruner]:
    """The pruner class registered under ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    if key == "taylor":
        key = "taylorfo"
    if key not in PRUNERS:
        raise ConfigError(f"pruner: unknown name {name!r} (known: {', '.join(PRUNERS)})")
    return PRUNERS[key]
