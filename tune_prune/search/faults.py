"""Test-only fault injection for search trials: a no-op unless ``TUNE_PRUNE_TEST_FAULT`` is set.

``TUNE_PRUNE_TEST_FAULT="kill:K:MARKER"`` makes the trial SIGKILL its own worker while
fine-tuning iteration K, once (guarded by the MARKER file); ``"raise:K:MARKER"`` makes
the first trial reaching iteration K raise there on every attempt (MARKER records which
trial); several faults are joined by ';'. tests/reliability sets it through the Ray job's
runtime_env; the schedule runner calls :func:`fault_hook` before every fine-tune.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

logger = logging.getLogger(__name__)

FAULT_ENV = "TUNE_PRUNE_TEST_FAULT"


def fault_hook(iteration: int) -> None:
    """Test-only fault injection (see the module docstring); a no-op unless FAULT_ENV is set.

    Several faults may be given, separated by ';' (e.g. ``raise:2:M1;kill:3:M2``).
    """
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        kind, _, rest = spec.partition(":")
        at, _, marker = rest.partition(":")
        if not at.isdigit() or int(at) != iteration or not marker:
            continue
        mark = Path(marker)
        if kind == "kill":
            if mark.exists():
                continue
            mark.write_text(str(os.getpid()))
            logger.warning("fault injection: SIGKILL of pid %d in iteration %d", os.getpid(), iteration)
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            me = _trial_id()
            if not mark.exists():
                mark.write_text(me)
            if mark.read_text() == me:
                raise RuntimeError(f"fault injection: trial {me} raises in iteration {iteration}")


def _trial_id() -> str:
    try:
        from ray import tune

        return str(tune.get_context().get_trial_id() or "local")
    except Exception:  # noqa: BLE001 - outside Tune
        return "local"
