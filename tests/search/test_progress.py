"""The search's progress line: counts, best at target, time left, terminal vs plain output."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from tune_prune.search.progress import ProgressCallback, ProgressCounts, StatusLine


def _row(iteration: int, planned: int, score: float, reached: bool, done: bool = False) -> dict:
    return {"iteration": iteration, "planned_iterations": planned, "score": score,
            "reached_target": reached, "schedule_done": done, "sparsity": 0.9, "objective": score,
            "generator": "agp", "pruner": "level", "mode": "global"}


def test_counts_best_at_target_and_time_left() -> None:
    counts = ProgressCounts(total=4, started_at=0.0)
    assert counts.seconds_left(now=10.0) is None
    assert "estimating" in counts.summary(now=10.0)
    counts.start("a")
    counts.start("b")
    counts.result("a", _row(1, 2, 0.95, reached=False))  # below target: not a best
    assert counts.best is None
    counts.result("a", _row(2, 2, 0.80, reached=True, done=True))
    counts.complete("a", _row(2, 2, 0.80, reached=True, done=True))
    counts.result("b", _row(1, 4, 0.85, reached=True))  # at target, higher
    assert (counts.best, counts.best_trial) == (0.85, "b")
    # progress: a done (1) + b at 1/4 = 1.25 of 4 trials in 50 s -> 50 * 2.75 / 1.25 = 110 s
    assert counts.seconds_left(now=50.0) == pytest.approx(110.0)
    counts.complete("b", _row(1, 4, 0.85, reached=True))  # stopped before its schedule ended
    counts.start("c")
    counts.error("c")
    assert (counts.done, counts.finished, counts.stopped, counts.failed, len(counts.running)) == (3, 1, 1, 1, 0)
    text = counts.summary(now=125.0)
    assert "3/4 trials done, 0 running, 1 stopped, 1 failed" in text
    assert "best at target 0.8500 (b)" in text
    assert "2m05s elapsed" in text


def test_lower_is_better_keeps_the_lowest() -> None:
    counts = ProgressCounts(total=2, higher_is_better=False)
    counts.result("a", _row(1, 1, 0.3, reached=True))
    counts.result("b", _row(1, 1, 0.2, reached=True))
    counts.result("c", _row(1, 1, 0.4, reached=True))
    assert counts.best_trial == "b"


def test_reconcile_counts_trials_restored_by_a_resume_once() -> None:
    counts = ProgressCounts(total=3)
    trials = [SimpleNamespace(trial_id="a", status="TERMINATED", last_result=_row(2, 2, 0.9, True, True)),
              SimpleNamespace(trial_id="b", status="ERROR", last_result={}),
              SimpleNamespace(trial_id="c", status="RUNNING", last_result={})]
    counts.reconcile(trials)
    counts.reconcile(trials)
    assert (counts.finished, counts.failed, counts.best_trial) == (1, 1, "a")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_terminal_redraws_in_place_and_keeps_events_above() -> None:
    out, clock = io.StringIO(), _Clock()
    line = StatusLine(out, tty=True, tty_interval_s=1.0, clock=clock)
    line.update("status 1")
    line.log("event")
    clock.now = 0.5
    line.update("status 2")  # too soon: not drawn, but remembered for the next redraw
    line.log("event 2")
    line.close()
    assert out.getvalue() == ("\r\x1b[Kstatus 1" "\r\x1b[Kevent\nstatus 1" "\r\x1b[Kevent 2\nstatus 2" "\n")


def test_plain_output_is_whole_lines_throttled_except_when_forced() -> None:
    out, clock = io.StringIO(), _Clock()
    line = StatusLine(out, tty=False, plain_interval_s=30.0, clock=clock)
    line.update("s1")
    clock.now = 10.0
    line.update("s2")  # throttled
    line.update("s3", force=True)  # a trial ended
    clock.now = 45.0
    line.update("s4")
    line.log("event")
    line.close()
    assert out.getvalue().splitlines() == ["s1", "s3", "s4", "event"]
    assert "\r" not in out.getvalue()


def test_callback_prints_events_and_the_final_status() -> None:
    out = io.StringIO()
    counts = ProgressCounts(total=1)
    cb = ProgressCallback(counts, status=StatusLine(out, tty=False, plain_interval_s=1e9))
    trial = SimpleNamespace(trial_id="t1", path="/x", last_result=None)
    cb.on_trial_start(0, [trial], trial)
    row = _row(1, 1, 0.9, reached=True, done=True)
    cb.on_trial_result(0, [trial], trial, row)
    trial.last_result = row
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[search] 0/1 trials done, 1 running")
    assert any(line.startswith("  t1 it 1/1 agp/level:global") and "[done]" in line for line in lines)
    assert "  t1 finished after 1 iteration(s)" in lines
    assert lines[-1].startswith("[search] 1/1 trials done, 0 running, 0 stopped, 0 failed | best at target 0.9000 (t1)")


def test_status_line_pickles_without_its_stream() -> None:
    """Tune pickles callbacks into its experiment snapshot (tuner.pkl)."""
    import pickle
    import sys

    class Unpicklable(io.StringIO):
        def __reduce__(self):
            raise TypeError("cannot pickle a stream")

    cb = ProgressCallback(ProgressCounts(total=2), status=StatusLine(Unpicklable(), tty=True))
    clone = pickle.loads(pickle.dumps(cb))
    assert clone.status.stream is sys.stdout and clone.status.tty and clone.counts.total == 2


def test_the_same_status_is_not_printed_twice() -> None:
    out, clock = io.StringIO(), _Clock()
    line = StatusLine(out, tty=False, plain_interval_s=30.0, clock=clock)
    line.update("done 1/1", force=True)
    line.update("done 1/1", force=True)  # the trial ended, then the experiment: same text
    clock.now = 60.0
    line.update("done 1/1")
    assert out.getvalue().splitlines() == ["done 1/1"]
