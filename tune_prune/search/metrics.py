"""What a trial reports and how it is ranked; pure functions, no Ray, no torch.

The objective is the score *at the target sparsity*. A schedule that ends below the
target (minus a tolerance) must never outrank one that reaches it, whatever its score,
so its objective is a floor value below every reachable score:

* higher-is-better workloads (accuracy in [0, 1]): ``objective = -1 + 0.5 * progress``,
  i.e. in [-1, -0.5), below any accuracy, yet still ordered by how close the trial
  came, which gives TPE a gradient among failures;
* lower-is-better workloads (a loss >= 0): ``objective = 1e6 - progress``.

``progress = min(1, max over iterations of sparsity / target)`` is monotone in the
iteration and comparable across schedules; the fair early stopping uses it as its clock.
"""

from __future__ import annotations

import math

#: Metric names the searcher and the schedulers use.
SEARCH_METRIC = "best_objective"
SCORE = "score"
PROGRESS = "progress"
SCHEDULE_DONE = "schedule_done"
FLOOR_MAX = -1.0
FLOOR_MIN = 1e6
#: ``multi_objective`` -> the reported (minimised) cost metric NSGA-II trades the objective
#: against; ``latency`` is measured in milliseconds (search.schedule.export_latency_ms).
LATENCY = "latency_ms"
COST_METRICS = {"macs": "macs", "params": "params", "latency": LATENCY}


def cost_metric(multi_objective: str | None) -> str | None:
    """The reported cost column of ``multi_objective`` ('latency' -> 'latency_ms'); None for 'none'."""
    if multi_objective in (None, "none"):
        return None
    try:
        return COST_METRICS[multi_objective]
    except KeyError:
        raise ValueError(f"multi_objective must be one of {['none', *COST_METRICS]}, "
                         f"got {multi_objective!r}") from None


def reached(sparsity: float, target: float, tolerance: float) -> bool:
    """Whether ``sparsity`` counts as at the target (channel rounding needs the tolerance)."""
    return sparsity >= target - tolerance - 1e-9


def progress(sparsity: float, target: float, previous: float = 0.0, tolerance: float = 0.0) -> float:
    """Monotone progress toward the target in [0, 1]; exactly 1 once at target (within tolerance)."""
    if not math.isfinite(sparsity):
        return previous
    if tolerance and reached(sparsity, target, tolerance):
        return 1.0
    return max(previous, min(1.0, max(0.0, sparsity / target)))


def objective(
    score: float,
    sparsity: float,
    target: float,
    tolerance: float,
    prog: float,
    higher_is_better: bool = True,
) -> float:
    """Score when at target, else the documented floor (see the module docstring)."""
    if reached(sparsity, target, tolerance) and math.isfinite(score):
        return float(score)
    if higher_is_better:
        return FLOOR_MAX + 0.5 * min(max(prog, 0.0), 0.999)
    return FLOOR_MIN - min(max(prog, 0.0), 0.999)


def better(a: float, b: float, higher_is_better: bool = True) -> bool:
    """Whether objective ``a`` beats ``b``."""
    return a > b if higher_is_better else a < b
