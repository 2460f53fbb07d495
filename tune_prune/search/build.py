"""From one trial's config to pruning objects: config_list, pruner, task generator, scheduler.

The only module of the search layer that knows the pruning package's constructors;
it uses their public, NNI-shaped signatures and nothing internal.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.config import resolve_config_list
from tune_prune.pruning.pruners.allocation import num_pruned, rounded_prune
from tune_prune.pruning.pruners.registry import get_pruner_class
from tune_prune.search.registry import CHANNEL_PARAMS, generator_spec
from tune_prune.workloads.distill import DEFAULT_TEMPERATURE, Distillation

logger = logging.getLogger(__name__)

#: Per-layer cap in global mode: one layer may not be pruned away entirely.
GLOBAL_MAX_SPARSITY_PER_LAYER = 0.95

#: Modes that allocate one total over all layers (one ``total_sparsity`` entry, capped per layer).
RANKED_MODES = ("global", "lamp", "erk")


def make_config_list(
    sparsity_kind: str, mode: str, target: float, generator: str = "agp"
) -> list[dict[str, Any]]:
    """The config_list of a trial: fine-grained on Conv1d/2d+Linear, or filters of Conv1d/2d.

    Channel pruning leaves Linear layers alone (their outputs are the classes). Global,
    LAMP and ERK modes need one ``total_sparsity`` entry (one allocation over all
    layers), capped per layer; so does simulated annealing, which searches the
    per-layer split of a total.
    """
    convs = ["Conv1d", "Conv2d"]  # 1-D (mnist1d) and 2-D workloads; a model lacking one is fine
    op_types = [*convs, "Linear"] if sparsity_kind == "weights" else convs
    if mode in RANKED_MODES or generator_spec(generator).one_allocation:
        cap = max(GLOBAL_MAX_SPARSITY_PER_LAYER, target)
        return [{"op_types": op_types, "total_sparsity": target, "max_sparsity_per_layer": cap}]
    return [{"op_types": op_types, "sparsity_per_layer": target}]


def channel_rounding_slack(
    model: nn.Module, config_list: list[dict[str, Any]], round_to: int = 1
) -> float:
    """How far short of a channel target per-layer rounding can leave a schedule.

    Per-layer channel pruning removes ``int(s * n)`` of a layer's ``n`` output channels
    (NNI's rule), so the fraction of channels removed can fall below ``s`` by up to one
    channel per layer: 0.523 for a 0.562 target on digits' 16-64-channel convs, far more
    than the search's default tolerance of 0.02. The trial's tolerance is widened by this
    slack, so a schedule that reaches all the rounding allows counts as at the target.
    With ``round_to > 1`` (the trial's ``round_to`` option) each layer keeps a multiple of
    ``round_to`` (rounded down, so usually *more* is removed, but at least
    ``min(round_to, n)`` channels, which can remove less): the slack is the shortfall
    summed over the layers (a layer's overshoot offsets another's shortfall, as in the
    measured total), never below 0. Entries that count one total over their layers
    (global) do not round per layer: 0.
    """

    modules = dict(model.named_modules())
    short, total = 0.0, 0
    for entry in resolve_config_list(model, config_list):
        for name in entry.module_names:
            n = int(getattr(modules[name], "out_channels", 0) or 0)
            total += n
            if entry.per_layer and n:
                s = entry.total_sparsity
                short += s * n - rounded_prune(n, num_pruned(s, n), round_to)
    return max(0.0, short / total) if total else 0.0


def pruner_options(trial: dict[str, Any]) -> dict[str, Any]:
    """The pruner keywords a trial config sets (``normalizer``, ``bn_scale``, ...)."""
    return {key: trial[key] for key in CHANNEL_PARAMS if key in trial}


def stats_batches_per_epoch(workload: Any) -> int:
    """Batches of one epoch of ``workload``'s training data (its ``steps_per_epoch()``):
    the unit a statistics pass is converted to epochs with. ConfigError when the workload
    cannot say (its cost could not be counted)."""
    steps = getattr(workload, "steps_per_epoch", None)
    value = steps() if callable(steps) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"workload {getattr(workload, 'name', workload)!r}: a statistics pruner's pass is "
            "counted in epochs, which needs steps_per_epoch() -> a positive int (batches of "
            f"one training epoch), got {value!r}"
        )
    return value


def statistics_kwargs(workload: Any, training_batches: int) -> dict[str, Any]:
    """What a statistics pruner (``needs_trainer``) is built with in a trial.

    NNI's trio from the workload: ``trainer(model, optimizer, criterion)`` (one epoch of
    its training data, stopped by the pruner after ``training_batches`` batches), the
    ``traced_optimizer`` factory (``f(params) -> optimizer``, rebuilt for each task's
    model) and the ``criterion``. ConfigError when the workload has no callable trainer.
    """
    trainer = getattr(workload, "trainer", None)
    if not callable(trainer):
        raise ConfigError(
            f"workload {getattr(workload, 'name', workload)!r} offers no trainer(model, optimizer, "
            "criterion), which the statistics pruners run to collect their statistics"
        )
    return {
        "trainer": trainer,
        "traced_optimizer": getattr(workload, "traced_optimizer", None),
        "criterion": getattr(workload, "criterion", None),
        "training_batches": int(training_batches),
    }


def make_pruner(
    name: str,
    mode: str,
    dummy_input: Any,
    options: dict[str, Any] | None = None,
    statistics: dict[str, Any] | None = None,
) -> Any:
    """An unbound pruner (the scheduler binds it to each task's model).

    ``options``: pruner keywords (:func:`pruner_options` of the trial config); one the
    pruner does not take raises ValueError naming it. ``statistics``: the trainer
    keywords (:func:`statistics_kwargs`) a pruner with ``needs_trainer`` is built with
    (ConfigError when such a pruner gets none); other pruners ignore them.
    """

    cls = get_pruner_class(name)
    kwargs: dict[str, Any] = {"mode": mode}
    if cls.needs_trainer:
        if statistics is None:
            raise ConfigError(
                f"pruner={name!r} runs a statistics pass and needs the workload's trainer, "
                "optimizer and criterion (build.statistics_kwargs)"
            )
        kwargs.update(statistics)
    params = inspect.signature(cls.__init__).parameters
    if "dummy_input" in params:
        kwargs["dummy_input"] = dummy_input
    for key, value in (options or {}).items():
        if key not in params or key in ("model", "config_list", "mode", "dummy_input"):
            raise ValueError(f"pruner {name!r} takes no option {key!r}")
        kwargs[key] = value
    return cls(None, None, **kwargs)


def make_task_generator(
    trial: dict[str, Any], model: nn.Module, config_list: list[dict[str, Any]], log_dir: Path, seed: int
) -> Any:
    """The task generator the trial chose, with its hyperparameters (the registry builds it)."""
    common = {"log_dir": str(log_dir), "keep_intermediate_result": False}
    return generator_spec(trial["generator"]).build(trial, model, config_list, common, seed)


def schedule_finished(generator: Any, measurements: dict[str, Any]) -> bool:
    """Whether the task just measured was the generator's last (asked in on_iteration).

    Formula schedules know their length (``total_tasks``; ``measurements['iteration']``
    is the scheduler's 0-based task count); simulated annealing ends once its
    temperature is below ``stop_temperature`` (both public attributes).
    """
    planned = planned_tasks(generator)
    if planned is not None:
        return int(measurements.get("iteration", -1)) + 1 >= planned
    temp = getattr(generator, "current_temperature", None)
    stop = getattr(generator, "stop_temperature", None)
    return temp is not None and stop is not None and temp < stop


def planned_tasks(generator: Any) -> int | None:
    """Tasks the generator will hand out, when known in advance (SA: None)."""
    total = getattr(generator, "total_tasks", None)
    return int(total) if isinstance(total, int) else None


def planned_iterations(generator: Any, reset_weight: bool) -> int | None:
    """Rows a trial will report: its tasks, plus the retrained ticket with reset_weight."""
    planned = planned_tasks(generator)
    return None if planned is None else planned + int(reset_weight)


def rewind_steps(trial: dict[str, Any], workload: Any) -> int:
    """Optimizer steps into the first fine-tune to rewind to ('early'); 0 = task start ('dense').

    'early' is a quarter of an epoch of the workload (at least one step).
    """
    if not trial.get("reset_weight") or trial.get("rewind", "dense") == "dense":
        return 0
    steps_per_epoch = getattr(workload, "steps_per_epoch", None)
    per_epoch = int(steps_per_epoch()) if callable(steps_per_epoch) else 16
    return max(1, round(0.25 * per_epoch))


def distillation(trial: dict[str, Any], dense: Any) -> Distillation | None:
    """The trial's distillation from the dense model (``distill`` > 0), or None (plain fine-tuning).

    The teacher is a frozen copy of ``dense`` taken before any pruning, so every
    fine-tune of the trial (and a retrained ticket) learns from the unpruned network.
    """
    weight = trial.get("distill")
    if not weight:  # absent, None or 0: plain fine-tuning (Distillation checks any other value)
        return None
    temperature = trial.get("distill_temperature")
    return Distillation.from_dense(dense, weight, DEFAULT_TEMPERATURE if temperature is None else temperature)
