"""TaylorFOWeightPruner: first-order Taylor importance of output channels."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tune_prune.errors import PrunerError
from tune_prune.pruning.pruners._stats import _StatsChannelPruner


class TaylorFOWeightPruner(_StatsChannelPruner):
    """Importance of channel i: ``sum_batches sum_{w in filter i} (w * dL/dw)^2``.

    This is NNI 2.10's formula (element-wise squares summed over the filter, then L1
    over batches), collected by a gradient hook on each selected weight during the
    first ``training_batches`` batches of ``trainer(model, optimizer, criterion)``.
    Modes: normal, global, dependency_aware.
    """

    def __init__(
        self,
        model: nn.Module | None,
        config_list: list[dict[str, Any]] | None,
        trainer: Any,
        traced_optimizer: Any,
        criterion: Any,
        training_batches: int,
        mode: str = "normal",
        dummy_input: Any = None,
    ) -> None:
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

    def _hooks(self, model: nn.Module, names: list[str]) -> list[Any]:
        modules = dict(model.named_modules())
        self._counts: dict[str, int] = {}
        handles = []
        for name in names:
            weight = modules[name].weight
            if not weight.requires_grad:
                raise PrunerError(
                    f"TaylorFOWeightPruner: {name!r}.weight has requires_grad=False, "
                    "so no gradient can be collected"
                )
            self._counts[name] = 0
            handles.append(weight.register_hook(self._collector(name, weight)))
        return handles

    def _collector(self, name: str, weight: Tensor) -> Any:
        def collect(grad: Tensor) -> None:
            if self._counts[name] >= self.training_batches:
                return
            value = (weight.detach() * grad.detach()).pow(2).reshape(weight.size(0), -1).sum(1)
            prev = self._stats.get(name)
            self._stats[name] = value.float() if prev is None else prev + value.float()
            self._counts[name] += 1

        return collect

    def _finish(self) -> None:

        missing = [n for n, c in self._counts.items() if c == 0]
        if missing:
            raise PrunerError(
                f"TaylorFOWeightPruner: no gradient reached {missing} during the trainer call "
                "(does the trainer call loss.backward()?)"
            )
