"""Static checks of the package's safety rules (each can fail on a single bad line).

- every ``torch.load`` passes ``weights_only=True``;
- no ``torch.save`` of a whole model object;
- no pickle reading or writing, except CIFAR-10's own data format, read through an
  unpickler that whitelists numpy array reconstruction;
- the pruning core imports neither ray nor optuna (usable on its own, as NNI was).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tune_prune"
SOURCES = sorted(PACKAGE.rglob("*.py"))
PICKLE_ALLOWED = {PACKAGE / "workloads" / "cifar.py"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                yield owner.id, node.func.attr, node


def test_the_scan_sees_the_package():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_torch_load_is_weights_only_and_no_model_is_pickled(path: Path):
    tree = ast.parse(path.read_text())
    for owner, attr, node in _calls(tree):
        where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
        if owner == "torch" and attr == "load":
            flags = {k.arg: k.value for k in node.keywords}
            value = flags.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, (
                f"{where}: torch.load without weights_only=True"
            )
        if owner == "torch" and attr == "save" and node.args:
            first = ast.unparse(node.args[0])
            assert not first.endswith(("model", "module", "net")), (
                f"{where}: torch.save({first}, ...) looks like a whole model; save its state_dict()"
            )
        if owner in {"pickle", "cloudpickle", "dill", "joblib"} and attr in {"load", "loads", "dump", "dumps"}:
            pytest.fail(f"{where}: {owner}.{attr} (write state dicts, masks and JSON instead)")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pickle_only_where_a_data_format_needs_it(path: Path):
    tree = ast.parse(path.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    risky = imported & {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    if path in PICKLE_ALLOWED:
        # the CIFAR reader must restrict what a pickle may construct
        source = path.read_text()
        assert "def find_class" in source and "Unpickler" in source
    else:
        assert not risky, f"{path.relative_to(PACKAGE)} imports {sorted(risky)}"


def test_pruning_core_imports_neither_ray_nor_optuna():
    code = (
        "import sys, tune_prune.pruning, tune_prune.pruning.speedup, tune_prune.pruning.measure;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'optuna'});"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"tune_prune.pruning pulled in {proc.stdout.strip()} {proc.stderr[-500:]}"
