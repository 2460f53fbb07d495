"""Warm-start schedules: hand-picked schedules the search runs before sampling any.

Presets (``one_shot``, ``one_shot_lrs``, ``agp``, ``annealing``) and schedules a user writes in
trial-config keys both become Optuna parameter dicts for ``Study.enqueue_trial``; each
is checked against the space first, so a bad value is an error naming the entry and
key at config time, not a failed trial. Depends only on the registry and the space
(never on the config module, which validates ``warm_start`` with it). A schedule may
give a channel option (``normalizer``, ``bn_scale``, ``input_weights``, ``round_to``)
only when ``channel_options`` searches it and every pruner it may run takes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tune_prune.search.registry import (
    CHANNEL_PARAMS,
    GENERATORS,
    PRUNER_MODES,
    REWIND_POINTS,
    channel_choices,
    generator_spec,
    takes_channel_options,
)

if TYPE_CHECKING:
    from tune_prune.search.config import SearchConfig

#: Named warm-start schedules (``SearchConfig.warm_start``), see :func:`warm_start_schedule`.
WARM_START_PRESETS = ("one_shot", "one_shot_lrs", "agp", "annealing")
#: Keys an explicit warm-start schedule may give: the normalised trial config's names.
WARM_START_KEYS = (
    "generator", "pruner", "mode", "total_iteration", "reset_weight", "rewind",
    *sorted({p[0] for spec in GENERATORS.values() for p in spec.float_params}),
    "lr", "lr_schedule", "distill", "finetune_epochs", *CHANNEL_PARAMS,
)
#: Generator-only float parameters, by name -> the generator that owns it.
_FLOAT_PARAM_OWNERS = {p[0]: spec for spec in GENERATORS.values() for p in spec.float_params}


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
      'normal' ranking, no rewinding;
    * ``annealing``: simulated annealing's searched per-layer allocation over 3 tasks (2
      cool-downs; its other parameters sampled), 'normal' mode. At 95-98 % of weights it
      is what beats one-shot pruning (experiments/headline: with it the default search
      went from 51.6 to 58.6 % on digits at 98 % over 10 seeds, from 53.1 to 64.9 % on
      MNIST-1D's wider CNN); a default warm start after ``one_shot_lrs``.

    ``one_shot_lrs`` (several schedules: :func:`warm_start_schedules`) is ``one_shot`` at
    three lrs.

    With per-iteration epochs searched (``finetune_budget=None``) a preset leaves the
    epochs to the sampler, like any key a schedule does not give.
    """
    fixed = [g for g in cfg.generators if generator_spec(g).can_prune_once]
    pruner = cfg.allowed_pruners[0]
    lr: dict[str, Any] = {"lr": math.sqrt(cfg.lr_min * cfg.lr_max)}
    if cfg.lr_schedules is not None:
        schedule = "cosine" if "cosine" in cfg.lr_schedules else cfg.lr_schedules[0]
        lr = {"lr_schedule": schedule} if schedule == "rewind" else {**lr, "lr_schedule": schedule}
    if cfg.distill_weights is not None:
        lr["distill"] = cfg.distill_weights[0]
    if name == "one_shot":
        if not fixed:
            once = [name for name, spec in GENERATORS.items() if spec.can_prune_once]
            raise ValueError(f"'one_shot' needs one of the generators {once} in generators")
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
    if name == "annealing":
        if "simulated_annealing" not in cfg.generators:
            raise ValueError("'annealing' needs 'simulated_annealing' in generators")
        if cfg.max_iterations < 3:
            raise ValueError(f"'annealing' runs 3 tasks: needs max_iterations >= 3, got {cfg.max_iterations!r}")
        return {"generator": "simulated_annealing", "pruner": pruner, "mode": "normal",
                "total_iteration": 3, **lr}
    raise ValueError(f"unknown preset {name!r} (presets: {list(WARM_START_PRESETS)})")


def warm_start_schedules(name: str, cfg: SearchConfig) -> list[dict[str, Any]]:
    """The schedules a preset names: one, or for ``one_shot_lrs`` the one-shot schedule at
    the upper two thirds of the lr range, a third of the way apart in log lr (for
    0.01-0.3: 0.031, 0.097, 0.3), the lr grid a user would try by hand after heavy
    pruning. The lr that recovers a pruned network best sits high in the range: in the
    headline's hand schedules (experiments/README.md) the validation-picked one-shot lr
    was 0.03, 0.1 or 0.3 on 59 of 60 (cell, seed) pairs, and 0.3 on 14 of 20 on digits'
    weights, where stop 19's grid (0.018, 0.055, 0.17) reached neither 0.03 nor 0.3. One
    schedule when no lr is searched (a fixed lr, or learning-rate rewinding)."""
    if name != "one_shot_lrs":
        return [warm_start_schedule(name, cfg)]
    centre = warm_start_schedule("one_shot", cfg)
    if "lr" not in centre or cfg.lr_min == cfg.lr_max:
        return [centre]
    lo, hi = math.log(cfg.lr_min), math.log(cfg.lr_max)
    # clamped: exp(log(lr_max)) may round a hair above lr_max, which the space rejects
    return [{**centre, "lr": min(cfg.lr_max, math.exp(lo + f * (hi - lo)))} for f in (1 / 3, 2 / 3, 1.0)]


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
    spec = generator_spec(generator) if generator is not None else None
    annealing = spec is not None and spec.length == "annealing"
    pruner = choice("pruner", cfg.allowed_pruners) if "pruner" in schedule else None
    if "mode" in schedule:
        if pruner is None:
            raise ValueError("'mode' needs 'pruner' (the modes differ per pruner)")
        if annealing:  # one allocation per layer: 'normal' only, not a searched parameter
            if schedule["mode"] != "normal":
                raise ValueError(f"mode={schedule['mode']!r}: {generator} searches its own per-layer "
                                 "allocation, so its only mode is 'normal'")
        else:
            modes = PRUNER_MODES[pruner]
            choice("mode", modes, f"mode__{pruner}")
            if len(modes) == 1:
                params.pop(f"mode__{pruner}")
    given = [key for key in CHANNEL_PARAMS if key in schedule]
    if given:
        pruners = [pruner] if pruner is not None else list(cfg.allowed_pruners)
        plain = [p for p in pruners if not takes_channel_options(p)]
        if plain:
            raise ValueError(f"{given[0]!r} needs a channel pruner that takes it (not {plain})")
        searched = channel_choices(cfg)
        for key in given:
            if key not in searched:
                raise ValueError(f"{key!r} is not a searched channel option (channel_options: "
                                 f"{searched or 'none'})")
            choice(key, searched[key])
            if len(searched[key]) == 1:
                params.pop(key)  # fixed for every channel trial: not an Optuna parameter
    if "total_iteration" in schedule and annealing:
        # annealing's length is one task plus one per cool-down (space.define_space): the
        # space searches the cool-downs, so total_iteration n enqueues n - 1 of them
        lo, hi = max(1, cfg.min_iterations - 1) + 1, max(1, cfg.max_iterations - 1) + 1
        number("total_iteration", lo, hi, integer=True)
        params["sa_cool_downs"] = params.pop("total_iteration") - 1
    elif "total_iteration" in schedule:
        number("total_iteration", cfg.min_iterations, cfg.max_iterations, integer=True)
    reset = schedule.get("reset_weight")
    if "reset_weight" in schedule:
        choice("reset_weight", [False, True])
        if spec is not None and spec.rewinding == "always":
            if not reset:
                raise ValueError(f"{generator} always rewinds: reset_weight must be true or left out")
            params.pop("reset_weight")
    if "rewind" in schedule:
        always = [name for name, s in GENERATORS.items() if s.rewinding == "always"]
        if reset is False or (reset is None and (spec is None or spec.rewinding != "always")):
            raise ValueError(f"'rewind' needs reset_weight=true (or a generator in {always})")
        choice("rewind", REWIND_POINTS)
    for name, owner in _FLOAT_PARAM_OWNERS.items():
        if name in schedule:
            if generator != owner.name:
                raise ValueError(f"{name!r} needs generator {owner.name!r}")
            _, lo, hi, _log = next(p for p in owner.float_params if p[0] == name)
            number(name, lo, hi)
    searched = list(cfg.lr_schedules or [])
    if "lr_schedule" in schedule and (searched or schedule["lr_schedule"] is not None):
        if not searched:
            raise ValueError("'lr_schedule' needs lr_schedules (the schedules the search may choose)")
        choice("lr_schedule", searched)
        if len(searched) == 1:
            params.pop("lr_schedule")
    if "distill" in schedule:
        if cfg.distill_weights is None:
            raise ValueError("'distill' needs distill_weights (the weights the search may choose)")
        choice("distill", cfg.distill_weights)
        if len(cfg.distill_weights) == 1:
            params.pop("distill")
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
