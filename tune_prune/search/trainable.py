"""The Ray Tune trainable: a thin adapter over :func:`tune_prune.search.schedule.run_schedule`.

:func:`run_trial` only turns ``tune.get_checkpoint()`` into the folder ``run_schedule``
resumes from, and each reported folder into a ``tune.Checkpoint`` for ``tune.report``,
adding who ran it (pid, Ray actor and node ids: which worker and machine, on a cluster).

Trials are identifiable in the Ray dashboard and through ``ray.util.state.list_actors``:
the actor class is :class:`TunePruneTrial` and its repr (the dashboard's actor name and
the log prefix) is ``tune_prune:<trial name>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.trainable.function_trainable import wrap_function

from tune_prune.search.schedule import run_schedule


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune entry point: :func:`run_schedule` with Tune's checkpoint and report."""
    torch.set_num_threads(max(1, int(config["fixed"].get("cpus_per_trial", 1))))
    context = ray.get_runtime_context()
    who = {"pid": os.getpid(), "ray_actor_id": context.get_actor_id() or "",
           "ray_node_id": context.get_node_id() or ""}

    def report(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        tune.report({**metrics, **who}, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_schedule(config, report)
        return
    with checkpoint.as_directory() as restore_from:
        run_schedule(config, report, restore_from)


# ----------------------------------------------------------------------------- trainable class

_Base = wrap_function(run_trial, name="tune_prune_trial")


class TunePruneTrial(_Base):  # type: ignore[misc, valid-type]
    """Function trainable whose actor class and repr name the trial (dashboard, logs, state API).

    Resources come from the trial config (``fixed.cpus_per_trial`` / ``gpus_per_trial``)
    rather than ``tune.with_resources``, which would rename the actor class.
    """

    def __repr__(self) -> str:
        try:
            return f"tune_prune:{self.trial_name}"
        except Exception:  # noqa: BLE001 - before setup
            return "tune_prune:trial"

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> Any:
        from ray.tune import PlacementGroupFactory

        fixed = config.get("fixed", {}) if isinstance(config, dict) else {}
        bundle = {"CPU": float(fixed.get("cpus_per_trial", 1.0))}
        gpus = float(fixed.get("gpus_per_trial", 0.0))
        if gpus > 0:
            bundle["GPU"] = gpus
        return PlacementGroupFactory([bundle])
