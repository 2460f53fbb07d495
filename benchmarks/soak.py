"""Soak: many short trials through the whole search, watching what could grow with them.

Run:  ./run.sh python benchmarks/soak.py                 # 200 trials at concurrency 2
      ./run.sh python benchmarks/soak.py --trials 12     # a short version (the test's size)

A real search (``run_search``: Optuna + fair early stopping + checkpoints + result
tables) on a tiny workload: digits with a 1-epoch baseline, schedules of 1-2 iterations
and 0.1 fine-tune epochs in all, so each trial is dominated by the search's own per-trial
machinery (actor start, checkpoints, searcher, callbacks), which is what a long run
accumulates. No screening stage (one Tuner), warm start off.

Measured, in the driver process (this one):
* driver memory: RSS sampled every 0.5 s by a thread; the table gives it per quarter of
  the trials (by completion order) and the growth from the first quarter to the last;
* time per trial: gaps between consecutive trial completions (from each trial's last
  report timestamp in ``trials_live.csv``), median per quarter: flat means no slow-down;
* disk: bytes per trial folder and the number of checkpoints each keeps (retention:
  ``num_to_keep=2`` plus the latest one Tune may hold);
* result tables: ``trials_live.csv`` grows by one appended row per report (its final
  size / rows against the reports in the trial folders; a thread re-reads it while the
  search runs and counts every read that is not the previous one extended), and the one
  end-of-search ``write_results`` time.

Prints a Markdown table with the load average before and after (a 2-core shared box:
read the times with it).

``tests/search/test_soak.py`` runs :func:`measure` on a few trials and asserts what the
table shows (retention, one appended live row per report, bounded driver RSS, no errors).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from tune_prune.search.config import SearchConfig
from tune_prune.search.live_table import LIVE_FILE
from tune_prune.search.runner import run_search

#: Tune's trial ids are 8 hex digits: read as text (all digits, or '1e5...', would parse as numbers)
IDS = {"trial_id": str}


class RssSampler(threading.Thread):
    """(time, RSS bytes) of this process every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self._proc = psutil.Process()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), self._proc.memory_info().rss))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class LiveFileWatcher(threading.Thread):
    """Re-reads ``path`` every ``interval`` seconds until stopped; counts the reads that do
    not extend the previous one (a rewrite or truncation: an append-only file has none)."""

    def __init__(self, path: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.interval = interval
        self.reads = 0
        self.rewrites = 0
        self._last = b""
        self._stop_event = threading.Event()

    def check(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return  # not there yet
        self.reads += 1
        if not data.startswith(self._last):
            self.rewrites += 1
        self._last = data

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.check()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.check()  # the final content


def soak_config(trials: int, storage: Path, concurrency: int, **overrides: Any) -> SearchConfig:
    """The soak's search; ``overrides`` are SearchConfig fields that replace the soak's own
    (the test turns the dashboard off and runs longer schedules, so retention deletes)."""
    values: dict[str, Any] = dict(
        workload="digits",
        workload_options={"baseline_epochs": 1},
        target_sparsity=0.5,
        num_samples=trials,
        max_concurrent=concurrency,
        num_cpus=concurrency,
        min_iterations=1,
        max_iterations=2,
        finetune_budget=0.1,
        screen_fraction=1.0,
        warm_start=[],
        storage_path=str(storage),
        name="soak",
        seed=0,
    )
    return SearchConfig.create(**{**values, **overrides})


def quarters(values: list[Any]) -> list[list[Any]]:
    n = len(values)
    return [values[i * n // 4:(i + 1) * n // 4] for i in range(4)]


def reports_per_trial(exp: Path) -> dict[str, int]:
    """Reports each trial folder holds (lines of Tune's ``result.json``)."""
    out = {}
    for d in exp.glob("trial_*"):
        result = d / "result.json"
        if d.is_dir() and result.exists():
            out[d.name.removeprefix("trial_")] = sum(1 for ln in result.read_text().splitlines() if ln.strip())
    return out


def measure(trials: int, concurrency: int, storage: Path, **overrides: Any) -> dict[str, Any]:
    cfg = soak_config(trials, storage, concurrency, **overrides)
    sampler = RssSampler()
    watcher = LiveFileWatcher(Path(cfg.storage_path).expanduser().resolve() / cfg.name / LIVE_FILE)
    sampler.start()
    watcher.start()
    start = time.time()
    try:
        out = run_search(cfg, printer=lambda _msg: None)
    finally:
        end = time.time()
        sampler.stop()
        watcher.stop()
    exp = out.experiment_dir
    live = pd.read_csv(exp / LIVE_FILE, dtype=IDS)
    reports = reports_per_trial(exp)
    ends = live.groupby("trial_id")["timestamp"].max().sort_values()
    gaps = [b - a for a, b in zip([start, *ends.tolist()[:-1]], ends.tolist())]
    rss_by_quarter = []
    for part in quarters(ends.tolist()):
        lo, hi = (part[0], part[-1]) if part else (start, end)
        inside = [r for t, r in sampler.samples if lo <= t <= hi] or [sampler.samples[-1][1]]
        rss_by_quarter.append(max(inside) / 2**20)
    trial_dirs = [p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()]
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in trial_dirs]
    checkpoints = [len(list(d.glob("checkpoint_*"))) for d in trial_dirs]
    return {
        "trials": len(ends),
        "rows": len(live),
        "wall_s": end - start,
        "gap_median_by_quarter": [statistics.median(q) if q else float("nan") for q in quarters(gaps)],
        "rss_mib_by_quarter": rss_by_quarter,
        "rss_peak_mib": max(r for _, r in sampler.samples) / 2**20,
        "disk_kib_per_trial": statistics.mean(sizes) / 1024 if sizes else float("nan"),
        "disk_kib_max": max(sizes, default=0) / 1024,
        "checkpoints_max": max(checkpoints, default=0),
        "checkpoints_per_trial": {d.name: n for d, n in zip(trial_dirs, checkpoints)},
        "live_kib": (exp / LIVE_FILE).stat().st_size / 1024,
        "reports": sum(reports.values()),
        "reports_per_trial": reports,
        "live_rows_per_trial": live.groupby("trial_id").size().to_dict(),
        "live_duplicates": int(live.duplicated(["trial_id", "iteration"]).sum()),
        "live_reads": watcher.reads,
        "live_rewrites": watcher.rewrites,
        "errors": out.num_errors,
    }


def table(result: dict[str, Any], args: argparse.Namespace, load_before: str, load_after: str) -> str:
    q = result["gap_median_by_quarter"]
    r = result["rss_mib_by_quarter"]
    lines = [
        f"Soak: {result['trials']} trials at concurrency {args.concurrency} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load {load_before} "
        f"before, {load_after} after)",
        "",
        "| quarter of the trials | 1st | 2nd | 3rd | 4th | 4th / 1st |",
        "|---|---|---|---|---|---|",
        "| median s between trial completions | " + " | ".join(f"{v:.2f}" for v in q)
        + f" | {q[3] / q[0]:.2f} |",
        "| driver RSS, MiB (max in the quarter) | " + " | ".join(f"{v:.0f}" for v in r)
        + f" | {r[3] / r[0]:.2f} |",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time | {result['wall_s']:.0f} s ({result['wall_s'] / max(1, result['trials']):.2f} s per trial) |",
        f"| driver RSS peak | {result['rss_peak_mib']:.0f} MiB |",
        f"| disk per trial folder | {result['disk_kib_per_trial']:.0f} KiB mean, {result['disk_kib_max']:.0f} KiB max |",
        f"| checkpoints kept per trial (max) | {result['checkpoints_max']} |",
        f"| trials_live.csv | {result['rows']} rows for {result['reports']} reports, "
        f"{result['live_kib']:.0f} KiB; {result['live_rewrites']} of {result['live_reads']} reads "
        "not an append |",
        f"| trial errors | {result['errors']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--storage", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="tune_prune_soak_") as tmp:
        result = measure(args.trials, args.concurrency, args.storage or Path(tmp))
    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: python benchmarks/soak.py {' '.join(sys.argv[1:])}")
    print(table(result, args, load_before, load_after))


if __name__ == "__main__":
    main()
