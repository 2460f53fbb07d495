"""SlimPruner: network slimming, BatchNorm channels ranked by ``|gamma|``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.pruners import training
from tune_prune.pruning.pruners.base import Pruner

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SlimPruner(Pruner):
    """Train ``training_epochs`` trainer calls with ``scale * sum |gamma|`` of the
    selected BatchNorms added to the criterion's loss, then prune BN channels of
    smallest ``|gamma|`` (Liu et al., 2017). Masks are ``(C,)`` for weight and bias.
    Modes: global (default, NNI's) and normal.
    """

    modes = ("normal", "global")
    # Not searchable (search_modes None): its statistics pass is sparsity-regularised
    # *training* for training_epochs whole trainer calls (Liu et al. 2017), a different
    # cost and lr regime from the short batch-capped pass of TaylorFO/APoZ/mean activation.
    kind = "channels"
    needs_trainer = True
    prunable = _BN_TYPES
    default_types = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")

    def __init__(
        self,
        model: nn.Module | None,
        config_list: list[dict[str, Any]] | None,
        trainer: training.Trainer,
        traced_optimizer: Any,
        criterion: Callable[..., Tensor],
        training_epochs: int,
        scale: float = 0.0001,
        mode: str = "global",
    ) -> None:
        training.check_trainer(trainer, criterion)
        if criterion is None:
            raise ConfigError(
                "criterion: SlimPruner needs the criterion to add its sparsity penalty, got None"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise ConfigError(f"scale: expected a number >= 0, got {scale!r}")
        self.trainer = trainer
        self.traced_optimizer = traced_optimizer
        self.criterion = criterion
        self.training_epochs = training.positive_int("training_epochs", training_epochs)
        self.scale = float(scale)
        #: forward passes the last compress() ran through the trainer
        self.batches_seen = 0
        super().__init__(model, config_list, mode=mode)

    def _before_importance(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        bns = [modules[n] for n in names]
        criterion = self.criterion
        scale = self.scale

        def patched(*args: Any, **kwargs: Any) -> Tensor:
            loss = criterion(*args, **kwargs)
            return loss + scale * sum(bn.weight.abs().sum() for bn in bns)

        optimizer = training.build_optimizer(self.traced_optimizer, model)
        count, handle = training.batch_counter(model)
        try:
            for _ in range(self.training_epochs):
                self.trainer(model, optimizer, patched)
        finally:
            handle.remove()
        self.batches_seen = count[0]
        training.require_batches("SlimPruner", self.batches_seen, None)

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._masked(name, module).abs()

    def _expand(self, module: nn.Module, keep: Tensor) -> dict[str, Tensor]:
        keep = keep.to(device=module.weight.device, dtype=module.weight.dtype)
        out = {"weight": keep.clone()}
        if isinstance(getattr(module, "bias", None), Tensor):
            out["bias"] = keep.clone()
        return out
