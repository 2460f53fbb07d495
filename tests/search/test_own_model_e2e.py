"""Issue 12's end-to-end: a user's own file (small CNN with BatchNorm, shuffled
DataLoaders over a TensorDataset, weights pretrained and saved to a file) searched from
the CLI as ``--workload FILE.py:factory``, exported, and reloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tune_prune.search import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model.py"


@pytest.mark.slow
def test_cli_searches_a_user_file_and_the_export_reloads(tmp_path, monkeypatch, capsys) -> None:
    import ray

    from tune_prune.export import load
    from tune_prune.workloads import get_workload

    weights = tmp_path / "weights" / "own.pt"
    monkeypatch.chdir(tmp_path)  # the spec's file path is relative to the user's folder
    rel = Path("examples") / "own_model.py"
    rel.parent.mkdir()
    rel.write_text(EXAMPLE.read_text())
    argv = ["--workload", f"{rel}:workload", "--workload-option", f"weights={weights}",
            "--num-samples", "2", "--target-sparsity", "0.5", "--max-iterations", "2",
            "--finetune-budget", "0.5", "--storage-path", str(tmp_path / "res"), "--name", "own",
            "--num-cpus", "2", "--export", str(tmp_path / "best"), "--no-include-dashboard"]
    try:
        code = cli.main(argv)
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert code == 0, out
    assert weights.exists()  # the factory pretrained the user's weights once
    assert "(not trained)" in out  # the search scored the user's weights, trained no baseline

    exp = tmp_path / "res" / "own"
    config = json.loads((exp / "search_config.json").read_text())
    assert config["workload"] == f"{tmp_path / rel}:workload"  # made absolute for the workers
    live = pd.read_csv(exp / "trials_live.csv", dtype={"trial_id": str})
    assert live["trial_id"].nunique() == 2 and len(live) >= 2

    model = load(tmp_path / "best")  # rebuilds the user's architecture from the spec
    spec = json.loads((tmp_path / "best" / "spec.json").read_text())
    sys.modules.pop("own_model", None)
    workload = get_workload(spec["workload"], **spec["workload_options"])
    score = workload.evaluate(model, "test")
    assert 0.0 < score <= 1.0
    masks = torch.load(tmp_path / "best" / "masks.pt", weights_only=True)
    kept = sum(int(m.sum()) for per in masks.values() for m in per.values() if m.dim() > 1)
    total = sum(m.numel() for per in masks.values() for m in per.values() if m.dim() > 1)
    assert kept / total < 0.6  # the export is pruned to about the target
