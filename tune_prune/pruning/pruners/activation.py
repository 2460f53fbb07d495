"""Activation-statistics pruners: APoZ rank and mean-activation rank of output channels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning.pruners._stats import _StatsChannelPruner

_ACTIVATIONS = {"relu": torch.relu, "relu6": nn.functional.relu6}


class _ActivationPruner(_StatsChannelPruner):
    """Statistics of ``activation(layer output)`` per output channel over the first
    ``training_batches`` forward passes of the trainer (channel dim: 1 for convs, the
    last dim for Linear). Modes: normal, global, dependency_aware.
    """

    def __init__(
        self,
        model: nn.Module | None,
        config_list: list[dict[str, Any]] | None,
        trainer: Any,
        traced_optimizer: Any,
        criterion: Any,
        training_batches: int,
        activation: str = "relu",
        mode: str = "normal",
        dummy_input: Any = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ConfigError(
                f"activation: {activation!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
            )
        self.activation = activation
        self._activation = _ACTIVATIONS[activation]
        super().__init__(
            model,
            config_list,
            trainer,
            traced_optimizer,
            criterion,
            training_batches,
            mode,
            dummy_input,
        )

    def _per_channel(self, act: Tensor) -> Tensor:
        """Per-channel sum of this pruner's statistic over one output."""
        raise NotImplementedError

    def _hooks(self, model: nn.Module, names: list[str]) -> list[Any]:
        modules = dict(model.named_modules())
        self._counts: dict[str, int] = {}
        handles = []
        for name in names:
            self._stats[name] = torch.zeros(0)
            self._counts[name] = 0
            handles.append(
                modules[name].register_forward_hook(self._collector(name, modules[name]))
            )
        return handles

    def _collector(self, name: str, module: nn.Module) -> Any:
        linear = isinstance(module, nn.Linear)

        def collect(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                return
            act = self._activation(output.detach())
            act = act.movedim(-1, 0) if linear else act.movedim(1, 0)
            act = act.reshape(act.size(0), -1).double()
            total = self._per_channel(act)
            prev = self._stats[name]
            self._stats[name] = total if prev.numel() == 0 else prev + total
            self._counts[name] += act.size(1)

        return collect

    def _finish(self) -> None:
        missing = [n for n, c in self._counts.items() if c == 0]
        if missing:
            raise PrunerError(
                f"{type(self).__name__}: layers {missing} produced no output during the trainer call"
            )
        self._stats = {n: self._metric(s / self._counts[n]).float() for n, s in self._stats.items()}

    def _metric(self, mean_stat: Tensor) -> Tensor:
        return mean_stat


class ActivationAPoZRankPruner(_ActivationPruner):
    """APoZ (average percentage of zeros) of each channel's activation; metric =
    ``1 - APoZ``, so channels that are mostly zero are pruned first (Hu et al., 2016)."""

    def _per_channel(self, act: Tensor) -> Tensor:
        return (act == 0).double().sum(1)

    def _metric(self, mean_stat: Tensor) -> Tensor:
        return 1.0 - mean_stat


class ActivationMeanRankPruner(_ActivationPruner):
    """Mean activation of each channel; the lowest are pruned first (Molchanov et al.)."""

    def _per_channel(self, act: Tensor) -> Tensor:
        return act.sum(1)
