"""Search on your own model: a Workload built from a model factory and torch DataLoaders.

Users arrive with an architecture, DataLoaders and often trained weights, not with a
:class:`~tune_prune.workloads.base.ClassificationWorkload` subclass.
:func:`from_dataloaders` wraps those as a :class:`DataLoaderWorkload`, so a factory file
named with ``--workload path/to/file.py:factory`` is all a search needs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tune_prune.errors import ConfigError, TunePruneError, WorkloadError
from tune_prune.workloads.base import (
    SPLITS,
    ClassificationWorkload,
    Finetuner,
    OptimConfig,
    Workload,
    _check_epochs,
    _check_lr,
    _check_lr_schedule,
    _check_split,
    apply_pretrained,
    check_score,
    config_hash,
    finite_real,
    fit_steps,
    pretrained_digest,
    resolve_device,
)
from tune_prune.workloads.distill import Distillation

logger = logging.getLogger(__name__)

LoaderSource = DataLoader | Callable[[], DataLoader]
#: ``metric(outputs, targets)`` for one batch: a number, or a one-element tensor.
Metric = Callable[[Any, Tensor], Any]
#: ``optimizer(params, lr)``: a fresh optimizer over ``params`` at learning rate ``lr``.
OptimizerBuilder = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

#: What a model or loss raises when a batch does not fit it (shape, dtype, arity).
#: Anything else (a pruner's stop signal raised from a hook, KeyboardInterrupt) passes
#: through untouched, and so does running out of memory.
_BATCH_REJECTED = (RuntimeError, TypeError, ValueError, IndexError)


# --------------------------------------------------------------------------- defaults


def top1_accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows of ``outputs`` whose arg-max is the target class (the default metric)."""
    correct = int((outputs.argmax(dim=1) == targets).sum())
    return correct / max(int(targets.shape[0]), 1)


def sgd_nesterov(
    params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.Optimizer:
    """The default optimizer: SGD with Nesterov momentum and weight decay."""
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )


@dataclass(frozen=True)
class DataLoaderConfig(OptimConfig):
    """Optimisation settings of a :class:`DataLoaderWorkload`: :class:`OptimConfig` as it
    is (batch sizes belong to the user's loaders; ``momentum`` and ``weight_decay``
    configure the default optimizer only)."""


@dataclass
class BoundOptimizer:
    """``f(params) -> optimizer`` over a user's ``optimizer(params, lr)``: what pruners rebuild."""

    build: OptimizerBuilder
    lr: float

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return self.build(params, self.lr)


# --------------------------------------------------------------------------- loaders


class _LoaderSlot:
    """One split's loader: the user's DataLoader, or one their callable builds on first
    use in each process (a loader with worker processes cannot cross into a Ray worker)."""

    def __init__(self, split: str, source: LoaderSource) -> None:
        self.split = split
        self.source = source
        self._built: DataLoader | None = None
        self._built_in_pid: int | None = None

    def get(self) -> DataLoader:
        if isinstance(self.source, DataLoader):
            return self.source
        if self._built is None or self._built_in_pid != os.getpid():
            try:
                loader = self.source()
            except TunePruneError:
                raise
            except Exception as exc:
                raise WorkloadError(
                    f"building the {self.split!r} loader with {_callable_name(self.source)} "
                    f"failed: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(loader, DataLoader):
                raise ConfigError(
                    f"{self.split}: the callable {_callable_name(self.source)} returned a "
                    f"{type(loader).__name__}, not a torch.utils.data.DataLoader"
                )
            self._built, self._built_in_pid = loader, os.getpid()
        return self._built

    def __getstate__(self) -> dict[str, Any]:
        # A loader built from a callable is rebuilt where it is used, never shipped.
        return {**self.__dict__, "_built": None, "_built_in_pid": None}


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The loader's own generators (loader, sampler, batch sampler's sampler), deduplicated."""
    candidates = [
        loader.generator,
        getattr(loader.sampler, "generator", None),
        getattr(getattr(loader.batch_sampler, "sampler", None), "generator", None),
    ]
    found: dict[int, torch.Generator] = {}
    for gen in candidates:
        if isinstance(gen, torch.Generator):
            found.setdefault(id(gen), gen)
    return list(found.values())


# --------------------------------------------------------------------------- descriptions


def _callable_name(obj: Any) -> str:
    """A human-readable name for a user function, class, partial or module, the same in
    every process (it goes into ``cache_key``, so no memory addresses)."""
    if isinstance(obj, functools.partial):
        args = [_callable_name(a) if callable(a) else repr(a) for a in obj.args]
        args += [f"{k}={_callable_name(v) if callable(v) else repr(v)}" for k, v in sorted(obj.keywords.items())]
        return f"partial({_callable_name(obj.func)}{''.join(', ' + a for a in args)})"
    if isinstance(obj, nn.Module):
        return repr(obj)
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


def _describe(value: Any) -> str:
    """What a loader yielded, for an error message: type, length, shapes."""
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, tuple | list):
        kinds = ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of length {len(value)} ({kinds})"
    return f"a {type(value).__name__}"


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_shape(v) for v in value) + ")"
    return type(value).__name__


# --------------------------------------------------------------------------- workload


def _check_source(arg: str, value: Any) -> None:
    if isinstance(value, DataLoader) or (callable(value) and not isinstance(value, Dataset)):
        return
    hint = ""
    if isinstance(value, Dataset):
        hint = "; wrap the dataset: DataLoader(dataset, batch_size=..., shuffle=...)"
    raise ConfigError(
        f"{arg} must be a torch DataLoader or a zero-argument callable returning one, "
        f"got {type(value).__name__} {value!r:.80}{hint}"
    )




class DataLoaderWorkload(Workload):
    """A Workload over a user's model factory and DataLoaders (see :func:`from_dataloaders`).

    Training draws the data order from the DataLoaders' samplers, seeded per call, and
    counts steps in batches: one epoch is ``len(train_loader)`` optimizer steps.
    """

    model_version = "1"
    config: DataLoaderConfig

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        loaders: Mapping[str, LoaderSource],
        config: DataLoaderConfig | None = None,
        *,
        pretrained: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
        loss: Callable[[Any, Tensor], Tensor] | None = None,
        metric: Metric | None = None,
        higher_is_better: bool = True,
        dummy_input: Tensor | None = None,
        optimizer: OptimizerBuilder | None = None,
        name: str = "custom",
    ) -> None:
        if isinstance(build_model, nn.Module):
            raise ConfigError(
                f"build_model must be a zero-argument callable returning a new nn.Module, got "
                f"a {type(build_model).__name__} model instance; pass the class (or a lambda "
                "that builds a new one) and the trained weights as pretrained=model.state_dict()"
            )
        if not callable(build_model):
            raise ConfigError(
                f"build_model must be a zero-argument callable returning a new nn.Module, "
                f"got {type(build_model).__name__} {build_model!r:.80}"
            )
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"name must be a non-empty string, got {name!r}")
        for split, source in loaders.items():
            _check_split(split)
            _check_source(split, source)
        for required in ("train", "val"):
            if required not in loaders:
                raise ConfigError(f"a {required!r} loader is required, got splits {sorted(loaders)}")
        for arg, value in (("loss", loss), ("metric", metric), ("optimizer", optimizer)):
            if value is not None and not callable(value):
                raise ConfigError(f"{arg} must be callable, got {type(value).__name__} {value!r:.80}")
        if not isinstance(higher_is_better, bool):
            raise ConfigError(f"higher_is_better must be True or False, got {higher_is_better!r}")
        if metric is None and not higher_is_better:
            raise ConfigError(
                "higher_is_better=False needs a metric where lower is better (e.g. a loss); "
                "the default metric is top-1 accuracy"
            )
        if dummy_input is not None and not isinstance(dummy_input, Tensor):
            raise ConfigError(f"dummy_input must be a Tensor, got {type(dummy_input).__name__}")

        self.name = name.strip()  # type: ignore[misc]  # per instance, not per class
        self.higher_is_better = higher_is_better  # type: ignore[misc]
        if config is not None and not isinstance(config, DataLoaderConfig):
            raise ConfigError(f"config must be a DataLoaderConfig, got {type(config).__name__}")
        self.config = config or DataLoaderConfig()
        self.device = resolve_device(self.config.device)
        self._build_model = build_model
        self._slots = {split: _LoaderSlot(split, loaders[split]) for split in SPLITS if split in loaders}
        self._loss = nn.CrossEntropyLoss() if loss is None else loss
        self._metric = top1_accuracy if metric is None else metric
        self._optimizer = optimizer
        self._dummy = None if dummy_input is None else dummy_input.detach().to("cpu")
        self._trainer_calls = 0
        # Path made absolute (Ray workers may run elsewhere), or the dict; a missing file
        # fails here. load_or_train_baseline loads these weights instead of training.
        apply_pretrained(self, pretrained)

    # ---- the contract

    @property
    def baseline_epochs(self) -> float:
        return float(self.config.baseline_epochs)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that were given, in SPLITS order."""
        return tuple(self._slots)

    @property
    def criterion(self) -> Callable[[Any, Tensor], Tensor]:
        return self._loss

    @property
    def traced_optimizer(self) -> BoundOptimizer:
        return BoundOptimizer(self._make_optimizer, float(self.config.finetune_lr))

    def build_model(self) -> nn.Module:
        model = self._build_model()
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"build_model ({_callable_name(self._build_model)}) returned a "
                f"{type(model).__name__}, not an nn.Module"
            )
        return model

    def loader(self, split: str) -> DataLoader:
        """The DataLoader of ``split``; WorkloadError naming the given splits when absent."""
        _check_split(split)
        slot = self._slots.get(split)
        if slot is None:
            raise WorkloadError(
                f"{self.name}: no {split!r} split was given (it has {list(self._slots)}); "
                f"pass {split}= to from_dataloaders"
            )
        return slot.get()

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: the train loader's number of batches."""
        try:
            steps = len(self.loader("train"))
        except TypeError as exc:
            raise WorkloadError(
                f"{self.name}: the train loader has no len() (an IterableDataset without "
                "__len__?); epochs are counted in its batches, so it needs one"
            ) from exc
        if steps == 0:
            raise WorkloadError(f"{self.name}: split 'train' is empty (its loader has 0 batches)")
        return steps

    def cache_key(self) -> str:
        """The config plus the user's functions' names and the pretrained weights' sha256.

        Two different pretrained weights never share a cached baseline (the same weights
        in two files do). The data itself is not hashed: give a different ``name`` when
        the loaders change.
        """
        extra = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}:{self.model_version}",
            "name": self.name,
            "build_model": _callable_name(self._build_model),
            "loss": _callable_name(self._loss),
            "metric": _callable_name(self._metric),
            "optimizer": "default" if self._optimizer is None else _callable_name(self._optimizer),
            "higher_is_better": self.higher_is_better,
            "pretrained": None if self.pretrained is None else pretrained_digest(self),
        }
        return config_hash(self.config, json.dumps(extra, sort_keys=True))

    def dummy_input(self) -> Tensor:
        """The given ``dummy_input``, else the first 2 inputs of the train loader's first
        batch (order seeded with 0, so it is the same batch every time)."""
        if self._dummy is None:
            loader = self.loader("train")
            with self._seeded(loader, 0), contextlib.closing(self._batches("train", loader)) as it:
                first = next(it, None)
            if first is None:
                raise WorkloadError(f"{self.name}: split 'train' is empty; no batch for dummy_input")
            self._dummy = first[0][:2].detach().to("cpu")
        return self._dummy.to(self.device)

    def finetuner(
        self,
        epochs: float,
        lr: float | None = None,
        seed: int = 0,
        lr_schedule: str | None = None,
        distill: Distillation | None = None,
    ) -> Finetuner:
        """As :meth:`Workload.finetuner`; refuses 'rewind' up front when it cannot work."""
        if lr_schedule == "rewind":
            self._refuse_rewind_without_baseline_schedule()
        return super().finetuner(epochs, lr, seed, lr_schedule, distill)

    def finetune(
        self,
        model: nn.Module,
        epochs: float,
        lr: float,
        seed: int = 0,
        lr_schedule: str | None = None,
        distill: Distillation | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` in place with a fresh optimizer, as ClassificationWorkload does.

        K = round(epochs * steps_per_epoch()) optimizer steps (fractional epochs stop
        mid-epoch); ``lr_schedule`` "cosine" anneals ``lr`` to 0 over the K steps,
        "constant" keeps it, "rewind" replays the baseline's last K lrs (see
        :meth:`rewind_lrs`; ConfigError with ``pretrained`` weights). WorkloadError when
        the loss turns NaN/inf. ``distill`` (None: the loss alone) mixes in the dense
        teacher's softened outputs (:mod:`tune_prune.workloads.distill`; the model must
        output (batch, classes) logits, else WorkloadError).

        Reproducible: the call runs with torch's (and Python's and NumPy's) global RNGs
        seeded from ``seed``, so a shuffling sampler without its own generator, the
        loader's worker seeds and augmentations draw a seeded stream; a generator the
        loader or its sampler owns is reseeded with ``seed`` for the call. All are
        restored afterwards, so the caller's streams are undisturbed.
        """
        _check_epochs("epochs", epochs)
        _check_lr("lr", lr)
        _check_lr_schedule(lr_schedule)
        schedule_name = self.config.lr_schedule if lr_schedule is None else lr_schedule
        steps_per_epoch = self.steps_per_epoch()
        total = int(round(epochs * steps_per_epoch))
        if total == 0:
            return {"epochs": 0.0, "steps": 0, "final_loss": float("nan"), "seconds": 0.0}
        rewind = self.rewind_lrs(total) if schedule_name == "rewind" else None
        if rewind is not None:
            lr = rewind[0]
        model.to(self.device)
        was_training = model.training
        model.train()
        optimizer = self._make_optimizer(model.parameters(), lr)
        loader = self.loader("train")
        if distill is None:
            loss_of = lambda m, x, y: self._training_loss(m, x, y, self._loss)  # noqa: E731
        else:
            loss_of = distill.loss_of(lambda out, y: self._checked_loss(out, y, self._loss), self.device,
                                      forward=lambda m, x: self._forward(m, x, "train"))
        with self._seeded(loader, seed):
            stats = fit_steps(self.name, model, optimizer, lambda: self._batches("train", loader), total,
                              steps_per_epoch, loss_of, schedule_name, rewind)
        model.train(was_training)
        return stats

    def baseline_lrs(self) -> list[float]:
        """The lr of each step of ``train_baseline``; ConfigError with ``pretrained`` weights,
        whose training schedule this workload cannot know."""
        self._refuse_rewind_without_baseline_schedule()
        return ClassificationWorkload.baseline_lrs(self)  # type: ignore[arg-type]

    def _refuse_rewind_without_baseline_schedule(self) -> None:
        if self.pretrained is not None:
            raise ConfigError(
                f"lr_schedule='rewind' replays the dense baseline's learning rates, but "
                f"workload {self.name!r} starts from pretrained weights whose training "
                "schedule is unknown; use lr_schedule='cosine' or 'constant'"
            )

    # Same rule as ClassificationWorkload: the baseline's last K lrs (held lr first if K > E).
    rewind_lrs = ClassificationWorkload.rewind_lrs

    def trainer(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[Any, Tensor], Tensor],
        max_steps: int | None = None,
    ) -> None:
        """One epoch (or ``max_steps``) over train with the caller's optimizer (NNI form).

        Each call seeds the data order from a per-workload counter: repeated calls see
        different batches, yet a fresh workload repeats the same sequence.
        """
        self._trainer_calls += 1
        loader = self.loader("train")
        model.train()
        with self._seeded(loader, 10_000 + self._trainer_calls):
            for step, (x, y) in enumerate(self._batches("train", loader)):
                if max_steps is not None and step >= max_steps:
                    break
                optimizer.zero_grad()
                self._training_loss(model, x, y, criterion).backward()
                optimizer.step()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """``metric`` over ``split``: the mean of its per-batch values weighted by batch size.

        Exact for any metric that is a mean over samples (accuracy, a mean loss, MSE);
        a metric that is not (F1, AUC) needs a subclass overriding this. Restores the
        model's train/eval mode; the split's order is seeded, so scores repeat.
        """
        loader = self.loader(split)
        model.to(self.device)
        was_training = model.training
        model.eval()
        weighted_sum, samples = 0.0, 0
        try:
            with self._seeded(loader, 0):
                for x, y in self._batches(split, loader):
                    value = self._metric_value(self._forward(model, x, split), y, split)
                    batch = int(y.shape[0]) if y.dim() else 1
                    weighted_sum += value * batch
                    samples += batch
        finally:
            model.train(was_training)
        if samples == 0:
            raise WorkloadError(f"{self.name}: split {split!r} is empty (its loader yielded no sample)")
        return check_score(self, weighted_sum / samples, f"{split!r} split")

    # ---- internals

    @contextlib.contextmanager
    def _seeded(self, loader: DataLoader, seed: int) -> Iterator[None]:
        """Global RNGs and the loader's own generators seeded for one call, then restored."""
        devices: list[int] = []
        if self.device.type == "cuda":
            devices = [torch.cuda.current_device() if self.device.index is None else self.device.index]
        own = _loader_generators(loader)
        saved = [gen.get_state() for gen in own]
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            for gen in own:
                gen.manual_seed(seed)
            try:
                yield
            finally:
                for gen, state in zip(own, saved):
                    gen.set_state(state)
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def _batches(self, split: str, loader: DataLoader) -> Iterator[tuple[Any, Tensor]]:
        """The loader's ``(inputs, targets)`` pairs on the device; WorkloadError for anything else."""
        for index, item in enumerate(loader):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise WorkloadError(
                    f"{self.name}: the {split!r} loader yielded {_describe(item)} as batch "
                    f"{index}; it must yield (inputs, targets) pairs"
                )
            x, y = item
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise WorkloadError(
                    f"{self.name}: the {split!r} loader yielded inputs of type "
                    f"{type(x).__name__} and targets of type {type(y).__name__} as batch "
                    f"{index}; both must be tensors"
                )
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _forward(self, model: nn.Module, x: Tensor, split: str) -> Any:
        try:
            return model(x)
        except torch.OutOfMemoryError:
            raise
        except _BATCH_REJECTED as exc:
            raise WorkloadError(
                f"{self.name}: the model rejected a {split!r} batch of inputs with shape "
                f"{tuple(x.shape)} (dtype {x.dtype}, device {x.device}): {type(exc).__name__}: {exc}"
            ) from exc

    def _training_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, criterion: Callable[[Any, Tensor], Tensor]
    ) -> Tensor:
        return self._checked_loss(self._forward(model, x, "train"), y, criterion)

    def _checked_loss(self, outputs: Any, y: Tensor, criterion: Callable[[Any, Tensor], Tensor]) -> Tensor:
        """``criterion(outputs, y)``, or WorkloadError when it fails or is not a one-element tensor."""
        try:
            loss = criterion(outputs, y)
        except torch.OutOfMemoryError:
            raise
        except _BATCH_REJECTED as exc:
            raise WorkloadError(
                f"{self.name}: the loss {_callable_name(criterion)} failed on outputs of shape "
                f"{_shape(outputs)} and targets of shape {_shape(y)}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise WorkloadError(
                f"{self.name}: the loss {_callable_name(criterion)} returned "
                f"{_describe(loss)}; it must return a one-element tensor to backpropagate"
            )
        return loss

    def _metric_value(self, outputs: Any, targets: Tensor, split: str) -> float:
        name = _callable_name(self._metric)
        try:
            value = self._metric(outputs, targets)
        except torch.OutOfMemoryError:
            raise
        except _BATCH_REJECTED as exc:
            raise WorkloadError(
                f"{self.name}: the metric {name} failed on a {split!r} batch (outputs "
                f"{_shape(outputs)}, targets {_shape(targets)}): {type(exc).__name__}: {exc}"
            ) from exc
        number = value
        if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
            number = value.item()
        score = finite_real(number)
        if score is None:
            raise WorkloadError(
                f"{self.name}: the metric {name} returned {value!r:.80} (type "
                f"{type(value).__name__}) on a {split!r} batch; it must return a finite "
                "float (or a one-element tensor)"
            )
        return score

    def _make_optimizer(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if self._optimizer is None:
            return sgd_nesterov(params, lr, self.config.momentum, self.config.weight_decay)
        optimizer = self._optimizer(params, lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer ({_callable_name(self._optimizer)}) returned a "
                f"{type(optimizer).__name__}, not a torch.optim.Optimizer; it is called as "
                "optimizer(params, lr)"
            )
        return optimizer


def from_dataloaders(
    build_model: Callable[[], nn.Module],
    train: LoaderSource,
    val: LoaderSource,
    test: LoaderSource | None = None,
    *,
    select: LoaderSource | None = None,
    pretrained: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
    loss: Callable[[Any, Tensor], Tensor] | None = None,
    metric: Metric | None = None,
    higher_is_better: bool = True,
    dummy_input: Tensor | None = None,
    optimizer: OptimizerBuilder | None = None,
    device: str | torch.device | None = None,
    baseline_epochs: float = 10.0,
    baseline_lr: float = 0.05,
    finetune_lr: float = 0.01,
    lr_schedule: str = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    name: str = "custom",
) -> DataLoaderWorkload:
    """A Workload over your model and DataLoaders, for ``--workload file.py:factory``.

    * ``build_model``: zero-argument callable returning a new model (e.g. the class).
    * ``train``, ``val``, ``test``, ``select``: a DataLoader, or a zero-argument callable
      returning one, built on first use once per process. Pass a callable when the
      loader has ``num_workers > 0`` or holds state that cannot be pickled (open files,
      database handles): such a loader cannot be shipped to a Ray worker and must be
      built there. A plain loader is fine otherwise (and always when the factory itself
      builds it, since each worker calls the factory). ``select`` is the optional
      held-out split a screened search picks its finalists on. Each fine-tune call
      seeds the data order and the loader's worker seeds from its ``seed``; leave
      ``persistent_workers`` off, or workers keep the augmentation stream they
      started with.
    * ``pretrained``: your trained weights (a ``torch.save(model.state_dict(), path)``
      file or the dict); kept as ``workload.pretrained`` (a path made absolute) and
      hashed into ``cache_key()``; ``load_or_train_baseline`` loads them instead of
      training. Without it the baseline is trained for ``baseline_epochs`` at
      ``baseline_lr``; ``lr_schedule='rewind'`` needs that known baseline schedule.
    * ``loss(outputs, targets) -> tensor``: default cross-entropy.
    * ``metric(outputs, targets) -> float`` (or one-element tensor) per batch; a split's
      score is the batch-size-weighted mean (see :meth:`DataLoaderWorkload.evaluate`).
      Default top-1 accuracy; set ``higher_is_better=False`` for a loss-like metric.
    * ``optimizer(params, lr) -> Optimizer``: default SGD, Nesterov momentum
      ``momentum``, ``weight_decay``.
    * ``dummy_input``: tracing input; default the first 2 inputs of a train batch.
    * ``device``: None = "auto" (CUDA when available).
    * ``lr_schedule``: "cosine" or "constant", the baseline's and fine-tunes' default.
    """
    loaders: dict[str, LoaderSource] = {}
    for arg, value in (("train", train), ("val", val), ("test", test), ("select", select)):
        if value is None and arg in ("train", "val"):
            raise ConfigError(f"{arg} is required: a DataLoader or a callable returning one")
        if value is not None:
            loaders[arg] = value
    if device is None:
        device_name = "auto"
    elif isinstance(device, torch.device | str):
        device_name = str(device)
    else:
        raise ConfigError(f"device must be None, a string or a torch.device, got {device!r}")
    config = DataLoaderConfig(
        baseline_epochs=baseline_epochs,
        baseline_lr=baseline_lr,
        finetune_lr=finetune_lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        device=device_name,
    )
    return DataLoaderWorkload(
        build_model,
        loaders,
        config,
        pretrained=pretrained,
        loss=loss,
        metric=metric,
        higher_is_better=higher_is_better,
        dummy_input=dummy_input,
        optimizer=optimizer,
        name=name,
    )
