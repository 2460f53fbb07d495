"""Iterative pruners: a PruningScheduler with its task generator built in (NNI 2.10).

Signatures, argument order and defaults are NNI 2.10's legacy (finetuner/evaluator
callables) API. ``pruning_algorithm`` names the one-shot pruner in the registry
(``level``, ``l1``, ``l2``, ``fpgm``, ``slim``, ``taylorfo``, ``apoz``,
``mean_activation``; NNI's ``admm`` is not available) and ``pruning_params`` are its
keyword arguments (``mode``, ``dummy_input``, ``trainer``, ...). Additions are
keyword-only (``on_iteration``, and the lottery ticket's ``rewind_steps`` and
``retrain_ticket``; SA's ``seed``)::

    pruner = AGPPruner(model, config_list, "l1", 10, finetuner=finetuner, evaluator=evaluator)
    pruner.compress()
    _, model, masks, _, _ = pruner.get_best_result()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from tune_prune.pruning.pruners import get_pruner_class
from tune_prune.pruning.scheduler import EvaluateFn, FinetuneFn, OnIteration, PruningScheduler
from tune_prune.pruning.tools import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
)

_logger = logging.getLogger(__name__)

__all__ = ["AGPPruner", "IterativePruner", "LinearPruner", "LotteryTicketPruner", "SimulatedAnnealingPruner"]


def _base_pruner(pruning_algorithm: str, pruning_params: dict[str, Any] | None) -> Any:
    """The registry's pruner, unbound: the scheduler binds it for every task."""
    return get_pruner_class(pruning_algorithm)(None, None, **dict(pruning_params or {}))


class IterativePruner(PruningScheduler):
    """Base of the iterative pruners; NNI's one-shot-pruner methods only warn here."""

    def _wrap_model(self) -> None:
        _logger.warning("%s is iterative and does not wrap the model: nothing happens",
                        type(self).__name__)

    def _unwrap_model(self) -> None:
        _logger.warning("%s is iterative and does not wrap the model: nothing happens",
                        type(self).__name__)

    def export_model(self, *args: Any, **kwargs: Any) -> None:
        _logger.warning("%s: export_model does nothing; the best result is under log_dir "
                        "(and returned by get_best_result())", type(self).__name__)


class _FormulaPruner(IterativePruner):
    """Scheduler + a formula task generator (``generator_class``); NNI 2.10's signature."""

    generator_class: type[AGPTaskGenerator] | type[LinearTaskGenerator]

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        pruning_algorithm: str,
        total_iteration: int,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        finetuner: FinetuneFn | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        evaluator: EvaluateFn | None = None,
        pruning_params: dict[str, Any] | None = None,
        *,
        on_iteration: OnIteration | None = None,
    ) -> None:
        generator = self.generator_class(total_iteration=total_iteration, origin_model=model,
                                         origin_config_list=config_list, log_dir=log_dir,
                                         keep_intermediate_result=keep_intermediate_result)
        super().__init__(_base_pruner(pruning_algorithm, pruning_params), generator, finetuner=finetuner,
                         speedup=speedup, dummy_input=dummy_input, evaluator=evaluator,
                         reset_weight=False, on_iteration=on_iteration)


class LinearPruner(_FormulaPruner):
    """Sparsity grows evenly: ``[0, S/N, 2S/N, ..., S]`` over N + 1 tasks."""

    generator_class = LinearTaskGenerator


class AGPPruner(_FormulaPruner):
    """Automated gradual pruning (Zhu & Gupta 2017): ``S * (1 - (1 - i/N)**3)``, i = 0..N."""

    generator_class = AGPTaskGenerator


class LotteryTicketPruner(IterativePruner):
    """Lottery ticket (Frankle & Carbin 2019): ``1 - (1 - S)**(i/N)``, i = 1..N, weights rewound.

    With ``reset_weight=True`` each task fine-tunes, prunes, then rewinds the surviving
    weights (to the original ones, or with ``rewind_steps=k`` to those after k optimizer
    steps of the first fine-tuning). NNI evaluates the rewound, untrained ticket;
    ``retrain_ticket=True`` fine-tunes the best ticket once more at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        pruning_algorithm: str,
        total_iteration: int,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        finetuner: FinetuneFn | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        evaluator: EvaluateFn | None = None,
        reset_weight: bool = True,
        pruning_params: dict[str, Any] | None = None,
        *,
        rewind_steps: int = 0,
        retrain_ticket: bool = False,
        on_iteration: OnIteration | None = None,
    ) -> None:
        generator = LotteryTicketTaskGenerator(total_iteration=total_iteration, origin_model=model,
                                               origin_config_list=config_list, log_dir=log_dir,
                                               keep_intermediate_result=keep_intermediate_result)
        super().__init__(_base_pruner(pruning_algorithm, pruning_params), generator, finetuner=finetuner,
                         speedup=speedup, dummy_input=dummy_input, evaluator=evaluator,
                         reset_weight=reset_weight, on_iteration=on_iteration,
                         rewind_steps=rewind_steps, retrain_ticket=retrain_ticket)


class SimulatedAnnealingPruner(IterativePruner):
    """Simulated annealing over per-layer sparsities (AutoCompress); needs an evaluator.

    See :class:`~tune_prune.pruning.tools.SimulatedAnnealingTaskGenerator` for the
    algorithm and where it deliberately differs from NNI (normalised score deltas,
    bounded rejections: it always stops and never exceeds the target).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        evaluator: EvaluateFn,
        start_temperature: float = 100,
        stop_temperature: float = 20,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        pruning_algorithm: str = "level",
        pruning_params: dict[str, Any] | None = None,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        finetuner: FinetuneFn | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        *,
        seed: int | None = None,
        on_iteration: OnIteration | None = None,
    ) -> None:
        generator = SimulatedAnnealingTaskGenerator(
            origin_model=model, origin_config_list=config_list, start_temperature=start_temperature,
            stop_temperature=stop_temperature, cool_down_rate=cool_down_rate,
            perturbation_magnitude=perturbation_magnitude, log_dir=log_dir,
            keep_intermediate_result=keep_intermediate_result, seed=seed,
        )
        super().__init__(_base_pruner(pruning_algorithm, pruning_params), generator, finetuner=finetuner,
                         speedup=speedup, dummy_input=dummy_input, evaluator=evaluator,
                         reset_weight=False, on_iteration=on_iteration)
