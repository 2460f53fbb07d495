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
  size / rows), and the one end-of-search ``write_results`` time.

Prints a Markdown table with the load average before and after (a 2-core shared box:
read the times with it).
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


def soak_config(trials: int, storage: Path, concurrency: int) -> SearchConfig:
    return SearchConfig.create(
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


def quarters(values: list[Any]) -> list[list[Any]]:
    n = len(values)
    return [values[i * n // 4:(i + 1) * n // 4] for i in range(4)]


def measure(trials: int, concurrency: int, storage: Path) -> dict[str, Any]:
    cfg = soak_config(trials, storage, concurrency)
    sampler = RssSampler()
    sampler.start()
    start = time.time()
    out = run_search(cfg, printer=lambda _msg: None)
    end = time.time()
    sampler.stop()
    exp = out.experiment_dir
    live = pd.read_csv(exp / LIVE_FILE)
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
        "live_kib": (exp / LIVE_FILE).stat().st_size / 1024,
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
        f"| trials_live.csv | {result['rows']} rows appended, {result['live_kib']:.0f} KiB |",
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
