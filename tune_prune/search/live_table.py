"""``trials_live.csv`` and ``reports.jsonl``: every reported iteration, appended as it arrives.

The full result tables (``results.write_results``) are built once, when a search ends.
A search that runs for hours needs something to look at before that: this Tune callback
appends one CSV row per report to the experiment folder (the header once), so the cost
per report is one short append whatever the number of trials, never a rebuild from every
trial. ``pandas.read_csv`` reads it at any time.

It also appends the whole reported dict to ``reports.jsonl``, the driver's own record of
every report. Tune's per-trial ``result.json`` can lose rows: when a trial restarts after
a failure, Tune copies the trial's ``result.json`` back from the storage folder over its
local one, and a copy older than the last sync lacks the latest reports (seen in CI: a
trial that failed twice lost its first report). ``results.collect`` merges both.

A resumed search keeps appending; a trial restored from its checkpoint may report an
iteration again, so the files can hold a row twice (the final tables keep the last).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune_prune.search.results import REPORTS_FILE

LIVE_FILE = "trials_live.csv"
#: The columns of a live row: the trial's identity, its schedule and what it reported.
COLUMNS = (
    "trial_id", "stage", "iteration", "planned_iterations", "schedule_done",
    "generator", "pruner", "mode", "total_iteration", "finetune_epochs", "lr", "lr_schedule",
    "distill", "reset_weight", "warm_start", "score", "test_score", "sparsity", "reached_target",
    "objective", "params", "macs", "latency_ms", "finetune_epochs_cum", "time_total_s", "timestamp",
)


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return ""  # nested values (configs, lists) stay in the trial folders


class LiveTable(Callback):
    """Append each reported row to ``experiment_dir / trials_live.csv``."""

    def __init__(self, experiment_dir: str | Path) -> None:
        self.path = Path(experiment_dir) / LIVE_FILE
        self.reports = Path(experiment_dir) / REPORTS_FILE

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            writer.writerow(COLUMNS)
            self._columns = COLUMNS
        columns = getattr(self, "_columns", None) or self._header()
        row = {**(trial.config or {}), **result, "trial_id": trial.trial_id}
        finalist = (trial.config or {}).get("finalist")
        if isinstance(finalist, dict):
            row = {**finalist, **row}
        writer.writerow([_cell(row.get(key)) for key in columns])
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())  # one write per report: a reader never sees half a row's header
        full = {k: v for k, v in result.items() if k != "config"}  # the config is in params.json
        full["trial_id"] = trial.trial_id
        with open(self.reports, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(full, default=str) + "\n")

    def _header(self) -> tuple[str, ...]:
        """The columns of the file already there: a search resumed by a newer version
        (with more COLUMNS) keeps appending rows that match the header it wrote."""
        try:
            with open(self.path, encoding="utf-8", newline="") as fh:
                header = next(csv.reader(fh), None)
        except OSError:
            header = None
        self._columns = tuple(header) if header else COLUMNS
        return self._columns
