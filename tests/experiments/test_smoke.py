"""Smoke runs of the experiment scripts (``--quick``): they run and write the expected table."""

from __future__ import annotations

import csv
from pathlib import Path

from experiments.lottery_ticket.run import main as lottery_main
from experiments.overhead.run import main as overhead_main
from experiments.speedup.run import main as speedup_main


def _table(out: Path) -> tuple[list[str], list[list[str]]]:
    assert (out / "results.md").is_file()
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_lottery_ticket_quick(tmp_path: Path) -> None:
    text = lottery_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert headers[:4] == ["round", "sparsity (Conv+Linear weights)", "method",
                           "test acc % (mean ± std)"]
    methods = [r[2] for r in rows]
    assert methods[0] == "dense baseline"
    # 2 rounds x 4 methods after the dense row
    assert len(rows) == 1 + 2 * 4
    assert {"lottery ticket (IMP, rewind to init)", "random re-init, same masks",
            "one-shot magnitude + FT"} <= set(methods)
    assert "python -m experiments.lottery_ticket.run --quick" in text
    assert (tmp_path / "runs.csv").is_file()


def test_speedup_quick(tmp_path: Path) -> None:
    speedup_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert "MACs ratio" in headers and "latency ratio b64" in headers
    keys = [(r[0], r[1]) for r in rows]
    for model in ("digits", "resnet20"):
        assert any(m == model and k.startswith("tune_prune") for m, k in keys)
        assert any(m == model and k.startswith("torch-pruning") for m, k in keys)
    assert ("digits", "dense baseline") in keys
    macs = {k: float(r[3]) for k, r in zip(keys, rows)}
    for model in ("digits", "resnet20"):  # MACs matched within the quick tolerance (5%)
        ours = next(v for (m, k), v in macs.items() if m == model and k.startswith("tune"))
        theirs = next(v for (m, k), v in macs.items() if m == model and k.startswith("torch"))
        assert ours < 1.0 and abs(theirs / ours - 1) <= 0.06


def test_overhead_quick(tmp_path: Path) -> None:
    overhead_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    headers, rows = _table(tmp_path)
    assert headers == ["measurement", "model", "variant", "ms (median)", "ratio", "note"]
    names = [r[0] for r in rows]
    for pruner in ("level", "l1", "l2", "fpgm", "taylorfo", "apoz", "mean_activation", "slim"):
        assert any(n.startswith(f"compress(), 50% sparsity: {pruner} ") for n in names), pruner
    assert sum(n.startswith("training step") for n in names) == 4
    assert sum(n.startswith("speedup_model") for n in names) == 2
    assert sum(n.startswith("prune 50% channels") for n in names) == 4
    assert all(float(r[3]) > 0 for r in rows)


def test_masked_step_benchmark_runs_the_overhead_measurement() -> None:
    from benchmarks.masked_step import main as masked_main

    text = masked_main(["--steps", "1", "--rounds", "1", "--batch", "4"])
    assert "python -m benchmarks.masked_step --steps 1" in text
    rows = [line for line in text.splitlines() if line.startswith("| training step, batch 4 | CIFAR CNN")]
    assert [r.split(" | ")[2] for r in rows] == ["plain", "masked (tune_prune hooks, 50% weights)"]
