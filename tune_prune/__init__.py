"""tune_prune: search over iterative pruning schedules for PyTorch models."""

__version__ = "0.1.0"
