"""Shared constructor and trainer plumbing of the statistics pruners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from tune_prune.pruning.pruners import training
from tune_prune.pruning.pruners.norm import _ChannelPruner


class _StatsChannelPruner(_ChannelPruner):
    """A channel pruner whose importance comes from running the user's trainer."""

    #: Searchable, but only when named (``SearchConfig.pruners``): the search builds them
    #: with the workload's trainer and counts the statistics pass in the trial's cost.
    search_modes = _ChannelPruner.modes
    needs_trainer = True

    def __init__(
        self,
        model: nn.Module | None,
        config_list: list[dict[str, Any]] | None,
        trainer: training.Trainer,
        traced_optimizer: Any,
        criterion: Callable[..., Tensor] | None,
        training_batches: int,
        mode: str = "normal",
        dummy_input: Any = None,
    ) -> None:
        training.check_trainer(trainer, criterion)
        self.trainer = trainer
        self.traced_optimizer = traced_optimizer
        self.criterion = criterion
        self.training_batches = training.positive_int("training_batches", training_batches)
        self._stats: dict[str, Tensor] = {}
        #: forward passes the last compress() ran through the trainer
        self.batches_seen = 0
        super().__init__(model, config_list, mode=mode, dummy_input=dummy_input)

    def _hooks(self, model: nn.Module, names: list[str]) -> list[Any]:
        """Install collection hooks that fill ``self._stats``; return their handles."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Turn the accumulated sums into per-channel metrics (after the trainer ran)."""

    def _before_importance(self, model: nn.Module, names: list[str]) -> None:
        self._stats = {}
        optimizer = training.build_optimizer(self.traced_optimizer, model)
        hooks = self._hooks(model, names)
        self.batches_seen = training.run_trainer(
            self.trainer, model, optimizer, self.criterion, self.training_batches, hooks
        )
        training.require_batches(type(self).__name__, self.batches_seen, self.training_batches)
        self._finish()

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._stats[name]
