"""Crash mid-write: checkpoints, exports, the search config and result tables (fast).

A crash is simulated by making torch.save write part of a file and raise, or os.replace
raise, or by leaving the state a SIGKILL between two renames would leave. Each time the
previous checkpoint/export must be intact and load, and no partial file may be used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tune_prune import export as E
from tune_prune.export import load_pruned
from tune_prune.search import results as R
from tune_prune.search import runner
from tune_prune.search.reporting import RESULT_DIR, Reporter
from tune_prune.workloads import get_workload

from ._helpers import Recorder, snapshot


class Crash(Exception):
    pass


def _half_save(real_save):
    """torch.save that writes half of the real bytes to the target, then 'crashes'."""

    def save(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(f, "write"):
            f.write(data)
        else:
            Path(f).write_bytes(data)
        raise Crash("killed mid-write")

    return save


@pytest.fixture(scope="module")
def digits():
    return get_workload("digits", baseline_epochs=0.0)


def _model(digits, seed: int):
    torch.manual_seed(seed)
    return digits.build_model().eval()


def _export(digits, out: Path, seed: int) -> None:
    E.export_model(out, _model(digits, seed), workload="digits",
                   workload_options={"baseline_epochs": 0.0}, onnx=False)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != name)


def test_export_crash_mid_write_keeps_previous_export(tmp_path, digits, monkeypatch) -> None:
    out = tmp_path / "export"
    _export(digits, out, seed=1)
    before = snapshot(out)
    monkeypatch.setattr(torch, "save", _half_save(torch.save))
    with pytest.raises(Crash):
        _export(digits, out, seed=2)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert _same_weights(E.load(out), _model(digits, 1))
    assert _leftovers(tmp_path, "export") == []  # the half-written temp dir is gone


def test_export_rename_failure_rolls_back(tmp_path, digits, monkeypatch) -> None:
    out = tmp_path / "export"
    _export(digits, out, seed=1)
    before = snapshot(out)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new export moving in
            raise Crash("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        _export(digits, out, seed=2)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert _same_weights(E.load(out), _model(digits, 1))


def test_export_killed_between_renames_is_recovered_on_load(tmp_path, digits) -> None:
    out = tmp_path / "export"
    _export(digits, out, seed=1)
    os.replace(out, tmp_path / ".export.old")  # what a SIGKILL after the first rename leaves
    assert _same_weights(E.load(out), _model(digits, 1))
    assert (out / E.SPEC_FILE).is_file() and not (tmp_path / ".export.old").exists()


def test_truncated_export_never_loads(tmp_path, digits) -> None:
    out = tmp_path / "export"
    _export(digits, out, seed=1)
    weights = out / E.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(E.ExportError, match="model.pt"):
        E.load(out)


def test_checkpoint_crash_mid_write_keeps_previous_checkpoint(tmp_path, digits, monkeypatch) -> None:
    """Reporter.report writes the checkpoint in a private temp dir; Tune only ever sees
    complete ones. A crash while writing reports nothing and leaves no temp dir."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rec = Recorder(tmp_path / "ckpts")
    (tmp_path / "ckpts").mkdir()
    fixed = {"target_sparsity": 0.8, "sparsity_tolerance": 0.02, "higher_is_better": True}
    trial = {"generator": "agp", "pruner": "level", "mode": "normal", "finetune_epochs": 0.1}
    reporter = Reporter(fixed, trial, {"score": 0.9, "params": 1.0, "macs": 1.0}, rec)
    meas = {"score": 0.5, "sparsity": 0.4}
    reporter.report(dict(meas), None, model=_model(digits, 1), masks={})
    before = snapshot(rec.ckpts[0])
    monkeypatch.setattr(torch, "save", _half_save(torch.save))
    with pytest.raises(Crash):
        reporter.report(dict(meas, sparsity=0.8), None, model=_model(digits, 2), masks={})
    monkeypatch.undo()
    assert len(rec.rows) == 1  # the crashed iteration was never reported
    assert snapshot(rec.ckpts[0]) == before
    assert list((tmp_path / "tmp").iterdir()) == []
    restored = load_pruned(rec.ckpts[0] / RESULT_DIR, digits)
    assert _same_weights(restored.model, _model(digits, 1))


def test_unreported_checkpoint_folder_is_never_picked(tmp_path) -> None:
    """Tune copies a checkpoint folder before it reports; a worker killed during the copy
    leaves a checkpoint of an iteration that was never reported."""
    exp = tmp_path / "exp"
    trial = exp / "trial_t1"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"generator": "agp"}))
    rows = [{"trial_id": "t1", "iteration": i, "training_iteration": i, "objective": 0.1 * i,
             "finetune_epochs_cum": i, "schedule_done": False} for i in (1, 2)]
    (trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for i in range(3):  # checkpoint_000002: the partial, unreported one
        (trial / f"checkpoint_{i:06d}").mkdir()
    table = R.collect(exp)
    assert set(table["checkpoint_path"]) == {str(trial / "checkpoint_000001")}
    best = R.best_per_trial(table)
    assert best.iloc[0]["best_checkpoint"] == str(trial / "checkpoint_000001")


def test_search_config_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / runner.CONFIG_FILE
    runner.atomic_write_text(path, json.dumps({"seed": 1}))

    def replace(src, dst):
        raise Crash("killed before the rename")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        runner.atomic_write_text(path, json.dumps({"seed": 2}))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"seed": 1}
    assert [p.name for p in tmp_path.iterdir()] == [runner.CONFIG_FILE]
