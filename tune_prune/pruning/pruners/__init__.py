"""NNI 2.10 pruning-v2 pruners: importance (per pruner) apart from allocation (by mode).

Each pruner file defines only how a unit is scored (``_importance``); ``allocation``
decides how many units to cut and where (normal, global, dependency_aware, balance);
``base.Pruner`` holds the NNI contract (reset/compress/load_masks/unwrap).

Where tune_prune differs from NNI 2.10 on purpose:

- ``compress()`` returns the cumulative masks of every masked module, including loaded
  masks of modules the current config_list does not select (NNI returned only the
  selected ones, so a scheduler could drop earlier masks).
- global mode: where a per-layer cap stops a layer, the next-lowest units elsewhere
  are pruned so the total is met; ties at the threshold are broken by a stable sort
  (NNI prunes every unit equal to the threshold and leaves the total short at caps).
- statistics pruners stop the trainer after ``training_batches`` forward passes
  (NNI 2.10 ran the whole epoch and recorded the first batches); see ``training``.
- ``op_types: ["default"]`` means the pruner's own prunable types (Conv/Linear for
  channel pruners, BatchNorm for Slim), so a model with Embeddings still works.
- activation statistics of a Linear use its last dim as the channel dim.
- dependency_aware couples a depthwise conv with its producer channel by channel
  (torch-pruning's graph) instead of NNI's count-only group constraint.

Additions NNI does not have, all off by default (then every mask is NNI's): the norm
channel pruners (L1, L2, FPGM) take ``normalizer`` ("none" | "mean" | "max"),
``bn_scale`` and ``input_weights`` (group importance: what a channel is scored by, see
``norm``) and ``round_to`` (kept channels per layer or group a multiple of it, never
zero; see ``allocation``). ``bn_scale=True, input_weights=True`` ranks channels exactly
as torch-pruning's ``MagnitudeImportance`` does.
"""

from tune_prune.pruning.pruners.activation import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
)
from tune_prune.pruning.pruners.base import Pruner
from tune_prune.pruning.pruners.fpgm import FPGMPruner
from tune_prune.pruning.pruners.level import LevelPruner
from tune_prune.pruning.pruners.norm import L1NormPruner, L2NormPruner
from tune_prune.pruning.pruners.registry import PRUNERS, get_pruner_class
from tune_prune.pruning.pruners.slim import SlimPruner
from tune_prune.pruning.pruners.taylor import TaylorFOWeightPruner
from tune_prune.pruning.pruners.training import trace

__all__ = [
    "PRUNERS",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "Pruner",
    "SlimPruner",
    "TaylorFOWeightPruner",
    "get_pruner_class",
    "trace",
]
