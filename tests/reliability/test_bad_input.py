"""Bad workloads and targets fail before any trial: before Ray starts, before the
experiment folder exists, with a tune_prune error naming the problem (fast)."""

from __future__ import annotations

import pytest

from tune_prune.errors import ConfigError, TunePruneError, WorkloadError
from tune_prune.search.cli import main
from tune_prune.search.config import SearchConfig
from tune_prune.search.runner import preflight, run_search

W = "tests.reliability.workloads:"


@pytest.mark.parametrize(
    ("workload", "kind", "error", "match"),
    [
        ("tensor_score", "weights", WorkloadError, r"tensor_score: evaluate\(\) returned tensor"),
        ("string_score", "weights", WorkloadError, r"returned '0.9' \(type str\)"),
        ("nan_score", "weights", WorkloadError, "score=nan"),
        ("no_prunable", "weights", ConfigError, "selects no module"),
        ("linear_only", "channels", ConfigError, "selects no module"),
    ],
)
def test_bad_workload_fails_before_any_trial(tmp_path, no_ray, workload, kind, error, match) -> None:
    cfg = SearchConfig.create(workload=W + workload, sparsity_kind=kind, storage_path=str(tmp_path / "res"),
                              name="bad", workload_options={"baseline_epochs": 0.1},
                              baseline_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(error, match=match) as info:
        run_search(cfg)
    if error is ConfigError:
        assert f"workload={W + workload!r}" in str(info.value)
        assert f"sparsity_kind={kind!r}" in str(info.value)
    assert not (tmp_path / "res" / "bad").exists()  # nothing written for the experiment


def test_linear_only_model_is_fine_for_weight_pruning(tmp_path) -> None:
    cfg = SearchConfig.create(workload=W + "linear_only", workload_options={"baseline_epochs": 0.1},
                              baseline_cache_dir=str(tmp_path / "cache"))
    assert preflight(cfg) is True


def test_bad_workload_through_cli_is_exit_2_or_1_with_message(tmp_path, no_ray, capsys) -> None:
    code = main(["--workload", W + "no_prunable", "--storage-path", str(tmp_path), "--name", "x",
                 "--workload-option", "baseline_epochs=0.1", "--baseline-cache-dir", str(tmp_path / "c")])
    assert code == 2 and "selects no module" in capsys.readouterr().err
    code = main(["--workload", W + "nan_score", "--storage-path", str(tmp_path), "--name", "y",
                 "--workload-option", "baseline_epochs=0.1", "--baseline-cache-dir", str(tmp_path / "c")])
    assert code == 1 and "score=nan" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("target", ["0", "0.0", "-0.1", "1", "1.0", "1.5", "nan", "inf"])
def test_target_sparsity_out_of_range(tmp_path, no_ray, capsys, target) -> None:
    with pytest.raises(ConfigError, match="target_sparsity"):
        SearchConfig.create(target_sparsity=float(target))
    code = main(["--target-sparsity", target, "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "target_sparsity" in err and target.rstrip("0").rstrip(".") in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_workload_module_is_a_config_error(tmp_path, no_ray) -> None:
    cfg = SearchConfig.create(workload="no_such_module_xyz:factory", storage_path=str(tmp_path))
    with pytest.raises(TunePruneError, match="no_such_module_xyz"):
        run_search(cfg)
    assert list(tmp_path.iterdir()) == []
