"""FPGMPruner: prune the filters nearest the geometric median of a layer's filters."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tune_prune.pruning.pruners.norm import _ChannelPruner


class FPGMPruner(_ChannelPruner):
    """Metric of filter i: ``sum_j ||w_i - w_j||_2``; the smallest (most replaceable,
    closest to the geometric median) are pruned first (He et al., 2019; NNI's FPGM)."""

    def _importance(self, name: str, module: nn.Module) -> Tensor:
        return _distance_sums(self._filters(name, module))

    def _input_importance(self, rows: Tensor) -> Tensor:
        """``input_weights``: the same distance sum over the columns that read a channel."""
        return _distance_sums(rows)


def _distance_sums(rows: Tensor) -> Tensor:
    rows = rows.double()
    return (
        torch.cdist(rows, rows, p=2, compute_mode="donot_use_mm_for_euclid_dist").sum(1).float()
    )
