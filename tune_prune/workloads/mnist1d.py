"""MNIST-1D (Greydanus 2020, "Scaling down deep learning") with a small 1-D CNN.

MNIST-1D turns the ten digits into 1-D templates of length 12, then pads, shears,
scales, translates, adds correlated and i.i.d. noise and resamples each to 40 points.
Unlike 8x8 digits it separates model families clearly (a linear model gets ~32 %, an
MLP ~68 %, a CNN ~94 % in the paper), while a whole training run still takes seconds.

The data is *generated* here with the ``mnist1d`` package's ``make_dataset`` (never
its downloading ``get_dataset``), so the workload needs no file and no network.
Generation reseeds numpy's and Python's global RNGs; we restore both afterwards.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads.base import (
    SPLITS,
    Batch,
    ClassificationWorkload,
    InMemorySplits,
    TrainConfig,
    resolve_device,
    with_overrides,
)

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
SEQ_LENGTH = 40  # mnist1d's final_seq_length; the model's Linear head depends on it

_GENERATE_LOCK = threading.Lock()


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``num_samples`` MNIST-1D signals ``(N, 40) float32`` and labels ``(N,) int64``.

    Generated once per process for each ``(num_samples, seed)`` (about 3-5 s per 10,000
    samples) and returned read-only. The package's own train/test division is pooled:
    the workload makes its own split. ``make_dataset`` calls ``random.seed`` and
    ``np.random.seed``; both global states are restored, so loading has no side effect.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise WorkloadError(
            "the mnist1d workload needs the 'mnist1d' package (pip install mnist1d)"
        ) from exc
    args = get_dataset_args(as_dict=False)
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    with _GENERATE_LOCK:  # the global RNG swap below is not safe across threads
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    if x.shape != (len(y), SEQ_LENGTH):
        raise WorkloadError(f"mnist1d: generated signals have shape {x.shape}, expected (N, 40)")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
    select_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Sorted sample indices per split; each class contributes the same share to each split.

    ``select`` (present when ``select_fraction > 0``) is a second held-out split that
    picks among a screened search's finalists. Uses its own
    ``numpy.random.Generator(seed)``, never the global RNG; the val and test indices do
    not depend on ``select_fraction`` (select is cut from what would be train).
    """
    rng = np.random.default_rng(seed)
    names = [s for s in SPLITS if s != "select" or select_fraction > 0]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in names}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test, n_select = _held_out(len(idx), val_fraction, test_fraction, select_fraction)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        if n_select:
            parts["select"].append(idx[n_val + n_test : n_val + n_test + n_select])
        parts["train"].append(idx[n_val + n_test + n_select :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items() if p}


def _held_out(n: int, val_fraction: float, test_fraction: float,
              select_fraction: float = 0.0) -> tuple[int, int, int]:
    return int(round(n * val_fraction)), int(round(n * test_fraction)), int(round(n * select_fraction))


# --------------------------------------------------------------------------- model


def _conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class Mnist1dCNN(nn.Module):
    """The paper's CNN (three stride-2 Conv1d of ``width`` channels, kernels 5, 3, 3,
    padding 1, ReLU, flatten, Linear) with a BatchNorm after each conv.

    BN gives channel pruning per-channel scales to work with (SlimPruner) and lets
    speedup drop a dead channel's BN with it. 40 -> 19 -> 10 -> 5 positions, so ``fc``
    sees ``5 * width`` features: pruning a conv3 channel removes 5 of its inputs.
    """

    def __init__(self, width: int = 25, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        length = SEQ_LENGTH
        self.conv1 = nn.Conv1d(1, width, 5, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu1 = nn.ReLU(inplace=True)
        length = _conv_out(length, 5, 2, 1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.relu2 = nn.ReLU(inplace=True)
        length = _conv_out(length, 3, 2, 1)
        self.conv3 = nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm1d(width)
        self.relu3 = nn.ReLU(inplace=True)
        length = _conv_out(length, 3, 2, 1)
        self.fc = nn.Linear(width * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Mnist1dConfig(TrainConfig):
    """MNIST-1D settings. ``data_seed`` fixes the generated signals, ``split_seed`` the split.

    The defaults generate 10,000 signals split 40/20/20/20 (per class): 4,000 train
    (the paper's training-set size), 2,000 val (ranks a search's trials), 2,000
    select (picks among a screened search's finalists; ``select_fraction=0`` for none)
    and 2,000 test. ``num_samples`` must be a multiple of 10 (the generator makes
    ``num_samples // 10`` per class).
    """

    baseline_epochs: float = 20.0
    num_samples: int = 10_000
    data_seed: int = 42
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    select_fraction: float = 0.2
    width: int = 25

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("width", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_samples % NUM_CLASSES:
            raise ConfigError(
                f"num_samples must be a multiple of {NUM_CLASSES}, got {self.num_samples!r}"
            )
        for name in ("data_seed", "split_seed"):
            value = getattr(self, name)
            # numpy seeds must lie in [0, 2**32): a larger one fails deep inside mnist1d.
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise ConfigError(f"{name} must be an integer in [0, 2**32), got {value!r}")
        for name in ("val_fraction", "test_fraction", "select_fraction"):
            value = getattr(self, name)
            low_ok = value >= 0.0 if name == "select_fraction" else value > 0.0
            if isinstance(value, bool) or not isinstance(value, int | float) or not (low_ok and value < 0.5):
                bounds = "[0, 0.5)" if name == "select_fraction" else "(0, 0.5)"
                raise ConfigError(f"{name} must be in {bounds}, got {value!r}")
        per_class = self.num_samples // NUM_CLASSES
        n_val, n_test, n_select = _held_out(per_class, self.val_fraction, self.test_fraction,
                                            self.select_fraction)
        if min(n_val, n_test, per_class - n_val - n_test - n_select) < 1 or (self.select_fraction and n_select < 1):
            raise ConfigError(
                f"num_samples={self.num_samples!r} is too small for val_fraction="
                f"{self.val_fraction!r}, test_fraction={self.test_fraction!r} and select_fraction="
                f"{self.select_fraction!r}: every split needs at least one sample of each class"
            )

    def split_sizes(self) -> dict[str, int]:
        """Samples per split these settings give (computed without generating the data)."""
        per_class = self.num_samples // NUM_CLASSES
        n_val, n_test, n_select = _held_out(per_class, self.val_fraction, self.test_fraction,
                                            self.select_fraction)
        sizes = {
            "train": NUM_CLASSES * (per_class - n_val - n_test - n_select),
            "val": NUM_CLASSES * n_val,
            "test": NUM_CLASSES * n_test,
        }
        if n_select:
            sizes["select"] = NUM_CLASSES * n_select
        return sizes


class Mnist1dWorkload(InMemorySplits, ClassificationWorkload):
    """MNIST-1D (10 classes, signals of length 40), stratified split, standardised.

    Inputs are ``(N, 1, 40)`` float32, standardised with the training split's mean and
    std. The signals are generated once per process and (num_samples, data_seed), then
    kept in memory; the whole data set lives on ``device``.
    """

    name = "mnist1d"
    model_version = "1"

    def __init__(self, config: Mnist1dConfig | None = None, **overrides: Any) -> None:
        self.config = with_overrides(config or Mnist1dConfig(), overrides, self.name)
        self.device = resolve_device(self.config.device)
        self._data = self._load()

    def _load(self) -> dict[str, Batch]:
        cfg = self.config
        signals, labels = generate_mnist1d(cfg.num_samples, cfg.data_seed)
        splits = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed,
                                  cfg.select_fraction)
        x = torch.tensor(signals, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(labels, dtype=torch.long)
        train = torch.from_numpy(splits["train"])
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        out = {}
        for split in splits:
            t = torch.from_numpy(splits[split])
            out[split] = (x[t].to(self.device), y[t].to(self.device))
        return out

    def build_model(self) -> nn.Module:
        return Mnist1dCNN(self.config.width)
