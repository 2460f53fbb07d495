"""The Workload contract: a model family, its data, and how to train and score it.

The search and the pruning scheduler only ever talk to a model through a Workload, so
a new task (data set + architecture) plugs in by subclassing :class:`Workload` (or the
in-memory helper :class:`ClassificationWorkload`) and naming it to ``get_workload``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tune_prune.atomic import atomic_write, file_lock
from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads.distill import Distillation

logger = logging.getLogger(__name__)

#: "select" is optional: a second held-out split a screened search picks its finalists on.
SPLITS = ("train", "val", "test", "select")

#: Names ``finetune(..., lr_schedule=...)`` and ``finetuner(..., lr_schedule=...)`` accept
#: (None means the config's own ``lr_schedule``). See :meth:`ClassificationWorkload.finetune`:
#: "cosine" anneals ``lr`` to 0 over the call, "constant" keeps ``lr``, and "rewind" is
#: learning-rate rewinding (Renda, Frankle & Carbin, ICLR 2020): replay the lrs of the
#: dense baseline's last epochs and ignore ``lr``.
LR_SCHEDULES = ("cosine", "constant", "rewind")

Batch = tuple[Tensor, Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class OptimConfig:
    """How a workload trains its baseline and fine-tunes: the settings every workload shares.

    Frozen dataclass so a workload's whole configuration can be hashed into the
    baseline cache key. Fields with ``metadata={"cache_key": False}`` (paths, devices)
    do not change what is learned and are left out of that key. ``lr_schedule`` is the
    baseline's schedule and that of fine-tunes that name none: "cosine" anneals to 0
    over each call, "constant" keeps the lr ("rewind" is a per-fine-tune choice).
    """

    baseline_epochs: float = 10.0
    baseline_lr: float = 0.05
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    device: str = dataclasses.field(default="auto", metadata={"cache_key": False})

    def __post_init__(self) -> None:
        _check_epochs("baseline_epochs", self.baseline_epochs)
        for name in ("baseline_lr", "finetune_lr"):
            _check_lr(name, getattr(self, name))
        if isinstance(self.momentum, bool) or not (
            isinstance(self.momentum, int | float) and 0.0 <= self.momentum < 1.0
        ):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if isinstance(self.weight_decay, bool) or not (
            isinstance(self.weight_decay, int | float)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0.0
        ):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"lr_schedule must be 'cosine' or 'constant' (the baseline's schedule; "
                f"'rewind' is a per-fine-tune choice), got {self.lr_schedule!r}"
            )
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"device is not a torch device: {self.device!r}") from exc


@dataclass(frozen=True)
class TrainConfig(OptimConfig):
    """:class:`OptimConfig` plus the batch sizes of workloads that batch their own tensors."""

    batch_size: int = 64
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        super().__post_init__()


def _check_epochs(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")


def _check_lr(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")


def _check_lr_schedule(value: Any) -> None:
    """None (the config's schedule) or one of LR_SCHEDULES, else ConfigError."""
    if value is not None and (not isinstance(value, str) or value not in LR_SCHEDULES):
        raise ConfigError(
            f"lr_schedule must be one of {list(LR_SCHEDULES)} (or None for the "
            f"workload config's schedule), got {value!r}"
        )


def _accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes keyword ``name`` (True when its signature cannot be read)."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


def finite_real(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number, else None.

    Real numbers (int, float, NumPy scalars; not bool) that are finite pass; tensors,
    strings, None, NaN and inf do not: the search ranks trials by scores like this.
    """
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    score = float(value)
    return score if math.isfinite(score) else None


def check_score(workload: Any, value: Any, what: str = "score") -> float:
    """``value`` (what ``evaluate`` returned) as a float, or WorkloadError naming it."""
    score = finite_real(value)
    if score is None:
        name = getattr(workload, "name", type(workload).__name__)
        got = f"score={value!r}" if isinstance(value, float) else f"{value!r} (type {type(value).__name__})"
        raise WorkloadError(f"{name}: evaluate() returned {got} for the {what}; it must return a finite float")
    return score


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means the GPU when there is one: same config works on laptops and nodes."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def with_overrides(base: Any, overrides: dict[str, Any], workload: str) -> Any:
    """``base`` (a config dataclass) with ``overrides``; ConfigError naming unknown fields."""
    try:
        return dataclasses.replace(base, **overrides)
    except TypeError as exc:
        known = sorted(f.name for f in dataclasses.fields(base))
        raise ConfigError(
            f"unknown {workload} workload field in {sorted(overrides)}; known fields: {known}"
        ) from exc


def config_hash(config: Any, extra: str = "") -> str:
    """Stable hex digest of a config dataclass, skipping fields marked ``cache_key=False``."""
    if not dataclasses.is_dataclass(config):
        payload: Any = repr(config)
    else:
        payload = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.metadata.get("cache_key", True)
        }
    text = json.dumps({"config": payload, "extra": extra}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_finite_loss(name: str, loss_sum: Tensor, epoch: int, step: int, lr: float) -> None:
    """WorkloadError naming the epoch, step and lr when a training loss turned NaN/inf."""
    if not bool(torch.isfinite(loss_sum)):
        raise WorkloadError(
            f"{name}: training loss became {float(loss_sum)} in epoch {epoch} "
            f"(by step {step}, lr={lr!r}); lower lr or check the model"
        )


def fit_steps(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch_batches: Callable[[], Iterable[Batch]],
    total: int,
    steps_per_epoch: int,
    loss_of: Callable[[nn.Module, Tensor, Tensor], Tensor],
    lr_schedule: str,
    rewind: list[float] | None = None,
) -> dict[str, Any]:
    """``total`` optimizer steps over epochs of ``epoch_batches()``: every workload's fine-tune loop.

    ``lr_schedule`` "cosine" anneals the optimizer's lr to 0 over the ``total`` steps
    (per step), "constant" keeps it, "rewind" sets step k's lr to ``rewind[k]``. The
    running loss is checked for NaN/inf every 25 steps and at each epoch's end
    (WorkloadError); an epoch without a batch is a WorkloadError too. Returns the
    epochs and steps run, the last epoch's mean loss and the seconds taken.
    """
    lr = optimizer.param_groups[0]["lr"]
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                if lr_schedule == "cosine" else None)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    start, step, epoch, final_loss = time.perf_counter(), 0, 0, float("nan")
    while step < total:
        epoch += 1
        loss_sum = torch.zeros((), device=device)
        epoch_steps = 0
        for x, y in epoch_batches():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(model, x, y)
            loss.backward()
            if rewind is not None:
                for group in optimizer.param_groups:
                    group["lr"] = rewind[step]
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach()
            step += 1
            epoch_steps += 1
            if epoch_steps % 25 == 0:
                check_finite_loss(name, loss_sum, epoch, step, lr)
            if step >= total:
                break
        if epoch_steps == 0:
            raise WorkloadError(f"{name}: split 'train' is empty (epoch {epoch} yielded no batch)")
        check_finite_loss(name, loss_sum, epoch, step, lr)
        final_loss = float(loss_sum) / epoch_steps
        logger.debug("%s epoch %d: %d steps, loss %.4f", name, epoch, epoch_steps, final_loss)
    return {
        "epochs": step / steps_per_epoch,
        "steps": step,
        "final_loss": final_loss,
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- contract


class Workload(ABC):
    """What the search and the PruningScheduler need from a task.

    Subclasses set ``name`` and ``config`` (a dataclass; it keys the baseline cache)
    and implement the abstract methods. ``finetune`` must build its optimizer inside:
    after physical channel removal an optimizer built earlier holds stale tensors.
    ``finetune`` may leave out the ``lr_schedule`` keyword: :class:`Finetuner` passes it
    only when a schedule was asked for (not None), so such a workload works as before
    and only a search that chooses the schedule needs it.

    ``pretrained`` (default None: train the baseline) starts from the user's own trained
    weights instead: a path of a state dict saved with ``torch.save(model.state_dict(),
    path)`` (read with ``weights_only=True``; a top-level ``{"state_dict": ...}`` or
    ``{"model_state_dict": ...}`` checkpoint is accepted too) or the state dict itself.
    :func:`load_or_train_baseline` then trains nothing: it loads those weights strictly
    into ``build_model()``. A subclass may set it as a class attribute or in
    ``__init__``; the search sets it with :func:`apply_pretrained`. The weights' digest is
    part of :meth:`cache_key`, so other weights never reuse a cached baseline score.
    """

    name: ClassVar[str] = "workload"
    higher_is_better: ClassVar[bool] = True
    #: Bump in a subclass when ``build_model`` changes, so cached baselines are not reused.
    model_version: ClassVar[str] = "1"
    config: Any = None
    device: torch.device = torch.device("cpu")
    #: The user's trained weights (a state dict's path, or the state dict) the baseline is
    #: loaded from instead of trained; None: train it (see the class docstring).
    pretrained: str | os.PathLike[str] | dict[str, Any] | None = None

    @property
    @abstractmethod
    def baseline_epochs(self) -> float:
        """Epochs the dense baseline is trained for (also the unit fine-tune budgets use)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model of the fixed architecture (weights from the global torch RNG)."""

    @abstractmethod
    def dummy_input(self) -> Tensor:
        """A batch of 1-2 inputs on ``self.device`` for tracing (dependency graph, speedup)."""

    @abstractmethod
    def finetune(
        self,
        model: nn.Module,
        epochs: float,
        lr: float,
        seed: int,
        lr_schedule: str | None = None,
        distill: Distillation | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` in place with a fresh optimizer; raise WorkloadError on NaN/inf.

        ``lr_schedule`` is one of :data:`LR_SCHEDULES`, or None for the workload's
        default. ``distill`` (None: plain fine-tuning) adds a distillation loss from the
        dense teacher (:mod:`tune_prune.workloads.distill`). Both are optional for
        subclasses: one whose ``finetune`` takes neither still works with
        ``finetuner(...)`` when neither is asked for (the defaults).
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """Score of ``model`` on ``split`` (accuracy in [0, 1] unless higher_is_better=False)."""

    @abstractmethod
    def trainer(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[Tensor, Tensor], Tensor],
    ) -> None:
        """One epoch of training with the given optimizer (NNI 2.10 ``trainer`` form)."""

    def seed_trainer(self, calls: int) -> None:
        """Have the next :meth:`trainer` call draw the data order of call ``calls + 1``.

        The built-in workloads seed each trainer call's data order from a counter that
        starts at 0 in every process; a search trial resumed in a new process sets it from
        its iteration so its statistics passes see the batches an uninterrupted trial saw.
        A workload whose trainer keeps no such counter can leave this as it is.
        """
        self._trainer_calls = int(calls)

    # ---- defaults built on the abstract members

    @property
    def criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Loss used by ``trainer`` (NNI statistics pruners take it separately)."""
        return nn.CrossEntropyLoss()

    @property
    def baseline_lr(self) -> float:
        return float(getattr(self.config, "baseline_lr", 0.05))

    @property
    def traced_optimizer(self) -> OptimizerFactory:
        """``f(params) -> optimizer`` so a pruner can rebuild it; a partial, hence picklable."""
        cfg = self.config
        return functools.partial(
            torch.optim.SGD,
            lr=float(getattr(cfg, "finetune_lr", 0.01)),
            momentum=float(getattr(cfg, "momentum", 0.9)),
            weight_decay=float(getattr(cfg, "weight_decay", 0.0)),
        )

    def cache_key(self) -> str:
        """Hash of everything that changes the baseline (config, class, model version, and the
        sha256 of the ``pretrained`` weights when they are set)."""
        extra = f"{type(self).__module__}.{type(self).__qualname__}:{self.model_version}"
        if self.pretrained is not None:
            extra += f":pretrained={pretrained_digest(self)}"
        return config_hash(self.config, extra)

    def train_baseline(self, seed: int = 0) -> nn.Module:
        """Dense baseline: seeded init then ``baseline_epochs`` of training at ``baseline_lr``.

        The global RNG is forked, so seeding here does not disturb the caller's stream.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        model.to(self.device)
        self.finetune(model, self.baseline_epochs, self.baseline_lr, seed)
        return model

    def finetuner(
        self,
        epochs: float,
        lr: float | None = None,
        seed: int = 0,
        lr_schedule: str | None = None,
        distill: Distillation | None = None,
    ) -> Finetuner:
        """Plain ``f(model)`` for ``PruningScheduler(finetuner=...)``; same seed on every call.

        ``lr_schedule`` (one of :data:`LR_SCHEDULES`; None = the workload's default) and
        ``distill`` (a :class:`~tune_prune.workloads.distill.Distillation`; None = none)
        are passed to ``finetune`` only when they are not None, so a subclass whose
        ``finetune`` lacks those parameters keeps working; asking such a workload for
        one raises ConfigError here rather than a TypeError mid-search.
        """
        _check_epochs("epochs", epochs)
        lr = float(getattr(self.config, "finetune_lr", 0.01)) if lr is None else lr
        _check_lr("lr", lr)
        _check_lr_schedule(lr_schedule)
        if lr_schedule is not None and not _accepts_keyword(self.finetune, "lr_schedule"):
            raise ConfigError(
                f"lr_schedule={lr_schedule!r} was asked for, but workload "
                f"{getattr(self, 'name', type(self).__name__)!r} ({type(self).__qualname__}) "
                f"has a finetune() without an lr_schedule parameter; leave lr_schedule=None"
            )
        if distill is not None and not isinstance(distill, Distillation):
            raise ConfigError(f"distill must be a Distillation or None, got {type(distill).__name__}")
        if distill is not None and not _accepts_keyword(self.finetune, "distill"):
            raise ConfigError(
                f"distillation was asked for, but workload {getattr(self, 'name', type(self).__name__)!r} "
                f"({type(self).__qualname__}) has a finetune() without a distill parameter; set distill to 0"
            )
        return Finetuner(self, float(epochs), float(lr), int(seed), lr_schedule=lr_schedule, distill=distill)

    def evaluator(self, split: str = "val") -> Evaluator:
        """Plain ``f(model) -> float`` for ``PruningScheduler(evaluator=...)``."""
        _check_split(split)
        return Evaluator(self, split)


@dataclass
class Finetuner:
    """Picklable callable wrapping ``Workload.finetune``; keeps the last stats for reporting."""

    workload: Workload
    epochs: float
    lr: float
    seed: int = 0
    last_stats: dict[str, Any] | None = None
    #: None: the workload's default schedule, and ``finetune`` is called without the
    #: keyword (so workloads whose ``finetune`` lacks it keep working).
    lr_schedule: str | None = None
    #: None: plain fine-tuning, and ``finetune`` is called without the keyword.
    distill: Distillation | None = None

    def __call__(self, model: nn.Module) -> None:
        kwargs: dict[str, Any] = {} if self.lr_schedule is None else {"lr_schedule": self.lr_schedule}
        if self.distill is not None:
            kwargs["distill"] = self.distill
        self.last_stats = self.workload.finetune(model, self.epochs, self.lr, self.seed, **kwargs)


@dataclass
class Evaluator:
    """Picklable callable wrapping ``Workload.evaluate``."""

    workload: Workload
    split: str = "val"

    def __call__(self, model: nn.Module) -> float:
        return self.workload.evaluate(model, self.split)


# --------------------------------------------------------------------------- in-memory helper


class ClassificationWorkload(Workload):
    """Training/evaluation loops for classification data held as tensors in memory.

    Subclasses provide the model and three data hooks; batches never go through a
    DataLoader (no workers, no per-sample Python), which keeps small workloads fast
    and deterministic: shuffling and augmentation draw only from a seeded Generator.
    """

    config: TrainConfig

    @property
    def baseline_epochs(self) -> float:
        return float(self.config.baseline_epochs)

    @abstractmethod
    def split_size(self, split: str) -> int:
        """Number of samples in ``split``."""

    @abstractmethod
    def split_tensors(self, split: str) -> Batch:
        """All of ``split`` as ``(inputs, labels)``, possibly raw (e.g. uint8)."""

    def prepare_batch(self, x: Tensor, y: Tensor, train: bool, generator: torch.Generator) -> Batch:
        """Hook: normalise / augment one batch and move it to ``self.device``."""
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (the last partial batch is dropped)."""
        return max(1, self.split_size("train") // self.config.batch_size)

    def _train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        x, y = self.split_tensors("train")
        n, bs = self.split_size("train"), self.config.batch_size
        perm = torch.randperm(n, generator=generator)
        for step in range(self.steps_per_epoch()):
            idx = perm[step * bs : (step + 1) * bs]
            if idx.device != x.device:
                idx = idx.to(x.device)
            yield self.prepare_batch(x[idx], y[idx], True, generator)

    def _eval_batches(self, split: str) -> Iterator[Batch]:
        x, y = self.split_tensors(split)
        bs = self.config.eval_batch_size
        dummy = torch.Generator()
        for start in range(0, self.split_size(split), bs):
            yield self.prepare_batch(x[start : start + bs], y[start : start + bs], False, dummy)

    def dummy_input(self) -> Tensor:
        x, _ = self.split_tensors("val")
        return self.prepare_batch(
            x[:2], torch.zeros(2, dtype=torch.long), False, torch.Generator()
        )[0]

    def finetune(
        self,
        model: nn.Module,
        epochs: float,
        lr: float,
        seed: int = 0,
        lr_schedule: str | None = None,
        distill: Distillation | None = None,
    ) -> dict[str, Any]:
        """SGD(momentum, weight decay) with a fresh optimizer; fractional epochs allowed.

        ``epochs=0.5`` runs half an epoch's steps (K = round(epochs * steps_per_epoch())
        optimizer steps). Raises WorkloadError naming the epoch when the loss turns
        NaN/inf (the model is left in that diverged state).

        ``lr_schedule`` (None = ``config.lr_schedule``, the unchanged default):

        * ``"cosine"``: anneal from ``lr`` to 0 over this call's K steps (per step).
        * ``"constant"``: ``lr`` at every step.
        * ``"rewind"``: learning-rate rewinding (Renda, Frankle & Carbin 2020): step k
          of K uses the lr the dense baseline (``train_baseline``: ``baseline_epochs``
          at ``baseline_lr`` under ``config.lr_schedule``) used at its step
          E - K + k, E being its step count; see :meth:`rewind_lrs`, which also
          says what happens when K > E. ``lr`` is ignored (still validated).

        ``distill`` (None: cross-entropy alone) mixes in the dense teacher's softened
        outputs (:class:`~tune_prune.workloads.distill.Distillation`).
        """
        _check_epochs("epochs", epochs)
        _check_lr("lr", lr)
        _check_lr_schedule(lr_schedule)
        cfg = self.config
        schedule_name = cfg.lr_schedule if lr_schedule is None else lr_schedule
        spe = self.steps_per_epoch()
        total = int(round(epochs * spe))
        if total == 0:
            return {"epochs": 0.0, "steps": 0, "final_loss": float("nan"), "seconds": 0.0}
        rewind = None
        if schedule_name == "rewind":
            rewind = self.rewind_lrs(total)
            lr = rewind[0]
        model.to(self.device)
        was_training = model.training
        model.train()
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
        criterion = self.criterion
        generator = torch.Generator().manual_seed(seed)
        loss_of = ((lambda m, x, y: criterion(m(x), y)) if distill is None
                   else distill.loss_of(criterion, self.device))
        stats = fit_steps(self.name, model, optimizer, lambda: self._train_batches(generator), total, spe,
                          loss_of, schedule_name, rewind)
        model.train(was_training)
        return stats

    def baseline_lrs(self) -> list[float]:
        """The lr of each optimizer step of the dense baseline, as ``train_baseline`` runs it.

        ``train_baseline`` calls ``finetune(model, baseline_epochs, baseline_lr, seed)``
        with the config's schedule, so this is E = round(baseline_epochs *
        steps_per_epoch()) values: ``baseline_lr`` throughout for "constant"; for
        "cosine" the values of the same CosineAnnealingLR(T_max=E), replayed on a
        throwaway optimizer over one gradient-free tensor so they match the baseline's
        bit for bit (baseline_lr * (1 + cos(pi * i / E)) / 2 up to rounding); costs
        about 4 us a step. A subclass whose ``train_baseline`` trains differently must
        override this, or "rewind" replays the wrong schedule.
        """
        base_lr = float(self.baseline_lr)
        e_steps = int(round(self.baseline_epochs * self.steps_per_epoch()))
        if self.config.lr_schedule != "cosine" or e_steps == 0:
            return [base_lr] * e_steps
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=e_steps)
        dummy.step()  # no gradients, so a no-op; keeps the scheduler's order warning quiet
        lrs = []
        for _ in range(e_steps):
            lrs.append(dummy.param_groups[0]["lr"])
            schedule.step()
        return lrs

    def rewind_lrs(self, steps: int) -> list[float]:
        """The lr of each of ``steps`` fine-tune steps under ``lr_schedule="rewind"``.

        With E = len(baseline_lrs()): for steps <= E, the baseline's last ``steps`` lrs
        (step k gets baseline step E - steps + k). For steps > E (a fine-tune longer
        than the baseline), the first steps - E at ``baseline_lr`` (the baseline's
        first-step lr, held), then the whole baseline schedule.
        """
        full = self.baseline_lrs()
        if steps <= len(full):
            return full[len(full) - steps :]
        return [float(self.baseline_lr)] * (steps - len(full)) + full

    def trainer(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[Tensor, Tensor], Tensor],
        max_steps: int | None = None,
    ) -> None:
        """One epoch (or ``max_steps``) with the caller's optimizer, as NNI statistics pruners want.

        Each call draws a new data order from a per-workload counter, so repeated calls
        (several collection epochs) see different batches yet stay reproducible.
        """
        self._trainer_calls = getattr(self, "_trainer_calls", 0) + 1
        generator = torch.Generator().manual_seed(10_000 + self._trainer_calls)
        model.train()
        for step, (x, y) in enumerate(self._train_batches(generator)):
            if max_steps is not None and step >= max_steps:
                break
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """Top-1 accuracy in [0, 1]; restores the model's train/eval mode afterwards."""
        _check_split(split)
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        total = 0
        for x, y in self._eval_batches(split):
            correct += (model(x).argmax(dim=1) == y).sum()
            total += y.numel()
        model.train(was_training)
        if total == 0:
            raise WorkloadError(f"{self.name}: split {split!r} is empty")
        return float(correct) / total


class InMemorySplits:
    """The split hooks of a :class:`ClassificationWorkload` whose splits are held in
    ``self._data`` (split name -> ``(inputs, labels)``); mix in before it."""

    name: str
    _data: dict[str, Batch]

    def split_size(self, split: str) -> int:
        return int(self.split_tensors(split)[1].numel())

    def split_tensors(self, split: str) -> Batch:
        if split not in self._data:
            raise WorkloadError(f"{self.name}: no {split!r} split (it has {sorted(self._data)})")
        return self._data[split]

    def split_indices_fingerprint(self) -> dict[str, int]:
        """Cheap checksum of each split's labels and inputs (tests and logs use it)."""
        return {s: int((x.float().sum() * 1000).round()) + int(y.sum()) for s, (x, y) in self._data.items()}


# --------------------------------------------------------------------------- baseline cache


def baseline_cache_key(workload: Workload) -> str:
    """The key a cached baseline is stored and checked under: ``workload.cache_key()``, with
    the ``pretrained`` weights' digest mixed in even when a subclass's ``cache_key()``
    override leaves it out (unchanged for a workload without pretrained weights)."""
    key = workload.cache_key()
    if getattr(workload, "pretrained", None) is None:
        return key
    return hashlib.sha256(f"{key}|pretrained={pretrained_digest(workload)}".encode()).hexdigest()


def _baseline_paths(workload: Workload, seed: int, cache_dir: Path) -> tuple[Path, Path, Path]:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", workload.name) or "workload"
    stem = f"{safe}-seed{seed}-{baseline_cache_key(workload)[:16]}"
    return cache_dir / f"{stem}.pt", cache_dir / f"{stem}.json", cache_dir / f"{stem}.lock"


def read_baseline_metadata(
    workload: Workload, seed: int, cache_dir: str | os.PathLike[str]
) -> dict[str, Any] | None:
    """The JSON stored next to a cached baseline (accuracy, epochs, ...), or None if absent."""
    _, meta_path, _ = _baseline_paths(workload, seed, Path(cache_dir))
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def _try_load(workload: Workload, seed: int, weights: Path, meta: Path) -> nn.Module | None:
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("cache_key") != baseline_cache_key(workload):
            raise ValueError(f"cache_key mismatch: {info.get('cache_key')!r}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = workload.build_model()
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a bad cache entry is rebuilt, not fatal
        logger.warning("ignoring unreadable cached baseline %s: %s", weights, exc)
        return None
    logger.info("loaded cached baseline %s (val score %s)", weights, info.get("val_score"))
    return model.to(workload.device)


def load_or_train_baseline(
    workload: Workload, seed: int, cache_dir: str | os.PathLike[str]
) -> nn.Module:
    """The dense baseline for (workload, seed, config), trained at most once per cache dir.

    Stored as a state_dict (never a pickled module) plus a JSON with the score, seed,
    epochs and torch version. Writes are atomic (temp file + os.replace, JSON last as
    the commit marker) and serialised by a file lock, so concurrent trials that miss
    the cache wait for one trainer instead of all training. A baseline whose score is
    not a finite real number raises WorkloadError and is not cached.

    With ``workload.pretrained`` set nothing is trained: see :func:`_pretrained_baseline`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if getattr(workload, "pretrained", None) is not None:
        return _pretrained_baseline(workload, seed, Path(cache_dir))
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkloadError(f"cannot create baseline cache_dir {str(cache)!r}: {exc}") from exc
    weights, meta, lock = _baseline_paths(workload, seed, cache)

    model = _try_load(workload, seed, weights, meta)
    if model is not None:
        return model
    with file_lock(lock):
        model = _try_load(workload, seed, weights, meta)  # another process may have finished
        if model is not None:
            return model
        logger.info("training %s baseline (seed %d) into %s", workload.name, seed, weights)
        start = time.perf_counter()
        model = workload.train_baseline(seed)
        seconds = time.perf_counter() - start
        # A non-number would break the JSON below; NaN would poison every comparison.
        score = check_score(workload, workload.evaluate(model, "val"), "dense baseline")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(weights, lambda fh: torch.save(state, fh))
        info = {
            "workload": workload.name,
            "seed": seed,
            "cache_key": baseline_cache_key(workload),
            "config": _jsonable_config(workload.config),
            "epochs": workload.baseline_epochs,
            "val_score": score,
            "higher_is_better": workload.higher_is_better,
            "train_seconds": round(seconds, 3),
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(meta, lambda fh: fh.write(json.dumps(info, indent=2)), mode="w")
        logger.info("%s baseline: val score %.4f after %.1f s", workload.name, score, seconds)
    return model


def _jsonable_config(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return json.loads(json.dumps(dataclasses.asdict(config), default=repr))
    return repr(config)


# --------------------------------------------------------------------------- pretrained weights

#: Keys a training checkpoint keeps the model's state dict under (``{"state_dict": ...,
#: "optimizer": ..., "epoch": ...}``); accepted in place of a bare state dict.
CHECKPOINT_STATE_KEYS = ("state_dict", "model_state_dict")
_LIST_KEYS = 12  # keys named per category in a mismatch message


def apply_pretrained(workload: Workload, pretrained: Any) -> Workload:
    """Set ``workload.pretrained`` (validated) and return the workload; None changes nothing.

    ``pretrained``: the path of a state dict file (str or PathLike; stored absolute) or a
    state dict (a mapping of names to tensors). A missing file is a WorkloadError naming
    it, a model or another type a ConfigError. What the file holds is checked when the
    weights are loaded (:func:`load_or_train_baseline`).
    """
    if pretrained is None:
        return workload
    name = getattr(workload, "name", type(workload).__name__)
    if isinstance(pretrained, nn.Module):
        raise ConfigError(
            f"{name}: pretrained is a {type(pretrained).__name__} model; pass its state dict "
            "(model.state_dict()) or the path of torch.save(model.state_dict(), PATH)"
        )
    if isinstance(pretrained, str | os.PathLike):
        path = Path(pretrained).expanduser().absolute()
        if not _is_file(path):
            raise WorkloadError(
                f"{name}: pretrained weights {str(path)!r} "
                f"{'are a directory, not a file' if path.is_dir() else 'do not exist'}"
            )
        value: Any = str(path)
    elif isinstance(pretrained, Mapping):
        value = pretrained
    else:
        raise ConfigError(
            f"{name}: pretrained must be a state dict file's path or a state dict, "
            f"got a {type(pretrained).__name__}"
        )
    workload.pretrained = value
    workload.__dict__.pop("_pretrained_memo", None)
    return workload


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def pretrained_label(pretrained: Any) -> str:
    """How metadata and messages name the weights: the path, or ``"<dict>"``."""
    return "<dict>" if isinstance(pretrained, Mapping) else os.fspath(pretrained)


def state_dict_digest(state: Mapping[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and tensor bytes (order-independent)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(f"{key}\0".encode())
        if isinstance(value, Tensor):
            t = value.detach()
            if t.layout != torch.strided:
                t = t.to_dense()
            if t.is_quantized:
                t = t.int_repr()
            t = t.cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(value.shape)}\0".encode())
            digest.update(t.view(torch.uint8).numpy())
        else:  # e.g. a module's _extra_state
            digest.update(f"{type(value).__name__}:{value!r}\0".encode())
    return digest.hexdigest()


def _source_id(pretrained: Any) -> tuple[Any, ...]:
    """What a memoised digest is valid for: the file's path, size and mtime, or the dict."""
    if isinstance(pretrained, Mapping):
        return ("dict", id(pretrained))
    path = Path(pretrained).expanduser()
    try:
        st = path.stat()
    except (OSError, ValueError):
        return ("path", str(path), None)
    return ("path", str(path), st.st_size, st.st_mtime_ns)


def pretrained_digest(workload: Workload) -> str:
    """The sha256 (:func:`state_dict_digest`) of ``workload.pretrained``'s weights.

    Memoised on the workload while the file (path, size, mtime) or the dict object is
    the same, so ``cache_key()`` reads the file once; WorkloadError as
    :func:`load_pretrained_state`.
    """
    source = workload.pretrained
    memo = workload.__dict__.get("_pretrained_memo")
    if memo is not None and memo[0] == _source_id(source) and memo[1] is source:
        return memo[2]
    return load_pretrained_state(workload)[1]


def load_pretrained_state(workload: Workload) -> tuple[Mapping[str, Any], str]:
    """(state dict, sha256) of ``workload.pretrained``; WorkloadError naming the file when
    it is missing, unreadable with ``weights_only=True`` (a pickled model) or not a state dict."""
    source = workload.pretrained
    name = getattr(workload, "name", type(workload).__name__)
    if source is None:
        raise WorkloadError(f"{name}: no pretrained weights are set")
    label = pretrained_label(source)
    if isinstance(source, Mapping):
        obj: Any = source
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not _is_file(path):
            raise WorkloadError(f"{name}: pretrained weights {label!r} do not exist (or are not a file)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            raise WorkloadError(
                f"{name}: cannot load pretrained weights {label!r} with torch.load(weights_only=True): "
                f"{type(exc).__name__}: {first[:300]}. Save the state dict, "
                "torch.save(model.state_dict(), PATH): a whole pickled model is refused (loading it "
                "would run code)"
            ) from exc
    else:
        raise ConfigError(f"{name}: pretrained must be a path or a state dict, got a {type(source).__name__}")
    state = _as_state_dict(obj, name, label)
    digest = state_dict_digest(state)
    workload.__dict__["_pretrained_memo"] = (_source_id(source), source, digest)
    return state, digest


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and (isinstance(v, Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
    )


def _as_state_dict(obj: Any, name: str, label: str) -> Mapping[str, Any]:
    """``obj`` as a state dict: itself, or a checkpoint's ``state_dict`` entry; else WorkloadError."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_STATE_KEYS:
            if _is_state_dict(obj.get(key)):
                logger.info("%s: pretrained weights %s: using the checkpoint's %r entry", name, label, key)
                return obj[key]
        keys = [repr(k) for k in list(obj)[:_LIST_KEYS]]
        bad = [repr(k) for k, v in obj.items() if not isinstance(v, Tensor)][:_LIST_KEYS]
        what = (f"a {type(obj).__name__} with keys [{', '.join(keys)}{', ...' if len(obj) > _LIST_KEYS else ''}] "
                f"whose entries [{', '.join(bad)}] are not tensors")
    else:
        what = f"a {type(obj).__name__}"
    raise WorkloadError(
        f"{name}: pretrained weights {label!r} are not a state dict (a mapping of parameter names to "
        f"tensors, or a checkpoint holding one under {' or '.join(map(repr, CHECKPOINT_STATE_KEYS))}): "
        f"got {what}"
    )


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_KEYS])
    return shown + (f", ... ({len(keys) - _LIST_KEYS} more)" if len(keys) > _LIST_KEYS else "")


def load_pretrained_into(workload: Workload, model: nn.Module, state: Mapping[str, Any]) -> None:
    """``model.load_state_dict(state, strict=True)``; WorkloadError listing the missing and
    unexpected keys and the shape mismatches, naming the weights, when they do not fit."""
    try:
        model.load_state_dict(state, strict=True)
        return
    except Exception as exc:  # noqa: BLE001 - reported below with the keys spelled out
        error = exc
    name = getattr(workload, "name", type(workload).__name__)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (weights {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and isinstance(state[k], Tensor) and isinstance(own[k], Tensor)
        and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_some(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_some(shapes)}")
    if not parts:
        parts.append(f"{type(error).__name__}: {error}")
    hint = ""
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = (" (saved from a DataParallel/DistributedDataParallel wrapper? save model.module.state_dict(),"
                " or strip the 'module.' prefix of every key)")
    raise WorkloadError(
        f"{name}: pretrained weights {pretrained_label(workload.pretrained)!r} do not fit the model "
        f"build_model() returns ({type(model).__name__}): " + "; ".join(parts) + hint
    ) from error


def _pretrained_baseline(workload: Workload, seed: int, cache: Path) -> nn.Module:
    """The baseline from ``workload.pretrained``: built (seeded), loaded strictly, not trained.

    The weights are read and checked before anything is written. The first call for
    these weights evaluates the model once on val and writes the cache's metadata JSON
    (val_score, ``pretrained``: the path or "<dict>", ``pretrained_sha256``, epochs 0,
    train_seconds 0) so trials read the score instead of evaluating again; no copy of the
    weights is cached (every call reads them from ``pretrained``).
    """
    state, digest = load_pretrained_state(workload)
    label = pretrained_label(workload.pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = workload.build_model()
    load_pretrained_into(workload, model, state)
    del state
    model.to(workload.device)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkloadError(f"cannot create baseline cache_dir {str(cache)!r}: {exc}") from exc
    _, meta, lock = _baseline_paths(workload, seed, cache)
    key = baseline_cache_key(workload)

    def recorded() -> bool:
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(info, dict) and info.get("cache_key") == key
                and info.get("pretrained_sha256") == digest and finite_real(info.get("val_score")) is not None)

    if recorded():
        return model
    with file_lock(lock):
        if recorded():  # another process evaluated these weights meanwhile
            return model
        start = time.perf_counter()
        score = check_score(workload, workload.evaluate(model, "val"), f"pretrained weights {label}")
        info = {
            "workload": workload.name,
            "seed": seed,
            "cache_key": key,
            "config": _jsonable_config(workload.config),
            "pretrained": label,
            "pretrained_sha256": digest,
            "epochs": 0,
            "val_score": score,
            "higher_is_better": workload.higher_is_better,
            "train_seconds": 0,
            "eval_seconds": round(time.perf_counter() - start, 3),
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(meta, lambda fh: fh.write(json.dumps(info, indent=2)), mode="w")
    logger.info("%s baseline: pretrained weights %s, val score %.4f (not trained)", workload.name, label, score)
    return model
