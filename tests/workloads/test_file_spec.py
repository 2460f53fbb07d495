"""get_workload('path/to/file.py:factory') and resolve_workload_spec."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tune_prune.errors import ConfigError
from tune_prune.workloads import DataLoaderWorkload, get_workload, resolve_workload_spec

FACTORY_FILE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tune_prune.workloads import from_dataloaders

with open(__file__ + ".imports", "a") as marker:  # one line per execution of this file
    marker.write("imported\\n")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def workload(**options):
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    return from_dataloaders(Net, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8),
                            device="cpu", **options)


def not_a_workload():
    return 42


NOT_CALLABLE = 3
'''


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my workload-1.py"  # a space and a dash: not a valid module name
    path.write_text(FACTORY_FILE)
    return path


@pytest.fixture(autouse=True)
def _forget_user_modules() -> Iterator[None]:
    """Each test imports its own tmp file; drop them afterwards so sys.modules stays small."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("tune_prune_user_"):
            del sys.modules[name]


def _expected_module_name(path: Path) -> str:
    resolved = path.resolve()
    return f"tune_prune_user_my_workload_1_{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def test_absolute_file_spec(factory_file: Path) -> None:
    workload = get_workload(f"{factory_file}:workload", finetune_lr=0.02)
    assert isinstance(workload, DataLoaderWorkload) and workload.config.finetune_lr == 0.02


def test_module_name_is_derived_from_the_absolute_path(factory_file: Path) -> None:
    """A pure function of the path, so a Ray worker importing the same spec gets the same
    module, and classes pickled in the driver resolve there."""
    workload = get_workload(f"{factory_file}:workload")
    name = _expected_module_name(factory_file)
    assert sys.modules[name].__file__ == str(factory_file.resolve())
    assert type(workload.build_model()).__module__ == name


def test_relative_file_spec_resolves_against_cwd_and_imports_once(
    factory_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(factory_file.parent)
    get_workload(f"{factory_file.name}:workload")
    get_workload(f"./{factory_file.name}:workload")
    get_workload(f"{factory_file}:workload")
    assert Path(f"{factory_file}.imports").read_text() == "imported\n"


def test_resolve_workload_spec(factory_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(factory_file.parent.parent)
    relative = f"{factory_file.parent.name}/{factory_file.name}:workload"
    resolved = resolve_workload_spec(relative)
    assert resolved == f"{factory_file}:workload" and os.path.isabs(resolved.rpartition(":")[0])
    assert resolve_workload_spec(resolved) == resolved
    for unchanged in ("digits", "tests.workloads.fake_factory:make", "pkg.mod:Class.build"):
        assert resolve_workload_spec(unchanged) == unchanged
    monkeypatch.setenv("HOME", str(factory_file.parent))
    assert resolve_workload_spec(f"~/{factory_file.name}:workload") == f"{factory_file}:workload"
    # The resolved spec works from any directory, as in a Ray worker (a fresh import).
    monkeypatch.chdir("/")
    sys.modules.pop(_expected_module_name(factory_file), None)
    assert isinstance(get_workload(resolved), DataLoaderWorkload)


def test_missing_file_names_spec_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"workload 'nope/none.py:workload': no such file .*nope/none.py.*current directory"):
        get_workload("nope/none.py:workload")


def test_file_that_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('no GPU here')\n")
    spec = f"{path}:workload"
    with pytest.raises(ConfigError, match=r"importing file .*broken.py' failed: RuntimeError: no GPU here") as info:
        get_workload(spec)
    assert isinstance(info.value.__cause__, RuntimeError) and spec in str(info.value)
    assert not any(name.startswith("tune_prune_user_broken_") for name in sys.modules)
    path.write_text("import sys\nsys.exit('torchvision missing')\n")  # retried, not cached
    with pytest.raises(ConfigError, match="failed: SystemExit: torchvision missing"):
        get_workload(spec)


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        ("missing", r"file '.*' has no attribute 'missing'"),
        ("NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not callable"),
        ("not_a_workload", r"factory returned a int, not a tune_prune.workloads.Workload"),
        ("1bad", r"must have the form 'path/to/file.py:factory' \(factory '1bad' is not a Python name\)"),
        ("", r"must have the form 'path/to/file.py:factory'"),
    ],
)
def test_bad_factories_name_the_spec(factory_file: Path, factory: str, pattern: str) -> None:
    spec = f"{factory_file}:{factory}"
    with pytest.raises(ConfigError, match=pattern) as info:
        get_workload(spec)
    assert spec in str(info.value)


def test_factory_errors_are_chained(factory_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"factory failed with overrides \['colour'\]") as info:
        get_workload(f"{factory_file}:workload", colour="red")
    assert isinstance(info.value.__cause__, TypeError)


def test_module_spec_written_as_a_path_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"cannot import module 'examples/own_model'.*'examples/own_model.py:...'"):
        get_workload("examples/own_model:workload")


def test_file_spec_form_is_named_in_unknown_workload_error() -> None:
    with pytest.raises(ConfigError, match=r"'path/to/file.py:factory'"):
        get_workload("my_model")


def test_the_example_file_spec_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert resolve_workload_spec("examples/own_model.py:workload") == f"{repo / 'examples' / 'own_model.py'}:workload"


def test_search_config_makes_a_file_spec_absolute_and_names_the_experiment_after_it(tmp_path, monkeypatch) -> None:
    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import experiment_name

    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig.create(workload="models/my_net.py:factory")
    assert cfg.workload == f"{tmp_path / 'models' / 'my_net.py'}:factory"
    assert experiment_name(cfg).startswith("my_net_factory-weights-0.8-")
    assert SearchConfig.create(workload="pkg.mod:factory").workload == "pkg.mod:factory"
