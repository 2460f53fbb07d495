"""Helpers shared by the experiment scripts: run header, Markdown/CSV tables, statistics.

The scripts are run as modules from the repository root, e.g.
``python -m experiments.lottery_ticket.run``, so this file is importable as
``experiments._common`` (``experiments`` is a namespace package).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Dense baselines are cached here (ignored by git, see experiments/.gitignore).
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "baselines"


def command_line(module: str, argv: Sequence[str]) -> str:
    """The exact command that reproduces a run (from the repository root)."""
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in argv)])


def machine_lines() -> list[str]:
    """What the numbers were measured on, including how loaded the box was."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} logical CPUs (shared), python {platform.python_version()}",
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}",
        f"load average (1/5/15 min) at this point: {load}",
    ]


def key_json_options(items: Sequence[str], flag: str = "--option") -> dict[str, Any]:
    """``KEY=JSON`` command-line items (``--workload-option width=100``) -> a dict;
    SystemExit naming ``flag`` and the item when one has no ``=`` or its value is not JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected KEY=JSON")
            out[key] = json.loads(value)
        except ValueError as exc:
            raise SystemExit(f"{flag} {item!r}: {exc}") from None
    return out


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_results(
    out_dir: str | os.PathLike[str],
    header: Sequence[str],
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    footer: Sequence[str] = (),
    name: str = "results",
) -> str:
    """Write ``<name>.md`` (header, table, footer) and ``<name>.csv`` (the table); print the
    Markdown and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        [*(f"    {h}" for h in header), "", markdown_table(headers, rows), "", *footer]
    ).rstrip() + "\n"
    (out / f"{name}.md").write_text(text)
    with open(out / f"{name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(rows)
    print(text, flush=True)
    return text


def write_csv(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    """Raw per-run records (one dict a row) next to the table."""
    if not records:
        return
    keys = list(dict.fromkeys(k for r in records for k in r))  # rows may differ in keys
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(records)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = list(values)
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values * scale``."""
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def cpu_digits(baseline_epochs: float | None = None) -> Any:
    """The digits workload on CPU (every experiment's timings are CPU timings)."""
    from tune_prune.workloads import get_workload

    overrides: dict[str, Any] = {"device": "cpu"}
    if baseline_epochs is not None:
        overrides["baseline_epochs"] = baseline_epochs
    return get_workload("digits", **overrides)


def seeded_init(workload: Any, seed: int) -> torch.nn.Module:
    """The model ``load_or_train_baseline(workload, seed, ...)`` started from (its init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = workload.build_model()
    return model.to(workload.device)
