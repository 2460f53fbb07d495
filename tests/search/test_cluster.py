"""The search on a two-node Ray cluster through the CLI's ``--address``.

Ray's own multi-node test cluster (``ray.cluster_utils.Cluster``: a head and one worker
node on this machine, one CPU each, no dashboard) stands in for a real cluster. The CLI
connects to it with ``--address`` (``_start_ray`` calls ``ray.init(address=...)`` and
disconnects again at the end; the cluster keeps running), storage and baseline cache
are on the filesystem both "nodes" share. Two trials of one CPU each, two at a time,
cannot fit on one node, so each node runs one trial. Checked: where each trial ran
(its reported ``ray_actor_id`` looked up in the GCS actor table) and that every trial
reported every iteration.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tune_prune.search.cli import main

from .cluster_helpers import actor_nodes, node_ids, two_node_cluster
from .conftest import WORKLOAD_OPTIONS

pytestmark = pytest.mark.slow

NAME = "cluster"
TRIALS = 2
ITERATIONS = 2


def test_search_spreads_over_both_nodes(baseline_cache, tmp_path) -> None:
    import ray

    # _start_ray reuses a Ray instance this process already holds and ignores --address
    assert not ray.is_initialized(), "a Ray instance is still initialised in this process"
    storage = tmp_path / "shared"
    with two_node_cluster(cpus_per_node=1) as cluster:
        nodes = node_ids(cluster)
        start = time.perf_counter()
        argv = (
            f"--address {cluster.address} --num-samples {TRIALS} --min-iterations {ITERATIONS} "
            f"--max-iterations {ITERATIONS} --finetune-epochs 0.25 "
            # fixed-length schedules, no early stopping: every trial runs every iteration
            "--generators agp linear --early-stopping none "
            f"--baseline-cache-dir {baseline_cache} --storage-path {storage} --name {NAME} "
            "--cpus-per-trial 1 --max-concurrent 2"
        ).split()
        options = [f"--workload-option={k}={v}" for k, v in WORKLOAD_OPTIONS.items()]
        code = main(argv + options)
        wall = time.perf_counter() - start
        assert code == 0

        exp = storage / NAME
        table = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
        actors = set(table["ray_actor_id"].astype(str))
        placed = actor_nodes(cluster, actors)

    # results complete: both trials, every iteration, both finished
    assert table["trial_id"].nunique() == TRIALS
    for tid, g in table.groupby("trial_id"):
        # reset_weight schedules end with one more row: the last ticket, fine-tuned
        planned = ITERATIONS + int(bool(g["reset_weight"].iloc[0]))
        assert list(g["iteration"]) == list(range(1, planned + 1)), (tid, list(g["iteration"]))
        assert list(g["planned_iterations"]) == [planned] * planned, tid
        assert list(g["schedule_done"]) == [False] * (planned - 1) + [True], tid
    best = pd.read_csv(exp / "best_per_trial.csv", dtype={"trial_id": str})
    assert sorted(best["trial_id"]) == sorted(table["trial_id"].unique())
    assert (best["status"] == "complete").all(), best[["trial_id", "status"]]

    # one actor per trial, one trial per node
    assert len(actors) == TRIALS, actors
    assert set(placed) == actors, (actors, placed)
    assert set(placed.values()) == set(nodes.values()), (placed, nodes, wall)
    if "ray_node_id" in table:  # reported by the trial itself (see tune_prune.search.trainable)
        reported = dict(zip(table["ray_actor_id"].astype(str), table["ray_node_id"].astype(str)))
        assert reported == placed
