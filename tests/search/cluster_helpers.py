"""A two-node Ray test cluster on this machine, kept out of other processes' way.

``ray.cluster_utils.Cluster`` writes its address to ``/tmp/ray/ray_current_cluster``
(and deletes that file on shutdown). A plain ``ray.init()`` anywhere else on the machine
reads the file and *connects* to the cluster instead of starting its own instance, so
on a shared box a concurrent test run would land on (or break against) this cluster.
:func:`two_node_cluster` puts the file back as it was right after the nodes start and
again after shutdown; the search under test connects through the explicit address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _address_file() -> Path:
    from ray._private.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def _restore(path: Path, saved: str | None) -> None:
    try:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(saved)
    except OSError:
        pass


#: GCS settings under which a node that stops answering counts as dead within ~5 s
#: (Ray's defaults take about 30 s): health checks every second, dead after 5 failures.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


@contextlib.contextmanager
def two_node_cluster(
    cpus_per_node: int = 1, timeout_s: float = 60.0, system_config: dict[str, Any] | None = None
) -> Iterator[Any]:
    """Head + one worker node (``cpus_per_node`` CPUs each, no dashboard); always shut down.

    ``system_config``: Ray's internal settings of the head (e.g. :data:`FAST_NODE_DEATH`).
    """
    from ray.cluster_utils import Cluster

    address_file = _address_file()
    saved = address_file.read_text() if address_file.exists() else None
    cluster = None
    head_args: dict[str, Any] = {"num_cpus": cpus_per_node, "include_dashboard": False}
    if system_config:
        head_args["_system_config"] = dict(system_config)
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        _restore(address_file, saved)
        cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes(timeout=timeout_s)
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.shutdown()
        finally:
            _restore(address_file, saved)


def remove_worker_node(cluster: Any) -> str:
    """Kill the worker node of a :func:`two_node_cluster` without warning (SIGKILL of its
    raylet and the processes it started: a machine lost); returns its node id."""
    (worker,) = cluster.worker_nodes
    node_id = worker.node_id
    cluster.remove_node(worker, allow_graceful=False)
    return node_id


def node_ids(cluster: Any) -> dict[str, str]:
    """``{"head": node id, "worker": node id}`` of a :func:`two_node_cluster`."""
    (worker,) = cluster.worker_nodes
    return {"head": cluster.head_node.node_id, "worker": worker.node_id}


def actor_nodes(cluster: Any, actor_ids: Iterable[str]) -> dict[str, str]:
    """Node id of each actor (alive or dead), read from the GCS actor table.

    Needs no dashboard and no connected driver (``ray.util.state`` needs both): the
    cluster's own GlobalState talks to the GCS directly, and the GCS keeps dead actors.
    """
    table = cluster.global_state.actor_table(None)
    out: dict[str, str] = {}
    for actor_id in actor_ids:
        info = table.get(actor_id)
        if info is not None:
            out[actor_id] = info["Address"]["NodeID"]
    return out
