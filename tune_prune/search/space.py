"""The Optuna define-by-run search space over pruning schedules, and its sampler.

Conditional on purpose: a curve exponent means nothing to AGP, simulated-annealing
temperatures nothing to a fixed schedule. Parameters that exist under one branch only
are suggested only there, so TPE never fits a density to values that had no effect.
A parameter whose choices differ by branch (the pruner mode) gets one name per branch
(``mode__l1``), because Optuna requires a name to keep one distribution.

Channel pruners' options (``normalizer``, ``bn_scale``, ``input_weights``,
``round_to``; see ``tune_prune.pruning.pruners.norm``) are trial parameters only where
``cfg.channel_options`` lists them, and only for pruners that take them: with none
listed (the default) the space is exactly the one without them.

The function returns the *normalised* trial config (``mode``, ``reset_weight``,
``total_iteration`` for every generator, ...), which Ray Tune merges with the raw
suggestions; the trainable reads only the normalised keys.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna

from tune_prune.search.registry import (
    GENERATORS,
    PRUNER_MODES,
    REWIND_POINTS,
    channel_choices,
    generator_spec,
    takes_channel_options,
)

if TYPE_CHECKING:
    from tune_prune.search.config import SearchConfig

#: Parameters that exist only for one generator (the conditionality tests check these).
SA_PARAMS = ("sa_cool_downs", "sa_start_temperature", "sa_cool_down_rate", "sa_perturbation_magnitude")
CURVE_PARAMS = tuple(p[0] for p in GENERATORS["curve"].float_params)
REWIND_PARAMS = ("rewind",)
def define_space(trial: optuna.Trial, cfg: SearchConfig) -> dict[str, Any]:
    """Suggest one schedule; return the normalised config the trainable consumes.

    Must stay cheap (OptunaSearch warns above 1 s): no model or data is touched.
    """
    generator = trial.suggest_categorical("generator", list(cfg.generators))
    spec = generator_spec(generator)
    pruner = trial.suggest_categorical("pruner", cfg.allowed_pruners)
    modes = list(PRUNER_MODES[pruner])
    if spec.one_allocation:
        # SA hands the pruner one entry per layer, its own allocation: 'global' would
        # equal 'normal', and 'dependency_aware' prunes each coupled group at the
        # *smallest* of its members' sparsities, so SA's allocations fall far short of
        # the target (0.44-0.53 at a 0.8 target on digits). Only 'normal' is searched.
        modes = ["normal"]
    key = f"mode__sa__{pruner}" if spec.one_allocation else f"mode__{pruner}"
    mode = trial.suggest_categorical(key, modes) if len(modes) > 1 else modes[0]
    out: dict[str, Any] = {"generator": generator, "pruner": pruner, "mode": mode}
    if takes_channel_options(pruner):
        for name, choices in channel_choices(cfg).items():
            out[name] = trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0]

    lo, hi = cfg.min_iterations, cfg.max_iterations
    if spec.length == "annealing":
        # SA's length is set by its temperatures: one task, then one per cool-down
        # (k = ceil(log(stop/start)/log(rate)); the search's SA cools after every
        # candidate, accepted or not, so it runs exactly k + 1 tasks: registry.SA_MAX_REJECTIONS).
        # Searching k directly and deriving the stop temperature keeps SA trials inside
        # the same iteration budget as the fixed schedules.
        k = trial.suggest_int("sa_cool_downs", max(1, lo - 1), max(1, hi - 1))
        start = trial.suggest_float("sa_start_temperature", 10.0, 200.0, log=True)
        rate = trial.suggest_float("sa_cool_down_rate", 0.5, 0.95)
        out.update(
            total_iteration=k + 1,
            sa_cool_downs=k,
            sa_start_temperature=start,
            sa_cool_down_rate=rate,
            sa_stop_temperature=sa_stop_temperature(start, rate, k),
            sa_perturbation_magnitude=trial.suggest_float("sa_perturbation_magnitude", 0.05, 0.5),
        )
    else:
        out["total_iteration"] = trial.suggest_int("total_iteration", lo, hi)
        for name, low, high, log in spec.float_params:
            out[name] = trial.suggest_float(name, low, high, log=log)

    if spec.rewinding == "always":
        reset = True  # the lottery ticket hypothesis *is* rewinding after each prune
    elif spec.rewinding == "searched":
        reset = trial.suggest_categorical("reset_weight", [False, True])
    else:
        reset = False  # SA re-prunes the dense model every iteration; nothing to rewind
    out["reset_weight"] = reset
    if reset:
        out["rewind"] = trial.suggest_categorical("rewind", list(REWIND_POINTS))

    if cfg.screen_budget is not None:  # equal cost: the schedule splits one budget
        out["finetune_epochs"] = cfg.screen_budget / finetune_calls(out)
    else:
        out["finetune_epochs"] = trial.suggest_categorical("finetune_epochs", list(cfg.finetune_epochs))
    schedules = list(cfg.lr_schedules or [None])  # None: the workload's own schedule
    out["lr_schedule"] = (trial.suggest_categorical("lr_schedule", schedules) if len(schedules) > 1
                          else schedules[0])
    if out["lr_schedule"] == "rewind":
        out["lr"] = None  # learning-rate rewinding replays the dense training's lrs
    else:
        out["lr"] = (
            cfg.lr_min
            if cfg.lr_min == cfg.lr_max
            else trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)
        )
    if cfg.distill_weights is not None:  # absent unless asked for: the space stays NNI's
        weights = list(cfg.distill_weights)
        out["distill"] = trial.suggest_categorical("distill", weights) if len(weights) > 1 else weights[0]
        out["distill_temperature"] = cfg.distill_temperature
    return out


def finetune_calls(config: dict[str, Any]) -> int:
    """Fine-tunes a trial runs: one per iteration, plus the retrained last ticket when rewinding."""
    return int(config["total_iteration"]) + int(bool(config["reset_weight"]))


def sa_stop_temperature(start: float, rate: float, iterations: int) -> float:
    """Stop temperature giving exactly ``iterations`` cool-downs from ``start`` at ``rate``.

    The SA generator stops as soon as the temperature is below the stop temperature.

    Placed half a step past the last cool-down so float rounding cannot add or drop one.
    """
    return start * rate ** (iterations - 0.5)


def sa_iterations(start: float, stop: float, rate: float) -> int:
    """Iterations a start/stop/rate SA schedule runs (inverse of :func:`sa_stop_temperature`)."""
    return max(1, math.ceil(math.log(stop / start) / math.log(rate)))


def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    """The seeded sampler ``cfg.sampler`` names; 'auto' = TPE, or NSGA-II when multi-objective.

    TPE is multivariate and grouped (for the conditional space); the first half of the
    trials (at most 10) are random start-up trials, so with the default 8 trials TPE
    models the last 4. NSGA-II's population is sized to the budget so the search gets
    past its random first generation; its constraint (target sparsity reached) makes
    unreached trials infeasible rather than Pareto-optimal. 'random' is the baseline.
    """
    import warnings

    kind = cfg.sampler
    if kind == "auto":
        kind = "nsga2" if cfg.metric_mode_multi else "tpe"
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "nsga2":
            # The constraint (target reached) is set per trial by the searcher with
            # Trial.set_constraint (Optuna >= 5; constraints_func is deprecated there).
            return optuna.samplers.NSGAIISampler(
                population_size=max(2, min(50, cfg.num_samples // 2)),
                seed=cfg.seed,
            )
        return optuna.samplers.TPESampler(
            seed=cfg.seed,
            n_startup_trials=max(1, min(10, cfg.num_samples // 2)),
            multivariate=True,
            group=True,
            constant_liar=True,
        )
