"""One pruning schedule, one report per iteration, in this process: :func:`run_schedule`.

:func:`run_schedule` runs a trial config (``{"fixed": {...search-wide...}, **trial}``)
on its workload with no Ray: reporting is a plain ``report(metrics, checkpoint_dir)``
callable and resuming a plain directory. The Tune trainable
(:mod:`tune_prune.search.trainable`) is a thin adapter over it; experiments, benchmarks
and tests call it directly.

Every trial starts from the same dense baseline (trained once by the driver before the
search, or the user's ``--pretrained`` weights; a trial only loads it), builds the
generator + pruner + PruningScheduler its config names, and reports each pruning
iteration through :class:`~tune_prune.search.reporting.Reporter` with a checkpoint, so a
restarted trial resumes at the next iteration and nothing reported is lost.

Determinism: before every pruning task the global torch / Python / NumPy RNGs are seeded
from ``(seed, iteration)`` (:func:`seed_iteration`), in a fresh run and after a restore
alike, so a trial killed and resumed from its checkpoint ends with the same masks and
score as an uninterrupted one (the workload's own data order is seeded too).
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune_prune.errors import SpeedupError, WorkloadError
from tune_prune.pruning.masks import has_zeros
from tune_prune.pruning.measure import count_macs, count_params, measure_latency, repeat_batch
from tune_prune.pruning.scheduler import PruningScheduler
from tune_prune.pruning.speedup import speedup_model
from tune_prune.search import build
from tune_prune.search.dry_run import simulate
from tune_prune.search.faults import fault_hook
from tune_prune.search.finalists import unwrap
from tune_prune.search.registry import DEFAULT_STATS_BATCHES, needs_trainer
from tune_prune.search.reporting import SCHEDULER_DIR, Report, Reporter
from tune_prune.workloads import get_workload, load_or_train_baseline, read_baseline_metadata
from tune_prune.workloads.base import apply_pretrained

logger = logging.getLogger(__name__)


def run_schedule(
    config: dict[str, Any], report: Report | None = None, restore_from: str | Path | None = None
) -> list[dict[str, Any]]:
    """Run one schedule (a trial config) on its workload, in this process, without Ray.

    ``config = {"fixed": fixed_config(search_config), **trial}`` (the trial keys are
    :func:`tune_prune.search.space.define_space`'s normalised config). ``report(metrics,
    checkpoint_dir)`` is called after every iteration; ``restore_from`` is a checkpoint
    folder a report produced, to continue after it. Returns every reported metrics dict.
    """
    config = unwrap(config)
    fixed = config["fixed"]
    trial = {k: v for k, v in config.items() if k != "fixed"}
    rows: list[dict[str, Any]] = []

    def collect(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        rows.append(dict(metrics))
        if report is not None:
            report(metrics, checkpoint_dir)

    restore = Path(restore_from) if restore_from is not None else None
    if fixed.get("dry_run"):
        simulate(fixed, trial, restore, collect)
    else:
        _run_pruning(fixed, trial, restore, collect)
    return rows


def seed_iteration(seed: int, iteration: int) -> None:
    """Seed torch, ``random`` and NumPy from ``(seed, iteration)`` before a pruning task.

    Called before the first task and again after every reported iteration (and after a
    restore), so a resumed trial draws exactly what an uninterrupted one would.
    """
    derived = (int(seed) * 1_000_003 + int(iteration) * 7_919) % (2**31 - 1)
    torch.manual_seed(derived)
    random.seed(derived)
    np.random.seed(derived)


def _run_pruning(fixed: dict[str, Any], trial: dict[str, Any], restore: Path | None, report: Report) -> None:
    seed = int(fixed["seed"])
    # With the user's weights (search --pretrained) the baseline is those, never trained.
    workload = apply_pretrained(get_workload(fixed["workload"], **fixed.get("workload_options", {})),
                                fixed.get("pretrained"))
    cache = fixed["baseline_cache_dir"]
    model = load_or_train_baseline(workload, seed, cache)
    meta = read_baseline_metadata(workload, seed, cache) or {}
    dummy = workload.dummy_input()
    # Finalists of a screened search are scored on the select split (search.finalists).
    score_split = fixed.get("score_split") or "val"
    dense_score = meta.get("val_score") if score_split == "val" else None
    if dense_score is None:
        dense_score = workload.evaluate(model, score_split)
    dense = {
        "score": float(dense_score),
        "params": float(count_params(model)),
        "macs": float(count_macs(model, dummy)),
    }
    config_list = build.make_config_list(
        fixed["sparsity_kind"], trial["mode"], float(fixed["target_sparsity"]), trial["generator"]
    )
    if fixed["sparsity_kind"] == "channels":  # per-layer rounding may stop short of the target
        slack = build.channel_rounding_slack(model, config_list, int(trial.get("round_to", 1)))
        fixed = {**fixed, "sparsity_tolerance": max(float(fixed["sparsity_tolerance"]), slack + 1e-6)}
    reporter = Reporter(fixed, trial, dense, report)
    log_dir = Path(tempfile.mkdtemp(prefix="tune_prune_tasks_"))
    generator = build.make_task_generator(trial, copy.deepcopy(model), config_list, log_dir, seed)
    stats_pass = _StatsPass(workload, trial["pruner"], fixed, reporter)
    pruner = build.make_pruner(trial["pruner"], trial["mode"], dummy, build.pruner_options(trial),
                               stats_pass.kwargs)
    lr = trial.get("lr")
    base_finetuner = workload.finetuner(float(trial["finetune_epochs"]), None if lr is None else float(lr), seed,
                                        lr_schedule=trial.get("lr_schedule"), distill=build.distillation(trial, model))
    reset_weight = bool(trial.get("reset_weight", False))
    evaluator = _ScoreWithTest(workload.evaluator(score_split), fixed.get("test_split"), workload)

    def finetuner(model: Any) -> None:
        fault_hook(reporter.counters.iteration + 1)
        base_finetuner(model)

    latency = fixed.get("latency")  # multi_objective 'latency': {batch_size, threads, repeats}

    def on_iteration(task_result: Any, measurements: dict[str, Any]) -> None:
        # A ticket trial (reset_weight) ends with one more row: the scheduler's retrained
        # last ticket, the one at the target (tickets are scored untrained, NNI's order).
        retrained = bool(measurements.get("retrained_ticket"))
        done = retrained or ((not reset_weight) and build.schedule_finished(generator, measurements))
        extra: dict[str, Any] = {"test_score": evaluator.take_test(), "stats_epochs": stats_pass.take(pruner)}
        if latency:
            extra["latency_ms"] = export_latency_ms(
                task_result.compact_model, task_result.compact_model_masks, dummy, fixed["sparsity_kind"],
                **latency,
            )
        reporter.report(
            {**measurements, **extra}, scheduler.save_state, schedule_done=done,
            planned=build.planned_iterations(generator, reset_weight),
            model=task_result.compact_model, masks=task_result.compact_model_masks,
        )
        seed_iteration(seed, reporter.counters.iteration)

    scheduler = PruningScheduler(
        pruner, generator, finetuner=finetuner, speedup=bool(fixed.get("speedup", False)),
        dummy_input=dummy, evaluator=evaluator, reset_weight=reset_weight, retrain_ticket=reset_weight,
        on_iteration=on_iteration, rewind_steps=build.rewind_steps(trial, workload),
    )
    if restore is not None:
        reporter.restore(restore)
        if (restore / SCHEDULER_DIR).exists():
            scheduler.load_state(str(restore / SCHEDULER_DIR))
    # After load_state (which restores the RNGs saved at the report): both paths seed alike.
    seed_iteration(seed, reporter.counters.iteration)
    try:
        # Resumed after the last task, compress() runs no task; it still retrains the
        # last ticket unless the saved state says that was reported already.
        scheduler.compress()
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def export_latency_ms(
    model: torch.nn.Module, masks: Any, dummy_input: Any, sparsity_kind: str, *,
    batch_size: int, threads: int, repeats: int,
) -> float:
    """Latency (median ms of one forward pass) of ``model`` as it would be exported.

    Channel pruning: a sped-up copy with the dead channels physically removed
    (:func:`~tune_prune.pruning.speedup.speedup_model` copies; ``model`` is not changed),
    or ``model`` itself when its masks hold no zero (already sped up); if the speedup
    fails the masked model is timed, with a warning. Weight pruning: the masked model as
    is (dense kernels: unstructured zeros cost the same time). The input is the
    workload's ``dummy_input`` repeated along dim 0 to ``batch_size``; torch runs
    ``threads`` threads during the timing only (:func:`measure_latency` restores the
    count), ``repeats`` timed passes after 5 warm-up passes. A measurement that fails is
    a WorkloadError naming the settings (the trial fails rather than report no cost).
    """
    timed = model
    if sparsity_kind == "channels" and masks and has_zeros(masks):
        try:
            timed = speedup_model(model, masks, dummy_input)[0]
        except SpeedupError as exc:
            logger.warning("latency: speedup failed (%s); timing the masked model", exc)
    try:
        seconds = measure_latency(timed, repeat_batch(dummy_input, batch_size), repeats=repeats,
                                  threads=threads)
    except Exception as exc:
        raise WorkloadError(
            f"measuring latency (latency_batch_size={batch_size}, latency_threads={threads}, "
            f"latency_repeats={repeats}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    return 1000.0 * float(seconds)


class _StatsPass:
    """The statistics pass of a pruner with ``needs_trainer`` (taylorfo, apoz,
    mean_activation): what it is built with, and what it cost.

    ``kwargs``: the workload's trainer, optimizer factory and criterion, with
    ``fixed['stats_batches']`` training batches (None for other pruners). The trainer
    is wrapped so the data order of the pass is a function of the iteration
    (``Workload.seed_trainer``: a built-in workload otherwise counts its trainer calls in
    the process, so a resumed trial would see other batches than an uninterrupted one).

    :meth:`take` returns the epochs of training data the pruner ran since the last call
    (its ``batches_seen`` over the workload's ``steps_per_epoch()``) and zeroes the
    count, so a row without a pruning step (a retrained ticket) pays none.
    """

    def __init__(self, workload: Any, pruner: str, fixed: dict[str, Any], reporter: Reporter) -> None:
        self.kwargs: dict[str, Any] | None = None
        self.per_epoch = 1
        if not needs_trainer(pruner):
            return
        self.per_epoch = build.stats_batches_per_epoch(workload)
        batches = int(fixed.get("stats_batches", DEFAULT_STATS_BATCHES))
        self.kwargs = build.statistics_kwargs(workload, batches)
        if callable(getattr(workload, "seed_trainer", None)):
            own = self.kwargs["trainer"]

            def trainer(model: Any, optimizer: Any, criterion: Any) -> Any:
                workload.seed_trainer(1000 * reporter.counters.iteration)
                return own(model, optimizer, criterion)

            self.kwargs["trainer"] = trainer

    def take(self, pruner: Any) -> float:
        if self.kwargs is None:
            return 0.0
        batches = int(getattr(pruner, "batches_seen", 0) or 0)
        pruner.batches_seen = 0
        return batches / self.per_epoch


class _ScoreWithTest:
    """The scheduler's evaluator (val) that also scores the same model on the test split.

    The scheduler sees only the val score, so nothing is chosen on test; the test score
    waits here until the iteration is reported (``take_test``).
    """

    def __init__(self, val: Callable[[Any], float], test_split: str | None, workload: Any) -> None:
        self.val, self.test_split, self.workload = val, test_split, workload
        self._test: float | None = None

    def __call__(self, model: Any) -> float:
        score = self.val(model)  # returned unchecked: the reporter validates it (checked_score)
        if self.test_split is not None:
            self._test = self.workload.evaluate(model, self.test_split)
        return score

    def take_test(self) -> Any:
        value, self._test = self._test, None
        return value
