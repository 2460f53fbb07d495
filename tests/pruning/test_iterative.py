"""Iterative pruners: NNI 2.10 signatures, and each one runs end to end on a small model."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError
from tune_prune.pruning.iterative import (
    AGPPruner,
    LinearPruner,
    LotteryTicketPruner,
    SimulatedAnnealingPruner,
)
from tune_prune.pruning.measure import count_params
from tune_prune.pruning.pruners import L1NormPruner, LevelPruner
from tune_prune.pruning.scheduler import PruningScheduler
from tune_prune.pruning.tools import (
    AGPTaskGenerator,
    CurveTaskGenerator,
    FunctionBasedTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    TaskGenerator,
)

_FUNCTION_PRUNER = [
    ("model", None), ("config_list", None), ("pruning_algorithm", None), ("total_iteration", None),
    ("log_dir", "."), ("keep_intermediate_result", False), ("finetuner", None), ("speedup", False),
    ("dummy_input", None), ("evaluator", None),
]

# NNI 2.10's legacy (callable finetuner/evaluator) signatures: positional names and defaults.
NNI_SIGNATURES = {
    LinearPruner: _FUNCTION_PRUNER + [("pruning_params", None)],
    AGPPruner: _FUNCTION_PRUNER + [("pruning_params", None)],
    LotteryTicketPruner: _FUNCTION_PRUNER + [("reset_weight", True), ("pruning_params", None)],
    SimulatedAnnealingPruner: [
        ("model", None), ("config_list", None), ("evaluator", None), ("start_temperature", 100),
        ("stop_temperature", 20), ("cool_down_rate", 0.9), ("perturbation_magnitude", 0.35),
        ("pruning_algorithm", "level"), ("pruning_params", None), ("log_dir", "."),
        ("keep_intermediate_result", False), ("finetuner", None), ("speedup", False), ("dummy_input", None),
    ],
    PruningScheduler: [
        ("pruner", None), ("task_generator", None), ("finetuner", None), ("speedup", False),
        ("dummy_input", None), ("evaluator", None), ("reset_weight", False),
    ],
    FunctionBasedTaskGenerator: [
        ("total_iteration", None), ("origin_model", None), ("origin_config_list", None),
        ("origin_masks", None), ("log_dir", "."), ("keep_intermediate_result", False),
        ("skip_first_iteration", False),
    ],
    SimulatedAnnealingTaskGenerator: [
        ("origin_model", None), ("origin_config_list", None), ("origin_masks", None),
        ("start_temperature", 100), ("stop_temperature", 20), ("cool_down_rate", 0.9),
        ("perturbation_magnitude", 0.35), ("log_dir", "."), ("keep_intermediate_result", False),
    ],
    TaskGenerator: [
        ("origin_model", None), ("origin_masks", None), ("origin_config_list", None), ("log_dir", "."),
        ("keep_intermediate_result", False), ("best_result_mode", "maximize"),
    ],
}


@pytest.mark.parametrize("cls", list(NNI_SIGNATURES), ids=lambda c: c.__name__)
def test_signatures_match_nni_2_10(cls: type) -> None:
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]
    expected = NNI_SIGNATURES[cls]
    assert [p.name for p in params] == [name for name, _ in expected]
    for param, (name, default) in zip(params, expected):
        if param.default is not inspect.Parameter.empty:
            # NNI's mutable defaults ({} for masks/params) are None here
            assert param.default == default, name


def quick(model: nn.Module, x: torch.Tensor):
    def finetuner(m: nn.Module) -> None:
        optimizer = torch.optim.SGD(m.parameters(), lr=0.01)
        m.train()
        optimizer.zero_grad()
        m(x).pow(2).mean().backward()
        optimizer.step()
        m.eval()

    def evaluator(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(m(x).pow(2).mean())

    return finetuner, evaluator


CONFIG = [{"sparsity": 0.5, "op_names": ["fc1", "fc2"]}]


@pytest.mark.parametrize("cls", [LinearPruner, AGPPruner, LotteryTicketPruner], ids=lambda c: c.__name__)
def test_function_based_pruners_run(tmp_path: Path, cls: type) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    finetuner, evaluator = quick(model, x)
    seen = []
    pruner = cls(model, CONFIG, "l1", 2, tmp_path, False, finetuner, evaluator=evaluator,
                 on_iteration=lambda r, m: seen.append(m["sparsity"]))
    assert isinstance(pruner.pruner, L1NormPruner)
    pruner.compress()
    assert len(seen) == (2 if cls is LotteryTicketPruner else 3)
    assert seen[-1] == pytest.approx(0.5, abs=0.02)
    _, best, masks, score, config_list = pruner.get_best_result()
    assert isinstance(score, float) and best(x).shape == (4, 10)
    assert count_params(best, masks) < count_params(model)
    assert pruner.reset_weight is (cls is LotteryTicketPruner)
    pruner._unwrap_model()  # NNI's one-shot methods only warn
    pruner.export_model()


def test_agp_pruner_with_speedup_and_pruning_params(tmp_path: Path) -> None:
    model, x = build("residual"), dummy_input("residual")
    pruner = AGPPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "l1", 2, log_dir=tmp_path,
                       speedup=True, dummy_input=x,
                       pruning_params={"mode": "dependency_aware", "dummy_input": x})
    pruner.compress()
    _, best, masks, _, _ = pruner.get_best_result()
    assert masks == {} and count_params(best) < count_params(model)
    assert best(x).shape == (2, 10)


def test_simulated_annealing_pruner(tmp_path: Path) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    _, evaluator = quick(model, x)
    sparsity = []
    pruner = SimulatedAnnealingPruner(model, [{"total_sparsity": 0.5, "op_names": ["fc1", "fc2", "fc3"]}],
                                      evaluator, cool_down_rate=0.6, log_dir=tmp_path, seed=0,
                                      on_iteration=lambda r, m: sparsity.append(m["sparsity"]))
    assert isinstance(pruner.pruner, LevelPruner)
    pruner.compress()
    assert 4 <= len(sparsity) <= 40
    assert all(0.45 <= s <= 0.5 + 1e-9 for s in sparsity)
    task_id, best, masks, score, config_list = pruner.get_best_result()
    assert len(config_list) == 3 and all(len(c["op_names"]) == 1 for c in config_list)
    assert score == max(pruner.task_generator._tasks[t].score for t in pruner.task_generator._tasks)


def test_unknown_algorithm_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admm"):
        AGPPruner(build("mlp"), CONFIG, "admm", 2, log_dir=tmp_path)
    with pytest.raises(ConfigError, match="cool_down_rate"):
        SimulatedAnnealingPruner(build("mlp"), CONFIG, lambda m: 0.0, cool_down_rate=1.5, log_dir=tmp_path)


def test_iterative_pruner_is_a_scheduler(tmp_path: Path) -> None:
    pruner = AGPPruner(build("mlp"), CONFIG, "level", 1, log_dir=tmp_path)
    assert isinstance(pruner, PruningScheduler)
    assert isinstance(pruner.task_generator, AGPTaskGenerator)
    assert pruner.task_generator.total_tasks == 2


def dense_is_best(model: nn.Module, x: torch.Tensor):
    """An evaluator under which every pruned weight costs score: the dense task 0 wins."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))

    def evaluator(m: nn.Module) -> float:
        kept = sum(int((mod.weight != 0).sum()) for mod in m.modules() if isinstance(mod, nn.Linear))
        return kept / total

    return evaluator


@pytest.mark.parametrize("cls", [LinearPruner, AGPPruner, LotteryTicketPruner], ids=lambda c: c.__name__)
def test_formula_pruners_return_the_latest_task_as_nni(tmp_path: Path, cls: type) -> None:
    """NNI 2.10's formula generators pass best_result_mode='latest': the best result is
    the model at the target even when the dense warm-up (task 0) scored higher."""
    model, x = build("mlp"), dummy_input("mlp")
    finetuner, _ = quick(model, x)
    seen = []
    pruner = cls(model, CONFIG, "l1", 3, tmp_path, False, finetuner, evaluator=dense_is_best(model, x),
                 on_iteration=lambda r, m: seen.append(m))
    assert pruner.task_generator.best_result_mode == "latest"
    pruner.compress()
    assert seen[0]["score"] > seen[-1]["score"]  # the old 'maximize' default returned task 0
    task_id, best, masks, score, config_list = pruner.get_best_result()
    assert task_id == seen[-1]["task_id"]
    assert score == seen[-1]["score"]  # NNI: None; tune_prune: the latest task's score
    assert count_params(best, masks) < count_params(model)
    assert seen[-1]["sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("make", [
    lambda m, d: AGPTaskGenerator(2, m, CONFIG, log_dir=d),
    lambda m, d: LinearTaskGenerator(2, m, CONFIG, log_dir=d),
    lambda m, d: LotteryTicketTaskGenerator(2, m, CONFIG, log_dir=d),
    lambda m, d: CurveTaskGenerator(2, m, CONFIG, curve="cosine", log_dir=d),
], ids=["agp", "linear", "lottery_ticket", "curve"])
def test_formula_generators_in_a_scheduler_keep_the_latest(tmp_path: Path, make) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    finetuner, _ = quick(model, x)
    generator = make(model, tmp_path)
    reset_weight = isinstance(generator, LotteryTicketTaskGenerator)
    seen = []
    scheduler = PruningScheduler(L1NormPruner(None, None), generator, finetuner=finetuner,
                                 evaluator=dense_is_best(model, x), reset_weight=reset_weight,
                                 on_iteration=lambda r, m: seen.append(m))
    scheduler.compress()
    assert scheduler.get_best_result()[0] == seen[-1]["task_id"] != seen[0]["task_id"]
    assert max(m["score"] for m in seen) > seen[-1]["score"]


def test_simulated_annealing_and_the_base_keep_maximize(tmp_path: Path) -> None:
    assert inspect.signature(TaskGenerator.__init__).parameters["best_result_mode"].default == "maximize"
    model = build("mlp")
    generator = SimulatedAnnealingTaskGenerator(model, [{"total_sparsity": 0.5, "op_types": ["Linear"]}],
                                                log_dir=tmp_path)
    assert generator.best_result_mode == "maximize"
    assert AGPTaskGenerator(2, model, CONFIG, log_dir=tmp_path, best_result_mode="maximize").best_result_mode == "maximize"
