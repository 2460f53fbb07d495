"""What a trial reports after each pruning iteration, and the checkpoint that goes with it.

:class:`Reporter` turns one iteration's measurements into the reported metrics (score,
sparsity, objective at the target, cost ratios, cumulative fine-tune epochs, ...; the
keys are listed in tune_prune/search/README.md) and assembles the checkpoint folder:
the scheduler's saved state (``scheduler/``), this iteration's pruned model
(``result/``, :func:`tune_prune.export.save_pruned`) and the trial's own counters
(``search_state.json``), so a restarted trial resumes at the next iteration.

Divergence: a score that is not a finite real number (NaN/inf loss or score, or a
workload returning a non-number) raises :class:`~tune_prune.errors.WorkloadError`
(:func:`checked_score`) before anything is reported, so Tune marks the trial failed
rather than ranking it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tune_prune.errors import WorkloadError
from tune_prune.export import save_pruned
from tune_prune.search import metrics as M
from tune_prune.workloads.base import finite_real

#: ``report(metrics, checkpoint_dir)``: the folder is valid only during the call (copy it to keep it).
Report = Callable[[dict[str, Any], Path], None]

logger = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
SCHEDULER_DIR = "scheduler"
RESULT_DIR = "result"


@dataclass
class TrialCounters:
    """What a trial accumulates across iterations; saved in every checkpoint."""

    iteration: int = 0
    progress: float = 0.0
    best_objective: float | None = None
    #: Fine-tune epochs paid so far, statistics passes included (``stats_epochs_cum``).
    finetune_epochs_cum: float = 0.0
    finetune_seconds_cum: float = 0.0
    #: Epochs of training data the pruner's statistics passes ran (taylorfo, apoz, ...).
    stats_epochs_cum: float = 0.0


class Reporter:
    """Turns one iteration's measurements into Tune metrics + a checkpoint and reports them."""

    def __init__(self, fixed: dict[str, Any], trial: dict[str, Any], dense: dict[str, float],
                 report: Report) -> None:
        self.fixed = fixed
        self.trial = trial
        self.dense = dense
        self.counters = TrialCounters()
        self.higher_is_better = bool(fixed.get("higher_is_better", True))
        self.report_fn = report

    def restore(self, checkpoint_dir: str | Path) -> None:
        path = Path(checkpoint_dir) / STATE_FILE
        if path.exists():
            saved = json.loads(path.read_text())
            known = {f.name for f in fields(TrialCounters)}  # older checkpoints held an 'extra' dict
            self.counters = TrialCounters(**{k: v for k, v in saved.items() if k in known})
            logger.info("resuming after iteration %d", self.counters.iteration)

    def metrics(self, meas: dict[str, Any], schedule_done: bool, planned: int | None) -> dict[str, Any]:
        """The reported dict (see the README of tune_prune.search for every key)."""
        c = self.counters
        target = float(self.fixed["target_sparsity"])
        tol = float(self.fixed["sparsity_tolerance"])
        score = checked_score(meas.get("score"), c.iteration + 1)
        sparsity = float(meas.get("sparsity", 0.0))
        c.iteration += 1
        c.progress = M.progress(sparsity, target, c.progress, tol)
        epochs = meas.get("finetune_epochs")
        # A statistics pruner's pass (measurement 'stats_epochs': its batches over the
        # workload's batches per epoch) trains the model like a fine-tune does (forward,
        # backward, optimizer step), so it is paid in the same currency: it is added to
        # finetune_epochs_cum, hence to every total the search reports as paid
        # (finetune_epochs_total, screening's and the CLI's sums), and reported on its own
        # as stats_epochs_cum so the two can be told apart.
        stats = float(meas.get("stats_epochs") or 0.0)
        c.stats_epochs_cum += stats
        c.finetune_epochs_cum += float(self.trial["finetune_epochs"] if epochs is None else epochs) + stats
        c.finetune_seconds_cum += float(meas.get("finetune_seconds", 0.0) or 0.0)
        obj = M.objective(score, sparsity, target, tol, c.progress, self.higher_is_better)
        if c.best_objective is None or M.better(obj, c.best_objective, self.higher_is_better):
            c.best_objective = obj
        params = meas.get("params")
        macs = meas.get("macs")
        out: dict[str, Any] = {
            "iteration": c.iteration,
            "planned_iterations": planned if planned is not None else -1,
            "task_id": str(meas.get("task_id", c.iteration)),
            M.SCORE: score,
            "test_score": _real_or_nan(meas.get("test_score")),
            "baseline_score": self.dense["score"],
            "score_drop": self.dense["score"] - score,
            "sparsity": sparsity,
            "weight_sparsity": _number(meas.get("weight_sparsity")),
            "target_sparsity": target,
            "sparsity_shortfall": max(0.0, target - tol - sparsity),
            M.PROGRESS: c.progress,
            "reached_target": M.reached(sparsity, target, tol),
            "objective": obj,
            M.SEARCH_METRIC: c.best_objective,
            "params": _number(params),
            "macs": _number(macs),
            "params_ratio": _ratio(params, self.dense.get("params")),
            "macs_ratio": _ratio(macs, self.dense.get("macs")),
            "finetune_epochs_cum": c.finetune_epochs_cum,
            "finetune_seconds_cum": c.finetune_seconds_cum,
            "stats_epochs_cum": c.stats_epochs_cum,
            M.SCHEDULE_DONE: bool(schedule_done),
            # Ticket rows (reset_weight) score untrained rewound weights: not comparable
            # with fine-tuned scores, so the fair early stopping skips them.
            "es_comparable": not bool(self.trial.get("reset_weight", False)),
            "stage": str(self.fixed.get("stage", "search")),
            "generator": self.trial["generator"],
            "pruner": self.trial["pruner"],
            "mode": self.trial["mode"],
        }
        latency = self.fixed.get("latency")
        if latency:  # multi_objective 'latency': the cost, and how it was measured (it is noisy)
            out[M.LATENCY] = _number(meas.get(M.LATENCY))
            out.update({f"latency_{k}": int(v) for k, v in latency.items()})
        return out

    def report(
        self,
        meas: dict[str, Any],
        save: Callable[[Path], None] | None,
        schedule_done: bool = False,
        planned: int | None = None,
        model: Any = None,
        masks: Any = None,
    ) -> dict[str, Any]:
        """Report one iteration with a checkpoint.

        ``save`` writes the scheduler state (to resume); ``model``/``masks`` are this
        iteration's pruned model, stored under ``result/`` (:func:`tune_prune.export.save_pruned`:
        the trial config, these metrics and the workload go in its ``spec.json``) so the
        best iteration of the best trial can be exported whatever the generator kept as
        its best result.
        """
        result = self.metrics(meas, schedule_done, planned)
        tmp = Path(tempfile.mkdtemp(prefix="tune_prune_ckpt_"))
        try:
            if save is not None:
                save(tmp / SCHEDULER_DIR)
            if model is not None:
                save_pruned(tmp / RESULT_DIR, model, masks, workload=self.fixed.get("workload"),
                            workload_options=self.fixed.get("workload_options"), config=self.trial,
                            metrics=result)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(self.counters)))
            self.report_fn(result, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result


def checked_score(value: Any, iteration: int) -> float:
    """``value`` as a float; WorkloadError when it is not a finite real number (divergence)."""
    score = finite_real(value)
    if score is None:
        raise WorkloadError(
            f"score={value!r} (type {type(value).__name__}) at iteration {iteration}: not a "
            "finite real number; the trial diverged or evaluate() does not return a float"
        )
    return score


def _number(value: Any) -> float:
    """A float metric; NaN when the scheduler could not measure it (None)."""
    return math.nan if value is None else float(value)


def _real_or_nan(value: Any) -> float:
    """A reported-only metric: NaN (with a warning) rather than a failed trial when it is bad."""
    score = finite_real(value)
    if score is None and value is not None:
        logger.warning("test score %r is not a finite real number; reporting NaN", value)
    return math.nan if score is None else score


def _ratio(value: Any, dense: Any) -> float:
    try:
        return float(value) / float(dense) if dense else math.nan
    except (TypeError, ValueError):
        return math.nan
