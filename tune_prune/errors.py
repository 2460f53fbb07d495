"""Error hierarchy of tune_prune: every user-facing failure names the field and the value."""

from __future__ import annotations


class TunePruneError(Exception):
    """Base class of every error tune_prune raises on purpose."""


class ConfigError(TunePruneError, ValueError):
    """A config_list, search config or CLI value is invalid; the message names field and value."""


class PrunerError(TunePruneError):
    """A pruner was used wrongly (not bound to a model, unknown name, unsupported module)."""


class SpeedupError(TunePruneError):
    """Physical channel removal failed or would change the model's function."""


class WorkloadError(TunePruneError):
    """A workload could not be built, trained or evaluated (or returned a bad score)."""


class ExportError(TunePruneError):
    """An export directory is missing, incomplete or inconsistent."""
