"""CIFAR-10 workload: folder errors, the restricted pickle reader, synthetic data, model."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_prune.errors import WorkloadError
from tune_prune.workloads.cifar import (
    EXPECTED_FILES,
    Cifar10Workload,
    CifarResNet,
    _augment,
    read_cifar_batch,
)


def _write_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """A batch in the data set's own layout: bytes keys, uint8 (N, 3072), list of labels."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    entry = {b"batch_label": b"fake", b"data": data, b"labels": labels, b"filenames": [b"x"] * n}
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    return data, labels


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate(EXPECTED_FILES):
        _write_batch(folder / name, 6, seed=i)
    return tmp_path


def test_missing_folder_names_it_and_lists_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(WorkloadError) as info:
        Cifar10Workload(data_dir=missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "data_batch_1" in message and "test_batch" in message


def test_incomplete_folder_lists_missing_files(fake_cifar: Path) -> None:
    os.remove(fake_cifar / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(WorkloadError, match="data_batch_3") as info:
        Cifar10Workload(data_dir=fake_cifar)
    assert str(fake_cifar) in str(info.value)


def test_reads_fake_folder(fake_cifar: Path) -> None:
    workload = Cifar10Workload(data_dir=fake_cifar, val_size=4, device="cpu")
    assert {s: workload.split_size(s) for s in ("train", "val", "test")} == {
        "train": 26,
        "val": 4,
        "test": 6,
    }
    x, y = workload.split_tensors("test")
    data, labels = read_cifar_batch(fake_cifar / "cifar-10-batches-py" / "test_batch")
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(data)) and y.tolist() == labels.tolist()
    # pixel layout: the row of 3072 is channel-major (R plane, G plane, B plane)
    raw = pickle.load(open(fake_cifar / "cifar-10-batches-py" / "test_batch", "rb"))  # noqa: SIM115
    assert np.array_equal(raw[b"data"][0, 1024:2048].reshape(32, 32), data[0, 1])
    # the folder itself (not its parent) is accepted too
    same = Cifar10Workload(data_dir=fake_cifar / "cifar-10-batches-py", val_size=4, device="cpu")
    assert torch.equal(same.split_tensors("val")[0], workload.split_tensors("val")[0])
    assert 0.0 <= workload.evaluate(workload.build_model(), "test") <= 1.0


def test_reader_rejects_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(WorkloadError, match="not allowed") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)


def test_reader_rejects_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(WorkloadError, match="3072"):
        read_cifar_batch(path)


def test_resnet56_shape_and_size() -> None:
    model = CifarResNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 9 * 2 + 2  # stem, 54 block convs, 2 option-B shortcuts
    params = sum(p.numel() for p in model.parameters())
    assert 0.84e6 < params < 0.87e6  # ResNet-56 is ~0.85M parameters
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_and_explicit_widths() -> None:
    r20 = CifarResNet(blocks_per_stage=3)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in r20.modules()) == 1 + 3 * 3 * 2 + 2
    narrow = CifarResNet(blocks_per_stage=3, widths=(8, 12, 40))
    outs = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert outs[0] == 8 and outs[-1] == 40 and 12 in outs
    assert narrow(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="widths"):
        CifarResNet(widths=(8, 16))


def test_synthetic_workload_trains_a_step() -> None:
    workload = Cifar10Workload(
        synthetic=True,
        synthetic_train_size=64,
        synthetic_test_size=32,
        blocks_per_stage=1,
        batch_size=32,
        device="cpu",
    )
    assert workload.dummy_input().shape == (2, 3, 32, 32)
    assert workload.dummy_input().dtype == torch.float32
    model = workload.build_model()
    stats = workload.finetune(model, 1, 0.05, seed=0)
    assert stats["steps"] == 2
    assert 0.0 <= workload.evaluate(model, "val") <= 1.0


def test_augment_is_seeded_and_shape_preserving() -> None:
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = _augment(x, torch.Generator().manual_seed(0))
    b = _augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for CIFAR: str opcodes, numpy.core globals."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        module = "numpy.core.multiarray" if module == "numpy._core.multiarray" else module
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str
    dispatch[type] = save_global


def test_reads_python2_style_pickle(tmp_path: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump({"data": data, "labels": [3, 9], "batch_label": "b"})
    assert b"cnumpy.core.multiarray\n_reconstruct" in path.read_bytes()
    images, labels = read_cifar_batch(path)
    assert np.array_equal(images.reshape(2, 3072), data) and labels.tolist() == [3, 9]
