"""SearchConfig: every knob of a schedule search, validated once at the boundary.

A search is configured from CLI flags and/or a TOML file (flags override the file).
Validation happens here, before Ray starts, so a typo costs milliseconds rather than
a cluster start-up; every bad value raises :class:`~tune_prune.errors.ConfigError`
naming the field and the value.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tune_prune.errors import ConfigError
from tune_prune.search import metrics as M
from tune_prune.search.registry import (
    DEFAULT_PRUNERS,
    DEFAULT_STATS_BATCHES,
    GENERATOR_NAMES,
    PRUNER_MODES,
    SEARCHABLE_PRUNERS,
    STATS_PRUNERS,
    channel_option_choices,
    generators_help,
)
from tune_prune.search.warm_start import warm_start_points
from tune_prune.workloads import resolve_workload_spec
from tune_prune.workloads.base import LR_SCHEDULES
from tune_prune.workloads.distill import DEFAULT_TEMPERATURE, check_distill_weight

logger = logging.getLogger(__name__)

#: Fine-tune epochs of one schedule by default: half of NNI's default AGP schedule
#: (10 iterations x 1 epoch), the compute the issue's "match it with <= 50 %" goal allows
#: (experiments/README.md, "Search vs hand-picked schedules").
DEFAULT_FINETUNE_BUDGET = 5.0
#: Screened trials get 0.75 of the budget (3.75 epochs, a quarter of the 15-epoch final
#: budget): experiments/fidelity measured that a twelfth of the final budget (0.25 x 5)
#: does not rank schedules at 98 % of weights (Spearman 0.06-0.19 against 15 epochs; on
#: digits every screened trial sat at chance) while a quarter does on digits (0.69; 0.80
#: at 95 %). With it the default search gained 3.4-8.8 points at 98 % (experiments/headline)
#: and its sampled trials became the pick in 16 of 60 searches (8 at 0.25). With one
#: finalist it pays at most 3x the final schedule's epochs (at most 1.7x at 0.25, still
#: available with screen_fraction=0.25).
DEFAULT_SCREEN_FRACTION = 0.75
#: With screening and no final_budget, the finalists get this many times finetune_budget:
#: the schedule that wins the screen gets the long fine-tune (at 3x the search pays
#: 2.5-3.0x its final schedule with the default screen and one finalist; experiments/headline
#: measures both the final budget and everything it paid).
DEFAULT_FINAL_BUDGET_FACTOR = 3.0
#: Default sparsity tolerance: for weights a share of what the target leaves (a fixed
#: 0.02 let AGP's second-to-last step, 96.5 %, count as 98 %: 75 % more weights), for
#: channels an absolute one (per-layer rounding).
WEIGHTS_TOLERANCE_SHARE = 0.05
CHANNELS_TOLERANCE = 0.02
_NAME_RE = re.compile(r"^[A-Za-z0-9_.=-]+$")
#: Database driver module -> the pip package that provides it (optuna_storage's hint).
_DB_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
               "pymysql": "PyMySQL"}


class SearchConfig(BaseModel):
    """All settings of one search; field descriptions double as ``--help`` texts."""

    # allow_inf_nan=False: 'inf' CPUs per trial or a NaN learning rate would pass the
    # bounds below (NaN compares false, inf is > 0) and hang or poison the search.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    # ---- what is pruned and to where
    workload: str = Field(
        "digits",
        description="workload spec passed to get_workload: a built-in name ('digits', 'mnist1d', "
        "'cifar10') or your own as 'path/to/file.py:factory' or 'package.module:factory' (a "
        "relative file path is made absolute, so every Ray worker imports the same file)",
    )
    workload_options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword overrides for the workload (e.g. baseline_epochs=5, data_dir=...); "
        "flag: --workload-option KEY=VALUE (repeatable, VALUE parsed as JSON when it can be)",
    )
    pretrained: str | None = Field(
        None,
        description="state dict of your trained model; the search trains no baseline and every "
        "trial starts from it",
    )
    target_sparsity: float = Field(
        0.8, gt=0.0, lt=1.0, description="sparsity every schedule must reach, in (0, 1)"
    )
    sparsity_tolerance: float | None = Field(
        None,
        ge=0.0,
        lt=0.5,
        description="a trial counts as at target when its sparsity >= target - tolerance. "
        "Default: 5 % of what the target leaves for weights (0.05 x (1 - target): at 98 % a "
        "trial must keep at most 2.1 % of the weights, not the 4 % a fixed 0.02 allowed), "
        "0.02 for channels (per-layer rounding; widened to the rounding slack per trial)",
    )
    sparsity_kind: Literal["weights", "channels"] = Field(
        "weights", description="'weights': fine-grained level pruner; 'channels': filter pruners"
    )
    pruners: list[str] | None = Field(
        None,
        description="pruners the search may pick (registry names); default: "
        + " and ".join(f"{list(names)} for {kind}" for kind, names in DEFAULT_PRUNERS.items())
        + f". The statistics pruners {list(STATS_PRUNERS)} (channels only) are searched only when "
        "named: each pruning step first runs stats_batches batches of the workload's trainer, "
        "counted in the trial's fine-tune epochs",
    )
    stats_batches: int = Field(
        DEFAULT_STATS_BATCHES,
        ge=1,
        le=100_000,
        description="batches of the workload's trainer each pruning step of a statistics pruner "
        f"({', '.join(STATS_PRUNERS)}) collects its statistics on; the search adds them to the "
        "trial's fine-tune epochs (batches / the workload's steps per epoch)",
    )
    generators: list[str] = Field(
        list(GENERATOR_NAMES), description=f"task generators the search may pick ({generators_help()})"
    )
    speedup: bool = Field(
        False, description="physically remove pruned channels after each iteration (channels only)"
    )
    # ---- the search space's ranges
    min_iterations: int = Field(
        1, ge=1, le=100, description="fewest pruning iterations of a schedule (1 = one-shot)"
    )
    max_iterations: int = Field(5, ge=1, le=100, description="most pruning iterations of a schedule")
    finetune_budget: float | None = Field(
        DEFAULT_FINETUNE_BUDGET,
        gt=0.0,
        description="fine-tune epochs of one whole schedule, split evenly over its iterations "
        "(budget / iterations each), so every schedule costs the same; the default is half of "
        "NNI's default schedule (10 iterations x 1 epoch). 'none' to search finetune_epochs instead",
    )
    finetune_epochs: list[float] | None = Field(
        None,
        description="fine-tune epochs PER ITERATION the search chooses from (schedules then differ "
        "in cost); giving it turns finetune_budget off, giving both is an error",
    )
    # 0.01-0.3, centred on the built-in baselines' training lr (0.05): at 95-98 % of weights
    # one-shot pruning recovers far better at lr 0.1 than at 0.01-0.03 (experiments/headline)
    lr_min: float = Field(1e-2, gt=0.0, description="lowest fine-tune learning rate (log-uniform)")
    lr_max: float = Field(3e-1, gt=0.0, description="highest fine-tune learning rate (log-uniform)")
    lr_schedules: list[str] | None = Field(
        None,
        description="fine-tune lr schedules the search chooses from: 'cosine' (anneal the lr to 0 "
        "over each fine-tune), 'constant', 'rewind' (learning-rate rewinding, Renda et al. 2020: "
        "replay the dense training's last lrs; no lr is searched then). Default: the "
        "workload's own schedule, not searched (cosine for the built-in workloads)",
    )
    distill_weights: list[float] | None = Field(
        None,
        description="weights of a distillation loss from the dense model the search chooses from, "
        "each in [0, 1] (0 = plain fine-tuning): a trial's fine-tunes then also match the dense "
        "model's softened outputs (Hinton et al. 2015; loss = (1 - w) CE + w T^2 KL), at one extra "
        "forward of the dense model per step. Warm starts use the first listed. Default: none, "
        "plain fine-tuning (NNI's)",
    )
    distill_temperature: float = Field(
        DEFAULT_TEMPERATURE, gt=0.0, description="softmax temperature T of the distillation loss"
    )
    channel_options: dict[str, Any] | None = Field(
        None,
        description="channel pruners' options the search chooses from, option -> list of choices "
        "(TOML table or JSON): normalizer ('none', 'mean', 'max': scale each coupled layer's, "
        "BatchNorm's and reader's importance before summing), bn_scale (count BatchNorm |gamma|), "
        "input_weights (count the weights that read the channel; bn_scale + input_weights "
        "without a normalizer is Torch-Pruning's magnitude rule), round_to (kept channels a "
        "multiple of it). Default: none searched, NNI's channel choice. channels only",
    )
    warm_start: list[str | dict[str, Any]] = Field(
        ["one_shot_lrs", "annealing"],
        description="schedules run first, before the sampler proposes any, so the search's "
        "pick is never below them on val without screening (with it, only under warm_finalist; "
        "the screen ranks them with the rest): presets "
        "'one_shot' (prune once, fine-tune the whole budget; global ranking for weights) and "
        "'agp' (AGP over max_iterations, NNI's shape), 'annealing' (simulated annealing's "
        "searched per-layer allocation over 3 tasks; what wins at 95-98 % of weights), "
        "each at the lr range's geometric centre; "
        "'one_shot_lrs' (one_shot at three lrs spread over the range's upper two thirds "
        "in log lr, its top included: 0.031, 0.097, 0.3 for 0.01-0.3), or a schedule in trial-config keys (TOML "
        "table or JSON, e.g. '{\"generator\": \"agp\", \"total_iteration\": 3}'; left-out keys "
        "are sampled; a simulated_annealing schedule's total_iteration is its task count, one plus "
        "its cool-downs). Each counts as one of num_samples. Default: one_shot_lrs then annealing "
        "(4 trials), each dropped where it does not fit (one_shot_lrs shrinks to one_shot). "
        "'none' for no warm start",
    )
    # ---- multi-fidelity: screen schedules on a fraction of the budget, confirm the best
    screen_fraction: float = Field(
        DEFAULT_SCREEN_FRACTION,
        gt=0.0,
        le=1.0,
        description="fraction of finetune_budget each searched schedule gets (screening); below 1 "
        "the best `finalists` schedules are run again at final_budget and the search picks among "
        "them on select_split. 1 = no screening: every trial gets the whole budget. The default "
        "(0.75 of 5 epochs, 1 finalist at 3 x 5 epochs) pays at most 45 epochs for 8 trials "
        "(40-45 measured), 3x the final schedule's 15; 0.25 pays at most 1.7x but does not rank "
        "schedules at 98 % of weights (experiments/fidelity)",
    )
    finalists: int = Field(
        1, ge=1, description="with screen_fraction < 1: how many of the best screened schedules are "
        "run again at the full budget (each costs one more budget)",
    )
    warm_finalist: bool = Field(
        False, description="with screen_fraction < 1: the best warm-start schedule is a finalist as "
        "well when it did not screen first, so the pick is never below it on select_split (a "
        "guard against a screen that misranks; one more full budget where it runs: 0.1-0.8x "
        "the final schedule's epochs on average; it changed the pick on 2 of the headline's 10 "
        "cells, experiments/README.md 'Finalists')",
    )
    final_budget: float | None = Field(
        None, gt=0.0, description="fine-tune epochs of each finalist's schedule (default: 3 x "
        "finetune_budget when screening, so the screened winner gets the long fine-tune; "
        "finetune_budget without screening)",
    )
    select_split: str = Field(
        "auto",
        description="split the finalists are picked on, so the pick does not reuse the images that "
        "ranked the screening; 'auto' = 'select' when the workload has it, else 'val'",
    )
    # ---- the search itself
    num_samples: int = Field(8, ge=1, description="number of trials (schedules) to run")
    time_budget_s: float | None = Field(
        None, gt=0.0, description="stop the whole search after this many seconds"
    )
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    reuse_actors: bool = Field(
        False,
        description="run later trials in the worker process of a finished one: cuts Ray's "
        "per-trial overhead (a fresh process imports torch and Ray) from ~4.6 s to ~0.8 s on 2 "
        "cores, but a reused actor keeps its first trial's name in the Ray dashboard",
    )
    cpus_per_trial: float = Field(1.0, gt=0.0, description="CPUs reserved per trial")
    gpus_per_trial: float = Field(0.0, ge=0.0, description="GPUs per trial; fractional shares a GPU")
    seed: int = Field(0, ge=0, description="seed of the baseline, the sampler and every trial")
    test_split: str | None = Field(
        "test",
        description="also report each iteration's score on this held-out split as test_score; "
        "never used to rank or stop trials (they are ranked on 'val'), so picking the best of "
        "many trials does not inflate it. 'none' to skip",
    )
    sampler: Literal["auto", "tpe", "random", "nsga2"] = Field(
        "auto",
        description="Optuna sampler: 'auto' = TPE, or NSGA-II with multi_objective; 'random' is "
        "the baseline a model-based search should beat",
    )
    multi_objective: Literal["none", "macs", "params", "latency"] = Field(
        "none", description="'none': maximise score at target; 'macs'/'params'/'latency': Pareto "
        "front of score vs that cost (NSGA-II). 'latency' times every reported iteration's model "
        "as it would be exported (channel pruning: the sped-up, physically smaller copy; weight "
        "pruning: the masked model as is) and reports it as latency_ms (median ms of one "
        "forward pass, minimised); see latency_batch_size, latency_threads, latency_repeats",
    )
    latency_batch_size: int = Field(
        64, ge=1, description="with multi_objective 'latency' only: batch size of the timed forward "
        "pass (the workload's dummy input repeated along dim 0)",
    )
    latency_threads: int = Field(
        1, ge=1, description="with multi_objective 'latency' only: torch threads during the timing "
        "(set for the measurement, restored after; keep it <= cpus_per_trial, or concurrent "
        "trials oversubscribe the cores and the latencies are noise)",
    )
    latency_repeats: int = Field(
        20, ge=1, description="with multi_objective 'latency' only: timed forward passes per "
        "measurement (after 5 warm-up passes); latency_ms is their median",
    )
    deterministic: bool = Field(
        False,
        description="same seed, same search at any concurrency: trials run in synchronous batches "
        "of max_concurrent (a batch starts when the previous one has ended) and 'fair' early "
        "stopping judges a trial only against trials finished before it started. Costs idle "
        "slots while a batch's slowest trial runs; not with 'asha' or time_budget_s",
    )
    early_stopping: Literal["fair", "none", "asha"] = Field(
        "fair",
        description="'fair': successive halving at equal sparsity progress; 'asha': plain ASHA "
        "on training_iteration (biased toward slow schedules, for comparison); 'none'",
    )
    early_stopping_rungs: list[float] = Field(
        [0.25, 0.5, 0.75],
        description="progress fractions (sparsity / target) where 'fair' compares trials",
    )
    early_stopping_reduction_factor: float = Field(
        2.0, gt=1.0, description="keep the best 1/factor of trials at each rung"
    )
    dry_run: bool = Field(
        False, description="simulate pruning curves instead of training (checks the plumbing)"
    )
    # ---- where things live
    storage_path: str = Field("./tune_prune_results", description="folder holding experiments")
    name: str | None = Field(
        None, description="experiment name (default: '<workload>-<kind>-<target>-<timestamp>')"
    )
    resume: bool = Field(False, description="continue the interrupted experiment NAME (or the latest)")
    export_dir: str | None = Field(None, description="export the best schedule's model here at the end")
    baseline_cache_dir: str | None = Field(
        None, description="dense baseline cache (default: STORAGE_PATH/baseline_cache)"
    )
    optuna_storage: str | None = Field(
        None,
        description="Optuna storage URL the study (named NAME) goes to instead of the journal file "
        "NAME/optuna_journal.log: any Optuna RDB URL, e.g. 'sqlite:////abs/path/studies.db' on one "
        "machine or 'postgresql+psycopg2://user@host/db' for a cluster (only the driver connects; put "
        "the password in ~/.pgpass or PGPASSWORD, not the URL, which is saved in search_config.json)",
    )
    # ---- Ray
    address: str | None = Field(None, description="address of an existing Ray cluster (default: local)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (default: all)")
    include_dashboard: bool = Field(True, description="start the Ray dashboard with a local instance")
    dashboard_host: str = Field("127.0.0.1", description="interface the Ray dashboard listens on")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="port of the Ray dashboard")
    keep_ray_up: bool = Field(
        False,
        description="after the search, keep the local Ray instance (and its dashboard) up until "
        "Ctrl-C; a cluster given with --address stays up anyway",
    )

    # ---------------------------------------------------------------- validators
    @field_validator("pruners")
    @classmethod
    def _check_pruners(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one pruner")
        out = [v.lower() for v in value]
        for v in out:
            if v not in PRUNER_MODES:
                raise ValueError(f"unknown or unsupported pruner {v!r} (supported: {list(PRUNER_MODES)})")
        return list(dict.fromkeys(out))

    @field_validator("distill_weights")
    @classmethod
    def _check_distill_weights(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one weight (0 = plain fine-tuning)")
        return list(dict.fromkeys(check_distill_weight(v, "each weight") for v in value))

    @field_validator("lr_schedules")
    @classmethod
    def _check_lr_schedules(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one schedule")
        for v in value:
            if v not in LR_SCHEDULES:
                raise ValueError(f"unknown lr schedule {v!r} (known: {list(LR_SCHEDULES)})")
        return list(dict.fromkeys(value))

    @field_validator("generators")
    @classmethod
    def _check_generators(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one generator")
        out = [v.lower() for v in value]
        for v in out:
            if v not in GENERATOR_NAMES:
                raise ValueError(f"unknown generator {v!r} (known: {list(GENERATOR_NAMES)})")
        return list(dict.fromkeys(out))

    @model_validator(mode="before")
    @classmethod
    def _epochs_turn_budget_off(cls, data: Any) -> Any:
        """Per-iteration epochs given without a budget: the user wants them searched."""
        if isinstance(data, dict) and data.get("finetune_epochs") is not None and "finetune_budget" not in data:
            data = {**data, "finetune_budget": None}
        # Screening is on by default, but not where it cannot apply (no budget to take a
        # fraction of; several objectives to pick finalists on): asked for there, it is an error.
        if isinstance(data, dict) and "screen_fraction" not in data and (
            ("finetune_budget" in data and data["finetune_budget"] is None)
            or data.get("multi_objective", "none") != "none"
        ):
            data = {**data, "screen_fraction": 1.0}
        return data

    @field_validator("finetune_epochs")
    @classmethod
    def _check_epochs(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must give at least one epoch count")
        for v in value:
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"epochs must be finite and >= 0, got {v!r}")
        return sorted(set(float(v) for v in value))

    @field_validator("warm_start", mode="before")
    @classmethod
    def _parse_warm_start(cls, value: Any) -> Any:
        """Flag words: 'none' alone = no warm start, presets lower-cased, JSON objects parsed."""
        if value is None:
            return []
        if isinstance(value, str | dict):
            value = [value]
        if not isinstance(value, list | tuple):
            return value  # pydantic reports the type
        out: list[Any] = []
        for item in value:
            if isinstance(item, str) and item.strip().startswith("{"):

                try:
                    item = json.loads(item)
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not a JSON object: {exc}") from None
            elif isinstance(item, str):
                item = item.strip().lower()
            out.append(item)
        if out == ["none"]:
            return []
        return out

    @field_validator("early_stopping_rungs")
    @classmethod
    def _check_rungs(cls, value: list[float]) -> list[float]:
        for v in value:
            if not 0.0 < v < 1.0:
                raise ValueError(f"rung {v!r} is not in (0, 1)")
        return sorted(set(value))

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError("may contain only letters, digits and '_.=-'")
        return value

    @field_validator("pretrained")
    @classmethod
    def _check_pretrained(cls, value: str | None) -> str | None:
        """An existing file, as an absolute path: trials run in other working directories."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must name a file (or be none)")
        try:
            path = Path(value).expanduser().resolve()
            exists, is_file = path.exists(), path.is_file()
        except (OSError, RuntimeError) as exc:  # e.g. a name too long, a symlink loop
            raise ValueError(f"cannot check {value!r}: {exc}") from None
        if not exists:
            raise ValueError(f"no such file: {str(path)!r}")
        if not is_file:
            raise ValueError(f"not a file: {str(path)!r}")
        return str(path)

    @field_validator("workload", "storage_path", "dashboard_host")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("optuna_storage")
    @classmethod
    def _check_optuna_storage(cls, value: str | None) -> str | None:
        """A URL SQLAlchemy parses, of a database whose driver is installed; SQLite as an absolute path."""
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must be a database URL (or none for the journal file)")
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"not a database URL ({exc}); e.g. 'sqlite:////abs/path/studies.db' "
                             "or 'postgresql://user@host:5432/db'") from None
        try:
            dialect = url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database {url.drivername!r} (e.g. sqlite, postgresql, mysql)") from None
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            package = _DB_DRIVERS.get(str(getattr(exc, "name", "") or "").split(".")[0])
            hint = f" (pip install '{package}')" if package else ""
            if url.get_backend_name() == "postgresql" and "+" not in url.drivername:
                hint += "; or name an installed driver: 'postgresql+psycopg2://...' (psycopg2-binary)"
            raise ValueError(f"the Python driver of {url.drivername!r} is not installed: {exc}{hint}") from None
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                raise ValueError("an in-memory SQLite database ends with the search and cannot be "
                                 "resumed; name a file, e.g. 'sqlite:////abs/path/studies.db'")
            # absolute: a resumed search (or optuna-dashboard) may run in another directory
            absolute = str(Path(database).expanduser().resolve())
            if absolute != database:
                value = url.set(database=absolute).render_as_string(hide_password=False)
        return value

    @field_validator("workload")
    @classmethod
    def _absolute_workload_file(cls, value: str) -> str:
        return resolve_workload_spec(value.strip())

    @field_validator("channel_options")
    @classmethod
    def _check_channel_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return channel_option_choices(value) or None

    @model_validator(mode="after")
    def _check_cross_fields(self) -> SearchConfig:
        if self.min_iterations > self.max_iterations:
            raise ValueError(
                f"min_iterations={self.min_iterations!r} exceeds max_iterations={self.max_iterations!r}"
            )
        if self.finetune_budget is not None and self.finetune_epochs is not None:
            raise ValueError(
                f"give finetune_budget={self.finetune_budget!r} (epochs per schedule) or "
                f"finetune_epochs={self.finetune_epochs!r} (epochs per iteration), not both"
            )
        if self.finetune_budget is None and self.finetune_epochs is None:
            raise ValueError("finetune_budget=None needs finetune_epochs (epochs per iteration)")
        if self.screening and self.finetune_budget is None:
            raise ValueError(
                f"screen_fraction={self.screen_fraction!r} needs finetune_budget (the budget it is a "
                "fraction of); with finetune_epochs per iteration use screen_fraction=1"
            )
        if self.screening and self.finalists > self.num_samples:
            raise ValueError(f"finalists={self.finalists!r} exceeds num_samples={self.num_samples!r}")
        if self.screening and self.metric_mode_multi:
            raise ValueError(
                f"screen_fraction={self.screen_fraction!r} with multi_objective="
                f"{self.multi_objective!r}: finalists are picked on one score; screen only single-objective"
            )
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min={self.lr_min!r} exceeds lr_max={self.lr_max!r}")
        if self.pruners is not None:
            allowed = SEARCHABLE_PRUNERS[self.sparsity_kind]
            wrong = [p for p in self.pruners if p not in allowed]
            if wrong:
                raise ValueError(
                    f"pruners={wrong!r} do not fit sparsity_kind={self.sparsity_kind!r} "
                    f"(allowed: {list(allowed)})"
                )
        if self.deterministic and self.early_stopping == "asha":
            raise ValueError(
                "deterministic=True needs early_stopping 'fair' or 'none' (plain ASHA stops on "
                "whichever trials reported first)"
            )
        if self.deterministic and self.time_budget_s is not None:
            raise ValueError(
                f"deterministic=True cannot be combined with time_budget_s={self.time_budget_s!r} "
                "(a wall-clock budget ends the search at a timing-dependent trial)"
            )
        if "warm_start" not in self.model_fields_set:
            # the default adapts: a preset that does not fit (one_shot under min_iterations=2,
            # annealing under max_iterations=2) or has no room left in num_samples is dropped
            # rather than failing a config that never asked for it; one_shot_lrs shrinks to one_shot
            self.__dict__["warm_start"] = _default_warm_start(self)  # no re-validation
        n_warm = len(warm_start_points(self))  # ValueError naming the entry and key
        if n_warm > self.num_samples:
            raise ValueError(
                f"warm_start has {n_warm} schedule(s) but num_samples="
                f"{self.num_samples!r}: each warm start is one of the trials"
            )
        if self.channel_options and self.sparsity_kind != "channels":
            raise ValueError(f"channel_options={self.channel_options!r} needs sparsity_kind='channels'")
        if self.speedup and self.sparsity_kind != "channels":
            raise ValueError("speedup=True needs sparsity_kind='channels'")
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("num_cpus applies to a local Ray instance; do not combine it with address")
        if self.address is not None and self.keep_ray_up:
            raise ValueError(
                f"keep_ray_up=True applies to a local Ray instance; the cluster at address="
                f"{self.address!r} stays up after the search anyway"
            )
        return self

    # ---------------------------------------------------------------- helpers
    @property
    def allowed_pruners(self) -> list[str]:
        """Pruners the space chooses from: the explicit list or the kind's default."""
        return list(self.pruners) if self.pruners else list(DEFAULT_PRUNERS[self.sparsity_kind])

    @property
    def tolerance(self) -> float:
        """The sparsity tolerance in force: the explicit one or the kind's default."""
        if self.sparsity_tolerance is not None:
            return self.sparsity_tolerance
        if self.sparsity_kind == "weights":
            return WEIGHTS_TOLERANCE_SHARE * (1.0 - self.target_sparsity)
        return CHANNELS_TOLERANCE

    @property
    def screening(self) -> bool:
        """Whether trials get a fraction of the budget and the best are confirmed at the full one."""
        return self.screen_fraction < 1.0

    @property
    def screen_budget(self) -> float | None:
        """Fine-tune epochs of one screened schedule (the whole budget when not screening)."""
        return None if self.finetune_budget is None else self.finetune_budget * self.screen_fraction

    @property
    def full_budget(self) -> float | None:
        """Fine-tune epochs of one finalist's schedule."""
        if self.final_budget is not None:
            return self.final_budget
        if self.screening and self.finetune_budget is not None:
            return DEFAULT_FINAL_BUDGET_FACTOR * self.finetune_budget
        return self.finetune_budget

    @property
    def metric_mode_multi(self) -> bool:
        return self.multi_objective != "none"

    @property
    def cost_metric(self) -> str | None:
        """The reported cost column NSGA-II minimises ('latency' -> 'latency_ms'); None single-objective."""
        return M.cost_metric(self.multi_objective)

    def latency_settings(self) -> dict[str, int] | None:
        """How trials time their models (multi_objective 'latency'); None otherwise."""
        if self.multi_objective != "latency":
            return None
        return {"batch_size": self.latency_batch_size, "threads": self.latency_threads,
                "repeats": self.latency_repeats}

    def resolved_baseline_cache(self) -> Path:
        """Absolute cache folder: trials run in other working directories."""
        if self.baseline_cache_dir:
            return Path(self.baseline_cache_dir).expanduser().resolve()
        return Path(self.storage_path).expanduser().resolve() / "baseline_cache"

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, **values: Any) -> SearchConfig:
        """Validated config; pydantic errors become one ConfigError naming field and value."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _to_config_error(exc, values) from None

    def updated(self, **changes: Any) -> SearchConfig:
        """A validated copy with ``changes`` applied."""
        return type(self).create(**merge_values(self.model_dump(), changes))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> SearchConfig:
        """Load a TOML file (flat keys = field names); ``overrides`` win over the file."""
        return cls.create(**merge_values(load_toml(path), overrides))


def _points(cfg: SearchConfig, entry: str | dict[str, Any]) -> int | None:
    """How many trials one warm-start entry takes under ``cfg``; None where it is invalid."""
    try:
        return len(warm_start_points(cfg.model_copy(update={"warm_start": [entry]})))
    except ValueError:
        return None


def _default_warm_start(cfg: SearchConfig) -> list[str | dict[str, Any]]:
    """The default warm start fitted to ``cfg``: its entries in order while they are valid
    and fit the trials left (``one_shot_lrs`` falls back to ``one_shot``)."""
    room, kept = cfg.num_samples, []
    for entry in cfg.warm_start:
        for candidate in [entry, "one_shot"] if entry == "one_shot_lrs" else [entry]:
            n = _points(cfg, candidate)
            if n is not None and n <= room:
                kept.append(candidate)
                room -= n
                break
    return kept


#: Pairs of fields of which only one may be set: setting one in an override unsets the
#: other from the layer below (a flag ``--finetune-epochs`` beats the file's budget).
_EXCLUSIVE = (("finetune_budget", "finetune_epochs"),)


def merge_values(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``, dropping the partner of an overridden exclusive field."""
    merged = dict(base)
    for a, b in _EXCLUSIVE:
        for mine, other in ((a, b), (b, a)):
            if overrides.get(mine) is not None and other not in overrides:
                merged.pop(other, None)
    turns_screening_off = overrides.get("finetune_epochs") is not None or overrides.get(
        "multi_objective", "none") != "none"
    if turns_screening_off and "screen_fraction" not in overrides \
            and merged.get("screen_fraction") == DEFAULT_SCREEN_FRACTION:
        merged.pop("screen_fraction", None)  # the default, where it cannot apply: off (see above)
    merged.update(overrides)
    return merged


def load_toml(path: str | Path) -> dict[str, Any]:
    """Flat mapping of a TOML config; a ``[search]`` table is accepted as well."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise ConfigError("config: reading TOML on Python 3.10 needs the 'tomli' package") from exc
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(p)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {str(p)!r} is not valid TOML: {exc}") from exc
    if set(data) == {"search"} and isinstance(data["search"], Mapping):
        data = dict(data["search"])
    known = set(SearchConfig.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"config: unknown key(s) {unknown} in {str(p)!r} (known keys: {sorted(known)})"
        )
    return data


def _to_config_error(exc: ValidationError, values: Mapping[str, Any]) -> ConfigError:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        field = loc[0] if loc else None
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {field!r} (value {values.get(field)!r})")
        elif field is None:
            parts.append(msg)
        else:
            value = values.get(field, err.get("input"))
            where = ".".join(loc)
            parts.append(f"{where}={value!r}: {msg}")
    return ConfigError("invalid search config: " + "; ".join(parts))
