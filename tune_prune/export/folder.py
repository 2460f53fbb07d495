"""The one on-disk format of a pruned model: :func:`save_pruned` writes it, :func:`load_pruned` reads it.

Every pruned model tune_prune writes as a folder of its own (an export, each search
iteration's ``result/``) is this format, written whole and atomically (a temp sibling
renamed into place, :func:`tune_prune.atomic.atomic_dir`)::

    DIR/
      model.pt     the model's state dict: tensors only, torch.load(weights_only=True);
                   a physically shrunk (sped-up) model's compact tensors
      masks.pt     {module name: {"weight" | "bias": 0/1 tensor}}, the masks still to
                   hold on that model ({} after a full speedup)
      spec.json    {"format_version": 2,
                    "workload": "digits" | "module:factory" | null,
                    "workload_options": {...},  # keyword arguments of the workload
                    "speedup_history": [...],   # channel removals, replayed in order on
                                                # the original architecture ([]: none)
                    "config": {...},            # how it was pruned (schedule, pruner, ...)
                    "metrics": {...},           # what was measured (score, sparsity, ...)
                    "torch_version": "...",
                    "onnx": "model.onnx" | null}
      model.onnx   exports only, when the ONNX export worked

Never a pickled module: loading builds the original architecture (the workload that
``spec.json`` names, or the architecture the caller passes), replays the speedup
history, loads the tensors with ``weights_only=True`` and multiplies the weights by
the masks once. A folder holding a pickled object instead of tensors is refused.

:func:`load_pruned` also reads every folder tune_prune 0.1 wrote (all read as
``format_version`` 1; their JSON has no such field, or 1):

- an export: the same three files (``masks.pt`` optional), ``spec.json`` with
  ``"format_version": 1``;
- a search iteration's ``result/``: ``model_state_dict.pth``, ``masks.pth``,
  ``speedup_history.json``, ``result.json`` (the trial config and metrics);
- a task generator's ``log_dir/<timestamp>/best_result`` and ``origin``, which the
  generator still writes in NNI's layout: the same files plus ``config_list.json``
  (``speedup_history.json`` only for a sped-up model); and
  ``intermediate_result/<task_id>``: ``compact_model_state_dict.pth``,
  ``compact_model_masks.pth``, ...;
- a ``PruningScheduler.save_state`` folder: its best result;
- a folder holding one of those: a search checkpoint (its ``result/``) or a generator's
  ``log_dir/<timestamp>`` (its ``best_result/``).

Those have no workload name: pass the architecture (``load_pruned(DIR, workload)``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.atomic import atomic_dir, recover_dir, write_file
from tune_prune.errors import ConfigError, ExportError, TunePruneError
from tune_prune.pruning.masks import Masks, apply_masks, check_masks, masks_to
from tune_prune.pruning.speedup import rebuild_compact_model
from tune_prune.pruning.tools._io import model_history, set_model_history, to_jsonable
from tune_prune.workloads import get_workload

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: Versions :func:`load_pruned` reads (1: tune_prune 0.1's folders).
READS_VERSIONS = (1, 2)
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.pt"
MASKS_FILE = "masks.pt"
ONNX_FILE = "model.onnx"

# Layouts of tune_prune 0.1 (read only).
V1_STATE_FILE = "model_state_dict.pth"
V1_MASKS_FILE = "masks.pth"
V1_HISTORY_FILE = "speedup_history.json"
V1_META_FILE = "result.json"
V1_CONFIG_LIST_FILE = "config_list.json"
V1_TASK_STATE_FILE = "compact_model_state_dict.pth"
V1_TASK_MASKS_FILE = "compact_model_masks.pth"
SCHEDULER_FILES = ("scheduler.json", "generator.json", "tensors.pth")
#: The file that tells each layout apart, in the order :func:`load_pruned` tries them.
_MARKERS = (SPEC_FILE, V1_STATE_FILE, V1_TASK_STATE_FILE, SCHEDULER_FILES[0])
#: Sub-folders that hold the model of a folder that is not one: a search checkpoint,
#: a task generator's run folder.
_HOLDERS = ("result", "best_result")

PathLike = str | os.PathLike[str]
#: What builds the original (uncompressed) architecture: a module (copied, never
#: changed), a workload (its ``build_model()``) or a callable returning a module.
Architecture = nn.Module | Any | Callable[[], nn.Module]


class PrunedFolderError(ExportError, ValueError):
    """A pruned-model folder is missing, incomplete, foreign or cannot be read safely."""


@dataclass
class PrunedModel:
    """What :func:`load_pruned` read: the model (eval mode, CPU), its masks and its JSON.

    ``spec`` has the fields of ``spec.json`` (``format_version`` 1 for older folders,
    whose metadata is mapped onto ``config``/``metrics``); ``layout`` names the folder
    kind it came from (``"pruned"``, ``"result_v1"``, ``"task_v1"``, ``"scheduler"``).
    """

    model: nn.Module
    masks: Masks
    spec: dict[str, Any]
    layout: str = "pruned"

    @property
    def history(self) -> list[Any]:
        """The speedup history replayed to rebuild :attr:`model` (``[]``: original shape)."""
        return list(self.spec.get("speedup_history") or [])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.spec.get("config") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.spec.get("metrics") or {})

    @property
    def meta(self) -> dict[str, Any]:
        """``config`` and ``metrics`` in one dict (metrics win on a shared key)."""
        return {**self.config, **self.metrics}


# ----------------------------------------------------------------------------- writing


def _complete(folder: Path) -> bool:
    return (folder / SPEC_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def recover(directory: PathLike) -> bool:
    """Put back a pruned-model folder left aside by a replacement that died between its
    two renames (see :mod:`tune_prune.atomic`). True when it was restored."""
    return recover_dir(directory, _complete)


def is_pruned_folder(directory: PathLike) -> bool:
    """True when ``directory`` holds a layout :func:`load_pruned` reads (no file is opened)."""
    folder = Path(directory)
    if any((folder / name).is_file() for name in _MARKERS):
        return True
    return any(is_pruned_folder(folder / sub) for sub in _HOLDERS if (folder / sub).is_dir())


def _replaceable(folder: Path) -> bool:
    """A pruned-model folder of its own (this format or 0.1's result/): save_pruned may replace it."""
    return (folder / SPEC_FILE).is_file() or (folder / V1_STATE_FILE).is_file()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and scalars
        return obj.tolist()
    return str(obj)


def _history_list(history: Any) -> list[Any]:
    if history is None:
        return []
    if isinstance(history, Mapping):  # one speedup's history
        return [to_jsonable(history)]
    if isinstance(history, (list, tuple)):
        return to_jsonable(list(history))
    raise ConfigError(f"history must be a list of speedup histories, got {type(history).__name__}")


def save_pruned(
    directory: PathLike,
    model: nn.Module,
    masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    *,
    workload: str | None = None,
    workload_options: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    history: Any = None,
    dummy_input: torch.Tensor | None = None,
) -> Path:
    """Write ``model`` and ``masks`` to ``directory`` in the one format, atomically.

    ``history`` defaults to the speedup history ``model`` carries (the scheduler's
    compact models do); ``workload``/``workload_options`` let :func:`load_pruned` rebuild
    the architecture without being told. With ``dummy_input`` a ``model.onnx`` is added
    (best effort). ``model`` is not changed (not moved, not switched to eval mode).

    An existing pruned-model folder is replaced whole; a non-empty folder that is not
    one raises :class:`PrunedFolderError` and is left alone. A crash or exception while
    writing leaves the previous folder in place and no temp folder behind.
    """
    out = Path(directory)
    recover(out)
    if out.exists() and not out.is_dir():
        raise PrunedFolderError(f"{str(out)!r} is a file, not a folder: refusing to overwrite it")
    if out.is_dir() and any(out.iterdir()) and not _replaceable(out):
        raise PrunedFolderError(
            f"folder {str(out)!r} exists, is not empty and holds no {SPEC_FILE}: refusing to overwrite it"
        )
    if workload is not None and not isinstance(workload, str):
        raise ConfigError(f"workload must be a workload name (str) or None, got {workload!r}")
    masks = masks_to({n: dict(per) for n, per in (masks or {}).items()}, "cpu")
    check_masks(model, masks)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    spec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "workload": workload,
        "workload_options": dict(workload_options or {}),
        "speedup_history": _history_list(model_history(model) if history is None else history),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "torch_version": torch.__version__,
        "onnx": None,
    }
    with atomic_dir(out, complete=_complete) as tmp:
        write_file(tmp / WEIGHTS_FILE, lambda fh: torch.save(state, fh))
        write_file(tmp / MASKS_FILE, lambda fh: torch.save(masks, fh))
        if dummy_input is not None:
            spec["onnx"] = _export_onnx(model, dummy_input, tmp / ONNX_FILE)
        text = json.dumps(spec, indent=2, default=_json_default)
        write_file(tmp / SPEC_FILE, lambda fh: fh.write(text), "w")
    return out


def _export_onnx(model: nn.Module, dummy_input: torch.Tensor, path: Path) -> str | None:
    """Best effort: an ONNX file is a convenience, never a reason to lose the folder."""
    try:
        copy_ = copy.deepcopy(model).cpu().eval()
        # the batch dimension stays free: a runtime may feed any batch size, not only the dummy's
        torch.onnx.export(copy_, (dummy_input.cpu(),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          dynamo=False)
        return ONNX_FILE
    except Exception as err:  # noqa: BLE001 - report and go on without the ONNX file
        logger.warning("ONNX export failed (%s); the state dict export is complete", err)
        if path.exists():
            path.unlink()
        return None


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8 at all
        raise PrunedFolderError(f"{str(path)!r} is not valid JSON: {err}") from None


def _where(folder: Path) -> str:
    return f"pruned-model folder {str(folder)!r}"


def read_spec(directory: PathLike) -> dict[str, Any]:
    """The validated ``spec.json`` of a folder in the one format (or a 0.1 export).

    ``format_version`` is filled in (1 when absent). Raises :class:`PrunedFolderError`
    naming the field when the folder or its JSON is not one tune_prune can read.
    """
    folder = Path(directory)
    recover(folder)
    if not folder.is_dir():
        raise PrunedFolderError(f"{_where(folder)} does not exist")
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise PrunedFolderError(f"{_where(folder)} has no {name}")
    path = folder / SPEC_FILE
    spec = _read_json(path)
    if not isinstance(spec, dict):
        raise PrunedFolderError(f"{str(path)!r}: not a JSON object")
    version = spec.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise PrunedFolderError(f"{str(path)!r}: field 'format_version' is not an integer: {version!r}")
    if version not in READS_VERSIONS:
        newer = " (written by a newer tune_prune)" if version > FORMAT_VERSION else ""
        raise PrunedFolderError(
            f"{str(path)!r}: format_version {version!r}{newer} is not one this tune_prune reads "
            f"({', '.join(map(str, READS_VERSIONS))})"
        )
    workload = spec.get("workload")
    if not isinstance(workload, str) and not (version >= 2 and workload is None):
        raise PrunedFolderError(f"{str(path)!r}: field 'workload' is missing or not a string: {workload!r}")
    options = spec.get("workload_options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise PrunedFolderError(f"{str(path)!r}: field 'workload_options' is not an object: {options!r}")
    history = spec.get("speedup_history")
    if history is not None and not isinstance(history, list):
        raise PrunedFolderError(f"{str(path)!r}: field 'speedup_history' is not a list: {history!r}")
    for key in ("config", "metrics"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise PrunedFolderError(f"{str(path)!r}: field {key!r} is not an object: {spec[key]!r}")
    return {**spec, "format_version": version}


@dataclass
class _Source:
    """One layout's files: the JSON (as spec fields) and how to get the tensors."""

    spec: dict[str, Any]
    layout: str
    state_name: str
    load_state: Callable[[], Any]
    masks_name: str
    load_masks: Callable[[], Any]


def _tensors(path: Path) -> Callable[[], Any]:
    return lambda: torch.load(path, map_location="cpu", weights_only=True)


def _v1_spec(folder: Path, metrics: Any, history_required: bool) -> dict[str, Any]:
    history_path = folder / V1_HISTORY_FILE
    if history_path.is_file():
        history = _read_json(history_path)
    elif history_required:
        raise PrunedFolderError(f"{_where(folder)} has no {V1_HISTORY_FILE}")
    else:
        history = []  # the generator writes it only for a sped-up model
    if not isinstance(history, list):
        raise PrunedFolderError(f"{str(history_path)!r}: not a list: {history!r}")
    if not isinstance(metrics, dict):
        raise PrunedFolderError(f"{str(folder / V1_META_FILE)!r}: not a JSON object")
    config: dict[str, Any] = {}
    if (folder / V1_CONFIG_LIST_FILE).is_file():
        config["config_list"] = _read_json(folder / V1_CONFIG_LIST_FILE)
    return {"format_version": 1, "workload": None, "workload_options": {}, "speedup_history": history,
            "config": config, "metrics": metrics}


def _source(folder: Path) -> _Source:
    """Which layout ``folder`` holds (the one format first, then 0.1's)."""
    if (folder / SPEC_FILE).is_file():
        spec = read_spec(folder)
        masks_path = folder / MASKS_FILE
        required = spec["format_version"] >= 2  # 0.1 exports could lack masks.pt

        def masks() -> Any:
            if not required and not masks_path.exists():
                return {}
            return torch.load(masks_path, map_location="cpu", weights_only=True)

        return _Source(spec, "pruned", WEIGHTS_FILE, _tensors(folder / WEIGHTS_FILE), MASKS_FILE, masks)
    meta_path = folder / V1_META_FILE
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if (folder / V1_STATE_FILE).is_file():  # a search iteration's result/, a generator snapshot
        # result/ always has the history file; best_result/ and origin/ have config_list.json.
        spec = _v1_spec(folder, meta, history_required=not (folder / V1_CONFIG_LIST_FILE).is_file())
        return _Source(spec, "result_v1", V1_STATE_FILE, _tensors(folder / V1_STATE_FILE),
                       V1_MASKS_FILE, _tensors(folder / V1_MASKS_FILE))
    if (folder / V1_TASK_STATE_FILE).is_file():  # a generator's intermediate_result/<task_id>
        spec = _v1_spec(folder, meta, history_required=False)
        return _Source(spec, "task_v1", V1_TASK_STATE_FILE, _tensors(folder / V1_TASK_STATE_FILE),
                       V1_TASK_MASKS_FILE, _tensors(folder / V1_TASK_MASKS_FILE))
    if (folder / SCHEDULER_FILES[0]).is_file():
        return _scheduler_source(folder)
    raise PrunedFolderError(
        f"{_where(folder)} holds no {SPEC_FILE} (nor any other pruned-model layout tune_prune writes)"
    )


def _scheduler_source(folder: Path) -> _Source:
    """The best result of a ``PruningScheduler.save_state`` folder."""
    generator = _read_json(folder / SCHEDULER_FILES[1])
    best = generator.get("best") if isinstance(generator, dict) else None
    if not isinstance(best, dict) or not isinstance(best.get("tensors"), str):
        raise PrunedFolderError(f"{_where(folder)}: the saved scheduler state holds no best result yet")
    key = best["tensors"]
    loaded: dict[str, Any] = {}

    def tensors() -> Any:
        if not loaded:
            value = torch.load(folder / SCHEDULER_FILES[2], map_location="cpu", weights_only=True)
            if not isinstance(value, Mapping):
                raise TypeError(f"holds a {type(value).__name__}, not a dict of tensors")
            loaded.update(value)
        return loaded

    history = best.get("history") or []
    if not isinstance(history, list):
        raise PrunedFolderError(f"{str(folder / SCHEDULER_FILES[1])!r}: best 'history' is not a list")
    spec = {"format_version": 1, "workload": None, "workload_options": {}, "speedup_history": history,
            "config": {"config_list": best.get("config_list")},
            "metrics": {"task_id": best.get("task_id"), "score": best.get("score")}}
    name = f"{SCHEDULER_FILES[2]}[{key}/...]"
    return _Source(spec, "scheduler", name, lambda: tensors()[f"{key}/model"],
                   name, lambda: tensors()[f"{key}/masks"])


def _architecture(spec: dict[str, Any], architecture: Architecture | None, folder: Path) -> nn.Module:
    if architecture is None:
        name = spec.get("workload")
        if not name:
            raise PrunedFolderError(
                f"{_where(folder)} names no workload to build the architecture from: "
                "pass it, load_pruned(DIR, architecture_or_workload)"
            )
        try:
            workload = get_workload(name, **spec.get("workload_options", {}))
        except TunePruneError as err:
            raise PrunedFolderError(f"{_where(folder)}: field 'workload'={name!r}: {err}") from None
        return workload.build_model()
    if isinstance(architecture, nn.Module):
        return copy.deepcopy(architecture)
    build = getattr(architecture, "build_model", None)
    model = build() if callable(build) else architecture() if callable(architecture) else None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            "architecture must be a torch.nn.Module, a workload or a callable returning a module, "
            f"got {type(architecture).__name__}"
        )
    return model


def _check_masks_type(masks: Any) -> None:
    if not isinstance(masks, Mapping) or not all(
        isinstance(per, Mapping) and all(isinstance(m, torch.Tensor) for m in per.values())
        for per in masks.values()
    ):
        raise TypeError(f"holds a {type(masks).__name__}, not {{module: {{tensor name: mask tensor}}}}")


def load_pruned(directory: PathLike, architecture: Architecture | None = None) -> PrunedModel:
    """Read any pruned-model folder tune_prune writes or wrote (see the module docstring).

    ``architecture`` builds the original, unpruned architecture: an ``nn.Module``
    (copied, never changed), a workload (``build_model()``) or a callable returning a
    module; None builds the workload ``spec.json`` names. The speedup history is
    replayed on it, the tensors loaded with ``weights_only=True`` and the weights
    multiplied by the masks once (hold them while training with ``wrap_model``).

    Every unreadable, truncated, foreign or inconsistent folder raises
    :class:`PrunedFolderError` (an ``ExportError``) naming the folder, file or field.
    """
    folder = Path(directory)
    recover(folder)
    if not folder.is_dir():
        raise PrunedFolderError(f"{_where(folder)} does not exist")
    if not _holds_model_itself(folder):
        for sub in _HOLDERS:  # a search checkpoint, a generator's run folder
            if is_pruned_folder(folder / sub):
                return load_pruned(folder / sub, architecture)
    source = _source(folder)
    spec = source.spec
    model = _architecture(spec, architecture, folder)
    history = list(spec.get("speedup_history") or [])
    if history:
        try:
            rebuild_compact_model(model, history)
        except Exception as err:  # noqa: BLE001 - any malformed history is the file's fault
            raise PrunedFolderError(
                f"{_where(folder)}: its speedup history does not rebuild the model: {type(err).__name__}: {err}"
            ) from None
        set_model_history(model, history)
    try:
        state = source.load_state()
        if not isinstance(state, Mapping):
            raise TypeError(f"holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - garbled, truncated, pickled or mismatched weights
        raise PrunedFolderError(
            f"cannot load the weights in {str(folder)!r} ({source.state_name}): {_describe(err)}"
        ) from None
    try:
        masks = source.load_masks()
        _check_masks_type(masks)
        masks = {str(n): dict(per) for n, per in masks.items()}
        apply_masks(model, masks)
    except Exception as err:  # noqa: BLE001 - garbled, missing, pickled or mismatched masks
        raise PrunedFolderError(f"{_where(folder)}: cannot apply {source.masks_name}: {_describe(err)}") from None
    return PrunedModel(model.eval(), masks, spec, source.layout)


def _describe(err: Exception) -> str:
    """The error, with torch's advice to unpickle (weights_only=False) replaced by what was refused."""
    if type(err).__name__ == "UnpicklingError":  # weights_only refused a pickled object
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"a pickled {found.group(1)}" if found else "pickled data that is not plain tensors"
        return (f"it holds {what}, not a state dict of tensors (a whole saved module?): tune_prune "
                "never writes one and refuses to unpickle it (torch.load with weights_only=True)")
    return f"{type(err).__name__}: {err}"


def _holds_model_itself(folder: Path) -> bool:
    """A folder of one of the layouts (or a broken export: model.pt without spec.json)."""
    return any((folder / name).is_file() for name in (*_MARKERS, WEIGHTS_FILE))
