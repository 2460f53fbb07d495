"""Knowledge distillation from the dense model while a pruned model fine-tunes.

A pruned network recovers faster when it also matches the dense network's softened
outputs (Hinton, Vinyals & Dean 2015): the teacher's logits carry how similar the
classes are, which one-hot labels do not. Pruning work uses the dense parent as the
teacher (e.g. Sanh, Wolf & Rush 2020; Kurtic et al. 2022). The teacher is the very
model the search prunes, so it costs no extra training: one forward pass per step.

    loss = (1 - weight) * criterion(student, y)
           + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

``weight`` 0 is plain fine-tuning (the teacher is never run); the T^2 factor keeps the
soft term's gradients on the scale of the hard term's (Hinton et al.).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_prune.errors import ConfigError, WorkloadError

#: The temperature unless told otherwise. Hinton et al. used 2-20; on MNIST-1D's CNN at
#: ~4x fewer MACs, one-shot + 15 epochs with weight 0.9 reached 94.2 % at T = 2 and 92.8 %
#: at T = 4 (93.7 % without distillation; 5 seeds, experiments/README.md "Distillation").
DEFAULT_TEMPERATURE = 2.0


def check_distill_weight(value: Any, name: str = "distill") -> float:
    """``value`` as a float in [0, 1], else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= float(value) <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1] (the distillation loss's weight), got {value!r}")
    return float(value)


def check_temperature(value: Any, name: str = "distill_temperature") -> float:
    """``value`` as a finite float > 0, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass
class Distillation:
    """The dense teacher and how much the fine-tune listens to it.

    The teacher always runs in eval mode under ``no_grad``; :meth:`from_dense` also
    makes it a copy without gradients, so fine-tuning the student never moves it.
    """

    teacher: nn.Module
    weight: float
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        self.weight = check_distill_weight(self.weight)
        self.temperature = check_temperature(self.temperature)
        if not isinstance(self.teacher, nn.Module):
            raise ConfigError(f"distillation teacher must be a torch.nn.Module, got {type(self.teacher).__name__}")

    @classmethod
    def from_dense(cls, model: nn.Module, weight: float, temperature: float = DEFAULT_TEMPERATURE) -> Distillation:
        """A frozen eval-mode copy of ``model`` (the dense network before pruning) as teacher."""
        teacher = copy.deepcopy(model).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        return cls(teacher, weight, temperature)

    def loss_of(
        self,
        criterion: Callable[[Tensor, Tensor], Tensor],
        device: torch.device | str,
        forward: Callable[[nn.Module, Tensor], Any] | None = None,
    ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
        """``loss_of(model, x, y)`` for :func:`~tune_prune.workloads.base.fit_steps`.

        Moves the teacher to ``device`` and into eval mode once, here, not every step.
        ``forward(model, x)`` runs a model (default ``model(x)``); with weight 0 the
        teacher never runs and the loss is ``criterion`` alone, bit for bit.
        """
        run = forward or (lambda m, x: m(x))
        weight, temperature = self.weight, self.temperature
        self.teacher.to(device).eval()

        def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            student = run(model, x)
            hard = criterion(student, y)
            if weight == 0.0:
                return hard
            with torch.no_grad():
                teacher = run(self.teacher, x)
            return (1.0 - weight) * hard + weight * soft_loss(student, teacher, temperature)

        return loss_of


def soft_loss(student: Any, teacher: Any, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    Both must be (batch, classes) logits of the same shape: WorkloadError otherwise
    (distillation needs class scores; a regression output has nothing to soften).
    """
    for name, value in (("student", student), ("teacher", teacher)):
        if not isinstance(value, Tensor) or value.ndim != 2 or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise WorkloadError(
                f"distillation needs (batch, classes) float logits, but the {name} returned {shape}; "
                "set distill to 0 for a model whose output is not class scores"
            )
    if student.shape != teacher.shape:
        raise WorkloadError(
            f"distillation: student logits {tuple(student.shape)} and teacher logits "
            f"{tuple(teacher.shape)} differ in shape"
        )
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
