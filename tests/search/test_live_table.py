"""trials_live.csv: one appended row per report, readable while the search runs."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from tune_prune.search.live_table import COLUMNS, LIVE_FILE, LiveTable


def _report(cb: LiveTable, trial_id: str, iteration: int, config: dict, **extra) -> None:
    trial = SimpleNamespace(trial_id=trial_id, config=config)
    row = {"iteration": iteration, "score": 0.5 + iteration / 10, "sparsity": 0.3 * iteration,
           "reached_target": False, "stage": "search", "nested": {"x": 1}, **extra}
    cb.on_trial_result(0, [trial], trial, row)


def test_rows_are_appended_with_one_header(tmp_path) -> None:
    cb = LiveTable(tmp_path)
    config = {"fixed": {"seed": 0}, "generator": "agp", "lr": 0.05}
    _report(cb, "a", 1, config)
    first_bytes = (tmp_path / LIVE_FILE).read_bytes()
    _report(cb, "b", 1, {"fixed": {}, "finalist": {"generator": "linear", "lr": 0.1}}, stage="final")
    _report(cb, "a", 2, config, objective=float("nan"))
    table = pd.read_csv(tmp_path / LIVE_FILE, dtype={"trial_id": str})
    assert list(table.columns) == list(COLUMNS)
    assert list(zip(table["trial_id"], table["iteration"])) == [("a", 1), ("b", 1), ("a", 2)]
    assert list(table["generator"]) == ["agp", "linear", "agp"]  # a finalist's schedule is unwrapped
    assert table["stage"].tolist() == ["search", "final", "search"]
    assert table["objective"].isna().all()  # NaN and missing values are empty cells
    # appending: the file only grows, the first row's bytes stay where they were
    after = (tmp_path / LIVE_FILE).read_bytes()
    assert after.startswith(first_bytes) and len(after) > len(first_bytes)


def test_a_second_callback_on_the_same_folder_keeps_appending(tmp_path) -> None:
    """A resumed search builds a new callback: no second header, earlier rows kept."""
    _report(LiveTable(tmp_path), "a", 1, {})
    _report(LiveTable(tmp_path), "a", 2, {})
    lines = (tmp_path / LIVE_FILE).read_text().splitlines()
    assert lines[0].startswith("trial_id,") and sum(line.startswith("trial_id,") for line in lines) == 1
    assert len(lines) == 3


def test_collect_keeps_a_report_tunes_result_json_lost(tmp_path) -> None:
    """A restarted trial's result.json is copied back from a stale storage copy by Tune and
    can lose its first report; the driver's reports.jsonl still has it (seen in CI)."""
    import json

    from tune_prune.search import results as R

    trial = tmp_path / "trial_t1"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"generator": "agp"}))
    rows = [{"trial_id": "t1", "iteration": i, "training_iteration": i, "objective": 0.1 * i,
             "finetune_epochs_cum": i, "schedule_done": i == 3, "score": 0.5} for i in (1, 2, 3)]
    (trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows[1:]) + "\n")  # lost row 1
    cb = LiveTable(tmp_path)
    for row in rows:
        cb.on_trial_result(0, [], SimpleNamespace(trial_id="t1", config={"generator": "agp"}),
                           {**row, "config": {"huge": "not stored twice"}})
    table = R.collect(tmp_path)
    assert list(table["iteration"]) == [1, 2, 3]
    assert "config" not in (tmp_path / "reports.jsonl").read_text()
    (tmp_path / "reports.jsonl").unlink()  # an experiment of an older release: result.json alone
    assert list(R.collect(tmp_path)["iteration"]) == [2, 3]
