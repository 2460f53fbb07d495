"""Early stopping that compares pruning schedules at equal sparsity, not equal step.

Why not plain ASHA: ASHA compares trials at equal ``training_iteration``. Here one
iteration is one pruning step, and schedules differ in how far one step goes: after
step 1 a 2-step AGP schedule sits at 60 % sparsity while a 10-step linear one sits at
8 %. At step 1 the slow schedule still looks nearly dense and always scores higher, so
ASHA stops the fast schedules first, whatever their score at the target.

What :class:`FairSuccessiveHalving` compares instead: the *score at the same sparsity*.
Its clock is ``progress = sparsity / target`` (monotone, in [0, 1], identical in meaning
for every schedule). Rungs are progress fractions (default 0.25, 0.5, 0.75). When a
trial's progress first passes a rung, its score *at exactly that rung's sparsity* is
estimated by linear interpolation between its previous report and this one (the dense
baseline score at progress 0 is the first point). A schedule that jumps past a rung is
thus neither rewarded for being compared earlier nor punished for being compared at a
higher sparsity. Only the highest rung a report passes is estimated (rungs jumped over
in one step are skipped for that trial: a chord across a large sparsity gap
underestimates the concave score curve). That value joins the rung's records, and, as
in asynchronous successive halving, the trial is stopped when it falls below the
``1 - 1/reduction_factor`` quantile of the values recorded at that rung (only once
``min_samples`` values exist, 3 by default: with two, the lower of two near-equal
estimates would be stopped on noise).

Interpolation assumes the score is roughly linear in sparsity between two reports;
with ``interpolate=False`` the first measured score at or past the rung is used
instead, a pessimistic estimate for fast schedules (never in their favour).

Trials with ``reset_weight`` (lottery tickets) report untrained rewound weights until
their final retrained row (``es_comparable`` false): they are never compared or stopped.

Stopped trials end with ``schedule_done`` false in their last result;
:class:`tune_prune.search.searcher.PruneAwareOptunaSearch` records them in Optuna as
PRUNED, never as COMPLETE with a truncated score. Rung records are kept in memory
only: after ``--resume`` the rungs start empty (no trial is stopped on stale state).

``compare_with='finished'`` (the search's ``--deterministic``) judges a trial only against
the rung records of trials that had *finished before it started*. Asynchronous halving
compares with whoever happened to report first, so with parallel trials its decisions
depend on timing; with this rule and synchronous batches of trials (each batch starts
after the previous one ended) every decision is a function of the seed alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from tune_prune.search import metrics as M

logger = logging.getLogger(__name__)


class FairSuccessiveHalving(FIFOScheduler):
    """Asynchronous successive halving on the ``progress`` clock, at equal sparsity."""

    def __init__(
        self,
        metric: str = M.SCORE,
        mode: str = "max",
        rungs: Sequence[float] = (0.25, 0.5, 0.75),
        reduction_factor: float = 2.0,
        min_samples: int = 3,
        progress_attr: str = M.PROGRESS,
        baseline_attr: str = "baseline_score",
        interpolate: bool = True,
        compare_with: str = "all",
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if compare_with not in ("all", "finished"):
            raise ValueError(f"compare_with must be 'all' or 'finished', got {compare_with!r}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}")
        self._metric = metric
        self._mode = mode
        self._rungs = sorted(float(r) for r in rungs)
        self._rf = float(reduction_factor)
        self._min_samples = max(1, int(min_samples))
        self._progress_attr = progress_attr
        self._baseline_attr = baseline_attr
        self._interpolate = interpolate
        self._last: dict[str, tuple[float, float]] = {}
        self.recorded: dict[float, dict[str, float]] = {r: {} for r in self._rungs}
        self.stopped: dict[str, float] = {}
        self._compare_with = compare_with
        self._finished: set[str] = set()
        #: compare_with='finished': the trials that had finished when each trial started
        self._peers: dict[str, frozenset[str]] = {}

    def start(self, trial_id: str) -> None:
        """A trial starts: fix the peers it will be judged against ('finished' mode)."""
        self._last.pop(trial_id, None)
        self._peers[trial_id] = frozenset(self._finished)

    def finish(self, trial_id: str) -> None:
        """A trial ended (complete, stopped, errored or removed)."""
        self._last.pop(trial_id, None)
        self._finished.add(trial_id)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Metric and mode are fixed at construction: the search metric (floored
        # objective) is not what is compared here (raw score at equal sparsity).
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.start(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self.observe(trial.trial_id, result)

    def observe(self, trial_id: str, result: dict[str, Any]) -> str:
        """Record one result; CONTINUE or STOP. Public so it can be tested without Ray."""
        if self._metric not in result or self._progress_attr not in result:
            return TrialScheduler.CONTINUE
        if result.get("es_comparable", True) is False:
            return TrialScheduler.CONTINUE  # untrained lottery tickets: see the module docstring
        score = float(result[self._metric])
        prog = float(result[self._progress_attr])
        if not math.isfinite(score):
            return TrialScheduler.CONTINUE
        start = self._last.get(trial_id)
        if start is None:
            base = result.get(self._baseline_attr)
            start = (0.0, float(base) if base is not None and math.isfinite(base) else score)
        decision = TrialScheduler.CONTINUE
        passed = [
            r for r in self._rungs
            if start[0] + 1e-9 < r <= prog + 1e-9 and trial_id not in self.recorded[r]
        ]
        if passed:
            # Only the highest rung passed by this report: the estimate there is the
            # closest to a measurement. Rungs jumped over are not filled in by
            # interpolating across a large sparsity gap (the score curve is concave,
            # a long chord underestimates it and would penalise fast schedules).
            rung = passed[-1]
            value = self._estimate(start, (prog, score), rung)
            self.recorded[rung][trial_id] = value
            cutoff = self._cutoff(rung, trial_id)
            if cutoff is not None and self._worse(value, cutoff):
                logger.info(
                    "fair early stopping: trial %s at progress %.2f scores %.4f (est.), "
                    "below rung cutoff %.4f",
                    trial_id, rung, value, cutoff,
                )
                decision = TrialScheduler.STOP
                self.stopped[trial_id] = rung
        self._last[trial_id] = (max(prog, start[0]), score)
        if result.get(M.SCHEDULE_DONE):
            return TrialScheduler.CONTINUE
        return decision

    def _estimate(self, a: tuple[float, float], b: tuple[float, float], at: float) -> float:
        (p0, s0), (p1, s1) = a, b
        if not self._interpolate or p1 <= p0:
            return s1
        w = (at - p0) / (p1 - p0)
        return s0 + min(max(w, 0.0), 1.0) * (s1 - s0)

    def _cutoff(self, rung: float, trial_id: str) -> float | None:
        records = self.recorded[rung]
        if self._compare_with == "finished":
            peers = self._peers.get(trial_id, frozenset())
            values = [v for t, v in records.items() if t in peers]
        else:
            values = list(records.values())
        if len(values) < self._min_samples:
            return None
        q = (1.0 - 1.0 / self._rf) * 100.0
        return float(np.nanpercentile(values, q if self._mode == "max" else 100.0 - q))

    def _worse(self, value: float, cutoff: float) -> bool:
        return value < cutoff if self._mode == "max" else value > cutoff

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.finish(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.finish(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.finish(trial.trial_id)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{r:g}: {len(v)}" for r, v in self.recorded.items())
        return f"FairSuccessiveHalving(rungs {{{rungs}}}, stopped {len(self.stopped)})"


def make_scheduler(
    kind: str,
    mode: str = "max",
    rungs: Sequence[float] = (0.25, 0.5, 0.75),
    reduction_factor: float = 2.0,
    max_iterations: int = 10,
    deterministic: bool = False,
) -> TrialScheduler:
    """The trial scheduler for ``SearchConfig.early_stopping``.

    'asha' is plain ASHA on ``training_iteration`` and is offered only to compare
    against; it is biased toward slow schedules (see the module docstring).
    ``deterministic`` makes 'fair' judge trials only against earlier finished ones.
    """
    if kind == "fair":
        return FairSuccessiveHalving(M.SCORE, mode, rungs, reduction_factor,
                                     compare_with="finished" if deterministic else "all")
    if kind == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=M.SCORE,
            mode=mode,
            max_t=max(2, max_iterations),
            grace_period=1,
            reduction_factor=reduction_factor,
        )
    if kind == "none":
        return FIFOScheduler()
    raise ValueError(f"early_stopping must be 'fair', 'asha' or 'none', got {kind!r}")
