"""Export and reload of a pruned model: weights_only loading, speedup history replayed."""

from __future__ import annotations

import json

import pytest
import torch

from tune_prune.errors import ExportError
from tune_prune.export import export_model, load, read_spec
from tune_prune.pruning import AGPTaskGenerator, L1NormPruner, PruningScheduler
from tune_prune.pruning.tools._io import model_history
from tune_prune.workloads import get_workload


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A digits model pruned in two speedup steps (so its history has several steps)."""
    workload = get_workload("digits")
    torch.manual_seed(0)
    model = workload.build_model()
    x = workload.dummy_input()
    scheduler = PruningScheduler(
        L1NormPruner(None, None, mode="dependency_aware", dummy_input=x),
        AGPTaskGenerator(2, model, [{"op_types": ["Conv2d"], "sparsity": 0.5}],
                         log_dir=tmp_path_factory.mktemp("log")),
        finetuner=workload.finetuner(epochs=0.2, lr=0.01, seed=0), speedup=True, dummy_input=x)
    scheduler.compress()
    _, best, masks, _, _ = scheduler.get_best_result()  # no evaluator: the latest task
    return workload, best, masks


def test_export_roundtrip_replays_multi_step_speedup_history(tmp_path, pruned):
    workload, model, masks = pruned
    history = model_history(model)
    assert len(history) >= 2
    out = export_model(tmp_path / "export", model, workload="digits", masks=masks, history=history,
                       dummy_input=workload.dummy_input(), metrics={"score": 1.0})
    spec = read_spec(out)
    assert spec["workload"] == "digits" and spec["metrics"] == {"score": 1.0}
    reloaded = load(out)
    x = workload.dummy_input()
    model.eval()
    assert torch.allclose(reloaded(x), model(x), atol=1e-6)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert not list(tmp_path.glob(".export*"))  # no temp dirs left behind


def test_onnx_file_is_valid_when_onnx_is_installed(tmp_path, pruned):
    onnx = pytest.importorskip("onnx")
    workload, model, masks = pruned
    out = export_model(tmp_path / "e", model, workload="digits", masks=masks,
                       history=model_history(model), dummy_input=workload.dummy_input())
    assert read_spec(out)["onnx"] == "model.onnx"
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))


def test_onnx_file_runs_at_any_batch_size_in_onnx_runtime(tmp_path, pruned):
    ort = pytest.importorskip("onnxruntime")
    workload, model, masks = pruned
    out = export_model(tmp_path / "e", model, workload="digits", masks=masks,
                       history=model_history(model), dummy_input=workload.dummy_input())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model.eval()
    for batch in (1, 5):  # neither is the dummy input's batch size
        x = workload.dummy_input()[:1].repeat(batch, *[1] * (workload.dummy_input().dim() - 1))
        x = x + torch.randn_like(x)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-5)


def test_bad_export_dirs_name_the_problem(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no spec.json"):
        load(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "spec.json").write_text("{not json")
    (broken / "model.pt").write_bytes(b"")
    with pytest.raises(ExportError, match="not valid JSON"):
        load(broken)
    (broken / "spec.json").write_text(json.dumps({"format_version": 1, "workload": "digits"}))
    with pytest.raises(ExportError, match="cannot load the weights"):
        load(broken)


def test_export_refuses_to_overwrite_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_model(foreign, torch.nn.Linear(2, 2), workload="digits")
    assert (foreign / "notes.txt").read_text() == "keep me"
