"""Running a user's ``trainer(model, optimizer, criterion)`` to collect statistics.

Statistics pruners (Slim, TaylorFO, APoZ, mean activation) take NNI's trainer,
optimizer and criterion. The optimizer is rebuilt for the bound model (NNI's traced
optimizer contract): a fresh instance of the same class with the same param groups
(when its params belong to the bound model) or the same defaults (otherwise). A
factory ``callable(params) -> Optimizer`` and ``None`` (SGD, lr 0.01) are accepted too.

Stopping after ``training_batches`` batches: a forward pre-hook on the bound model
counts forward calls (one per batch); the call after the last wanted batch raises a
private exception that unwinds the trainer and is caught here. So the trainer runs
exactly ``training_batches`` forward passes (and their optimizer steps). NNI 2.10
instead lets the trainer finish its epoch and only records the first batches; NNI 3.0
stops it, as we do. A trainer that swallows every exception defeats this: the
statistics then still cover only the first batches (collection is counted too).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from tune_prune.errors import ConfigError, PrunerError

logger = logging.getLogger(__name__)

Trainer = Callable[[nn.Module, Optimizer, Callable[..., Tensor]], Any]


class _StopCollection(Exception):
    """Raised from a hook to stop the user's trainer once enough batches were seen."""


def trace(cls: Callable[..., Any]) -> Callable[..., Any]:
    """Stand-in for ``nni.trace``: ``trace(torch.optim.SGD)(params, lr=0.1)``.

    The object is built as usual; its constructor arguments are kept on it so the
    pruner can rebuild it for another model.
    """

    @functools.wraps(cls)
    def build(*args: Any, **kwargs: Any) -> Any:
        obj = cls(*args, **kwargs)
        rest = dict(kwargs)
        rest.pop("params", None)
        try:
            obj._tune_prune_trace = (cls, args[1:], rest)
        except AttributeError:  # objects with __slots__
            pass
        return obj

    return build


def build_optimizer(traced_optimizer: Any, model: nn.Module) -> Optimizer:
    """A fresh optimizer for ``model``'s parameters, equivalent to ``traced_optimizer``."""
    if traced_optimizer is None:
        return torch.optim.SGD(model.parameters(), lr=0.01)
    if isinstance(traced_optimizer, Optimizer):
        cls = type(traced_optimizer)
        own = {id(p) for p in model.parameters()}
        groups = traced_optimizer.param_groups
        if all(id(p) in own for g in groups for p in g["params"]):
            fresh = [
                {**{k: v for k, v in g.items() if k != "params"}, "params": list(g["params"])}
                for g in groups
            ]
            try:
                return cls(fresh, **traced_optimizer.defaults)
            except TypeError:  # a default the constructor does not take: groups carry all
                return cls(fresh)
        trace_info = getattr(traced_optimizer, "_tune_prune_trace", None)
        if trace_info is not None:
            tcls, args, kwargs = trace_info
            return tcls(model.parameters(), *args, **kwargs)
        return cls(model.parameters(), **traced_optimizer.defaults)
    if callable(traced_optimizer):
        opt = traced_optimizer(model.parameters())
        if not isinstance(opt, Optimizer):
            raise ConfigError(
                f"traced_optimizer: the factory returned {type(opt).__name__}, not a torch Optimizer"
            )
        return opt
    raise ConfigError(
        "traced_optimizer: expected an Optimizer instance, a callable(params) -> Optimizer "
        f"or None, got {traced_optimizer!r}"
    )


def check_trainer(trainer: Any, criterion: Any) -> None:
    """Fail at construction (not at compress) when trainer or criterion is unusable."""
    if not callable(trainer):
        raise ConfigError(
            f"trainer: expected a callable(model, optimizer, criterion), got {trainer!r}"
        )
    if criterion is not None and not callable(criterion):
        raise ConfigError(
            f"criterion: expected a callable(output, target) -> loss, got {criterion!r}"
        )


def run_trainer(
    trainer: Trainer,
    model: nn.Module,
    optimizer: Optimizer,
    criterion: Callable[..., Tensor],
    max_batches: int | None,
    hooks: Iterable[Any] = (),
) -> int:
    """Call ``trainer`` once, stopping it after ``max_batches`` forward passes.

    ``hooks`` are removable handles removed afterwards (collection hooks). Returns the
    number of forward passes the trainer ran (capped at ``max_batches``).
    """
    seen = [0]

    def count(_module: nn.Module, _args: Any) -> None:
        if max_batches is not None and seen[0] >= max_batches:
            raise _StopCollection
        seen[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        trainer(model, optimizer, criterion)
    except _StopCollection:
        logger.debug("trainer stopped after %d batches", seen[0])
    finally:
        handle.remove()
        for h in hooks:
            h.remove()
    return seen[0]


def batch_counter(model: nn.Module) -> tuple[list[int], Any]:
    """A live count of the model's forward calls (``count[0]``) and its hook handle."""
    count = [0]

    def hook(_module: nn.Module, _args: Any) -> None:
        count[0] += 1

    return count, model.register_forward_pre_hook(hook)


def require_batches(name: str, seen: int, wanted: int | None) -> None:
    """Raise when the trainer ran no batch; warn when it ran fewer than wanted."""
    if seen == 0:
        raise PrunerError(
            f"{name}: the trainer ran no forward pass of the model, so no statistics were "
            "collected (does trainer(model, optimizer, criterion) call model(...)?)"
        )
    if wanted is not None and seen < wanted:
        logger.warning(
            "%s: trainer ran %d batches, fewer than training_batches=%d", name, seen, wanted
        )


def positive_int(name: str, value: Any) -> int:
    """Validate a batch/epoch count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: expected a positive int, got {value!r}")
    return value
