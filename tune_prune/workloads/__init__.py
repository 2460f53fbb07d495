"""Workloads (data + model + training) and the registry the search resolves names with.

``get_workload("digits")``, ``get_workload("mnist1d")``,
``get_workload("cifar10", data_dir=...)`` or, for a user workload, an explicit
``"package.module:factory"``: code is imported only when the spec names it, never
discovered implicitly.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from tune_prune.errors import ConfigError, TunePruneError
from tune_prune.workloads.base import (
    ClassificationWorkload,
    Evaluator,
    Finetuner,
    TrainConfig,
    Workload,
    load_or_train_baseline,
    read_baseline_metadata,
)

logger = logging.getLogger(__name__)


def _digits(**overrides: Any) -> Workload:
    from tune_prune.workloads.digits import DigitsWorkload

    return DigitsWorkload(**overrides)


def _mnist1d(**overrides: Any) -> Workload:
    from tune_prune.workloads.mnist1d import Mnist1dWorkload

    return Mnist1dWorkload(**overrides)


def _cifar10(**overrides: Any) -> Workload:
    from tune_prune.workloads.cifar import Cifar10Workload

    return Cifar10Workload(**overrides)


#: Built-in names; imported lazily so using digits never touches the CIFAR or MNIST-1D module.
BUILTIN_WORKLOADS: dict[str, Callable[..., Workload]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "cifar10": _cifar10,
}


def get_workload(spec: str, **overrides: Any) -> Workload:
    """Build the workload named by ``spec``; ``overrides`` go to its constructor/factory.

    Raises ConfigError for an unknown name, an unimportable module, a missing or
    non-callable factory, a factory that fails (cause chained) or returns a non-Workload;
    tune_prune errors raised by the factory (WorkloadError: data missing) pass through.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"workload must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        factory = BUILTIN_WORKLOADS.get(spec)
        if factory is None:
            raise ConfigError(
                f"unknown workload {spec!r}; known workloads: {sorted(BUILTIN_WORKLOADS)}, "
                "or a user workload as 'package.module:factory'"
            )
        return _call(spec, factory, overrides)

    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise ConfigError(f"workload {spec!r} must have the form 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"workload {spec!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"workload {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(obj):
        raise ConfigError(
            f"workload {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable"
        )
    return _call(spec, obj, overrides)


def _call(spec: str, factory: Callable[..., Any], overrides: dict[str, Any]) -> Workload:
    try:
        workload = factory(**overrides)
    except TunePruneError:
        raise  # ConfigError names its field; WorkloadError (e.g. no data folder) keeps its type
    except Exception as exc:
        raise ConfigError(
            f"workload {spec!r}: factory failed with overrides {sorted(overrides)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(workload, Workload):
        raise ConfigError(
            f"workload {spec!r}: factory returned a {type(workload).__name__}, "
            "not a tune_prune.workloads.Workload"
        )
    logger.debug("workload %r -> %s", spec, type(workload).__name__)
    return workload


__all__ = [
    "BUILTIN_WORKLOADS",
    "ClassificationWorkload",
    "Evaluator",
    "Finetuner",
    "TrainConfig",
    "Workload",
    "get_workload",
    "load_or_train_baseline",
    "read_baseline_metadata",
]
