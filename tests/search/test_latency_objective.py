"""--multi-objective latency: config, where and how the latency is measured, the dry-run
search end to end and the Pareto front on latency_ms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.pruning import L1NormPruner
from tune_prune.pruning.measure import measure_latency, repeat_batch
from tune_prune.search import schedule as schedule_mod
from tune_prune.search.cli import build_parser, main, parse_config
from tune_prune.search.config import SearchConfig
from tune_prune.search.progress import event_line
from tune_prune.search.reporting import Reporter
from tune_prune.search.results import pareto_front, write_results
from tune_prune.search.runner import fixed_config
from tune_prune.search.schedule import export_latency_ms, run_schedule
from tune_prune.search.searcher import journal_storage

from .conftest import WORKLOAD_OPTIONS

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- config

def test_defaults_and_flags() -> None:
    cfg = SearchConfig.create()
    assert (cfg.latency_batch_size, cfg.latency_threads, cfg.latency_repeats) == (64, 1, 20)
    assert cfg.latency_settings() is None and cfg.cost_metric is None
    cfg, _ = parse_config(["--multi-objective", "latency", "--latency-batch-size", "8",
                           "--latency-threads", "2", "--latency-repeats", "3"])
    assert cfg.multi_objective == "latency" and cfg.cost_metric == "latency_ms"
    assert cfg.latency_settings() == {"batch_size": 8, "threads": 2, "repeats": 3}
    assert not cfg.screening  # multi-objective: the default screening is off, as with macs
    assert fixed_config(cfg)["latency"] == {"batch_size": 8, "threads": 2, "repeats": 3}
    assert fixed_config(SearchConfig.create(multi_objective="macs"))["latency"] is None
    text = build_parser().format_help()
    for flag in ("--latency-batch-size", "--latency-threads", "--latency-repeats"):
        assert flag in text
    assert text.count("with multi_objective 'latency' only") == 3
    assert "latency}" in text  # a --multi-objective choice


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency_batch_size", 0),
        ("latency_batch_size", -4),
        ("latency_batch_size", 2.5),
        ("latency_threads", 0),
        ("latency_threads", "many"),
        ("latency_repeats", 0),
        ("multi_objective", "energy"),
    ],
)
def test_bad_latency_values_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.create(**{"multi_objective": "latency", field: value})
    msg = str(info.value)
    assert f"{field}={value!r}" in msg, msg


def test_bad_flag_is_exit_code_2_naming_the_field(capsys) -> None:
    assert main(["--dry-run", "--multi-objective", "latency", "--latency-repeats", "0"]) == 2
    assert "latency_repeats=0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- measuring

class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(torch.relu(self.conv2(x))).flatten(1))


def _channel_masked() -> tuple[nn.Module, torch.Tensor, dict]:
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(2, 3, 8, 8)
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparsity_per_layer": 0.5}], dummy_input=x)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return model, x, masks


def _record(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []

    def fake(model, input, repeats=20, warmup=5, threads=None):
        calls.append({"model": model, "input": input, "repeats": repeats, "threads": threads})
        return 0.002

    monkeypatch.setattr(schedule_mod, "measure_latency", fake)
    return calls


def test_channel_pruning_times_a_sped_up_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, masks = _channel_masked()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _record(monkeypatch)
    ms = export_latency_ms(model, masks, x, "channels", batch_size=5, threads=1, repeats=7)
    assert ms == pytest.approx(2.0)  # seconds -> milliseconds
    [call] = calls
    timed = call["model"]
    assert timed is not model
    assert timed.conv1.out_channels < model.conv1.out_channels == 8
    assert timed.conv2.in_channels < model.conv2.in_channels == 8
    assert timed.conv1.weight.shape[0] == 4  # physically smaller, not only masked
    assert call["input"].shape == (5, 3, 8, 8) and (call["repeats"], call["threads"]) == (7, 1)
    # the trial's own model is unchanged: shapes, weights, buffers, train mode
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.conv1.out_channels == 8


def test_weight_pruning_times_the_masked_model_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, masks = _channel_masked()
    calls = _record(monkeypatch)
    export_latency_ms(model, masks, x, "weights", batch_size=3, threads=1, repeats=2)
    assert calls[0]["model"] is model and calls[0]["input"].shape[0] == 3


def test_no_zero_in_masks_times_the_model_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, _ = _channel_masked()
    calls = _record(monkeypatch)
    export_latency_ms(model, {}, x, "channels", batch_size=2, threads=1, repeats=2)
    assert calls[0]["model"] is model  # already compact (speedup on): nothing to remove


def test_repeat_batch() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    out = repeat_batch(x, 5)
    assert out.shape == (5, 3)
    assert torch.equal(out[2], x[0]) and torch.equal(out[3], x[1]) and torch.equal(out[4], x[0])
    assert repeat_batch(x, 1).shape == (1, 3)
    both = repeat_batch((x, {"m": torch.ones(2, 4)}, 7), 4)
    assert both[0].shape == (4, 3) and both[1]["m"].shape == (4, 4) and both[2] == 7


class _ThreadSpy(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen: list[int] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("boom")
        return self.lin(x)


def test_threads_set_while_measuring_and_restored_after() -> None:
    torch.set_num_threads(2)
    spy = _ThreadSpy()
    measure_latency(spy, torch.ones(3, 2), repeats=3, warmup=1, threads=1)
    assert spy.seen == [1] * 4
    assert torch.get_num_threads() == 2
    failing = _ThreadSpy(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(failing, torch.ones(3, 2), repeats=3, warmup=1, threads=1)
    assert failing.seen == [1] and torch.get_num_threads() == 2


def test_export_latency_uses_its_threads_and_restores_them() -> None:
    torch.set_num_threads(2)
    spy = _ThreadSpy()
    ms = export_latency_ms(spy, {}, torch.ones(1, 2), "weights", batch_size=4, threads=1, repeats=2)
    assert ms > 0 and spy.seen and set(spy.seen) == {1}
    assert torch.get_num_threads() == 2
    with pytest.raises(WorkloadError, match="latency_batch_size=4"):
        export_latency_ms(_ThreadSpy(fail=True), {}, torch.ones(1, 2), "weights",
                          batch_size=4, threads=1, repeats=2)
    assert torch.get_num_threads() == 2


def test_a_channel_trial_reports_latency_of_its_sped_up_model(
    monkeypatch: pytest.MonkeyPatch, baseline_cache: Path, tmp_path: Path
) -> None:
    """run_schedule on digits with real channel pruning: every row has latency_ms and its
    settings, the timed models are the compact copies, the reported (checkpointed) model is not."""
    cfg = SearchConfig.create(workload="digits", workload_options=WORKLOAD_OPTIONS, sparsity_kind="channels",
                              baseline_cache_dir=str(baseline_cache), multi_objective="latency",
                              latency_batch_size=6, latency_repeats=2, test_split=None, target_sparsity=0.5)
    trial = {"generator": "agp", "pruner": "l1", "mode": "normal", "total_iteration": 2,
             "finetune_epochs": 0.02, "lr": 0.01, "reset_weight": False, "lr_schedule": None}
    calls = _record(monkeypatch)
    shapes: list[dict] = []

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        state = torch.load(checkpoint_dir / "result" / "model.pt", weights_only=True)
        shapes.append({k: tuple(v.shape) for k, v in state.items()})

    rows = run_schedule({"fixed": fixed_config(cfg), **trial}, report)
    assert len(rows) == len(calls) == 2
    for row in rows:
        assert row["latency_ms"] == pytest.approx(2.0)
        assert (row["latency_batch_size"], row["latency_threads"], row["latency_repeats"]) == (6, 1, 2)
    from tune_prune.workloads import get_workload

    dense = get_workload("digits", **WORKLOAD_OPTIONS).build_model()
    dense_convs = {n: m.out_channels for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    for call, saved in zip(calls, shapes):
        timed = {n: m.out_channels for n, m in call["model"].named_modules() if isinstance(m, nn.Conv2d)}
        assert sum(timed.values()) < sum(dense_convs.values()), timed
        assert call["input"].shape[0] == 6 and call["threads"] == 1
        # the trial's own model (checkpointed, speedup off) keeps its original widths
        assert all(saved[f"{n}.weight"][0] == c for n, c in dense_convs.items()), saved


def test_no_latency_columns_without_the_latency_objective() -> None:
    cfg = SearchConfig.create(multi_objective="macs")
    reporter = Reporter(fixed_config(cfg), {"generator": "agp", "pruner": "level", "mode": "normal",
                                            "finetune_epochs": 1.0}, {"score": 0.9}, lambda m, d: None)
    row = reporter.metrics({"score": 0.8, "sparsity": 0.8, "latency_ms": 3.0}, True, 1)
    assert not any(k.startswith("latency") for k in row)
    assert "latency" not in event_line("t", row)
    lat = Reporter(fixed_config(cfg.updated(multi_objective="latency")), reporter.trial, {"score": 0.9},
                   lambda m, d: None)
    row = lat.metrics({"score": 0.8, "sparsity": 0.8}, True, 1)
    assert math.isnan(row["latency_ms"]) and row["latency_repeats"] == 20  # never silently absent
    assert "latency 1.5 ms" in event_line("t", {**row, "latency_ms": 1.5})


# ----------------------------------------------------------------------------- results

def _trial(exp: Path, tid: str, score: float, macs: float, latency: float) -> None:
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"generator": "agp", "pruner": "l1", "mode": "normal"}))
    (d / "result.json").write_text(json.dumps({
        "trial_id": tid, "training_iteration": 1, "iteration": 1, "sparsity": 0.8, "score": score,
        "objective": score, "reached_target": True, "macs": macs, "params": macs / 10, "latency_ms": latency,
        "finetune_epochs_cum": 1.0, "schedule_done": True, "generator": "agp", "pruner": "l1", "mode": "normal",
    }) + "\n")


def test_pareto_front_is_on_latency_ms(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    # on MACs the front would be {a, b}; on latency it is {a, c} (b is slower and worse than a)
    _trial(exp, "a", 0.95, 500, 2.0)
    _trial(exp, "b", 0.90, 400, 3.0)
    _trial(exp, "c", 0.85, 450, 1.0)
    files, _, best = write_results(exp, {"target_sparsity": 0.8, "multi_objective": "latency"})
    front = pd.read_csv(files.pareto_csv, dtype={"trial_id": str})
    assert "latency_ms" in front.columns
    assert list(front["trial_id"]) == ["c", "a"]  # sorted by latency
    assert set(pareto_front(best, "macs")["trial_id"]) == {"a", "b"}
    assert exp / "pareto_score_vs_latency_ms.png" in files.plots


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_dry_run_latency_search_end_to_end(ray_local, tmp_path: Path) -> None:
    from tune_prune.search.runner import run_search

    cfg = SearchConfig.create(dry_run=True, multi_objective="latency", latency_batch_size=32,
                              num_samples=6, max_concurrent=2, seed=1, early_stopping="none", reuse_actors=True,
                              storage_path=str(tmp_path), name="lat", include_dashboard=False)
    out = run_search(cfg, printer=lambda _msg: None)
    assert out.num_errors == 0 and not out.interrupted
    table = out.table
    assert table["latency_ms"].gt(0).all() and table["latency_ms"].notna().all()
    assert (table["latency_batch_size"] == 32).all() and (table["latency_repeats"] == 20).all()
    # the simulated latency scales with the simulated MACs (dense: 0.05 ms per sample)
    ratio = table["latency_ms"] / (0.05 * 32 * table["macs"] / 1e6)
    assert ratio.between(0.9, 1.1).all()
    assert out.files.pareto_csv is not None
    front = pd.read_csv(out.files.pareto_csv, dtype={"trial_id": str})
    assert not front.empty and "latency_ms" in front.columns
    at_target = out.best[out.best["reached_target"].eq(True)]
    for _, f in front.iterrows():  # nobody at target is better in score and faster
        assert not ((at_target["score"] >= f["score"]) & (at_target["latency_ms"] <= f["latency_ms"])
                    & ((at_target["score"] > f["score"]) | (at_target["latency_ms"] < f["latency_ms"]))).any()
    study = optuna.load_study(study_name="lat", storage=journal_storage(tmp_path / "lat"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    last = table.sort_values("iteration").groupby("trial_id").last()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        assert t.values[1] == pytest.approx(last.loc[t.user_attrs["tune_trial_id"], "latency_ms"])
        assert t.user_attrs["latency_ms"] == pytest.approx(t.values[1])
    live = pd.read_csv(tmp_path / "lat" / "trials_live.csv")
    assert live["latency_ms"].notna().all()
