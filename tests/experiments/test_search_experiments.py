"""Smoke runs (``--quick``) of the search experiments: search_vs_hand and early_stopping.

Each writes its tables into a temporary folder; the numbers are meaningless, only the
plumbing (hand schedules through the trainable, TPE and random searches on Ray, TEST
evaluation of the stored models, the tables) is checked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _table(out: Path) -> tuple[list[str], list[list[str]]]:
    assert (out / "results.md").is_file()
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_search_vs_hand_quick(tmp_path: Path) -> None:
    from experiments.search_vs_hand.run import METHODS, SEARCH, WARM
    from experiments.search_vs_hand.run import main as svh_main

    text = svh_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert headers[:5] == ["target", "kind", "sparsity (config units)", "method", "test acc % (mean ± std)"]
    assert [r[3] for r in rows] == list(METHODS)
    assert all(r[0] == "w0.8" for r in rows)
    assert "python -m experiments.search_vs_hand.run --quick" in text
    assert "Search minus the best hand schedule" in text
    with open(tmp_path / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == len(METHODS)
    for r in runs:
        assert 0.0 <= float(r["test_acc"]) <= 1.0
        assert float(r["epochs_schedule"]) > 0
    by_method = {r["method"]: r for r in runs}
    # the warm start is one of the search's trials: the pick (best on val) is not below it
    assert float(by_method[SEARCH]["val_acc"]) >= float(by_method[WARM]["val_acc"])
    assert " 1 it " in by_method[WARM]["schedule"]  # one-shot: a single pruning iteration


def test_early_stopping_quick(tmp_path: Path) -> None:
    from experiments.early_stopping.run import main as es_main

    text = es_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert headers[0] == "early stopping"
    assert [r[0] for r in rows] == ["fair", "asha", "none"]
    assert "python -m experiments.early_stopping.run --quick" in text
    assert (tmp_path / "runs.csv").is_file()


def test_finalists_quick(tmp_path: Path) -> None:
    """The finalists script's real path: screened searches with every candidate run, then the replay."""
    from experiments.finalists.run import main as finalists_main

    finalists_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert headers[:2] == ["target", "finalists policy"]
    assert [r[1] for r in rows][:2] == ["top1", "top1+warm"]
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["finalists"]
    screened = [f["screen_objective"] for f in records[0]["finalists"]]
    assert screened == sorted(screened, reverse=True)  # the screen's order, which the policies replay
