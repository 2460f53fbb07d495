"""OptunaSearch that keeps the Optuna study honest about stopped trials, stored on disk.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the *last* reported
value whenever a result exists, and Tune calls it the same way for a trial that a
scheduler stopped early (or that the time budget cut off). For a pruning schedule the
last value before a stop is a score at a sparsity below the target, so TPE would learn
from a truncated score as if it were final. :class:`PruneAwareOptunaSearch` tells
Optuna PRUNED for every trial whose last result does not have ``schedule_done``; the
intermediate values (single-objective) stay in the study, so TPE still ranks pruned
trials below complete ones, as Optuna's own pruning does.

Failed trials: Ray's ``OptunaSearch`` tells FAIL only when the failed trial never
reported; one that reported some iterations and then raised (or diverged) would be told
COMPLETE with its last value and ranked like a finished schedule. Here every trial Tune
reports with ``error=True`` is told FAIL (its last result kept as user attributes).

Resume: a driver killed after a trial finished in Optuna but before Tune's next
experiment snapshot restores that trial as unfinished, and Tune replays its last
iteration. Optuna refuses updates to a finished trial (``UpdateFinishedTrialError``),
which would abort the resumed search; such updates are skipped here: the study already
holds the trial's final state (with fixed seeds the replay reports the same values).

Warm start: ``warm_start`` parameter dicts are enqueued (``Study.enqueue_trial``) as soon
as the study exists, so the first suggestions run them. Unlike Ray's ``points_to_evaluate``
they are enqueued with ``skip_if_exists``: a search restarted on the same journal before
its first Tune snapshot does not run them twice.

A driver killed right after a suggestion, before Tune's snapshot, leaves an Optuna
trial that no Tune trial ever runs; :func:`close_orphaned_trials` marks such trials
FAIL with the user attribute ``orphaned`` once the search has ended.

Storage: OptunaSearch accepts an Optuna ``storage`` and ``study_name`` (it calls
``create_study(..., load_if_exists=True)``), so the study lives in a JournalStorage
file in the experiment folder, readable while the search runs:
``optuna-dashboard <experiment>/optuna_journal.log`` or
``optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(path)))``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

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
    "finetune_epochs_cum",
    "iteration",
    "training_iteration",
)


def journal_storage(experiment_dir: str | Path) -> JournalStorage:
    """The study's JournalStorage file in ``experiment_dir`` (created on demand)."""
    path = Path(experiment_dir) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def close_orphaned_trials(storage: JournalStorage, study_name: str, tune_trial_ids: set[str]) -> int:
    """Mark FAIL (``orphaned``) every RUNNING Optuna trial that no Tune trial ran.

    A driver killed between Optuna's ``suggest`` and Tune's next experiment snapshot
    leaves a suggested trial in the study that the resumed search never runs (it asks
    for a new one). Called once a search has ended (not when it was interrupted, when
    RUNNING trials are still to be resumed). Returns how many trials were closed.
    """
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("tune_trial_id") in tune_trial_ids:
            continue
        storage.set_trial_user_attr(trial._trial_id, "orphaned", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        closed += 1
    if closed:
        logger.info("closed %d Optuna trial(s) suggested but never run by Tune", closed)
    return closed


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that marks early-stopped trials PRUNED and annotates every trial."""

    def __init__(self, *args: Any, warm_start: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        # set before OptunaSearch.__init__, which sets the study up when given a space
        self._warm_start = [dict(p) for p in warm_start or []]
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        for params in self._warm_start:
            self._ot_study.enqueue_trial(params, skip_if_exists=True)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:  # from the start, so a never-run suggestion can be told apart
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            if config is not None:  # marked in the results tables; Optuna keeps enqueued params here
                config["warm_start"] = self._enqueued(ot_trial.number)
        return config

    def _enqueued(self, number: int) -> bool:
        """Whether Optuna trial ``number`` ran enqueued (warm-start) parameters."""
        for frozen in self._ot_study.get_trials(deepcopy=False):
            if frozen.number == number:
                return "fixed_params" in frozen.system_attrs
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            self._already_finished(trial_id)

    def _already_finished(self, trial_id: str) -> None:
        """A trial replayed after a resume that Optuna already recorded as finished."""
        logger.info("trial %s is already finished in the Optuna study (replayed after a resume)",
                    trial_id)
        self._completed_trials.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        try:
            self._on_trial_complete(trial_id, result, error)
        except UpdateFinishedTrialError:
            self._already_finished(trial_id)

    def _on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None, error: bool
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._annotate(ot_trial, trial_id, result)
        if error:
            logger.info("trial %s failed: Optuna state FAIL", trial_id)
            try:
                ot_trial.set_user_attr("tune_error", True)
                self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
            except Exception as exc:  # noqa: BLE001 - same tolerance as OptunaSearch
                logger.warning("could not mark trial %s failed: %s", trial_id, exc)
            self._completed_trials.add(trial_id)
            return None
        if result and not result.get(M.SCHEDULE_DONE, False):
            logger.info("trial %s stopped before its schedule ended: Optuna state PRUNED", trial_id)
            try:
                self._report_last(ot_trial, result)
                self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - same tolerance as OptunaSearch
                logger.warning("could not mark trial %s pruned: %s", trial_id, exc)
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result, error)

    def _report_last(self, ot_trial: Any, result: dict[str, Any]) -> None:
        """Record the stopping result as an intermediate value (Tune skips it on STOP)."""
        if isinstance(self.metric, list) or self.metric not in result:
            return
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step already reported is ignored by Optuna
            ot_trial.report(float(result[self.metric]), int(result.get("training_iteration", 0)))

    @staticmethod
    def _annotate(ot_trial: Any, trial_id: str, result: dict[str, Any] | None) -> None:
        try:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            if not result:
                return
            for key in USER_ATTRS:
                value = result.get(key)
                if isinstance(value, bool | int | float | str):
                    ot_trial.set_user_attr(key, value)
            shortfall = result.get("sparsity_shortfall")
            if shortfall is not None:
                ot_trial.set_user_attr("sparsity_shortfall", float(shortfall))
                if hasattr(ot_trial, "set_constraint"):  # Optuna >= 5: feasible when <= 0
                    ot_trial.set_constraint("sparsity_shortfall", float(shortfall))
        except Exception as exc:  # noqa: BLE001 - annotations are best-effort
            logger.debug("could not annotate Optuna trial of %s: %s", trial_id, exc)
