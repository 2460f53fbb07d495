"""Export a pruned model so it reloads without tune_prune's pickles, and load it back.

An export directory holds:

- ``model.pt``     the (sped-up) model's state dict, loadable with ``weights_only=True``;
- ``masks.pt``     masks still held on the compact model (``{}`` when all were removed);
- ``spec.json``    workload, schedule config, metrics, sparsity, and the speedup
                   history that rebuilds the compact architecture from the original;
- ``model.onnx``   the same model for runtimes outside PyTorch (when ONNX export works).

``load(DIR)`` rebuilds the architecture from the workload named in the spec, replays
the speedup history, and loads the weights with ``weights_only=True``. Writes are
atomic: files go to a temporary sibling directory that is renamed into place. Replacing
an existing export takes two renames (old export aside, new one in); if the second
fails the old export is renamed back, and if the process dies between the two, the
next ``export_model`` or ``load`` of that directory puts the old export back first
(:func:`recover`). A half-written export is never at ``DIR``; every malformed export
directory makes ``load`` raise ExportError (never another exception).

Note: ``load`` imports the workload the spec names; for a ``module:factory`` spec that
runs that factory, so load exports only from sources you trust as you would code.

Command line::

    python -m tune_prune.export EXPERIMENT_DIR OUT_DIR
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.errors import ExportError, TunePruneError

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.pt"
MASKS_FILE = "masks.pt"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1


def _atomic_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))


def _old_of(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def recover(out_dir: str | os.PathLike[str]) -> bool:
    """Put back an export left aside by a replacement that died between its two renames.

    Returns True when ``out_dir`` was missing and its complete predecessor was restored.
    """
    out = Path(out_dir)
    old = _old_of(out)
    if not out.exists() and (old / SPEC_FILE).is_file() and (old / WEIGHTS_FILE).is_file():
        os.replace(old, out)
        logger.warning("restored the previous export %s (an export was interrupted)", out)
        return True
    return False


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished temp directory into place; an existing export is replaced whole."""
    recover(out_dir)
    if out_dir.exists():
        if not (out_dir / SPEC_FILE).exists() and any(out_dir.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ExportError(
                f"export directory {str(out_dir)!r} exists, is not empty and holds no "
                f"{SPEC_FILE}: refusing to overwrite it"
            )
        old = _old_of(out_dir)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)  # roll back: the previous export stays in place
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


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
    """Write ``model`` (unwrapped) and its description to ``out_dir`` atomically."""
    out = Path(out_dir)
    recover(out)
    tmp = _atomic_dir(out)
    try:
        model = model.cpu().eval()
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        torch.save(
            {n: {p: t.detach().cpu() for p, t in per.items()} for n, per in (masks or {}).items()},
            tmp / MASKS_FILE,
        )
        spec: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "workload": workload,
            "workload_options": dict(workload_options or {}),
            "speedup_history": history,
            "config": dict(config or {}),
            "metrics": dict(metrics or {}),
            "torch_version": torch.__version__,
            "onnx": None,
        }
        if onnx and dummy_input is not None:
            spec["onnx"] = _export_onnx(model, dummy_input.cpu(), tmp / ONNX_FILE)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2, default=str))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported pruned model to %s", out)
    return out


def _export_onnx(model: nn.Module, dummy_input: torch.Tensor, path: Path) -> str | None:
    """Best effort: an ONNX file is a convenience, never a reason to lose the export."""
    try:
        torch.onnx.export(model, (dummy_input,), str(path), input_names=["input"],
                          output_names=["output"], dynamo=False)
        return ONNX_FILE
    except Exception as err:  # noqa: BLE001 - report and go on without the ONNX file
        logger.warning("ONNX export failed (%s); the state dict export is complete", err)
        if path.exists():
            path.unlink()
        return None


def read_spec(export_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The export's JSON spec, with a clear error when the directory is not an export."""
    directory = Path(export_dir)
    spec_path = directory / SPEC_FILE
    recover(directory)
    if not directory.is_dir():
        raise ExportError(f"export directory {str(directory)!r} does not exist")
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ExportError(f"export directory {str(directory)!r} has no {name}")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8 at all
        raise ExportError(f"{str(spec_path)!r} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("workload"), str):
        raise ExportError(f"{str(spec_path)!r}: field 'workload' is missing or not a string")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{str(spec_path)!r}: format_version {spec.get('format_version')!r} is not "
            f"{FORMAT_VERSION}"
        )
    options = spec.get("workload_options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ExportError(f"{str(spec_path)!r}: field 'workload_options' is not an object: {options!r}")
    history = spec.get("speedup_history")
    if history is not None and not isinstance(history, list):
        raise ExportError(f"{str(spec_path)!r}: field 'speedup_history' is not a list: {history!r}")
    return spec


def load(export_dir: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the exported model (eval mode) with weights_only loading only."""
    from tune_prune.pruning.masks import apply_masks
    from tune_prune.pruning.speedup import rebuild_compact_model
    from tune_prune.workloads import get_workload

    directory = Path(export_dir)
    spec = read_spec(directory)
    where = f"export {str(directory)!r}"
    try:
        workload = get_workload(spec["workload"], **spec.get("workload_options", {}))
    except TunePruneError as err:
        raise ExportError(f"{where}: field 'workload'={spec['workload']!r}: {err}") from None
    model = workload.build_model()
    if spec.get("speedup_history"):
        try:
            model = rebuild_compact_model(model, spec["speedup_history"])
        except Exception as err:  # noqa: BLE001 - any malformed history is the file's fault
            raise ExportError(
                f"{where}: field 'speedup_history' does not rebuild the model: "
                f"{type(err).__name__}: {err}"
            ) from None
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - garbled, truncated or mismatched weights
        raise ExportError(
            f"cannot load the weights in {str(directory)!r} ({WEIGHTS_FILE}): "
            f"{type(err).__name__}: {err}"
        ) from None
    try:
        masks = (
            torch.load(directory / MASKS_FILE, map_location="cpu", weights_only=True)
            if (directory / MASKS_FILE).exists()
            else {}
        )
        if masks:
            apply_masks(model, masks)
    except Exception as err:  # noqa: BLE001 - garbled or mismatched masks
        raise ExportError(f"{where}: cannot apply {MASKS_FILE}: {type(err).__name__}: {err}") from None
    return model.eval()
