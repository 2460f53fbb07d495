"""run_search: SearchConfig -> Ray + Tuner(PruneAwareOptunaSearch, fair early stopping) -> result files.

The driver trains (or loads) the dense baseline once before any trial starts, so
trials only ever load it. The experiment folder ``STORAGE_PATH/NAME`` holds Tune's
trial folders and checkpoints, ``search_config.json``, the Optuna journal and the
result tables; ``resume=True`` restores the Tuner from it (Tuner.restore), with the
saved config, so an interrupted search continues where it stopped.

Before anything is written or Ray starts, :func:`preflight` checks the workload: it
resolves every config_list the search space can produce on a fresh model (a model
with no prunable layer is a ConfigError), evaluates the dense baseline once and
requires a finite real score (WorkloadError otherwise), so bad input fails in seconds
and leaves no experiment folder behind. ``search_config.json`` is written atomically;
after ``Tuner.fit`` the final error of every failed trial (Tune's record) goes to
``failed_trials.json``, which the result tables use for the trial's status.

Storage: the Optuna study goes to ``cfg.optuna_storage`` (an RDB URL) when given, else
to the journal file in the experiment folder; a URL is opened before Ray starts
(:func:`check_optuna_storage`: unreachable, or a fresh search whose name is already a
study there, is a ConfigError). On a cluster, every node that can run a trial must see
the storage path and the baseline cache: :func:`check_shared_storage` asks each node
once Ray is up, before the experiment folder exists. ``keep_ray_up`` leaves the local
Ray instance (and its dashboard) running after the search; :func:`hold_ray` waits for
Ctrl-C and shuts it down.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch

from tune_prune.atomic import atomic_write_text
from tune_prune.errors import ConfigError, TunePruneError, WorkloadError
from tune_prune.pruning.config import resolve_config_list
from tune_prune.pruning.pruners.registry import get_pruner_class
from tune_prune.search import build
from tune_prune.search import metrics as M
from tune_prune.search.config import SearchConfig
from tune_prune.search.early_stopping import make_scheduler
from tune_prune.search.export_best import export_best as _export
from tune_prune.search.finalists import (
    FINAL_DIR,
    FINALIST_KEY,
    final_fixed,
    pick_finalists,
    resolve_select_split,
)
from tune_prune.search.live_table import LiveTable
from tune_prune.search.progress import ProgressCallback, ProgressCounts, StatusLine
from tune_prune.search.registry import PRUNER_MODES, needs_trainer
from tune_prune.search.results import ResultFiles, write_results
from tune_prune.search.searcher import (
    JOURNAL_FILE,
    PruneAwareOptunaSearch,
    close_orphaned_trials,
    hide_password,
    rdb_storage,
    search_storage,
    storage_label,
)
from tune_prune.search.space import define_space, make_sampler
from tune_prune.search.trainable import TunePruneTrial
from tune_prune.search.warm_start import warm_start_points
from tune_prune.workloads import get_workload, load_or_train_baseline, read_baseline_metadata
from tune_prune.workloads.base import (
    ClassificationWorkload,
    _accepts_keyword,
    apply_pretrained,
    check_score,
    finite_real,
    pretrained_label,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "search_config.json"
ERRORS_FILE = "failed_trials.json"
Printer = Callable[[str], None]


@dataclass
class FinalStage:
    """The finalists of a screened search, run again at the full budget (search.finalists)."""
    experiment_dir: Path
    files: ResultFiles
    table: pd.DataFrame
    best: pd.DataFrame
    select_split: str
    num_errors: int = 0
    interrupted: bool = False


@dataclass
class SearchOutcome:
    """What a finished search produced and where to look."""
    config: SearchConfig
    experiment_dir: Path
    files: ResultFiles
    table: pd.DataFrame
    best: pd.DataFrame
    study_name: str
    #: The Optuna journal file; None when the study is in a database (``optuna_storage``).
    journal_path: Path | None
    dashboard_url: str | None
    wall_s: float
    num_errors: int = 0
    #: Screened search (screen_fraction < 1): the finalists' experiment. ``best`` is then
    #: the finalists' table (the search's pick first) and ``screen_best`` the screening's.
    final: FinalStage | None = None
    screen_best: pd.DataFrame | None = None
    #: Stopped before all trials ran (Ctrl-C): continue with resume=True.
    interrupted: bool = False
    export: dict[str, Any] = field(default_factory=dict)
    #: Where the study is, for people: the journal's path or the URL (password hidden).
    optuna_storage: str = ""
    #: keep_ray_up: the local Ray instance is still running; :func:`hold_ray` ends it.
    ray_kept: bool = False


def experiment_name(cfg: SearchConfig) -> str:
    """The configured name, the latest experiment when resuming, or a fresh timestamped one."""
    if cfg.name:
        return cfg.name
    storage = Path(cfg.storage_path).expanduser().resolve()
    if cfg.resume:
        found = sorted(
            (p for p in storage.glob("*") if (p / CONFIG_FILE).exists()),
            key=lambda p: (p / CONFIG_FILE).stat().st_mtime,
        )
        if not found:
            raise ConfigError(f"resume=True: no experiment to resume under storage_path={cfg.storage_path!r}")
        return found[-1].name
    target = f"{cfg.target_sparsity:g}"
    spec = cfg.workload
    if ".py:" in spec:  # a file spec, absolute by now: its file name and factory say enough
        path, _, factory = spec.rpartition(":")
        spec = f"{Path(path).stem}_{factory}"
    workload = "".join(ch if ch.isalnum() else "_" for ch in spec)
    return f"{workload}-{cfg.sparsity_kind}-{target}-{time.strftime('%Y%m%d-%H%M%S')}"


def _start_ray(cfg: SearchConfig, name: str) -> tuple[bool, str | None]:
    """Connect to ``cfg.address`` or start a local instance; reuse one already initialised.

    Returns whether this call started Ray and the dashboard URL from ``ray.init``'s
    public context (None when Ray was already initialised by the caller, who knows it).
    """

    if ray.is_initialized():
        return False, None
    job_config = ray.job_config.JobConfig(metadata={"tune_prune_experiment": name})
    if cfg.address:
        context = ray.init(address=cfg.address, job_config=job_config, log_to_driver=False)
    else:
        context = ray.init(
            address="local",  # always a new instance: never attach to another user's cluster
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
            dashboard_port=cfg.dashboard_port,
            job_config=job_config,
            log_to_driver=False,
        )
    return True, _http_url(getattr(context, "dashboard_url", None))


def wait_for_ctrl_c() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM; in the main thread only.

    Tune leaves its own SIGINT handler installed after ``fit`` (it only flags the run as
    interrupted), so the handlers are set here for the wait and restored afterwards.
    """
    stop = threading.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def hold_ray(outcome: SearchOutcome, say: Printer | None = None,
             wait: Callable[[], None] | None = None) -> None:
    """keep_ray_up: leave Ray and its dashboard up until Ctrl-C (``wait``), then shut it down.

    Returns at once when the search kept no Ray instance up (``outcome.ray_kept`` False).
    """

    if not outcome.ray_kept:
        return
    say = say or (lambda msg: logger.info("%s", msg))
    what = f"Ray and its dashboard at {outcome.dashboard_url} stay" if outcome.dashboard_url else "Ray stays"
    say(f"{what} up until you press Ctrl-C (--keep-ray-up)")
    try:
        (wait or wait_for_ctrl_c)()
    finally:
        outcome.ray_kept = False
        ray.shutdown()
        say("Ray shut down")


def check_optuna_storage(cfg: SearchConfig, name: str, exp_dir: Path) -> None:
    """Open ``cfg.optuna_storage`` (a URL) before Ray starts and anything is written.

    ConfigError when it cannot be opened (server down, wrong credentials, a read-only
    file), when a new search's name is already a study there (the search would silently
    continue that study) or when a resumed search that had started finds no study of its
    name (a different database than the one it ran on). The journal file needs no check.
    """
    if cfg.optuna_storage is None:
        return

    label = hide_password(cfg.optuna_storage)
    storage = None
    try:
        storage = rdb_storage(cfg.optuna_storage)
        names = {study.study_name for study in storage.get_all_studies()}
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of every kind
        lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        raise ConfigError(
            f"optuna_storage={label!r}: cannot open the Optuna storage: {type(exc).__name__}: "
            f"{lines[0][:300]}"
        ) from exc
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()
    if not cfg.resume and name in names:
        raise ConfigError(
            f"name={name!r}: optuna_storage={label!r} already holds a study of that name; pass "
            "another --name (or --resume to continue that experiment)"
        )
    if cfg.resume and (exp_dir / "tuner.pkl").exists() and name not in names:
        raise ConfigError(
            f"resume=True: optuna_storage={label!r} holds no study {name!r}; resume with the "
            "storage the search ran on"
        )


def _probe_paths(markers: list[str], token: str, wait_s: float = 5.0) -> list[str | None]:
    """On one node: for each marker file, None when it holds ``token`` and its folder is
    writable, else what is wrong. Polls ``wait_s`` seconds: a network filesystem may show
    another client's new file late."""

    out: list[str | None] = []
    for marker in markers:
        path = Path(marker)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                seen = path.read_text() == token
            except OSError:
                seen = False
            if seen or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not seen:
            out.append(f"does not see {str(path.parent)!r}")
            continue
        probe = path.parent / f".tune_prune_write_check_{socket.gethostname()}_{uuid.uuid4().hex}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            out.append(f"cannot write to {str(path.parent)!r} ({exc})")
            continue
        out.append(None)
    return out


def check_shared_storage(cfg: SearchConfig, paths: list[Path], say: Printer, timeout_s: float = 120.0) -> int:
    """On a cluster: every alive node that can host a trial sees and can write ``paths``.

    Trials load the baseline from the cache and write their checkpoints (and a trial
    that lost its node resumes elsewhere from them) under the storage path, so both
    must be one filesystem mounted at the same path on every node (e.g. NFS). The driver
    writes a marker file into each path and a zero-CPU task on each node looks for it.
    ConfigError naming the node and the path otherwise; a node that does not answer
    within ``timeout_s`` (or fails to run the task) is warned about. Nodes that join later (autoscaling) are not
    checked here (Ray's own storage check then fails their trials). Returns how many
    nodes were checked.
    """

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    need = {"CPU": cfg.cpus_per_trial, "GPU": cfg.gpus_per_trial}
    nodes = [n for n in ray.nodes() if n.get("Alive")
             and all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in need.items() if v > 0)]
    if not nodes:
        return 0
    token = uuid.uuid4().hex
    markers: list[Path] = []
    try:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            marker = path / f".tune_prune_shared_check_{token}"
            marker.write_text(token)
            markers.append(marker)
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe_paths)
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                          name="tune_prune:storage_check").remote([str(m) for m in markers], token)
            for n in nodes
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        answers: list[Any] = []
        for ref in refs:
            try:
                answers.append(ray.get(ref) if ref in ready else
                               f"did not answer within {timeout_s:g} s")
            except Exception as exc:  # noqa: BLE001 - the node died, or cannot run our code
                answers.append(f"could not run the check: {error_message(exc)}")
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
    problems = []
    for node, answer in zip(nodes, answers):
        where = f"node {node.get('NodeManagerAddress', '?')} ({str(node['NodeID'])[:12]})"
        if isinstance(answer, str):  # not a verdict on the storage: warned about, not fatal
            say(f"warning: shared-storage check: {where} {answer}")
            continue
        problems += [f"{where} {problem}" for problem in answer if problem]
    if problems:
        raise ConfigError(
            f"storage_path={cfg.storage_path!r}: on a cluster the storage path and the baseline cache "
            "must be one filesystem every node mounts at the same path (e.g. NFS), because trials "
            "load the baseline and write checkpoints there and a trial that loses its node resumes "
            "on another from them: " + "; ".join(problems)
        )
    return len(nodes)


def _http_url(url: str | None) -> str | None:
    """``host:port`` as ``http://host:port``; None or empty stays None."""
    if not url:
        return None
    return url if str(url).startswith("http") else f"http://{url}"


def fixed_config(cfg: SearchConfig, higher_is_better: bool = True) -> dict[str, Any]:
    """Search-wide settings every trial gets: ``{"fixed": fixed_config(cfg), **trial}`` is a trial config."""
    return {
        "workload": cfg.workload,
        "workload_options": dict(cfg.workload_options),
        "seed": cfg.seed,
        "target_sparsity": cfg.target_sparsity,
        "sparsity_tolerance": cfg.tolerance,
        "sparsity_kind": cfg.sparsity_kind,
        "speedup": cfg.speedup,
        # batches of a statistics pruner's pass (taylorfo, apoz, mean_activation)
        "stats_batches": cfg.stats_batches,
        "baseline_cache_dir": str(cfg.resolved_baseline_cache()),
        "cpus_per_trial": cfg.cpus_per_trial,
        "gpus_per_trial": cfg.gpus_per_trial,
        "dry_run": cfg.dry_run,
        "higher_is_better": higher_is_better,
        "test_split": cfg.test_split,
        # the user's weights every trial starts from (schedule._run_pruning applies them)
        "pretrained": cfg.pretrained,
        # multi_objective 'latency': how each reported model is timed (None: not timed)
        "latency": cfg.latency_settings(),
    }


@dataclass
class Checked:
    """What preflight learnt about the workload that the search needs later."""
    higher_is_better: bool
    #: The split a screened search's finalists are scored on (search.finalists).
    select_split: str = "val"


def preflight(cfg: SearchConfig, say: Printer | None = None) -> bool:
    """:func:`check_workload`, returning only higher_is_better."""
    return check_workload(cfg, say).higher_is_better


def check_workload(cfg: SearchConfig, say: Printer | None = None) -> Checked:
    """Check the workload and train/load the dense baseline once.

    Runs before any file of the experiment is written and before Ray starts, cheapest
    checks first, each failure a tune_prune error naming its cause: a named statistics
    pruner (taylorfo, apoz, mean_activation) with a workload that has no ``trainer`` or
    ``steps_per_epoch()`` (ConfigError naming ``pruners``), ``build_model()``
    raising (WorkloadError), no layer the configured pruning can select (ConfigError:
    every config_list the search space can produce is resolved on a fresh model),
    ``evaluate`` raising or not returning a finite real number on the fresh model
    (WorkloadError naming the split), a test/select split the workload cannot evaluate
    (ConfigError); then the baseline: ``cfg.pretrained`` weights that do not load into
    the model (WorkloadError listing the keys; nothing is trained then) or a trained
    baseline whose score is not finite (WorkloadError). Only the baseline step writes,
    and only to the baseline cache (never the experiment folder).
    """
    say = say or (lambda msg: logger.info("%s", msg))
    if cfg.dry_run:
        return Checked(True)


    workload = apply_pretrained(get_workload(cfg.workload, **cfg.workload_options), cfg.pretrained)
    _check_statistics(cfg, workload)
    fresh = _build_fresh(cfg, workload)
    _check_prunable(cfg, fresh)
    _check_rewind(cfg, workload)
    _check_distill(cfg, workload)
    check_score(workload, _evaluate(cfg, workload, fresh, "val", "a freshly built model"), "untrained model")
    # The splits are checked on the fresh model: a typo costs no baseline training.
    _check_test_split(cfg, workload, fresh, "untrained model")
    split = "val"
    if cfg.screening:
        split = resolve_select_split(cfg, workload, fresh)
    del fresh
    cache = cfg.resolved_baseline_cache()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # Trials get cpus_per_trial threads; the baseline likewise (small models on a few
    # cores train far faster on one thread than oversubscribed).
    torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))
    try:
        model = load_or_train_baseline(workload, cfg.seed, cache)
        meta = read_baseline_metadata(workload, cfg.seed, cache) or {}
        # the user's weights were scored on val just now, or by an earlier search: no second pass
        score = finite_real(meta.get("val_score")) if workload.pretrained is not None else None
        if score is None:
            score = check_score(workload, workload.evaluate(model, "val"), "dense baseline")
        test = _check_test_split(cfg, workload, model)
    finally:
        torch.set_num_threads(threads)
    del model
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the driver's cached blocks would stay out of the trials' reach
    if cfg.screening:
        say(f"screening at {cfg.screen_fraction:g} of the budget; finalists are picked on {split!r}")
    test_text = f", {cfg.test_split} score {test:.4f} (reported, never used to choose)" if test is not None else ""
    seconds = time.perf_counter() - start
    if workload.pretrained is not None:
        say(f"dense baseline {workload.name}: your weights from {pretrained_label(workload.pretrained)}, "
            f"val score {score:.4f} (not trained){test_text} [{seconds:.1f} s, cache {cache}]")
    else:
        say(f"dense baseline {workload.name} (seed {cfg.seed}): val score {score:.4f}{test_text} "
            f"[{seconds:.1f} s, cache {cache}, trained in {meta.get('train_seconds', '?')} s]")
    return Checked(bool(workload.higher_is_better), split)


def _check_statistics(cfg: SearchConfig, workload: Any) -> None:
    """A named statistics pruner needs the workload's trainer (to run its pass) and its
    steps per epoch (to count the pass in epochs): ConfigError naming ``pruners`` otherwise."""
    named = [p for p in cfg.allowed_pruners if needs_trainer(p)]
    if not named:
        return
    try:
        build.statistics_kwargs(workload, cfg.stats_batches)
        build.stats_batches_per_epoch(workload)
    except ConfigError as exc:
        raise ConfigError(f"pruners={cfg.pruners!r}: {named} run a statistics pass, but {exc}") from None


def _check_rewind(cfg: SearchConfig, workload: Any) -> None:
    """lr_schedule 'rewind' replays the dense baseline's lrs: ConfigError when the baseline
    is the user's weights and the workload cannot say how they were trained."""
    if "rewind" not in (cfg.lr_schedules or []):
        return
    lrs = getattr(type(workload), "baseline_lrs", None)
    if workload.pretrained is not None and (lrs is None or lrs is ClassificationWorkload.baseline_lrs):
        raise ConfigError(
            f"lr_schedules={cfg.lr_schedules!r}: 'rewind' replays the dense baseline's learning rates, "
            f"but the baseline is pretrained weights ({pretrained_label(workload.pretrained)}) that "
            f"workload {cfg.workload!r}'s baseline schedule did not train; leave 'rewind' out (or "
            "override the workload's baseline_lrs() with the lrs your training used)"
        )
    if lrs is not None:
        workload.baseline_lrs()  # a workload's own ConfigError, before Ray rather than in each trial


def _check_distill(cfg: SearchConfig, workload: Any) -> None:
    """Distillation needs a ``finetune`` that takes ``distill``: ConfigError naming
    ``distill_weights`` before Ray starts rather than a failure in every distilled trial."""
    if not any(w > 0 for w in (cfg.distill_weights or [])):
        return
    if not _accepts_keyword(workload.finetune, "distill"):
        raise ConfigError(
            f"distill_weights={cfg.distill_weights!r}: workload {cfg.workload!r} "
            f"({type(workload).__qualname__}) has a finetune() without a distill parameter; "
            "leave distill_weights out or add finetune(..., distill=None)"
        )


def _build_fresh(cfg: SearchConfig, workload: Any) -> Any:
    """A freshly built model (seeded, on the workload's device); WorkloadError when build_model() fails."""

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = workload.build_model()
    except TunePruneError:
        raise
    except Exception as exc:
        raise WorkloadError(
            f"workload {cfg.workload!r}: build_model() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise WorkloadError(
            f"workload {cfg.workload!r}: build_model() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    # evaluate() runs batches on workload.device, and does not move the model there itself
    return model.to(workload.device)


def _evaluate(cfg: SearchConfig, workload: Any, model: Any, split: str, what: str) -> Any:
    """``workload.evaluate(model, split)``; an exception that is not tune_prune's becomes a
    WorkloadError naming the split and the cause (chained)."""
    try:
        return workload.evaluate(model, split)
    except TunePruneError:
        raise
    except Exception as exc:
        raise WorkloadError(
            f"workload {cfg.workload!r}: evaluate(model, {split!r}) failed on {what}: {type(exc).__name__}: {exc}"
        ) from exc


def _check_test_split(cfg: SearchConfig, workload: Any, model: Any, what: str = "dense baseline") -> float | None:
    """``model``'s score on ``cfg.test_split``; ConfigError when the workload has no such split."""
    if cfg.test_split is None:
        return None
    try:
        value = workload.evaluate(model, cfg.test_split)
    except (ValueError, KeyError, LookupError, TunePruneError) as exc:
        raise ConfigError(
            f"test_split={cfg.test_split!r}: workload {cfg.workload!r} cannot evaluate it ({exc}); "
            "name another split or pass --test-split none"
        ) from exc
    except Exception as exc:
        raise WorkloadError(
            f"workload {cfg.workload!r}: evaluate(model, {cfg.test_split!r}) failed on the {what}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return check_score(workload, value, f"{what} on {cfg.test_split!r}")


def _check_prunable(cfg: SearchConfig, model: Any) -> None:
    """Resolve each distinct config_list the space may give a trial on ``model``."""
    seen: set[tuple[str, Any]] = set()
    for pruner in cfg.allowed_pruners:
        prunable = getattr(get_pruner_class(pruner), "prunable", None)
        for mode in PRUNER_MODES[pruner]:
            for generator in cfg.generators:
                config_list = build.make_config_list(cfg.sparsity_kind, mode, cfg.target_sparsity, generator)
                key = (json.dumps(config_list, sort_keys=True), prunable)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    resolve_config_list(model, config_list, prunable=prunable)
                except ConfigError as exc:
                    raise ConfigError(
                        f"workload={cfg.workload!r}: its model cannot be pruned with "
                        f"sparsity_kind={cfg.sparsity_kind!r}, pruner={pruner!r}, mode={mode!r}, "
                        f"target_sparsity={cfg.target_sparsity!r}: {exc}"
                    ) from None


def _trial_id(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if not tid and result.path:
        tid = Path(result.path).name.removeprefix("trial_")
    return str(tid)


def _tune_trial_ids(grid: Any) -> set[str]:
    return {_trial_id(result) for result in grid}


def _write_errors(exp_dir: Path, grid: Any) -> None:
    """Tune's final error of each failed trial -> ``failed_trials.json`` (trial_id -> message)."""
    errors: dict[str, str] = {}
    for result in grid:
        if result.error is None:
            continue
        errors[_trial_id(result)] = error_message(result.error)
    atomic_write_text(exp_dir / ERRORS_FILE, json.dumps(errors, indent=2))


def error_message(error: Any) -> str:
    """The last meaningful line of a (Ray-wrapped) exception: its type and message."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_search(
    cfg: SearchConfig, printer: Printer | None = None, status: StatusLine | None = None
) -> SearchOutcome:
    """Run (or resume) the search ``cfg`` describes; write and return its results.

    ``printer`` gets the progress messages (default: the logger); ``status`` (the CLI's
    :class:`~tune_prune.search.progress.StatusLine`) shows trials done / running /
    stopped / failed, the best score at target and the time left while Tune runs.
    """
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter


    say: Printer = printer or (lambda msg: logger.info("%s", msg))
    start = time.perf_counter()
    name = experiment_name(cfg)
    storage = Path(cfg.storage_path).expanduser().resolve()
    exp_dir = storage / name
    if cfg.resume:
        saved = exp_dir / CONFIG_FILE
        if not saved.exists():
            raise ConfigError(f"resume=True: {str(exp_dir)!r} holds no {CONFIG_FILE}; nothing to resume")
        overrides = {k: getattr(cfg, k) for k in ("resume", "export_dir", "address", "num_cpus",
                                                  "include_dashboard", "dashboard_host", "dashboard_port",
                                                  "keep_ray_up")}
        given = cfg.optuna_storage if "optuna_storage" in cfg.model_fields_set else None
        cfg = SearchConfig.create(**{**json.loads(saved.read_text()), **overrides, "name": name,
                                     "storage_path": str(storage)})
        if given is not None and given != cfg.optuna_storage:
            # the restored searcher keeps the storage it was pickled with
            raise ConfigError(
                f"optuna_storage: experiment {name!r} ran on {storage_label(exp_dir, cfg.optuna_storage)!r}; "
                "a resumed search continues its study there (leave --optuna-storage out)"
            )
    elif (exp_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"name={name!r}: experiment {str(exp_dir)!r} exists; pass resume=True (--resume) or another name"
        )
    # Bad workloads (and an unreachable study database) fail here: before the experiment
    # folder exists and before Ray starts.
    checked = check_workload(cfg, say)
    higher = checked.higher_is_better
    check_optuna_storage(cfg, name, exp_dir)

    # Forced experiment snapshots (num_to_keep) are cheap here; Tune's warning about them is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started, url = _start_ray(cfg, name)
    keep = False
    try:
        if cfg.address is not None or len(ray.nodes()) > 1:
            shared = [storage] if cfg.dry_run else [storage, cfg.resolved_baseline_cache()]
            checked_nodes = check_shared_storage(cfg, shared, say)
            if checked_nodes:
                say(f"shared storage: {checked_nodes} node(s) see {', '.join(map(str, shared))}")
        exp_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            atomic_write_text(exp_dir / CONFIG_FILE, json.dumps(cfg.model_dump(), indent=2))
        say(f"experiment {exp_dir}" + (f"  |  Ray dashboard {url}" if url else ""))
        trainable = TunePruneTrial
        stage = "screening" if cfg.screening else "search"
        counts = ProgressCounts(total=cfg.num_samples, higher_is_better=higher, stage=stage)
        callbacks = [ProgressCallback(counts, say, status), LiveTable(exp_dir)]
        if cfg.resume and (exp_dir / "tuner.pkl").exists():
            say(f"resuming {name}")
            tuner = tune.Tuner.restore(
                str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True,
            )
            # callbacks are not part of the restored state we can swap; progress lines
            # of the resumed part come from the result table at the end.
        else:
            mode = "max" if higher else "min"
            if cfg.metric_mode_multi:
                metric: Any = ["objective", cfg.cost_metric]  # 'latency' -> 'latency_ms'
                modes: Any = [mode, "min"]
            else:
                metric, modes = M.SEARCH_METRIC, mode
            searcher = PruneAwareOptunaSearch(
                space=functools.partial(define_space, cfg=cfg),
                metric=metric,
                mode=modes,
                sampler=make_sampler(cfg),
                study_name=name,
                storage=search_storage(exp_dir, cfg.optuna_storage),
                warm_start=warm_start_points(cfg),
            )
            scheduler = make_scheduler(
                cfg.early_stopping, mode, cfg.early_stopping_rungs,
                cfg.early_stopping_reduction_factor, 2 * cfg.max_iterations + 2,
                deterministic=cfg.deterministic,
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"fixed": fixed_config(cfg, higher)},
                tune_config=tune.TuneConfig(
                    # deterministic: synchronous batches, so each suggestion sees the
                    # same finished trials whatever order they finished in
                    search_alg=ConcurrencyLimiter(
                        searcher, max_concurrent=cfg.max_concurrent, batch=cfg.deterministic
                    ),
                    scheduler=scheduler,
                    num_samples=cfg.num_samples,
                    time_budget_s=cfg.time_budget_s,
                    trial_dirname_creator=_trial_dirname,
                    reuse_actors=cfg.reuse_actors,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(storage),
                    failure_config=tune.FailureConfig(max_failures=1),
                    # Keep the two best iterations by objective (export reads the best
                    # one's result/ folder); Tune always keeps the latest as well (resume).
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=2,
                        checkpoint_score_attribute="objective",
                        checkpoint_score_order="max" if higher else "min",
                    ),
                    verbose=0,
                    callbacks=callbacks,
                ),
            )
        say(
            f"searching: {cfg.num_samples} trials, {cfg.max_concurrent} at a time, "
            f"target sparsity {cfg.target_sparsity:g} ({cfg.sparsity_kind}), early stopping '{cfg.early_stopping}'"
        )
        fit_start = time.perf_counter()
        grid = tuner.fit()
        _write_errors(exp_dir, grid)
        num_errors = grid.num_errors
        unfinished = len(grid) - grid.num_terminated - grid.num_errors
        budget_hit = cfg.time_budget_s is not None and time.perf_counter() - fit_start >= cfg.time_budget_s
        interrupted = (unfinished > 0 or len(grid) < cfg.num_samples) and not budget_hit
        if not interrupted:
            close_orphaned_trials(search_storage(exp_dir, cfg.optuna_storage), name, _tune_trial_ids(grid))
        files, table, best = write_results(exp_dir, cfg.model_dump(), higher)
        final = None
        if cfg.screening and not interrupted:
            final = run_finalists(cfg, exp_dir, best, checked, say, status)
            interrupted = final is not None and final.interrupted
        # kept for the dashboard only after a search that ran to its end (not after Ctrl-C)
        keep = started and cfg.keep_ray_up and cfg.address is None and not interrupted
    finally:
        if started and not keep:
            ray.shutdown()
    outcome = SearchOutcome(
        config=cfg,
        experiment_dir=exp_dir,
        files=files,
        table=table,
        best=best,
        study_name=name,
        journal_path=exp_dir / JOURNAL_FILE if cfg.optuna_storage is None else None,
        dashboard_url=url,
        wall_s=time.perf_counter() - start,
        num_errors=num_errors,
        interrupted=interrupted,
        optuna_storage=storage_label(exp_dir, cfg.optuna_storage),
        ray_kept=keep,
    )
    if final is not None:
        outcome.final, outcome.screen_best, outcome.best = final, best, final.best
        outcome.num_errors += final.num_errors
    if cfg.export_dir and not interrupted:
        outcome.export = export_best(exp_dir, Path(cfg.export_dir))
    return outcome


def run_finalists(
    cfg: SearchConfig, exp_dir: Path, screen_best: pd.DataFrame, checked: Checked, say: Printer,
    status: StatusLine | None = None,
) -> FinalStage | None:
    """Run the best screened schedules again at the full budget, scored on the select split.

    A second Tune experiment in ``exp_dir/final`` (restored when a resumed search finds
    it); returns None when no screened trial reached the target.
    """
    from ray import tune


    final_dir = exp_dir / FINAL_DIR
    finalists = pick_finalists(screen_best, cfg)
    if not finalists:
        say("final stage: no screened trial reached the target sparsity; nothing to run at the full budget")
        return None
    split, higher = checked.select_split, checked.higher_is_better
    say(f"final stage: the best {len(finalists)} screened schedule(s) again at {cfg.full_budget:g} fine-tune "
        f"epochs each (screened at {cfg.screen_budget:g}), picked on the {split!r} split")
    if (final_dir / "tuner.pkl").exists():
        tuner = tune.Tuner.restore(str(final_dir), trainable=TunePruneTrial, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            TunePruneTrial,
            param_space={"fixed": final_fixed(fixed_config(cfg, higher), split),
                         FINALIST_KEY: tune.grid_search(finalists)},
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=cfg.max_concurrent,
                trial_dirname_creator=_trial_dirname, reuse_actors=cfg.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=FINAL_DIR, storage_path=str(exp_dir), failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="objective",
                    checkpoint_score_order="max" if higher else "min",
                ),
                verbose=0,
                callbacks=[ProgressCallback(ProgressCounts(len(finalists), higher, stage="final"), say, status),
                           LiveTable(final_dir)],
            ),
        )
    grid = tuner.fit()
    _write_errors(final_dir, grid)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    files, table, best = write_results(final_dir, cfg.model_dump(), higher)
    _note_final_in_summary(exp_dir, final_dir, split, best)
    return FinalStage(final_dir, files, table, best, split, grid.num_errors, interrupted=unfinished > 0)


def _note_final_in_summary(exp_dir: Path, final_dir: Path, split: str, best: pd.DataFrame) -> None:
    """The screening's summary.json names the final stage and its pick (the search's result)."""
    path = exp_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = {}
    pick = best.iloc[0].to_dict() if not best.empty else None
    summary["final"] = {"experiment_dir": str(final_dir), "select_split": split,
                        "summary": str(final_dir / "summary.json"),
                        "best": json.loads(json.dumps(pick, default=str)) if pick else None}
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))


def export_best(exp_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Export the best trial's model (search.export_best -> tune_prune.export); never raises.

    A failed export is reported, not fatal: the search's results are already written.
    """
    try:
        out = _export(exp_dir, out_dir)
    except TunePruneError as exc:
        return {"status": "skipped", "reason": str(exc)}
    return {"status": "exported", "out_dir": str(out)}
