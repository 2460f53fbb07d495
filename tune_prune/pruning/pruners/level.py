"""LevelPruner: fine-grained (element-wise) pruning by weight magnitude ``|w|``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.pruners import allocation
from tune_prune.pruning.pruners.base import Pruner


class LevelPruner(Pruner):
    """Prune the smallest-magnitude weight elements of every selected layer.

    Modes: ``normal`` (per layer), ``global`` (one ranking per ``total_sparsity``
    entry), ``balance`` (``balance_gran=[k, ...]`` aligned to the weight's last
    dims: every bank prunes ``int(sparsity * bank_size)`` elements), and two
    layer-wise allocations per ``total_sparsity`` entry, beyond NNI: ``lamp`` (one
    ranking of LAMP scores) and ``erk`` (Erdos-Renyi-Kernel densities, then each
    layer's smallest ``|w|``); see :mod:`~tune_prune.pruning.pruners.allocation`.
    Like ``global``, they treat a per-layer ``sparsity`` entry as a one-layer entry
    (the layer prunes ``int(s * n)`` smallest ``|w|``, capped at 0.99 by default).
    Only weights are masked (no bias mask), as in NNI.
    """

    modes = ("normal", "global", "balance", "lamp", "erk")
    # 'balance' needs a granularity the search cannot choose sensibly; lamp / erk are
    # layer-adaptive allocations (Lee et al. 2021; Evci et al. 2020) that keep the small
    # layers alive at 95-98 % where per-layer 'normal' pruning kills them.
    search_modes = ("normal", "global", "lamp", "erk")
    channel_wise = False

    def __init__(
        self,
        model: nn.Module | None = None,
        config_list: list[dict[str, Any]] | None = None,
        mode: str = "normal",
        balance_gran: Sequence[int] | None = None,
    ) -> None:
        if mode == "balance" and not balance_gran:
            raise ConfigError(
                f"LevelPruner: mode='balance' needs balance_gran (e.g. [4]), got {balance_gran!r}"
            )
        self.balance_gran = list(balance_gran) if balance_gran else None
        super().__init__(model, config_list, mode=mode)

    def _validate(self) -> None:
        super()._validate()
        if self.mode == "balance" and self.bound_model is not None:
            modules = dict(self.bound_model.named_modules())
            assert self.balance_gran is not None
            for entry in self._entries:
                for name in entry.module_names:
                    allocation._check_gran(
                        name, tuple(modules[name].weight.shape), self.balance_gran
                    )

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._masked(name, module).abs()

    def _allocate(self, model: nn.Module, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.mode in ("lamp", "erk"):
            allocate = (
                allocation.lamp_allocation if self.mode == "lamp" else allocation.erk_allocation
            )
            keeps: dict[str, Tensor] = {}
            for entry in self._entries:
                sub = {n: metrics[n] for n in entry.module_names}
                keeps.update(allocate(sub, entry.total_sparsity, {n: entry.cap(n) for n in sub}))
            return keeps
        if self.mode != "balance":
            return super()._allocate(model, metrics)
        assert self.balance_gran is not None
        sparsities = self._sparsities()
        return {
            name: allocation.balance_allocation(name, m, sparsities[name], self.balance_gran)
            for name, m in metrics.items()
        }
