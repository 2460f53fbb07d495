"""The README's Python examples run as shown and print what the README says they do
(so the docs cannot drift from the code)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _check_one_shot(out: str) -> None:
    """50 % of the channels, dependency-aware, sped up: about a quarter of the MACs left."""
    m = re.fullmatch(r"MACs (\d+) -> (\d+), params (\d+) -> (\d+), val accuracy ([\d.]+)", out)
    assert m, out
    macs_before, macs_after, params_before, params_after = map(int, m.groups()[:4])
    assert macs_after < 0.3 * macs_before and params_after < 0.3 * params_before
    assert 0.5 < float(m.group(5)) <= 1.0


def _check_iterative(out: str) -> None:
    """NNI's scheduler example: sparsity grows to 0.50 and the best result is the LAST task
    (NNI's best_result_mode='latest' for formula schedules), even when task 0 scores higher."""
    tasks = re.findall(r"task (\d+): sparsity ([\d.]+), MACs (\d+), val accuracy ([\d.]+)", out)
    assert [int(t[0]) for t in tasks] == list(range(len(tasks))) and len(tasks) == 4
    sparsities = [float(t[1]) for t in tasks]
    assert sparsities == sorted(sparsities) and sparsities[0] == 0.0 and sparsities[-1] == 0.5
    best = re.search(r"best task (\d+): val accuracy ([\d.]+)", out)
    assert best and int(best.group(1)) == int(tasks[-1][0]) and best.group(2) == tasks[-1][3]


def _check_custom(out: str) -> None:
    assert 0.5 < float(out) <= 1.0  # the best score of the custom schedule


def _check_own_model(out: str) -> None:
    """The user's factory builds a workload that scores the user's trained weights."""
    m = re.fullmatch(r"val accuracy of my weights: ([\d.]+)", out)
    assert m and 0.8 < float(m.group(1)) <= 1.0, out


CHECKS = {"L1NormPruner(model, config_list": _check_one_shot, "AGPTaskGenerator(": _check_iterative,
          "class HalveTheRest": _check_custom, "from_dataloaders(build_model": _check_own_model}


def test_readme_has_examples():
    assert len(BLOCKS) >= 3
    for marker in CHECKS:  # every checked example is still in the README
        assert sum(marker in block for block in BLOCKS) == 1, marker


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a script's own folder is importable, as when run
    monkeypatch.delitem(sys.modules, "my_workload", raising=False)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.strip()
    assert out  # every example prints its result
    for marker, check in CHECKS.items():
        if marker in BLOCKS[index]:
            check(out)
