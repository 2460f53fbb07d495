"""``--dry-run``: a trial's schedule shape with a synthetic accuracy curve, no training.

Deterministic in the trial config; exercises reporting, checkpoints, early stopping and
the searcher exactly as a real trial does, in milliseconds per iteration (the plumbing
tests and ``--dry-run`` use it). The sparsity after iteration i follows the generator's
own curve from the registry.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from tune_prune.search.registry import generator_spec
from tune_prune.search.reporting import Report, Reporter


def simulate(fixed: dict[str, Any], trial: dict[str, Any], restore: Path | None, report: Report) -> None:
    """dry_run body: the trial's schedule shape with a synthetic accuracy curve, no training.

    Deterministic in the trial config; exercises reporting, checkpoints, early stopping
    and the searcher exactly as a real trial does, in milliseconds per iteration.
    """
    target = float(fixed["target_sparsity"])
    n = int(trial["total_iteration"])
    curve = generator_spec(trial["generator"]).curve
    h = int(hashlib.sha256(json.dumps(trial, sort_keys=True, default=str).encode()).hexdigest()[:8], 16)
    quality = (h % 1000) / 1000.0  # per-config luck
    dense = {"score": 0.97, "params": 1e5, "macs": 1e6}
    reporter = Reporter(fixed, trial, dense, report)
    if restore is not None:
        reporter.restore(restore)
    delay = float(fixed.get("dry_run_delay_s", 0.0))
    latency = fixed.get("latency")  # multi_objective 'latency'
    # Simulated latency: a dense forward pass of 0.05 ms per sample of the timed batch,
    # scaled by the simulated MACs ratio, with a per-config +-10 % jitter (measured
    # latencies are noisy, and it gives NSGA-II a front to find among trials at target).
    dense_latency_ms = 0.05 * float(latency["batch_size"]) if latency else 0.0
    jitter = 0.9 + 0.2 * (((h >> 12) % 1000) / 1000.0)
    for i in range(reporter.counters.iteration + 1, n + 1):
        s = target if curve is None else curve(target, i, n, trial)  # None: every task at the target
        epochs_cum = reporter.counters.finetune_epochs_cum + float(trial["finetune_epochs"])
        recovery = 1 - math.exp(-epochs_cum / 3)
        score = 0.97 - 0.25 * s**3 * (1.2 - 0.4 * recovery) - 0.05 * quality
        meas = {
            "task_id": i, "score": score, "sparsity": s,
            "params": 1e5 * (1 - s), "macs": 1e6 * (1 - 0.7 * s),
            "finetune_seconds": 0.0,
        }
        if latency:
            meas["latency_ms"] = dense_latency_ms * (meas["macs"] / dense["macs"]) * jitter
        if delay:
            time.sleep(delay)
        reporter.report(meas, None, schedule_done=i == n, planned=n)
