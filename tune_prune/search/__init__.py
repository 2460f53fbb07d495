"""Search over iterative pruning schedules with Ray Tune + Optuna.

Import-light on purpose: ``SearchConfig`` needs neither Ray nor torch; ``run_search``
imports Ray when called.
"""

from tune_prune.search.config import SearchConfig

__all__ = ["SearchConfig", "fixed_config", "run_schedule", "run_search"]


def run_search(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """Run a search; see :func:`tune_prune.search.runner.run_search`."""
    from tune_prune.search.runner import run_search as _run

    return _run(*args, **kwargs)


def run_schedule(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """Run one schedule without Ray; see :func:`tune_prune.search.schedule.run_schedule`."""
    from tune_prune.search.schedule import run_schedule as _run

    return _run(*args, **kwargs)


def fixed_config(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """A search's trial-wide settings; see :func:`tune_prune.search.runner.fixed_config`."""
    from tune_prune.search.runner import fixed_config as _fixed_config

    return _fixed_config(*args, **kwargs)
