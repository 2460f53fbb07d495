"""L1NormPruner and L2NormPruner: output channels ranked by the norm of their filter.

Group importance (keywords of every norm-family channel pruner: L1, L2, FPGM; all off
by default, which is NNI 2.10's behaviour bit for bit):

- ``bn_scale=True``: a channel also scores the ``|gamma|`` of the BatchNorm(s) that
  normalise it (torch-pruning counts BatchNorm scales in its group importance too).
  After a BatchNorm the filter's norm says little: BN rescales the channel to
  ``gamma * z + beta`` whatever the filter's scale.
- ``input_weights=True``: a channel also scores the weights that *read* it, the input
  columns of the Conv/Linear layers it feeds (for a Linear after a flatten, all the
  features a channel becomes), measured with the pruner's own norm (L1, L2; FPGM: the
  distance sum over those columns). torch-pruning's group importance counts these
  "in-channel" weights; NNI's does not.
- ``normalizer``: how the terms (each selected coupled layer's metric, each BatchNorm's
  ``|gamma|``, each consumer's input-weight norms) are put on one scale before they are
  summed per channel: ``"none"`` (raw sum; NNI's rule when the other two are off, and
  with both on torch-pruning's ranking), ``"mean"`` or ``"max"`` (each term divided by
  its mean or maximum over the channels still alive, so no layer dominates a coupled
  group by the size of its weights). torch-pruning's ``normalizer`` divides the
  already-summed group score, which does not change a per-group ranking; this one
  normalises each term before summing.

In ``normal`` and ``global`` mode the terms of a layer are its own metric, the
BatchNorm fed only by it, and its readers; in ``dependency_aware`` mode those of every
selected member of the coupled group, every BatchNorm on the group's channels and
every reader of them. ``bn_scale`` and ``input_weights`` need ``dummy_input`` (the
graph is traced, once per architecture). Previously pruned channels stay ``-inf``.

``round_to`` (int >= 1): kept channels per layer (group) rounded down to a multiple,
never below ``min(round_to, n)``; see ``allocation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning.pruners.base import CHANNEL_TYPES, Pruner

CHANNEL_DEFAULT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")

#: Values of the channel pruners' ``normalizer`` keyword.
NORMALIZERS = ("none", "mean", "max")
#: The channel pruners' group-importance and width keywords with their defaults (NNI's).
CHANNEL_OPTION_DEFAULTS: dict[str, Any] = {
    "normalizer": "none",
    "bn_scale": False,
    "input_weights": False,
    "round_to": 1,
}


def check_channel_options(owner: str, **options: Any) -> dict[str, Any]:
    """Validated channel-pruner options (ConfigError naming the keyword and value)."""
    out = dict(CHANNEL_OPTION_DEFAULTS)
    for key, value in options.items():
        if key not in CHANNEL_OPTION_DEFAULTS:
            raise ConfigError(
                f"{owner}: unknown option {key!r} (known: {', '.join(CHANNEL_OPTION_DEFAULTS)})"
            )
        if key == "normalizer":
            value = "none" if value is None else value
            if not isinstance(value, str) or value not in NORMALIZERS:
                raise ConfigError(
                    f"{owner}: normalizer={value!r} is not supported "
                    f"(supported: {', '.join(NORMALIZERS)})"
                )
        elif key in ("bn_scale", "input_weights"):
            if not isinstance(value, bool):
                raise ConfigError(f"{owner}: {key}={value!r} must be true or false")
        elif key == "round_to":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{owner}: round_to={value!r} must be an integer >= 1")
        out[key] = value
    return out


class _ChannelPruner(Pruner):
    """Output-channel pruner over Conv1d/2d/3d and Linear (NNI's norm-pruner family)."""

    modes = ("normal", "global", "dependency_aware")
    kind = "channels"
    search_modes = modes
    prunable = CHANNEL_TYPES
    default_types = CHANNEL_DEFAULT_TYPES
    normalizer: str = "none"
    bn_scale: bool = False
    input_weights: bool = False

    def __init__(
        self,
        model: nn.Module | None = None,
        config_list: list[dict[str, Any]] | None = None,
        mode: str = "normal",
        dummy_input: Any = None,
        *,
        normalizer: str = "none",
        bn_scale: bool = False,
        input_weights: bool = False,
        round_to: int = 1,
    ) -> None:
        opts = check_channel_options(
            type(self).__name__,
            normalizer=normalizer,
            bn_scale=bn_scale,
            input_weights=input_weights,
            round_to=round_to,
        )
        self.normalizer = opts["normalizer"]
        self.bn_scale = opts["bn_scale"]
        self.input_weights = opts["input_weights"]
        self.round_to = opts["round_to"]
        super().__init__(model, config_list, mode=mode, dummy_input=dummy_input)

    def _validate(self) -> None:
        super()._validate()
        if (self.bn_scale or self.input_weights) and self.dummy_input is None:
            used = [k for k in ("bn_scale", "input_weights") if getattr(self, k)]
            raise PrunerError(
                f"{type(self).__name__}: {' and '.join(f'{k}=True' for k in used)} needs "
                "dummy_input (an example input to trace which BatchNorms and layers "
                "follow each channel), got None"
            )

    def _filters(self, name: str, module: nn.Module) -> Tensor:
        """The masked weight as one row per output channel (bias not counted)."""
        weight = self._masked(name, module)
        return weight.reshape(weight.size(0), -1).float()

    # ------------------------------------------------------------ group importance
    def _group_importance(self) -> bool:
        return self.normalizer != "none" or self.bn_scale or self.input_weights

    def _input_importance(self, rows: Tensor) -> Tensor:
        """Score per channel of the weights that read it, one row per channel (L1)."""
        return rows.abs().sum(1)

    def _reader_rows(self, name: str, module: nn.Module) -> Tensor:
        """The masked weight as one row per *input* channel (input feature for Linear)."""
        w = self._masked(name, module).detach().float()
        if isinstance(module, nn.Linear):
            return w.t()
        if getattr(module, "transposed", False):
            return w.reshape(w.size(0), -1)
        groups = module.groups
        if groups == 1:
            return w.transpose(0, 1).reshape(w.size(1), -1)
        out_per, in_per = w.size(0) // groups, w.size(1)
        blocks = w.reshape(groups, out_per, in_per, -1).permute(0, 2, 1, 3)
        return blocks.reshape(groups * in_per, -1)

    def _terms(
        self,
        modules: Mapping[str, nn.Module],
        own: Mapping[str, tuple[Tensor, Tensor]],
        bns: Mapping[str, tuple[Any, Any]],
        readers: Mapping[str, tuple[Any, Any]],
        size: int,
    ) -> Tensor:
        """Fused score over ``size`` channels: ``own[name] = (metric, channels)`` plus
        BatchNorm and reader terms given as ``(own indices, channels)``."""
        terms: list[tuple[Tensor, Tensor]] = [
            (m.detach().to("cpu", torch.float64).flatten(), ch) for m, ch in own.values()
        ]
        fused_own = torch.zeros(size, dtype=torch.float64)
        for values, ch in terms:
            fused_own.index_add_(0, ch, values)
        alive = torch.isfinite(fused_own)
        if self.bn_scale:
            for bn_name, (idx, ch) in bns.items():
                bn = modules[bn_name]
                if getattr(bn, "weight", None) is None:
                    continue
                gamma = bn.weight.detach().to("cpu", torch.float64).abs()
                terms.append((gamma[torch.as_tensor(idx, dtype=torch.long)], _long(ch)))
        if self.input_weights:
            for reader, (idx, ch) in readers.items():
                rows = self._reader_rows(reader, modules[reader])[torch.as_tensor(idx)]
                values, chans = _per_channel(rows, _long(ch), self._input_importance)
                terms.append((values.to(torch.float64), chans))
        total = torch.zeros(size, dtype=torch.float64)
        for values, ch in terms:
            total.index_add_(0, ch, values / self._scale(values, alive[ch]))
        return total

    def _scale(self, values: Tensor, alive: Tensor) -> float:
        if self.normalizer == "none":
            return 1.0
        live = values[alive & torch.isfinite(values)]
        if live.numel() == 0:
            return 1.0
        scale = float(live.mean() if self.normalizer == "mean" else live.max())
        return scale if scale > 0 else 1.0

    def _layer_scores(self, model: nn.Module, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self._group_importance():
            return metrics
        groups: dict[str, Any] = {}
        following: dict[str, str] = {}
        if self.bn_scale or self.input_weights:
            from tune_prune.pruning.dependency import channel_groups, following_batchnorms

            for g in channel_groups(model, self.dummy_input, list(metrics)):
                for member in g.members:
                    groups[member] = g
            following = following_batchnorms(model, self.dummy_input)
        modules = dict(model.named_modules())
        out = {}
        for name, metric in metrics.items():
            n = metric.numel()
            own = {name: (metric, torch.arange(n))}
            bns, readers = {}, {}
            if name in following:
                bns = {following[name]: (list(range(n)), list(range(n)))}
            group = groups.get(name)
            if group is not None and self.input_weights:
                inverse = {g: k for k, g in enumerate(group.members[name])}
                for reader, (idx, ch) in group.consumers.items():
                    pairs = [(i, inverse[c]) for i, c in zip(idx, ch) if c in inverse]
                    if pairs:
                        readers[reader] = ([i for i, _ in pairs], [k for _, k in pairs])
            fused = self._terms(modules, own, bns, readers, n)
            out[name] = fused.to(metric.device).view(metric.shape)
        return out

    def _group_score_fn(
        self, model: nn.Module, metrics: dict[str, Tensor]
    ) -> Callable[[Any, list[str]], Tensor] | None:
        if not self._group_importance():
            return None
        modules = dict(model.named_modules())

        def score(group: Any, selected: list[str]) -> Tensor:
            own = {n: (metrics[n], _long(group.members[n])) for n in selected}
            return self._terms(
                modules,
                own,
                group.batchnorms if self.bn_scale else {},
                group.consumers if self.input_weights else {},
                group.num_channels,
            )

        return score


def _long(values: Any) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long)


def _per_channel(
    rows: Tensor, channels: Tensor, score: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Score the reader rows per channel: rows reading the same channel (a Linear after a
    flatten reads one channel as several features) are concatenated first."""
    unique, inverse, counts = torch.unique(channels, return_inverse=True, return_counts=True)
    if bool((counts == counts[0]).all()):
        order = torch.argsort(inverse, stable=True)
        return score(rows[order].reshape(unique.numel(), -1)), unique
    width = int(counts.max()) * rows.size(1)
    stacked = rows.new_zeros(unique.numel(), width)
    fill = [0] * unique.numel()
    for row, slot in zip(rows, inverse.tolist()):
        stacked[slot, fill[slot] : fill[slot] + rows.size(1)] = row
        fill[slot] += rows.size(1)
    return score(stacked), unique


class L1NormPruner(_ChannelPruner):
    """Prune output channels whose filter has the smallest L1 norm ``sum |w|``."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._filters(name, module).abs().sum(1)


class L2NormPruner(_ChannelPruner):
    """Prune output channels whose filter has the smallest L2 (Euclidean) norm."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return self._filters(name, module).norm(p=2, dim=1)

    def _input_importance(self, rows: Tensor) -> Tensor:
        return rows.norm(p=2, dim=1)
