"""tune_prune: search over iterative pruning schedules for PyTorch models.

- ``tune_prune.pruning``: the NNI pruning-v2 compatible core (pruners, task
  generators, PruningScheduler); imports neither ray nor optuna.
- ``tune_prune.workloads``: what a search prunes (model, fine-tuning, evaluation).
- ``tune_prune.search``: the Ray Tune + Optuna search (``python -m tune_prune.search``).
- ``tune_prune.export``: export the best pruned model and reload it safely.
"""

from tune_prune.errors import (
    ConfigError,
    ExportError,
    PrunerError,
    SpeedupError,
    TunePruneError,
    WorkloadError,
)
from tune_prune.workloads import Workload, get_workload, load_or_train_baseline

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExportError",
    "PrunerError",
    "SpeedupError",
    "TunePruneError",
    "Workload",
    "WorkloadError",
    "__version__",
    "get_workload",
    "load_or_train_baseline",
]
