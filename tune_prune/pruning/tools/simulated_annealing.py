"""Simulated annealing over per-layer sparsity allocations (AutoCompress, Liu et al. 2020).

NNI 2.10's algorithm: an allocation gives every selected layer its own sparsity, the
largest layer the largest sparsity, rescaled so the weight-weighted total equals the
target. Each candidate prunes the ORIGINAL model. The first result sets the baseline;
each later candidate is accepted if it scores better, else with probability
``exp(-delta / T)``; an accepted candidate cools ``T *= cool_down_rate``; the search
stops as soon as ``T < stop_temperature``. Perturbations shrink with ``T / T0``.

Deliberate differences (documented, they only make the search terminate and respect
the target):

- Score deltas are normalised (NNI issue 4527). NNI compares a raw score difference
  with a temperature of 100..20: with accuracies in [0, 1] every candidate is accepted
  (random walk), with losses in the thousands none is, the temperature never drops and
  the search loops forever. Here ``delta`` is divided by the mean absolute score delta
  seen so far and the temperature by ``start_temperature``, so the acceptance odds of a
  typical worse candidate go from ``exp(-1)`` at the start to
  ``exp(-T0/T_stop)`` at the end, whatever the score's scale.
- After ``max_rejections`` rejections in a row the temperature cools anyway, so the
  number of tasks is bounded by ``1 + k * (max_rejections + 1)`` with
  ``k = ceil(log(stop/start) / log(cool_down_rate))``.
- A task without a score (no evaluator) is accepted: nothing to compare.
- The rescaling uses exact weight-weighted sums (NNI floored per-layer counts, which
  could push the total a little past the target), and the pruners round down, so a
  candidate never exceeds the target.
- The random numbers come from the generator's own seeded RNG, saved with its state.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.config import canonical_config_list

from .base import Masks, Task, TaskGenerator, TaskResult

_logger = logging.getLogger(__name__)

_MAX_TRIES = 1000


def _number(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if (low is not None and value <= low) or (high is not None and value >= high):
        raise ConfigError(f"{name} must be in ({low}, {high}), got {value!r}")
    return float(value)


class SimulatedAnnealingTaskGenerator(TaskGenerator):
    """Search per-layer sparsities meeting the total target by simulated annealing.

    Signature and defaults are NNI 2.10's; ``seed`` and ``max_rejections`` are
    keyword-only additions.
    """

    def __init__(
        self,
        origin_model: nn.Module | None,
        origin_config_list: list[dict[str, Any]] | None,
        origin_masks: Masks | None = None,
        start_temperature: float = 100,
        stop_temperature: float = 20,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        log_dir: str | Path = ".",
        keep_intermediate_result: bool = False,
        *,
        seed: int | None = None,
        max_rejections: int = 10,
    ) -> None:
        self.start_temperature = _number("start_temperature", start_temperature, 0.0)
        self.stop_temperature = _number("stop_temperature", stop_temperature, 0.0)
        if self.stop_temperature >= self.start_temperature:
            raise ConfigError(
                f"stop_temperature ({stop_temperature!r}) must be below start_temperature ({start_temperature!r})"
            )
        self.cool_down_rate = _number("cool_down_rate", cool_down_rate, 0.0, 1.0)
        self.perturbation_magnitude = _number("perturbation_magnitude", perturbation_magnitude, 0.0)
        if isinstance(max_rejections, bool) or not isinstance(max_rejections, int) or max_rejections < 0:
            raise ConfigError(f"max_rejections must be an integer >= 0, got {max_rejections!r}")
        self.max_rejections = max_rejections
        self.seed = seed
        super().__init__(origin_model, origin_masks=origin_masks, origin_config_list=origin_config_list,
                         log_dir=log_dir, keep_intermediate_result=keep_intermediate_result)

    # ------------------------------------------------------------------ setup
    def reset(self, model: nn.Module, config_list: list[dict[str, Any]] | None = None,
              masks: Masks | None = None) -> None:
        self._rng = random.Random(self.seed)
        self.current_temperature = self.start_temperature
        self.target_sparsity_list = canonical_config_list(model, list(config_list or []))
        self._weights_numel, self._masked_rate = _weights_numel(model, self.target_sparsity_list, masks or {})
        self._adjust_target_sparsity()
        self._temp_sparsity_list: list[list[float]] | None = None
        self._current_sparsity_list: list[list[float]] | None = None
        self._current_score: float | None = None
        self._delta_sum = 0.0
        self._delta_count = 0
        self._rejections = 0
        super().reset(model, config_list, masks)

    @property
    def total_tasks(self) -> int | None:
        return None

    def _adjust_target_sparsity(self) -> None:
        """With origin masks, target only the part of each entry not masked yet."""
        if not self._masked_rate:
            return
        for config in self.target_sparsity_list:
            remaining = sum(self._weights_numel[n] for n in config["op_names"])
            masked = sum(_odds(self._masked_rate.get(n, 0.0)) * self._weights_numel[n]
                         for n in config["op_names"])
            rate = masked / (masked + remaining) if masked + remaining else 0.0
            config["total_sparsity"] = max(0.0, (config["total_sparsity"] - rate) / (1 - rate))

    def _layers_by_size(self, config: Mapping[str, Any]) -> list[str]:
        return sorted(config["op_names"], key=lambda n: (self._weights_numel[n], n))

    def _rescale(self, sparsity: list[float], config: Mapping[str, Any]) -> list[float] | None:
        """Sort ascending (largest layer, largest sparsity) and scale to the exact target."""
        target = float(config["total_sparsity"])
        numel = [self._weights_numel[n] for n in self._layers_by_size(config)]
        ordered = sorted(max(0.0, s) for s in sparsity)
        pruned = sum(n * s for n, s in zip(numel, ordered))
        if pruned <= 0:
            return None
        scale = target * sum(numel) / pruned
        rescaled = [s * scale for s in ordered]
        return rescaled if rescaled[0] >= 0 and rescaled[-1] < 1 else None

    def _initial_sparsity(self, config: Mapping[str, Any]) -> list[float]:
        if config["total_sparsity"] == 0:
            return [0.0] * len(config["op_names"])
        low = 0.0
        for _ in range(_MAX_TRIES):
            low = (1 - low) * 0.05 + low  # narrows the draws towards uniform: finds a legal one fast
            draw = [self._rng.uniform(low, 1) for _ in config["op_names"]]
            rescaled = self._rescale(draw, config)
            if rescaled is not None:
                return rescaled
        return [float(config["total_sparsity"])] * len(config["op_names"])

    def _perturbed(self) -> list[list[float]]:
        assert self._current_sparsity_list is not None
        magnitude = self.current_temperature / self.start_temperature * self.perturbation_magnitude
        out = []
        for config, current in zip(self.target_sparsity_list, self._current_sparsity_list):
            if config["total_sparsity"] == 0:
                out.append(list(current))
                continue
            for _ in range(_MAX_TRIES):
                draw = [s + self._rng.uniform(-magnitude, magnitude) for s in current]
                rescaled = self._rescale(draw, config)
                if rescaled is not None:
                    out.append(rescaled)
                    break
            else:
                out.append(list(current))
        return out

    def _config_list(self, sparsity_list: list[list[float]]) -> list[dict[str, Any]]:
        """One ``{op_names: [layer], total_sparsity}`` per layer, origin masks added back."""
        config_list = []
        for config, sparsity in zip(self.target_sparsity_list, sparsity_list):
            for name, value in zip(self._layers_by_size(config), sparsity):
                rate = self._masked_rate.get(name, 0.0)
                config_list.append({"op_names": [name], "total_sparsity": rate + value * (1 - rate)})
        return config_list

    # --------------------------------------------------------------- the search
    def init_pending_tasks(self) -> list[Task]:
        self._temp_sparsity_list = [self._initial_sparsity(c) for c in self.target_sparsity_list]
        return [self._candidate_task()]

    def _candidate_task(self) -> Task:
        assert self._temp_sparsity_list is not None
        return self.new_task(self.origin_model_copy(), self.origin_masks, self._config_list(self._temp_sparsity_list),
                             state={"temperature": self.current_temperature})

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        score = task_result.score
        if self._current_sparsity_list is None:
            self._accept(score, cool=False)
        elif score is None or self._current_score is None:
            self._accept(score, cool=True)
        else:
            delta = abs(float(score) - self._current_score)
            self._delta_sum += delta
            self._delta_count += 1
            scale = self._delta_sum / self._delta_count
            normalised = delta / scale if scale > 0 else 0.0
            probability = math.exp(-normalised * self.start_temperature / self.current_temperature)
            better = self._is_better(float(score))
            if better or self._rng.random() < probability:
                self._accept(score, cool=True)
            else:
                self._rejections += 1
                _logger.debug("candidate %s rejected (p=%.3f)", task_result.task_id, probability)
                if self._rejections > self.max_rejections:
                    _logger.info("%d rejections in a row: cooling down anyway", self._rejections)
                    self.current_temperature *= self.cool_down_rate
                    self._rejections = 0
        if self.current_temperature < self.stop_temperature:
            return []
        self._temp_sparsity_list = self._perturbed()
        return [self._candidate_task()]

    def _is_better(self, score: float) -> bool:
        assert self._current_score is not None
        if self.best_result_mode == "minimize":
            return score < self._current_score
        return score > self._current_score

    def _accept(self, score: float | None, cool: bool) -> None:
        self._current_sparsity_list = copy.deepcopy(self._temp_sparsity_list)
        self._current_score = None if score is None else float(score)
        self._rejections = 0
        if cool:
            self.current_temperature *= self.cool_down_rate

    # ------------------------------------------------------------ save/restore
    def extra_state(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {
            "current_temperature": self.current_temperature,
            "temp_sparsity_list": self._temp_sparsity_list,
            "current_sparsity_list": self._current_sparsity_list,
            "current_score": self._current_score,
            "delta_sum": self._delta_sum,
            "delta_count": self._delta_count,
            "rejections": self._rejections,
            "rng": [version, list(internal), gauss],
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.current_temperature = float(state["current_temperature"])
        self._temp_sparsity_list = state["temp_sparsity_list"]
        self._current_sparsity_list = state["current_sparsity_list"]
        self._current_score = state["current_score"]
        self._delta_sum = float(state["delta_sum"])
        self._delta_count = int(state["delta_count"])
        self._rejections = int(state["rejections"])
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))


def _odds(rate: float) -> float:
    return rate / (1 - rate) if rate < 1 else 0.0


def _weights_numel(model: nn.Module, config_list: list[dict[str, Any]],
                   masks: Masks) -> tuple[dict[str, int], dict[str, float]]:
    """Unmasked weight count of each selected layer, and the fraction already masked."""
    modules = dict(model.named_modules())
    numel: dict[str, int] = {}
    masked_rate: dict[str, float] = {}
    for config in config_list:
        for name in config["op_names"]:
            weight = modules[name].weight
            mask = masks.get(name, {}).get("weight")
            if isinstance(mask, torch.Tensor):
                kept = int(mask.ne(0).sum().item())
                numel[name] = kept
                masked_rate[name] = 1 - kept / weight.numel()
            else:
                numel[name] = int(weight.numel())
    return numel, masked_rate
