"""Ray Tune searcher over an Optuna study that stays honest about stopped trials, on disk.

:class:`PruneAwareOptunaSearch` is a Ray Tune :class:`~ray.tune.search.Searcher` written
on Optuna's ask-and-tell interface (``Study.ask`` / ``Study.tell`` /
``Study.enqueue_trial``), public APIs of both libraries only (Ray's own ``OptunaSearch``
is a thin layer over the same calls; subclassing it meant overriding its private parts).

Stopped trials: Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the
*last* reported value whenever a result exists, and Tune calls it the same way for a
trial that a scheduler stopped early (or that the time budget cut off). For a pruning
schedule the last value before a stop is a score at a sparsity below the target, so TPE
would learn from a truncated score as if it were final. Here every trial whose last
result does not have ``schedule_done`` is told PRUNED; the intermediate values
(single-objective) stay in the study, so TPE still ranks pruned trials below complete
ones, as Optuna's own pruning does.

Failed trials: Ray's ``OptunaSearch`` tells FAIL only when the failed trial never
reported; one that reported some iterations and then raised (or diverged) would be told
COMPLETE with its last value and ranked like a finished schedule. Here every trial Tune
reports with ``error=True`` is told FAIL (its last result kept as user attributes).

Resume: a driver killed after a trial finished in Optuna but before Tune's next
experiment snapshot restores that trial as unfinished, and Tune replays its last
iteration. Optuna refuses updates to a finished trial (``UpdateFinishedTrialError``),
which would abort the resumed search; such updates are skipped here: the study already
holds the trial's final state (with fixed seeds the replay reports the same values).

Warm start: ``warm_start`` parameter dicts are enqueued (``Study.enqueue_trial``, user
attribute ``warm_start``) as soon as the study exists, so the first suggestions run them;
a suggestion that runs one has ``warm_start=True`` in its config. They are enqueued with
``skip_if_exists``: a search restarted on the same journal before its first Tune snapshot
does not run them twice.

A driver killed right after a suggestion, before Tune's snapshot, leaves an Optuna
trial that no Tune trial ever runs; :func:`close_orphaned_trials` marks such trials
FAIL with the user attribute ``orphaned`` once the search has ended.

Storage: by default the study lives in a JournalStorage file in the experiment folder,
readable while the search runs: ``optuna-dashboard <experiment>/optuna_journal.log`` or
``optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(path)))``;
with an Optuna RDB URL (``SearchConfig.optuna_storage``: SQLite, PostgreSQL, MySQL) it
lives in that database instead (:func:`search_storage`; ``optuna-dashboard URL``). Only
the driver process opens the storage (trials never touch the study).
The searcher never pickles the study. Tune's own snapshot of the searcher object carries
the study name, the storage and the sampler; :meth:`PruneAwareOptunaSearch.save` writes
the rest as JSON (the map from Tune trial id to Optuna trial number, and which trials
are told); a restored or unpickled searcher reconnects to the study by name
(``create_study(load_if_exists=True)``) on first use.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tune_prune.atomic import atomic_write_json
from tune_prune.search import metrics as M

logger = logging.getLogger(__name__)

JOURNAL_FILE = "optuna_journal.log"
#: Result keys copied into each Optuna trial's user attributes (shown in optuna-dashboard).
USER_ATTRS = (
    "score",
    "sparsity",
    "reached_target",
    "params",
    "macs",
    "latency_ms",
    "finetune_epochs_cum",
    "iteration",
    "training_iteration",
)
#: User attribute of an enqueued warm-start trial (and key of the flag in its Tune config).
WARM_START_ATTR = "warm_start"
#: A define-by-run space slower than this (seconds) is warned about, as Ray's OptunaSearch does.
SLOW_SPACE_S = 1.0
_TRAINING_ITERATION = "training_iteration"
#: Attributes that tie a searcher to one process: never pickled, rebuilt on first use.
_TRANSIENT = ("_study", "_study_id", "_live")

Space = Callable[[optuna.Trial], "dict[str, Any] | None"] | dict[str, Any]


def journal_storage(experiment_dir: str | Path) -> JournalStorage:
    """The study's JournalStorage file in ``experiment_dir`` (created on demand)."""
    path = Path(experiment_dir) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def rdb_storage(url: str) -> RDBStorage:
    """An Optuna RDBStorage at ``url`` (any SQLAlchemy URL Optuna supports; tables created on demand).

    ``pool_pre_ping``: a search runs for hours, and a database server (or a proxy in
    front of it) closes idle connections; each checkout tests its connection first.
    """
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def search_storage(experiment_dir: str | Path, url: str | None = None) -> BaseStorage:
    """The search's study storage: the database at ``url``, else the journal file in ``experiment_dir``."""
    return journal_storage(experiment_dir) if url is None else rdb_storage(url)


def hide_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: nothing to hide that we can find
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def storage_label(experiment_dir: str | Path, url: str | None = None) -> str:
    """Where the study is, for people: the journal file's path or the URL (password hidden)."""
    return str(Path(experiment_dir) / JOURNAL_FILE) if url is None else hide_password(url)


def close_orphaned_trials(storage: BaseStorage, study_name: str, tune_trial_ids: set[str]) -> int:
    """Mark FAIL (``orphaned``) every RUNNING Optuna trial that no Tune trial ran.

    A driver killed between Optuna's ``suggest`` and Tune's next experiment snapshot
    leaves a suggested trial in the study that the resumed search never runs (it asks
    for a new one). Called once a search has ended (not when it was interrupted, when
    RUNNING trials are still to be resumed). Returns how many trials were closed.
    """
    # a plain sampler: telling FAIL runs the sampler's after_trial hook, nothing to learn here
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())
    study_id = storage.get_study_id_from_name(study_name)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("tune_trial_id") in tune_trial_ids:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "orphaned", True)
            study.tell(trial.number, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # finished meanwhile (another process): not orphaned
            continue
        closed += 1
    if closed:
        logger.info("closed %d Optuna trial(s) suggested but never run by Tune", closed)
    return closed


def _direction(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return "minimize" if mode == "min" else "maximize"


class PruneAwareOptunaSearch(Searcher):
    """Ray Tune searcher over an Optuna study: early-stopped trials PRUNED, failures FAIL.

    Args:
        space: a define-by-run function ``space(trial) -> dict | None`` over an Optuna
            ``Trial`` (the config is the suggested parameters, updated with the dict it
            returns), or a dict of Optuna distributions (parameter name -> distribution).
        metric: result key to optimise, or a list of keys (multi-objective).
        mode: ``"min"``/``"max"``, or one per metric. Either may instead come from Tune
            (``TuneConfig(metric=..., mode=...)``) through :meth:`set_search_properties`.
        sampler: the Optuna sampler (default: TPE seeded with ``seed``).
        study_name: the study's name in ``storage`` (an existing study is continued).
        storage: an Optuna storage (default: in memory), e.g. :func:`journal_storage`
            or :func:`rdb_storage`.
        warm_start: parameter dicts the first trials run (``Study.enqueue_trial``).
        seed: seed of the default sampler (ignored when ``sampler`` is given).
    """

    def __init__(
        self,
        space: Space | None = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str | None = None,
        storage: BaseStorage | None = None,
        warm_start: list[dict[str, Any]] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        if space is not None and not (callable(space) or isinstance(space, dict)):
            raise TypeError(f"space must be a define-by-run function or a dict of Optuna "
                            f"distributions, got {type(space).__name__}")
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise TypeError(f"sampler must be an optuna.samplers.BaseSampler, got {type(sampler).__name__}")
        if storage is not None and not isinstance(storage, BaseStorage):
            raise TypeError(f"storage must be an optuna.storages.BaseStorage, got {type(storage).__name__}")
        self._space = space
        self._sampler = sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed)
        self._study_name = study_name or "optuna"
        # our own handle on the storage (an in-memory one too): trials are looked up by number
        self._storage = storage if storage is not None else optuna.storages.InMemoryStorage()
        self._warm_start = [dict(p) for p in warm_start or []]
        #: Tune trial id -> Optuna trial number (the state a restore needs besides the study)
        self._numbers: dict[str, int] = {}
        #: Tune trial ids already told to Optuna (or found finished there)
        self._finished: set[str] = set()
        self._reset_connection()
        if self._space is not None and self._metric and self._mode:
            self._connect()  # the study, and its warm starts, exist from the start

    # ---------------------------------------------------------------- the study
    def _reset_connection(self) -> None:
        self._study: optuna.Study | None = None
        self._study_id: int | None = None
        #: Tune trial id -> Optuna Trial of this process (asked here, or rebuilt after a restore)
        self._live: dict[str, optuna.Trial] = {}

    def _connect(self) -> optuna.Study:
        """The study (created, or loaded from the storage by name), warm starts enqueued."""
        if self._study is not None:
            return self._study
        if not self._metric or not self._mode:
            raise RuntimeError(f"{type(self).__name__} has no metric/mode (got {self._metric!r}, "
                               f"{self._mode!r}): pass them to it or to tune.TuneConfig")
        if isinstance(self._mode, list):
            directions: dict[str, Any] = {"directions": [_direction(m) for m in self._mode]}
        else:
            directions = {"direction": _direction(self._mode)}
        study = optuna.create_study(
            storage=self._storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),  # Tune's schedulers stop trials, not Optuna
            study_name=self._study_name,
            load_if_exists=True,
            **directions,
        )
        for params in self._warm_start:
            study.enqueue_trial(params, user_attrs={WARM_START_ATTR: True}, skip_if_exists=True)
        self._study_id = self._storage.get_study_id_from_name(self._study_name)
        self._study = study
        return study

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        """The running Optuna trial of Tune trial ``trial_id``; None when unknown or finished."""
        trial = self._live.get(trial_id)
        if trial is not None:
            return trial
        number = self._numbers.get(trial_id)
        if number is None:
            logger.warning("trial %s was never suggested by this searcher; ignored", trial_id)
            return None
        # suggested before a restore (or in the process that pickled this searcher)
        study = self._connect()
        assert self._study_id is not None
        storage_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        if self._storage.get_trial(storage_id).state.is_finished():
            self._already_finished(trial_id)
            return None
        trial = optuna.trial.Trial(study, storage_id)
        self._live[trial_id] = trial
        return trial

    def _already_finished(self, trial_id: str) -> None:
        """A trial replayed after a resume that Optuna already recorded as finished."""
        logger.info("trial %s is already finished in the Optuna study (replayed after a resume)",
                    trial_id)
        self._finished.add(trial_id)
        self._live.pop(trial_id, None)

    # ---------------------------------------------------------------- Tune's side
    def set_search_properties(
        self, metric: str | list[str] | None, mode: str | list[str] | None, config: dict, **spec: Any
    ) -> bool:
        """Take ``metric``/``mode`` from Tune where this searcher has none of its own.

        The search space always comes from the constructor: Tune search-space entries
        (``tune.uniform`` ...) in ``config`` are not converted (False: Tune then reports
        them as unresolved).
        """
        if self._space is None or _has_tune_domains(config):
            return False
        filled = False
        if metric and not self._metric:
            self._metric, filled = metric, True
        if mode and not self._mode:
            self._mode, filled = mode, True
        if not filled:
            return False
        if isinstance(self._metric, list) != isinstance(self._mode, list) or (
            isinstance(self._mode, list) and len(self._mode) != len(self._metric)
        ):
            raise ValueError(f"metric {self._metric!r} and mode {self._mode!r} do not match")
        if self._metric and self._mode:
            self._connect()
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._space is None:
            raise RuntimeError(f"{type(self).__name__} has no search space: pass `space`")
        study = self._connect()
        trial = self._live.get(trial_id)
        if trial is None and trial_id in self._numbers:
            trial = self._trial(trial_id)
            if trial is None:  # finished already: nothing to run
                return None
        if trial is None:
            fixed = None if callable(self._space) else self._space
            trial = study.ask(fixed_distributions=fixed)
            self._numbers[trial_id] = trial.number
            self._live[trial_id] = trial
            # from the start, so a never-run suggestion can be told apart (orphaned)
            trial.set_user_attr("tune_trial_id", trial_id)
        config = self._config(trial)
        # marked in the results tables
        config[WARM_START_ATTR] = bool(trial.user_attrs.get(WARM_START_ATTR, False))
        return config

    def _config(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's config: its parameters, updated with what the define-by-run space returns."""
        if not callable(self._space):
            return dict(trial.params)
        start = time.perf_counter()
        extra = self._space(trial)
        took = time.perf_counter() - start
        if took > SLOW_SPACE_S:
            warnings.warn(f"the define-by-run search space took {took:.1f} s; keep training and "
                          "data loading in the trainable", stacklevel=2)
        if extra is not None:
            if not isinstance(extra, dict):
                raise TypeError("the define-by-run search space must return None or a dict with "
                                f"str keys, got {type(extra).__name__}")
            if not all(isinstance(k, str) for k in extra):
                raise TypeError("the dict the define-by-run search space returned has a non-str key")
        return {**trial.params, **(extra or {})}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self._metric, list):
            return  # Optuna records no intermediate values for multi-objective studies
        if trial_id in self._finished:
            logger.debug("result for trial %s, which already finished; ignored", trial_id)
            return
        trial = self._trial(trial_id)
        value, step = result.get(self._metric), result.get(_TRAINING_ITERATION)
        if trial is None or value is None or step is None:
            return
        try:
            trial.report(float(value), int(step))
        except UpdateFinishedTrialError:
            self._already_finished(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._finished:
            logger.debug("completion of trial %s, which already finished; ignored", trial_id)
            return
        trial = self._trial(trial_id)
        if trial is None:
            return
        try:
            self._tell(trial_id, trial, result, error)
        except UpdateFinishedTrialError:
            self._already_finished(trial_id)
        self._finished.add(trial_id)
        self._live.pop(trial_id, None)

    def _tell(self, trial_id: str, trial: optuna.Trial, result: dict[str, Any] | None, error: bool) -> None:
        study = self._connect()
        self._annotate(trial, trial_id, result)
        values = self._values(result)
        if error:
            logger.info("trial %s failed: Optuna state FAIL", trial_id)
            state, values = TrialState.FAIL, None
            _best_effort(trial.set_user_attr, "tune_error", True)
        elif not result or not result.get(M.SCHEDULE_DONE, False) or values is None:
            # stopped by a scheduler or the time budget (or ended with no value to tell)
            logger.info("trial %s stopped before its schedule ended: Optuna state PRUNED", trial_id)
            if result:
                self._report_last(trial, result)
            state, values = TrialState.PRUNED, None
        else:
            state = None  # COMPLETE; FAIL (with Optuna's warning) for a NaN/inf value
        try:
            study.tell(trial, values, state=state, skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - the search goes on (as with Ray's OptunaSearch)
            logger.warning("could not tell Optuna the end of trial %s: %s", trial_id, exc)

    def _values(self, result: dict[str, Any] | None) -> float | list[float] | None:
        """The objective value(s) in ``result``; None when one is missing."""
        if not result:
            return None
        if isinstance(self._metric, list):
            values = [result.get(m) for m in self._metric]
            return None if any(v is None for v in values) else [float(v) for v in values]
        value = result.get(self._metric)
        return None if value is None else float(value)

    def _report_last(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        """Record the stopping result as an intermediate value (Tune skips it on STOP)."""
        if isinstance(self._metric, list) or result.get(self._metric) is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step already reported is ignored by Optuna
            _best_effort(trial.report, float(result[self._metric]), int(result.get(_TRAINING_ITERATION, 0)))

    @staticmethod
    def _annotate(trial: optuna.Trial, trial_id: str, result: dict[str, Any] | None) -> None:
        _best_effort(trial.set_user_attr, "tune_trial_id", trial_id)
        if not result:
            return
        for key in USER_ATTRS:
            value = result.get(key)
            if isinstance(value, bool | int | float | str):
                _best_effort(trial.set_user_attr, key, value)
        shortfall = result.get("sparsity_shortfall")
        if shortfall is not None:
            _best_effort(trial.set_user_attr, "sparsity_shortfall", float(shortfall))
            # NSGA-II's constraint: feasible when <= 0 (Optuna >= 5)
            _best_effort(trial.set_constraint, "sparsity_shortfall", float(shortfall))

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        """Everything but the connection to the study (which lives in the storage)."""
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k not in _TRANSIENT})
        self._reset_connection()  # reconnect by study name on first use

    def save(self, checkpoint_path: str) -> None:
        """What Tune checkpoints during a search, as JSON: which Tune trial ran which Optuna
        trial, which are told, and the metric/mode Tune may have set.

        The study is in its storage, and the space, sampler and storage come back with the
        searcher object Tune restores from its own experiment snapshot; so a restore needs
        a persistent storage (the search's journal file or database; an RDBStorage pickles
        its URL, not its connections), and the sampler restarts from its seed (a resumed
        search may propose other schedules than an uninterrupted one).
        """
        atomic_write_json({
            "study_name": self._study_name,
            "metric": self._metric,
            "mode": self._mode,
            "numbers": self._numbers,
            "finished": sorted(self._finished),
        }, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self._study_name = str(state["study_name"])
        self._metric, self._mode = state["metric"], state["mode"]
        self._numbers = {str(k): int(v) for k, v in state["numbers"].items()}
        self._finished = {str(t) for t in state["finished"]}
        self._reset_connection()  # reconnect by study name on first use

    def __getstate__(self) -> dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.set_state(state)


def _best_effort(fn: Callable[..., Any], *args: Any) -> None:
    """Annotations must not abort a search; a finished trial's refusal is passed on."""
    try:
        fn(*args)
    except UpdateFinishedTrialError:
        raise
    except Exception as exc:  # noqa: BLE001
        logger.debug("Optuna refused %s%r: %s", getattr(fn, "__name__", fn), args, exc)


def _has_tune_domains(config: Any) -> bool:
    """Whether a Tune ``param_space`` still holds search-space entries (``tune.uniform`` ...)."""
    from ray.tune.search.sample import Domain

    if isinstance(config, Domain):
        return True
    if isinstance(config, dict):
        return any(_has_tune_domains(v) for v in config.values())
    if isinstance(config, list | tuple):
        return any(_has_tune_domains(v) for v in config)
    return False
