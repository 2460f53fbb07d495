"""Distillation from the dense model during fine-tuning (tune_prune.workloads.distill)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads import get_workload
from tune_prune.workloads.digits import DigitsWorkload
from tune_prune.workloads.distill import Distillation, soft_loss


def _workload() -> DigitsWorkload:
    workload = get_workload("digits", baseline_epochs=1.0)
    assert isinstance(workload, DigitsWorkload)
    return workload


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pair(workload: DigitsWorkload) -> tuple[nn.Module, nn.Module]:
    """A trained teacher and a differently initialised student."""
    teacher = workload.train_baseline(seed=0)
    torch.manual_seed(7)
    return teacher, workload.build_model()


def _mean_kl(workload: DigitsWorkload, student: nn.Module, teacher: nn.Module) -> float:
    x, _ = workload.split_tensors("val")
    with torch.no_grad():
        return float(soft_loss(student.eval()(x), teacher.eval()(x), 1.0))


def test_soft_loss_is_t_squared_kl_and_zero_on_equal_logits() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p = F.softmax(t / 2.0, dim=1)
    expected = (p * (p.log() - F.log_softmax(s / 2.0, dim=1))).sum(dim=1).mean() * 4.0
    assert float(soft_loss(s, t, 2.0)) == pytest.approx(float(expected), rel=1e-5)
    assert float(soft_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_loss(s, t, 2.0)) > 0.0


def test_weight_zero_is_plain_finetuning_and_never_runs_the_teacher() -> None:
    workload = _workload()
    teacher, student = _pair(workload)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    plain = copy.deepcopy(student)
    workload.finetune(plain, 0.5, 0.05, seed=3)
    workload.finetune(student, 0.5, 0.05, seed=3, distill=Distillation(teacher, 0.0))
    assert _same(_state(plain), _state(student)) and not calls


def test_distilling_pulls_the_student_to_the_teacher_and_leaves_the_teacher() -> None:
    workload = _workload()
    teacher, student = _pair(workload)
    distill = Distillation.from_dense(teacher, 1.0, temperature=2.0)
    frozen = _state(distill.teacher)
    plain = copy.deepcopy(student)
    workload.finetune(plain, 1.0, 0.05, seed=1)
    workload.finetune(student, 1.0, 0.05, seed=1, distill=distill)
    assert _same(frozen, _state(distill.teacher))
    assert all(not p.requires_grad for p in distill.teacher.parameters())
    # weight 1: the labels play no part, only the teacher's outputs do
    assert _mean_kl(workload, student, teacher) < 0.8 * _mean_kl(workload, plain, teacher)


def test_weight_one_ignores_the_labels() -> None:
    workload = _workload()
    teacher, student = _pair(workload)

    class Shuffled(DigitsWorkload):
        """The same data with every label moved to the next class."""

        def prepare_batch(self, x: Any, y: Any, train: bool, generator: Any) -> Any:
            x, y = super().prepare_batch(x, y, train, generator)
            return x, (y + 1) % 10

    other = Shuffled(workload.config)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    workload.finetune(a, 0.5, 0.05, seed=2, distill=Distillation(teacher, 1.0))
    other.finetune(b, 0.5, 0.05, seed=2, distill=Distillation(teacher, 1.0))
    assert _same(_state(a), _state(b))
    c = copy.deepcopy(student)
    other.finetune(c, 0.5, 0.05, seed=2, distill=Distillation(teacher, 0.5))
    assert not _same(_state(a), _state(c))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"weight": 1.2}, "distill must be a number in \\[0, 1\\].*1.2"),
    ({"weight": True}, "distill must be"),
    ({"weight": 0.5, "temperature": 0.0}, "distill_temperature must be a finite number > 0"),
    ({"weight": 0.5, "temperature": math.inf}, "distill_temperature"),
])
def test_bad_settings_name_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Distillation(nn.Linear(2, 2), **kwargs)


def test_outputs_that_are_not_class_scores_are_refused() -> None:
    with pytest.raises(WorkloadError, match="needs \\(batch, classes\\) float logits.*student returned \\(4,\\)"):
        soft_loss(torch.zeros(4), torch.zeros(4, 3), 2.0)
    with pytest.raises(WorkloadError, match="differ in shape"):
        soft_loss(torch.zeros(4, 2), torch.zeros(4, 3), 2.0)


def test_finetuner_refuses_distillation_for_a_finetune_without_the_keyword() -> None:
    workload = _workload()

    class Old(DigitsWorkload):
        def finetune(self, model: nn.Module, epochs: float, lr: float, seed: int = 0) -> dict[str, Any]:
            return super().finetune(model, epochs, lr, seed)

    with pytest.raises(ConfigError, match="without a distill parameter"):
        Old(workload.config).finetuner(1.0, 0.01, distill=Distillation(nn.Linear(2, 2), 0.5))
    with pytest.raises(ConfigError, match="distill must be a Distillation"):
        workload.finetuner(1.0, 0.01, distill=0.5)  # type: ignore[arg-type]
    finetuner = workload.finetuner(0.25, 0.01, distill=Distillation(nn.Linear(2, 2), 0.0))
    assert finetuner.distill is not None and finetuner.distill.weight == 0.0
