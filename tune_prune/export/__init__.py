"""Save and load pruned models without pickles: one folder format, one save/load pair.

- :func:`save_pruned` / :func:`load_pruned`: write a pruned model (state dict, masks,
  ``spec.json`` with its speedup history) atomically, and read back any pruned-model
  folder tune_prune writes or wrote: exports, a search iteration's ``result/``, a task
  generator's ``best_result/``, a scheduler's saved state, tune_prune 0.1's layouts.
  The format is described in :mod:`tune_prune.export.folder`.
- :func:`export_model`: :func:`save_pruned` plus ``model.onnx`` (when the ONNX export
  works) and the workload name that lets :func:`load` rebuild the model untold.
- :func:`load`: :func:`load_pruned`'s model (eval mode).

An export directory holds:

- ``model.pt``     the (sped-up) model's state dict, loadable with ``weights_only=True``;
- ``masks.pt``     masks still held on the compact model (``{}`` when all were removed);
- ``spec.json``    format_version, workload, workload options, schedule config, metrics,
                   and the speedup history that rebuilds the compact architecture from
                   the original;
- ``model.onnx``   the same model for runtimes outside PyTorch (when ONNX export works).

Writes are atomic (:mod:`tune_prune.atomic`): files go to a temporary sibling directory
that is renamed into place. Replacing an existing export takes two renames (old export
aside, new one in); if the second fails the old export is renamed back, and if the
process dies between the two, the next ``export_model``, ``save_pruned``, ``load`` or
``load_pruned`` of that directory puts the old export back first (:func:`recover`). A
half-written export is never at ``DIR``; every malformed directory makes ``load`` raise
ExportError (never another exception).

Note: ``load`` imports the workload the spec names; for a ``module:factory`` spec that
runs that factory, so load exports only from sources you trust as you would code.

Command line::

    python -m tune_prune.export EXPERIMENT_DIR OUT_DIR
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.errors import ExportError
from tune_prune.export.folder import (
    FORMAT_VERSION,
    MASKS_FILE,
    ONNX_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    PrunedFolderError,
    PrunedModel,
    is_pruned_folder,
    load_pruned,
    read_spec,
    recover,
    save_pruned,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "MASKS_FILE",
    "ONNX_FILE",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ExportError",
    "PrunedFolderError",
    "PrunedModel",
    "export_model",
    "is_pruned_folder",
    "load",
    "load_pruned",
    "read_spec",
    "recover",
    "save_pruned",
]


def export_model(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    *,
    workload: str,
    workload_options: Mapping[str, Any] | None = None,
    masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    history: Any = None,
    dummy_input: torch.Tensor | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    onnx: bool = True,
) -> Path:
    """Write ``model`` (unwrapped) and its description to ``out_dir`` atomically.

    :func:`save_pruned` with a required ``workload`` name and, when ``onnx`` and
    ``dummy_input`` are given, a ``model.onnx``. ``history`` defaults to the speedup
    history ``model`` carries. ``model`` itself is not changed.
    """
    out = save_pruned(
        out_dir, model, masks, workload=workload, workload_options=workload_options, config=config,
        metrics=metrics, history=history, dummy_input=dummy_input if onnx else None,
    )
    logger.info("exported pruned model to %s", out)
    return out


def load(export_dir: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the exported model (eval mode) with weights_only loading only.

    Alias of ``load_pruned(export_dir).model``: reads every folder :func:`load_pruned`
    reads whose ``spec.json`` names its workload (exports, a search iteration's
    ``result/``). Raises ExportError for any malformed directory.
    """
    return load_pruned(export_dir).model
