"""The finalist policies experiment: replaying policies on one search's finalists (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.finalists.run import main, policies


def _fin(screen: float, select: float, test: float, warm: bool = False) -> dict:
    return {"screen_objective": screen, "objective": select, "test": test, "epochs": 15.0, "warm": warm,
            "schedule": {"generator": "agp"}}


RECORD = {"target": "w0.95", "seed": 0, "screen_epochs": 30.0, "final_budget": 15.0, "finalists": [
    _fin(0.50, 0.40, 0.41),               # the screen's first collapses at the full budget
    _fin(0.49, 0.60, 0.62),
    _fin(0.40, 0.55, 0.50),
    _fin(0.30, 0.70, 0.71, warm=True),    # the best warm start, outside the screen's top 3
]}


def test_policies_pick_on_the_select_split_and_pay_for_every_finalist_they_run() -> None:
    got = policies(RECORD, top=3)
    assert got["top1"] == (pytest.approx(41.0), 45.0, 1)
    assert got["top1+warm"] == (pytest.approx(71.0), 60.0, 2)
    assert got["top2"] == (pytest.approx(62.0), 60.0, 2)
    assert got["top3"] == (pytest.approx(62.0), 75.0, 3)  # the third runs but loses on select
    assert got["top2+warm"] == (pytest.approx(71.0), 75.0, 3)
    assert got["margin 0.01"] == (pytest.approx(62.0), 60.0, 2)  # only 0.49 is within 0.01 of 0.50
    assert got["margin 0.02"] == got["margin 0.01"]
    # a warm start that screened first is not paid twice
    first_warm = {**RECORD, "finalists": [_fin(0.5, 0.4, 0.41, warm=True), *RECORD["finalists"][1:3]]}
    assert policies(first_warm, top=3)["top1+warm"] == (pytest.approx(41.0), 45.0, 1)


def test_from_records_writes_the_table_against_the_best_hand_schedule(tmp_path: Path) -> None:
    records = tmp_path / "runs.jsonl"
    records.write_text(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "seed": 1}) + "\n")
    hand = tmp_path / "hand.jsonl"
    rows = [{"target": "w0.95", "seed": s, "method": m, "budget_name": "final", "lr": lr, "val": v, "test": t}
            for s in (0, 1) for m, lr, v, t in (("one-shot", 0.1, 0.9, 0.40), ("one-shot", 0.3, 0.8, 0.99),
                                                ("AGP", 0.1, 0.5, 0.30))]
    hand.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main(["--from-records", str(records), "--hand-records", str(hand), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "results.md").read_text()
    # one-shot's lr is picked on val (0.1: test 40 %), not test (0.3: 99 %): top1 (41 %) is +1.00 ahead
    assert "| w0.95 | top1 | 2 | 41.00 | 1.0 | 3.00x | 3.00x | +1.00 | 2/2 | one-shot |" in table
    assert "- top1+warm: pick − best hand +31.00 points per cell" in table
