"""Smoke run of experiments/channels_latency (``--quick``): it runs and writes the expected tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from experiments.channels_latency.run import interpolate, non_dominated, pooled_by_architecture
from experiments.channels_latency.run import main as channels_latency_main


def test_interpolate_is_linear_in_latency_and_never_extrapolates() -> None:
    curve = [(2.0, 90.0), (1.0, 80.0), (1.5, 86.0)]  # any order
    assert interpolate(curve, 1.25) == pytest.approx(83.0)
    assert interpolate(curve, 1.75) == pytest.approx(88.0)
    assert interpolate(curve, 2.0) == pytest.approx(90.0)
    assert interpolate(curve, 0.99) is None and interpolate(curve, 2.01) is None


def test_one_latency_per_architecture_and_the_front_on_it() -> None:
    times = {"a": [1.0, 1.2], "b": [1.4, 1.6], "c": [0.5, 0.7]}
    lat = pooled_by_architecture(times, {"a": "X", "b": "X", "c": "Y"})
    assert lat == pytest.approx({"a": 1.3, "b": 1.3, "c": 0.6})
    # same architecture (same latency), lower val: dominated; faster and worse: kept
    assert non_dominated({"a": (0.9, lat["a"]), "b": (0.8, lat["b"]), "c": (0.5, lat["c"])}) == {"a", "c"}


@pytest.mark.slow
def test_channels_latency_quick(tmp_path: Path) -> None:
    text = channels_latency_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"),
                                  "--workers", "1"])
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    headers, body = rows[0], rows[1:]
    assert "latency ms (re-measured)" in headers and "TP test acc % at that latency" in headers
    assert headers[-1] == "search − TP (points)"
    assert body, "the search's Pareto front is empty"
    ms = headers.index("latency ms (re-measured)")
    assert all(r[0] == "0" and float(r[ms]) > 0 for r in body)  # seed 0, a measured latency
    assert any(r[headers.index("on re-timed front")] == "yes" for r in body)
    diff = headers.index("search − TP (points)")
    for r in body:  # a signed difference, or a dash where the point is outside TP's latency range
        assert r[diff] == "–" or r[diff].startswith(("+", "-"))
    assert "python -m experiments.channels_latency.run --quick" in text
    assert "torch-pruning curve" in text and "- seed 0:" in text
    with open(tmp_path / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert {r["kind"] for r in runs} == {"torch-pruning", "search"}
    assert sorted(float(r["ratio"]) for r in runs if r["kind"] == "torch-pruning") == [0.3, 0.7]
    for r in runs:  # the reloaded front model scores what the search reported
        if r["kind"] == "search":
            assert float(r["test_reloaded"]) == pytest.approx(float(r["test"]))
