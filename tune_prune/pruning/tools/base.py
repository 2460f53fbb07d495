"""Task, TaskResult and the TaskGenerator base of iterative pruning (NNI 2.10 pruning v2).

A TaskGenerator decides what to prune next from what the last task produced: it hands
out :class:`Task` objects (a model, its masks, a config_list) through :meth:`next`,
receives each :class:`TaskResult` through :meth:`receive_task_result`, and keeps the
best result. A new schedule is one short subclass::

    class HalfThenMore(TaskGenerator):
        def init_pending_tasks(self):
            return [self.new_task(self.origin_model_copy(), self.origin_masks, config_half)]

        def generate_tasks(self, task_result):
            if task_result.task_id == 1:
                return []
            return [self.new_task(task_result.compact_model,
                                  task_result.compact_model_masks, config_more)]

Differences from NNI, on purpose: tasks carry their model and masks in memory instead
of file paths (``Task.load_data()`` still returns ``(model, masks, config_list)``), and
everything written under ``log_dir/<timestamp>/`` is state dicts, masks and JSON, never
a pickled model (NNI's whole-model torch.save fails to load on torch >= 2.6).

Layout of ``log_dir/<timestamp>/``::

    origin/            model_state_dict.pth  masks.pth  config_list.json
    best_result/       model_state_dict.pth  masks.pth  config_list.json  result.json
                       [speedup_history.json]
    intermediate_result/<task_id>/   (only with keep_intermediate_result=True)
                       config_list.json  compact_model_state_dict.pth
                       compact_model_masks.pth  pruner_generated_masks.pth  result.json
                       [speedup_history.json]
    tasks.json         id, status, score, flags, config_list and state of every task
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.config import canonical_config_list
from tune_prune.pruning.masks import Masks, masks_to

from ._io import (
    atomic_torch_save,
    atomic_write_json,
    cpu_state_dict,
    model_history,
    rebuild_model,
    timestamp_dir,
    to_jsonable,
)

_logger = logging.getLogger(__name__)

TaskId = int | str
BestResultMode = Literal["latest", "maximize", "minimize"]


@dataclass(eq=False)
class Task:
    """One pruning step to run: prune ``model`` (with ``masks`` loaded) by ``config_list``.

    ``speedup``/``finetune``/``evaluate`` let a generator switch those stages off for
    this task; ``state`` is free-form (JSON-able) bookkeeping of the generator.
    """

    task_id: TaskId
    model: nn.Module
    masks: Masks
    config_list: list[dict[str, Any]]
    speedup: bool = True
    finetune: bool = True
    evaluate: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    status: Literal["Pending", "Running", "Finished"] = "Pending"
    score: float | None = None

    def load_data(self) -> tuple[nn.Module, Masks, list[dict[str, Any]]]:
        """``(model, masks, config_list)`` as NNI's ``Task.load_data`` returns them."""
        return self.model, self.masks, copy.deepcopy(self.config_list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no tensors) for ``tasks.json`` and saved state."""
        return to_jsonable({
            "task_id": self.task_id,
            "status": self.status,
            "score": self.score,
            "speedup": self.speedup,
            "finetune": self.finetune,
            "evaluate": self.evaluate,
            "config_list": self.config_list,
            "state": self.state,
        })


@dataclass(eq=False)
class TaskResult:
    """What one task produced (positional order as NNI's ``TaskResult``).

    ``compact_model_masks`` are the masks still to hold on ``compact_model`` (empty after
    a full speedup); ``pruner_generated_masks`` are the masks the pruner produced on the
    task's model before speedup (cumulative: earlier masks included).
    """

    task_id: TaskId
    compact_model: nn.Module
    compact_model_masks: Masks
    pruner_generated_masks: Masks
    score: float | None


def _check_mode(mode: str) -> None:
    if mode not in ("latest", "maximize", "minimize"):
        raise ConfigError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {mode!r}")


class TaskGenerator:
    """Base of all task generators: hands out tasks, keeps the best result, writes log_dir.

    Subclasses implement :meth:`init_pending_tasks` and :meth:`generate_tasks` (build
    tasks with :meth:`new_task`); subclasses with internal state that must survive an
    interruption also implement :meth:`extra_state` and :meth:`load_extra_state`.
    The signature and argument order are NNI 2.10's.
    """

    def __init__(
        self,
        origin_model: nn.Module | None,
        origin_masks: Masks | None = None,
        origin_config_list: list[dict[str, Any]] | None = None,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        best_result_mode: BestResultMode = "maximize",
    ) -> None:
        _check_mode(best_result_mode)
        self._log_dir = Path(log_dir)
        self._keep_intermediate_result = bool(keep_intermediate_result)
        self._best_result_mode: BestResultMode = best_result_mode
        self._origin_model: nn.Module | None = None
        if origin_model is not None and origin_config_list is not None:
            self.reset(origin_model, origin_config_list, origin_masks or {})

    # ----------------------------------------------------------------- properties
    @property
    def log_dir(self) -> Path:
        """Where this run writes: ``log_dir/<timestamp>`` (the root given is ``log_dir_root``)."""
        return self._log_dir_root

    @property
    def keep_intermediate_result(self) -> bool:
        return self._keep_intermediate_result

    @property
    def best_result_mode(self) -> BestResultMode:
        return self._best_result_mode

    @property
    def origin_model(self) -> nn.Module:
        """The generator's private copy of the original model (do not modify; copy it)."""
        if self._origin_model is None:
            raise ConfigError("the task generator has no model yet: call reset(model, config_list)")
        return self._origin_model

    @property
    def origin_masks(self) -> Masks:
        return {n: dict(p) for n, p in self._origin_masks.items()}

    @property
    def origin_config_list(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._origin_config_list)

    @property
    def total_tasks(self) -> int | None:
        """How many tasks this generator will hand out, when it knows in advance."""
        return None

    def origin_model_copy(self) -> nn.Module:
        """A fresh copy of the original model (weights included) for a new task."""
        return copy.deepcopy(self.origin_model)

    # ---------------------------------------------------------------------- reset
    def reset(self, model: nn.Module, config_list: list[dict[str, Any]] | None = None,
              masks: Masks | None = None) -> None:
        """Start over on ``model``: new log directory, no tasks, no best result."""
        if not isinstance(model, nn.Module):
            raise ConfigError(f"origin_model must be a torch.nn.Module, got {type(model).__name__}")
        config_list = list(config_list or [])
        # Validates the config_list against the model (errors name entry, key and value).
        canonical_config_list(model, config_list)
        self._origin_model = copy.deepcopy(model)
        self._origin_masks: Masks = masks_to(masks or {}, _device_of(model))
        self._origin_config_list = copy.deepcopy(config_list)

        self._log_dir_root = timestamp_dir(self._log_dir)
        self._intermediate_result_dir = self._log_dir_root / "intermediate_result"
        self._save_data("origin", self._origin_model, self._origin_masks, self._origin_config_list)

        self._task_id_candidate = 0
        self._tasks: dict[TaskId, Task] = {}
        self._best_score: float | None = None
        self._best_task_id: TaskId | None = None
        self._best: tuple[nn.Module, Masks, list[dict[str, Any]]] | None = None
        self._pending_tasks: list[Task] = list(self.init_pending_tasks())
        self._dump_tasks_info()

    # ------------------------------------------------------------ to implement
    def init_pending_tasks(self) -> list[Task]:
        """The first task(s), built from the origin model (called by :meth:`reset`)."""
        raise NotImplementedError

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """The next task(s) after ``task_result``; an empty list ends the run."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-able internal state a subclass needs to continue after an interruption."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # --------------------------------------------------------------- task flow
    def new_task(self, model: nn.Module, masks: Masks | None, config_list: list[dict[str, Any]],
                 speedup: bool = True, finetune: bool = True, evaluate: bool = True,
                 state: dict[str, Any] | None = None) -> Task:
        """Register a task with the next free id (the generator owns ``model`` from now on)."""
        task = Task(self._task_id_candidate, model, dict(masks or {}), copy.deepcopy(config_list),
                    speedup, finetune, evaluate, dict(state or {}))
        self._tasks[task.task_id] = task
        self._task_id_candidate += 1
        return task

    def next(self) -> Task | None:
        """The next pending task, or None when the schedule is done."""
        if not self._pending_tasks:
            return None
        task = self._pending_tasks.pop(0)
        task.status = "Running"
        self._dump_tasks_info()
        return task

    def receive_task_result(self, task_result: TaskResult) -> None:
        """Record a finished task, update the best result and queue what comes next."""
        task_id = task_result.task_id
        if task_id not in self._tasks:
            raise ConfigError(f"task_result.task_id: task {task_id!r} was not handed out by this generator")
        self.update_best_result(task_result)
        task = self._tasks[task_id]
        task.status = "Finished"
        if self._keep_intermediate_result:
            self._save_task_result(task, task_result)
        # The task's own model now belongs to the result; drop the reference.
        task.model, task.masks = None, {}  # type: ignore[assignment]
        self._pending_tasks.extend(self.generate_tasks(task_result))
        self._dump_tasks_info()

    def update_best_result(self, task_result: TaskResult) -> None:
        """Keep ``task_result`` as the best one if the mode says so (None scores: latest)."""
        task = self._tasks[task_result.task_id]
        task.score = task_result.score
        better = False
        if self._best_result_mode == "latest":
            better = True
        elif self._best_score is None:
            better = True
        elif task.score is not None:
            if self._best_result_mode == "maximize":
                better = task.score > self._best_score
            else:
                better = task.score < self._best_score
        if better:
            self._best_task_id = task_result.task_id
            self._best_score = task.score
            self._store_best(task_result, task.config_list)

    def _store_best(self, task_result: TaskResult, config_list: list[dict[str, Any]]) -> None:
        model = copy.deepcopy(task_result.compact_model)
        masks = masks_to(task_result.compact_model_masks, "cpu")
        self._best = (model, masks, copy.deepcopy(config_list))
        self._save_data("best_result", model, masks, config_list,
                        {"task_id": task_result.task_id, "score": task_result.score})

    def replace_best_result(self, task_result: TaskResult) -> None:
        """Make ``task_result`` the best result unconditionally (e.g. a retrained ticket)."""
        task = self._tasks.get(task_result.task_id)
        config_list = task.config_list if task is not None else self._best[2] if self._best else []
        self._best_task_id = task_result.task_id
        self._best_score = task_result.score
        self._store_best(task_result, config_list)

    def get_best_result(self) -> tuple[TaskId, nn.Module, Masks, float | None, list[dict[str, Any]]] | None:
        """``(task_id, model, masks, score, config_list)`` of the best task, or None.

        The model is a fresh unwrapped copy (compact if sped up); the masks are the
        cumulative masks still to hold on it, keyed by its module names.
        """
        if self._best_task_id is None or self._best is None:
            return None
        model, masks, config_list = self._best
        return (self._best_task_id, copy.deepcopy(model), masks_to(masks, "cpu"),
                self._best_score, copy.deepcopy(config_list))

    # ----------------------------------------------------------------- on disk
    def _save_data(self, folder: str, model: nn.Module, masks: Masks, config_list: list[dict[str, Any]],
                   result: dict[str, Any] | None = None) -> None:
        path = self._log_dir_root / folder
        atomic_torch_save(cpu_state_dict(model), path / "model_state_dict.pth")
        atomic_torch_save(masks_to(masks, "cpu"), path / "masks.pth")
        atomic_write_json(config_list, path / "config_list.json")
        history = model_history(model)
        if history:
            atomic_write_json(history, path / "speedup_history.json")
        elif (path / "speedup_history.json").exists():
            (path / "speedup_history.json").unlink()
        if result is not None:
            atomic_write_json(result, path / "result.json")

    def _save_task_result(self, task: Task, result: TaskResult) -> None:
        path = self._intermediate_result_dir / str(task.task_id)
        atomic_write_json(task.config_list, path / "config_list.json")
        atomic_torch_save(cpu_state_dict(result.compact_model), path / "compact_model_state_dict.pth")
        atomic_torch_save(masks_to(result.compact_model_masks, "cpu"), path / "compact_model_masks.pth")
        atomic_torch_save(masks_to(result.pruner_generated_masks, "cpu"), path / "pruner_generated_masks.pth")
        history = model_history(result.compact_model)
        if history:
            atomic_write_json(history, path / "speedup_history.json")
        atomic_write_json({"task_id": task.task_id, "score": result.score, "state": task.state},
                          path / "result.json")

    def _dump_tasks_info(self) -> None:
        atomic_write_json([t.to_dict() for t in self._tasks.values()], self._log_dir_root / "tasks.json")

    def clean_up(self) -> None:
        """Remove this run's directory (origin, best result, everything)."""
        shutil.rmtree(self._log_dir_root, ignore_errors=True)

    # ---------------------------------------------------------- save / restore
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSON part, tensor part) of the generator's position, for the scheduler's save_state.

        Models are stored as a state dict plus the speedup history they carry, so a
        compact model is rebuilt from the original architecture on load.
        """
        tensors: dict[str, Any] = {}

        def model_ref(key: str, model: nn.Module, masks: Masks) -> dict[str, Any]:
            tensors[f"{key}/model"] = cpu_state_dict(model)
            tensors[f"{key}/masks"] = masks_to(masks, "cpu")
            return {"tensors": key, "history": model_history(model)}

        pending = []
        for i, task in enumerate(self._pending_tasks):
            info = task.to_dict()
            info.update(model_ref(f"pending/{i}", task.model, task.masks))
            pending.append(info)
        best = None
        if self._best is not None:
            model, masks, config_list = self._best
            best = {"task_id": self._best_task_id, "score": self._best_score,
                    "config_list": config_list, **model_ref("best", model, masks)}
        meta = {
            "class": type(self).__name__,
            "log_dir_root": str(self._log_dir_root),
            "task_id_candidate": self._task_id_candidate,
            "best_result_mode": self._best_result_mode,
            "tasks": [t.to_dict() for t in self._tasks.values()],
            "pending": pending,
            "best": best,
            "extra": to_jsonable(self.extra_state()),
        }
        return to_jsonable(meta), tensors

    def load_state_dict(self, meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a generator configured the same way."""
        if meta.get("class") != type(self).__name__:
            raise ConfigError(
                f"saved state is of a {meta.get('class')!r}, this generator is a {type(self).__name__!r}"
            )
        saved_root = Path(meta["log_dir_root"])
        if saved_root.is_dir() and saved_root != self._log_dir_root:
            _remove_if_fresh(self._log_dir_root)
            self._log_dir_root = saved_root
            self._intermediate_result_dir = saved_root / "intermediate_result"
        device = _device_of(self.origin_model)

        def restore(ref: Mapping[str, Any]) -> tuple[nn.Module, Masks]:
            key = ref["tensors"]
            model = rebuild_model(self.origin_model, list(ref.get("history") or []), tensors[f"{key}/model"])
            return model.to(device), masks_to(tensors[f"{key}/masks"], device)

        self._task_id_candidate = int(meta["task_id_candidate"])
        self._tasks = {}
        for info in meta["tasks"]:
            task = _task_from_info(info)
            self._tasks[task.task_id] = task
        self._pending_tasks = []
        for info in meta["pending"]:
            task = self._tasks.get(_task_id(info["task_id"])) or _task_from_info(info)
            task.model, task.masks = restore(info)
            task.status = "Pending"
            self._tasks[task.task_id] = task
            self._pending_tasks.append(task)
        best = meta.get("best")
        if best is not None:
            model, masks = restore(best)
            self._best = (model, masks, list(best["config_list"]))
            self._best_task_id = _task_id(best["task_id"])
            self._best_score = best["score"]
        else:
            self._best, self._best_task_id, self._best_score = None, None, None
        self.load_extra_state(meta.get("extra") or {})
        self._dump_tasks_info()


def _task_id(value: Any) -> TaskId:
    return int(value) if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()) else value


def _task_from_info(info: Mapping[str, Any]) -> Task:
    task = Task(_task_id(info["task_id"]), None, {}, list(info["config_list"]),  # type: ignore[arg-type]
                bool(info["speedup"]), bool(info["finetune"]), bool(info["evaluate"]),
                dict(info.get("state") or {}))
    task.status = info.get("status", "Finished")
    task.score = info.get("score")
    return task


def _remove_if_fresh(path: Path) -> None:
    """Remove a run directory that holds nothing but its origin snapshot and task list."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if names <= {"origin", "tasks.json", "intermediate_result"}:
        shutil.rmtree(path, ignore_errors=True)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
