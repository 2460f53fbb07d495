"""The search driver SIGKILLed mid-search, then ``--resume`` in a fresh process (slow).

The CLI runs in its own session (process group). Once the first iteration is reported
into the experiment folder, every process of that session (driver, Ray's GCS, raylet
and workers) is SIGKILLed by id. A second CLI process resumes with ``--resume --name``.
Checked afterwards: every row reported before the kill is still in ``trials.csv``
unchanged; every trial reports iterations 1..n once each (resumed, never rerun from
scratch); all trials finished; the Optuna study holds exactly one trial per Tune
trial, none left RUNNING, each COMPLETE with the value of its trial's last row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune_prune.search.searcher import journal_storage

from ._helpers import result_lines
from .conftest import WORKLOAD_OPTIONS

pytestmark = pytest.mark.slow

NAME = "killed"
TRIALS = 2
ITERATIONS = 2


def _session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the CLI and everything it started)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # fields after ')': state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    for _ in range(20):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.25)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tune_prune.search", *args, "--num-cpus", "2",
            "--no-include-dashboard"]


def _reported(exp: Path) -> dict[tuple[str, int], float]:
    rows = {}
    for d in exp.glob("trial_*"):
        if d.is_dir():
            for r in result_lines(d):
                rows[(r["trial_id"], r["iteration"])] = r["score"]
    return rows


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_killed_driver_resumes_without_losing_or_rerunning(tmp_path, rel_baseline_cache) -> None:
    storage = tmp_path / "res"
    exp = storage / NAME
    first = subprocess.Popen(
        _cli("--num-samples", str(TRIALS), "--min-iterations", str(ITERATIONS),
             "--max-iterations", str(ITERATIONS), "--finetune-epochs", "0.1",
             "--generators", "agp", "linear", "--early-stopping", "none", "--max-concurrent", "1",
             "--workload-option", f"baseline_epochs={WORKLOAD_OPTIONS['baseline_epochs']}",
             "--baseline-cache-dir", str(rel_baseline_cache), "--storage-path", str(storage),
             "--name", NAME),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _reported(exp) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the search ended before it could be killed"
        assert _reported(exp), "no iteration reported within the deadline"
    finally:
        _kill_session(first.pid)
        first.wait(timeout=30)
    before = _reported(exp)
    assert not (exp / "trials.csv").exists()  # killed: no results written

    second = subprocess.run(
        _cli("--resume", "--name", NAME, "--storage-path", str(storage)),
        capture_output=True, text=True, timeout=400, start_new_session=True,
    )
    _kill_session(second.pid if hasattr(second, "pid") else -1)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    table = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    after = {(t, int(i)): s for t, i, s in zip(table["trial_id"], table["iteration"], table["score"])}
    for key, score in before.items():  # nothing reported is lost or changed
        assert after[key] == score, key
    assert table["trial_id"].nunique() == TRIALS
    for d in (p for p in exp.glob("trial_*") if p.is_dir()):
        its = [r["iteration"] for r in result_lines(d)]
        assert its == list(range(1, len(its) + 1)), (d.name, its)  # once each, none rerun
        assert result_lines(d)[-1]["schedule_done"], d.name
    best = pd.read_csv(exp / "best_per_trial.csv", dtype={"trial_id": str})
    assert set(best["status"]) == {"complete"}

    study = optuna.load_study(study_name=NAME, storage=journal_storage(exp))
    by_tune = {}
    for t in study.trials:
        assert t.state != optuna.trial.TrialState.RUNNING, t
        if t.user_attrs.get("orphaned"):
            # suggested just before the kill, never run by Tune: closed as FAIL, no values
            assert t.state == optuna.trial.TrialState.FAIL and not t.intermediate_values, t
            assert t.user_attrs.get("tune_trial_id") not in set(table["trial_id"]), t
            continue
        tid = t.user_attrs.get("tune_trial_id")
        assert tid not in by_tune, f"two Optuna trials for {tid}"
        by_tune[tid] = t
    assert set(by_tune) == set(table["trial_id"])
    last = table.sort_values("iteration").groupby("trial_id").last()
    for tid, t in by_tune.items():
        assert t.state == optuna.trial.TrialState.COMPLETE, (tid, t.state)
        assert t.value == pytest.approx(last.loc[tid, "best_objective"]), tid
