"""Task generators of iterative pruning (NNI's ``pruning.tools``): what to prune next."""

from .base import Task, TaskGenerator, TaskResult
from .function_based import (
    AGPTaskGenerator,
    CurveTaskGenerator,
    FunctionBasedTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
)
from .simulated_annealing import SimulatedAnnealingTaskGenerator
from .sparsity import compute_sparsity, relative_sparsity, removed_fraction

__all__ = [
    "AGPTaskGenerator",
    "CurveTaskGenerator",
    "FunctionBasedTaskGenerator",
    "LinearTaskGenerator",
    "LotteryTicketTaskGenerator",
    "SimulatedAnnealingTaskGenerator",
    "Task",
    "TaskGenerator",
    "TaskResult",
    "compute_sparsity",
    "relative_sparsity",
    "removed_fraction",
]
