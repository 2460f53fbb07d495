"""MNIST-1D workload: offline generation, fixed split, no RNG side effects, pruneability."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.workloads import BUILTIN_WORKLOADS, Workload, get_workload
from tune_prune.workloads.mnist1d import (
    Mnist1dConfig,
    Mnist1dWorkload,
    generate_mnist1d,
    stratified_split,
)

SMALL = {"num_samples": 600, "baseline_epochs": 10.0}  # 360 / 120 / 120, 5 steps an epoch


@pytest.fixture(scope="module")
def small() -> Mnist1dWorkload:
    return Mnist1dWorkload(**SMALL)


@pytest.fixture(scope="module")
def small_baseline(small: Mnist1dWorkload) -> nn.Module:
    threads = torch.get_num_threads()  # module fixtures run before the one-thread fixture
    torch.set_num_threads(1)
    try:
        return small.train_baseline(seed=0)
    finally:
        torch.set_num_threads(threads)


def _np_state_equal(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


# --------------------------------------------------------------------------- data


def test_default_config_gives_4000_2000_2000_2000() -> None:
    cfg = Mnist1dConfig()
    assert (cfg.num_samples, cfg.data_seed, cfg.split_seed) == (10_000, 42, 0)
    assert cfg.split_sizes() == {"train": 4000, "val": 2000, "test": 2000, "select": 2000}
    assert Mnist1dConfig(num_samples=600).split_sizes() == {"train": 240, "val": 120, "test": 120,
                                                            "select": 120}
    assert Mnist1dConfig(num_samples=600, select_fraction=0).split_sizes() == {
        "train": 360, "val": 120, "test": 120}


def test_default_workload_generates_the_advertised_splits() -> None:
    """One full-size generation (about 4 s): what the docs promise is what is built."""
    workload = Mnist1dWorkload()
    for split, size in Mnist1dConfig().split_sizes().items():
        x, y = workload.split_tensors(split)
        assert workload.split_size(split) == size
        assert x.shape == (size, 1, 40) and x.dtype == torch.float32
        assert y.shape == (size,) and y.dtype == torch.long
        assert torch.bincount(y, minlength=10).tolist() == [size // 10] * 10  # stratified


def test_small_split_shapes_and_standardisation(small: Mnist1dWorkload) -> None:
    sizes = {s: small.split_size(s) for s in ("train", "val", "test", "select")}
    assert sizes == {"train": 240, "val": 120, "test": 120, "select": 120}
    for split, size in sizes.items():
        x, y = small.split_tensors(split)
        assert x.shape == (size, 1, 40) and x.dtype == torch.float32
        assert torch.bincount(y, minlength=10).tolist() == [size // 10] * 10
    train_x = small.split_tensors("train")[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3


def test_stratified_split_partitions_every_index_once() -> None:
    labels = np.repeat(np.arange(10), 60)
    np.random.default_rng(0).shuffle(labels)
    parts = stratified_split(labels, 0.2, 0.2, seed=3)
    together = np.concatenate([parts[s] for s in ("train", "val", "test")])
    assert sorted(together.tolist()) == list(range(600))
    with_select = stratified_split(labels, 0.2, 0.2, seed=3, select_fraction=0.2)
    assert sorted(np.concatenate(list(with_select.values())).tolist()) == list(range(600))
    for split in ("val", "test"):  # select is cut from train: val and test do not move
        assert np.array_equal(with_select[split], parts[split])
    assert len(with_select["select"]) == 120 and "select" not in parts
    for split, per_class in (("train", 36), ("val", 12), ("test", 12)):
        assert np.bincount(labels[parts[split]], minlength=10).tolist() == [per_class] * 10
    again = stratified_split(labels, 0.2, 0.2, seed=3)
    other = stratified_split(labels, 0.2, 0.2, seed=4)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    assert not np.array_equal(parts["val"], other["val"])


def test_generation_is_deterministic_and_seeded() -> None:
    generate = generate_mnist1d.__wrapped__  # bypass the in-memory cache
    x1, y1 = generate(600, 42)
    x2, y2 = generate(600, 42)
    assert x1.shape == (600, 40) and x1.dtype == np.float32 and y1.dtype == np.int64
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = generate(600, 43)
    assert not np.array_equal(x1, x3)


def test_generated_data_is_cached_read_only() -> None:
    a = generate_mnist1d(600, 42)
    b = generate_mnist1d(600, 42)
    assert a[0] is b[0] and a[1] is b[1]
    assert not a[0].flags.writeable and not a[1].flags.writeable


def test_same_config_same_tensors_other_seeds_differ(small: Mnist1dWorkload) -> None:
    again = Mnist1dWorkload(**SMALL)
    for split in ("train", "val", "test"):
        assert torch.equal(small.split_tensors(split)[0], again.split_tensors(split)[0])
        assert torch.equal(small.split_tensors(split)[1], again.split_tensors(split)[1])
    assert small.split_indices_fingerprint() == again.split_indices_fingerprint()
    other_split = Mnist1dWorkload(**SMALL, split_seed=1)
    assert not torch.equal(small.split_tensors("val")[0], other_split.split_tensors("val")[0])
    other_data = Mnist1dWorkload(**SMALL, data_seed=7)
    assert not torch.equal(small.split_tensors("val")[0], other_data.split_tensors("val")[0])


def test_loading_leaves_global_rngs_alone() -> None:
    """mnist1d's make_dataset reseeds numpy's and Python's global RNGs; we must restore them."""
    np.random.seed(123)
    random.seed(456)
    torch.manual_seed(789)
    np_before, py_before = np.random.get_state(), random.getstate()
    torch_before = torch.random.get_rng_state()
    generate_mnist1d.__wrapped__(100, 5)  # uncached: really runs the generator
    Mnist1dWorkload(num_samples=100, data_seed=98765)  # a key no other test caches
    assert _np_state_equal(np.random.get_state(), np_before)
    assert random.getstate() == py_before
    assert torch.equal(torch.random.get_rng_state(), torch_before)


def test_cache_key_covers_data_and_split_seeds_not_device() -> None:
    base = Mnist1dWorkload(**SMALL)
    assert base.cache_key() != Mnist1dWorkload(**SMALL, data_seed=1).cache_key()
    assert base.cache_key() != Mnist1dWorkload(**SMALL, split_seed=1).cache_key()
    assert base.cache_key() != Mnist1dWorkload(**SMALL, width=8).cache_key()
    assert base.cache_key() == Mnist1dWorkload(**SMALL, device="cpu").cache_key()


# --------------------------------------------------------------------------- model / training


def test_contract_members(small: Mnist1dWorkload) -> None:
    assert isinstance(small, Workload)
    assert small.name == "mnist1d" and small.higher_is_better is True
    assert Mnist1dWorkload.model_version == "1"
    assert Mnist1dConfig().baseline_epochs == 20.0
    x = small.dummy_input()
    assert x.shape == (2, 1, 40)
    model = small.build_model()
    assert model(x).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [c.out_channels for c in convs] == [25, 25, 25] and len(bns) == 3
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 25 * 5


def test_finetune_rises_above_chance(small: Mnist1dWorkload) -> None:
    torch.manual_seed(0)
    model = small.build_model()
    stats = small.finetune(model, 10, 0.05, seed=0)
    assert stats["steps"] == 10 * small.steps_per_epoch()
    assert small.evaluate(model, "val") > 0.3  # chance is 0.1


def test_same_seed_same_baseline(small: Mnist1dWorkload) -> None:
    workload = Mnist1dWorkload(**{**SMALL, "baseline_epochs": 1.0})
    a, b, c = workload.train_baseline(3), workload.train_baseline(3), workload.train_baseline(4)
    wa, wb, wc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# --------------------------------------------------------------------------- pruning


def test_level_pruner_global_over_conv1d_and_linear(
    small: Mnist1dWorkload, small_baseline: nn.Module
) -> None:
    from tune_prune.pruning import LevelPruner
    from tune_prune.pruning.measure import count_macs, sparsity_report

    model = copy.deepcopy(small_baseline)
    pruner = LevelPruner(
        model, [{"op_types": ["Conv1d", "Linear"], "total_sparsity": 0.8}], mode="global"
    )
    _, masks = pruner.compress()
    pruner.unwrap_model()
    report = sparsity_report(model, masks)
    assert set(report["layers"]) == {"conv1", "conv2", "conv3", "fc"}
    assert report["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert all(layer["pruned"] > 0 for layer in report["layers"].values())
    x = small.dummy_input()
    assert count_macs(small_baseline, x, masks) < count_macs(small_baseline, x)
    small.finetune(model, 1, 0.01, seed=0)
    assert 0.0 <= small.evaluate(model) <= 1.0


def test_l1_dependency_aware_channel_pruning_and_speedup(
    small: Mnist1dWorkload, small_baseline: nn.Module
) -> None:
    from tune_prune.pruning import L1NormPruner
    from tune_prune.pruning.measure import count_macs, count_params
    from tune_prune.pruning.speedup import extend_masks_to_batchnorms, speedup_model

    model = copy.deepcopy(small_baseline)
    x = small.dummy_input()
    pruner = L1NormPruner(
        model,
        [{"op_types": ["Conv1d"], "total_sparsity": 0.5}, {"op_names": ["fc"], "exclude": True}],
        mode="dependency_aware",
        dummy_input=x,
    )
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert set(masks) == {"conv1", "conv2", "conv3"}
    compact, remaining, history = speedup_model(model, masks, x)
    assert remaining == {}
    widths = [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv1d)]
    assert widths == [13, 13, 13]
    assert compact.bn3.num_features == 13 and compact.fc.in_features == 13 * 5
    assert count_params(compact) < 0.5 * count_params(small_baseline)
    assert count_macs(compact, x) < 0.5 * count_macs(small_baseline, x)
    # compact == masked model (BN-extended masks baked in) on a whole split, not just x
    masked = copy.deepcopy(model).eval()
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, entry in extend_masks_to_batchnorms(masked, masks, x).items():
            for pname, mask in entry.items():
                getattr(modules[name], pname).mul_(mask)
        val_x = small.split_tensors("val")[0]
        diff = (compact.eval()(val_x) - masked(val_x)).abs().max()
    assert float(diff) < 1e-4
    small.finetune(compact, 1, 0.01, seed=0)  # fresh optimizer over the shrunk tensors
    assert 0.0 <= small.evaluate(compact) <= 1.0


def test_search_config_list_selects_conv1d(small: Mnist1dWorkload) -> None:
    """The search builds its config_list by op type; it must reach Conv1d layers."""
    from tune_prune.pruning import L1NormPruner, LevelPruner
    from tune_prune.search.build import make_config_list

    model = small.build_model()
    level = LevelPruner(model, make_config_list("weights", "global", 0.8), mode="global")
    assert set(level.get_modules_wrapper()) == {"conv1", "conv2", "conv3", "fc"}
    l1 = L1NormPruner(
        model,
        make_config_list("channels", "dependency_aware", 0.5),
        mode="dependency_aware",
        dummy_input=small.dummy_input(),
    )
    assert set(l1.get_modules_wrapper()) == {"conv1", "conv2", "conv3"}


# --------------------------------------------------------------------------- registry / config


def test_registry_builds_mnist1d_with_overrides() -> None:
    assert "mnist1d" in BUILTIN_WORKLOADS
    workload = get_workload("mnist1d", num_samples=600, batch_size=32)
    assert isinstance(workload, Mnist1dWorkload)
    assert workload.config.num_samples == 600 and workload.config.batch_size == 32
    with pytest.raises(ConfigError, match=r"known workloads: \[.*'mnist1d'.*\]"):
        get_workload("mnist-1d")


def test_search_cli_documents_and_accepts_mnist1d() -> None:
    from tune_prune.search.config import SearchConfig

    assert "mnist1d" in (SearchConfig.model_fields["workload"].description or "")
    assert SearchConfig.create(workload="mnist1d").workload == "mnist1d"


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"num_samples": 0}, r"num_samples must be a positive integer, got 0$"),
        ({"num_samples": 605}, r"num_samples must be a multiple of 10, got 605$"),
        ({"num_samples": "600"}, r"num_samples must be a positive integer, got '600'$"),
        ({"num_samples": 10}, r"num_samples=10 is too small"),
        ({"width": 0}, r"width must be a positive integer, got 0$"),
        ({"data_seed": -1}, r"data_seed must be an integer in .*, got -1$"),
        ({"split_seed": 2**32}, r"split_seed must be an integer in .*, got 4294967296$"),
        ({"val_fraction": 0.5}, r"val_fraction must be in \(0, 0.5\), got 0.5$"),
        ({"test_fraction": 0}, r"test_fraction must be in \(0, 0.5\), got 0$"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0$"),
        ({"lr_schedule": "step"}, r"lr_schedule must be .*, got 'step'$"),
        ({"bogus": 1}, r"unknown mnist1d workload field in \['bogus'\]"),
    ],
)
def test_bad_override_names_field_and_value(overrides: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        get_workload("mnist1d", **overrides)
    with pytest.raises(ConfigError, match=pattern):
        Mnist1dWorkload(**overrides)


def test_no_select_split_is_a_clear_error() -> None:
    from tune_prune.errors import WorkloadError

    workload = Mnist1dWorkload(num_samples=600, select_fraction=0, baseline_epochs=0.5)
    with pytest.raises(WorkloadError, match="no 'select' split"):
        workload.evaluate(workload.build_model(), "select")
