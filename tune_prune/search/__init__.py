"""Search over iterative pruning schedules with Ray Tune + Optuna.

Import-light on purpose: ``SearchConfig`` needs neither Ray nor torch; ``run_search``
imports Ray when called.
"""

from tune_prune.search.config import SearchConfig

__all__ = ["SearchConfig", "run_search"]


def run_search(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """Run a search; see :func:`tune_prune.search.runner.run_search`."""
    from tune_prune.search.runner import run_search as _run

    return _run(*args, **kwargs)
