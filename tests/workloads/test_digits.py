"""Digits workload: fixed split, determinism, accuracy, fine-tune contract, pruneability."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads import Workload
from tune_prune.workloads.digits import DigitsWorkload


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_split_sizes_cover_the_data_once(digits: DigitsWorkload) -> None:
    sizes = {s: digits.split_size(s) for s in ("train", "val", "test")}
    assert sizes == {"train": 1078, "val": 359, "test": 360}
    assert sum(sizes.values()) == 1797
    for split in ("train", "val", "test"):
        x, y = digits.split_tensors(split)
        assert x.shape == (sizes[split], 1, 8, 8)
        assert set(y.tolist()) == set(range(10))  # stratified: every class in every split
    train_x = digits.split_tensors("train")[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3


def test_split_is_fixed_by_split_seed(digits: DigitsWorkload) -> None:
    again = DigitsWorkload()
    for split in ("train", "val", "test"):
        assert torch.equal(digits.split_tensors(split)[0], again.split_tensors(split)[0])
        assert torch.equal(digits.split_tensors(split)[1], again.split_tensors(split)[1])
    other = DigitsWorkload(split_seed=1)
    assert not torch.equal(digits.split_tensors("val")[1], other.split_tensors("val")[1])


def test_same_seed_same_baseline_weights() -> None:
    workload = DigitsWorkload(baseline_epochs=1.0)
    a, b = workload.train_baseline(3), workload.train_baseline(3)
    c = workload.train_baseline(4)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_train_baseline_leaves_global_rng_alone(digits: DigitsWorkload) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DigitsWorkload(baseline_epochs=0.1).train_baseline(0)
    assert torch.equal(torch.rand(3), expected)


def test_baseline_reaches_90_percent(digits: DigitsWorkload, digits_baseline: nn.Module) -> None:
    assert digits.evaluate(digits_baseline, "val") >= 0.9
    assert digits.evaluate(digits_baseline, "test") >= 0.9


def test_contract_members(digits: DigitsWorkload) -> None:
    assert isinstance(digits, Workload)
    assert digits.name == "digits" and digits.higher_is_better is True
    assert digits.baseline_epochs == 10.0
    x = digits.dummy_input()
    assert x.shape == (2, 1, 8, 8)
    assert digits.build_model()(x).shape == (2, 10)
    assert isinstance(digits.criterion, nn.CrossEntropyLoss)


def test_finetune_fractional_epochs_and_stats(digits: DigitsWorkload) -> None:
    model = digits.build_model()
    stats = digits.finetune(model, 0.5, 0.05, seed=0)
    spe = digits.steps_per_epoch()
    assert stats["steps"] == round(0.5 * spe)
    assert math.isclose(stats["epochs"], stats["steps"] / spe)
    assert math.isfinite(stats["final_loss"])
    assert digits.finetune(model, 0, 0.05, seed=0)["steps"] == 0


def test_finetune_builds_its_own_optimizer_after_channel_removal(
    digits: DigitsWorkload, digits_baseline: nn.Module
) -> None:
    """After physically shrinking a layer, finetune must still work (no stale optimizer)."""
    tp = pytest.importorskip("torch_pruning")
    model = copy.deepcopy(digits_baseline)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model,
        digits.dummy_input(),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()  # dependency-aware: residual-tied channels go together
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    assert model.stem[0].out_channels == model.layer1.conv2.out_channels == 8
    digits.finetune(model, 2, 0.05, seed=0)
    assert digits.evaluate(model) > 0.8


def test_finetune_raises_on_nan_naming_epoch(digits: DigitsWorkload) -> None:
    class NaNModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.flatten(1)) * float("nan")

    with pytest.raises(WorkloadError, match="epoch 1"):
        digits.finetune(NaNModel(), 1, 0.01, seed=0)


def test_finetune_raises_on_divergence(digits: DigitsWorkload) -> None:
    with pytest.raises(WorkloadError, match=r"epoch \d+"):
        digits.finetune(digits.build_model(), 2, 1e12, seed=0)


def test_evaluate_restores_mode_and_is_in_range(
    digits: DigitsWorkload, digits_baseline: nn.Module
) -> None:
    model = copy.deepcopy(digits_baseline).train()
    score = digits.evaluate(model, "test")
    assert 0.0 <= score <= 1.0 and model.training


def test_finetuner_and_evaluator_callables(digits: DigitsWorkload) -> None:
    model = digits.build_model()
    finetune = digits.finetuner(epochs=0.25, lr=0.05, seed=1)
    before = _weights(model)
    assert finetune(model) is None
    assert finetune.last_stats is not None and finetune.last_stats["steps"] > 0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    evaluate = digits.evaluator("val")
    assert 0.0 <= evaluate(model) <= 1.0
    assert evaluate(model) == digits.evaluate(model, "val")


def test_nni_trainer_with_traced_optimizer(digits: DigitsWorkload) -> None:
    model = digits.build_model()
    optimizer = digits.traced_optimizer(model.parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    steps = 0
    original_step = optimizer.step

    def counting_step(*args, **kwargs):  # noqa: ANN002, ANN003
        nonlocal steps
        steps += 1
        return original_step(*args, **kwargs)

    optimizer.step = counting_step  # what NNI statistics pruners do
    digits.trainer(model, optimizer, digits.criterion)
    assert steps == digits.steps_per_epoch()
    digits.trainer(model, optimizer, digits.criterion, max_steps=2)
    assert steps == digits.steps_per_epoch() + 2


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda w, m: w.finetune(m, -1, 0.1, 0), "epochs"),
        (lambda w, m: w.finetune(m, float("nan"), 0.1, 0), "epochs"),
        (lambda w, m: w.finetune(m, 1, 0.0, 0), "lr"),
        (lambda w, m: w.evaluate(m, "dev"), "split"),
        (lambda w, m: w.finetuner(1, lr=-1.0), "lr"),
        (lambda w, m: w.evaluator("holdout"), "split"),
    ],
)
def test_bad_arguments_name_the_field(digits: DigitsWorkload, call, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        call(digits, digits.build_model())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.7}, "val_fraction"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"bogus": 1}, "bogus"),
        ({"device": "warp-drive"}, "device"),
    ],
)
def test_bad_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DigitsWorkload(**overrides)
