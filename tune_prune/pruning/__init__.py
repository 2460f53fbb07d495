"""The NNI pruning-v2 compatible core (mirrors ``nni.algorithms.compression.v2.pytorch.pruning``).

Migrating an NNI 2.10 script means changing its import lines only::

    from tune_prune.pruning import L1NormPruner, AGPTaskGenerator, PruningScheduler

This package imports neither ray nor optuna: it is usable on its own.
"""

from tune_prune.pruning.iterative import (
    AGPPruner,
    LinearPruner,
    LotteryTicketPruner,
    SimulatedAnnealingPruner,
)
from tune_prune.pruning.pruners import (
    PRUNERS,
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    Pruner,
    SlimPruner,
    TaylorFOWeightPruner,
    get_pruner_class,
    trace,
)
from tune_prune.pruning.scheduler import PruningScheduler
from tune_prune.pruning.tools import (
    AGPTaskGenerator,
    CurveTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    Task,
    TaskGenerator,
    TaskResult,
)

__all__ = [
    "PRUNERS",
    "AGPPruner",
    "AGPTaskGenerator",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "CurveTaskGenerator",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "LinearPruner",
    "LinearTaskGenerator",
    "LotteryTicketPruner",
    "LotteryTicketTaskGenerator",
    "Pruner",
    "PruningScheduler",
    "SimulatedAnnealingPruner",
    "SimulatedAnnealingTaskGenerator",
    "SlimPruner",
    "Task",
    "TaskGenerator",
    "TaskResult",
    "TaylorFOWeightPruner",
    "get_pruner_class",
    "trace",
]
