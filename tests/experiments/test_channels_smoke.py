"""Smoke run of experiments/channels (``--quick``): it runs and writes the expected tables."""

from __future__ import annotations

import csv
from pathlib import Path

from experiments.channels.run import main as channels_main


def test_channels_quick(tmp_path: Path) -> None:
    text = channels_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", "prune 50 % + removal", "ms (median)", "ratio to torch-pruning",
                       "torch-pruning ms"]
    models = {r[0] for r in rows[1:]}
    assert models == {"digits", "mnist1d", "resnet20 (random init)"}
    assert {r[1] for r in rows[1:]} == {"nni warm", "nni cold", "tp-rule warm", "torch-pruning"}
    for workload in ("digits", "mnist1d"):
        assert f"### {workload}: test accuracy" in text
    # the tp-rule control reproduces torch-pruning: every pair is a tie
    assert "round_to 1 tp-rule: 0/0/1 of 1" in text
    with open(tmp_path / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert {r["method"] for r in runs} == {"torch-pruning", "nni", "tp-rule", "mean+bn+in"}
    assert {r["round_to"] for r in runs} == {"1", "4"}
    assert "python -m experiments.channels.run --quick" in text


def test_channels_quick_taylorfo(tmp_path: Path) -> None:
    """The statistics pruner runs through the workload's trainer and gets its own column."""
    text = channels_main(["--quick", "--workloads", "digits", "--rules", "nni", "taylorfo", "--round-to", "1",
                          "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    with open(tmp_path / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert {r["method"] for r in runs} == {"torch-pruning", "nni", "taylorfo"}
    taylor = [r for r in runs if r["method"] == "taylorfo"]
    nni = [r for r in runs if r["method"] == "nni"]
    assert taylor[0]["macs_ratio"] == nni[0]["macs_ratio"]  # same per-layer channel counts
    assert "taylorfo: taylorfo pruner after 16 trainer batches" in text
