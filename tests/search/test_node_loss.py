"""A worker node lost mid-search on a two-node cluster, and the shared-storage preflight (slow).

Ray's multi-node test cluster (``ray.cluster_utils.Cluster``: a head and one worker node
on this machine, one CPU each, no dashboard) stands in for a real cluster; the storage
path is one folder both "nodes" see, as a shared filesystem (NFS) would be on a real one.

* Preflight: a node that cannot see the storage path (simulated by the probe task that
  runs on the worker node) fails the search with a ConfigError naming that node, before
  the experiment folder exists, and the connection to the cluster is closed again.
* Node loss: the CLI runs in its own process, connected with ``--address``; two trials of
  one CPU each, so one runs on each node. Once the worker node's trial has reported an
  iteration (its checkpoint is written before the report reaches the driver), its process
  is frozen (SIGSTOP: the machine is gone from that instant, whatever its speed) and the
  worker node is killed without warning (raylet and everything it started, SIGKILL). Checked:
  the trial that ran there resumes on the head node from its last checkpoint (iterations
  continue, none reported twice, none lost; every row the driver had received when the
  node went, per ``trials_live.csv``, is in ``trials.csv`` unchanged), both trials finish
  ``complete``, ``trials_live.csv`` holds one row per report, and the Optuna study agrees
  with Tune (one COMPLETE trial per Tune trial, with the value of its last row).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune_prune.errors import ConfigError
from tune_prune.search import runner
from tune_prune.search.config import SearchConfig
from tune_prune.search.live_table import LIVE_FILE
from tune_prune.search.searcher import journal_storage

from .cluster_helpers import FAST_NODE_DEATH, node_ids, remove_worker_node, two_node_cluster
from .conftest import WORKLOAD_OPTIONS

pytestmark = pytest.mark.slow

NAME = "nodeloss"
#: Tune's trial ids are 8 hex digits: read as text (all digits, or '1e5...', would parse as numbers)
IDS = {"trial_id": str}
TRIALS = 2
ITERATIONS = 5
EPOCHS = 1.0  # fine-tune epochs per iteration (~0.2 s): the lost trial is frozen within ~0.1 s of its first report


@pytest.fixture(scope="module")
def cluster():
    import ray

    # _start_ray reuses a Ray instance this process already holds and ignores --address
    assert not ray.is_initialized(), "a Ray instance is still initialised in this process"
    with two_node_cluster(cpus_per_node=1, system_config=FAST_NODE_DEATH) as c:
        yield c


def _rows(exp: Path) -> dict[str, list[dict]]:
    """Tune's result.json of every trial folder: trial id -> reported rows."""
    out: dict[str, list[dict]] = {}
    for d in exp.glob("trial_*"):
        path = d / "result.json"
        if d.is_dir() and path.exists():
            rows = []
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
            out[d.name.removeprefix("trial_")] = rows
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_preflight_rejects_storage_a_node_cannot_see(cluster, tmp_path, monkeypatch) -> None:
    import ray

    worker = node_ids(cluster)["worker"]
    real = runner._probe_paths

    def probe(markers: list[str], token: str, wait_s: float = 5.0) -> list:
        """The worker node has no such mount: it sees none of the driver's marker files."""
        import ray as ray_  # pickled by value, runs on the node

        if ray_.get_runtime_context().get_node_id() == worker:
            return [f"does not see {str(Path(m).parent)!r}" for m in markers]
        return real(markers, token, wait_s)

    monkeypatch.setattr(runner, "_probe_paths", probe)
    storage = tmp_path / "local_only"
    cfg = SearchConfig.create(address=cluster.address, dry_run=True, storage_path=str(storage),
                              name="unseen", num_samples=1, include_dashboard=False)
    with pytest.raises(ConfigError) as info:
        runner.run_search(cfg, printer=lambda _msg: None)
    message = str(info.value)
    assert worker[:12] in message and str(storage) in message and "NFS" in message, message
    assert cluster.head_node.node_id[:12] not in message, message  # the head sees it
    assert not (storage / "unseen").exists()  # no experiment folder
    assert not list(storage.glob(".tune_prune_*")), list(storage.iterdir())  # markers removed
    assert not ray.is_initialized()  # disconnected again; the cluster itself runs on


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_lost_node_trials_resume_on_the_remaining_node(cluster, baseline_cache, tmp_path) -> None:
    nodes = node_ids(cluster)
    storage = tmp_path / "shared"
    exp = storage / NAME
    log_path = tmp_path / "cli.log"
    argv = [
        sys.executable, "-m", "tune_prune.search", "--address", cluster.address,
        "--num-samples", str(TRIALS), "--min-iterations", str(ITERATIONS),
        "--max-iterations", str(ITERATIONS), "--finetune-epochs", str(EPOCHS),
        # fixed-length schedules, no early stopping: every trial runs every iteration
        "--generators", "agp", "linear", "--early-stopping", "none",
        "--baseline-cache-dir", str(baseline_cache), "--storage-path", str(storage), "--name", NAME,
        "--cpus-per-trial", "1", "--max-concurrent", "2",
        *[f"--workload-option={k}={v}" for k, v in WORKLOAD_OPTIONS.items()],
    ]
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lost, pid = None, None
        deadline = time.monotonic() + 300
        while lost is None and proc.poll() is None and time.monotonic() < deadline:
            for tid, rows in _rows(exp).items():
                if rows and rows[0].get("ray_node_id") == nodes["worker"]:
                    lost, pid = tid, int(rows[0]["pid"])
            if lost is None:
                time.sleep(0.05)
        assert lost is not None, f"no trial reported from the worker node\n{log_path.read_text()[-3000:]}"
        assert proc.poll() is None, "the search ended before the node could be removed"
        _signal(pid, signal.SIGSTOP)  # the node is lost from here on
        removed = remove_worker_node(cluster)
        _signal(pid, signal.SIGKILL)  # nothing of the lost machine runs on
        killed_at = time.monotonic() - start
        assert removed == nodes["worker"]
        time.sleep(1.0)  # a report already in flight when the node died may still land
        # what the driver had received when the node was lost (its own appended record)
        before = pd.read_csv(exp / LIVE_FILE, dtype=IDS)
        lost_before = before[before["trial_id"] == lost]
        assert len(lost_before) and not lost_before["schedule_done"].iloc[-1], (
            "the worker node's trial finished before its node was removed: make the trials longer")
        proc.wait(timeout=500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    wall = time.monotonic() - start
    output = log_path.read_text()
    assert proc.returncode == 0, output[-5000:]
    assert "shared storage: 2 node(s) see" in output, output[-3000:]  # preflight ran on both nodes

    # every row reported before the loss is in the final table, unchanged
    table = pd.read_csv(exp / "trials.csv", dtype=IDS)
    assert table["trial_id"].nunique() == TRIALS
    assert not table.duplicated(["trial_id", "iteration"]).any()
    final = table.set_index(["trial_id", "iteration"])
    for tid, it, score in zip(before["trial_id"], before["iteration"], before["score"]):
        assert final.loc[(tid, it), "score"] == pytest.approx(score, rel=1e-12), (tid, it)

    # the lost trial: iterations 1..n once each, resumed on the head from its checkpoint
    rows = table[table["trial_id"] == lost].sort_values("iteration")
    planned = int(rows["planned_iterations"].iloc[-1])
    assert list(rows["iteration"]) == list(range(1, planned + 1)), list(rows["iteration"])
    assert rows["schedule_done"].iloc[-1]
    on_worker = list(rows.loc[rows["ray_node_id"] == nodes["worker"], "iteration"])
    on_head = list(rows.loc[rows["ray_node_id"] == nodes["head"], "iteration"])
    assert on_worker == list(range(1, len(lost_before) + 1)), (on_worker, len(lost_before))
    assert on_head == list(range(len(on_worker) + 1, planned + 1)), (on_worker, on_head)
    assert on_head, "the lost trial never ran again"
    assert (exp / f"trial_{lost}" / "error.txt").exists()  # Tune recorded the node's death ...
    other = table[table["trial_id"] != lost]
    assert set(other["ray_node_id"]) == {nodes["head"]}  # the other trial ran on the head throughout

    # both finished
    best = pd.read_csv(exp / "best_per_trial.csv", dtype=IDS)
    assert set(best["status"]) == {"complete"}, best[["trial_id", "status"]]  # ... not an error
    assert json.loads((exp / "failed_trials.json").read_text()) == {}

    # the live table: one row per report, none twice
    live = pd.read_csv(exp / LIVE_FILE, dtype=IDS)
    assert len(live) == len(table), (len(live), len(table))
    assert not live.duplicated(["trial_id", "iteration"]).any()

    # the Optuna study agrees with Tune
    study = optuna.load_study(study_name=NAME, storage=journal_storage(exp))
    by_tune = {}
    for t in study.trials:
        tid = t.user_attrs.get("tune_trial_id")
        assert tid not in by_tune, f"two Optuna trials for {tid}"
        by_tune[tid] = t
    assert set(by_tune) == set(table["trial_id"]), (set(by_tune), set(table["trial_id"]))
    last = table.sort_values("iteration").groupby("trial_id").last()
    for tid, t in by_tune.items():
        assert t.state == optuna.trial.TrialState.COMPLETE, (tid, t.state)
        assert t.value == pytest.approx(last.loc[tid, "best_objective"]), tid
    print(f"node removed after {killed_at:.1f} s; search done after {wall:.1f} s; lost trial {lost}: "
          f"iterations {on_worker} on the worker, {on_head} on the head")
