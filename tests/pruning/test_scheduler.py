"""PruningScheduler: NNI's documented example, speedup in the loop, rewinding, save/restore."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError
from tune_prune.pruning.measure import count_params
from tune_prune.pruning.pruners import L1NormPruner, LevelPruner
from tune_prune.pruning.scheduler import PruningScheduler, Task, TaskResult
from tune_prune.pruning.tools import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
)

FIELDS = {"task_id", "iteration", "total_tasks", "score", "sparsity", "params", "macs",
          "finetune_seconds", "seconds", "weight_sparsity"}


def make_finetuner(x: torch.Tensor, steps: int = 2, noise: bool = False):
    """A finetuner as NNI users write it, building its optimizer inside the call."""
    def finetuner(model: nn.Module) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for _ in range(steps):
            batch = x + 0.1 * torch.randn_like(x) if noise else x
            optimizer.zero_grad()
            model(batch).pow(2).mean().backward()
            optimizer.step()
        model.eval()
    return finetuner


def make_evaluator(x: torch.Tensor):
    def evaluator(model: nn.Module) -> float:
        with torch.no_grad():
            return -float(model(x).pow(2).mean())
    return evaluator


def test_nni_example_runs_with_only_imports_changed(tmp_path: Path) -> None:
    model = build("residual")
    dummy = dummy_input("residual")
    config_list = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    finetuner, evaluator = make_finetuner(dummy), make_evaluator(dummy)
    seen = []

    # --- NNI 2.10 documentation, verbatim apart from total_iteration and log_dir ---
    pruner = L1NormPruner(model=None, config_list=None, mode="dependency_aware", dummy_input=dummy)
    task_generator = AGPTaskGenerator(total_iteration=3, origin_model=model, origin_config_list=config_list,
                                      log_dir=tmp_path, keep_intermediate_result=True)
    scheduler = PruningScheduler(pruner, task_generator, finetuner=finetuner, speed_up=True,
                                 dummy_input=dummy, evaluator=evaluator, reset_weight=True,
                                 on_iteration=lambda r, m: seen.append((r, m)))
    scheduler.compress()
    _, model_best, masks, _, _ = scheduler.get_best_result()
    # ---------------------------------------------------------------------------

    assert len(seen) == 4
    for i, (result, m) in enumerate(seen):
        assert set(m) == FIELDS and isinstance(result, TaskResult)
        assert m["iteration"] == i and m["task_id"] == i and m["total_tasks"] == 4
        assert m["macs"] is not None and m["params"] > 0 and m["seconds"] >= m["finetune_seconds"] >= 0
    assert count_params(model_best, masks) < count_params(model)
    assert isinstance(evaluator(model_best), float)
    assert model_best(dummy).shape == (2, 10)
    assert 0.3 < seen[-1][1]["sparsity"] <= 0.55
    assert list(tmp_path.iterdir())[0].joinpath("best_result", "speedup_history.json").is_file()
    # the user's model is untouched
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 build("residual").state_dict().values()))


def test_speedup_in_the_loop_does_not_compound(tmp_path: Path) -> None:
    """A 30 % target with speedup each task ends near 30 %, not at 1 - 0.7**k."""
    model, x = build("residual"), dummy_input("residual")
    sparsity = []
    scheduler = PruningScheduler(
        L1NormPruner(None, None), LinearTaskGenerator(3, model, [{"sparsity": 0.3, "op_types": ["Conv2d"]}],
                                                      log_dir=tmp_path),
        speedup=True, dummy_input=x, on_iteration=lambda r, m: sparsity.append(m["sparsity"]))
    scheduler.compress()
    assert sparsity == sorted(sparsity)
    assert 0.2 <= sparsity[-1] <= 0.4
    _, best, masks, score, _ = scheduler.get_best_result()
    assert score is None
    # Normal mode prunes the residual-coupled convs on different channels: those stay masked.
    assert "layer1.conv1" not in masks and "layer2.conv1" not in masks
    assert count_params(best) < count_params(model)  # physically smaller


def test_channel_schedule_with_speedup_follows_the_formula_in_channel_units(tmp_path: Path) -> None:
    """AGP on output channels with speedup: every task reaches S(1-(1-i/N)^3) of each
    layer's ORIGINAL output channels (up to rounding), neither stalling because input
    channels went with the layer before nor compounding past the target."""
    model, x = build("residual"), dummy_input("residual")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    origin_out = {n: dict(model.named_modules())[n].out_channels for n in convs}
    seen = []
    scheduler = PruningScheduler(
        L1NormPruner(None, None, mode="dependency_aware", dummy_input=x),
        AGPTaskGenerator(3, model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], log_dir=tmp_path),
        speedup=True, dummy_input=x, on_iteration=lambda r, m: seen.append((r, m)))
    scheduler.compress()
    for i, (result, m) in enumerate(seen):
        want = 0.5 * (1 - (1 - i / 3) ** 3)
        modules = dict(result.compact_model.named_modules())
        for name in convs:
            kept = modules[name].out_channels
            mask = result.compact_model_masks.get(name, {}).get("weight")
            if mask is not None:
                kept = int((mask.flatten(1).abs().sum(1) != 0).sum())
            removed = 1 - kept / origin_out[name]
            assert want - 1.0 / origin_out[name] - 1e-9 <= removed <= want + 1e-9, (i, name, removed)
        assert m["sparsity"] <= want + 1e-9
        assert m["weight_sparsity"] >= m["sparsity"] - 1e-9
    assert seen[-1][1]["sparsity"] > 0.4


def test_no_finetuner_no_evaluator_best_is_latest(tmp_path: Path) -> None:
    model = build("mlp")
    calls = []
    scheduler = PruningScheduler(LevelPruner(None, None), AGPTaskGenerator(2, model, [
        {"sparsity": 0.5, "op_names": ["fc1", "fc2"]}], log_dir=tmp_path),
        on_iteration=lambda r, m: calls.append(m))
    scheduler.compress()
    assert [c["task_id"] for c in calls] == [0, 1, 2] and all(c["score"] is None for c in calls)
    assert all(c["macs"] is None for c in calls)
    task_id, best, masks, score, config_list = scheduler.get_best_result()
    assert (task_id, score) == (2, None)
    assert calls[-1]["sparsity"] == pytest.approx(0.5)
    assert (masks["fc1"]["weight"] == 0).float().mean() == pytest.approx(0.5)
    assert torch.equal(best.fc1.weight == 0, masks["fc1"]["weight"] == 0)
    assert not any(hasattr(m, "_tune_prune_masks") for m in best.modules())  # unwrapped
    assert config_list == [{"op_names": ["fc1"], "total_sparsity": 0.5},
                           {"op_names": ["fc2"], "total_sparsity": 0.5}]


def test_masks_held_while_finetuning_without_speedup(tmp_path: Path) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    zeros_seen = []

    def finetuner(m: nn.Module) -> None:
        make_finetuner(x, steps=3)(m)
        zeros_seen.append(int((m.fc1.weight == 0).sum()))

    scheduler = PruningScheduler(LevelPruner(None, None), LinearTaskGenerator(2, model, [
        {"sparsity": 0.5, "op_names": ["fc1"]}], log_dir=tmp_path), finetuner)
    scheduler.compress()
    assert zeros_seen == [0, 128, 256]  # fc1 has 512 weights


def test_reset_weight_rewinds_every_tensor(tmp_path: Path) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    original = copy.deepcopy(model.state_dict())
    generator = LotteryTicketTaskGenerator(3, model, [{"sparsity": 0.6, "op_names": ["fc1", "fc2"]}],
                                           log_dir=tmp_path)
    scheduler = PruningScheduler(LevelPruner(None, None), generator, make_finetuner(x, steps=3),
                                 evaluator=make_evaluator(x), reset_weight=True)
    scheduler.compress()
    _, best, masks, _, _ = scheduler.get_best_result()
    assert (masks["fc1"]["weight"] == 0).float().mean() > 0.1
    for key, value in best.state_dict().items():
        module, _, pname = key.rpartition(".")
        mask = masks.get(module, {}).get(pname)
        expected = original[key] * mask if mask is not None else original[key]
        assert torch.equal(value, expected), key


def test_rewind_point_after_k_steps_and_retrained_ticket(tmp_path: Path) -> None:
    model, x = build("mlp"), dummy_input("mlp")
    after_step = []
    base = make_finetuner(x, steps=4)

    def finetuner(m: nn.Module) -> None:
        handle = register_optimizer_step_post_hook(
            lambda *a: after_step.append(copy.deepcopy(m.state_dict())))
        try:
            base(m)
        finally:
            handle.remove()

    generator = LotteryTicketTaskGenerator(2, model, [{"sparsity": 0.5, "op_names": ["fc1", "fc2"]}],
                                           log_dir=tmp_path)
    scheduler = PruningScheduler(LevelPruner(None, None), generator, finetuner, evaluator=make_evaluator(x),
                                 reset_weight=True, rewind_steps=2)
    scheduler.compress()
    rewind = after_step[1]  # weights after the 2nd step of the first fine-tuning
    _, best, masks, _, _ = scheduler.get_best_result()
    for key, value in best.state_dict().items():
        module, _, pname = key.rpartition(".")
        mask = masks.get(module, {}).get(pname)
        assert torch.equal(value, rewind[key] * mask if mask is not None else rewind[key]), key

    heard: list[dict] = []
    retrain = PruningScheduler(LevelPruner(None, None), LotteryTicketTaskGenerator(
        2, model, [{"sparsity": 0.5, "op_names": ["fc1", "fc2"]}], log_dir=tmp_path), finetuner,
        evaluator=make_evaluator(x), reset_weight=True, retrain_ticket=True,
        on_iteration=lambda result, meas: heard.append({**meas, "result_score": result.score}))
    retrain.compress()
    _, trained, trained_masks, trained_score, _ = retrain.get_best_result()
    # on_iteration hears of the retrained ticket once, after the tasks, with its own score
    assert [m.get("retrained_ticket", False) for m in heard] == [False] * (len(heard) - 1) + [True]
    last = heard[-1]
    assert last["task_id"] == f"{heard[-2]['task_id']}-retrained"
    assert last["score"] == last["result_score"] == trained_score
    assert last["sparsity"] == pytest.approx(heard[-2]["sparsity"])
    retrain.compress()  # already retrained: nothing more
    assert len([m for m in heard if m.get("retrained_ticket")]) == 1
    assert not torch.equal(trained.fc3.weight, model.fc3.weight)  # trained after the rewind
    assert torch.equal(trained.fc1.weight == 0, trained_masks["fc1"]["weight"] == 0)
    with pytest.raises(ConfigError, match="rewind_steps"):
        PruningScheduler(LevelPruner(None, None), generator, finetuner, rewind_steps=2)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("speedup", [False, True])
def test_save_restore_mid_run_equals_uninterrupted(tmp_path: Path, speedup: bool) -> None:
    name = "residual" if speedup else "mlp"
    x = dummy_input(name)
    config = ([{"sparsity": 0.5, "op_types": ["Conv2d"]}] if speedup
              else [{"sparsity": 0.6, "op_names": ["fc1", "fc2"]}])
    pruner_cls = L1NormPruner if speedup else LevelPruner

    def scheduler(log_dir: Path, on_iteration=None) -> PruningScheduler:
        generator = AGPTaskGenerator(3, build(name), config, log_dir=log_dir)
        return PruningScheduler(pruner_cls(None, None), generator, make_finetuner(x, noise=True), speedup,
                                x if speedup else None, make_evaluator(x), on_iteration=on_iteration)

    torch.manual_seed(0)
    reference = scheduler(tmp_path / "a")
    reference.compress()
    ref_id, ref_model, ref_masks, ref_score, _ = reference.get_best_result()

    def stop_after_two(result: TaskResult, m: dict) -> None:
        if m["iteration"] == 1:
            first.save_state(tmp_path / "state")
            raise Interrupt

    torch.manual_seed(0)
    first = scheduler(tmp_path / "b", stop_after_two)
    with pytest.raises(Interrupt):
        first.compress()
    torch.manual_seed(123)  # the restore must bring back the RNG too
    resumed_iterations = []
    second = scheduler(tmp_path / "c", lambda r, m: resumed_iterations.append(m["iteration"]))
    second.load_state(tmp_path / "state")
    second.compress()
    assert resumed_iterations == [2, 3]
    task_id, model, masks, score, _ = second.get_best_result()
    assert task_id == ref_id and score == pytest.approx(ref_score)
    assert masks.keys() == ref_masks.keys()
    for key in masks:
        for pname in masks[key]:
            assert torch.equal(masks[key][pname], ref_masks[key][pname])
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert k1 == k2 and torch.allclose(v1, v2), k1
    saved = {p.name for p in (tmp_path / "state").iterdir()}
    assert saved == {"scheduler.json", "generator.json", "tensors.pth"}


def test_arguments_are_checked(tmp_path: Path) -> None:
    generator = AGPTaskGenerator(2, build("mlp"), [{"sparsity": 0.5, "op_names": ["fc1"]}], log_dir=tmp_path)
    with pytest.raises(ConfigError, match="dummy_input"):
        PruningScheduler(LevelPruner(None, None), generator, speedup=True)
    with pytest.raises(ConfigError, match="disagree"):
        PruningScheduler(LevelPruner(None, None), generator, None, True, torch.zeros(1), speed_up=False)
    with pytest.raises(ConfigError, match="finetuner"):
        PruningScheduler(LevelPruner(None, None), generator, finetuner="train")
    scheduler = PruningScheduler(LevelPruner(None, None), generator, speed_up=True, dummy_input=torch.zeros(1))
    assert scheduler.speedup and scheduler.speed_up
    with pytest.raises(ConfigError, match="no saved scheduler state"):
        scheduler.load_state(tmp_path / "nothing")


def test_task_and_result_are_positional() -> None:
    model = nn.Linear(2, 2)
    task = Task(7, model, {}, [{"op_names": ["x"], "total_sparsity": 0.1}], False, True, False, {"k": 1})
    assert (task.speedup, task.finetune, task.evaluate, task.state) == (False, True, False, {"k": 1})
    assert task.load_data()[0] is model
    result = TaskResult(7, model, {}, {}, 0.5)
    assert (result.task_id, result.score) == (7, 0.5)
    from tune_prune.pruning.tools import Task as ToolsTask

    assert ToolsTask is Task
