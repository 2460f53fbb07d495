"""The Optuna searcher: early-stopped trials are PRUNED, the study is readable from disk."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tune_prune.search.config import SearchConfig
from tune_prune.search.searcher import JOURNAL_FILE, PruneAwareOptunaSearch, journal_storage
from tune_prune.search.space import define_space, make_sampler
from tune_prune.search.warm_start import warm_start_points


def _searcher(tmp_path: Path, cfg: SearchConfig, metric, mode) -> PruneAwareOptunaSearch:
    return PruneAwareOptunaSearch(
        space=functools.partial(define_space, cfg=cfg), metric=metric, mode=mode,
        sampler=make_sampler(cfg), study_name="s", storage=journal_storage(tmp_path),
    )


def _res(it: int, value: float, done: bool, **kw: object) -> dict:
    return {"training_iteration": it, "best_objective": value, "objective": value, "macs": 1e5,
            "schedule_done": done, "score": value, "sparsity": 0.8, "sparsity_shortfall": 0.0, **kw}


def test_stopped_trials_are_pruned_not_complete(tmp_path: Path) -> None:
    cfg = SearchConfig.create()
    s = _searcher(tmp_path, cfg, "best_objective", "max")
    for tid in ("a", "b", "c"):
        config = s.suggest(tid)
        assert "generator" in config and "lr" in config
    s.on_trial_result("a", _res(1, -0.9, False))
    s.on_trial_complete("a", _res(2, 0.95, True))
    s.on_trial_result("b", _res(1, -0.8, False))
    s.on_trial_complete("b", _res(2, -0.6, False))  # stopped by the scheduler at step 2
    s.on_trial_complete("c", None, error=True)

    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    by_id = {t.user_attrs.get("tune_trial_id"): t for t in study.trials}
    assert by_id["a"].state == TrialState.COMPLETE and by_id["a"].value == 0.95
    assert by_id["b"].state == TrialState.PRUNED
    assert by_id["b"].intermediate_values == {1: -0.8, 2: -0.6}
    assert by_id["c"].state == TrialState.FAIL
    assert by_id["a"].user_attrs["sparsity"] == 0.8
    assert (tmp_path / JOURNAL_FILE).exists()


def test_multi_objective_pruned_and_constraint(tmp_path: Path) -> None:
    cfg = SearchConfig.create(multi_objective="macs")
    s = _searcher(tmp_path, cfg, ["objective", "macs"], ["max", "min"])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", _res(3, 0.9, True, sparsity_shortfall=0.0))
    s.on_trial_complete("b", _res(1, -0.9, False, sparsity_shortfall=0.4))
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    states = {t.user_attrs["tune_trial_id"]: t.state for t in study.trials}
    assert states == {"a": TrialState.COMPLETE, "b": TrialState.PRUNED}
    a = next(t for t in study.trials if t.user_attrs["tune_trial_id"] == "a")
    assert a.values == [0.9, 1e5]


def test_searcher_pickles(tmp_path: Path) -> None:
    import pickle

    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    s.save(str(tmp_path / "state.pkl"))
    t = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    t.restore(str(tmp_path / "state.pkl"))
    t.on_trial_complete("a", _res(1, 0.5, True))
    u = pickle.loads(pickle.dumps(t))  # Tune pickles its searcher into experiment snapshots
    assert u.suggest("b") is not None  # the unpickled searcher still proposes schedules
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    by_id = {tr.user_attrs["tune_trial_id"]: tr for tr in study.trials}
    assert by_id["a"].state == TrialState.COMPLETE and by_id["a"].value == 0.5
    assert set(by_id) == {"a", "b"}


def test_trial_replayed_after_resume_does_not_abort_the_search(tmp_path: Path) -> None:
    """A driver killed after Optuna recorded a trial COMPLETE but before Tune's next
    snapshot: the restored searcher sees the trial as unfinished and Tune replays its last
    result; Optuna refuses updates of a finished trial, which must not crash the search."""
    cfg = SearchConfig.create()
    s = _searcher(tmp_path, cfg, "best_objective", "max")
    s.suggest("a")
    s.on_trial_result("a", _res(1, 0.9, False))
    s.on_trial_complete("a", _res(2, 0.95, True))
    s._completed_trials.discard("a")  # the state a restore from an older snapshot has
    s.on_trial_result("a", _res(2, 0.95, True))  # raised UpdateFinishedTrialError before
    s.on_trial_complete("a", _res(2, 0.95, True))
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.95


def test_suggestions_never_run_by_tune_are_closed_as_orphaned(tmp_path: Path) -> None:
    from tune_prune.search.searcher import close_orphaned_trials

    cfg = SearchConfig.create()
    s = _searcher(tmp_path, cfg, "best_objective", "max")
    s.suggest("a")
    s.suggest("b")  # the driver dies here: Tune never snapshots trial b
    s.on_trial_complete("a", _res(2, 0.95, True))
    storage = journal_storage(tmp_path)
    assert close_orphaned_trials(storage, "s", {"a", "b"}) == 0  # b still belongs to Tune
    assert close_orphaned_trials(storage, "s", {"a"}) == 1
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert by_id["a"].state == TrialState.COMPLETE and "orphaned" not in by_id["a"].user_attrs
    assert by_id["b"].state == TrialState.FAIL and by_id["b"].user_attrs["orphaned"] is True


def test_warm_start_runs_first_and_is_not_enqueued_twice(tmp_path: Path) -> None:
    cfg = SearchConfig.create(warm_start=["one_shot", {"generator": "linear", "total_iteration": 3}])
    points = warm_start_points(cfg)

    def make() -> PruneAwareOptunaSearch:
        return PruneAwareOptunaSearch(
            space=functools.partial(define_space, cfg=cfg), metric="best_objective", mode="max",
            sampler=make_sampler(cfg), study_name="s", storage=journal_storage(tmp_path),
            warm_start=points,
        )

    s = make()
    first, second = s.suggest("a"), s.suggest("b")
    assert (first["total_iteration"], first["mode"], first["lr"]) == (1, "global", points[0]["lr"])
    assert (second["generator"], second["total_iteration"]) == ("linear", 3)
    assert first["warm_start"] and second["warm_start"] and not s.suggest("c")["warm_start"]
    # a driver restarted on the same journal (before Tune's first snapshot) sets the study
    # up again: the warm starts are already there and are not queued a second time
    make()
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    assert len(study.trials) == 3
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
