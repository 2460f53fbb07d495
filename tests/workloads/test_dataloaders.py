"""from_dataloaders / DataLoaderWorkload: a user's model and DataLoaders as a Workload.

Tiny data (48 samples of 1x4x4, 3 classes, batches of 8: 6 steps an epoch) and a
conv-BN model keep every test well under a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.pruning.pruners.training import run_trainer
from tune_prune.workloads import (
    DataLoaderWorkload,
    from_dataloaders,
    get_workload,
    load_or_train_baseline,
)
from tune_prune.workloads.base import apply_pretrained
from tune_prune.workloads.dataloaders import _callable_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
N, BATCH, SPE = 48, 8, 6


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _dataset(n: int = N, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return TensorDataset(x, y)


def _loader(n: int = N, shuffle: bool = True, **kw: Any) -> DataLoader:
    return DataLoader(_dataset(n), batch_size=BATCH, shuffle=shuffle, **kw)


def _workload(**kw: Any) -> DataLoaderWorkload:
    kw.setdefault("train", _loader())
    kw.setdefault("val", _loader(16, shuffle=False))
    kw.setdefault("device", "cpu")
    return from_dataloaders(TinyNet, **kw)


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet()


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finetuned(workload: DataLoaderWorkload, seed: int, epochs: float = 1.0, **kw: Any) -> dict[str, Tensor]:
    model = _model()
    workload.finetune(model, epochs, 0.05, seed, **kw)
    return _weights(model)


@contextlib.contextmanager
def record_lrs(model: nn.Module) -> Iterator[list[float]]:
    """The lr of every optimizer step taken over ``model``'s parameters."""
    params = {id(p) for p in model.parameters()}
    lrs: list[float] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(id(p) in params for g in optimizer.param_groups for p in g["params"]):
            lrs.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield lrs
    finally:
        handle.remove()


# ---------------------------------------------------------------- construction


def test_is_a_workload_with_the_given_splits() -> None:
    workload = _workload(test=_loader(16, shuffle=False), name="mine")
    assert isinstance(workload, DataLoaderWorkload)
    assert workload.splits == ("train", "val", "test") and workload.name == "mine"
    assert workload.device == torch.device("cpu") and workload.steps_per_epoch() == SPE
    assert workload.config.lr_schedule == "cosine" and workload.config.device == "cpu"
    assert workload.higher_is_better is True and workload.pretrained is None


def test_device_none_means_auto() -> None:
    workload = _workload(device=None)
    assert workload.config.device == "auto"
    assert workload.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"build_model": 3}, r"build_model must be .*callable.*got int 3"),
        ({"build_model": TinyNet()}, r"build_model .* got a TinyNet model instance.*pretrained=model.state_dict\(\)"),
        ({"train": 5}, r"train must be a torch DataLoader or a zero-argument callable.*got int 5"),
        ({"train": _dataset()}, r"train must be .*got TensorDataset.*wrap the dataset"),
        ({"val": None}, r"val is required"),
        ({"test": "test.csv"}, r"test must be .*got str 'test.csv'"),
        ({"metric": "accuracy"}, r"metric must be callable, got str 'accuracy'"),
        ({"loss": 1.0}, r"loss must be callable"),
        ({"optimizer": "adam"}, r"optimizer must be callable, got str 'adam'"),
        ({"higher_is_better": "no"}, r"higher_is_better must be True or False, got 'no'"),
        ({"higher_is_better": False}, r"higher_is_better=False needs a metric"),
        ({"device": "nope"}, r"device is not a torch device: 'nope'"),
        ({"device": 0}, r"device must be None, a string or a torch.device, got 0"),
        ({"lr_schedule": "rewind"}, r"lr_schedule must be 'cosine' or 'constant'.*'rewind'"),
        ({"finetune_lr": -1.0}, r"finetune_lr must be finite and > 0, got -1.0"),
        ({"baseline_epochs": float("nan")}, r"baseline_epochs must be finite"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\), got 1.5"),
        ({"dummy_input": [1, 2]}, r"dummy_input must be a Tensor, got list"),
        ({"name": " "}, r"name must be a non-empty string"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs: dict[str, Any], pattern: str) -> None:
    args = {"build_model": TinyNet, "train": _loader(), "val": _loader(16), "device": "cpu", **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        from_dataloaders(**args)


def test_unknown_split_name_in_class_constructor() -> None:
    with pytest.raises(ConfigError, match="split must be one of .* got 'holdout'"):
        DataLoaderWorkload(TinyNet, {"train": _loader(), "val": _loader(), "holdout": _loader()})


def test_build_model_must_return_a_module() -> None:
    workload = from_dataloaders(lambda: "not a model", _loader(), _loader(), device="cpu")
    with pytest.raises(ConfigError, match="returned a str, not an nn.Module"):
        workload.build_model()


# ---------------------------------------------------------------- loaders as callables


def test_callable_loaders_are_built_once_per_process_and_not_pickled() -> None:
    calls: list[str] = []

    def make_train() -> DataLoader:
        calls.append("train")
        return _loader()

    workload = _workload(train=make_train)
    assert calls == []  # lazy: nothing built at construction
    assert workload.steps_per_epoch() == SPE
    workload.finetune(_model(), 1.0, 0.05, 0)
    workload.dummy_input()
    assert calls == ["train"]
    # A pickled copy (what a Ray worker receives) rebuilds its loader instead of carrying it.
    state = workload._slots["train"].__getstate__()
    assert state["_built"] is None and state["source"] is make_train
    clone = pickle.loads(pickle.dumps(_workload(train=functools_partial_loader())))
    assert clone._slots["train"]._built is None and clone.steps_per_epoch() == SPE


def functools_partial_loader() -> Any:
    """A picklable loader callable (a lambda or closure would need cloudpickle)."""
    import functools

    return functools.partial(_loader, N)


def test_callable_loaders_train_exactly_like_plain_ones() -> None:
    plain = _finetuned(_workload(train=_loader()), seed=4)
    lazy = _finetuned(_workload(train=functools_partial_loader()), seed=4)
    assert _same(plain, lazy)


def test_callable_returning_something_else_names_the_split() -> None:
    workload = _workload(test=lambda: [(torch.zeros(1), torch.zeros(1))])
    with pytest.raises(ConfigError, match="test: the callable .* returned a list, not a torch.utils.data.DataLoader"):
        workload.evaluate(_model(), "test")


def test_callable_that_fails_names_the_split_and_chains() -> None:
    def broken() -> DataLoader:
        raise OSError("disk gone")

    workload = _workload(val=broken)
    with pytest.raises(WorkloadError, match="building the 'val' loader .* failed: OSError: disk gone") as info:
        workload.evaluate(_model())
    assert isinstance(info.value.__cause__, OSError)


def test_loader_with_worker_processes_is_reproducible() -> None:
    workload = _workload(train=lambda: _loader(num_workers=1))
    assert _same(_finetuned(workload, seed=2, epochs=0.5), _finetuned(workload, seed=2, epochs=0.5))


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    workload = _workload()
    first, again = _finetuned(workload, seed=7), _finetuned(workload, seed=7)
    assert _same(first, again)
    assert not _same(first, _finetuned(workload, seed=8))  # the seed does choose the order


def test_finetune_leaves_the_callers_rng_streams_alone() -> None:
    workload, model = _workload(), _model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    workload.finetune(model, 1.0, 0.05, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_loader_with_own_generator_is_reseeded_per_call_and_restored() -> None:
    gen = torch.Generator().manual_seed(99)
    workload = _workload(train=_loader(generator=gen))
    state = gen.get_state()
    first = _finetuned(workload, seed=5)
    assert torch.equal(gen.get_state(), state)  # restored for the caller
    gen.manual_seed(12345)  # whatever the caller did to it meanwhile does not matter
    assert _same(first, _finetuned(workload, seed=5))
    assert not _same(first, _finetuned(workload, seed=6))


def test_unshuffled_train_loader_also_works() -> None:
    workload = _workload(train=_loader(shuffle=False))
    assert _same(_finetuned(workload, seed=1), _finetuned(workload, seed=2))  # nothing to shuffle


# ---------------------------------------------------------------- finetune


@pytest.mark.parametrize(("epochs", "steps"), [(0.5, 3), (1.0, 6), (1.5, 9), (2.0, 12), (0.05, 0)])
def test_fractional_epochs_are_rounded_optimizer_steps(epochs: float, steps: int) -> None:
    workload = _workload()
    model = _model()
    before = _weights(model)
    with record_lrs(model) as lrs:
        stats = workload.finetune(model, epochs, 0.05, seed=0)
    assert stats["steps"] == len(lrs) == steps
    assert stats["epochs"] == pytest.approx(steps / SPE)
    assert _same(before, _weights(model)) == (steps == 0)
    if steps:
        assert math.isfinite(stats["final_loss"]) and stats["seconds"] >= 0


def test_finetune_restores_train_mode_and_uses_a_fresh_optimizer() -> None:
    workload = _workload()
    model = _model().eval()
    with record_lrs(model) as lrs:
        workload.finetune(model, 0.5, 0.05, seed=0, lr_schedule="constant")
        workload.finetune(model, 0.5, 0.05, seed=0, lr_schedule="constant")
    assert not model.training and lrs == [0.05] * 6


def test_cosine_and_constant_schedules() -> None:
    workload = _workload()
    with record_lrs(model := _model()) as cosine:
        workload.finetune(model, 1.0, 0.04, seed=0)  # the config's default: cosine
    assert cosine == pytest.approx([0.04 * (1 + math.cos(math.pi * i / SPE)) / 2 for i in range(SPE)])
    with record_lrs(model := _model()) as constant:
        workload.finetune(model, 1.0, 0.04, seed=0, lr_schedule="constant")
    assert constant == [0.04] * SPE
    constant_default = _workload(lr_schedule="constant")
    with record_lrs(model := _model()) as lrs:
        constant_default.finetune(model, 1.0, 0.04, seed=0)
    assert lrs == [0.04] * SPE


def test_rewind_replays_the_baselines_last_lrs() -> None:
    workload = _workload(baseline_epochs=2.0, baseline_lr=0.1)
    baseline = workload.baseline_lrs()
    assert len(baseline) == 2 * SPE and baseline[0] == 0.1
    with record_lrs(model := _model()) as lrs:
        workload.finetune(model, 0.5, 0.01, seed=0, lr_schedule="rewind")
    assert lrs == baseline[-3:] == workload.rewind_lrs(3)
    assert workload.rewind_lrs(2 * SPE + 2) == [0.1, 0.1, *baseline]


def test_rewind_with_pretrained_weights_is_a_config_error() -> None:
    workload = _workload(pretrained=_model().state_dict())
    with pytest.raises(ConfigError, match=r"lr_schedule='rewind' .* pretrained weights .* unknown"):
        workload.finetune(_model(), 0.5, 0.01, seed=0, lr_schedule="rewind")
    with pytest.raises(ConfigError, match=r"lr_schedule='rewind'"):
        workload.finetuner(0.5, lr_schedule="rewind")
    assert workload.finetuner(0.5, lr_schedule="cosine").lr_schedule == "cosine"


def test_bad_finetune_arguments() -> None:
    workload = _workload()
    with pytest.raises(ConfigError, match="epochs must be finite"):
        workload.finetune(_model(), -1.0, 0.05, 0)
    with pytest.raises(ConfigError, match="lr must be finite and > 0"):
        workload.finetune(_model(), 1.0, 0.0, 0)
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        workload.finetune(_model(), 1.0, 0.05, 0, lr_schedule="step")


def test_nan_loss_raises_workload_error_naming_the_epoch() -> None:
    workload = _workload(loss=lambda out, y: F.cross_entropy(out, y) * float("nan"))
    with pytest.raises(WorkloadError, match=r"training loss became nan in epoch 1 .*lr=0.05"):
        workload.finetune(_model(), 1.0, 0.05, seed=0)


def test_custom_optimizer_factory_is_called_with_params_and_lr() -> None:
    seen: list[float] = []

    def adam(params: Any, lr: float) -> torch.optim.Optimizer:
        seen.append(lr)
        return torch.optim.Adam(params, lr=lr)

    workload = _workload(optimizer=adam, finetune_lr=0.003)
    workload.finetune(_model(), 0.5, 0.02, seed=0, lr_schedule="constant")
    assert seen == [0.02]
    traced = workload.traced_optimizer(_model().parameters())
    assert isinstance(traced, torch.optim.Adam) and traced.param_groups[0]["lr"] == 0.003
    default = _workload().traced_optimizer(_model().parameters())
    group = default.param_groups[0]
    assert isinstance(default, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.9
    assert group["weight_decay"] == 5e-4 and group["lr"] == 0.01


def test_optimizer_factory_returning_something_else() -> None:
    workload = _workload(optimizer=lambda params, lr: "sgd")
    with pytest.raises(ConfigError, match="returned a str, not a torch.optim.Optimizer"):
        workload.finetune(_model(), 0.5, 0.05, seed=0)


def test_train_baseline_trains_baseline_epochs_at_baseline_lr() -> None:
    workload = _workload(baseline_epochs=2.0, baseline_lr=0.1, lr_schedule="constant")
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"]))
    try:
        model = workload.train_baseline(seed=0)
    finally:
        handle.remove()
    assert lrs == [0.1] * (2 * SPE)
    assert _same(_weights(model), _weights(workload.train_baseline(seed=0)))


# ---------------------------------------------------------------- trainer


def test_trainer_runs_one_epoch_with_the_callers_optimizer() -> None:
    workload = _workload()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with record_lrs(model) as lrs:
        workload.trainer(model, optimizer, nn.CrossEntropyLoss())
        workload.trainer(model, optimizer, nn.CrossEntropyLoss(), max_steps=2)
    assert len(lrs) == SPE + 2 and model.training


def test_trainer_call_sequence_repeats_on_a_fresh_workload() -> None:
    def two_calls() -> dict[str, Tensor]:
        workload, model = _workload(), _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        workload.trainer(model, optimizer, nn.CrossEntropyLoss())
        workload.trainer(model, optimizer, nn.CrossEntropyLoss())
        return _weights(model)

    assert _same(two_calls(), two_calls())


def test_trainer_lets_a_pruners_stop_signal_through() -> None:
    """Statistics pruners stop the trainer by raising from a forward hook: not a batch error."""
    workload, model = _workload(), _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    assert run_trainer(workload.trainer, model, optimizer, workload.criterion, max_batches=2) == 2


# ---------------------------------------------------------------- evaluate


def test_default_metric_is_top1_accuracy_over_the_split() -> None:
    workload = _workload(val=_loader(20, shuffle=False))  # batches of 8, 8, 4
    model = _model()
    x, y = _dataset(20).tensors
    model.eval()
    with torch.no_grad():
        expected = int((model(x).argmax(1) == y).sum()) / 20
    model.train()
    assert workload.evaluate(model) == pytest.approx(expected, abs=1e-12)
    assert model.training  # mode restored


def test_custom_metric_is_batch_size_weighted_and_lower_can_be_better() -> None:
    workload = _workload(
        val=_loader(20, shuffle=False),
        metric=lambda out, y: F.cross_entropy(out, y),  # a one-element tensor is accepted
        higher_is_better=False,
    )
    model = _model().eval()
    x, y = _dataset(20).tensors
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))  # over all 20 samples at once
    assert workload.higher_is_better is False
    assert workload.evaluate(model) == pytest.approx(expected, rel=1e-6)


def test_evaluate_named_splits_and_missing_ones() -> None:
    workload = _workload(test=_loader(16, shuffle=False))
    assert 0.0 <= workload.evaluate(_model(), "test") <= 1.0
    with pytest.raises(WorkloadError, match=r"no 'select' split was given \(it has \['train', 'val', 'test'\]\)"):
        workload.evaluate(_model(), "select")
    with pytest.raises(ConfigError, match="split must be one of"):
        workload.evaluate(_model(), "holdout")
    assert _workload(select=_loader(8)).evaluator("select")(_model()) >= 0.0


def test_evaluate_is_repeatable_with_a_shuffling_val_loader() -> None:
    workload = _workload(val=_loader(20, shuffle=True), metric=lambda out, y: float(out[0, 0]))
    assert workload.evaluate(_model()) == workload.evaluate(_model())


@pytest.mark.parametrize(
    ("metric", "pattern"),
    [
        (lambda out, y: float("nan"), r"metric .* returned nan \(type float\) on a 'val' batch"),
        (lambda out, y: float("inf"), r"returned inf"),
        (lambda out, y: "0.9", r"returned '0.9' \(type str\)"),
        (lambda out, y: out.argmax(1) == y, r"returned tensor\(.*\(type Tensor\)"),
        (lambda out, y: None, r"returned None \(type NoneType\)"),
    ],
)
def test_metric_must_return_a_finite_float(metric: Any, pattern: str) -> None:
    workload = _workload(metric=metric, higher_is_better=False)
    with pytest.raises(WorkloadError, match=pattern):
        workload.evaluate(_model())


def test_metric_that_raises_names_metric_and_split() -> None:
    workload = _workload(metric=lambda out, y: out[:, 99].mean())
    with pytest.raises(WorkloadError, match=r"metric .* failed on a 'val' batch \(outputs \(8, 3\)") as info:
        workload.evaluate(_model())
    assert isinstance(info.value.__cause__, IndexError)


# ---------------------------------------------------------------- bad batches, empty splits


class _Items(torch.utils.data.Dataset):
    def __init__(self, item: Any, n: int = 4) -> None:
        self.item, self.n = item, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        return self.item


@pytest.mark.parametrize(
    ("item", "pattern"),
    [
        ((torch.zeros(1, 4, 4), 0, 1), r"yielded a (list|tuple) of length 3 \(Tensor, Tensor, Tensor\) as batch 0"),
        ({"image": torch.zeros(1, 4, 4), "label": 0}, r"yielded a dict with keys \['image', 'label'\]"),
        (torch.zeros(1, 4, 4), r"yielded a Tensor of shape \(4, 1, 4, 4\)"),
        (("cat.png", 0), r"yielded inputs of type (list|tuple) and targets of type Tensor"),
    ],
)
def test_loader_must_yield_input_target_pairs(item: Any, pattern: str) -> None:
    workload = _workload(val=DataLoader(_Items(item), batch_size=4))
    with pytest.raises(WorkloadError, match=r"the 'val' loader " + pattern):
        workload.evaluate(_model())


def test_model_that_rejects_a_batch_names_split_and_shape() -> None:
    wide = DataLoader(TensorDataset(torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long)), batch_size=8)
    workload = _workload(train=wide, val=wide)
    with pytest.raises(WorkloadError, match=r"model rejected a 'val' batch of inputs with shape \(8, 3, 4, 4\)") as info:
        workload.evaluate(_model())
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(WorkloadError, match=r"model rejected a 'train' batch .*\(8, 3, 4, 4\)"):
        workload.finetune(_model(), 1.0, 0.05, seed=0)


def test_loss_that_rejects_outputs_names_the_shapes() -> None:
    bad_targets = DataLoader(TensorDataset(torch.zeros(8, 1, 4, 4), torch.zeros(8, 5)), batch_size=8)
    workload = _workload(train=bad_targets)
    with pytest.raises(WorkloadError, match=r"loss CrossEntropyLoss\(\) failed on outputs of shape \(8, 3\) and targets of shape \(8, 5\)"):
        workload.finetune(_model(), 1.0, 0.05, seed=0)
    workload = _workload(loss=lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(WorkloadError, match=r"returned a Tensor of shape \(8,\); it must return a one-element tensor"):
        workload.finetune(_model(), 1.0, 0.05, seed=0)


def test_empty_splits() -> None:
    empty = _loader(0, shuffle=False)
    with pytest.raises(WorkloadError, match="split 'train' is empty"):
        _workload(train=empty).finetune(_model(), 1.0, 0.05, seed=0)
    with pytest.raises(WorkloadError, match="split 'train' is empty"):
        _workload(train=empty).dummy_input()
    with pytest.raises(WorkloadError, match="split 'val' is empty"):
        _workload(val=empty).evaluate(_model())


class _Stream(IterableDataset):
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from zip(*_dataset(8).tensors, strict=True)


def test_train_loader_without_length() -> None:
    workload = _workload(train=DataLoader(_Stream(), batch_size=4))
    with pytest.raises(WorkloadError, match=r"train loader has no len\(\)"):
        workload.finetune(_model(), 1.0, 0.05, seed=0)
    assert workload.evaluate(_model()) >= 0.0  # evaluation does not need a length


# ---------------------------------------------------------------- dummy input, device


def test_dummy_input_is_two_train_inputs_on_the_device() -> None:
    workload = _workload()
    dummy = workload.dummy_input()
    assert dummy.shape == (2, 1, 4, 4) and dummy.device == workload.device
    x = _dataset().tensors[0]
    assert all(any(torch.equal(row, sample) for sample in x) for row in dummy)
    assert torch.equal(dummy, workload.dummy_input())  # the same every time
    given = torch.ones(1, 1, 4, 4)
    assert torch.equal(_workload(dummy_input=given).dummy_input(), given)


def test_cpu_device_moves_model_and_batches() -> None:
    workload = _workload(device=torch.device("cpu"))
    model = _model()
    workload.finetune(model, 0.5, 0.05, seed=0)
    assert all(p.device.type == "cpu" for p in model.parameters())


# ---------------------------------------------------------------- pretrained, cache key


def _save(tmp_path: Path, name: str, seed: int) -> Path:
    path = tmp_path / name
    torch.save(_model(seed).state_dict(), path)
    return path


def test_pretrained_path_is_stored_absolute_and_keys_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _save(tmp_path, "a.pt", 1), _save(tmp_path, "b.pt", 2)
    same_as_a = tmp_path / "copy.pt"
    same_as_a.write_bytes(a.read_bytes())
    monkeypatch.chdir(tmp_path)
    with_a = _workload(pretrained="a.pt")
    assert with_a.pretrained == str(a) and os.path.isabs(with_a.pretrained)
    keys = {
        "a": with_a.cache_key(),
        "b": _workload(pretrained=b).cache_key(),
        "none": _workload().cache_key(),
    }
    assert len(set(keys.values())) == 3
    assert _workload(pretrained=same_as_a).cache_key() == keys["a"]  # the weights, not the file name
    assert _workload().cache_key() == keys["none"]  # stable
    assert _workload(finetune_lr=0.02).cache_key() != keys["none"]
    assert _workload(device="cpu").cache_key() == _workload(device="auto").cache_key()
    # Weights swapped later (the search's --pretrained) change the key too.
    assert apply_pretrained(with_a, b).cache_key() == keys["b"]


def test_cache_key_names_user_functions_without_memory_addresses() -> None:
    """The key must be equal in the driver and in every Ray worker."""
    import functools

    adam = functools.partial(torch.optim.Adam, betas=(0.8, 0.99))
    workload = _workload(optimizer=adam, loss=functools.partial(F.cross_entropy, label_smoothing=0.1))
    name = _callable_name(workload._optimizer)
    assert name == "partial(torch.optim.adam.Adam, betas=(0.8, 0.99))" and "0x" not in name
    assert workload.cache_key() != _workload(optimizer=functools.partial(torch.optim.Adam)).cache_key()


def test_pretrained_dict_is_stored_and_keys_the_cache() -> None:
    state = _model(3).state_dict()
    workload = _workload(pretrained=state)
    assert workload.pretrained is state
    other = _workload(pretrained=_model(4).state_dict())
    assert workload.cache_key() != other.cache_key() != _workload().cache_key()


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"nope\.pt.*do not exist"):
        _workload(pretrained=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="pretrained is a TinyNet model"):
        _workload(pretrained=_model())
    with pytest.raises(ConfigError, match="pretrained must be a state dict file's path or a state dict"):
        _workload(pretrained=42)


def test_baseline_is_loaded_from_pretrained_weights_not_trained(tmp_path: Path) -> None:
    path = _save(tmp_path, "weights.pt", 5)
    workload = _workload(pretrained=path)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a pretrained baseline must not be trained")

    workload.finetune = no_training  # type: ignore[method-assign]
    model = load_or_train_baseline(workload, 0, tmp_path / "cache")
    assert _same(_weights(model), torch.load(path, map_location="cpu", weights_only=True))


# ---------------------------------------------------------------- the examples


def _example_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_own_model_example_factory_builds_a_working_workload(tmp_path: Path) -> None:
    weights = tmp_path / "sub" / "own_model.pt"
    workload = get_workload(f"{EXAMPLES / 'own_model.py'}:workload", weights=str(weights), device="cpu")
    assert isinstance(workload, DataLoaderWorkload)
    assert Path(str(workload.pretrained)).resolve() == weights.resolve()
    assert weights.is_file()  # pretrained on first use
    mtime = weights.stat().st_mtime_ns
    assert workload.splits == ("train", "val", "test", "select")
    model = load_or_train_baseline(workload, 0, tmp_path / "cache")
    assert workload.evaluate(model, "val") > 0.8 and workload.evaluate(model, "select") > 0.8
    assert workload.dummy_input().shape == (2, 1, 8, 8)
    workload.finetune(model, 0.25, 0.01, seed=0)
    again = get_workload(f"{EXAMPLES / 'own_model.py'}:workload", weights=str(weights), device="cpu")
    assert weights.stat().st_mtime_ns == mtime and again.cache_key() == workload.cache_key()


def test_cifar_example_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cifar = _example_module("cifar10_resnet")
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    with pytest.raises(WorkloadError, match="no data folder given.*CIFAR10_DIR"):
        cifar.workload()
    with pytest.raises(WorkloadError, match=r"cifar-10-batches-py lacks \['data_batch_1'.*never downloads"):
        cifar.workload(data_dir=tmp_path)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in cifar.EXPECTED_FILES:
        (batches / name).touch()
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, installed or not
    with pytest.raises(WorkloadError, match="pip install torchvision"):
        cifar.workload(data_dir=batches)
    net = cifar.ResNet20()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert 0.26e6 < sum(p.numel() for p in net.parameters()) < 0.28e6


def test_distillation_from_a_teacher_for_a_users_own_model() -> None:
    """distill 0 is the plain fine-tune bit for bit; weight 1 trains on the teacher alone (the
    user's loss contributes nothing), and a model whose output is not class scores is refused."""
    from tune_prune.workloads.distill import Distillation

    workload = _workload()
    teacher = _model(seed=5)
    assert _same(_finetuned(workload, 3), _finetuned(workload, 3, distill=Distillation(teacher, 0.0)))
    only_teacher = _finetuned(workload, 3, distill=Distillation(teacher, 1.0))
    scaled = _workload(loss=lambda out, y: 3.0 * F.cross_entropy(out, y))  # another loss, same teacher
    assert _same(only_teacher, _finetuned(scaled, 3, distill=Distillation(teacher, 1.0)))
    assert not _same(only_teacher, _finetuned(workload, 3, distill=Distillation(teacher, 0.5)))
    assert workload.finetuner(1.0, 0.05, distill=Distillation(teacher, 0.5)).distill is not None

    class Regressor(TinyNet):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x).sum(dim=1)

    regression = from_dataloaders(Regressor, train=_loader(), val=_loader(16, shuffle=False), device="cpu",
                                  loss=lambda out, y: ((out - y.float()) ** 2).mean())
    with pytest.raises(WorkloadError, match="distillation needs \\(batch, classes\\) float logits"):
        regression.finetune(Regressor(), 0.5, 0.05, 0, distill=Distillation(Regressor(), 0.5))
