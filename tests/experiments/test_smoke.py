"""Smoke runs of the experiment scripts (``--quick``): they run and write the expected table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

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


def test_fidelity_quick(tmp_path: Path) -> None:
    from experiments.fidelity.run import main as fidelity_main

    fidelity_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"), "--workers", "1"])
    headers, rows = _table(tmp_path)
    assert headers[:4] == ["target", "budget fraction", "FT epochs / schedule", "Spearman vs full (mean ± std)"]
    assert [r[1] for r in rows] == ["0.5", "1"]
    assert rows[-1][3].startswith(("1.00", "nan"))  # the full budget against itself
    with open(tmp_path / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 3 * 2  # 3 schedules x 2 budgets, the same schedules at each budget
    assert {r["config"] for r in runs if r["fraction"] == "0.5"} == {r["config"] for r in runs if r["fraction"] == "1.0"}


@pytest.fixture(scope="module")
def headline_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One quick headline run (the slow part: Ray and the searches), shared by the tests below."""
    from experiments.headline.run import main as headline_main

    out = tmp_path_factory.mktemp("headline")
    text = headline_main(["--quick", "--out", str(out / "first"), "--cache", str(out / "cache"), "--workers", "1"])
    return out, text


def test_headline_quick(headline_quick: tuple[Path, str]) -> None:
    out, text = headline_quick
    headers, rows = _table(out / "first")
    methods = {(r[1], r[2]) for r in rows}
    assert ("search (defaults)", "–") in methods and ("NNI default (AGP 10 x 1 ep, lr 0.01)", "–") in methods
    for hand in ("one-shot", "AGP", "IMP + rewinding"):
        assert {(hand, "final"), (hand, "paid")} <= methods
    paid = {(r[1], r[2]): float(r[8]) for r in rows}
    # the search's defaults (here: 2 trials screened at DEFAULT_SCREEN_FRACTION of a 0.5-epoch
    # budget, then the best one at 3x the budget); the hand rows get what it paid
    from tune_prune.search.config import DEFAULT_SCREEN_FRACTION

    searched = paid[("search (defaults)", "–")]
    screened = 2 * DEFAULT_SCREEN_FRACTION * 0.5
    assert searched == pytest.approx(screened + 1.5)  # one finalist (no warm_finalist by default)
    assert paid[("one-shot", "paid")] == pytest.approx(searched) and paid[("one-shot", "final")] == 1.5
    assert "search (defaults) − NNI default" in text


def test_headline_reuse_reruns_only_the_paid_rows_a_search_changes(
        headline_quick: tuple[Path, str], tmp_path: Path) -> None:
    """--search-records + --hand-records: rows are reused, except a hand 'paid' row whose
    search paid another budget (so paid comparisons never use a stale budget)."""
    from experiments.headline.run import main as headline_main

    out, _ = headline_quick
    common = ["--quick", "--cache", str(out / "cache"), "--workers", "1"]
    first = [json.loads(line) for line in (out / "first" / "runs.jsonl").read_text().splitlines()]
    search = [r for r in first if r["method"] == "search (defaults)"]
    assert len(search) == 1
    changed = tmp_path / "search.jsonl"
    changed.write_text(json.dumps({**search[0], "epochs_paid": search[0]["epochs_paid"] + 1.0}) + "\n")

    inplace = tmp_path / "same" / "runs.jsonl"  # --out the folder the records come from
    inplace.parent.mkdir()
    inplace.write_text((out / "first" / "runs.jsonl").read_text())
    headline_main([*common, "--out", str(inplace.parent), "--hand-records", str(inplace),
                   "--search-records", str(inplace)])
    same = [json.loads(line) for line in inplace.read_text().splitlines()]
    assert sorted(map(json.dumps, same)) == sorted(map(json.dumps, first))  # nothing rerun, nothing lost

    headline_main([*common, "--out", str(tmp_path / "rerun"), "--hand-records", str(out / "first" / "runs.jsonl"),
                   "--search-records", str(changed)])
    rerun = [json.loads(line) for line in (tmp_path / "rerun" / "runs.jsonl").read_text().splitlines()]
    assert len(rerun) == len(first)
    paid = [r for r in rerun if r.get("budget_name") == "paid"]
    assert paid and all(r["epochs_paid"] == pytest.approx(search[0]["epochs_paid"] + 1.0, abs=0.01) for r in paid)
    kept = [r for r in rerun if r.get("budget_name") != "paid" and r["method"] != "search (defaults)"]
    assert sorted(map(json.dumps, kept)) == sorted(
        json.dumps(r) for r in first if r.get("budget_name") != "paid" and r["method"] != "search (defaults)")


def test_headline_hand_distill_adds_a_distilled_one_shot_row(
        headline_quick: tuple[Path, str], tmp_path: Path) -> None:
    from experiments.headline.run import DISTILLED, hand_schedule
    from experiments.headline.run import main as headline_main

    out, _ = headline_quick
    records = str(out / "first" / "runs.jsonl")
    headline_main(["--quick", "--cache", str(out / "cache"), "--workers", "1", "--out", str(tmp_path / "kd"),
                   "--hand-records", records, "--search-records", records, "--hand-distill", "0.5"])
    rows = [json.loads(line) for line in (tmp_path / "kd" / "runs.jsonl").read_text().splitlines()]
    first = (out / "first" / "runs.jsonl").read_text().splitlines()
    distilled = [r for r in rows if r["method"] == DISTILLED]
    assert len(rows) == len(first) + len(distilled)  # the rest reused, nothing else rerun
    assert {r["budget_name"] for r in distilled} == {"final", "paid"}
    for r in distilled:
        schedule = json.loads(r["schedule"])
        assert (schedule["distill"], schedule["distill_temperature"], schedule["total_iteration"]) == (0.5, 2.0, 1)
    with pytest.raises(ValueError, match="needs distill"):
        hand_schedule(DISTILLED, "weights", 15.0, 0.1, 5)
    with pytest.raises(SystemExit):
        headline_main(["--quick", "--hand-distill", "1.5"])


def test_headline_swept_rows_split_the_paid_budget_over_the_lr_grid(
        headline_quick: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--swept: each lr of the grid gets paid / len(lrs), and the row costs the whole sweep."""
    from experiments.headline import run as headline

    out, _ = headline_quick
    records = str(out / "first" / "runs.jsonl")
    headline.main(["--quick", "--cache", str(out / "cache"), "--workers", "1", "--out", str(tmp_path / "sw"),
                   "--hand-records", records, "--search-records", records, "--swept"])
    rows = [json.loads(line) for line in (tmp_path / "sw" / "runs.jsonl").read_text().splitlines()]
    paid = next(r["epochs_paid"] for r in rows if r["method"] == "search (defaults)")
    swept = [r for r in rows if r.get("budget_name") == "swept"]
    assert {r["method"] for r in swept} == {"one-shot", "AGP", "IMP + rewinding"}
    assert all(r["epochs_paid"] == pytest.approx(paid) for r in swept)  # --quick: one lr, the whole budget
    # with a grid of n lrs each run gets paid / n and the row is charged n runs
    import tune_prune.search as search_pkg

    monkeypatch.setattr(search_pkg, "run_schedule", lambda config: [
        {"objective": 0.5, "test_score": 0.4, "sparsity": 0.9, "macs_ratio": 0.1,
         "finetune_epochs_cum": config["finetune_epochs"]}])
    rec = headline.run_hand({"fixed": {}, "trial": {"finetune_epochs": 2.5}, "sweep_runs": 4, "key": {}})
    assert (rec["epochs_final"], rec["epochs_paid"]) == (2.5, 10.0)


def test_headline_search_defaults_take_channel_options_for_channel_targets() -> None:
    from experiments.headline.run import search_defaults
    from tune_prune.errors import ConfigError

    options = {"channel_options": {"normalizer": ["none", "mean"]}}
    assert search_defaults(options, ["c4x", "c6x"]).sparsity_kind == "channels"
    assert search_defaults({}, ["w0.95"]).sparsity_kind == "weights"
    with pytest.raises(ConfigError, match="channel_options"):  # weights targets cannot take them
        search_defaults(options, ["w0.95", "c4x"])


def test_distill_quick_and_its_pairing(tmp_path: Path) -> None:
    from experiments.distill.run import main as distill_main
    from experiments.distill.run import summarise

    text = distill_main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"), "--workers", "1"])
    headers, rows = _table(tmp_path)
    assert [r[1] for r in rows] == ["0", "0.5", "0.9"] and all(r[-1] == "1" for r in rows)
    assert "python -m experiments.distill.run --quick" in text
    # the lr is picked on val per seed; the difference is paired with plain fine-tuning's pick
    recs = [{"target": "w0.9", "seed": s, "lr": lr, "weight": w, "temperature": 0.0 if w == 0 else 2.0,
             "val": val, "test": test, "seconds": 1.0}
            for s, lr, w, val, test in [(0, 0.1, 0.0, 0.8, 0.70), (0, 0.3, 0.0, 0.9, 0.75),
                                        (0, 0.1, 0.5, 0.95, 0.72), (0, 0.3, 0.5, 0.7, 0.99),
                                        (1, 0.1, 0.0, 0.9, 0.60), (1, 0.1, 0.5, 0.9, 0.66)]]
    _, table = summarise(recs)
    plain, taught = table
    assert plain[3] == "67.50 ± 10.61" and plain[6] == "0.1 0.3"
    assert taught[3] == "69.00 ± 4.24" and taught[4] == "+1.50" and taught[5] == "1/1/0"
