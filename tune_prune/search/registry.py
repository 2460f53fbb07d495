"""What the search may choose: task generators and pruners, each described in one place.

Every other module of the search (config validation, the Optuna space, the warm-start
presets, the builder, the dry run, ``--help``) derives its lists and branches from
these two tables, so adding a generator means adding one :class:`GeneratorSpec` here;
adding a searchable pruner means giving its class ``search_modes`` (and ``kind``); a
pruner with ``needs_trainer`` (a statistics pass) is searchable only when named.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from tune_prune.pruning import tools
from tune_prune.pruning.pruners.norm import CHANNEL_OPTION_DEFAULTS, check_channel_options
from tune_prune.pruning.pruners.registry import PRUNERS
from tune_prune.pruning.tools import formulas

if TYPE_CHECKING:
    from tune_prune.search.config import SearchConfig

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
#: Searchable pruners that run a statistics pass through the workload's trainer
#: (``needs_trainer``: taylorfo, apoz, mean_activation). Opt-in: offered only when the
#: config names them, so default searches are unchanged.
STATS_PRUNERS: tuple[str, ...] = tuple(name for name in PRUNER_MODES if PRUNERS[name].needs_trainer)
#: Batches a statistics pruner (taylorfo, apoz, mean_activation) runs the workload's
#: trainer for before each pruning step: what the pruning-overhead benchmark uses
#: (experiments/overhead). It is a whole epoch on digits (16 steps of 64) and a quarter
#: of one on mnist1d (62 steps), paid on top of the fine-tune budget.
DEFAULT_STATS_BATCHES = 16
#: Every pruner a config may name, per sparsity kind, in registry order.
SEARCHABLE_PRUNERS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in PRUNER_MODES if PRUNERS[name].kind == kind)
    for kind in ("weights", "channels")
}
#: What the search chooses from when no pruners are named, per sparsity kind, in
#: registry order (the first is the warm start's): the searchable ones without a
#: statistics pass.
DEFAULT_PRUNERS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in names if name not in STATS_PRUNERS)
    for kind, names in SEARCHABLE_PRUNERS.items()
}
WEIGHT_PRUNERS = DEFAULT_PRUNERS["weights"]
CHANNEL_PRUNERS = DEFAULT_PRUNERS["channels"]


def needs_trainer(pruner: str) -> bool:
    """Whether the registered pruner ``pruner`` runs a statistics pass (takes a trainer)."""
    cls = PRUNERS.get(pruner)
    return bool(cls is not None and cls.needs_trainer)


#: Channel-pruner options a search may choose (group importance, hardware-friendly widths);
#: the trial-config key and the Optuna parameter have the option's name (one distribution
#: each: every channel pruner offers the same choices, ``cfg.channel_options``).
CHANNEL_PARAMS = tuple(CHANNEL_OPTION_DEFAULTS)


def takes_channel_options(pruner: str) -> bool:
    """Whether the registered pruner ``pruner`` accepts the channel options as keywords."""
    cls = PRUNERS.get(pruner)
    if cls is None or cls.kind != "channels":
        return False
    params = inspect.signature(cls.__init__).parameters
    return all(key in params for key in CHANNEL_PARAMS)


def channel_option_choices(value: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """Validated ``channel_options``: option name -> the values a search may choose.

    ``None`` or ``{}``: nothing searched (NNI's defaults; the space is unchanged). A
    value that is one choice fixes the option for every channel trial; several are
    searched (categorical). Raises ValueError naming the option and value.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"channel_options must be a table of option -> choices, got {value!r}")
    out: dict[str, list[Any]] = {}
    for key, choices in value.items():
        if key not in CHANNEL_PARAMS:
            raise ValueError(f"channel_options: unknown option {key!r} (known: {list(CHANNEL_PARAMS)})")
        items = list(choices) if isinstance(choices, (list, tuple)) else [choices]
        if not items:
            raise ValueError(f"channel_options[{key!r}]: needs at least one choice")
        for item in items:
            try:
                check_channel_options("channel_options", **{key: item})
            except Exception as exc:  # ConfigError: re-raised as the config's ValueError
                raise ValueError(str(exc)) from None
        if key == "normalizer":
            items = ["none" if v is None else v for v in items]
        out[key] = list(dict.fromkeys(items))  # keep order, drop repeats
    return out


def channel_choices(cfg: SearchConfig) -> dict[str, list[Any]]:
    """The channel options ``cfg`` searches (``cfg.channel_options``; none when unset)."""
    return channel_option_choices(getattr(cfg, "channel_options", None))
