"""get_workload: built-in names, explicit user factories, and an error for each bad spec."""

from __future__ import annotations

import pytest

from tests.workloads.fake_factory import CountingDigits
from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads import Workload, get_workload
from tune_prune.workloads.digits import DigitsWorkload


def test_builtin_digits_with_overrides() -> None:
    workload = get_workload("digits", batch_size=32)
    assert isinstance(workload, DigitsWorkload) and workload.config.batch_size == 32


def test_builtin_cifar_synthetic() -> None:
    workload = get_workload("cifar10", synthetic=True, blocks_per_stage=1, device="cpu")
    assert workload.name == "cifar10" and isinstance(workload, Workload)


def test_builtin_cifar_missing_data_keeps_workload_error(tmp_path) -> None:
    with pytest.raises(WorkloadError, match="nope"):
        get_workload("cifar10", data_dir=tmp_path / "nope")


def test_user_factory() -> None:
    workload = get_workload("tests.workloads.fake_factory:make", batch_size=16)
    assert isinstance(workload, CountingDigits) and workload.config.batch_size == 16
    # a class is a factory too, and dotted attributes are followed
    assert isinstance(get_workload("tests.workloads.fake_factory:CountingDigits"), CountingDigits)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("imagenet", r"unknown workload 'imagenet'.*\['cifar10', 'digits', 'mnist1d'\]"),
        ("", "non-empty"),
        ("tests.workloads.no_such_module:make", "cannot import module 'tests.workloads.no_such"),
        ("tests.workloads.fake_factory:missing", "no attribute 'missing'"),
        ("tests.workloads.fake_factory:NOT_CALLABLE", "not callable"),
        ("tests.workloads.fake_factory:broken", "factory failed.*factory exploded"),
        ("tests.workloads.fake_factory:not_a_workload", "returned a object, not a"),
        (":make", "form 'package.module:factory'"),
        ("tests.workloads.fake_factory:", "form 'package.module:factory'"),
    ],
)
def test_bad_specs(spec: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        get_workload(spec)


def test_factory_error_is_chained() -> None:
    with pytest.raises(ConfigError) as info:
        get_workload("tests.workloads.fake_factory:broken")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unknown_override_names_it() -> None:
    with pytest.raises(ConfigError, match="colour"):
        get_workload("digits", colour="red")
