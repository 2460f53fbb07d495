"""Fair early stopping on synthetic curves: a fast schedule that is better at the
target is stopped by plain ASHA (equal training_iteration) but not by ours."""

from __future__ import annotations

from dataclasses import dataclass

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_prune.search.early_stopping import FairSuccessiveHalving, make_scheduler

TARGET = 0.8
BASELINE = 0.98


@dataclass(eq=False)
class _Trial:
    trial_id: str


def _result(it: int, sparsity: float, score: float, n: int, **extra: object) -> dict:
    return {
        "training_iteration": it, "iteration": it, "sparsity": sparsity, "score": score,
        "progress": min(1.0, sparsity / TARGET), "baseline_score": BASELINE,
        "schedule_done": it == n, **extra,
    }


# Slow: 8 linear steps of 0.1; it looks great early because it is still nearly dense,
# but ends worse (0.84) than the fast schedule (0.90) at the target.
SLOW = [0.975, 0.97, 0.96, 0.945, 0.925, 0.90, 0.87, 0.84]
SLOW_B = [s - 0.001 for s in SLOW]
SLOW_C = [s - 0.002 for s in SLOW]
# Fast: 2 steps (0.6 then 0.8); at 0.6 it scores 0.93, better than slow at 0.6 (0.90).
FAST = [(0.6, 0.93), (0.8, 0.90)]


def _streams() -> list[tuple[str, dict]]:
    """Interleaved results, slow trials first at each step (as a busy cluster would)."""
    events = []
    for t in range(8):
        for tid, curve in (("slow_a", SLOW), ("slow_b", SLOW_B), ("slow_c", SLOW_C)):
            events.append((tid, _result(t + 1, 0.1 * (t + 1), curve[t], 8)))
        if t < len(FAST):
            s, score = FAST[t]
            events.append(("fast", _result(t + 1, s, score, 2)))
    return events


def _run(scheduler: TrialScheduler) -> dict[str, str]:
    trials = {tid: _Trial(tid) for tid in ("slow_a", "slow_b", "slow_c", "fast")}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    decisions: dict[str, str] = {}
    for tid, result in _streams():
        if decisions.get(tid) == TrialScheduler.STOP:
            continue
        d = scheduler.on_trial_result(None, trials[tid], result)
        if d == TrialScheduler.STOP:
            decisions[tid] = d
        else:
            decisions.setdefault(tid, d)
    return decisions


def test_plain_asha_stops_the_fast_schedule() -> None:
    asha = ASHAScheduler(time_attr="training_iteration", metric="score", mode="max",
                         max_t=8, grace_period=1, reduction_factor=2)
    assert _run(asha)["fast"] == TrialScheduler.STOP


def test_fair_scheduler_keeps_the_fast_schedule() -> None:
    fair = FairSuccessiveHalving("score", "max", rungs=(0.25, 0.5, 0.75), reduction_factor=2)
    decisions = _run(fair)
    assert decisions["fast"] == TrialScheduler.CONTINUE
    # Compared at 60 % sparsity (rung 0.75) the slow schedules are the worse ones.
    assert fair.recorded[0.75]["fast"] > max(v for k, v in fair.recorded[0.75].items() if k != "fast")
    assert any(decisions[t] == TrialScheduler.STOP for t in ("slow_a", "slow_b", "slow_c"))


def test_fair_interpolates_at_the_rung() -> None:
    fair = FairSuccessiveHalving("score", "max", rungs=(0.5,), reduction_factor=2)
    t = _Trial("x")
    # from (0.25, 0.96) to (0.75, 0.90): at 0.5 the estimate is 0.93
    fair.on_trial_result(None, t, _result(1, 0.2, 0.96, 3))
    fair.on_trial_result(None, t, _result(2, 0.6, 0.90, 3))
    assert abs(fair.recorded[0.5]["x"] - 0.93) < 1e-9


def test_fair_min_mode_and_incomparable_rows() -> None:
    fair = FairSuccessiveHalving("score", "min", rungs=(0.5,), reduction_factor=2, min_samples=2,
                                 baseline_attr="none")
    for tid, loss in (("a", 0.1), ("b", 0.2), ("c", 0.05)):
        d = fair.on_trial_result(None, _Trial(tid), _result(1, 0.5, loss, 3))
        assert (d == TrialScheduler.STOP) == (tid == "b")
    d = fair.on_trial_result(None, _Trial("ticket"), _result(1, 0.5, 9.9, 3, es_comparable=False))
    assert d == TrialScheduler.CONTINUE and "ticket" not in fair.recorded[0.5]


def test_make_scheduler_kinds() -> None:
    assert isinstance(make_scheduler("fair"), FairSuccessiveHalving)
    assert isinstance(make_scheduler("asha"), ASHAScheduler)
    assert type(make_scheduler("none")).__name__ == "FIFOScheduler"


def _batch_run(order: list[str], compare_with: str) -> dict[str, str]:
    """Batch 1 (a, b, c) finishes; then d, e and f run in parallel and report in ``order``."""
    fair = FairSuccessiveHalving("score", "max", rungs=(0.5,), reduction_factor=2, min_samples=2,
                                 compare_with=compare_with)
    first = {"a": 0.90, "b": 0.80, "c": 0.70}
    for tid in first:
        fair.on_trial_add(None, _Trial(tid))
    for tid, score in first.items():
        fair.on_trial_result(None, _Trial(tid), _result(1, 0.4, score, 2))
        fair.on_trial_complete(None, _Trial(tid), {})
    for tid in ("d", "e", "f"):
        fair.on_trial_add(None, _Trial(tid))
    second = {"d": 0.86, "e": 0.95, "f": 0.96}
    return {tid: fair.on_trial_result(None, _Trial(tid), _result(1, 0.4, second[tid], 2)) for tid in order}


def test_deterministic_fair_ignores_the_order_of_parallel_reports() -> None:
    # Judged only against the finished batch (cutoff = median of 0.9/0.8/0.7 = 0.8): d (0.86)
    # survives whether or not e and f (0.95, 0.96) reported first.
    assert _batch_run(["d", "e", "f"], "finished") == _batch_run(["e", "f", "d"], "finished")
    assert _batch_run(["e", "f", "d"], "finished")["d"] == TrialScheduler.CONTINUE
    # Asynchronous halving: e and f reporting first raise the cutoff to 0.88 and stop d.
    assert _batch_run(["d", "e", "f"], "all")["d"] == TrialScheduler.CONTINUE
    assert _batch_run(["e", "f", "d"], "all")["d"] == TrialScheduler.STOP


def test_deterministic_fair_never_stops_the_first_batch() -> None:
    fair = FairSuccessiveHalving("score", "max", rungs=(0.5,), reduction_factor=2, min_samples=1,
                                 compare_with="finished")
    for tid in ("a", "b", "c"):
        fair.on_trial_add(None, _Trial(tid))
    decisions = [fair.on_trial_result(None, _Trial(t), _result(1, 0.4, s, 2))
                 for t, s in (("a", 0.9), ("b", 0.1), ("c", 0.2))]
    assert decisions == [TrialScheduler.CONTINUE] * 3
