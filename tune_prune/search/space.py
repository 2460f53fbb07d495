"""The Optuna define-by-run search space over pruning schedules, and its sampler.

Conditional on purpose: a curve exponent means nothing to AGP, simulated-annealing
temperatures nothing to a fixed schedule. Parameters that exist under one branch only
are suggested only there, so TPE never fits a density to values that had no effect.
A parameter whose choices differ by branch (the pruner mode) gets one name per branch
(``mode__l1``), because Optuna requires a name to keep one distribution.

The function returns the *normalised* trial config (``mode``, ``reset_weight``,
``total_iteration`` for every generator, ...), which Ray Tune merges with the raw
suggestions; the trainable reads only the normalised keys.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from tune_prune.search.config import PRUNER_MODES, SearchConfig

#: Parameters that exist only for one generator (the conditionality tests check these).
SA_PARAMS = ("sa_cool_downs", "sa_start_temperature", "sa_cool_down_rate", "sa_perturbation_magnitude")
CURVE_PARAMS = ("curve_exponent",)
REWIND_PARAMS = ("rewind",)
#: Generators that run a fixed number of iterations toward the target.
ITERATIVE = ("agp", "linear", "lottery_ticket", "curve")
#: Named warm-start schedules (``SearchConfig.warm_start``), see :func:`warm_start_schedule`.
WARM_START_PRESETS = ("one_shot", "one_shot_lrs", "agp")
#: Keys an explicit warm-start schedule may give: the normalised trial config's names.
WARM_START_KEYS = (
    "generator", "pruner", "mode", "total_iteration", "reset_weight", "rewind",
    "curve_exponent", "lr", "lr_schedule", "finetune_epochs",
)
#: Where reset_weight rewinds the surviving weights to: 'dense' = each task's starting
#: weights, by induction the trained dense baseline (NNI); 'early' = the weights a
#: quarter epoch into the first fine-tune (Frankle et al. 2020's early rewinding).
REWIND_POINTS = ("dense", "early")


def define_space(trial: optuna.Trial, cfg: SearchConfig) -> dict[str, Any]:
    """Suggest one schedule; return the normalised config the trainable consumes.

    Must stay cheap (OptunaSearch warns above 1 s): no model or data is touched.
    """
    generator = trial.suggest_categorical("generator", list(cfg.generators))
    pruner = trial.suggest_categorical("pruner", cfg.allowed_pruners)
    modes = list(PRUNER_MODES[pruner])
    if generator == "simulated_annealing":
        # SA hands the pruner one entry per layer, its own allocation: 'global' would
        # equal 'normal', and 'dependency_aware' prunes each coupled group at the
        # *smallest* of its members' sparsities, so SA's allocations fall far short of
        # the target (0.44-0.53 at a 0.8 target on digits). Only 'normal' is searched.
        modes = ["normal"]
    key = f"mode__sa__{pruner}" if generator == "simulated_annealing" else f"mode__{pruner}"
    mode = trial.suggest_categorical(key, modes) if len(modes) > 1 else modes[0]
    out: dict[str, Any] = {"generator": generator, "pruner": pruner, "mode": mode}

    lo, hi = cfg.min_iterations, cfg.max_iterations
    if generator == "simulated_annealing":
        # SA's length is set by its temperatures: one task, then one per cool-down
        # (k = ceil(log(stop/start)/log(rate)); the search's SA cools after every
        # candidate, accepted or not, so it runs exactly k + 1 tasks: build.SA_MAX_REJECTIONS).
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
        if generator == "curve":
            out["curve_exponent"] = trial.suggest_float("curve_exponent", 0.5, 5.0, log=True)

    if generator == "lottery_ticket":
        reset = True  # the lottery ticket hypothesis *is* rewinding after each prune
    elif generator in ITERATIVE:
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


def warm_start_schedule(name: str, cfg: SearchConfig) -> dict[str, Any]:
    """The schedule a warm-start preset names, in normalised keys.

    Both are schedules a user would try by hand, placed inside the search space so they
    cost what every trial costs (the same fine-tune budget), at the geometric centre of
    the searched lr range (the one lr a search without results would guess):

    * ``one_shot``: prune to the target at once, then spend the whole budget
      fine-tuning; the kind's first pruner, with one global ranking for weights (on
      digits it beat NNI's per-layer ranking by 5 points at 90 %), NNI's per-layer
      'normal' for channels (its global ranking shifts the MACs a channel target gives);
    * ``agp``: NNI's default shape: AGP over ``max_iterations`` iterations, per-layer
      'normal' ranking, no rewinding.

    ``one_shot_lrs`` (several schedules: :func:`warm_start_schedules`) is ``one_shot`` at
    three lrs.

    With per-iteration epochs searched (``finetune_budget=None``) a preset leaves the
    epochs to the sampler, like any key a schedule does not give.
    """
    fixed = [g for g in ("agp", "linear", "curve") if g in cfg.generators]
    pruner = cfg.allowed_pruners[0]
    lr: dict[str, Any] = {"lr": math.sqrt(cfg.lr_min * cfg.lr_max)}
    if cfg.lr_schedules is not None:
        schedule = "cosine" if "cosine" in cfg.lr_schedules else cfg.lr_schedules[0]
        lr = {"lr_schedule": schedule} if schedule == "rewind" else {**lr, "lr_schedule": schedule}
    if name == "one_shot":
        if not fixed:
            raise ValueError("'one_shot' needs generator agp, linear or curve in generators")
        if cfg.min_iterations > 1:
            raise ValueError(f"'one_shot' needs min_iterations=1, got {cfg.min_iterations!r}")
        use_global = cfg.sparsity_kind == "weights" and "global" in PRUNER_MODES[pruner]
        return {"generator": fixed[0], "pruner": pruner, "mode": "global" if use_global else "normal",
                "total_iteration": 1, "reset_weight": False, **lr}
    if name == "agp":
        if "agp" not in cfg.generators:
            raise ValueError("'agp' needs 'agp' in generators")
        return {"generator": "agp", "pruner": pruner, "mode": "normal",
                "total_iteration": cfg.max_iterations, "reset_weight": False, **lr}
    raise ValueError(f"unknown preset {name!r} (presets: {list(WARM_START_PRESETS)})")


def warm_start_schedules(name: str, cfg: SearchConfig) -> list[dict[str, Any]]:
    """The schedules a preset names: one, or for ``one_shot_lrs`` the one-shot schedule at
    the lr range's centre and a third of the way (in log lr) from either end (for
    0.01-0.3: 0.018, 0.055, 0.17), the small lr grid a user would try by hand; the lr
    that recovers a pruned network best moves up with the sparsity (at 95 % of weights
    on digits, 0.1 beats 0.03 by 5-15 points, experiments/headline). One schedule when
    no lr is searched (a fixed lr, or learning-rate rewinding)."""
    if name != "one_shot_lrs":
        return [warm_start_schedule(name, cfg)]
    centre = warm_start_schedule("one_shot", cfg)
    if "lr" not in centre or cfg.lr_min == cfg.lr_max:
        return [centre]
    lo, hi = math.log(cfg.lr_min), math.log(cfg.lr_max)
    return [{**centre, "lr": math.exp(lo + f * (hi - lo))} for f in (1 / 6, 1 / 2, 5 / 6)]


def warm_start_points(cfg: SearchConfig) -> list[dict[str, Any]]:
    """Optuna parameters of ``cfg.warm_start``, in order, for ``Study.enqueue_trial``.

    Each entry is a preset name or a schedule in normalised keys; keys a schedule leaves
    out are sampled as usual. Raises ValueError naming the entry and key of a value the
    space cannot take (Optuna would otherwise run an out-of-range value, or fail on a
    choice it does not know, only when the trial starts).
    """
    points = []
    for i, entry in enumerate(cfg.warm_start):
        try:
            schedules = warm_start_schedules(entry, cfg) if isinstance(entry, str) else [dict(entry)]
            points.extend(_schedule_params(schedule, cfg) for schedule in schedules)
        except ValueError as exc:
            raise ValueError(f"warm_start[{i}]={entry!r}: {exc}") from None
    return points


def _schedule_params(schedule: dict[str, Any], cfg: SearchConfig) -> dict[str, Any]:
    """Optuna parameter names and values of one schedule (the inverse of :func:`define_space`)."""
    unknown = sorted(set(schedule) - set(WARM_START_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} (known: {list(WARM_START_KEYS)})")
    params: dict[str, Any] = {}

    def choice(key: str, allowed: list[Any] | tuple[Any, ...], name: str | None = None) -> Any:
        value = schedule[key]
        if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
        params[name or key] = value
        return value

    def number(key: str, lo: float, hi: float, integer: bool = False) -> None:
        value = schedule[key]
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{key}={value!r} is not {kind} in [{lo:g}, {hi:g}]")
        params[key] = value

    generator = choice("generator", cfg.generators) if "generator" in schedule else None
    if generator == "simulated_annealing":
        raise ValueError("a simulated_annealing schedule cannot be given (its length comes from "
                         "its temperatures); use agp, linear, lottery_ticket or curve")
    pruner = choice("pruner", cfg.allowed_pruners) if "pruner" in schedule else None
    if "mode" in schedule:
        if pruner is None:
            raise ValueError("'mode' needs 'pruner' (the modes differ per pruner)")
        modes = PRUNER_MODES[pruner]
        choice("mode", modes, f"mode__{pruner}")
        if len(modes) == 1:
            params.pop(f"mode__{pruner}")
    if "total_iteration" in schedule:
        number("total_iteration", cfg.min_iterations, cfg.max_iterations, integer=True)
    reset = schedule.get("reset_weight")
    if "reset_weight" in schedule:
        choice("reset_weight", [False, True])
        if generator == "lottery_ticket":
            if not reset:
                raise ValueError("lottery_ticket always rewinds: reset_weight must be true or left out")
            params.pop("reset_weight")
    if "rewind" in schedule:
        if reset is False or (reset is None and generator != "lottery_ticket"):
            raise ValueError("'rewind' needs reset_weight=true (or generator lottery_ticket)")
        choice("rewind", REWIND_POINTS)
    if "curve_exponent" in schedule:
        if generator != "curve":
            raise ValueError("'curve_exponent' needs generator 'curve'")
        number("curve_exponent", 0.5, 5.0)
    searched = list(cfg.lr_schedules or [])
    if "lr_schedule" in schedule and (searched or schedule["lr_schedule"] is not None):
        if not searched:
            raise ValueError("'lr_schedule' needs lr_schedules (the schedules the search may choose)")
        choice("lr_schedule", searched)
        if len(searched) == 1:
            params.pop("lr_schedule")
    rewinding_lr = schedule.get("lr_schedule", searched[0] if len(searched) == 1 else None)
    if "lr" in schedule and rewinding_lr == "rewind":
        raise ValueError("'lr' with lr_schedule 'rewind': learning-rate rewinding takes no lr")
    if "lr" in schedule:
        number("lr", cfg.lr_min, cfg.lr_max)
        if cfg.lr_min == cfg.lr_max:
            params.pop("lr")  # a fixed lr is not a searched parameter
    if "finetune_epochs" in schedule:
        if cfg.finetune_budget is not None:
            raise ValueError(f"'finetune_epochs' is set by finetune_budget={cfg.finetune_budget!r}; "
                             "leave it out or search per-iteration epochs")
        choice("finetune_epochs", cfg.finetune_epochs or [])
    return params


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
