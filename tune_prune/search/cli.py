"""Command line of the schedule search: ``python -m tune_prune.search [--config FILE] [flags]``.

The only place of the search package that prints. Flags are generated from the
SearchConfig fields (``--target-sparsity`` for ``target_sparsity``), so every field
has a flag and ``--help`` shows each field's description and default. Values come
from the defaults, then ``--config FILE`` (TOML), then the flags given.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from tune_prune.errors import ConfigError, TunePruneError
from tune_prune.search.config import SearchConfig, load_toml, merge_values

logger = logging.getLogger(__name__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a field annotation such as ``list[float] | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], True
    if args and origin is not typing.Literal:
        inner = args[0]
        if typing.get_origin(inner) is list:
            return typing.get_args(inner)[0], True
        return inner, False
    return annotation, False


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _or_none(convert: Any) -> Any:
    """argparse type: 'none' (any case) -> None, else ``convert(text)``."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when possible (numbers, booleans, lists)."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_prune.search",
        description=(
            "Search over iterative pruning schedules with Ray Tune + Optuna. Each trial runs "
            "one task generator + pruner configuration from the cached dense baseline and "
            "reports every pruning iteration. With no arguments: a short search on digits "
            "(8 trials of 1-5 iterations, each screened on 3.75 fine-tune epochs, "
            "the first four warm starts: one-shot at three lrs and simulated annealing; the best "
            "one then again at 15 epochs) on a local Ray instance."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file of SearchConfig fields (flags override it)")
    for name, field in SearchConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        help_text = (field.description or "").replace("%", "%%") + f" (default: {default!r})"
        elem, is_list = _base_type(field.annotation)
        flag = _flag(name)
        if elem is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        kwargs: dict[str, Any] = {"help": help_text, "dest": name}
        if typing.get_origin(elem) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(elem))
            elem = str
        if name == "workload_options":
            parser.add_argument("--workload-option", dest=name, action="append", metavar="KEY=VALUE",
                                type=_key_value, help=help_text)
            continue
        if name == "channel_options":
            parser.add_argument("--channel-option", dest=name, action="append", metavar="KEY=CHOICES",
                                type=_key_value, help=help_text + "; flag: --channel-option KEY=JSON "
                                "(repeatable), e.g. --channel-option 'normalizer=[\"none\", \"mean\"]'")
            continue
        if name == "export_dir":
            parser.add_argument("--export", dest=name, metavar="DIR", help=help_text)
            continue
        kwargs["type"] = elem if elem in (int, float, str) else str
        if not is_list and _optional(field.annotation):
            kwargs["type"] = _or_none(kwargs["type"])
            kwargs["metavar"] = f"{name.upper()}|none"
        if is_list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = name.upper().rstrip("S") if name.endswith("s") else name.upper()
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--log-level", default="WARNING", help="logging level of tune_prune's loggers")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[SearchConfig, argparse.Namespace]:
    """SearchConfig from defaults < --config TOML < flags (ConfigError on any bad value)."""
    args = build_parser().parse_args(argv)
    values = dict(vars(args))
    config_file = values.pop("config", None)
    values.pop("log_level", None)
    base = load_toml(config_file) if config_file else {}
    for key in ("workload_options", "channel_options"):  # flags add to (and override) the file's
        if key in values:
            values[key] = {**(base.get(key) or {}), **dict(values[key])}
    return SearchConfig.create(**merge_values(base, values)), args


def _fmt_table(best: Any, limit: int = 10) -> str:
    if best is None or best.empty:
        return "  (no trial reported a result)"
    cols = ["trial_id", "status", "warm_start", "screen_trial_id", "generator", "pruner", "mode", "total_iteration", "finetune_epochs", "lr",
            "sparsity", "score", "test_score", "objective", "macs_ratio", "latency_ms", "finetune_epochs_total"]
    cols = [c for c in cols if c in best.columns]
    view = best[cols].head(limit).copy()
    for c in ("sparsity", "score", "test_score", "objective", "macs_ratio"):
        if c in view:
            view[c] = view[c].map(lambda v: f"{v:.4f}" if isinstance(v, float) else v)
    if "latency_ms" in view:
        view["latency_ms"] = view["latency_ms"].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    if "lr" in view:
        view["lr"] = view["lr"].map(lambda v: f"{v:.2g}" if isinstance(v, float) else v)
    return view.to_string(index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2: bad config, 1: search failed)."""
    try:
        cfg, args = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "WARNING")).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from tune_prune.search.progress import StatusLine
    from tune_prune.search.runner import run_search

    status = StatusLine(sys.stdout)  # in place on a terminal, plain lines when piped
    try:
        out = run_search(cfg, printer=status.log, status=status)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TunePruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        status.close()  # a half-drawn status line must not swallow what follows
    print_summary(out)
    if out.ray_kept:  # --keep-ray-up: the dashboard until Ctrl-C
        from tune_prune.search.runner import hold_ray

        hold_ray(out, print)
    if out.interrupted:
        return 130
    return 0 if out.num_errors == 0 or not out.best.empty else 1


def _epochs(best: Any) -> float:
    """Fine-tune epochs all trials of a best-per-trial table paid."""
    if best is None or best.empty or "finetune_epochs_total" not in best:
        return 0.0
    return float(best["finetune_epochs_total"].fillna(0).sum())


def print_summary(out: Any) -> None:
    """The end-of-search report: best schedules and where every result lives."""
    cfg = out.config
    exp = out.experiment_dir
    metric = "objective = val score at target sparsity" + (
        f"; Pareto front vs {cfg.cost_metric}" if cfg.metric_mode_multi else ""
    )
    if cfg.multi_objective == "latency":
        metric += (f" (median of {cfg.latency_repeats} forward passes, batch {cfg.latency_batch_size}, "
                   f"{cfg.latency_threads} thread(s))")
    print()
    final = getattr(out, "final", None)
    if final is not None:
        print(f"Screened schedules ({cfg.screen_budget:g} fine-tune epochs each; {metric}; "
              "below-target trials score < 0):")
        print(_fmt_table(out.screen_best))
        print()
        print(f"Finalists ({cfg.full_budget:g} fine-tune epochs each; score on the "
              f"{final.select_split!r} split; the first is the search's pick):")
        print(_fmt_table(final.best))
        screen_epochs = _epochs(out.screen_best)
        final_epochs = _epochs(final.best)
        print(f"fine-tune epochs paid: {screen_epochs:g} screening + {final_epochs:g} finalists = "
              f"{screen_epochs + final_epochs:g}")
    else:
        print(f"Best schedules ({metric}; below-target trials score < 0):")
        print(_fmt_table(out.best))
    print()
    if out.interrupted:
        print(f"INTERRUPTED after {out.wall_s:.0f} s: continue with the resume command below")
    print(f"{'ran' if out.interrupted else 'finished'} in {out.wall_s:.0f} s; {len(out.table['trial_id'].unique()) if not out.table.empty else 0} trial(s), {len(out.table)} reported iteration(s)"
          + (f", {out.num_errors} error(s)" if out.num_errors else ""))
    print(f"experiment folder : {exp}")
    print(f"all iterations    : {out.files.trials_csv}" + (f" (+ {out.files.trials_parquet.name})"
                                                              if out.files.trials_parquet else ""))
    print(f"best per trial    : {out.files.best_csv}")
    if final is not None:
        print(f"finalists         : {final.files.best_csv}")
    if out.files.pareto_csv:
        print(f"Pareto front      : {out.files.pareto_csv}")
    for p in out.files.plots:
        print(f"plot              : {p}")
    if out.journal_path is not None:
        print(f"Optuna study      : {out.journal_path} (study '{out.study_name}')")
        print(f"  optuna-dashboard {out.journal_path}")
        print("  or: optuna.load_study(study_name=..., storage=optuna.storages.JournalStorage("
              "optuna.storages.journal.JournalFileBackend(PATH)))")
    else:  # a database (--optuna-storage); the URL without its password
        print(f"Optuna study      : {out.optuna_storage} (study '{out.study_name}')")
        print(f"  optuna-dashboard {out.optuna_storage}")
        print(f"  or: optuna.load_study(study_name={out.study_name!r}, storage=URL)")
    if out.files.tensorboard_dir:
        print(f"TensorBoard       : tensorboard --logdir {exp}   (per-trial: {out.files.tensorboard_dir})")
    if out.dashboard_url:
        if out.ray_kept:
            when = "up until you press Ctrl-C"
        elif cfg.address:
            when = f"the cluster's, at --address {cfg.address}: it stays up"
        else:
            when = ("ended with the search: --keep-ray-up keeps it until Ctrl-C, or start Ray "
                    "with `ray start --head` and search with --address auto")
        print(f"Ray dashboard     : {out.dashboard_url} ({when}; token auth: print the "
              "token with `ray get-auth-token`, stored in ~/.ray/auth_token)")
    print(f"resume            : python -m tune_prune.search --resume --name {exp.name} "
          f"--storage-path {exp.parent}")
    if cfg.export_dir and not out.interrupted:
        exp_info = out.export
        if exp_info.get("status") == "exported":
            print(f"exported best     : {exp_info['out_dir']}")
        else:
            print(f"export skipped    : {exp_info.get('reason')}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
