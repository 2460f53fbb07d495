"""Channel pruners' options in the search: offered only for channel pruners, passed through.

``cfg.channel_options`` (option -> choices) is read with ``getattr`` so these tests wrap a
SearchConfig; with the option unset the space is exactly the old one.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from tests.pruning.models import build
from tests.search.space_helpers import sample_space
from tune_prune.pruning import L1NormPruner, LevelPruner
from tune_prune.search import build as B
from tune_prune.search.config import SearchConfig
from tune_prune.search.registry import CHANNEL_PARAMS, channel_option_choices, takes_channel_options
from tune_prune.search.space import define_space
from tune_prune.search.warm_start import WARM_START_KEYS, warm_start_points

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPTIONS = {"normalizer": ["none", "mean"], "bn_scale": [False, True], "input_weights": [True],
           "round_to": [1, 4]}


class _Cfg:
    """A SearchConfig with ``channel_options`` (the config field lives in config.py)."""

    def __init__(self, cfg: SearchConfig, channel_options: Any) -> None:
        self._cfg = cfg
        self.channel_options = channel_options

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def _sample(cfg: Any, n: int = 40) -> list[tuple[dict, dict]]:
    return sample_space(cfg, n)


def test_only_channel_pruners_take_the_options() -> None:
    assert {p for p in ("level", "l1", "l2", "fpgm", "slim", "taylorfo") if takes_channel_options(p)} \
        == {"l1", "l2", "fpgm"}


def test_channel_search_offers_the_options() -> None:
    cfg = _Cfg(SearchConfig.create(sparsity_kind="channels"), OPTIONS)
    seen: dict[str, set] = {k: set() for k in CHANNEL_PARAMS}
    for params, config in _sample(cfg):
        assert config["pruner"] in ("l1", "l2", "fpgm")
        for key in ("normalizer", "bn_scale", "round_to"):  # several choices: searched
            assert key in params and config[key] == params[key]
            seen[key].add(config[key])
        assert "input_weights" not in params and config["input_weights"] is True  # one: fixed
        options = B.pruner_options(config)
        assert options == {k: config[k] for k in CHANNEL_PARAMS}
        pruner = B.make_pruner(config["pruner"], config["mode"], None, options)
        assert pruner.round_to == config["round_to"] and pruner.normalizer == config["normalizer"]
    assert seen["normalizer"] == {"none", "mean"} and seen["round_to"] == {1, 4}


def test_weight_search_and_unset_options_leave_the_space_unchanged() -> None:
    weights = _Cfg(SearchConfig.create(), OPTIONS)
    for params, config in _sample(weights):
        assert config["pruner"] == "level"
        assert not set(CHANNEL_PARAMS) & (set(params) | set(config))
    plain = SearchConfig.create(sparsity_kind="channels")
    assert _sample(plain, 20) == _sample(_Cfg(plain, None), 20) == _sample(_Cfg(plain, {}), 20)
    for _params, config in _sample(plain, 20):
        assert not set(CHANNEL_PARAMS) & set(config)


@pytest.mark.parametrize(
    ("value", "match"),
    [({"normalizer": ["mean", "avg"]}, "normalizer='avg'"), ({"round_to": [0]}, "round_to=0"),
     ({"bn_scale": ["yes"]}, "bn_scale='yes'"), ({"colour": [1]}, "unknown option 'colour'"),
     ({"round_to": []}, "at least one"), (["round_to"], "table")],
)
def test_bad_channel_options_name_option_and_value(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        channel_option_choices(value)


def test_warm_start_schedules_validate_channel_options() -> None:
    assert set(CHANNEL_PARAMS) <= set(WARM_START_KEYS)
    base = SearchConfig.create(sparsity_kind="channels")
    cfg = _Cfg(base, OPTIONS)
    # config.py validates warm_start against its own fields: set it unvalidated here
    cfg._cfg = base.model_copy(update={"warm_start": [
        {"pruner": "l1", "normalizer": "mean", "round_to": 4, "input_weights": True}]})
    (params,) = warm_start_points(cfg)
    assert params["normalizer"] == "mean" and params["round_to"] == 4
    assert "input_weights" not in params  # fixed (one choice): not an Optuna parameter
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    config = define_space(study.ask(), cfg)
    assert config["normalizer"] == "mean" and config["round_to"] == 4 and config["input_weights"]
    for schedule, match in (({"pruner": "l1", "round_to": 3}, r"round_to=3 is not one of"),
                            ({"pruner": "l1", "normalizer": "max"}, "normalizer='max'")):
        cfg._cfg = base.model_copy(update={"warm_start": [schedule]})
        with pytest.raises(ValueError, match=match):
            warm_start_points(cfg)
    cfg = _Cfg(base.model_copy(update={"warm_start": [{"pruner": "l1", "round_to": 4}]}), None)
    with pytest.raises(ValueError, match="not a searched channel option"):
        warm_start_points(cfg)


def test_make_pruner_and_rounding_slack() -> None:
    assert isinstance(B.make_pruner("level", "normal", None), LevelPruner)
    with pytest.raises(ValueError, match="'level' takes no option 'round_to'"):
        B.make_pruner("level", "normal", None, {"round_to": 4})
    pruner = B.make_pruner("l1", "dependency_aware", "x", {"bn_scale": True, "round_to": 8})
    assert isinstance(pruner, L1NormPruner) and pruner.bn_scale and pruner.round_to == 8
    model = build("residual")  # convs of 8, 8, 8, 16, 16, 16 channels (72 in all)
    config_list = B.make_config_list("channels", "normal", 0.3)
    # round_to 1: int(0.3 n) per layer: 2.4 -> 2 of 8 (0.4 short), 4.8 -> 4 of 16 (0.8 short)
    assert B.channel_rounding_slack(model, config_list) == pytest.approx(3 * (0.4 + 0.8) / 72)
    # round_to 4: keeps 4 of 8 (prunes 4: 1.6 over), 8 of 16 (prunes 8: 3.2 over): no slack
    assert B.channel_rounding_slack(model, config_list, 4) == 0.0
    # round_to 16: 8-channel layers too narrow (prune 0: 2.4 short), 16 keeps 16 (4.8 short)
    assert B.channel_rounding_slack(model, config_list, 16) == pytest.approx(3 * (2.4 + 4.8) / 72)


def test_warm_start_channel_option_needs_a_channel_pruner() -> None:
    weights = SearchConfig.create()
    cfg = _Cfg(weights.model_copy(update={"warm_start": [{"pruner": "level", "round_to": 4}]}),
               OPTIONS)
    with pytest.raises(ValueError, match=r"'round_to' needs a channel pruner.*level"):
        warm_start_points(cfg)


def test_config_field_cli_flag_and_errors() -> None:
    from tune_prune.errors import ConfigError
    from tune_prune.search.cli import parse_config

    cfg, _ = parse_config(["--sparsity-kind", "channels", "--channel-option", 'normalizer=["none", "mean"]',
                           "--channel-option", "round_to=4"])
    assert cfg.channel_options == {"normalizer": ["none", "mean"], "round_to": [4]}
    params = [p for _, p in _sample(cfg, n=30) if p["pruner"] in ("l1", "l2", "fpgm")]
    assert {p["normalizer"] for p in params} == {"none", "mean"} and {p["round_to"] for p in params} == {4}
    with pytest.raises(ConfigError, match="round_to=0"):
        SearchConfig.create(sparsity_kind="channels", channel_options={"round_to": [0]})
    with pytest.raises(ConfigError, match="unknown option 'gamma'"):
        SearchConfig.create(sparsity_kind="channels", channel_options={"gamma": [True]})
    with pytest.raises(ConfigError, match="needs sparsity_kind='channels'"):
        SearchConfig.create(channel_options={"bn_scale": [True]})
    assert SearchConfig.create(sparsity_kind="channels", channel_options={}).channel_options is None
