"""One folder format for a pruned model: every folder tune_prune writes or wrote loads alike.

``tune_prune.export.load_pruned`` must read an export, a search iteration's ``result/``,
the layouts of tune_prune 0.1 (rebuilt here by hand, no version field), a task
generator's ``best_result``/``intermediate_result`` and a scheduler's saved state, each
giving the same weights and masks; a crash while writing must leave the previous
folder; a sped-up model must round-trip; a pickled module must be refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from tune_prune import atomic
from tune_prune.errors import ExportError
from tune_prune.export import (
    FORMAT_VERSION,
    MASKS_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    PrunedFolderError,
    export_model,
    load,
    load_pruned,
    read_spec,
    save_pruned,
)
from tune_prune.export import folder as F
from tune_prune.pruning import AGPTaskGenerator, L1NormPruner, LevelPruner, PruningScheduler
from tune_prune.pruning.tools._io import model_history
from tune_prune.workloads import get_workload

from .reliability._helpers import assert_masks_equal, snapshot


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def workload():
    return get_workload("digits", baseline_epochs=0.0)


def _run(workload, log_dir: Path, compact: bool):
    """Two AGP tasks on digits (no fine-tuning: quick): masked (LevelPruner) or sped up
    channel by channel (L1, dependency-aware), keeping every folder the generator writes."""
    torch.manual_seed(0)
    x = workload.dummy_input()
    if compact:
        pruner = L1NormPruner(None, None, mode="dependency_aware", dummy_input=x)
        config = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    else:
        pruner = LevelPruner(None, None)
        config = [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.6}]
    generator = AGPTaskGenerator(2, workload.build_model(), config, log_dir=log_dir,
                                 keep_intermediate_result=True)
    scheduler = PruningScheduler(pruner, generator, speedup=compact, dummy_input=x)
    scheduler.compress()
    task_id, model, masks, _, _ = scheduler.get_best_result()  # no evaluator: the latest task
    return scheduler, generator, task_id, model, masks


@pytest.fixture(scope="module", params=["masked", "compact"])
def run(request, workload, tmp_path_factory):
    compact = request.param == "compact"
    scheduler, generator, task_id, model, masks = _run(workload, tmp_path_factory.mktemp("log"), compact)
    if compact:
        assert len(model_history(model)) >= 2 and masks == {}  # two speedups, masks all removed
    else:
        assert model_history(model) == [] and masks and any(bool((m["weight"] == 0).any())
                                                            for m in masks.values())
    state = tmp_path_factory.mktemp("state") / "scheduler"
    scheduler.save_state(state)
    return {"generator": generator, "task_id": task_id, "model": model.eval(), "masks": masks, "state": state,
            "scheduler": scheduler}


def _v1_result_folder(out: Path, model: nn.Module, masks: dict, meta: dict) -> Path:
    """A search iteration's result/ exactly as tune_prune 0.1 wrote it (no version anywhere)."""
    out.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model_state_dict.pth")
    torch.save(masks, out / "masks.pth")
    (out / "speedup_history.json").write_text(json.dumps(model_history(model)))
    (out / "result.json").write_text(json.dumps(meta, indent=2))
    return out


def _v1_export(out: Path, model: nn.Module, masks: dict) -> Path:
    """An export as tune_prune 0.1 wrote it: model.pt, masks.pt, spec.json format_version 1."""
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "model.pt")
    torch.save(masks, out / "masks.pt")
    spec = {"format_version": 1, "workload": "digits", "workload_options": {"baseline_epochs": 0.0},
            "speedup_history": model_history(model), "config": {"generator": "agp"},
            "metrics": {"score": 0.5}, "torch_version": torch.__version__, "onnx": None}
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    return out


def _report_result(workload, model, masks, tmp_path: Path) -> Path:
    """The result/ folder of a real search report (Reporter.report), copied out of the checkpoint."""
    from tune_prune.search.reporting import Reporter

    kept: list[Path] = []

    def report(_metrics, checkpoint_dir: Path) -> None:
        kept.append(tmp_path / "ckpt")
        shutil.copytree(checkpoint_dir, kept[-1])

    fixed = {"target_sparsity": 0.8, "sparsity_tolerance": 0.02, "higher_is_better": True,
             "workload": "digits", "workload_options": {"baseline_epochs": 0.0}}
    trial = {"generator": "agp", "pruner": "level", "mode": "normal", "finetune_epochs": 0.1}
    Reporter(fixed, trial, {"score": 0.9, "params": 1.0, "macs": 1.0}, report).report(
        {"score": 0.5, "sparsity": 0.4, "task_id": 7}, None, model=model, masks=masks)
    return kept[0]


def _assert_same(loaded, model: nn.Module, masks: dict, workload) -> None:
    sa, sb = loaded.model.state_dict(), model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key
    assert_masks_equal(loaded.masks, masks)
    x = workload.dummy_input()
    assert torch.equal(loaded.model(x), model(x))


def test_one_loader_reads_every_folder_with_the_same_weights_and_masks(tmp_path, workload, run) -> None:
    model, masks, generator = run["model"], run["masks"], run["generator"]
    folders = {
        "export": (export_model(tmp_path / "export", model, workload="digits",
                                workload_options={"baseline_epochs": 0.0}, masks=masks, onnx=False), None),
        "search result/": (_report_result(workload, model, masks, tmp_path) / "result", None),
        "search checkpoint": (tmp_path / "ckpt", None),  # the folder holding result/
        "0.1 result/": (_v1_result_folder(tmp_path / "v1_result", model, masks, {"task_id": "7"}), workload),
        "0.1 export": (_v1_export(tmp_path / "v1_export", model, masks), None),
        "generator best_result": (generator.log_dir / "best_result", workload),
        "generator run folder": (generator.log_dir, workload),
        "generator intermediate_result": (generator.log_dir / "intermediate_result" / str(run["task_id"]),
                                          workload.build_model()),
        "scheduler state": (run["state"], workload.build_model),
    }
    for name, (folder, architecture) in folders.items():
        loaded = load_pruned(folder, architecture)
        _assert_same(loaded, model, masks, workload)
        assert loaded.history == json.loads(json.dumps(model_history(model))), name
        assert model_history(loaded.model) == loaded.history, name  # re-saving keeps the history
    # The versions: what is written now is FORMAT_VERSION, 0.1's folders read as version 1.
    assert read_spec(tmp_path / "export")["format_version"] == FORMAT_VERSION == 2
    assert load_pruned(tmp_path / "v1_export").spec["format_version"] == 1
    assert load_pruned(tmp_path / "v1_result", workload).spec["format_version"] == 1
    # What each folder says about itself survives.
    result = load_pruned(tmp_path / "ckpt" / "result")
    assert result.metrics["task_id"] == "7" and result.config["generator"] == "agp"
    assert load_pruned(tmp_path / "v1_result", workload).meta == {"task_id": "7"}
    assert load_pruned(run["state"], workload).metrics["task_id"] == run["task_id"]
    # export.load is load_pruned(...).model
    assert torch.equal(load(tmp_path / "ckpt" / "result")(workload.dummy_input()), model(workload.dummy_input()))


@pytest.mark.parametrize("run", ["compact"], indirect=True)
def test_sped_up_model_round_trips_with_its_history(tmp_path, workload, run) -> None:
    model = run["model"]
    history = model_history(model)
    original = sum(p.numel() for p in workload.build_model().parameters())
    save_pruned(tmp_path / "p", model, run["masks"])  # no workload: the caller gives the architecture
    spec = json.loads((tmp_path / "p" / SPEC_FILE).read_text())
    assert spec["workload"] is None and spec["speedup_history"] == json.loads(json.dumps(history))
    loaded = load_pruned(tmp_path / "p", workload.build_model())
    assert sum(p.numel() for p in loaded.model.parameters()) == sum(p.numel() for p in model.parameters()) < original
    _assert_same(loaded, model, run["masks"], workload)
    # Re-saving the loaded model (it carries the history) round-trips again.
    save_pruned(tmp_path / "again", loaded.model, loaded.masks, workload="digits",
                workload_options={"baseline_epochs": 0.0})
    _assert_same(load_pruned(tmp_path / "again"), model, run["masks"], workload)
    with pytest.raises(PrunedFolderError, match="names no workload"):
        load(tmp_path / "p")  # without a workload name the architecture must be passed
    broken = json.loads((tmp_path / "again" / SPEC_FILE).read_text())
    broken["speedup_history"] = broken["speedup_history"][:1]  # one step short: shapes differ
    (tmp_path / "again" / SPEC_FILE).write_text(json.dumps(broken))
    with pytest.raises(PrunedFolderError, match="cannot load the weights"):
        load_pruned(tmp_path / "again")


def _model(workload, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return workload.build_model().eval()


def _some_masks(model: nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"fc": {"weight": (torch.rand(model.fc.weight.shape, generator=gen) > 0.5).float()}}


@pytest.mark.parametrize("crash_at", [WEIGHTS_FILE, MASKS_FILE, SPEC_FILE])
def test_writer_killed_mid_write_leaves_the_previous_folder(tmp_path, workload, monkeypatch, crash_at) -> None:
    out = tmp_path / "pruned"
    first = _model(workload, 1)
    save_pruned(out, first, _some_masks(first, 1), workload="digits", workload_options={"baseline_epochs": 0.0})
    before = snapshot(out)
    real_write = F.write_file

    def write_half_then_die(path, write, mode="wb"):
        real_write(path, write, mode)
        if Path(path).name == crash_at:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise Crash(f"killed while writing {crash_at}")

    monkeypatch.setattr(F, "write_file", write_half_then_die)
    second = _model(workload, 2)
    with pytest.raises(Crash):
        save_pruned(out, second, _some_masks(second, 2), workload="digits",
                    workload_options={"baseline_epochs": 0.0})
    with pytest.raises(Crash):  # a first write that dies leaves no folder at all
        save_pruned(tmp_path / "fresh", second, {}, workload="digits")
    monkeypatch.undo()
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temp or partial folder
    loaded = load_pruned(out)
    assert all(torch.equal(loaded.model.state_dict()[k], v)
               for k, v in first.state_dict().items() if not k.startswith("fc."))
    assert_masks_equal(loaded.masks, _some_masks(first, 1))


def test_per_iteration_result_writer_is_atomic(tmp_path, workload, monkeypatch) -> None:
    """The search's result/ writer is save_pruned: replacing one whole, or not at all."""
    out = tmp_path / "result"
    save_pruned(out, _model(workload, 1), {}, metrics={"task_id": "1"})
    before = snapshot(out)
    real_replace, calls = atomic.os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder moving in
            raise Crash("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(Crash):
        save_pruned(out, _model(workload, 2), {}, metrics={"task_id": "2"})
    monkeypatch.undo()
    assert snapshot(out) == before and len(calls) == 3  # rolled back by the third rename
    # A kill right after the first rename: the next reader puts the folder back.
    real_replace(out, atomic.old_dir(out))
    assert load_pruned(out, workload).metrics == {"task_id": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


class _Evil(nn.Linear):
    """Unpickling this would run code: the loader must refuse it before it gets the chance."""

    ran = False

    def __setstate__(self, state):
        type(self).ran = True
        super().__setstate__(state)


@pytest.mark.parametrize("layout", ["pruned", "0.1 result/"])
def test_a_pickled_module_instead_of_a_state_dict_is_refused(tmp_path, workload, layout) -> None:
    model = _model(workload, 1)
    if layout == "pruned":
        out = save_pruned(tmp_path / "p", model, {}, workload="digits",
                          workload_options={"baseline_epochs": 0.0})
        weights = out / WEIGHTS_FILE
    else:
        out = _v1_result_folder(tmp_path / "p", model, {}, {})
        weights = out / "model_state_dict.pth"
    torch.save(_Evil(2, 2), weights)  # a whole pickled module, as NNI wrote them
    with pytest.raises(PrunedFolderError, match=rf"{weights.name}.*pickled .*_Evil.*not a state dict") as err:
        load_pruned(out, workload)
    assert isinstance(err.value, ExportError) and "weights_only=False" not in str(err.value)
    assert not _Evil.ran


def test_pickled_masks_are_refused_too(tmp_path, workload) -> None:
    out = save_pruned(tmp_path / "p", _model(workload, 1), {}, workload="digits",
                      workload_options={"baseline_epochs": 0.0})
    torch.save({"fc": _Evil(2, 2)}, out / MASKS_FILE)
    with pytest.raises(PrunedFolderError, match=rf"cannot apply {MASKS_FILE}.*pickled"):
        load_pruned(out)
    assert not _Evil.ran


def test_versions_and_broken_old_folders_name_the_problem(tmp_path, workload) -> None:
    out = save_pruned(tmp_path / "p", _model(workload, 1), {}, workload="digits",
                      workload_options={"baseline_epochs": 0.0})
    spec = json.loads((out / SPEC_FILE).read_text())
    (out / SPEC_FILE).write_text(json.dumps({**spec, "format_version": 3}))
    with pytest.raises(PrunedFolderError, match="format_version 3 .*newer"):
        load_pruned(out)
    del spec["format_version"]  # no version field: read as 1, whose exports always name a workload
    (out / SPEC_FILE).write_text(json.dumps({**spec, "workload": None}))
    with pytest.raises(PrunedFolderError, match="'workload' is missing"):
        load_pruned(out)
    (out / SPEC_FILE).write_text(json.dumps(spec))
    assert load_pruned(out).spec["format_version"] == 1
    (out / MASKS_FILE).unlink()  # 0.1 exports could lack masks.pt; a version-2 folder may not
    assert load_pruned(out).masks == {}
    (out / SPEC_FILE).write_text(json.dumps({**spec, "format_version": 2}))
    with pytest.raises(PrunedFolderError, match=MASKS_FILE):
        load_pruned(out)

    v1 = _v1_result_folder(tmp_path / "v1", _model(workload, 1), {}, {})
    (v1 / "result.json").unlink()  # 0.1 folders without metrics still load
    assert load_pruned(v1, workload).meta == {}
    (v1 / "model_state_dict.pth").write_bytes(b"not a tensor file")
    with pytest.raises(PrunedFolderError, match="model_state_dict.pth"):
        load_pruned(v1, workload)
    (v1 / "speedup_history.json").unlink()
    with pytest.raises(PrunedFolderError, match="speedup_history.json"):
        load_pruned(v1, workload)
    with pytest.raises(PrunedFolderError, match="holds no spec.json"):
        load_pruned(tmp_path, workload)  # a folder that is none of the layouts
    with pytest.raises(ExportError, match="refusing to overwrite"):
        save_pruned(tmp_path, _model(workload, 1), {})


def test_scheduler_state_write_is_atomic_and_recovered(tmp_path, run, monkeypatch) -> None:
    state = tmp_path / "state"
    run["scheduler"].save_state(state)
    before = snapshot(state)
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise Crash("killed after writing tensors.pth")

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Crash):
        run["scheduler"].save_state(state)
    monkeypatch.undo()
    assert snapshot(state) == before and sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    atomic.os.replace(state, atomic.old_dir(state))  # killed between the two renames of a save
    run["scheduler"].save_state(state)  # the next save (or load_state) puts it back first, then replaces it
    assert snapshot(state) == before and sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_atomic_file_writers_keep_the_old_content_on_a_crash(tmp_path) -> None:
    path = tmp_path / "f.json"
    atomic.atomic_write_json({"v": 1}, path)
    atomic.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"

    def half_then_die(fh):
        fh.write(b'{"v": ')
        raise Crash("killed mid-write")

    with pytest.raises(Crash):
        atomic.atomic_write(path, half_then_die)
    with pytest.raises(TypeError):  # not serialisable: nothing is written
        atomic.atomic_write_json({"v": object()}, path)
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "t.txt"]
    atomic.atomic_write_bytes(path, b"{}")
    assert json.loads(path.read_text()) == {}


def test_atomic_dir_restores_a_folder_left_aside(tmp_path) -> None:
    out = tmp_path / "d"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    atomic.os.replace(out, atomic.old_dir(out))  # what a kill between the two renames leaves
    with pytest.raises(Crash), atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("2")
        raise Crash("killed while writing")
    assert (out / "a").read_text() == "1"  # put back before the failed write, not lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("layout", ["current", "0.1"])
def test_export_best_reads_the_checkpoint_result_of_either_release(tmp_path, workload, run, layout) -> None:
    """python -m tune_prune.export on an experiment whose checkpoints hold result/ folders
    written now or by tune_prune 0.1 (a search run before the upgrade)."""
    from tune_prune.search.export_best import export_best

    model, masks = run["model"], run["masks"]
    exp = tmp_path / "exp"
    trial = exp / "trial_t1"
    trial.mkdir(parents=True)
    (exp / "search_config.json").write_text(json.dumps({"workload": "digits",
                                                        "workload_options": {"baseline_epochs": 0.0}}))
    (trial / "params.json").write_text(json.dumps({"generator": "agp"}))
    row = {"trial_id": "t1", "iteration": 1, "training_iteration": 1, "objective": 0.5, "score": 0.5,
           "sparsity": 0.8, "reached_target": True, "finetune_epochs_cum": 1.0, "schedule_done": True}
    (trial / "result.json").write_text(json.dumps(row) + "\n")
    ckpt = trial / "checkpoint_000000"
    if layout == "current":
        shutil.copytree(_report_result(workload, model, masks, tmp_path), ckpt)
    else:
        _v1_result_folder(ckpt / "result", model, masks,
                          {"generator": "agp", "pruner": "level", "task_id": "7", "score": 0.5})
    out = export_best(exp, tmp_path / "export", onnx=False)
    spec = read_spec(out)
    assert spec["config"]["generator"] == "agp" and spec["metrics"]["trial_id"] == "t1"
    assert spec["speedup_history"] == json.loads(json.dumps(model_history(model)))
    _assert_same(load_pruned(out), model, masks, workload)
