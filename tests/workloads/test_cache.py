"""Baseline cache: trains once, stores a state_dict + JSON, survives races and bad files."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
from pathlib import Path

import torch

from tests.workloads.fake_factory import CountingDigits, child_load
from tune_prune.workloads import load_or_train_baseline, read_baseline_metadata


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_hit_avoids_retraining(tmp_path: Path) -> None:
    workload = CountingDigits()
    first = load_or_train_baseline(workload, 0, tmp_path)
    second = load_or_train_baseline(workload, 0, tmp_path)
    assert workload.trainings == 1
    assert _same(first, second)
    # a fresh workload object with the same config also hits the cache
    other = CountingDigits()
    assert _same(load_or_train_baseline(other, 0, tmp_path), first)
    assert other.trainings == 0


def test_cache_files_are_state_dict_and_json(tmp_path: Path) -> None:
    workload = CountingDigits()
    model = load_or_train_baseline(workload, 7, tmp_path)
    weights = list(tmp_path.glob("*.pt"))
    assert len(weights) == 1 and "seed7" in weights[0].name
    state = torch.load(weights[0], weights_only=True)  # a plain state_dict, no pickled module
    assert isinstance(state, dict) and state.keys() == model.state_dict().keys()
    meta = json.loads(weights[0].with_suffix(".json").read_text())
    assert meta["seed"] == 7 and meta["workload"] == "counting-digits"
    assert meta["epochs"] == 1.0 and meta["torch_version"] == torch.__version__
    assert 0.0 <= meta["val_score"] <= 1.0
    assert meta["val_score"] == workload.evaluate(model)
    assert read_baseline_metadata(workload, 7, tmp_path) == meta
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_seed_and_config_change_the_key(tmp_path: Path) -> None:
    workload = CountingDigits()
    load_or_train_baseline(workload, 0, tmp_path)
    load_or_train_baseline(workload, 1, tmp_path)
    assert workload.trainings == 2
    changed = CountingDigits(batch_size=32)
    load_or_train_baseline(changed, 0, tmp_path)
    assert changed.trainings == 1
    # the device does not change what is learned, so it is not part of the key
    assert CountingDigits(device="cpu").cache_key() == workload.cache_key()
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_corrupt_cache_entry_is_retrained(tmp_path: Path) -> None:
    workload = CountingDigits()
    load_or_train_baseline(workload, 0, tmp_path)
    next(tmp_path.glob("*.pt")).write_bytes(b"not a checkpoint")
    model = load_or_train_baseline(workload, 0, tmp_path)
    assert workload.trainings == 2
    assert workload.evaluate(model) > 0.5


def test_concurrent_threads_train_once(tmp_path: Path) -> None:
    workload = CountingDigits(delay=0.5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        models = list(pool.map(lambda _: load_or_train_baseline(workload, 0, tmp_path), range(2)))
    assert workload.trainings == 1
    assert _same(*models)


def test_concurrent_processes_train_once(tmp_path: Path) -> None:
    marker = tmp_path / "trained.log"
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(child_load, str(cache), str(marker)) for _ in range(2)]
        sums = [f.result(timeout=120) for f in futures]
    assert len(marker.read_text().splitlines()) == 1  # one process trained, one loaded
    assert sums[0] == sums[1]
