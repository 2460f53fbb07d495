"""Schedules given by a formula: AGP, linear, lottery ticket, and any curve.

``total_iteration = N`` gives tasks i = 0..N (N + 1 tasks; task 0 is a warm-up at
sparsity 0 unless ``skip_first_iteration``); the lottery ticket schedule runs i = 1..N.
Each task's config_list has one ``total_sparsity`` per canonical entry. The schedule
is a sparsity of the ORIGINAL model; with speedup in the loop each task asks the
compact model only for the part not yet physically removed (``(s_i - c) / (1 - c)``,
c measured per entry from weight counts), so the schedule never compounds past its
target.

As in NNI 2.10, a formula schedule's best result is its LATEST task
(``best_result_mode='latest'``): the schedule exists to reach its target, so
``get_best_result()`` returns the model at the target sparsity even when the
unpruned warm-up task 0 scored higher. NNI returns ``score=None`` in this mode;
tune_prune returns the latest task's score (None only without an evaluator).
Only simulated annealing keeps ``'maximize'``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.config import canonical_config_list

from . import formulas
from .base import BestResultMode, Masks, Task, TaskGenerator, TaskResult
from .sparsity import compute_sparsity, relative_sparsity

_logger = logging.getLogger(__name__)


def _check_total_iteration(total_iteration: Any) -> int:
    if isinstance(total_iteration, bool) or not isinstance(total_iteration, int) or total_iteration < 1:
        raise ConfigError(f"total_iteration must be an integer >= 1, got {total_iteration!r}")
    return total_iteration


class FunctionBasedTaskGenerator(TaskGenerator):
    """Base of formula schedules: subclasses give :meth:`origin_sparsity` (or NNI's
    ``generate_config_list``). Signature and defaults are NNI 2.10's; the best result
    is the latest task's (NNI's ``best_result_mode='latest'``; keyword-only
    ``best_result_mode`` is a tune_prune extension)."""

    def __init__(
        self,
        total_iteration: int,
        origin_model: nn.Module,
        origin_config_list: list[dict[str, Any]],
        origin_masks: Masks | None = None,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        skip_first_iteration: bool = False,
        *,
        best_result_mode: BestResultMode = "latest",
    ) -> None:
        self.total_iteration = _check_total_iteration(total_iteration)
        self.skip_first_iteration = bool(skip_first_iteration)
        super().__init__(origin_model, origin_masks=origin_masks, origin_config_list=origin_config_list,
                         log_dir=log_dir, keep_intermediate_result=keep_intermediate_result,
                         best_result_mode=best_result_mode)

    def _first_iteration(self) -> int:
        return 1 if self.skip_first_iteration else 0

    @property
    def total_tasks(self) -> int:
        return self.total_iteration + 1 - self._first_iteration()

    def reset(self, model: nn.Module, config_list: list[dict[str, Any]] | None = None,
              masks: Masks | None = None) -> None:
        self.current_iteration = self._first_iteration()
        self.target_sparsity = canonical_config_list(model, list(config_list or []))
        super().reset(model, config_list, masks)

    def init_pending_tasks(self) -> list[Task]:
        origin = TaskResult("origin", self.origin_model_copy(), self.origin_masks, self.origin_masks, None)
        return self.generate_tasks(origin)

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        compact_model = task_result.compact_model
        compact_masks = task_result.compact_model_masks
        current2origin, compact2origin, _ = compute_sparsity(
            self.origin_model, compact_model, compact_masks, self.target_sparsity
        )
        if task_result.task_id != "origin":
            self._tasks[task_result.task_id].state["current2origin_sparsity"] = current2origin
        if self.current_iteration > self.total_iteration:
            return []
        config_list = self.generate_config_list(self.target_sparsity, self.current_iteration, compact2origin)
        config_list = self.allocate_sparsity(config_list, compact_model, compact_masks)
        task = self.new_task(compact_model, compact_masks, config_list,
                             state={"iteration": self.current_iteration})
        self.current_iteration += 1
        return [task]

    def origin_sparsity(self, target: float, iteration: int) -> float:
        """Sparsity of the original model after ``iteration`` of ``total_iteration``."""
        raise NotImplementedError

    def generate_config_list(self, target_sparsity: list[dict[str, Any]], iteration: int,
                             compact2origin_sparsity: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The task's config_list: the schedule's sparsity, relative to what is already gone."""
        config_list = []
        for target, removed in zip(target_sparsity, compact2origin_sparsity):
            origin = self.origin_sparsity(float(target["total_sparsity"]), iteration)
            entry = copy.deepcopy(target)
            entry["total_sparsity"] = relative_sparsity(origin, float(removed["total_sparsity"]))
            config_list.append(entry)
        return config_list

    def allocate_sparsity(self, new_config_list: list[dict[str, Any]], model: nn.Module,
                          masks: Masks) -> list[dict[str, Any]]:
        """Hook to redistribute a task's sparsity over layers (NNI's; identity here)."""
        return new_config_list

    def extra_state(self) -> dict[str, Any]:
        return {"current_iteration": self.current_iteration}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.current_iteration = int(state["current_iteration"])


class AGPTaskGenerator(FunctionBasedTaskGenerator):
    """Automated gradual pruning (Zhu & Gupta 2017): ``S * (1 - (1 - i/N)**3)``."""

    def origin_sparsity(self, target: float, iteration: int) -> float:
        return formulas.agp(target, iteration, self.total_iteration)


class LinearTaskGenerator(FunctionBasedTaskGenerator):
    """Even steps: ``S * i/N``."""

    def origin_sparsity(self, target: float, iteration: int) -> float:
        return formulas.linear(target, iteration, self.total_iteration)


class LotteryTicketTaskGenerator(FunctionBasedTaskGenerator):
    """Lottery ticket (Frankle & Carbin 2019): N tasks, ``1 - (1 - S)**(i/N)``, i = 1..N.

    Every round prunes the same fraction of what survived the round before (NNI keeps
    this formula of its compression v1 rather than the paper's).
    """

    def _first_iteration(self) -> int:
        return 1

    def origin_sparsity(self, target: float, iteration: int) -> float:
        return formulas.lottery_ticket(target, iteration, self.total_iteration)


Curve = Callable[[float], float]

_NAMED_CURVES = ("poly", "linear", "agp", "cosine", "geometric")


class CurveTaskGenerator(FunctionBasedTaskGenerator):
    """Any schedule shape, for searches that explore beyond AGP.

    ``curve`` maps progress ``p = i/N`` in [0, 1] to the fraction of the target reached:

    - ``'poly'``: ``1 - (1 - p)**exponent`` (exponent 3 is AGP, 1 is linear; below 1
      prunes late, above 1 prunes early);
    - ``'linear'``, ``'agp'``: poly with exponent 1 or 3;
    - ``'cosine'``: ``(1 - cos(pi p)) / 2``;
    - ``'geometric'``: the lottery-ticket shape ``(1 - (1 - S)**p) / S``;
    - a callable ``f(p) -> fraction``: values are clipped to [0, 1].

    The last task always reaches the full target, whatever the curve gives at p = 1,
    so every curve ends at the same sparsity and schedules stay comparable.
    """

    def __init__(
        self,
        total_iteration: int,
        origin_model: nn.Module,
        origin_config_list: list[dict[str, Any]],
        curve: str | Curve = "poly",
        exponent: float = 3.0,
        origin_masks: Masks | None = None,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        skip_first_iteration: bool = False,
        *,
        best_result_mode: BestResultMode = "latest",
    ) -> None:
        if isinstance(curve, str) and curve not in _NAMED_CURVES:
            raise ConfigError(f"curve must be one of {', '.join(_NAMED_CURVES)} or a callable, got {curve!r}")
        if not isinstance(curve, str) and not callable(curve):
            raise ConfigError(f"curve must be a name or a callable, got {curve!r}")
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
            raise ConfigError(f"exponent must be a number > 0, got {exponent!r}")
        self.curve = curve
        self.exponent = float(exponent)
        super().__init__(total_iteration, origin_model, origin_config_list, origin_masks, log_dir,
                         keep_intermediate_result, skip_first_iteration, best_result_mode=best_result_mode)

    def fraction(self, progress: float, target: float) -> float:
        """Fraction of ``target`` reached at ``progress`` (in [0, 1])."""
        curve = self.curve
        if not callable(curve):
            return formulas.curve_fraction(curve, progress, target, self.exponent)
        value = float(curve(progress))
        if math.isnan(value):
            raise ConfigError(f"curve({progress!r}) returned NaN")
        return min(max(value, 0.0), 1.0)

    def origin_sparsity(self, target: float, iteration: int) -> float:
        if iteration >= self.total_iteration:
            return target
        return target * self.fraction(iteration / self.total_iteration, target)
