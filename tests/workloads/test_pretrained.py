"""Pretrained weights instead of a trained baseline (Workload.pretrained, apply_pretrained).

The tiny in-memory workload here is also the one tests/search/test_preflight.py names as
``tests.workloads.test_pretrained:tiny``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads import load_or_train_baseline, read_baseline_metadata
from tune_prune.workloads.base import (
    ClassificationWorkload,
    InMemorySplits,
    TrainConfig,
    apply_pretrained,
    baseline_cache_key,
    config_hash,
    state_dict_digest,
)

#: Seeds ``TinyWorkload.train_baseline`` was called with, in this process.
TRAININGS: list[int] = []


class TinyWorkload(InMemorySplits, ClassificationWorkload):
    """Six features, three classes, a two-layer MLP: a baseline trains in milliseconds."""

    name = "tiny"

    def __init__(self, baseline_epochs: float = 1.0, **_: Any) -> None:
        self.config = TrainConfig(batch_size=32, eval_batch_size=256, baseline_epochs=baseline_epochs,
                                  device="cpu")
        self.device = torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        self._data = {}
        for split, n in (("train", 256), ("val", 128), ("test", 128)):
            x = torch.randn(n, 6, generator=g)
            self._data[split] = (x, x[:, :3].argmax(dim=1))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def train_baseline(self, seed: int = 0) -> nn.Module:
        TRAININGS.append(seed)
        return super().train_baseline(seed)


def tiny(**overrides: Any) -> TinyWorkload:
    return TinyWorkload(**overrides)


def trained_state(seed: int = 7, epochs: float = 2.0) -> dict[str, torch.Tensor]:
    """Weights unlike any baseline the workload would train itself (other seed and budget)."""
    workload = TinyWorkload()
    torch.manual_seed(seed)
    model = workload.build_model()
    ClassificationWorkload.finetune(workload, model, epochs, 0.1, seed)  # unaffected by no_training
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = trained_state()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture
def no_training(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError("the baseline was trained / fine-tuned")

    monkeypatch.setattr(TinyWorkload, "train_baseline", boom)
    monkeypatch.setattr(TinyWorkload, "finetune", boom)


def _equal(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k].cpu(), state[k]) for k in own)


def test_pretrained_file_is_the_baseline_and_nothing_is_trained(tmp_path, weights, no_training) -> None:
    path, state = weights
    workload = apply_pretrained(TinyWorkload(), path)
    cache = tmp_path / "cache"
    model = load_or_train_baseline(workload, 0, cache)
    assert _equal(model, state)
    meta = read_baseline_metadata(workload, 0, cache)
    assert meta is not None
    assert meta["pretrained"] == str(path) and meta["epochs"] == 0 and meta["train_seconds"] == 0
    assert meta["pretrained_sha256"] == state_dict_digest(state)
    assert meta["val_score"] == workload.evaluate(model, "val")
    assert meta["val_score"] > 0.6  # the file's trained weights, not a fresh init (about 1/3)
    assert not list(cache.glob("*.pt"))  # no copy of the user's weights


def test_second_load_reads_the_score_from_the_metadata(tmp_path, weights, no_training, monkeypatch) -> None:
    path, state = weights
    cache = tmp_path / "cache"
    load_or_train_baseline(apply_pretrained(TinyWorkload(), path), 0, cache)

    def no_eval(self, model, split="val"):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(TinyWorkload, "evaluate", no_eval)
    again = load_or_train_baseline(apply_pretrained(TinyWorkload(), path), 0, cache)
    assert _equal(again, state)


def test_state_dict_in_memory_and_checkpoint_wrapper(tmp_path, weights, no_training) -> None:
    path, state = weights
    from_dict = apply_pretrained(TinyWorkload(), state)
    assert _equal(load_or_train_baseline(from_dict, 0, tmp_path / "c1"), state)
    assert read_baseline_metadata(from_dict, 0, tmp_path / "c1")["pretrained"] == "<dict>"
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"epoch": 90, "state_dict": state, "optimizer": {"lr": 0.1}}, ckpt)
    wrapped = apply_pretrained(TinyWorkload(), ckpt)
    assert _equal(load_or_train_baseline(wrapped, 0, tmp_path / "c2"), state)
    # same weights, same key, whatever they came in
    file_key = apply_pretrained(TinyWorkload(), path).cache_key()
    assert from_dict.cache_key() == wrapped.cache_key() == file_key


def test_cache_key_depends_on_the_weights(tmp_path, weights) -> None:
    path, state = weights
    plain = TinyWorkload()
    extra = f"{TinyWorkload.__module__}.{TinyWorkload.__qualname__}:{TinyWorkload.model_version}"
    assert plain.cache_key() == config_hash(plain.config, extra)  # unchanged without weights
    assert baseline_cache_key(plain) == plain.cache_key()  # existing caches stay valid
    other = trained_state(seed=8)
    keys = {plain.cache_key(), apply_pretrained(TinyWorkload(), path).cache_key(),
            apply_pretrained(TinyWorkload(), other).cache_key()}
    assert len(keys) == 3

    class OwnKey(TinyWorkload):  # a subclass whose cache_key() leaves the digest out
        def cache_key(self) -> str:
            return "fixed"

    a, b = apply_pretrained(OwnKey(), state), apply_pretrained(OwnKey(), other)
    assert a.cache_key() == b.cache_key()
    assert baseline_cache_key(a) != baseline_cache_key(b)  # the cache still tells them apart


def test_changed_file_is_loaded_and_scored_again(tmp_path, weights, no_training) -> None:
    path, _ = weights
    workload = apply_pretrained(TinyWorkload(), path)
    cache = tmp_path / "cache"
    first_key = workload.cache_key()
    load_or_train_baseline(workload, 0, cache)
    new = trained_state(seed=9, epochs=0.5)
    torch.save(new, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert workload.cache_key() != first_key
    assert _equal(load_or_train_baseline(workload, 0, cache), new)
    assert len(list(cache.glob("*.json"))) == 2


def test_class_attribute_pretrained_needs_no_apply(tmp_path, weights, no_training) -> None:
    path, state = weights

    class Mine(TinyWorkload):
        pretrained = str(path)

    assert _equal(load_or_train_baseline(Mine(), 0, tmp_path / "cache"), state)


def test_mismatched_state_dict_lists_the_keys_and_writes_nothing(tmp_path, weights) -> None:
    _, state = weights
    bad = dict(state)
    del bad["2.bias"]
    bad["head.weight"] = torch.zeros(3, 3)
    bad["0.weight"] = torch.zeros(5, 6)
    path = tmp_path / "other_model.pt"
    torch.save(bad, path)
    workload = apply_pretrained(TinyWorkload(), path)
    cache = tmp_path / "cache"
    with pytest.raises(WorkloadError) as info:
        load_or_train_baseline(workload, 0, cache)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing keys (1): 2.bias" in msg
    assert "unexpected keys (1): head.weight" in msg
    assert "shape mismatches (1): 0.weight (weights (5, 6), model (16, 6))" in msg
    assert not cache.exists()


def test_data_parallel_prefix_gets_a_hint(tmp_path, weights) -> None:
    _, state = weights
    workload = apply_pretrained(TinyWorkload(), {f"module.{k}": v for k, v in state.items()})
    with pytest.raises(WorkloadError, match=r"unexpected keys \(4\): module\.0\.weight.*'module\.' prefix"):
        load_or_train_baseline(workload, 0, tmp_path / "cache")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("list", r"are not a state dict .*got a list"),
        ("checkpoint", r"are not a state dict .*entries \['epoch', 'net'\] are not tensors"),
        ("garbage", r"cannot load pretrained weights .*weights_only=True"),
        ("code", r"cannot load pretrained weights .*whole pickled model is refused"),
    ],
)
def test_file_that_is_not_a_state_dict_is_named(tmp_path, content, match) -> None:
    path = tmp_path / f"{content}.pt"
    if content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "checkpoint":  # weights under a key nobody could guess
        torch.save({"epoch": 3, "net": {"w": "not a tensor"}}, path)
    elif content == "garbage":
        path.write_bytes(b"this is no checkpoint")
    else:  # something weights_only refuses to unpickle, as it refuses a pickled model
        torch.save({"w": torch.zeros(1), "f": functools.partial(max)}, path)
    workload = apply_pretrained(TinyWorkload(), path)
    with pytest.raises(WorkloadError, match=match) as info:
        load_or_train_baseline(workload, 0, tmp_path / "cache")
    assert str(path) in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_missing_file_and_bad_values(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(WorkloadError, match=f"{missing}.*do not exist"):
        apply_pretrained(TinyWorkload(), missing)

    class Gone(TinyWorkload):
        pretrained = str(missing)

    with pytest.raises(WorkloadError, match=f"{missing}.*do not exist"):
        load_or_train_baseline(Gone(), 0, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"model\.state_dict\(\)"):
        apply_pretrained(TinyWorkload(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="got a int"):
        apply_pretrained(TinyWorkload(), 3)
    workload = TinyWorkload()
    assert apply_pretrained(workload, None) is workload and workload.pretrained is None


def test_non_finite_score_of_the_weights_is_not_recorded(tmp_path, weights, monkeypatch) -> None:
    path, _ = weights
    monkeypatch.setattr(TinyWorkload, "evaluate", lambda self, model, split="val": float("nan"))
    workload = apply_pretrained(TinyWorkload(), path)
    with pytest.raises(WorkloadError, match="score=nan"):
        load_or_train_baseline(workload, 0, tmp_path / "cache")
    assert read_baseline_metadata(workload, 0, tmp_path / "cache") is None


def test_metadata_is_json_with_the_digest(tmp_path, weights) -> None:
    path, state = weights
    workload = apply_pretrained(TinyWorkload(), path)
    load_or_train_baseline(workload, 3, tmp_path / "cache")
    (meta,) = (tmp_path / "cache").glob("*.json")
    info = json.loads(meta.read_text())
    assert info["seed"] == 3 and info["cache_key"] == baseline_cache_key(workload)
    assert info["pretrained_sha256"] == state_dict_digest(torch.load(path, weights_only=True))
