"""Files and model snapshots of the iterative pruning loop, without pickles.

NNI pickled whole model objects with torch.save, which breaks on torch >= 2.6
(``weights_only`` loading) and for TorchScript models. tune_prune stores state dicts,
masks and JSON only, and rebuilds a physically shrunk model from the original
architecture plus the speedup history it carries (see :func:`model_history`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune import atomic
from tune_prune.pruning.speedup import rebuild_compact_model

_HISTORY_ATTR = "_tune_prune_speedup_history"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save tensors/dicts atomically (:func:`tune_prune.atomic.atomic_torch_save`)."""
    atomic.atomic_torch_save(obj, path)


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write :func:`to_jsonable` ``obj`` as JSON atomically (readable, diffable, never half written)."""
    atomic.atomic_write_json(to_jsonable(obj), path)


def read_json(path: str | os.PathLike[str]) -> Any:
    with Path(path).open() as f:
        return json.load(f)


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """Load a file written by :func:`atomic_torch_save` (weights_only: no code runs on load)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for config lists, task states and scores (numpy, tuples, tensors)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):  # numpy arrays
        return to_jsonable(obj.tolist())
    return str(obj)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict (safe to keep while the model trains on)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def model_history(model: nn.Module) -> list[Any]:
    """The cumulative speedup history a compact model carries (empty for an original-shape model).

    The scheduler appends each speedup's history here, so any copy of a compact model
    can be rebuilt from the original architecture with ``rebuild_compact_model``.
    """
    return list(getattr(model, _HISTORY_ATTR, None) or [])


def set_model_history(model: nn.Module, history: list[Any]) -> None:
    object.__setattr__(model, _HISTORY_ATTR, list(history))


def extend_history(previous: list[Any], new: Any) -> list[Any]:
    """Append one speedup's history (a list of steps, or one opaque step) to a cumulative list."""
    if new is None:
        return list(previous)
    if isinstance(new, list):
        return list(previous) + list(new)
    return list(previous) + [new]


def rebuild_model(origin_model: nn.Module, history: list[Any], state_dict: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """A fresh model of the right (possibly compact) shape, loaded with ``state_dict``."""
    model = copy.deepcopy(origin_model)
    if history:
        rebuild_compact_model(model, history)  # steps replayed in order
        set_model_history(model, history)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def timestamp_dir(root: str | os.PathLike[str]) -> Path:
    """A fresh ``root/<timestamp>`` directory (suffixed if two generators start in the same instant)."""
    base = Path(root).absolute() / datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
    path, n = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    path.mkdir(parents=True)
    return path
