"""What the search may choose: task generators and pruners, each described in one place.

Every other module of the search (config validation, the Optuna space, the warm-start
presets, the builder, the dry run, ``--help``) derives its lists and branches from
these two tables, so adding a generator means adding one :class:`GeneratorSpec` here;
adding a searchable pruner means giving its class ``search_modes`` (and ``kind``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from tune_prune.pruning import tools
from tune_prune.pruning.pruners.registry import PRUNERS
from tune_prune.pruning.tools import formulas

#: SA re-tries a rejected candidate at most this often before cooling anyway. 0: a
#: rejected candidate still counts as a cool-down step, so an SA trial runs exactly
#: total_iteration tasks and keeps to the fine-tune budget like every other schedule.
SA_MAX_REJECTIONS = 0

#: Where reset_weight rewinds the surviving weights to: 'dense' = each task's starting
#: weights, by induction the trained dense baseline (NNI); 'early' = the weights a
#: quarter epoch into the first fine-tune (Frankle et al. 2020's early rewinding).
REWIND_POINTS = ("dense", "early")

#: Builds a generator: (trial config, model, config_list, common kwargs, seed) -> generator.
Build = Callable[[dict[str, Any], nn.Module, list[dict[str, Any]], dict[str, Any], int], Any]


@dataclass(frozen=True)
class GeneratorSpec:
    """One task generator as the search sees it.

    ``length``: ``"iterations"`` when ``total_iteration`` is searched directly (formula
    schedules); ``"annealing"`` when it follows from the temperatures (simulated
    annealing, whose parameters the space derives). ``rewinding``: whether
    ``reset_weight`` is never used, searched, or always on (the lottery ticket). A
    ``curve`` names the sparsity the schedule has after iteration i of n (the dry run
    simulates it); None means each task prunes to the target (SA re-allocates it).
    ``one_allocation``: the config_list is one ``total_sparsity`` entry whatever the
    pruner mode (SA searches the per-layer split of a total).
    """

    name: str
    summary: str
    build: Build
    length: Literal["iterations", "annealing"] = "iterations"
    rewinding: Literal["never", "searched", "always"] = "searched"
    curve: Callable[[float, int, int, dict[str, Any]], float] | None = None
    #: Extra float parameters searched for this generator only: (name, low, high, log).
    float_params: tuple[tuple[str, float, float, bool], ...] = ()
    one_allocation: bool = False

    @property
    def can_prune_once(self) -> bool:
        """Whether ``total_iteration=1`` without rewinding is plain one-shot pruning."""
        return self.length == "iterations" and self.rewinding != "always"


def _formula(curve: formulas.Formula) -> Callable[[float, int, int, dict[str, Any]], float]:
    return lambda target, i, n, _trial: curve(target, i, n)


def _build_formula(cls: Any, skip_first: bool = True) -> Build:
    def build(trial: dict[str, Any], model: nn.Module, config_list: list[dict[str, Any]],
              common: dict[str, Any], seed: int) -> Any:
        extra = {"skip_first_iteration": True} if skip_first else {}
        return cls(int(trial["total_iteration"]), model, config_list, **extra, **common)

    return build


def _build_curve(trial: dict[str, Any], model: nn.Module, config_list: list[dict[str, Any]],
                 common: dict[str, Any], seed: int) -> Any:
    return tools.CurveTaskGenerator(
        int(trial["total_iteration"]), model, config_list, exponent=float(trial["curve_exponent"]),
        skip_first_iteration=True, **common,
    )


def _curve_sparsity(target: float, i: int, n: int, trial: dict[str, Any]) -> float:
    exponent = float(trial.get("curve_exponent", 3.0))
    return target * formulas.curve_fraction("poly", i / n, target, exponent)


def _build_annealing(trial: dict[str, Any], model: nn.Module, config_list: list[dict[str, Any]],
                     common: dict[str, Any], seed: int) -> Any:
    return tools.SimulatedAnnealingTaskGenerator(
        model,
        config_list,
        start_temperature=float(trial["sa_start_temperature"]),
        stop_temperature=float(trial["sa_stop_temperature"]),
        cool_down_rate=float(trial["sa_cool_down_rate"]),
        perturbation_magnitude=float(trial["sa_perturbation_magnitude"]),
        seed=seed,
        max_rejections=SA_MAX_REJECTIONS,
        **common,
    )


_SPECS = (
    GeneratorSpec(
        "agp", "automated gradual pruning: fast early, slow near the target (NNI's default)",
        _build_formula(tools.AGPTaskGenerator), curve=_formula(formulas.agp),
    ),
    GeneratorSpec(
        "linear", "even sparsity steps", _build_formula(tools.LinearTaskGenerator),
        curve=_formula(formulas.linear),
    ),
    GeneratorSpec(
        "lottery_ticket", "each round prunes the same share of what is left, then rewinds",
        _build_formula(tools.LotteryTicketTaskGenerator, skip_first=False),
        rewinding="always", curve=_formula(formulas.lottery_ticket),
    ),
    GeneratorSpec(
        "simulated_annealing", "searches the per-layer split of the target by annealing",
        _build_annealing, length="annealing", rewinding="never", one_allocation=True,
    ),
    GeneratorSpec(
        "curve", "1 - (1 - i/n)^exponent of the target; the exponent is searched",
        _build_curve, curve=_curve_sparsity, float_params=(("curve_exponent", 0.5, 5.0, True),),
    ),
)

#: Every generator the search may use, by name, in ``--help`` order.
GENERATORS: dict[str, GeneratorSpec] = {spec.name: spec for spec in _SPECS}
GENERATOR_NAMES: tuple[str, ...] = tuple(GENERATORS)


def generator_spec(name: str) -> GeneratorSpec:
    """The spec of generator ``name``; ValueError naming the known ones."""
    try:
        return GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown generator {name!r} (known: {list(GENERATORS)})") from None


def generators_help() -> str:
    """One line per generator, for ``--help``."""
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in _SPECS)


# --------------------------------------------------------------------------- pruners

#: Pruner modes the search may choose, per searchable pruner, from each class's
#: ``search_modes`` (None: the search does not offer the pruner).
PRUNER_MODES: dict[str, tuple[str, ...]] = {
    name: tuple(cls.search_modes) for name, cls in PRUNERS.items() if cls.search_modes
}
#: Searchable pruners per sparsity kind, in registry order (the first is the warm start's).
DEFAULT_PRUNERS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in PRUNER_MODES if PRUNERS[name].kind == kind)
    for kind in ("weights", "channels")
}
WEIGHT_PRUNERS = DEFAULT_PRUNERS["weights"]
CHANNEL_PRUNERS = DEFAULT_PRUNERS["channels"]
