"""Property-based fuzzing of every input boundary (hypothesis; fast, bounded examples).

Every malformed config_list, pruner argument, search config (TOML file or CLI flags
through ``main(argv)``) and export directory must end in a tune_prune error
(TunePruneError) or an argparse usage error (SystemExit 2) whose message names the
field, never another exception; and nothing already on disk may change. Run with
``--hypothesis-show-statistics`` to see how many cases each property ran.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tune_prune.errors import ConfigError, TunePruneError
from tune_prune.pruning.config import resolve_config_list
from tune_prune.pruning.pruners.registry import get_pruner_class
from tune_prune.search import cli
from tune_prune.search.config import SearchConfig

from ._helpers import snapshot

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["Conv2d", "Linear", "default", "0", "fc", "", "BatchNorm2d"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=10)

CONFIG_KEYS = ["op_types", "op_names", "op_partial_names", "exclude", "sparsity", "sparsity_per_layer",
               "total_sparsity", "max_sparsity_per_layer"]
key_values = {
    "op_types": st.one_of(st.lists(st.sampled_from(["Conv2d", "Linear", "default", "ReLU", "Nope"]),
                                   max_size=3), json_values),
    "op_names": st.one_of(st.lists(st.sampled_from(["0", "2", "4", "x", ""]), max_size=3), json_values),
    "op_partial_names": st.one_of(st.lists(st.text(max_size=3), max_size=2), json_values),
    "exclude": st.one_of(st.booleans(), json_values),
    "max_sparsity_per_layer": st.one_of(st.floats(-1, 2), st.dictionaries(
        st.sampled_from(["0", "4", "zz"]), st.floats(-1, 2), max_size=2), json_values),
}
for k in ("sparsity", "sparsity_per_layer", "total_sparsity"):
    key_values[k] = st.one_of(st.floats(-0.5, 1.5), json_values)
entries = st.one_of(
    st.dictionaries(st.sampled_from(CONFIG_KEYS), st.just(None), max_size=4).flatmap(
        lambda d: st.fixed_dictionaries({k: key_values[k] for k in d})),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    json_values,
)
config_lists = st.one_of(st.lists(entries, max_size=3), json_values)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


MODEL = _model()
DUMMY = torch.randn(2, 1, 8, 8)
FIELD_WORDS = ("config_list", "mode", "balance_gran", "pruner", "dummy_input", "model")


def _names_a_field(msg: str, words=FIELD_WORDS) -> bool:
    return any(w in msg for w in words)


@settings(FAST, max_examples=400)
@given(config_lists)
def test_fuzz_resolve_config_list(config_list) -> None:
    try:
        resolve_config_list(MODEL, config_list)
    except TunePruneError as exc:
        assert _names_a_field(str(exc)), str(exc)


@settings(FAST, max_examples=200)
@given(pruner=st.sampled_from(["level", "l1", "l2", "fpgm", "nope", "LEVEL"]),
       config_list=config_lists,
       mode=st.one_of(st.sampled_from(["normal", "global", "balance", "dependency_aware"]), scalars))
def test_fuzz_pruner_constructors(pruner, config_list, mode) -> None:
    model = _model()
    try:
        cls = get_pruner_class(pruner)
        kwargs = {"mode": mode}
        if pruner in ("l1", "l2", "fpgm"):
            kwargs["dummy_input"] = DUMMY
        cls(model, config_list, **kwargs)
    except TunePruneError as exc:
        assert _names_a_field(str(exc)), str(exc)


# ----------------------------------------------------------------------------- search configs

FIELDS = list(SearchConfig.model_fields)
toml_scalars = st.one_of(st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                                 max_size=10))
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3),
                        st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), toml_scalars,
                                        max_size=2))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"


class _Accepted(Exception):
    pass


@contextlib.contextmanager
def _cli_sandbox(monkeypatch_target):
    """A storage folder with an existing experiment; run_search replaced by a recorder."""
    import tune_prune.search.runner as runner

    seen: list[SearchConfig] = []

    def fake_run_search(cfg, printer=None, status=None):
        seen.append(cfg)
        raise _Accepted()

    real = runner.run_search
    runner.run_search = fake_run_search
    try:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            (root / "res" / "old").mkdir(parents=True)
            (root / "res" / "old" / "search_config.json").write_text('{"seed": 1}')
            (root / "res" / "old" / "trials.csv").write_text("trial_id,iteration\nt,1\n")
            yield root, seen
    finally:
        runner.run_search = real


def _run_cli(argv: list[str], seen: list) -> tuple[str, int | None, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except _Accepted:
        return "accepted", None, ""
    except SystemExit as exc:
        return "usage", exc.code, err.getvalue()
    return "rejected", code, err.getvalue()


def _check_accepted(cfg: SearchConfig) -> None:
    for name, value in cfg.model_dump().items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float):
                assert math.isfinite(v), (name, v)


@settings(FAST, max_examples=200)
@given(st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.from_regex(r"[a-z_]{1,10}", fullmatch=True)),
                    toml_values, max_size=4),
    st.text(max_size=60),
))
def test_fuzz_toml_config_through_main(content) -> None:
    with _cli_sandbox(None) as (root, seen):
        path = root / "search.toml"
        text = content if isinstance(content, str) else "\n".join(
            f"{k} = {_toml_value(v)}" for k, v in content.items())
        path.write_text(text)
        before = snapshot(root)
        kind, code, err = _run_cli(["--config", str(path), "--storage-path", str(root / "res")], seen)
        assert snapshot(root) == before
        if kind == "accepted":
            _check_accepted(seen[-1])
            return
        assert code == 2, (kind, code, err)
        assert err.startswith("error:") or "usage:" in err, err
        if isinstance(content, dict) and kind == "rejected" and "TOML" not in err:
            assert any(k in err for k in content), (content, err)


FLAG_VALUES = st.one_of(st.sampled_from(["0", "-1", "0.5", "1", "1.5", "nan", "inf", "1e400", "",
                                         "agp", "level", "l1", "weights", "x=1", "=", "a b", "true", "none",
                                         "random"]),
                        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                                max_size=8))
FLAGS = [cli._flag(f) for f in FIELDS if f not in ("workload_options", "export_dir", "storage_path",
                                                    "baseline_cache_dir")]
FLAGS += ["--workload-option", "--export", "--no-resume", "--dry-run", "--bogus"]


@settings(FAST, max_examples=250)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), st.lists(FLAG_VALUES, max_size=2)), min_size=1, max_size=3))
def test_fuzz_cli_flags_through_main(flags) -> None:
    with _cli_sandbox(None) as (root, seen):
        argv = ["--storage-path", str(root / "res")]
        for flag, values in flags:
            argv += [flag, *values]
        before = snapshot(root)
        kind, code, err = _run_cli(argv, seen)
        assert snapshot(root) == before
        if kind == "accepted":
            _check_accepted(seen[-1])
            return
        assert code == 2, (kind, code, err)
        if kind == "rejected":  # a ConfigError: names a field given on the command line
            fields = [f.removeprefix("--").replace("-", "_") for f, _ in flags]
            fields += ["workload_options", "export_dir", "min_iterations", "max_iterations", "lr_min",
                       "lr_max", "pruners", "sparsity_kind", "speedup", "num_cpus", "address", "name"]
            assert any(f in err for f in fields), (argv, err)


# ----------------------------------------------------------------------------- export dirs


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    from tune_prune.export import export_model
    from tune_prune.workloads import get_workload

    w = get_workload("digits", baseline_epochs=0.0)
    torch.manual_seed(0)
    model = w.build_model()
    masks = {"fc": {"weight": (torch.rand_like(model.fc.weight) > 0.5).float()}}
    out = tmp_path_factory.mktemp("good") / "export"
    export_model(out, model, workload="digits", workload_options={"baseline_epochs": 0.0},
                 masks=masks, onnx=False)
    return out


SPEC_WORKLOADS = st.sampled_from(["digits", "cifar10_nope", "", "no_such_module_xyz:f", "tune_prune:nothing",
                                  "tune_prune.workloads:BUILTIN_WORKLOADS", "tune_prune.errors:ConfigError",
                                  "a:b:c", ":", "digits:"])
spec_edits = st.dictionaries(
    st.sampled_from(["format_version", "workload", "workload_options", "speedup_history", "config",
                     "metrics", "onnx", "extra"]),
    st.one_of(json_values, SPEC_WORKLOADS,
              st.just({"baseline_epochs": 0.0, "width": 3}), st.just({"nope": 1}),
              st.just([{"op": "prune", "module": "fc", "dim": 0, "keep": [0]}])),
    max_size=3,
)


def _garble(data: bytes, how: str, junk: bytes) -> bytes | None:
    return {"keep": data, "delete": None, "truncate": data[: max(0, len(data) // 3)],
            "junk": junk, "empty": b"", "flip": bytes(b ^ 0xFF if i % 97 == 0 else b
                                                     for i, b in enumerate(data))}[how]


HOW = st.sampled_from(["keep", "delete", "truncate", "junk", "empty", "flip"])
TENSOR_FILES = st.one_of(
    st.none(),
    st.sampled_from(["list", "wrong_shape", "extra_key", "str", "masks_bad"]),
)


def _tensor_payload(kind: str):
    return {"list": [torch.zeros(2)], "wrong_shape": {"fc.weight": torch.zeros(3, 3)},
            "extra_key": {"zzz": torch.zeros(1)}, "str": "hello",
            "masks_bad": {"fc": {"weight": torch.zeros(1)}}}[kind]


@settings(FAST, max_examples=120, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec_how=HOW, spec_edit=spec_edits, weights_how=HOW, masks_how=HOW,
       weights_obj=TENSOR_FILES, masks_obj=TENSOR_FILES, junk=st.binary(max_size=64))
def test_fuzz_export_load(good_export, spec_how, spec_edit, weights_how, masks_how, weights_obj, masks_obj,
                          junk) -> None:
    from tune_prune.export import MASKS_FILE, SPEC_FILE, WEIGHTS_FILE, load

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "export"
        out.mkdir()
        spec = json.loads((good_export / SPEC_FILE).read_text())
        spec.update(spec_edit)
        spec_bytes = json.dumps(spec).encode() if spec_edit else (good_export / SPEC_FILE).read_bytes()
        files = {SPEC_FILE: (spec_bytes, spec_how), WEIGHTS_FILE: ((good_export / WEIGHTS_FILE).read_bytes(),
                                                                   weights_how),
                 MASKS_FILE: ((good_export / MASKS_FILE).read_bytes(), masks_how)}
        for name, (data, how) in files.items():
            payload = _garble(data, how, junk)
            if payload is not None:
                (out / name).write_bytes(payload)
        for name, obj in ((WEIGHTS_FILE, weights_obj), (MASKS_FILE, masks_obj)):
            if obj is not None:
                torch.save(_tensor_payload(obj), out / name)
        before = snapshot(Path(d))
        try:
            model = load(out)
        except TunePruneError as exc:
            assert "export" in str(exc) or "weights" in str(exc) or isinstance(exc, ConfigError), str(exc)
        else:
            assert isinstance(model, nn.Module)
        assert snapshot(Path(d)) == before
