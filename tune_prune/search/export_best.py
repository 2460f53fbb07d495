"""Export the best schedule of a finished search: ``export_best(EXPERIMENT_DIR, OUT_DIR)``.

"Best" is the first row of the experiment's best-per-trial table (by objective: the
score at the target sparsity; trials below the target rank last); for a screened
search (``screen_fraction < 1``) it is the best finalist, from ``EXPERIMENT/final/``. Its model is the
``result/`` folder of the checkpoint Tune wrote with that iteration (the search keeps
the two best checkpoints of each trial by objective, so it is there), read with
:func:`tune_prune.export.load_pruned` (the workload's architecture plus the stored speedup
history), and written with :func:`tune_prune.export.export_model` (the same folder
format plus ONNX).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from tune_prune.errors import ExportError
from tune_prune.export import export_model, is_pruned_folder, load_pruned
from tune_prune.search.finalists import FINAL_DIR
from tune_prune.search.results import best_per_trial, collect
from tune_prune.workloads import get_workload

logger = logging.getLogger(__name__)

#: Trial config keys copied into the export's spec.
SPEC_CONFIG_KEYS = (
    "generator", "pruner", "mode", "total_iteration", "finetune_epochs", "lr", "lr_schedule", "reset_weight",
    "distill", "distill_temperature",
    "rewind", "curve_exponent", "sa_cool_downs", "sa_start_temperature", "sa_stop_temperature",
    "sa_cool_down_rate", "sa_perturbation_magnitude",
)
SPEC_METRIC_KEYS = (
    "score", "sparsity", "target_sparsity", "reached_target", "objective", "params", "macs",
    "params_ratio", "macs_ratio", "finetune_epochs_cum", "iteration", "trial_id", "task_id", "test_score",
)
#: Copied into the spec only when the search measured them (multi_objective 'latency'),
#: with the settings they were measured under (latency is noisy).
SPEC_LATENCY_KEYS = ("latency_ms", "latency_batch_size", "latency_threads", "latency_repeats")


def _ranked_dirs(experiment: Path, trial_id: str | None) -> list[Path]:
    """Where the pick is made: the finalists of a screened search, else the trials.

    A ``trial_id`` may name a screened trial or a finalist.
    """
    final = experiment / FINAL_DIR
    if not final.is_dir():
        return [experiment]
    return [final] if trial_id is None else [experiment, final]


def _pick(*experiments: Path, trial_id: str | None = None) -> dict[str, Any]:
    for experiment in experiments[:-1]:  # with trial_id: the first folder holding it
        table = collect(experiment)
        if not table.empty and trial_id in set(table["trial_id"].astype(str)):
            return _pick_in(experiment, trial_id)
    return _pick_in(experiments[-1], trial_id)


def _pick_in(experiment: Path, trial_id: str | None) -> dict[str, Any]:
    table = collect(experiment)
    if table.empty:
        raise ExportError(f"experiment {str(experiment)!r} has no reported trial to export")
    summary = experiment / "summary.json"
    higher = json.loads(summary.read_text()).get("higher_is_better", True) if summary.exists() else True
    best = best_per_trial(table, bool(higher))
    if trial_id is not None:
        best = best[best["trial_id"] == trial_id]
        if best.empty:
            raise ExportError(f"trial_id={trial_id!r} is not a trial of {str(experiment)!r}")
    for _, row in best.iterrows():
        ckpt = str(row.get("best_checkpoint") or "")
        if ckpt and is_pruned_folder(Path(ckpt) / "result"):
            if not bool(row.get("reached_target")):
                logger.warning("no trial reached the target sparsity: exporting %s anyway", row["trial_id"])
            return row.to_dict()
        logger.warning("trial %s: its best iteration's checkpoint has no model; trying the next", row["trial_id"])
    raise ExportError(
        f"experiment {str(experiment)!r}: no trial's best checkpoint holds a model "
        "(dry-run searches do not save models)"
    )


def _search_config(experiment: Path) -> dict[str, Any]:
    path = experiment / "search_config.json"
    if not path.exists():
        raise ExportError(f"{str(experiment)!r} is not a search experiment: it has no search_config.json")
    return json.loads(path.read_text())


def export_best(
    experiment_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    trial_id: str | None = None,
    onnx: bool = True,
) -> Path:
    """Write the best trial's best pruned model (or ``trial_id``'s) to ``out_dir``; return it."""
    experiment = Path(experiment_dir)
    if not experiment.is_dir():
        raise ExportError(f"experiment folder {str(experiment)!r} does not exist")
    config = _search_config(experiment)
    row = _pick(*_ranked_dirs(experiment, trial_id), trial_id=trial_id)
    result = Path(row["best_checkpoint"]) / "result"
    options = dict(config.get("workload_options") or {})
    workload = get_workload(config["workload"], **options)
    pruned = load_pruned(result, workload)  # ExportError naming the folder and file when unreadable
    model, masks, history, meta = pruned.model, pruned.masks, pruned.history, pruned.meta
    spec_config = {k: meta[k] for k in SPEC_CONFIG_KEYS if k in meta}
    metrics = {k: meta.get(k, row.get(k)) for k in SPEC_METRIC_KEYS}
    for k in SPEC_LATENCY_KEYS:
        value = meta.get(k, row.get(k))
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            metrics[k] = value
    metrics.update(experiment=str(experiment), checkpoint=str(result.parent))
    out = export_model(
        out_dir, model, workload=config["workload"], workload_options=options, masks=masks,
        history=history, dummy_input=workload.dummy_input(), config=spec_config,
        metrics=metrics, onnx=onnx,
    )
    logger.info("exported trial %s (score %s at sparsity %s) to %s",
                row["trial_id"], metrics.get("score"), metrics.get("sparsity"), out)
    return Path(out)
