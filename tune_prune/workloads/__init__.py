"""Workloads (data + model + training) and the registry the search resolves names with.

``get_workload("digits")``, ``get_workload("mnist1d")``,
``get_workload("cifar10", data_dir=...)`` or, for a user workload, an explicit
``"package.module:factory"`` or ``"path/to/file.py:factory"``: code is imported only
when the spec names it, never discovered implicitly.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
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
from tune_prune.workloads.dataloaders import DataLoaderWorkload, from_dataloaders
from tune_prune.workloads.distill import Distillation

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

    ``spec`` is a built-in name, ``"package.module:factory"``, or
    ``"path/to/file.py:factory"`` (a relative path resolves against the current
    directory; see :func:`resolve_workload_spec`). Raises ConfigError for an unknown
    name, an unimportable module or file, a missing or non-callable factory, a factory
    that fails (cause chained) or returns a non-Workload; tune_prune errors raised by
    the factory (WorkloadError: data missing) pass through.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"workload must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        factory = BUILTIN_WORKLOADS.get(spec)
        if factory is None:
            raise ConfigError(
                f"unknown workload {spec!r}; known workloads: {sorted(BUILTIN_WORKLOADS)}, "
                "or a user workload as 'package.module:factory' or 'path/to/file.py:factory'"
            )
        return _call(spec, factory, overrides)

    file_spec = _split_file_spec(spec)
    if file_spec is not None:
        path, attr_path = file_spec
        module = _import_file(spec, path)
        where = f"file {path!r}"
    else:
        module_name, _, attr_path = spec.partition(":")
        if not module_name or not attr_path or ":" in attr_path:
            raise ConfigError(
                f"workload {spec!r} must have the form 'package.module:factory' "
                "or 'path/to/file.py:factory'"
            )
        module = _import_module(spec, module_name)
        where = f"module {module_name!r}"
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"workload {spec!r}: {where} has no attribute {attr_path!r}"
            ) from exc
    if not callable(obj):
        raise ConfigError(
            f"workload {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable"
        )
    return _call(spec, obj, overrides)


def resolve_workload_spec(spec: str) -> str:
    """``spec`` with a relative ``file.py`` path made absolute; other specs unchanged.

    A search resolves the spec once in the driver, so Ray workers, whose current
    directory may differ, import the same file.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"workload must be a non-empty string, got {spec!r}")
    file_spec = _split_file_spec(spec.strip())
    if file_spec is None:
        return spec
    path, attr_path = file_spec
    return f"{os.path.abspath(path)}:{attr_path}"


def _split_file_spec(spec: str) -> tuple[str, str] | None:
    """``(path, factory)`` when ``spec`` names a ``.py`` file, else None.

    Split at the last colon, so a Windows drive letter stays part of the path.
    """
    path, sep, attr_path = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        return None
    if not attr_path or not all(part.isidentifier() for part in attr_path.split(".")):
        raise ConfigError(
            f"workload {spec!r} must have the form 'path/to/file.py:factory' "
            f"(factory {attr_path!r} is not a Python name)"
        )
    return os.path.expanduser(path), attr_path


def _file_module_name(path: str | os.PathLike[str]) -> str:
    """The module name a workload file is imported under: its stem plus a digest of
    its absolute path, the same in every process (pickled classes resolve in workers)."""
    resolved = Path(path).resolve()
    stem = re.sub(r"\W", "_", resolved.stem) or "file"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"tune_prune_user_{stem}_{digest}"


def _import_module(spec: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if "/" in module_name or os.sep in module_name:
            hint = f"; to name a file, give its path with '.py': '{module_name}.py:...'"
        raise ConfigError(
            f"workload {spec!r}: cannot import module {module_name!r}: {exc}{hint}"
        ) from exc


def _import_file(spec: str, path: str) -> ModuleType:
    """Import the workload file ``path`` once per process, registered in sys.modules."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"workload {spec!r}: no such file {os.path.abspath(path)!r} "
            f"(relative paths resolve against the current directory {os.getcwd()!r})"
        )
    name = _file_module_name(path)
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    module_spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"workload {spec!r}: cannot import {path!r} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec, as import does: dataclasses and pickle look it up
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ConfigError(
            f"workload {spec!r}: importing file {path!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    logger.debug("workload file %s imported as module %s", path, name)
    return module


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
    "DataLoaderWorkload",
    "Distillation",
    "Evaluator",
    "Finetuner",
    "TrainConfig",
    "Workload",
    "from_dataloaders",
    "get_workload",
    "load_or_train_baseline",
    "read_baseline_metadata",
    "resolve_workload_spec",
]
