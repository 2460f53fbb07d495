"""Safe defaults: dashboard on 127.0.0.1 with Ray's token auth untouched, user code
imported only from an explicit ``module:factory`` (fast; Ray is never really started)."""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tune_prune.errors import ConfigError
from tune_prune.search import runner
from tune_prune.search.cli import parse_config
from tune_prune.search.config import SearchConfig
from tune_prune.workloads import BUILTIN_WORKLOADS, get_workload

PACKAGE = Path(__file__).resolve().parents[2] / "tune_prune"


def _init_kwargs(monkeypatch, cfg: SearchConfig) -> dict:
    import ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    env = dict(os.environ)
    runner._start_ray(cfg, "x")
    assert dict(os.environ) == env, "starting Ray changed the environment (auth?)"
    return seen


def test_default_dashboard_binds_localhost(monkeypatch) -> None:
    assert SearchConfig().dashboard_host == "127.0.0.1"
    cfg, _ = parse_config([])
    assert cfg.dashboard_host == "127.0.0.1"
    kwargs = _init_kwargs(monkeypatch, cfg)
    assert kwargs["dashboard_host"] == "127.0.0.1"
    assert not {k for k in kwargs if "auth" in k.lower() or k == "runtime_env"}
    assert "_system_config" not in kwargs


def test_other_interface_only_when_asked(monkeypatch) -> None:
    cfg, _ = parse_config(["--dashboard-host", "0.0.0.0"])
    assert _init_kwargs(monkeypatch, cfg)["dashboard_host"] == "0.0.0.0"


def test_no_code_in_the_package_touches_ray_auth() -> None:
    """No RAY_AUTH_* variable (or any 'auth' setting) is set, popped or passed by our code."""
    hits = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                # an environment variable name (a whole constant), not prose in a help text
                if re.fullmatch(r"[A-Za-z_]*AUTH[A-Za-z_]*", node.value, flags=re.IGNORECASE):
                    hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.keyword) and node.arg and "auth" in node.arg.lower():
                hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.arg}=")
    assert not hits, hits


@pytest.fixture
def no_imports(monkeypatch):
    calls: list[str] = []
    real = importlib.import_module

    def spy(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", spy)
    return calls


@pytest.mark.parametrize("name", ["os", "subprocess", "antigravity", "this", "tune_prune.workloads.cifar",
                                  "tests.reliability.workloads", "sys.modules", "../evil", "digits2"])
def test_names_without_colon_never_import(no_imports, name) -> None:
    before = set(sys.modules)
    with pytest.raises(ConfigError, match="unknown workload"):
        get_workload(name)
    assert no_imports == []
    assert set(sys.modules) - before == set()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=20).filter(lambda s: ":" not in s and s.strip() not in BUILTIN_WORKLOADS))
def test_fuzz_names_without_colon_never_import(name) -> None:
    real = importlib.import_module
    calls: list[str] = []
    importlib.import_module = lambda n, *a, **k: calls.append(n) or real(n, *a, **k)
    try:
        before = set(sys.modules)
        with pytest.raises(ConfigError):
            get_workload(name)
        assert calls == [] and set(sys.modules) - before == set()
    finally:
        importlib.import_module = real


def test_explicit_module_factory_is_imported(no_imports) -> None:
    w = get_workload("tests.reliability.workloads:linear_only", baseline_epochs=0.0)
    assert w.name == "linear_only"
    assert no_imports[0] == "tests.reliability.workloads"  # then only what that module imports


def test_dashboard_url_comes_from_the_public_init_context(monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    assert runner._start_ray(SearchConfig(), "x") == (True, "http://127.0.0.1:8265")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # the caller's own Ray: not ours to report
    assert runner._start_ray(SearchConfig(), "x") == (False, None)


def test_the_package_uses_no_private_ray_or_optuna_module() -> None:
    offenders = [str(p) for p in PACKAGE.rglob("*.py")
                 if "ray._private" in p.read_text() or "optuna._" in p.read_text()]
    assert offenders == []
