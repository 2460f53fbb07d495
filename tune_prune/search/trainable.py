"""One pruning schedule, one report per iteration: :func:`run_schedule` and its Tune adapter.

:func:`run_schedule` runs a trial config (``{"fixed": {...search-wide...}, **trial}``)
on its workload with no Ray: reporting is a plain ``report(metrics, checkpoint_dir)``
callable and resuming a plain directory. :func:`run_trial` is the Ray Tune function
trainable: it only turns ``tune.get_checkpoint()`` into that directory and the folder
into a ``tune.Checkpoint`` for ``tune.report``. Experiments, benchmarks and tests call
:func:`run_schedule` directly.

Every trial starts from the same cached dense baseline (trained once by the driver
before the search; a trial only loads it), builds the generator + pruner +
PruningScheduler its config names, and reports each pruning iteration with a
checkpoint holding the scheduler's saved state plus the trial's own counters, so a
restarted trial resumes at the next iteration and nothing reported is lost.

Trials are identifiable in the Ray dashboard and through ``ray.util.state.list_actors``:
the actor class is :class:`TunePruneTrial` and its repr (the dashboard's actor name and
the log prefix) is ``tune_prune:<trial name>``. Each result also carries the actor id
and pid of the worker that produced it.

Reliability (see tests/reliability):

* Determinism: before every pruning task the global torch / Python / NumPy RNGs are
  seeded from ``(seed, iteration)`` (:func:`seed_iteration`), in a fresh run and after a
  restore alike, so a trial killed and resumed from its checkpoint ends with the same
  masks and score as an uninterrupted one (the workload's own data order is seeded too).
* Divergence: a score that is not a finite real number (NaN/inf loss or score, or a
  workload returning a non-number) raises :class:`~tune_prune.errors.WorkloadError`
  before anything is reported, so Tune marks the trial failed rather than ranking it.
* Fault injection for tests: ``TUNE_PRUNE_TEST_FAULT="kill:K:MARKER"`` makes the trial
  SIGKILL its own worker while fine-tuning iteration K, once (guarded by the MARKER
  file); ``"raise:K:MARKER"`` makes the first trial reaching iteration K raise there on
  every attempt (MARKER records which trial); several faults are joined by ';'. Unset,
  nothing happens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.trainable.function_trainable import wrap_function

from tune_prune.search import metrics as M

#: ``report(metrics, checkpoint_dir)``: the folder is valid only during the call (copy it to keep it).
Report = Callable[[dict[str, Any], Path], None]

logger = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
FAULT_ENV = "TUNE_PRUNE_TEST_FAULT"
SCHEDULER_DIR = "scheduler"
RESULT_DIR = "result"


@dataclass
class TrialCounters:
    """What a trial accumulates across iterations; saved in every checkpoint."""

    iteration: int = 0
    progress: float = 0.0
    best_objective: float | None = None
    finetune_epochs_cum: float = 0.0
    finetune_seconds_cum: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


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
            self.counters = TrialCounters(**json.loads(path.read_text()))
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
        c.finetune_epochs_cum += float(self.trial["finetune_epochs"] if epochs is None else epochs)
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
            M.SCHEDULE_DONE: bool(schedule_done),
            # Ticket rows (reset_weight) score untrained rewound weights: not comparable
            # with fine-tuned scores, so the fair early stopping skips them.
            "es_comparable": not bool(self.trial.get("reset_weight", False)),
            "stage": str(self.fixed.get("stage", "search")),
            "generator": self.trial["generator"],
            "pruner": self.trial["pruner"],
            "mode": self.trial["mode"],
            "pid": os.getpid(),
            "ray_actor_id": _actor_id(),
            "ray_node_id": _node_id(),
        }
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
        from tune_prune.export import save_pruned

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
    from tune_prune.errors import WorkloadError
    from tune_prune.workloads.base import finite_real

    score = finite_real(value)
    if score is None:
        raise WorkloadError(
            f"score={value!r} (type {type(value).__name__}) at iteration {iteration}: not a "
            "finite real number; the trial diverged or evaluate() does not return a float"
        )
    return score


def seed_iteration(seed: int, iteration: int) -> None:
    """Seed torch, ``random`` and NumPy from ``(seed, iteration)`` before a pruning task.

    Called before the first task and again after every reported iteration (and after a
    restore), so a resumed trial draws exactly what an uninterrupted one would.
    """
    import torch

    derived = (int(seed) * 1_000_003 + int(iteration) * 7_919) % (2**31 - 1)
    torch.manual_seed(derived)
    random.seed(derived)
    try:
        import numpy as np

        np.random.seed(derived)
    except ImportError:  # pragma: no cover - numpy ships with torch here
        pass


def _fault_hook(iteration: int) -> None:
    """Test-only fault injection (see the module docstring); a no-op unless FAULT_ENV is set.

    Several faults may be given, separated by ';' (e.g. ``raise:2:M1;kill:3:M2``).
    """
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        kind, _, rest = spec.partition(":")
        at, _, marker = rest.partition(":")
        if not at.isdigit() or int(at) != iteration or not marker:
            continue
        mark = Path(marker)
        if kind == "kill":
            if mark.exists():
                continue
            mark.write_text(str(os.getpid()))
            logger.warning("fault injection: SIGKILL of pid %d in iteration %d", os.getpid(), iteration)
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            me = _trial_id()
            if not mark.exists():
                mark.write_text(me)
            if mark.read_text() == me:
                raise RuntimeError(f"fault injection: trial {me} raises in iteration {iteration}")


def _trial_id() -> str:
    try:
        return str(tune.get_context().get_trial_id() or "local")
    except Exception:  # noqa: BLE001 - outside Tune
        return "local"


def load_result(directory: Path, workload: Any) -> Any:
    """The pruned model a report stored under ``result/``, as a TaskResult-like namespace.

    A thin call of :func:`tune_prune.export.load_pruned` (which also reads the
    ``result/`` folders of older checkpoints): ``compact_model`` rebuilt from the
    workload's architecture, the speedup history and the state dict (weights_only
    loading) on the workload's device, ``compact_model_masks`` and ``task_id``.
    """
    import types

    from tune_prune.export import load_pruned
    from tune_prune.pruning.masks import masks_to

    pruned = load_pruned(directory, workload)
    return types.SimpleNamespace(compact_model=pruned.model.to(workload.device),
                                 compact_model_masks=masks_to(pruned.masks, workload.device),
                                 task_id=pruned.metrics.get("task_id", "restored"))


def _number(value: Any) -> float:
    """A float metric; NaN when the scheduler could not measure it (None)."""
    return math.nan if value is None else float(value)


def _real_or_nan(value: Any) -> float:
    """A reported-only metric: NaN (with a warning) rather than a failed trial when it is bad."""
    from tune_prune.workloads.base import finite_real

    score = finite_real(value)
    if score is None and value is not None:
        logger.warning("test score %r is not a finite real number; reporting NaN", value)
    return math.nan if score is None else score


def _ratio(value: Any, dense: Any) -> float:
    try:
        return float(value) / float(dense) if dense else math.nan
    except (TypeError, ValueError):
        return math.nan


def _node_id() -> str:
    """The Ray node running this trial (which machine, on a cluster)."""
    try:
        import ray

        if not ray.is_initialized():
            return ""
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - outside Ray (unit tests)
        return ""


def _actor_id() -> str:
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start Ray
            return ""
        return ray.get_runtime_context().get_actor_id() or ""
    except Exception:  # noqa: BLE001 - outside Ray (unit tests)
        return ""


# ----------------------------------------------------------------------------- the body


def run_schedule(
    config: dict[str, Any], report: Report | None = None, restore_from: str | Path | None = None
) -> list[dict[str, Any]]:
    """Run one schedule (a trial config) on its workload, in this process, without Ray.

    ``config = {"fixed": fixed_config(search_config), **trial}`` (the trial keys are
    :func:`tune_prune.search.space.define_space`'s normalised config). ``report(metrics,
    checkpoint_dir)`` is called after every iteration; ``restore_from`` is a checkpoint
    folder a report produced, to continue after it. Returns every reported metrics dict.
    """
    from tune_prune.search.finalists import unwrap

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
        _simulate(fixed, trial, restore, collect)
    else:
        _prune(fixed, trial, restore, collect)
    return rows


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune entry point: :func:`run_schedule` with Tune's checkpoint and report."""
    try:
        import torch

        torch.set_num_threads(max(1, int(config["fixed"].get("cpus_per_trial", 1))))
    except Exception:  # noqa: BLE001
        pass

    def report(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_schedule(config, report)
        return
    with checkpoint.as_directory() as restore_from:
        run_schedule(config, report, restore_from)


def _prune(fixed: dict[str, Any], trial: dict[str, Any], restore: Path | None, report: Report) -> None:
    import copy

    from tune_prune.pruning.measure import count_macs, count_params
    from tune_prune.pruning.scheduler import PruningScheduler
    from tune_prune.search import build
    from tune_prune.workloads import get_workload, load_or_train_baseline, read_baseline_metadata
    from tune_prune.workloads.base import apply_pretrained

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
        slack = build.channel_rounding_slack(model, config_list)
        fixed = {**fixed, "sparsity_tolerance": max(float(fixed["sparsity_tolerance"]), slack + 1e-6)}
    reporter = Reporter(fixed, trial, dense, report)
    log_dir = Path(tempfile.mkdtemp(prefix="tune_prune_tasks_"))
    generator = build.make_task_generator(trial, copy.deepcopy(model), config_list, log_dir, seed)
    pruner = build.make_pruner(trial["pruner"], trial["mode"], dummy)
    lr = trial.get("lr")
    base_finetuner = workload.finetuner(float(trial["finetune_epochs"]), None if lr is None else float(lr), seed,
                                        lr_schedule=trial.get("lr_schedule"))
    reset_weight = bool(trial.get("reset_weight", False))
    holder: dict[str, Any] = {}
    evaluator = _ScoreWithTest(workload.evaluator(score_split), fixed.get("test_split"), workload)

    def finetuner(model: Any) -> None:
        _fault_hook(reporter.counters.iteration + 1)
        base_finetuner(model)

    def on_iteration(task_result: Any, measurements: dict[str, Any]) -> None:
        sched = holder["scheduler"]
        holder["last"] = task_result
        # Ticket trials end with one more (retraining) row, reported after compress().
        done = (not reset_weight) and build.schedule_finished(generator, measurements)
        reporter.report(
            {**measurements, "test_score": evaluator.take_test()}, sched.save_state, schedule_done=done,
            planned=build.planned_iterations(generator, reset_weight),
            model=task_result.compact_model, masks=task_result.compact_model_masks,
        )
        seed_iteration(seed, reporter.counters.iteration)

    # With reset_weight the tickets are evaluated untrained (NNI's order); the last ticket
    # (the one at the target) is retrained below (_retrain_last_ticket).
    scheduler = PruningScheduler(
        pruner, generator, finetuner=finetuner, speedup=bool(fixed.get("speedup", False)),
        dummy_input=dummy, evaluator=evaluator, reset_weight=reset_weight,
        on_iteration=on_iteration, rewind_steps=build.rewind_steps(trial, workload),
    )
    holder["scheduler"] = scheduler
    restored_last: Any = None
    if restore is not None:
        reporter.restore(restore)
        if (restore / SCHEDULER_DIR).exists():
            scheduler.load_state(str(restore / SCHEDULER_DIR))
        if reset_weight and (restore / RESULT_DIR).is_dir():
            restored_last = load_result(restore / RESULT_DIR, workload)
    # After load_state (which restores the RNGs saved at the report): both paths seed alike.
    seed_iteration(seed, reporter.counters.iteration)
    try:
        if reporter.counters.extra.get("final_reported"):
            return
        scheduler.compress()
        if reset_weight:
            # Resumed after the last task: compress() ran nothing, so the last ticket
            # comes from the checkpoint's result/ folder (that task's pruned model).
            _retrain_last_ticket(reporter, scheduler, generator, holder.get("last") or restored_last,
                                 finetuner, evaluator, dummy)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


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


def _retrain_last_ticket(
    reporter: Reporter, scheduler: Any, generator: Any, last: Any, finetuner: Any, evaluator: Any, dummy: Any
) -> None:
    """Fine-tune the last ticket (the one at the target) once, masks held, and report it.

    The scheduler evaluates tickets untrained (NNI's lottery-ticket order); the search
    needs the ticket at the target sparsity trained like every other schedule and
    reported as a step of its own (the scheduler's ``retrain_ticket`` retrains the same,
    latest ticket but reports no step).
    """
    import copy

    from tune_prune.pruning.masks import unwrap_model, wrap_model
    from tune_prune.search import build

    if last is None:
        logger.warning("no ticket to retrain (no task ran and none was checkpointed); ending the trial")
        return
    model = copy.deepcopy(last.compact_model)
    masks = last.compact_model_masks
    start = time.perf_counter()
    if masks:
        wrap_model(model, masks)
    try:
        finetuner(model)
        finetune_s = time.perf_counter() - start
        score = evaluator(model)
    finally:
        if masks:
            unwrap_model(model)
    meas = build.measure_result(generator, model, masks, dummy)
    meas.update(task_id=f"{last.task_id}-retrained", score=score, finetune_seconds=finetune_s,
                test_score=evaluator.take_test())
    reporter.counters.extra["final_reported"] = True
    reporter.report(meas, scheduler.save_state, schedule_done=True,
                    planned=reporter.counters.iteration + 1, model=model, masks=masks)


def _simulate(fixed: dict[str, Any], trial: dict[str, Any], restore: Path | None, report: Report) -> None:
    """dry_run body: the trial's schedule shape with a synthetic accuracy curve, no training.

    Deterministic in the trial config; exercises reporting, checkpoints, early stopping
    and the searcher exactly as a real trial does, in milliseconds per iteration.
    """
    import hashlib

    from tune_prune.search.registry import generator_spec

    target = float(fixed["target_sparsity"])
    n = int(trial["total_iteration"])
    curve = generator_spec(trial["generator"]).curve
    h = int(hashlib.sha256(json.dumps(trial, sort_keys=True, default=str).encode()).hexdigest()[:8], 16)
    quality = (h % 1000) / 1000.0  # per-config luck
    dense = {"score": 0.97, "params": 1e5, "macs": 1e6}
    reporter = Reporter(fixed, trial, dense, report)
    if restore is not None:
        reporter.restore(restore)
    delay = float(fixed.get("dry_run_delay_s", 0.0))
    for i in range(reporter.counters.iteration + 1, n + 1):
        s = target if curve is None else curve(target, i, n, trial)  # None: every task at the target
        epochs_cum = reporter.counters.finetune_epochs_cum + float(trial["finetune_epochs"])
        recovery = 1 - math.exp(-epochs_cum / 3)
        score = 0.97 - 0.25 * s**3 * (1.2 - 0.4 * recovery) - 0.05 * quality
        meas = {
            "task_id": i, "score": score, "sparsity": s,
            "params": 1e5 * (1 - s), "macs": 1e6 * (1 - 0.7 * s),
            "finetune_seconds": 0.0,
        }
        if delay:
            time.sleep(delay)
        reporter.report(meas, None, schedule_done=i == n, planned=n)


# ----------------------------------------------------------------------------- trainable class

_Base = wrap_function(run_trial, name="tune_prune_trial")


class TunePruneTrial(_Base):  # type: ignore[misc, valid-type]
    """Function trainable whose actor class and repr name the trial (dashboard, logs, state API).

    Resources come from the trial config (``fixed.cpus_per_trial`` / ``gpus_per_trial``)
    rather than ``tune.with_resources``, which would rename the actor class.
    """

    def __repr__(self) -> str:
        try:
            return f"tune_prune:{self.trial_name}"
        except Exception:  # noqa: BLE001 - before setup
            return "tune_prune:trial"

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> Any:
        from ray.tune import PlacementGroupFactory

        fixed = config.get("fixed", {}) if isinstance(config, dict) else {}
        bundle = {"CPU": float(fixed.get("cpus_per_trial", 1.0))}
        gpus = float(fixed.get("gpus_per_trial", 0.0))
        if gpus > 0:
            bundle["GPU"] = gpus
        return PlacementGroupFactory([bundle])
