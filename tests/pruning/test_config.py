"""config_list validation and resolution (NNI 2.10 semantics)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.config import canonical_config_list, resolve_config_list


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def test_per_layer_entry_expands_to_one_entry_per_layer():
    out = canonical_config_list(_model(), [{"op_types": ["default"], "sparsity": 0.5}])
    assert out == [
        {"op_names": ["0"], "total_sparsity": 0.5},
        {"op_names": ["3"], "total_sparsity": 0.5},
        {"op_names": ["5"], "total_sparsity": 0.5},
    ]


def test_total_sparsity_keeps_one_entry_with_cap():
    (entry,) = resolve_config_list(
        _model(), [{"op_types": ["Conv2d"], "total_sparsity": 0.4, "max_sparsity_per_layer": 0.6}]
    )
    assert entry.module_names == ["0", "3"]
    assert entry.total_sparsity == 0.4
    assert entry.cap("0") == 0.6 and entry.cap("3") == 0.6


def test_later_entries_override_and_exclude_removes():
    resolved = resolve_config_list(
        _model(),
        [
            {"op_types": ["default"], "sparsity": 0.5},
            {"op_names": ["3"], "sparsity": 0.8},
            {"op_partial_names": ["5"], "exclude": True},
        ],
    )
    assert {e.module_names[0]: e.total_sparsity for e in resolved} == {"0": 0.5, "3": 0.8}


def test_prunable_restriction_names_the_module():
    with pytest.raises(ConfigError, match=r"config_list\[0\].*'1'.*BatchNorm2d"):
        resolve_config_list(_model(), [{"op_names": ["1"], "sparsity": 0.5}], prunable=[nn.Conv2d])


@pytest.mark.parametrize(
    ("config_list", "pattern"),
    [
        ([{"op_types": ["Conv2d"], "sparsity": 1.2}], r"config_list\[0\]\.sparsity.*1\.2"),
        ([{"op_types": ["Conv2d"], "sparsity": -0.1}], r"config_list\[0\]\.sparsity.*-0\.1"),
        ([{"op_types": ["Conv2d"], "total_sparsity": 1.0}], r"total_sparsity.*1\.0"),
        ([{"op_types": ["Conv2d"], "sparsity": 0.2, "total_sparsity": 0.3}], r"not both"),
        ([{"op_types": ["Conv2d"], "sparsity": 0.2, "foo": 1}], r"config_list\[0\]\.foo: unknown key"),
        ([{"op_names": ["nope"], "sparsity": 0.2}], r"op_names: 'nope' matches no module"),
        ([{"op_types": ["Conv9d"], "sparsity": 0.2}], r"op_types: 'Conv9d' is not"),
        ([{"op_types": "Conv2d", "sparsity": 0.2}], r"op_types: must be a list"),
        ([{"op_types": ["Conv2d"], "sparsity": "0.2"}], r"sparsity: must be a number.*'0\.2'"),
        ([{"op_types": ["Conv2d"], "sparsity": True}], r"sparsity: must be a number"),
        ([{"op_types": ["Conv2d"]}], r"needs one of sparsity"),
        ([{"sparsity": 0.5}], r"needs at least one of op_types"),
        ([{"op_types": ["BatchNorm1d"], "sparsity": 0.5}], r"selects no module"),
        ([{"op_types": ["Conv2d"], "total_sparsity": 0.5, "max_sparsity_per_layer": 1.5}], r"max_sparsity_per_layer"),
        ([{"op_types": ["default"], "exclude": True}], r"selects no module to prune"),
        ([{"op_types": ["ReLU"], "sparsity": 0.5}], r"'2'.*no weight"),
        ([], r"empty"),
        ({"op_types": ["Conv2d"]}, r"must be a list of dicts"),
        ([["Conv2d"]], r"config_list\[0\] must be a dict"),
        ([{"op_types": ["Conv2d"], "sparsity": 0.5}, {"op_types": ["Linear"], "exclude": "yes"}], r"config_list\[1\]\.exclude"),
    ],
)
def test_bad_config_lists_raise_config_error_naming_the_field(config_list, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config_list(_model(), config_list)


@given(st.floats(min_value=0.0, max_value=0.999, allow_nan=False))
def test_any_valid_fraction_is_accepted(value):
    (entry,) = resolve_config_list(_model(), [{"op_names": ["3"], "sparsity": value}])
    assert entry.total_sparsity == value


@given(st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.just(float("nan"))))
def test_any_fraction_outside_unit_interval_is_rejected(value):
    with pytest.raises(ConfigError, match="sparsity"):
        resolve_config_list(_model(), [{"op_names": ["3"], "sparsity": value}])
