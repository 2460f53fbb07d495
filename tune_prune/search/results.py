"""Result tables, plots and TensorBoard logs of one experiment folder.

Built from the trial folders Tune writes (``params.json`` + one JSON line per report
in ``result.json``), not from an in-memory ResultGrid, so the same function rebuilds
everything after ``--resume`` or for an experiment copied from elsewhere.

Files written into the experiment folder:

* ``trials.csv`` / ``trials.parquet``: one row per reported iteration of every trial;
* ``best_per_trial.csv``: each trial's best iteration (by ``objective``), its status
  (complete / stopped / error), total fine-tune epochs, the checkpoint of its best
  iteration (``best_checkpoint``, with that model under ``result/``) and its latest one;
* ``pareto_front.csv`` (multi-objective mode): trials at target that no other trial
  beats in both score and cost (``macs``, ``params`` or, for 'latency', ``latency_ms``);
* ``score_vs_sparsity.png``, ``pareto_score_vs_macs.png`` (and ``pareto_score_vs_<cost>.png``
  with the front when the cost is not MACs);
* ``tensorboard/<trial_id>/``: per-trial scalars against the iteration and against the
  sparsity (step = sparsity in permille); Tune's own event files sit in each trial folder;
* ``summary.json``: the best trial, its config, checkpoint and where every file is.

Failed trials: the status is ``error`` when the driver recorded the trial's final
error in ``failed_trials.json`` (Tune's record; a trial that failed once and recovered
from its checkpoint is not an error), else when Tune's ``error.txt`` exists and the
trial did not finish its schedule. The ``error`` column holds the message, and a trial
that failed before its first report still gets a row in ``best_per_trial.csv``.
Checkpoint columns only ever name checkpoints of reported iterations: a checkpoint
folder whose report never reached the driver (a worker killed while Tune copied it)
may be incomplete and is never picked up.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tune_prune.atomic import atomic_write_text
from tune_prune.search import metrics as M

logger = logging.getLogger(__name__)

CONFIG_KEYS = (
    "generator",
    "pruner",
    "mode",
    "total_iteration",
    "finetune_epochs",
    "lr",
    "lr_schedule",
    "distill",
    "distill_temperature",
    "reset_weight",
    "rewind",
    "curve_exponent",
    "warm_start",
    "screen_trial_id",
    "screen_objective",
    "sa_start_temperature",
    "sa_stop_temperature",
    "sa_cool_down_rate",
    "sa_perturbation_magnitude",
    "normalizer",
    "bn_scale",
    "input_weights",
    "round_to",
)
BEST_COLUMNS = (
    "trial_id",
    "status",
    "generator",
    "pruner",
    "mode",
    "total_iteration",
    "finetune_epochs",
    "lr",
    "reset_weight",
    "warm_start",
    "screen_trial_id",
    "best_iteration",
    "iterations_run",
    "score",
    "test_score",
    "sparsity",
    "reached_target",
    "objective",
    "params",
    "macs",
    "finetune_epochs_total",
    "best_checkpoint",
    "checkpoint_path",
    "error",
)
ERRORS_FILE = "failed_trials.json"
#: Every report as the driver received it (written by search.live_table.LiveTable).
REPORTS_FILE = "reports.jsonl"


@dataclass
class ResultFiles:
    """Where the tables and plots of an experiment were written."""

    experiment_dir: Path
    trials_csv: Path
    trials_parquet: Path | None
    best_csv: Path
    pareto_csv: Path | None
    plots: list[Path] = field(default_factory=list)
    tensorboard_dir: Path | None = None
    summary_json: Path | None = None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            logger.warning("skipping a half-written line in %s", path)
    return rows


def _trial_id_of(trial_dir: Path) -> str:
    return trial_dir.name.removeprefix("trial_")


def read_errors(exp: Path) -> dict[str, str] | None:
    """``failed_trials.json`` (trial_id -> final error), or None when the driver wrote none."""
    try:
        data = json.loads((exp / ERRORS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def _error_text(trial_dir: Path) -> str:
    """The last line naming an error in Tune's error.txt ('' when there is none)."""
    try:
        text = (trial_dir / "error.txt").read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""


def _trial_status(trial_dir: Path, rows: list[dict[str, Any]], errors: dict[str, str] | None = None,
                  trial_id: str | None = None) -> str:
    done = bool(rows and rows[-1].get(M.SCHEDULE_DONE))
    if errors is not None:
        if (trial_id or _trial_id_of(trial_dir)) in errors:
            return "error"
    elif not done and ((trial_dir / "error.txt").exists() or (trial_dir / "error.pkl").exists()):
        return "error"
    if done:
        return "complete"
    return "stopped" if rows else "no_result"


def _latest_checkpoint(trial_dir: Path, rows: list[dict[str, Any]] | None = None) -> str:
    """The newest kept checkpoint of a *reported* iteration (see the module docstring)."""
    its = sorted({int(r["training_iteration"]) for r in rows or []
                  if isinstance(r.get("training_iteration"), int | float)
                  and math.isfinite(r["training_iteration"])}, reverse=True)
    for it in its:
        path = trial_dir / f"checkpoint_{it - 1:06d}"
        if path.is_dir():
            return str(path)
    return ""


def _checkpoint_of(row: dict[str, Any]) -> str:
    """The checkpoint Tune wrote with this report (every report carries one), if still kept.

    Kept are the best two by objective and the latest (CheckpointConfig); its ``result/``
    folder holds that iteration's pruned model (see tune_prune.search.reporting).
    """
    trial_dir = row.get("trial_dir")
    it = row.get("training_iteration")
    if not trial_dir or it is None or (isinstance(it, float) and math.isnan(it)):
        return ""
    path = Path(trial_dir) / f"checkpoint_{int(it) - 1:06d}"
    return str(path) if path.is_dir() else ""


def _driver_reports(exp: Path) -> dict[str, list[dict[str, Any]]]:
    """The driver's own record of every report (``reports.jsonl``), by trial id."""
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in _read_jsonl(exp / REPORTS_FILE):
        by_trial.setdefault(str(row.get("trial_id")), []).append(row)
    return by_trial


def _merge_reports(tune_rows: list[dict[str, Any]], driver_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tune's result.json rows completed by the driver's: one row per iteration, the latest kept."""
    if not driver_rows:
        return tune_rows
    merged: dict[Any, dict[str, Any]] = {}
    for row in [*tune_rows, *driver_rows]:
        merged[row.get("iteration", row.get("training_iteration"))] = row
    return sorted(merged.values(), key=lambda r: float(r.get("iteration") or r.get("training_iteration") or 0))


def collect(experiment_dir: str | Path) -> pd.DataFrame:
    """All trials x iterations as one DataFrame (empty, with no columns, if nothing ran).

    Rows are each trial's ``result.json`` merged with the driver's ``reports.jsonl``
    (see :mod:`tune_prune.search.live_table`: Tune can lose rows of a restarted trial).
    """
    exp = Path(experiment_dir)
    errors = read_errors(exp)
    reports = _driver_reports(exp)
    frames = []
    for trial_dir in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        try:
            params = json.loads((trial_dir / "params.json").read_text())
        except ValueError:
            continue
        params = {**params, **params.get("finalist", {})}  # a finalist's schedule (search.finalists)
        rows = _merge_reports(_read_jsonl(trial_dir / "result.json"), reports.get(_trial_id_of(trial_dir), []))
        if not rows:
            continue
        tid = str(rows[-1].get("trial_id", _trial_id_of(trial_dir)))
        df = pd.DataFrame(rows)
        for key in CONFIG_KEYS:
            if key in params and key not in df.columns:
                df[key] = params[key]
            elif key in params:
                df[key] = df[key].fillna(params[key]) if df[key].isna().any() else df[key]
        df["trial_id"] = df.get("trial_id", trial_dir.name)
        df["trial_dir"] = str(trial_dir)
        df["status"] = status = _trial_status(trial_dir, rows, errors, tid)
        df["error"] = ((errors or {}).get(tid) or _error_text(trial_dir)) if status == "error" else ""
        df["checkpoint_path"] = _latest_checkpoint(trial_dir, rows)
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    if "iteration" in table.columns:
        # A trial restored from its checkpoint may re-report an iteration: keep the last.
        table = table.drop_duplicates(subset=["trial_id", "iteration"], keep="last")
        table = table.sort_values(["trial_id", "iteration"]).reset_index(drop=True)
    drop = [c for c in ("config", "date", "hostname", "node_ip", "done") if c in table.columns]
    return table.drop(columns=drop)


def best_per_trial(table: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Each trial's best iteration (by objective; later iteration wins ties), best first."""
    if table.empty:
        return pd.DataFrame(columns=list(BEST_COLUMNS))
    rows = []
    for _tid, group in table.groupby("trial_id", sort=False):
        g = group.sort_values("iteration")
        obj = g["objective"].astype(float)
        idx = (obj[::-1].idxmax() if higher_is_better else obj[::-1].idxmin())
        row = g.loc[idx].to_dict()
        row["best_iteration"] = int(row.get("iteration", 0))
        row["iterations_run"] = int(g["iteration"].max())
        row["finetune_epochs_total"] = float(g["finetune_epochs_cum"].max())
        row["best_checkpoint"] = _checkpoint_of(row)
        rows.append(row)
    best = pd.DataFrame(rows)
    for col in BEST_COLUMNS:
        if col not in best.columns:
            best[col] = math.nan
    extra = [c for c in best.columns if c not in BEST_COLUMNS]
    best = best[list(BEST_COLUMNS) + extra]
    return best.sort_values("objective", ascending=not higher_is_better, kind="stable").reset_index(drop=True)


def failed_without_report(experiment_dir: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """Rows for trials that failed before reporting anything (absent from ``table``)."""
    exp = Path(experiment_dir)
    errors = read_errors(exp)
    seen = set(table["trial_id"].astype(str)) if not table.empty else set()
    rows = []
    for trial_dir in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        tid = _trial_id_of(trial_dir)
        if tid in seen or _read_jsonl(trial_dir / "result.json"):
            continue
        if _trial_status(trial_dir, [], errors, tid) != "error":
            continue
        try:
            params = json.loads((trial_dir / "params.json").read_text())
        except ValueError:
            params = {}
        row: dict[str, Any] = {k: params[k] for k in CONFIG_KEYS if k in params}
        row.update(trial_id=tid, status="error", iterations_run=0,
                   error=(errors or {}).get(tid) or _error_text(trial_dir))
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_front(best: pd.DataFrame, cost: str = "macs", higher_is_better: bool = True) -> pd.DataFrame:
    """Trials at target not dominated in (score, cost): better-or-equal in both, better in one."""
    if best.empty or cost not in best.columns:
        return best.iloc[0:0]
    cand = best[best["reached_target"].eq(True)].copy()
    sign = 1.0 if higher_is_better else -1.0
    keep = []
    for i, a in cand.iterrows():
        dominated = False
        for j, b in cand.iterrows():
            if i == j:
                continue
            ge = sign * b["score"] >= sign * a["score"] and b[cost] <= a[cost]
            gt = sign * b["score"] > sign * a["score"] or b[cost] < a[cost]
            if ge and gt:
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return cand.loc[keep].sort_values(cost).reset_index(drop=True)


def _plots(exp: Path, table: pd.DataFrame, best: pd.DataFrame, front: pd.DataFrame, cfg: dict[str, Any],
           cost: str = "macs") -> list[Path]:
    """score vs sparsity per trial; each trial's best row vs MACs and, when the front is
    on another cost (params, latency_ms), vs that cost: the front is drawn on its own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tid, g in table.groupby("trial_id"):
        g = g.sort_values("iteration")
        label = f"{tid} {g['generator'].iloc[0]}/{g['pruner'].iloc[0]}"
        ax.plot(g["sparsity"], g["score"], marker="o", ms=3, lw=1, label=label)
    target = cfg.get("target_sparsity")
    if target is not None:
        ax.axvline(float(target), color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("score (val)")
    ax.set_title("score vs sparsity, one line per trial")
    if table["trial_id"].nunique() <= 12:
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    p = exp / "score_vs_sparsity.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    out.append(p)

    reached = best[best["reached_target"].eq(True)] if not best.empty else best
    missed = best[~best["reached_target"].eq(True)] if not best.empty else best
    axes = ["macs"] + ([cost] if cost != "macs" and cost in best.columns else [])
    for x in axes:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter(reached[x], reached["score"], label="at target", s=20)
        if not missed.empty:
            ax.scatter(missed[x], missed["score"], label="below target", s=20, marker="x")
        if not front.empty and x == cost:
            f = front.sort_values(x)
            ax.plot(f[x], f["score"], color="r", lw=1.2, marker="o", label="Pareto front")
        ax.set_xlabel({"macs": "MACs", "latency_ms": "latency (ms)"}.get(x, x))
        ax.set_ylabel("score (val)")
        ax.set_title("best iteration per trial")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = exp / f"pareto_score_vs_{x}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        out.append(p)
    return out


def _tensorboard(exp: Path, table: pd.DataFrame) -> Path | None:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - a declared dependency
        logger.warning("tensorboardX is missing: no TensorBoard logs written")
        return None
    root = exp / "tensorboard"
    for tid, g in table.groupby("trial_id"):
        with SummaryWriter(str(root / str(tid))) as w:
            for _, r in g.sort_values("iteration").iterrows():
                step = int(r["iteration"])
                for key in ("score", "sparsity", "objective", "progress", "finetune_epochs_cum", "macs", "params",
                            M.LATENCY):
                    if key in r and isinstance(r[key], int | float) and math.isfinite(float(r[key])):
                        w.add_scalar(f"by_iteration/{key}", float(r[key]), step)
                if math.isfinite(float(r["sparsity"])) and math.isfinite(float(r["score"])):
                    w.add_scalar("by_sparsity/score", float(r["score"]), int(round(1000 * float(r["sparsity"]))))
    return root


def write_results(
    experiment_dir: str | Path, cfg: dict[str, Any], higher_is_better: bool = True
) -> tuple[ResultFiles, pd.DataFrame, pd.DataFrame]:
    """Write every table, plot and log of the experiment; returns files, all rows, best table."""
    exp = Path(experiment_dir)
    table = collect(exp)
    best = best_per_trial(table, higher_is_better)
    failed = failed_without_report(exp, table)
    if not failed.empty:  # ranked last: no objective
        best = pd.concat([best, failed.reindex(columns=best.columns)], ignore_index=True)
    cost = cfg.get("multi_objective", "none")
    # the reported cost column: 'latency' is reported as latency_ms
    front = pareto_front(best, M.cost_metric(cost) or "macs", higher_is_better)
    files = ResultFiles(exp, exp / "trials.csv", exp / "trials.parquet", exp / "best_per_trial.csv", None)
    table.to_csv(files.trials_csv, index=False)
    try:
        table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(files.trials_parquet)
    except Exception as exc:  # noqa: BLE001 - parquet is a convenience; CSV is the record
        logger.warning("could not write parquet: %s", exc)
        files.trials_parquet = None
    best.to_csv(files.best_csv, index=False)
    if cost not in ("none", None):
        files.pareto_csv = exp / "pareto_front.csv"
        front.to_csv(files.pareto_csv, index=False)
    if not table.empty:
        files.plots = _plots(exp, table, best, front, cfg, M.cost_metric(cost) or "macs")
        files.tensorboard_dir = _tensorboard(exp, table)
    summary = {
        "experiment_dir": str(exp),
        "num_trials": int(table["trial_id"].nunique()) if not table.empty else 0,
        "num_reports": int(len(table)),
        "higher_is_better": bool(higher_is_better),
        "best": _jsonable(best.iloc[0].to_dict()) if not best.empty else None,
        "files": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                  for k, v in files.__dict__.items()},
    }
    files.summary_json = exp / "summary.json"
    atomic_write_text(files.summary_json, json.dumps(summary, indent=2, default=str))
    return files, table, best


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out
