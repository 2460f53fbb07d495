"""One pruned model on disk: the folder every iteration's result, checkpoint and export reads.

Why a folder of plain files: a compact (sped-up) model is not the original class with
other weights, it is the original architecture *after* a list of channel removals. So a
result stores the state dict, the masks, that speedup history (JSON) and its metrics
(JSON), never a pickled module; reading it back rebuilds the architecture from the
workload, replays the history and loads the tensors with ``weights_only=True``.

Layout: ``model_state_dict.pth``, ``masks.pth``, ``speedup_history.json`` (an empty list
means the original shape) and ``result.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.errors import TunePruneError
from tune_prune.pruning.masks import Masks, load_masks_file, save_masks
from tune_prune.pruning.tools._io import model_history, rebuild_model, to_jsonable

STATE_FILE = "model_state_dict.pth"
MASKS_FILE = "masks.pth"
HISTORY_FILE = "speedup_history.json"
META_FILE = "result.json"


@dataclass
class PrunedFiles:
    """The contents of a result folder, not yet turned into a model."""

    state_dict: dict[str, torch.Tensor]
    masks: Masks
    history: list[Any]
    meta: dict[str, Any]

    def model(self, architecture: nn.Module) -> nn.Module:
        """``architecture`` (a fresh original-shape model) shrunk by the history, weights loaded."""
        return rebuild_model(architecture, self.history, self.state_dict)


def save_pruned(directory: str | Path, model: nn.Module, masks: Masks, meta: dict[str, Any]) -> Path:
    """Write ``model`` (its state dict and the speedup history it carries), masks and ``meta``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / STATE_FILE)
    save_masks(masks, out / MASKS_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(to_jsonable(model_history(model))))
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out


class ResultFolderError(TunePruneError, ValueError):
    """A result folder is missing a file or holds one that cannot be read safely."""


def read_pruned(directory: str | Path) -> PrunedFiles:
    """The files of a result folder (tensors on CPU, ``weights_only=True``).

    Any missing, truncated or foreign file (a pickle that ``weights_only`` refuses
    included) raises :class:`ResultFolderError` naming the folder and the file.
    """
    folder = Path(directory)
    current = STATE_FILE
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        current = MASKS_FILE
        masks = load_masks_file(folder / MASKS_FILE)
        current = HISTORY_FILE
        history = json.loads((folder / HISTORY_FILE).read_text())
        current = META_FILE
        meta_path = folder / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    # Whatever a foreign or truncated file raises (OSError, EOFError, the UnpicklingError
    # of a pickle weights_only refuses, JSON errors, ...) becomes one named error.
    except Exception as exc:  # noqa: BLE001
        raise ResultFolderError(f"cannot read {current!r} of the pruned model in {str(folder)!r}: {exc}") from exc
    return PrunedFiles(state, masks, history, meta)
