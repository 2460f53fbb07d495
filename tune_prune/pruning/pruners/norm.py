"""L1NormPruner and L2NormPruner: output channels ranked by the norm of their filter."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tune_prune.pruning.pruners.base import CHANNEL_TYPES, Pruner

CHANNEL_DEFAULT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")


class _ChannelPruner(Pruner):
    """Output-channel pruner over Conv1d/2d/3d and Linear (NNI's norm-pruner family)."""

    modes = ("normal", "global", "dependency_aware")
    kind = "channels"
    search_modes = modes
    prunable = CHANNEL_TYPES
    default_types = CHANNEL_DEFAULT_TYPES

    def __init__(
        self,
        model: nn.Module | None = None,
        config_list: list[dict[str, Any]] | None = None,
        mode: str = "normal",
        dummy_input: Any = None,
    ) -> None:
        super().__init__(model, config_list, mode=mode, dummy_input=dummy_input)

    def _filters(self, name: str, module: nn.Module) -> Tensor:
        """The masked weight as one row per output channel (bias not counted)."""
        weight = self._masked(name, module)
        return weight.reshape(weight.size(0), -1).float()


class L1NormPruner(_ChannelPruner):
    """Prune output channels whose filter has the smallest L1 norm ``sum |w|``."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._filters(name, module).abs().sum(1)


class L2NormPruner(_ChannelPruner):
    """Prune output channels whose filter has the smallest L2 (Euclidean) norm."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._filters(name, module).norm(p=2, dim=1)
