"""Preflight (runner.check_workload) and --pretrained: every bad input fails before Ray
starts and before the experiment folder exists, with an error naming its cause; a search
from the user's weights trains no baseline and reports their score as the dense one.

The workloads below are named to get_workload as ``tests.search.test_preflight:<factory>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from tests.workloads.test_pretrained import TRAININGS, TinyWorkload, trained_state
from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.search.cli import main, parse_config
from tune_prune.search.config import SearchConfig
from tune_prune.search.finalists import final_fixed
from tune_prune.search.runner import check_workload, fixed_config, run_search
from tune_prune.search.schedule import run_schedule
from tune_prune.search.space import define_space
from tune_prune.workloads.base import state_dict_digest

HERE = "tests.search.test_preflight:"
TINY = "tests.workloads.test_pretrained:tiny"


class _BadBuild(TinyWorkload):
    name = "bad_build"

    def build_model(self) -> nn.Module:
        raise RuntimeError("no such layer: Conv9d")


class _EvalRaises(TinyWorkload):
    name = "eval_raises"

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x5 and 6x16)")


class _NaNScore(TinyWorkload):
    name = "nan_score"

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        return float("nan")


class _TensorScore(TinyWorkload):
    name = "tensor_score"

    def evaluate(self, model: nn.Module, split: str = "val") -> Any:
        return torch.tensor(super().evaluate(model, split))


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale)[:, :3]


class _NoPrunable(TinyWorkload):
    name = "no_prunable"

    def build_model(self) -> nn.Module:
        return _Scale()


class _Recording(nn.Sequential):
    """Remembers the device it was last moved to (``None``: never moved)."""

    moved_to: torch.device | None = None

    def to(self, *args: Any, **kwargs: Any) -> nn.Module:
        self.moved_to = torch.device(args[0] if args else kwargs["device"])
        return super().to(*args, **kwargs)


class _DeviceCheck(TinyWorkload):
    """Its batches live on ``self.device`` (a GPU on a GPU node): evaluate refuses a model
    nobody moved there, as CUDA would refuse a CPU model with a CUDA batch."""

    name = "device_check"

    def build_model(self) -> nn.Module:
        return _Recording(*super().build_model())

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if getattr(model, "moved_to", None) != self.device:
            raise RuntimeError(f"model on {getattr(model, 'moved_to', None)}, batches on {self.device}")
        return super().evaluate(model, split)


def device_check(**kw: Any) -> TinyWorkload:
    return _DeviceCheck(**kw)


class _KnowsItsSchedule(TinyWorkload):
    """Says which lrs trained the user's weights, so learning-rate rewinding can replay them."""

    def baseline_lrs(self) -> list[float]:
        return [0.1] * 8


def knows_its_schedule(**kw: Any) -> TinyWorkload:
    return _KnowsItsSchedule(**kw)


class _NoDistill(TinyWorkload):
    """A workload whose finetune() predates distillation (no ``distill`` keyword)."""

    def finetune(self, model: nn.Module, epochs: float, lr: float, seed: int = 0,
                 lr_schedule: str | None = None) -> dict[str, Any]:
        return super().finetune(model, epochs, lr, seed, lr_schedule)


def no_distill(**kw: Any) -> TinyWorkload:
    return _NoDistill(**kw)


def bad_build(**kw: Any) -> TinyWorkload:
    return _BadBuild(**kw)


def eval_raises(**kw: Any) -> TinyWorkload:
    return _EvalRaises(**kw)


def nan_score(**kw: Any) -> TinyWorkload:
    return _NaNScore(**kw)


def tensor_score(**kw: Any) -> TinyWorkload:
    return _TensorScore(**kw)


def no_prunable(**kw: Any) -> TinyWorkload:
    return _NoPrunable(**kw)


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = trained_state()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return path, state


def _cfg(tmp_path: Path, workload: str = TINY, **extra: Any) -> SearchConfig:
    # baseline_cache_dir left at its default, STORAGE_PATH/baseline_cache: a failed
    # preflight must not even create the storage folder (except the baseline cache
    # when a baseline was made)
    return SearchConfig.create(workload=workload, storage_path=str(tmp_path / "res"), name="pf", **extra)


def _tiny_score(state: dict[str, torch.Tensor]) -> float:
    workload = TinyWorkload()
    model = workload.build_model()
    model.load_state_dict(state)
    return workload.evaluate(model, "val")


@pytest.mark.parametrize(
    ("workload", "error", "match"),
    [
        ("bad_build", WorkloadError, r"workload '.*bad_build': build_model\(\) failed: RuntimeError: no such "
                                     r"layer: Conv9d"),
        ("eval_raises", WorkloadError, r"evaluate\(model, 'val'\) failed on a freshly built model: "
                                       r"RuntimeError: mat1 and mat2"),
        ("nan_score", WorkloadError, r"nan_score: evaluate\(\) returned score=nan"),
        ("tensor_score", WorkloadError, r"tensor_score: evaluate\(\) returned tensor"),
        ("no_prunable", ConfigError, "selects no module"),
    ],
)
def test_bad_workload_fails_before_anything_is_written(tmp_path, no_ray, workload, error, match) -> None:
    TRAININGS.clear()
    with pytest.raises(error, match=match) as info:
        run_search(_cfg(tmp_path, HERE + workload))
    if workload == "bad_build":
        assert isinstance(info.value.__cause__, RuntimeError)  # chained
    assert not (tmp_path / "res").exists()
    assert TRAININGS == []  # failed before any baseline training


def test_bad_test_split_fails_before_the_baseline_is_trained(tmp_path, no_ray) -> None:
    TRAININGS.clear()
    with pytest.raises(ConfigError, match="test_split='tset'"):
        run_search(_cfg(tmp_path, test_split="tset"))
    assert TRAININGS == [] and not (tmp_path / "res").exists()


def test_mismatched_weights_list_the_keys_and_write_nothing(tmp_path, no_ray, weights) -> None:
    _, state = weights
    bad = {k: v for k, v in state.items() if k != "2.bias"}
    bad["0.weight"] = torch.zeros(4, 6)
    path = tmp_path / "resnet18.pt"
    torch.save(bad, path)
    TRAININGS.clear()
    with pytest.raises(WorkloadError) as info:
        run_search(_cfg(tmp_path, pretrained=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "missing keys (1): 2.bias" in msg
    assert "shape mismatches (1): 0.weight (weights (4, 6), model (16, 6))" in msg
    assert not (tmp_path / "res").exists() and TRAININGS == []


def test_lr_rewinding_from_weights_of_unknown_schedule_is_refused(tmp_path, no_ray, weights) -> None:
    """'rewind' replays the baseline's training lrs, which did not train the user's weights."""
    path, _ = weights
    with pytest.raises(ConfigError, match=r"lr_schedules=\['cosine', 'rewind'\]: 'rewind' replays"):
        run_search(_cfg(tmp_path, pretrained=str(path), lr_schedules=["cosine", "rewind"]))
    assert not (tmp_path / "res").exists()

    cfg = _cfg(tmp_path, HERE + "knows_its_schedule", pretrained=str(path), lr_schedules=["cosine", "rewind"])
    assert check_workload(cfg).higher_is_better  # a workload that knows the lrs may rewind
    assert check_workload(_cfg(tmp_path, lr_schedules=["rewind"])).higher_is_better  # trained: fine


def test_distillation_needs_a_finetune_that_takes_it(tmp_path, no_ray) -> None:
    TRAININGS.clear()
    with pytest.raises(ConfigError, match=r"distill_weights=\[0.0, 0.5\]: workload .*no_distill.* has a "
                                          r"finetune\(\) without a distill parameter"):
        run_search(_cfg(tmp_path, HERE + "no_distill", distill_weights=[0, 0.5]))
    assert TRAININGS == [] and not (tmp_path / "res").exists()
    # weight 0 only never distils; the built-in workload class takes the keyword
    assert check_workload(_cfg(tmp_path, HERE + "no_distill", distill_weights=[0])).higher_is_better
    assert check_workload(_cfg(tmp_path, distill_weights=[0.5])).higher_is_better


def test_weights_file_that_is_no_state_dict_is_named(tmp_path, no_ray) -> None:
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "acc": 0.9}, path)
    with pytest.raises(WorkloadError, match=rf"pretrained weights '{path}' are not a state dict"):
        run_search(_cfg(tmp_path, pretrained=str(path)))
    assert not (tmp_path / "res").exists()


def test_missing_weights_file_is_a_config_error(tmp_path, monkeypatch, no_ray, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"pretrained='gone\.pt': no such file: '{tmp_path / 'gone.pt'}'"):
        SearchConfig.create(pretrained="gone.pt")
    assert main(["--pretrained", "gone.pt", "--storage-path", str(tmp_path / "res")]) == 2
    assert "pretrained='gone.pt'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a file"):
        SearchConfig.create(pretrained=str(tmp_path))
    assert not (tmp_path / "res").exists()


def test_pretrained_flag_parses_to_an_absolute_path(tmp_path, monkeypatch, weights) -> None:
    path, _ = weights
    monkeypatch.chdir(tmp_path)
    cfg, _ = parse_config(["--pretrained", path.name, "--workload", TINY])
    assert cfg.pretrained == str(path.resolve())
    assert parse_config(["--pretrained", "none"])[0].pretrained is None
    assert SearchConfig.create().pretrained is None
    assert cfg.updated(seed=1).pretrained == cfg.pretrained  # stable through a dump / re-create
    # it travels to every trial, the finalists' included
    assert fixed_config(cfg)["pretrained"] == cfg.pretrained
    assert final_fixed(fixed_config(cfg), "val")["pretrained"] == cfg.pretrained
    assert "your trained model" in " ".join(
        a.help for a in __import__("tune_prune.search.cli", fromlist=["x"]).build_parser()._actions
        if "--pretrained" in a.option_strings)


def test_preflight_uses_the_weights_and_trains_nothing(tmp_path, weights) -> None:
    path, state = weights
    TRAININGS.clear()
    lines: list[str] = []
    cfg = _cfg(tmp_path, pretrained=str(path))
    checked = check_workload(cfg, lines.append)
    assert checked.higher_is_better and checked.select_split == "val"
    score = _tiny_score(state)
    assert any(f"dense baseline tiny: your weights from {path}, val score {score:.4f} (not trained)" in ln
               for ln in lines), lines
    assert TRAININGS == []
    (meta,) = (tmp_path / "res" / "baseline_cache").glob("*.json")
    info = json.loads(meta.read_text())
    assert info["val_score"] == score and info["pretrained"] == str(path)
    assert info["pretrained_sha256"] == state_dict_digest(state)
    assert not (tmp_path / "res" / "pf").exists()  # preflight writes no experiment folder


@pytest.mark.parametrize("pretrained", [False, True])
def test_models_are_moved_to_the_workload_device_before_evaluate(tmp_path, weights, pretrained) -> None:
    """The fresh model and the baseline (trained or loaded) reach evaluate on workload.device."""
    path, _ = weights
    cfg = _cfg(tmp_path, HERE + "device_check", pretrained=str(path) if pretrained else None)
    assert check_workload(cfg).higher_is_better


def test_trial_starts_from_the_weights(tmp_path, weights) -> None:
    """The trial body (schedule._run_pruning) applies fixed['pretrained'] and trains no baseline."""
    path, state = weights
    cfg = _cfg(tmp_path, pretrained=str(path), finetune_epochs=[0.25], lr_schedules=["cosine"],
               test_split=None)
    params = {"generator": "agp", "pruner": "level", "mode__level": "global", "total_iteration": 1,
              "reset_weight": False, "finetune_epochs": 0.25, "lr": 0.01, "lr_schedule": "cosine"}
    config = {"fixed": fixed_config(cfg, True), **define_space(optuna.trial.FixedTrial(params), cfg)}
    TRAININGS.clear()
    rows = run_schedule(config)
    assert TRAININGS == []
    assert rows[-1]["baseline_score"] == _tiny_score(state)
    # without the weights the same trial trains (and reports) its own baseline
    config["fixed"]["pretrained"] = None
    plain = run_schedule(config)
    assert TRAININGS == [0] and plain[-1]["baseline_score"] != rows[-1]["baseline_score"]


@pytest.mark.slow
def test_search_from_pretrained_weights_reports_their_score(tmp_path, monkeypatch) -> None:
    """A real search (Ray, 2 trials, digits) from the user's weights: no baseline is trained,
    every trial reports the weights' score as the dense baseline, the best model exports."""
    import ray

    from tune_prune.export import load
    from tune_prune.workloads.digits import DigitsWorkload

    options = {"baseline_epochs": 1.0}
    digits = DigitsWorkload(**options)
    model = digits.train_baseline(seed=5)  # "the user's model": not the seed-0 baseline the search would train
    path = tmp_path / "my_digits.pt"
    torch.save(model.state_dict(), path)
    score = digits.evaluate(model, "val")

    def no_training(self, seed=0):
        raise AssertionError("the driver trained a baseline")

    monkeypatch.setattr(DigitsWorkload, "train_baseline", no_training)
    cfg = SearchConfig.create(
        workload="digits", workload_options=options, pretrained=str(path), storage_path=str(tmp_path / "res"),
        name="mine", generators=["agp"], min_iterations=1, max_iterations=1, finetune_epochs=[0.1],
        early_stopping="none", num_samples=2, max_concurrent=2, seed=0, include_dashboard=False,
        export_dir=str(tmp_path / "export"),
    )
    lines: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = run_search(cfg, lines.append)
    finally:
        ray.shutdown()
    assert any(f"your weights from {path}, val score {score:.4f} (not trained)" in ln for ln in lines), lines
    assert out.num_errors == 0 and len(out.best) == 2
    assert (out.table["baseline_score"] == score).all(), out.table["baseline_score"]
    cache = tmp_path / "res" / "baseline_cache"
    assert not list(cache.glob("*.pt"))  # no trial trained (and cached) a baseline of its own
    assert json.loads(next(cache.glob("*.json")).read_text())["pretrained"] == str(path)
    assert out.export.get("status") == "exported", out.export
    exported = load(out.export["out_dir"])
    assert abs(DigitsWorkload(**options).evaluate(exported.to(digits.device), "val") - out.best.iloc[0]["score"]) < 1e-6
