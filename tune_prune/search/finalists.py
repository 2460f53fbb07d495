"""The final stage of a screened search: the best screened schedules, again at the full budget.

With ``screen_fraction < 1`` every searched trial fine-tunes on that fraction of the
budget, which is enough to rank schedules (``experiments/fidelity`` measures how far
that holds) at a fraction of the cost. The ``finalists`` best screened trials that
reached the target are then run again from the dense baseline with the full budget
(``final_budget``, default 3 x ``finetune_budget``, split over their fine-tunes as in the
search), as a second Tune experiment in ``EXPERIMENT/final/``: their own trial
folders, checkpoints and result tables, and the same trainable. Their reported
``score`` is measured on ``select_split``, a split that did not rank the screening,
so the pick among the finalists does not reuse the images that chose them; the
search's result is the best finalist. Distinct schedules only: two screened trials
with the same schedule (the warm start re-proposed) give one finalist.

With ``warm_finalist`` the best warm-start schedule (by screened objective) is a finalist
as well when it is not among them, so the pick is never below it on the select split (close
to the guarantee an unscreened search gives on val for every warm start). It is off by
default: at a screen of 0.75 (stop 21, 6 weight cells, 40 searches) it moved the mean test
score on one cell only (MNIST-1D width 25 at 95 %, +2.2 points over 5 seeds) and cost
0.1-0.8x the final schedule's epochs; at a screen of 0.25 it had saved a digits 98 % search
whose first-ranked 4-step per-layer schedule scored 10 % at the full budget.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from tune_prune.errors import ConfigError, TunePruneError
from tune_prune.search.config import SearchConfig
from tune_prune.search.space import finetune_calls

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
#: The trial config of a finalist sits under this key of its Tune config (a grid value).
FINALIST_KEY = "finalist"
#: Keys of a screened trial's params.json that are not part of its schedule.
_NOT_SCHEDULE = ("fixed", FINALIST_KEY)


def resolve_select_split(cfg: SearchConfig, workload: Any, model: Any) -> str:
    """The split finalists are scored on; ConfigError when a named split cannot be evaluated."""
    wanted = cfg.select_split
    candidates = ["select", "val"] if wanted == "auto" else [wanted]
    for split in candidates:
        try:
            workload.evaluate(model, split)
        except (ValueError, KeyError, LookupError, TunePruneError) as exc:
            if wanted != "auto":
                raise ConfigError(
                    f"select_split={wanted!r}: workload {cfg.workload!r} cannot evaluate it ({exc}); "
                    "name another split or use 'auto'"
                ) from exc
            continue
        return split
    raise ConfigError(f"select_split='auto': workload {cfg.workload!r} has neither a 'select' nor a 'val' split")


def pick_finalists(best: pd.DataFrame, cfg: SearchConfig) -> list[dict[str, Any]]:
    """Trial configs (normalised keys) at the full budget: the ``finalists`` best screened
    trials at target, then (``warm_finalist``) the best warm-start trial at target if not among them."""
    if best.empty or "reached_target" not in best.columns:
        return []
    at_target = best[best["reached_target"].fillna(False).astype(bool)]
    seen: set[str] = set()
    top = _finalists_from(at_target, cfg, seen, cfg.finalists)
    warm = at_target.iloc[:0]  # best_per_trial always has the column; a hand-made table may not
    if cfg.warm_finalist and "warm_start" in at_target:
        warm = at_target[at_target["warm_start"].fillna(False).astype(bool)]
    return top + _finalists_from(warm.iloc[:1], cfg, seen, 1)  # the best one, unless already in


def _finalists_from(rows: pd.DataFrame, cfg: SearchConfig, seen: set[str], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` schedules of ``rows`` (in order) not in ``seen``, at the full budget."""
    chosen: list[dict[str, Any]] = []
    if limit <= 0:
        return chosen
    for _, row in rows.iterrows():
        params_file = Path(str(row["trial_dir"])) / "params.json"
        try:
            params = json.loads(params_file.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("finalists: cannot read %s (%s); skipping that trial", params_file, exc)
            continue
        schedule = {k: v for k, v in params.items() if k not in _NOT_SCHEDULE}
        key = json.dumps({k: v for k, v in schedule.items() if k != "finetune_epochs"}, sort_keys=True,
                         default=str)
        if key in seen:
            continue
        seen.add(key)
        budget = cfg.full_budget
        assert budget is not None  # screening needs finetune_budget (SearchConfig checks it)
        schedule["finetune_epochs"] = budget / finetune_calls(schedule)
        schedule["screen_trial_id"] = str(row["trial_id"])
        schedule["screen_objective"] = float(row["objective"])
        chosen.append(schedule)
        if len(chosen) == limit:
            break
    return chosen


def final_fixed(fixed: dict[str, Any], select_split: str) -> dict[str, Any]:
    """The finalists' trial-wide settings: the search's, scored on ``select_split``."""
    return {**fixed, "score_split": select_split, "stage": "final"}


def unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config with the finalist's schedule under FINALIST_KEY -> a flat trial config."""
    if FINALIST_KEY not in config:
        return config
    return {"fixed": config["fixed"], **config[FINALIST_KEY]}
