"""PruningScheduler: run a TaskGenerator's tasks with a one-shot pruner (NNI 2.10 pruning v2).

One task: prune -> [speedup] -> fine-tune -> evaluate -> TaskResult, repeated until the
generator has no task left::

    pruner = L1NormPruner(None, None, mode="dependency_aware", dummy_input=x)
    generator = AGPTaskGenerator(10, model, config_list, log_dir=".", keep_intermediate_result=True)
    scheduler = PruningScheduler(pruner, generator, finetuner=finetuner, speedup=True,
                                 dummy_input=x, evaluator=evaluator, reset_weight=False)
    scheduler.compress()
    _, model, masks, _, _ = scheduler.get_best_result()

``finetuner(model)`` and ``evaluator(model) -> float`` are plain callables. While the
model is not sped up, its masks are held (hooks) during fine-tuning and evaluation, so
pruned weights stay exactly zero. After a speedup the model's parameters are new
tensors: a finetuner must build its optimizer INSIDE the call (an optimizer made once
outside would hold the old, pre-speedup tensors).

``reset_weight=True`` (lottery ticket) keeps NNI's step order: fine-tune -> prune ->
rewind the surviving weights -> [speedup] -> evaluate. The rewind point is the
task's starting weights (NNI; by induction the original weights), or, with
``rewind_steps=k``, the weights after k optimizer steps of the first fine-tuning
(Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis").
As in NNI the tickets are then evaluated untrained; ``retrain_ticket=True`` adds one
final fine-tuning of the best ticket (masks held) and re-evaluates it, so the best
result is a trained model. The lottery-ticket generator's best ticket is its latest
one, the ticket at the target (NNI's ``best_result_mode='latest'``).

``on_iteration(result, measurements)`` is called after every task with
``{task_id, iteration, total_tasks, score, sparsity, params, macs, finetune_seconds,
seconds}``, and once more after a retrained ticket (``retrained_ticket: True``);
``sparsity`` is the fraction of the original model's selected weights removed or
masked, ``macs`` needs ``dummy_input`` (None otherwise).

``save_state(dir)`` / ``load_state(dir)`` checkpoint a run between tasks (state dicts,
masks and JSON only; compact models are rebuilt from the original architecture and
their speedup history), so a killed run continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tune_prune.atomic import atomic_dir, recover_dir, write_file
from tune_prune.errors import ConfigError
from tune_prune.pruning.config import resolve_config_list
from tune_prune.pruning.masks import apply_masks, has_zeros, merge_masks, unwrap_model, wrap_model
from tune_prune.pruning.measure import count_macs, count_params
from tune_prune.pruning.speedup import speedup_model
from tune_prune.pruning.tools._io import (
    cpu_state_dict,
    extend_history,
    load_tensors,
    model_history,
    read_json,
    rebuild_model,
    set_model_history,
    to_jsonable,
)
from tune_prune.pruning.tools.base import Masks, Task, TaskGenerator, TaskId, TaskResult
from tune_prune.pruning.tools.sparsity import removed_fraction, removed_weight_fraction

_logger = logging.getLogger(__name__)

__all__ = ["PruningScheduler", "Task", "TaskResult"]

#: A plain ``f(model)`` that fine-tunes in place (NNI's ``finetuner``).
FinetuneFn = Callable[[nn.Module], Any]
#: A plain ``f(model) -> score`` (NNI's ``evaluator``).
EvaluateFn = Callable[[nn.Module], Any]
OnIteration = Callable[[TaskResult, dict[str, Any]], Any]

_STATE_FORMAT = "tune_prune.scheduler/1"


def _state_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("scheduler.json", "generator.json", "tensors.pth"))


class PruningScheduler:
    """Iterative pruning: the generator says what to prune, the pruner prunes it.

    Positional order is NNI 2.10's legacy signature; ``speed_up`` is accepted as an
    alias of ``speedup`` (NNI <= 2.6 spelling). See the module docstring.
    """

    def __init__(
        self,
        pruner: Any,
        task_generator: TaskGenerator,
        finetuner: FinetuneFn | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        evaluator: EvaluateFn | None = None,
        reset_weight: bool = False,
        *,
        speed_up: bool | None = None,
        on_iteration: OnIteration | None = None,
        rewind_steps: int = 0,
        retrain_ticket: bool = False,
    ) -> None:
        if speed_up is not None:
            if speedup and not speed_up:
                raise ConfigError(f"speedup={speedup!r} and speed_up={speed_up!r} disagree: give one")
            speedup = bool(speed_up)
        for name, fn in (("finetuner", finetuner), ("evaluator", evaluator), ("on_iteration", on_iteration)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be a callable or None, got {fn!r}")
        if not isinstance(task_generator, TaskGenerator):
            raise ConfigError(f"task_generator must be a TaskGenerator, got {type(task_generator).__name__}")
        if speedup and dummy_input is None:
            raise ConfigError("speedup=True needs dummy_input (an example input to trace the model), got None")
        if isinstance(rewind_steps, bool) or not isinstance(rewind_steps, int) or rewind_steps < 0:
            raise ConfigError(f"rewind_steps must be an integer >= 0, got {rewind_steps!r}")
        if rewind_steps and not reset_weight:
            raise ConfigError(f"rewind_steps={rewind_steps} only applies with reset_weight=True")
        self.pruner = pruner
        self.task_generator = task_generator
        self.finetuner = finetuner
        self.speedup = bool(speedup)
        self.dummy_input = dummy_input
        self.evaluator = evaluator
        self.reset_weight = bool(reset_weight)
        self.on_iteration = on_iteration
        self.rewind_steps = rewind_steps
        self.retrain_ticket = bool(retrain_ticket)

        self._iteration = 0
        self._rewind_state: dict[str, torch.Tensor] | None = None
        self._rewind_history: list[Any] = []
        self._ticket_retrained = False
        self._finetune_seconds = 0.0
        self._selected: list[str] | None = None

    @property
    def speed_up(self) -> bool:
        """NNI <= 2.6 name of :attr:`speedup`."""
        return self.speedup

    # -------------------------------------------------------------- NNI API
    def reset(self, model: nn.Module, config_list: list[dict[str, Any]], masks: Masks | None = None) -> None:
        """Restart the schedule on another model (resets the task generator)."""
        self.task_generator.reset(model, config_list, masks or {})
        self._iteration = 0
        self._selected = None

    def generate_task(self) -> Task | None:
        """The generator's next task (None: done)."""
        return self.task_generator.next()

    def record_task_result(self, task_result: TaskResult) -> None:
        """Hand a result back: the generator updates the best result and plans the next task."""
        self.task_generator.receive_task_result(task_result)

    def get_best_result(self) -> tuple[TaskId, nn.Module, Masks, float | None, list[dict[str, Any]]] | None:
        """``(task_id, model, masks, score, config_list)``: unwrapped model, cumulative masks."""
        return self.task_generator.get_best_result()

    def compress(self) -> None:
        """Run tasks until the generator has none left (continues a restored run)."""
        task = self.generate_task()
        while task is not None:
            self._run_task(task)
            task = self.generate_task()
        if self.reset_weight and self.retrain_ticket and not self._ticket_retrained:
            self._retrain_best_ticket()

    def pruning_one_step(self, task: Task) -> TaskResult:
        """Run one task (NNI's step order; ``reset_weight`` picks the lottery-ticket order)."""
        if self.reset_weight:
            return self.pruning_one_step_reset_weight(task)
        return self.pruning_one_step_normal(task)

    # ------------------------------------------------------------ the steps
    def _prune(self, task: Task, model: nn.Module, masks: Masks,
               config_list: list[dict[str, Any]]) -> tuple[nn.Module, Masks]:
        self.pruner.reset(model, config_list)
        if masks:
            self.pruner.load_masks(masks)
        compact_model, generated = self.pruner.compress()
        self.pruner._unwrap_model()
        unwrap_model(compact_model)
        # Cumulative whatever the pruner does: a weight pruned before stays pruned.
        return compact_model, merge_masks(masks, generated)

    def pruning_one_step_normal(self, task: Task) -> TaskResult:
        """prune -> [speedup] -> fine-tune (masks held) -> evaluate."""
        model, masks, config_list = task.load_data()
        compact_model, generated = self._prune(task, model, masks, config_list)
        compact_masks = copy.deepcopy(generated)
        if self.speedup and task.speedup:
            compact_model, compact_masks = self._speedup(compact_model, generated)
        if task.finetune:
            self._finetune(compact_model, compact_masks)
        score = self._evaluate(compact_model, compact_masks) if task.evaluate else None
        self.pruner.reset(None, None)
        return TaskResult(task.task_id, compact_model, compact_masks, generated, score)

    def pruning_one_step_reset_weight(self, task: Task) -> TaskResult:
        """fine-tune (masks held) -> prune -> rewind weights -> [speedup] -> evaluate."""
        model, masks, config_list = task.load_data()
        start_state = cpu_state_dict(model)
        if task.finetune:
            self._finetune(model, masks, capture_rewind=self.rewind_steps > 0)
        compact_model, generated = self._prune(task, model, masks, config_list)
        checkpoint = self._rewind_checkpoint(compact_model) if self.rewind_steps else None
        compact_model.load_state_dict(checkpoint if checkpoint is not None else start_state)
        apply_masks(compact_model, generated)
        compact_masks = copy.deepcopy(generated)
        if self.speedup and task.speedup:
            compact_model, compact_masks = self._speedup(compact_model, generated)
        score = self._evaluate(compact_model, compact_masks) if task.evaluate else None
        self.pruner.reset(None, None)
        return TaskResult(task.task_id, compact_model, compact_masks, generated, score)

    def _speedup(self, model: nn.Module, masks: Masks) -> tuple[nn.Module, Masks]:
        if not has_zeros(masks):
            return model, {}
        compact, remaining, history = speedup_model(model, masks, self.dummy_input)
        previous = model_history(model)
        modules = history.get("modules") if isinstance(history, Mapping) else history
        set_model_history(compact, extend_history(previous, history) if modules else previous)
        return compact, remaining

    def _finetune(self, model: nn.Module, masks: Masks, capture_rewind: bool = False) -> None:
        if self.finetuner is None:
            return
        handle = None
        if capture_rewind and self._rewind_state is None:
            steps = [0]

            def capture(*_args: Any, **_kwargs: Any) -> None:
                steps[0] += 1
                if steps[0] == self.rewind_steps and self._rewind_state is None:
                    self._capture_rewind(model)

            handle = register_optimizer_step_post_hook(capture)
        start = time.perf_counter()
        try:
            if masks:
                wrap_model(model, masks)
            self.finetuner(model)
        finally:
            if masks:
                unwrap_model(model)
            if handle is not None:
                handle.remove()
            self._finetune_seconds += time.perf_counter() - start
        if capture_rewind and self._rewind_state is None:
            _logger.warning("fine-tuning made fewer than rewind_steps=%d optimizer steps: "
                            "rewinding to the weights at its end", self.rewind_steps)
            self._capture_rewind(model)

    def _capture_rewind(self, model: nn.Module) -> None:
        self._rewind_state = cpu_state_dict(model)
        self._rewind_history = model_history(model)

    def _rewind_checkpoint(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The rewind weights, cut down to ``model``'s (possibly compact) shape."""
        if self._rewind_state is None:
            return None
        history = model_history(model)
        base = rebuild_model(self.task_generator.origin_model, self._rewind_history, self._rewind_state)
        if history[: len(self._rewind_history)] != self._rewind_history:
            raise ConfigError("the rewind point was captured on a model this one does not descend from")
        rebuilt = rebuild_model(base, history[len(self._rewind_history):], None)
        device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
        return {k: v.to(device) for k, v in rebuilt.state_dict().items()}

    def _evaluate(self, model: nn.Module, masks: Masks) -> float | None:
        if self.evaluator is None:
            return None
        try:
            if masks:
                wrap_model(model, masks)
            score = self.evaluator(model)
        finally:
            if masks:
                unwrap_model(model)
        if isinstance(score, tuple):  # NNI's new-style evaluators return (score, extras)
            score = score[0]
        if score is None:
            return None
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise ConfigError(f"evaluator must return a number, got {score!r}") from None
        if math.isnan(value):
            raise ConfigError("evaluator returned NaN")
        return value

    def _retrain_best_ticket(self) -> None:
        """Fine-tune the best (untrained) ticket once with its masks held; re-evaluate it.

        ``on_iteration`` hears of it like a task, with ``retrained_ticket=True`` in the
        measurements (task id ``<id>-retrained``). The flag is set before that call, so a
        state saved from it resumes without retraining twice.
        """
        best = self.get_best_result()
        if best is None or self.finetuner is None:
            _logger.warning("retrain_ticket: nothing to retrain (no result or no finetuner)")
            return
        task_id, model, masks, _, _ = best
        start = time.perf_counter()
        self._finetune_seconds = 0.0
        self._finetune(model, masks)
        score = self._evaluate(model, masks)
        result = TaskResult(task_id, model, masks, masks, score)
        self.task_generator.replace_best_result(result)
        self._ticket_retrained = True
        _logger.info("retrained ticket of task %s: score %s", task_id, _fmt(score))
        if self.on_iteration is not None:
            measurements = self._measure(result)
            measurements.update(task_id=f"{task_id}-retrained", retrained_ticket=True,
                                seconds=time.perf_counter() - start)
            self.on_iteration(result, measurements)

    # ------------------------------------------------------------ reporting
    def _run_task(self, task: Task) -> None:
        start = time.perf_counter()
        self._finetune_seconds = 0.0
        result = self.pruning_one_step(task)
        measurements = self._measure(result)
        measurements["seconds"] = time.perf_counter() - start
        self.record_task_result(result)
        self._iteration += 1
        total = measurements["total_tasks"]
        _logger.info("task %d/%s: sparsity %.2f, score %s", self._iteration,
                     total if total is not None else "?", measurements["sparsity"], _fmt(result.score))
        if self.on_iteration is not None:
            self.on_iteration(result, measurements)

    def _selected_names(self) -> list[str]:
        if self._selected is None:
            generator = self.task_generator
            entries = resolve_config_list(generator.origin_model, generator.origin_config_list)
            self._selected = sorted({n for e in entries for n in e.module_names})
        return self._selected

    def _measure(self, result: TaskResult) -> dict[str, Any]:
        model, masks = result.compact_model, result.compact_model_masks
        origin, names = self.task_generator.origin_model, self._selected_names()
        sparsity = removed_fraction(origin, model, masks, names)
        macs = None
        if self.dummy_input is not None:
            try:
                macs = count_macs(model, self.dummy_input, masks)
            except Exception as exc:  # a metric must not kill the run
                _logger.warning("count_macs failed for task %s: %r", result.task_id, exc)
        return {
            "task_id": result.task_id,
            "iteration": self._iteration,
            "total_tasks": getattr(self.task_generator, "total_tasks", None),
            "score": result.score,
            "sparsity": sparsity,
            "weight_sparsity": removed_weight_fraction(origin, model, masks, names),
            "params": count_params(model, masks),
            "macs": macs,
            "finetune_seconds": self._finetune_seconds,
            "seconds": None,
        }

    # --------------------------------------------------------- save / restore
    def save_state(self, directory: str | os.PathLike[str]) -> None:
        """Checkpoint the run between tasks: generator position and internal state, best
        result, pending models and masks, rewind point and RNG states (no pickles)."""
        directory = Path(directory)
        generator_meta, tensors = self.task_generator.state_dict()
        tensors = dict(tensors)
        tensors["scheduler/torch_rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["scheduler/cuda_rng"] = list(torch.cuda.get_rng_state_all())
        if self._rewind_state is not None:
            tensors["scheduler/rewind_state"] = self._rewind_state
        version, internal, gauss = random.getstate()
        meta = {
            "format": _STATE_FORMAT,
            "iteration": self._iteration,
            "speedup": self.speedup,
            "reset_weight": self.reset_weight,
            "rewind_steps": self.rewind_steps,
            "rewind_history": self._rewind_history,
            "ticket_retrained": self._ticket_retrained,
            "python_rng": [version, list(internal), gauss],
            "numpy_rng": _numpy_state(),
        }
        with atomic_dir(directory, complete=_state_complete) as tmp:
            write_file(tmp / "tensors.pth", lambda fh: torch.save(tensors, fh))
            write_file(tmp / "generator.json", lambda fh: json.dump(to_jsonable(generator_meta), fh, indent=2), "w")
            write_file(tmp / "scheduler.json", lambda fh: json.dump(to_jsonable(meta), fh, indent=2), "w")

    def load_state(self, directory: str | os.PathLike[str]) -> None:
        """Continue a run saved by :meth:`save_state` (this scheduler configured the same way)."""
        directory = Path(directory)
        recover_dir(directory, _state_complete)  # a save_state killed between its two renames
        if not (directory / "scheduler.json").is_file():
            raise ConfigError(f"load_state: {str(directory)!r} holds no saved scheduler state")
        meta = read_json(directory / "scheduler.json")
        if meta.get("format") != _STATE_FORMAT:
            raise ConfigError(f"load_state: format {meta.get('format')!r}, expected {_STATE_FORMAT!r}")
        for key in ("speedup", "reset_weight", "rewind_steps"):
            if meta[key] != getattr(self, key):
                raise ConfigError(f"load_state: saved with {key}={meta[key]!r}, this scheduler has "
                                  f"{key}={getattr(self, key)!r}")
        tensors = load_tensors(directory / "tensors.pth")
        self.task_generator.load_state_dict(read_json(directory / "generator.json"), tensors)
        self._iteration = int(meta["iteration"])
        self._rewind_state = tensors.get("scheduler/rewind_state")
        self._rewind_history = list(meta["rewind_history"])
        self._ticket_retrained = bool(meta["ticket_retrained"])
        torch.set_rng_state(tensors["scheduler/torch_rng"])
        if "scheduler/cuda_rng" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["scheduler/cuda_rng"])
        version, internal, gauss = meta["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        _set_numpy_state(meta.get("numpy_rng"))
        self._selected = None
        _logger.info("restored scheduler state from %s (after %d tasks)", directory, self._iteration)


def _fmt(score: float | None) -> str:
    return "None" if score is None else f"{score:.4g}"


def _numpy_state() -> list[Any] | None:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the pruning core
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_state(state: list[Any] | None) -> None:
    if state is None:
        return
    try:
        import numpy as np
    except ImportError:
        return
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
