"""The Optuna searcher: early-stopped trials are PRUNED, the study is readable from disk."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
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
    snapshot: the searcher restored from that older snapshot sees the trial as unfinished
    and Tune replays its last result; Optuna refuses updates of a finished trial, which
    must not crash the search, nor change the recorded trial."""
    cfg = SearchConfig.create()
    s = _searcher(tmp_path, cfg, "best_objective", "max")
    s.suggest("a")
    s.on_trial_result("a", _res(1, 0.9, False))
    s.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot before the kill
    s.on_trial_result("a", _res(2, 0.95, True))
    s.on_trial_complete("a", _res(2, 0.95, True))
    # the driver dies; a fresh one restores the older snapshot and replays trial a
    t = _searcher(tmp_path, cfg, "best_objective", "max")
    t.restore(str(tmp_path / "snapshot.pkl"))
    t.on_trial_result("a", _res(2, 0.97, True))
    t.on_trial_complete("a", _res(2, 0.97, True))
    t.on_trial_complete("a", _res(2, 0.97, True))  # and again: still ignored
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.95
    assert trial.intermediate_values == {1: 0.9, 2: 0.95}
    assert t.suggest("b") is not None  # the search goes on
    assert len(optuna.load_study(study_name="s", storage=journal_storage(tmp_path)).trials) == 2


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


def _by_tune_id(tmp_path: Path) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    return {t.user_attrs["tune_trial_id"]: t for t in study.trials}


def test_suggest_then_complete_tells_the_value_and_annotates(tmp_path: Path) -> None:
    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    config = s.suggest("a")
    assert config["warm_start"] is False
    running = _by_tune_id(tmp_path)["a"]  # tagged from the suggestion on
    assert running.state == TrialState.RUNNING
    assert {k: v for k, v in config.items() if k in running.params} == running.params
    s.on_trial_result("a", _res(1, 0.4, False))
    s.on_trial_complete("a", _res(2, 0.7, True, iteration=2))
    a = _by_tune_id(tmp_path)["a"]
    assert a.state == TrialState.COMPLETE and a.value == 0.7
    assert a.intermediate_values == {1: 0.4}
    assert a.user_attrs["score"] == 0.7 and a.user_attrs["iteration"] == 2
    assert a.user_attrs["sparsity_shortfall"] == 0.0
    assert "tune_error" not in a.user_attrs


def test_stopped_trial_is_pruned_with_the_stopping_result_as_intermediate_value(tmp_path: Path) -> None:
    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    s.on_trial_result("a", _res(1, -0.9, False))
    s.on_trial_result("a", _res(2, -0.7, False))
    # Tune does not pass the result that made the scheduler stop the trial to on_trial_result
    s.on_trial_complete("a", _res(3, -0.6, False))
    a = _by_tune_id(tmp_path)["a"]
    assert a.state == TrialState.PRUNED
    assert a.intermediate_values == {1: -0.9, 2: -0.7, 3: -0.6}
    assert a.value == -0.6  # Optuna keeps a pruned trial's last intermediate value


def test_errored_trial_is_failed_with_its_last_result_as_user_attrs(tmp_path: Path) -> None:
    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    s.on_trial_result("a", _res(1, 0.8, False))
    s.on_trial_complete("a", _res(1, 0.8, True, iteration=1), error=True)  # raised after reporting
    s.on_trial_result("a", _res(2, 0.9, False))  # a retry's late result: ignored
    a = _by_tune_id(tmp_path)["a"]
    assert a.state == TrialState.FAIL and a.value is None
    assert a.intermediate_values == {1: 0.8}
    assert a.user_attrs["tune_error"] is True
    assert a.user_attrs["score"] == 0.8 and a.user_attrs["iteration"] == 1


def test_nan_final_value_is_failed_not_left_running(tmp_path: Path) -> None:
    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    with pytest.warns(UserWarning, match="nan"):  # Optuna's warning about the value
        s.on_trial_complete("a", _res(1, float("nan"), True))
    assert _by_tune_id(tmp_path)["a"].state == TrialState.FAIL


def test_multi_objective_values_and_constraints_are_told(tmp_path: Path) -> None:
    cfg = SearchConfig.create(multi_objective="macs")
    s = _searcher(tmp_path, cfg, ["objective", "macs"], ["max", "min"])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_result("a", _res(1, 0.5, False))  # no intermediate values in multi-objective studies
    s.on_trial_complete("a", _res(3, 0.9, True, macs=2e5, sparsity_shortfall=0.0))
    s.on_trial_complete("b", _res(1, -0.9, False, sparsity_shortfall=0.4))
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_id = _by_tune_id(tmp_path)
    assert by_id["a"].state == TrialState.COMPLETE and by_id["a"].values == [0.9, 2e5]
    assert by_id["a"].intermediate_values == {}
    assert by_id["a"].constraints == {"sparsity_shortfall": 0.0}
    assert by_id["b"].state == TrialState.PRUNED and by_id["b"].values is None
    assert by_id["b"].constraints == {"sparsity_shortfall": 0.4}


def test_save_restore_round_trip_resumes_the_mapping(tmp_path: Path) -> None:
    """Tuner.restore: a fresh searcher (new process, new storage object) restores the
    snapshot and goes on with the trials the old one suggested."""
    cfg = SearchConfig.create()
    s = _searcher(tmp_path, cfg, "best_objective", "max")
    configs = {tid: s.suggest(tid) for tid in ("a", "b", "c")}
    s.on_trial_result("a", _res(1, 0.3, False))
    s.on_trial_complete("c", _res(1, 0.1, True))
    s.save(str(tmp_path / "state.pkl"))

    t = PruneAwareOptunaSearch(space=functools.partial(define_space, cfg=cfg), metric="best_objective",
                               mode="max", sampler=make_sampler(cfg), study_name="s",
                               storage=journal_storage(tmp_path))
    t.restore(str(tmp_path / "state.pkl"))
    t.on_trial_result("a", _res(2, 0.6, False))
    t.on_trial_complete("a", _res(3, 0.8, True))
    t.on_trial_result("b", _res(1, -0.5, False))
    t.on_trial_complete("b", _res(2, -0.4, False))
    t.on_trial_complete("c", _res(1, 0.2, True))  # finished before the snapshot: ignored
    d = t.suggest("d")
    assert d is not None
    assert t.suggest("a") is None  # a finished trial is not run again
    by_id = _by_tune_id(tmp_path)
    assert set(by_id) == {"a", "b", "c", "d"}  # no trial asked twice
    assert by_id["a"].state == TrialState.COMPLETE and by_id["a"].value == 0.8
    assert by_id["a"].intermediate_values == {1: 0.3, 2: 0.6}
    assert by_id["b"].state == TrialState.PRUNED and by_id["b"].intermediate_values == {1: -0.5, 2: -0.4}
    assert by_id["c"].value == 0.1
    assert by_id["d"].state == TrialState.RUNNING and by_id["d"].number == 3
    assert by_id["a"].params == {k: v for k, v in configs["a"].items() if k in by_id["a"].params}


def test_pickled_searcher_leaves_the_study_behind_and_reconnects(tmp_path: Path) -> None:
    import pickle

    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    state = s.get_state()
    assert not any(isinstance(v, optuna.Study | optuna.Trial) for v in state.values())
    u = pickle.loads(pickle.dumps(s))
    u.on_trial_complete("a", _res(1, 0.5, True))
    assert _by_tune_id(tmp_path)["a"].value == 0.5


def test_in_memory_storage_survives_pickling() -> None:
    import pickle

    cfg = SearchConfig.create()
    s = PruneAwareOptunaSearch(space=functools.partial(define_space, cfg=cfg), metric="best_objective",
                               mode="max", sampler=make_sampler(cfg))
    s.suggest("a")
    u = pickle.loads(pickle.dumps(s))
    u.on_trial_complete("a", _res(1, 0.5, True))
    assert u.suggest("b") is not None


def test_warm_start_enqueued_once_across_a_recreated_searcher(tmp_path: Path) -> None:
    cfg = SearchConfig.create(warm_start=["one_shot", {"generator": "linear", "total_iteration": 3}])
    points = warm_start_points(cfg)

    def make() -> PruneAwareOptunaSearch:
        return PruneAwareOptunaSearch(
            space=functools.partial(define_space, cfg=cfg), metric="best_objective", mode="max",
            sampler=make_sampler(cfg), study_name="s", storage=journal_storage(tmp_path),
            warm_start=points,
        )

    s = make()
    assert s.suggest("a")["total_iteration"] == 1  # the first warm start
    # the driver dies before Tune's first snapshot; a new one starts on the same journal
    t = make()
    b, c = t.suggest("b"), t.suggest("c")
    assert b["warm_start"] and (b["generator"], b["total_iteration"]) == ("linear", 3)
    assert not c["warm_start"]
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    assert len(study.trials) == 3 and [t.user_attrs.get("warm_start", False) for t in
                                       sorted(study.trials, key=lambda t: t.number)] == [True, True, False]


def test_metric_and_mode_from_tune(tmp_path: Path) -> None:
    from ray import tune

    cfg = SearchConfig.create()
    s = PruneAwareOptunaSearch(space=functools.partial(define_space, cfg=cfg), sampler=make_sampler(cfg),
                               study_name="s", storage=journal_storage(tmp_path))
    assert not s.set_search_properties("best_objective", "max", {"fixed": {"x": tune.uniform(0, 1)}})
    assert s.set_search_properties("best_objective", "max", {"fixed": {"x": 1}})
    assert (s.metric, s.mode) == ("best_objective", "max")
    assert not s.set_search_properties("objective", "min", {})  # its own are kept
    s.suggest("a")
    s.on_trial_complete("a", _res(1, 0.5, True))
    assert _by_tune_id(tmp_path)["a"].value == 0.5


def test_define_by_run_space_may_return_none_or_constants(tmp_path: Path) -> None:

    def space(trial: optuna.Trial) -> dict | None:
        x = trial.suggest_float("x", 0, 1)
        return {"double": 2 * x, "const": "c"} if x > -1 else None

    s = PruneAwareOptunaSearch(space=space, metric="m", mode="min")
    config = s.suggest("a")
    assert config["double"] == 2 * config["x"] and config["const"] == "c"
    s2 = PruneAwareOptunaSearch(space=lambda trial: trial.suggest_int("k", 1, 3) and None,
                                metric="m", mode="min")
    assert set(s2.suggest("a")) == {"k", "warm_start"}
    bad = PruneAwareOptunaSearch(space=lambda trial: 3, metric="m", mode="min")
    with pytest.raises(TypeError):
        bad.suggest("a")


def test_batched_concurrency_limiter_tells_a_batch_at_once(tmp_path: Path) -> None:
    """--deterministic: ConcurrencyLimiter(batch=True) holds completions until the batch ends."""
    from ray.tune.search import ConcurrencyLimiter

    lim = ConcurrencyLimiter(_searcher(tmp_path, SearchConfig.create(), "best_objective", "max"),
                             max_concurrent=2, batch=True)
    assert lim.suggest("a") is not None and lim.suggest("b") is not None
    assert lim.suggest("c") is None  # the limit
    lim.on_trial_complete("a", _res(1, 0.5, True))
    assert _by_tune_id(tmp_path)["a"].state == TrialState.RUNNING  # held back
    lim.on_trial_complete("b", _res(1, 0.6, False))
    by_id = _by_tune_id(tmp_path)
    assert (by_id["a"].state, by_id["b"].state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert lim.suggest("c") is not None


def test_trial_finished_behind_the_searchers_back_is_skipped(tmp_path: Path) -> None:
    """Another process (or close_orphaned_trials) finished a trial this searcher still runs."""
    s = _searcher(tmp_path, SearchConfig.create(), "best_objective", "max")
    s.suggest("a")
    other = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    other.tell(_by_tune_id(tmp_path)["a"].number, state=TrialState.FAIL)
    s.on_trial_result("a", _res(1, 0.5, False))
    s.on_trial_complete("a", _res(2, 0.6, True))
    a = _by_tune_id(tmp_path)["a"]
    assert a.state == TrialState.FAIL and a.intermediate_values == {}
    assert s.suggest("b") is not None
