"""The Pruner base class: NNI 2.10's pruning-v2 contract on hook-based masks.

A pruner is bound to a model and a config_list (or unbound, waiting for
``reset(model, config_list)``, which the scheduler calls for every task).
``compress()`` scores units (the subclass's *importance*), decides how many to cut
and where (*allocation*, by ``mode``), merges the new masks with those already held
(pruned weights stay pruned; sparsity targets are fractions of the original layer),
wraps the model with :func:`tune_prune.pruning.masks.wrap_model` and returns the same
model object with the masks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning.config import ResolvedEntry, resolve_config_list
from tune_prune.pruning.masks import Masks, held_masks, merge_masks, unwrap_model, wrap_model
from tune_prune.pruning.pruners import allocation

logger = logging.getLogger(__name__)

CHANNEL_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _clone_masks(masks: Mapping[str, Mapping[str, Tensor]]) -> Masks:
    return {n: {p: m.detach().clone() for p, m in per.items()} for n, per in masks.items()}


class Pruner:
    """Base of every pruner; subclasses define :meth:`_importance` (metric per unit).

    Class attributes a subclass sets:
    ``modes``: the modes it accepts; ``prunable``: module classes it prunes (None: any
    module with a weight); ``default_types``: what ``op_types: ["default"]`` means for
    it (None: NNI's default list); ``channel_wise``: units are output channels (True)
    or weight elements (False); ``kind``: the search's sparsity kind it serves
    ("weights" or "channels"); ``search_modes``: the modes a schedule search may choose
    (None: the search does not offer this pruner; ``tune_prune.search.registry`` derives
    its pruner lists from these two); ``needs_trainer``: the pruner takes NNI's
    ``trainer, traced_optimizer, criterion`` and runs a statistics pass (the search
    offers such pruners only when named, and counts that pass in the trial's cost).
    """

    modes: ClassVar[tuple[str, ...]] = ("normal",)
    kind: ClassVar[str] = "weights"
    search_modes: ClassVar[tuple[str, ...] | None] = None
    needs_trainer: ClassVar[bool] = False
    prunable: ClassVar[tuple[type[nn.Module], ...] | None] = None
    default_types: ClassVar[tuple[str, ...] | None] = None
    channel_wise: ClassVar[bool] = True
    #: Kept units per layer (group) are rounded down to a multiple of this (1: NNI's
    #: counts); the channel pruners take it as a keyword.
    round_to: int = 1

    def __init__(
        self,
        model: nn.Module | None = None,
        config_list: list[dict[str, Any]] | None = None,
        mode: str = "normal",
        dummy_input: Any = None,
    ) -> None:
        if mode not in self.modes:
            raise ConfigError(
                f"{type(self).__name__}: mode={mode!r} is not supported "
                f"(supported: {', '.join(self.modes)})"
            )
        self.mode = mode
        self.dummy_input = dummy_input
        self.bound_model: nn.Module | None = None
        self.config_list: list[dict[str, Any]] | None = None
        self._entries: list[ResolvedEntry] = []
        self._masks: Masks = {}
        self.reset(model, config_list)

    # ----------------------------------------------------------------- binding
    def reset(
        self, model: nn.Module | None = None, config_list: list[dict[str, Any]] | None = None
    ) -> None:
        """Re-bind to ``model`` and ``config_list`` (unwrapping any previous model first).

        Both None leaves the pruner unbound; the config_list is validated now so
        errors surface at construction, as in NNI.
        """
        if self.bound_model is not None:
            unwrap_model(self.bound_model)
        self.bound_model = model
        self.config_list = config_list
        self._entries = []
        self._masks = {}
        if model is not None and config_list is not None:
            self._entries = resolve_config_list(
                model, self._canonical_types(config_list), prunable=self.prunable
            )
            self._validate()

    def _canonical_types(self, config_list: Any) -> Any:
        """Replace ``"default"`` in op_types by this pruner's own default types."""
        if self.default_types is None or not isinstance(config_list, Sequence):
            return config_list
        out = []
        for entry in config_list:
            if isinstance(entry, Mapping) and isinstance(entry.get("op_types"), (list, tuple)):
                types = list(entry["op_types"])
                if "default" in types:
                    types = [t for t in types if t != "default"] + [
                        t for t in self.default_types if t not in types
                    ]
                    entry = {**entry, "op_types": types}
            out.append(entry)
        return out

    def _validate(self) -> None:
        """Hook for subclasses: check the bound model/config beyond the config schema."""
        if self.mode == "dependency_aware" and self.dummy_input is None:
            raise PrunerError(
                f"{type(self).__name__}: mode='dependency_aware' needs dummy_input "
                "(an example input to trace the model's channel dependencies), got None"
            )

    def _require_bound(self) -> nn.Module:
        if self.bound_model is None or self.config_list is None:
            raise PrunerError(
                f"{type(self).__name__} is not bound to a model and config_list "
                f"(model={'None' if self.bound_model is None else 'set'}, "
                f"config_list={self.config_list!r}): call reset(model, config_list) first"
            )
        return self.bound_model

    # ------------------------------------------------------------------- masks
    def load_masks(self, masks: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Hold ``masks`` on the bound model (replacing held masks of those modules)."""
        model = self._require_bound()
        masks = _clone_masks(masks)
        for name, per in masks.items():
            self._masks[name] = dict(per)
        wrap_model(model, masks)

    def get_masks(self) -> Masks:
        """The masks the pruner holds now (loaded and computed), keyed by module name."""
        return _clone_masks(self._masks)

    def get_modules_wrapper(self) -> dict[str, nn.Module]:
        """The selected modules by name (NNI returned wrappers; here they are the modules)."""
        model = self._require_bound()
        modules = dict(model.named_modules())
        return {n: modules[n] for e in self._entries for n in e.module_names}

    def _wrap_model(self) -> None:
        """Hold the current masks on the bound model (hooks; classes and names kept)."""
        model = self._require_bound()
        if self._masks:
            wrap_model(model, self._masks)

    def _unwrap_model(self) -> None:
        """Remove the mask hooks; the weights keep their zeros, the masks stay known."""
        if self.bound_model is not None:
            unwrap_model(self.bound_model)

    def unwrap_model(self) -> None:
        """Public alias of :meth:`_unwrap_model` (NNI scripts call either)."""
        self._unwrap_model()

    def show_pruned_weights(self, dim: int = 0) -> dict[str, tuple[int, int]]:
        """Log ``remain/total`` units along ``dim`` for every masked layer (NNI's format)."""
        model = self._require_bound()
        out = {}
        current = held_masks(model) or self._masks
        for name, per in current.items():
            mask = per.get("weight")
            if mask is None:
                continue
            if mask.dim() == 1:
                remain = int((mask != 0).sum())
                total = mask.numel()
            else:
                other = [d for d in range(mask.dim()) if d != dim]
                remain = int((mask.abs().sum(other) != 0).sum())
                total = mask.size(dim)
            logger.info("simulated prune %s remain/total: %d/%d", name, remain, total)
            out[name] = (remain, total)
        return out

    # --------------------------------------------------------------- compress
    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute masks for the selected modules, merge with held masks, wrap, return."""
        model = self._require_bound()
        modules = dict(model.named_modules())
        names = [n for e in self._entries for n in e.module_names]
        self._before_importance(model, names)
        metrics = {}
        for name in names:
            metric = self._importance(name, modules[name]).detach().float()
            pruned_before = self._pruned_units(name, modules[name])
            if pruned_before is not None and bool(pruned_before.any()):
                metric = torch.where(pruned_before.to(metric.device), float("-inf"), metric)
            metrics[name] = metric
        keeps = self._allocate(model, metrics)
        new_masks = {name: self._expand(modules[name], keep) for name, keep in keeps.items()}
        self._masks = merge_masks(self._masks, new_masks)
        wrap_model(model, self._masks)
        return model, self.get_masks()

    def _before_importance(self, model: nn.Module, names: list[str]) -> None:
        """Hook for statistics pruners: run the trainer and collect what they need."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        """Metric per unit (higher = more important), computed on masked weights."""
        raise NotImplementedError

    def _masked(self, name: str, module: nn.Module, pname: str = "weight") -> Tensor:
        """The module's tensor ``pname`` times its held mask (the weights as pruned)."""
        param = getattr(module, pname).detach()
        mask = self._masks.get(name, {}).get(pname)
        return param if mask is None else param * mask.to(param.device, param.dtype)

    def _pruned_units(self, name: str, module: nn.Module) -> Tensor | None:
        """Bool per unit: already fully masked (such units are pruned first)."""
        mask = self._masks.get(name, {}).get("weight")
        if mask is None:
            return None
        if not self.channel_wise or mask.dim() == 1:
            return mask == 0
        return mask.reshape(mask.size(0), -1).abs().sum(1) == 0

    def _unit_size(self, module: nn.Module) -> int:
        """Weight elements one unit masks (for global mode's element counting)."""
        weight = module.weight
        if not self.channel_wise or weight.dim() == 1:
            return 1
        return weight[0].numel()

    def _sparsities(self) -> dict[str, float]:
        return {n: e.total_sparsity for e in self._entries for n in e.module_names}

    def _allocate(self, model: nn.Module, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keep mask per unit for every selected layer, by mode.

        ``_layer_scores`` / ``_group_score_fn`` (channel pruners' group importance) and
        ``round_to`` are hooks that leave NNI's allocation untouched at their defaults.
        """
        if self.mode == "global":
            modules = dict(model.named_modules())
            metrics = self._layer_scores(model, metrics)
            keeps: dict[str, Tensor] = {}
            for entry in self._entries:
                sub = {n: metrics[n] for n in entry.module_names}
                keeps.update(
                    allocation.global_allocation(
                        sub,
                        {n: self._unit_size(modules[n]) for n in sub},
                        entry.total_sparsity,
                        {n: entry.cap(n) for n in sub},
                    )
                )
            return allocation.round_keeps(keeps, metrics, self.round_to)
        if self.mode == "dependency_aware":
            from tune_prune.pruning.dependency import channel_groups

            groups = channel_groups(model, self.dummy_input, list(metrics))
            return allocation.dependency_allocation(
                metrics,
                self._sparsities(),
                groups,
                round_to=self.round_to,
                group_score=self._group_score_fn(model, metrics),
            )
        metrics = self._layer_scores(model, metrics)
        return allocation.normal_allocation(metrics, self._sparsities(), round_to=self.round_to)

    def _layer_scores(self, model: nn.Module, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Metrics the normal and global modes rank (default: the importance as is)."""
        return metrics

    def _group_score_fn(self, model: nn.Module, metrics: dict[str, Tensor]) -> Any:
        """``group_score`` for dependency-aware mode (None: NNI's sum of member metrics)."""
        return None

    def _expand(self, module: nn.Module, keep: Tensor) -> dict[str, Tensor]:
        """Turn a unit keep mask into weight-shaped (and bias-shaped) 0/1 masks."""
        weight = module.weight
        keep = keep.to(device=weight.device, dtype=weight.dtype)
        if not self.channel_wise:
            return {"weight": keep.reshape(weight.shape)}
        shape = (-1,) + (1,) * (weight.dim() - 1)
        out = {"weight": keep.reshape(shape).expand_as(weight).clone()}
        bias = getattr(module, "bias", None)
        if isinstance(bias, Tensor):
            out["bias"] = keep.reshape(-1).clone()
        return out

    def __repr__(self) -> str:
        bound = type(self.bound_model).__name__ if self.bound_model is not None else None
        return f"{type(self).__name__}(mode={self.mode!r}, model={bound})"
