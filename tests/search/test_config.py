"""SearchConfig validation: every bad value is a ConfigError naming field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_prune.errors import ConfigError
from tune_prune.search.cli import build_parser, parse_config
from tune_prune.search.config import SearchConfig, load_toml

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid() -> None:
    cfg = SearchConfig.create()
    assert cfg.workload == "digits"
    assert cfg.target_sparsity == 0.8
    assert cfg.allowed_pruners == ["level"]
    assert SearchConfig.create(sparsity_kind="channels").allowed_pruners == ["l1", "l2", "fpgm"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_sparsity", 0.0),
        ("target_sparsity", 1.0),
        ("target_sparsity", -0.3),
        ("target_sparsity", "lots"),
        ("sparsity_kind", "blocks"),
        ("pruners", ["nope"]),
        ("pruners", []),
        ("generators", ["agp", "random_walk"]),
        ("generators", []),
        ("num_samples", 0),
        ("max_concurrent", 0),
        ("cpus_per_trial", 0),
        ("gpus_per_trial", -1),
        ("time_budget_s", -5),
        ("multi_objective", "energy"),
        ("early_stopping", "hyperband"),
        ("early_stopping_rungs", [0.5, 1.5]),
        ("early_stopping_reduction_factor", 1.0),
        ("finetune_epochs", [-1.0]),
        ("finetune_budget", 0),
        ("finetune_budget", -2.0),
        ("sampler", "cmaes"),
        ("lr_min", 0.0),
        ("dashboard_port", 70000),
        ("name", "bad/name"),
        ("min_iterations", 0),
        ("seed", -1),
    ],
)
def test_bad_value_names_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.create(**{field: value})
    msg = str(info.value)
    assert field in msg
    assert repr(value) in msg or str(value) in msg


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"min_iterations": 6, "max_iterations": 3}, ["min_iterations", "6", "max_iterations"]),
        ({"lr_min": 0.1, "lr_max": 0.01}, ["lr_min", "0.1"]),
        ({"pruners": ["l1"]}, ["pruners", "'l1'", "weights"]),
        ({"speedup": True}, ["speedup"]),
        ({"address": "auto", "num_cpus": 2}, ["num_cpus", "address"]),
        ({"finetune_budget": 4.0, "finetune_epochs": [1.0]}, ["finetune_budget=4.0", "finetune_epochs", "not both"]),
        ({"finetune_budget": None}, ["finetune_budget=None", "finetune_epochs"]),
    ],
)
def test_cross_field_errors(values: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.create(**values)
    for w in words:
        assert w in str(info.value)


def test_unknown_field_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown field 'target'"):
        SearchConfig.create(target=0.5)


def test_toml_unknown_key_rejected(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('workload = "digits"\ntarget_sparsty = 0.5\n')
    with pytest.raises(ConfigError, match="target_sparsty"):
        load_toml(p)


def test_toml_bad_value_and_syntax(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("target_sparsity = 1.5\n")
    with pytest.raises(ConfigError, match=r"target_sparsity=1\.5"):
        SearchConfig.from_toml(p)
    p.write_text("target_sparsity = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "missing.toml")


def test_default_toml_equals_defaults() -> None:
    cfg = SearchConfig.from_toml(REPO / "experiments" / "default.toml")
    assert cfg == SearchConfig.create()


def test_flags_override_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('target_sparsity = 0.5\nnum_samples = 3\ngenerators = ["agp", "linear"]\n')
    cfg, _ = parse_config(["--config", str(p), "--num-samples", "5", "--early-stopping", "none"])
    assert cfg.target_sparsity == 0.5
    assert cfg.num_samples == 5
    assert cfg.generators == ["agp", "linear"]
    assert cfg.early_stopping == "none"


def test_every_field_has_a_flag() -> None:
    help_text = build_parser().format_help()
    for name in SearchConfig.model_fields:
        special = {"export_dir": "--export", "workload_options": "--workload-option",
                   "channel_options": "--channel-option"}
        flag = special.get(name, "--" + name.replace("_", "-"))
        assert flag in help_text, flag


def test_cli_bad_flag_value_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from tune_prune.search.cli import main

    assert main(["--target-sparsity", "1.2"]) == 2
    err = capsys.readouterr().err
    assert "target_sparsity" in err and "1.2" in err


def test_workload_options_flag_and_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[workload_options]\nbaseline_epochs = 3\nwidth = 8\n")
    cfg, _ = parse_config(["--config", str(p), "--workload-option", "width=4",
                           "--workload-option", "data_dir=/data"])
    assert cfg.workload_options == {"baseline_epochs": 3, "width": 4, "data_dir": "/data"}


def test_cli_lists_and_bools() -> None:
    cfg, _ = parse_config(["--sparsity-kind", "channels", "--pruners", "l1", "fpgm", "--speedup",
                           "--finetune-epochs", "0.5", "1", "--no-include-dashboard"])
    assert cfg.pruners == ["l1", "fpgm"]
    assert cfg.speedup is True
    assert cfg.finetune_epochs == [0.5, 1.0]
    assert cfg.include_dashboard is False


def test_budget_and_per_iteration_epochs_are_exclusive_across_layers(tmp_path: Path) -> None:
    """Giving one of the pair turns the other off in the layer below, never silently both."""
    assert SearchConfig.create().finetune_budget == 5.0
    assert SearchConfig.create(finetune_epochs=[2]).finetune_budget is None
    cfg = SearchConfig.create().updated(finetune_epochs=[1, 2])
    assert (cfg.finetune_budget, cfg.finetune_epochs) == (None, [1.0, 2.0])
    assert cfg.updated(finetune_budget=3).finetune_epochs is None
    p = tmp_path / "c.toml"
    p.write_text("finetune_epochs = [1.0, 2.0]\n")
    assert SearchConfig.from_toml(p).finetune_budget is None
    flag, _ = parse_config(["--config", str(p), "--finetune-budget", "4"])
    assert (flag.finetune_budget, flag.finetune_epochs) == (4.0, None)
    off, _ = parse_config(["--finetune-budget", "none", "--finetune-epochs", "1", "3"])
    assert (off.finetune_budget, off.finetune_epochs) == (None, [1.0, 3.0])
    with pytest.raises(ConfigError, match="not both"):
        parse_config(["--finetune-budget", "2", "--finetune-epochs", "1"])


def test_optional_number_flags_accept_none() -> None:
    cfg, _ = parse_config(["--time-budget-s", "NONE", "--sampler", "random"])
    assert cfg.time_budget_s is None and cfg.sampler == "random"
    with pytest.raises(SystemExit):
        parse_config(["--finetune-budget", "lots"])


@pytest.mark.parametrize(
    ("warm_start", "extra", "words"),
    [
        (["oneshot"], {}, ["warm_start[0]='oneshot'", "unknown preset", "one_shot"]),
        ([{"lr": 0.5}], {}, ["warm_start[0]", "lr=0.5", "[0.01, 0.3]"]),
        ([{"total_iteration": 9}], {}, ["total_iteration=9", "[1, 5]"]),
        ([{"generator": "simulated_annealing", "total_iteration": 1}], {}, ["total_iteration=1", "[2, 5]"]),
        ([{"generator": "simulated_annealing", "pruner": "level", "mode": "global"}], {},
         ["mode='global'", "only mode is 'normal'"]),
        ([{"mode": "global"}], {}, ["'mode' needs 'pruner'"]),
        ([{"pruner": "level", "mode": "dependency_aware"}], {}, ["mode='dependency_aware'"]),
        ([{"generator": "agp", "rewind": "early"}], {}, ["'rewind' needs reset_weight"]),
        ([{"generator": "lottery_ticket", "reset_weight": False}], {}, ["always rewinds"]),
        ([{"finetune_epochs": 2}], {}, ["finetune_epochs", "finetune_budget=5.0"]),
        ([{"speed": 1}], {}, ["unknown key(s) ['speed']"]),
        (["{not json"], {}, ["not a JSON object"]),
        (["one_shot"], {"min_iterations": 2}, ["'one_shot' needs min_iterations=1"]),
        (["one_shot", "agp"], {"num_samples": 1}, ["2 schedule(s)", "num_samples=1"]),
    ],
)
def test_bad_warm_start_names_entry_and_value(warm_start: list, extra: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.create(warm_start=warm_start, **extra)
    for w in words:
        assert w in str(info.value)


def test_default_warm_start_adapts_where_an_explicit_one_fails() -> None:
    """The default (one_shot_lrs, annealing) keeps its entries in order while they can run
    and fit num_samples (one_shot_lrs shrinks to one_shot); asked for, a misfit is an error."""
    assert SearchConfig.create().warm_start == ["one_shot_lrs", "annealing"]
    assert SearchConfig.create(num_samples=4).warm_start == ["one_shot_lrs", "annealing"]
    assert SearchConfig.create(num_samples=3).warm_start == ["one_shot_lrs"]
    assert SearchConfig.create(num_samples=2).warm_start == ["one_shot", "annealing"]
    assert SearchConfig.create(num_samples=1).warm_start == ["one_shot"]
    with pytest.raises(ConfigError, match="3 schedule"):
        SearchConfig.create(num_samples=2, warm_start=["one_shot_lrs"])
    cfg = SearchConfig.create(min_iterations=2)  # no one-shot; annealing runs 3 tasks
    assert cfg.warm_start == ["annealing"]
    assert SearchConfig.create(**cfg.model_dump()) == cfg  # the saved config resumes as it ran
    assert SearchConfig.create(max_iterations=2).warm_start == ["one_shot_lrs"]  # annealing needs 3
    assert SearchConfig.create(generators=["lottery_ticket", "simulated_annealing"]).warm_start == ["annealing"]
    assert SearchConfig.create(generators=["lottery_ticket"]).warm_start == []


def test_warm_start_flags() -> None:
    assert parse_config(["--warm-start", "none"])[0].warm_start == []
    cfg, _ = parse_config(["--warm-start", "AGP", '{"generator": "linear", "total_iteration": 2}'])
    assert cfg.warm_start == ["agp", {"generator": "linear", "total_iteration": 2}]


def test_warm_start_tables_in_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('warm_start = ["one_shot", { generator = "agp", total_iteration = 3, lr = 0.01 }]\n')
    cfg = SearchConfig.from_toml(p)
    assert cfg.warm_start[1] == {"generator": "agp", "total_iteration": 3, "lr": 0.01}


def test_default_tolerance_scales_with_what_the_target_leaves() -> None:
    """A fixed 0.02 let AGP's second-to-last step (96.5 %) count as 98 % of weights."""
    from tune_prune.search.metrics import reached
    from tune_prune.search.runner import fixed_config

    at98 = SearchConfig.create(target_sparsity=0.98)
    assert at98.sparsity_tolerance is None and at98.tolerance == pytest.approx(0.001)
    assert fixed_config(at98)["sparsity_tolerance"] == pytest.approx(0.001)
    assert reached(0.9798, 0.98, at98.tolerance) and not reached(0.9647, 0.98, at98.tolerance)
    assert SearchConfig.create(target_sparsity=0.5).tolerance == pytest.approx(0.025)
    assert SearchConfig.create(sparsity_kind="channels", target_sparsity=0.5).tolerance == 0.02
    assert SearchConfig.create(target_sparsity=0.98, sparsity_tolerance=0.02).tolerance == 0.02
