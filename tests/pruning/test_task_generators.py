"""Task generators: schedules against their formulas, custom generators, SA termination."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.scheduler import PruningScheduler
from tune_prune.pruning.tools import (
    AGPTaskGenerator,
    CurveTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    Task,
    TaskGenerator,
    TaskResult,
    relative_sparsity,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


CONFIG = [{"total_sparsity": 0.5, "op_types": ["Linear"]}]


def drive(generator: TaskGenerator, score=lambda task: None, limit: int = 500) -> list[Task]:
    """Run a generator without pruning: every task 'produces' its own model unchanged."""
    tasks = []
    while (task := generator.next()) is not None:
        tasks.append(task)
        model, masks, _ = task.load_data()
        generator.receive_task_result(TaskResult(task.task_id, model, masks, masks, score(task)))
        assert len(tasks) < limit, "generator does not stop"
    return tasks


def sparsities(tasks: list[Task]) -> list[float]:
    return [t.config_list[0]["total_sparsity"] for t in tasks]


FORMULAS = {
    AGPTaskGenerator: (range(0, 1000), lambda s, i, n: s * (1 - (1 - i / n) ** 3)),
    LinearTaskGenerator: (range(0, 1000), lambda s, i, n: s * i / n),
    LotteryTicketTaskGenerator: (range(1, 1000), lambda s, i, n: 1 - (1 - s) ** (i / n)),
}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), s=st.floats(0.01, 0.95), kind=st.sampled_from(sorted(FORMULAS, key=str)))
def test_schedules_follow_their_formulas(n: int, s: float, kind: type) -> None:
    with tempfile.TemporaryDirectory() as log_dir:
        config = [{"total_sparsity": s, "op_types": ["Linear"]}]
        tasks = drive(kind(n, tiny_model(), config, log_dir=log_dir))
    iterations, formula = FORMULAS[kind]
    expected = [formula(s, i, n) for i in list(iterations)[: len(tasks)]]
    assert len(tasks) == (n if kind is LotteryTicketTaskGenerator else n + 1)
    assert sparsities(tasks) == pytest.approx(expected, abs=1e-12)
    assert sparsities(tasks)[-1] == pytest.approx(s)
    assert [t.task_id for t in tasks] == list(range(len(tasks)))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 10), s=st.floats(0.01, 0.95), exponent=st.floats(0.25, 6.0))
def test_curve_poly_generalises_agp_and_linear(n: int, s: float, exponent: float) -> None:
    config = [{"total_sparsity": s, "op_types": ["Linear"]}]
    with tempfile.TemporaryDirectory() as log_dir:
        tasks = drive(CurveTaskGenerator(n, tiny_model(), config, curve="poly", exponent=exponent, log_dir=log_dir))
    expected = [s * (1 - (1 - i / n) ** exponent) for i in range(n + 1)]
    assert sparsities(tasks) == pytest.approx(expected, abs=1e-12)


def test_curve_named_and_callable(tmp_path: Path) -> None:
    agp = drive(AGPTaskGenerator(5, tiny_model(), CONFIG, log_dir=tmp_path))
    curve = drive(CurveTaskGenerator(5, tiny_model(), CONFIG, curve="agp", log_dir=tmp_path))
    assert sparsities(curve) == pytest.approx(sparsities(agp))
    lottery = drive(LotteryTicketTaskGenerator(4, tiny_model(), CONFIG, log_dir=tmp_path))
    geometric = drive(CurveTaskGenerator(4, tiny_model(), CONFIG, curve="geometric", log_dir=tmp_path,
                                         skip_first_iteration=True))
    assert sparsities(geometric) == pytest.approx(sparsities(lottery))
    # A callable that never reaches 1: the last task still hits the target.
    half = drive(CurveTaskGenerator(4, tiny_model(), CONFIG, curve=lambda p: p / 2, log_dir=tmp_path))
    assert sparsities(half) == pytest.approx([0, 0.0625, 0.125, 0.1875, 0.5])
    cosine = sparsities(drive(CurveTaskGenerator(4, tiny_model(), CONFIG, curve="cosine", log_dir=tmp_path)))
    assert cosine[2] == pytest.approx(0.25) and cosine[-1] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="curve"):
        CurveTaskGenerator(4, tiny_model(), CONFIG, curve="zigzag", log_dir=tmp_path)
    with pytest.raises(ConfigError, match="exponent"):
        CurveTaskGenerator(4, tiny_model(), CONFIG, exponent=0, log_dir=tmp_path)


def test_skip_first_iteration_and_per_layer_keys(tmp_path: Path) -> None:
    config = [{"sparsity": 0.6, "op_types": ["Linear"]}]  # per-layer key: one entry per layer
    tasks = drive(LinearTaskGenerator(3, tiny_model(), config, log_dir=tmp_path, skip_first_iteration=True))
    assert len(tasks) == 3
    assert [c["op_names"] for c in tasks[0].config_list] == [["0"], ["2"], ["4"]]
    assert [t.config_list[1]["total_sparsity"] for t in tasks] == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(ConfigError, match="total_iteration"):
        AGPTaskGenerator(0, tiny_model(), config, log_dir=tmp_path)
    with pytest.raises(ConfigError):
        AGPTaskGenerator(3, tiny_model(), [{"sparsity": 1.5, "op_types": ["Linear"]}], log_dir=tmp_path)


def test_relative_sparsity_after_speedup(tmp_path: Path) -> None:
    """With a physically shrunk model, the next task asks only for what is not gone yet."""
    assert relative_sparsity(0.5, 0.0) == 0.5
    assert relative_sparsity(0.5, 0.3) == pytest.approx(0.2 / 0.7)
    assert relative_sparsity(0.3, 0.4) == 0.0  # past the target already: nothing more
    generator = LinearTaskGenerator(2, tiny_model(), [{"sparsity": 0.5, "op_names": ["2"]}], log_dir=tmp_path)
    task = generator.next()
    compact = tiny_model()
    compact[2] = nn.Linear(16, 24)  # 25 % of layer "2" removed physically
    generator.receive_task_result(TaskResult(task.task_id, compact, {}, {}, None))
    nxt = generator.next()
    assert nxt.config_list[0]["total_sparsity"] == pytest.approx((0.25 - 0.25) / 0.75)
    generator.receive_task_result(TaskResult(nxt.task_id, compact, {}, {}, None))
    assert generator.next().config_list[0]["total_sparsity"] == pytest.approx((0.5 - 0.25) / 0.75)


def test_best_result_modes_and_log_dir(tmp_path: Path) -> None:
    scores = {0: 0.5, 1: 0.9, 2: 0.1, 3: None}
    log_dir = tmp_path / "not" / "there"
    gen = LinearTaskGenerator(3, tiny_model(), CONFIG, log_dir=log_dir, keep_intermediate_result=True,
                              best_result_mode="maximize")
    drive(gen, score=lambda t: scores[t.task_id])
    task_id, model, masks, score, config_list = gen.get_best_result()
    assert (task_id, score) == (1, 0.9) and isinstance(model, nn.Module)
    assert config_list[0]["total_sparsity"] == pytest.approx(0.5 / 3)
    root = gen.log_dir
    assert root.parent == log_dir.absolute()
    for folder in ("origin", "best_result", "intermediate_result/0", "intermediate_result/3"):
        assert (root / folder).is_dir(), folder
    state = torch.load(root / "best_result" / "model_state_dict.pth", weights_only=True)
    assert set(state) == set(model.state_dict())
    assert json.loads((root / "best_result" / "result.json").read_text()) == {"task_id": 1, "score": 0.9}
    assert [t["status"] for t in json.loads((root / "tasks.json").read_text())] == ["Finished"] * 4

    for mode, expected in (("minimize", 2), ("latest", 3)):
        gen = LinearTaskGenerator(3, tiny_model(), CONFIG, log_dir=tmp_path)
        gen._best_result_mode = mode
        drive(gen, score=lambda t: scores[t.task_id])
        assert gen.get_best_result()[0] == expected
        assert not (gen.log_dir / "intermediate_result").exists()  # not kept
    gen = LinearTaskGenerator(3, tiny_model(), CONFIG, log_dir=tmp_path)
    drive(gen)
    assert gen.get_best_result()[0] == 3  # no scores: latest
    with pytest.raises(ConfigError, match="best_result_mode"):
        TaskGenerator(None, best_result_mode="best")


class TwoStep(TaskGenerator):
    """A custom schedule in one short class: 40 % of every Linear, then 70 %."""

    def init_pending_tasks(self) -> list[Task]:
        return [self.new_task(self.origin_model_copy(), self.origin_masks, self._config(0.4))]

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        if task_result.task_id == 1:
            return []
        return [self.new_task(task_result.compact_model, task_result.compact_model_masks, self._config(0.7))]

    def _config(self, sparsity: float) -> list[dict]:
        return [{"sparsity": sparsity, "op_types": ["Linear"]}]


def test_custom_generator_runs_in_scheduler(tmp_path: Path) -> None:
    from tune_prune.pruning.pruners import LevelPruner

    model = tiny_model()
    generator = TwoStep(model, origin_config_list=[{"sparsity": 0.7, "op_types": ["Linear"]}], log_dir=tmp_path)
    seen = []
    scheduler = PruningScheduler(LevelPruner(None, None), generator,
                                 evaluator=lambda m: 1.0, on_iteration=lambda r, m: seen.append(m))
    scheduler.compress()
    assert [m["task_id"] for m in seen] == [0, 1]
    assert seen[0]["sparsity"] == pytest.approx(0.4, abs=0.02)
    assert seen[1]["sparsity"] == pytest.approx(0.7, abs=0.02)
    assert seen[0]["total_tasks"] is None
    task_id, best, masks, score, _ = scheduler.get_best_result()
    assert task_id == 0 and score == 1.0  # maximize keeps the first of equal scores
    assert set(masks) == {"0", "2", "4"}
    for name, per in masks.items():
        assert torch.equal(dict(best.named_modules())[name].weight == 0, per["weight"] == 0)


# ---------------------------------------------------------------- simulated annealing
def sa_total(generator: SimulatedAnnealingTaskGenerator, task: Task) -> float:
    numel = {n: m.weight.numel() for n, m in generator.origin_model.named_modules() if isinstance(m, nn.Linear)}
    pruned = sum(numel[c["op_names"][0]] * c["total_sparsity"] for c in task.config_list)
    return pruned / sum(numel.values())


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4, -1e6])
def test_sa_stops_whatever_the_score_scale(tmp_path: Path, scale: float) -> None:
    """NNI issue 4527: raw score deltas far from the temperature's scale looped forever."""
    gen = torch.Generator().manual_seed(1)
    generator = SimulatedAnnealingTaskGenerator(tiny_model(), CONFIG, log_dir=tmp_path, seed=0)
    tasks = drive(generator, score=lambda t: scale * float(torch.rand((), generator=gen)), limit=200)
    k = math.ceil(math.log(20 / 100) / math.log(0.9))
    assert 1 + k <= len(tasks) <= 1 + k * (generator.max_rejections + 1) + 1
    assert generator.current_temperature < generator.stop_temperature
    for task in tasks:
        assert sa_total(generator, task) == pytest.approx(0.5, abs=1e-9)
        # the largest layer gets the largest sparsity
        by_name = {c["op_names"][0]: c["total_sparsity"] for c in task.config_list}
        assert by_name["2"] >= by_name["0"] and by_name["2"] >= by_name["4"]
        assert all(0 <= v < 1 for v in by_name.values())


def test_sa_constant_and_missing_scores_stop(tmp_path: Path) -> None:
    for score in (lambda t: 0.7, lambda t: None):
        generator = SimulatedAnnealingTaskGenerator(tiny_model(), CONFIG, log_dir=tmp_path, seed=3)
        tasks = drive(generator, score=score, limit=100)
        assert len(tasks) == 1 + math.ceil(math.log(0.2) / math.log(0.9))


def test_sa_pruned_model_never_exceeds_target(tmp_path: Path) -> None:
    from tune_prune.pruning.pruners import LevelPruner

    sparsity = []
    generator = SimulatedAnnealingTaskGenerator(tiny_model(), [{"total_sparsity": 0.6, "op_types": ["Linear"]}],
                                                cool_down_rate=0.5, log_dir=tmp_path, seed=1)
    scores = iter(torch.linspace(0, 1, 100).tolist())
    scheduler = PruningScheduler(LevelPruner(None, None), generator, evaluator=lambda m: next(scores),
                                 on_iteration=lambda r, m: sparsity.append(m["sparsity"]))
    scheduler.compress()
    assert 3 <= len(sparsity) < 30
    assert all(0.55 < s <= 0.6 + 1e-9 for s in sparsity)


def test_sa_state_round_trip(tmp_path: Path) -> None:
    """Generator state alone: a restored SA search continues exactly like the original."""
    def scores(t: Task) -> float:
        return (int(t.task_id) * 7919 % 13) / 13

    full = SimulatedAnnealingTaskGenerator(tiny_model(), CONFIG, log_dir=tmp_path, seed=5)
    reference = [t.config_list for t in drive(full, score=scores)]

    first = SimulatedAnnealingTaskGenerator(tiny_model(), CONFIG, log_dir=tmp_path, seed=5)
    done = []
    for _ in range(4):
        task = first.next()
        done.append(task.config_list)
        first.receive_task_result(TaskResult(task.task_id, task.model, task.masks, task.masks, scores(task)))
    meta, tensors = first.state_dict()
    meta = json.loads(json.dumps(meta))  # it must survive JSON
    second = SimulatedAnnealingTaskGenerator(tiny_model(), CONFIG, log_dir=tmp_path, seed=99)
    second.load_state_dict(meta, tensors)
    rest = [t.config_list for t in drive(second, score=scores)]
    assert done + rest == reference
    assert second.get_best_result()[0] == full.get_best_result()[0]


def test_schedule_formulas_are_the_generators_and_the_dry_runs(tmp_path: Path) -> None:
    """One formula per shape (tools.formulas): the generators' sparsities are exactly them."""
    from tune_prune.pruning.tools import formulas

    assert formulas.schedule(formulas.linear, 0.8, 4) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert formulas.schedule(formulas.agp, 0.8, 2) == pytest.approx([0, 0.8 * (1 - 0.5 ** 3), 0.8])
    assert formulas.schedule(formulas.lottery_ticket, 0.75, 2) == pytest.approx([0, 0.5, 0.75])
    assert formulas.curve_fraction("cosine", 0.5, 0.8) == pytest.approx(0.5)
    assert formulas.curve_fraction("linear", -0.5, 0.8) == 0.0  # clipped to [0, 1]
    for cls, formula in ((AGPTaskGenerator, formulas.agp), (LinearTaskGenerator, formulas.linear),
                         (LotteryTicketTaskGenerator, formulas.lottery_ticket)):
        gen = cls(3, tiny_model(), CONFIG, log_dir=tmp_path)
        assert [gen.origin_sparsity(0.5, i) for i in range(4)] == [formula(0.5, i, 3) for i in range(4)]
