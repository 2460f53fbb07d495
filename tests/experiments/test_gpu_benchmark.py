"""Smoke run of benchmarks/gpu_resnet56.py (``--quick --device cpu``): table shape and ratios."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from benchmarks.gpu_resnet56 import HEADERS, NOTE
from benchmarks.gpu_resnet56 import main as gpu_main

#: Quick mode is a ResNet-8 (16/32/64 channels): a uniform channel sparsity moves the MACs
#: ratio in steps of up to ~6% near 1/2, so the calibration can only land within a step.
QUICK_MACS_TOL = 0.10


def test_gpu_resnet56_quick(tmp_path: Path) -> None:
    text = gpu_main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert (tmp_path / "results.md").read_text() == text
    assert "python -m benchmarks.gpu_resnet56 --quick --device cpu" in text
    assert NOTE in text and "torch-pruning" in text and "device: cpu" in text
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == HEADERS

    train = [r for r in rows if r["measurement"].startswith("fine-tune step")]
    assert [r["variant"].split(",")[0].split(" (")[0] for r in train] == [
        "plain", "masked: level", "masked: l1 dependency-aware"]
    assert all(r["batch"] == "8" for r in train)
    for r in train:
        for key in ("ms (median)", "images/s", "step time this/plain"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["variant"], key, value)
        assert r["device"].startswith("CPU")

    infer = [r for r in rows if r["measurement"].startswith("inference latency")]
    assert sorted({int(r["batch"]) for r in infer}) == [1, 8]
    assert len(infer) == 2 * 3  # dense + 2x + 2.5x at each batch
    for r in infer:
        for key in ("MACs dense/this", "params dense/this", "ms (median)", "images/s",
                    "latency dense/this"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["variant"], key, value)
    for target in (2.0, 2.5):
        hits = [r for r in infer if r["variant"].startswith(f"sped-up, {target:g}x MACs target")]
        assert len(hits) == 2
        for r in hits:
            achieved = 1.0 / float(r["MACs dense/this"])  # MACs pruned / dense
            assert abs(achieved * target - 1.0) <= QUICK_MACS_TOL, (target, achieved)
            assert float(r["params dense/this"]) > 1.0
    dense = [r for r in infer if r["variant"] == "dense"]
    assert all(r["MACs dense/this"] == "1.000" and r["latency dense/this"] == "1.000"
               for r in dense)
