"""A short soak: benchmarks/soak.py's own measurement on 8 trials at concurrency 2 (slow).

The benchmark (200 trials; the lead runs it) watches what could grow with the number of
trials; this runs the same :func:`measure` on a few and asserts what its table shows.
Two settings differ: no dashboard, and schedules of 4 iterations (the soak's are 1-2), so
every trial that runs to its end reports more checkpoints than are kept and retention
has something to delete. Asserted: per-trial checkpoint retention (``num_to_keep=2``
plus the latest one Tune holds),
``trials_live.csv`` one row per report and only ever appended to (re-read while the
search runs), a driver RSS that does not keep growing (a loose bound: the last quarter
of the trials within 1.5x + 200 MiB of the first), and no trial errors.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
TRIALS = 8
CONCURRENCY = 2
ITERATIONS = 4
#: checkpoint_* folders a trial folder may hold: CheckpointConfig(num_to_keep=2) + the latest
MAX_CHECKPOINTS = 2 + 1


def _soak_module():
    """benchmarks/soak.py, imported by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tune_prune_benchmarks_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_short_soak(tmp_path) -> None:
    import ray

    assert not ray.is_initialized(), "a Ray instance is still initialised in this process"
    soak = _soak_module()
    result = soak.measure(TRIALS, CONCURRENCY, tmp_path, include_dashboard=False,
                          min_iterations=ITERATIONS, max_iterations=ITERATIONS)
    assert not ray.is_initialized()
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}

    assert result["errors"] == 0, summary
    assert result["trials"] == TRIALS, summary
    # retention: never more checkpoints per trial than Tune keeps
    assert 1 <= result["checkpoints_max"] <= MAX_CHECKPOINTS, result["checkpoints_per_trial"]
    assert max(result["reports_per_trial"].values()) > MAX_CHECKPOINTS, result["reports_per_trial"]
    # the live table: one row per report, none twice, only ever appended to
    assert result["rows"] == result["reports"], summary
    assert result["live_rows_per_trial"] == result["reports_per_trial"]
    assert result["live_duplicates"] == 0
    assert result["live_reads"] >= 2 and result["live_rewrites"] == 0, summary
    # the driver's memory: no growth without bound (loose: a few trials, a shared box)
    first, *_, last = result["rss_mib_by_quarter"]
    assert last <= 1.5 * first + 200, result["rss_mib_by_quarter"]
    print(soak.table(result, type("Args", (), {"concurrency": CONCURRENCY})(), "-", "-"))
