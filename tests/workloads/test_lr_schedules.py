"""Per-call fine-tune learning-rate schedules: cosine, constant and LR rewinding.

Learning rates are recorded with a global optimizer step pre-hook that keeps only the
optimizer over the model under test, so the lr of every real optimizer step is seen
exactly as SGD used it (after any scheduler or rewind update).
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tune_prune.errors import ConfigError
from tune_prune.workloads import Finetuner, get_workload
from tune_prune.workloads.base import LR_SCHEDULES, TrainConfig
from tune_prune.workloads.digits import DigitsWorkload

# digits: 1078 training samples / batch 64 = 16 steps an epoch; the baseline is 1 epoch.
SPE = 16
E_STEPS = 16


def _workload(**overrides: Any) -> DigitsWorkload:
    workload = get_workload("digits", **{"baseline_epochs": 1.0, **overrides})
    assert isinstance(workload, DigitsWorkload) and workload.steps_per_epoch() == SPE
    return workload


@pytest.fixture(scope="module")
def cosine_wl() -> DigitsWorkload:
    return _workload()  # config lr_schedule="cosine" (the default)


@pytest.fixture(scope="module")
def constant_wl() -> DigitsWorkload:
    return _workload(lr_schedule="constant")


def _model(workload: DigitsWorkload, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return workload.build_model()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def record_lrs(model: nn.Module) -> Iterator[list[float]]:
    """The lr of each optimizer step taken over ``model``'s parameters, in order."""
    params = {id(p) for p in model.parameters()}
    lrs: list[float] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        groups = optimizer.param_groups
        if any(id(p) in params for g in groups for p in g["params"]):
            assert len({g["lr"] for g in groups}) == 1
            lrs.append(groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield lrs
    finally:
        handle.remove()


def _run(workload: DigitsWorkload, epochs: float, lr: float, **kw: Any) -> tuple[list[float], dict]:
    model = _model(workload)
    with record_lrs(model) as lrs:
        stats = workload.finetune(model, epochs, lr, seed=0, **kw)
    assert stats["steps"] == len(lrs)
    return lrs, _weights(model)


def test_names_exported() -> None:
    assert LR_SCHEDULES == ("cosine", "constant", "rewind")


# ---------------------------------------------------------------- default / cosine / constant


@pytest.mark.parametrize("config_schedule", ["cosine", "constant"])
def test_default_is_the_configs_schedule(config_schedule: str) -> None:
    workload = _workload(lr_schedule=config_schedule)
    default_lrs, default_w = _run(workload, 0.5, 0.05)
    explicit_lrs, explicit_w = _run(workload, 0.5, 0.05, lr_schedule=config_schedule)
    assert default_lrs == explicit_lrs and len(default_lrs) == 8
    assert _same(default_w, explicit_w)
    # ... and the choice matters: the other schedule trains differently.
    other = "constant" if config_schedule == "cosine" else "cosine"
    other_lrs, other_w = _run(workload, 0.5, 0.05, lr_schedule=other)
    assert other_lrs != default_lrs and not _same(other_w, default_w)


def test_constant_keeps_lr_fixed_over_a_cosine_config(cosine_wl: DigitsWorkload) -> None:
    lrs, _ = _run(cosine_wl, 1.5, 0.03, lr_schedule="constant")
    assert lrs == [0.03] * round(1.5 * SPE)


def test_cosine_anneals_to_near_zero_over_the_call(constant_wl: DigitsWorkload) -> None:
    lrs, _ = _run(constant_wl, 1.0, 0.04, lr_schedule="cosine")
    k = len(lrs)
    assert k == SPE and lrs[0] == 0.04
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs == pytest.approx(
        [0.04 * (1 + math.cos(math.pi * i / k)) / 2 for i in range(k)], rel=1e-9
    )
    assert lrs[-1] < 0.04 * 0.01


# ---------------------------------------------------------------- rewind


@pytest.fixture(scope="module")
def baseline_lrs(cosine_wl: DigitsWorkload) -> list[float]:
    """The lrs the real dense baseline training (train_baseline) used, step by step."""
    steps: list[tuple[int, float]] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        steps.append((id(optimizer), optimizer.param_groups[0]["lr"]))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        model = cosine_wl.train_baseline(seed=0)
    finally:
        handle.remove()
    # train_baseline builds its model inside: every step recorded is its one optimizer's.
    assert len({opt for opt, _ in steps}) == 1 and len(steps) == E_STEPS
    assert cosine_wl.evaluate(model) > 0.5  # it really trained
    return [lr for _, lr in steps]


def test_baseline_lrs_match_the_real_baseline_run(
    cosine_wl: DigitsWorkload, baseline_lrs: list[float]
) -> None:
    # Sanity: the baseline really annealed (else the rewind checks below prove little).
    assert baseline_lrs[0] == cosine_wl.baseline_lr == 0.05
    assert baseline_lrs[-1] < 0.05 * 0.01
    assert cosine_wl.baseline_lrs() == baseline_lrs  # bit for bit
    closed = [0.05 * (1 + math.cos(math.pi * i / E_STEPS)) / 2 for i in range(E_STEPS)]
    assert baseline_lrs == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("epochs", [0.25, 0.5, 1.0])
def test_rewind_replays_the_baselines_last_steps(
    cosine_wl: DigitsWorkload, baseline_lrs: list[float], epochs: float
) -> None:
    lrs, _ = _run(cosine_wl, epochs, 0.01, lr_schedule="rewind")
    k = round(epochs * SPE)
    assert len(lrs) == k
    assert lrs == baseline_lrs[E_STEPS - k :]  # exactly, not approximately
    if k < E_STEPS:  # not "restart the schedule": the last K, not the first
        assert lrs != baseline_lrs[:k] and lrs[0] < cosine_wl.baseline_lr


def test_rewind_longer_than_the_baseline_holds_baseline_lr_then_replays_it(
    cosine_wl: DigitsWorkload, baseline_lrs: list[float]
) -> None:
    lrs, _ = _run(cosine_wl, 1.5, 0.01, lr_schedule="rewind")
    assert lrs == [0.05] * 8 + baseline_lrs
    assert cosine_wl.rewind_lrs(24) == lrs


def test_rewind_ignores_lr(cosine_wl: DigitsWorkload) -> None:
    lrs_a, w_a = _run(cosine_wl, 0.5, 0.001, lr_schedule="rewind")
    lrs_b, w_b = _run(cosine_wl, 0.5, 0.2, lr_schedule="rewind")
    assert lrs_a == lrs_b and _same(w_a, w_b)
    # ... but lr is still validated.
    with pytest.raises(ConfigError, match="lr"):
        cosine_wl.finetune(_model(cosine_wl), 0.5, 0.0, seed=0, lr_schedule="rewind")


def test_rewind_uses_baseline_lr_and_the_configs_baseline_schedule() -> None:
    constant = _workload(lr_schedule="constant", baseline_lr=0.07, finetune_lr=0.01)
    lrs, _ = _run(constant, 0.5, 0.01, lr_schedule="rewind")
    assert lrs == [0.07] * 8
    longer = _workload(baseline_epochs=2.0, baseline_lr=0.08)  # cosine over 32 steps
    lrs, _ = _run(longer, 0.25, 0.01, lr_schedule="rewind")
    expected = [0.08 * (1 + math.cos(math.pi * i / 32)) / 2 for i in range(28, 32)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs == longer.baseline_lrs()[-4:]


def test_rewind_with_a_zero_epoch_baseline_is_constant_baseline_lr() -> None:
    workload = get_workload("digits", baseline_epochs=0.0)
    lrs, _ = _run(workload, 0.25, 0.01, lr_schedule="rewind")  # type: ignore[arg-type]
    assert lrs == [workload.baseline_lr] * 4


# ---------------------------------------------------------------- finetuner()


def test_finetuner_passes_the_schedule(cosine_wl: DigitsWorkload) -> None:
    finetune = cosine_wl.finetuner(0.5, lr=0.02, seed=0, lr_schedule="constant")
    assert finetune.lr_schedule == "constant"
    model = _model(cosine_wl)
    with record_lrs(model) as lrs:
        finetune(model)
    assert lrs == [0.02] * 8 and finetune.last_stats is not None
    _, direct = _run(cosine_wl, 0.5, 0.02, lr_schedule="constant")
    assert _same(_weights(model), direct)
    # Picklable with the field (Ray ships finetuners to workers).
    assert pickle.loads(pickle.dumps(finetune)).lr_schedule == "constant"
    assert cosine_wl.finetuner(0.5).lr_schedule is None


class _Spy(DigitsWorkload):
    calls: list[dict[str, Any]]

    def finetune(self, model, epochs, lr, seed=0, **kwargs):  # type: ignore[override]
        self.calls.append(kwargs)
        return {"steps": 0}


def test_finetuner_passes_the_keyword_only_when_set() -> None:
    spy = _Spy(baseline_epochs=1.0)
    spy.calls = []
    spy.finetuner(0.5)(nn.Linear(1, 1))
    spy.finetuner(0.5, lr_schedule="rewind")(nn.Linear(1, 1))
    assert spy.calls == [{}, {"lr_schedule": "rewind"}]


class _Legacy(DigitsWorkload):
    """A user workload written before lr_schedule existed."""

    name = "legacy"

    def finetune(self, model, epochs, lr, seed=0):  # type: ignore[override]
        return super().finetune(model, epochs, lr, seed)


def test_legacy_finetune_without_the_parameter_still_works() -> None:
    legacy = _Legacy(baseline_epochs=1.0)
    finetune = legacy.finetuner(0.25, lr=0.01, seed=0)
    model = _model(legacy)
    before = _weights(model)
    finetune(model)
    assert finetune.last_stats is not None and finetune.last_stats["steps"] == 4
    assert not _same(before, _weights(model))
    # Asking it for a schedule fails early and says why, not with a TypeError mid-search.
    with pytest.raises(ConfigError, match=r"lr_schedule='rewind'.*legacy"):
        legacy.finetuner(0.25, lr=0.01, lr_schedule="rewind")


# ---------------------------------------------------------------- bad names


@pytest.mark.parametrize("bad", ["step", "Cosine", "", 1, ("cosine",)])
def test_bad_schedule_name_raises_config_error(cosine_wl: DigitsWorkload, bad: Any) -> None:
    pattern = r"lr_schedule must be one of \['cosine', 'constant', 'rewind'\].*got " + repr(bad)
    model = _model(cosine_wl)
    before = _weights(model)
    with pytest.raises(ConfigError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        cosine_wl.finetune(model, 0.5, 0.01, seed=0, lr_schedule=bad)
    with pytest.raises(ConfigError, match="lr_schedule"):
        cosine_wl.finetune(model, 0, 0.01, seed=0, lr_schedule=bad)  # even for 0 epochs
    with pytest.raises(ConfigError, match="lr_schedule"):
        cosine_wl.finetuner(0.5, lr_schedule=bad)
    with pytest.raises(ConfigError, match="lr_schedule"):
        Finetuner(cosine_wl, 0.5, 0.01, lr_schedule=bad)(model)
    assert _same(before, _weights(model))


def test_config_schedule_stays_cosine_or_constant() -> None:
    """'rewind' is per call only: the baseline cannot rewind onto itself."""
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="rewind")
