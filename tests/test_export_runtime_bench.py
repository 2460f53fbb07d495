"""Smoke runs of benchmarks/export_runtime.py: table shape, the agreement check, no-ORT path."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from benchmarks import export_runtime as bench

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None


def _long_rows(text: str) -> list[list[str]]:
    """Rows of the first table (one row per variant), header and rule dropped."""
    table = text.split("\n\n")[1].splitlines()
    assert table[0] == "| " + " | ".join(bench.HEADERS) + " |"
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


@pytest.fixture(scope="module")
def quick_text() -> str:
    threads = torch.get_num_threads()
    try:
        return bench.main(["--quick"])
    finally:
        torch.set_num_threads(threads)


def test_quick_has_a_row_per_variant(quick_text: str) -> None:
    lines = quick_text.splitlines()
    assert lines[0] == "command: python benchmarks/export_runtime.py --quick"
    assert lines[1].startswith(f"torch {torch.__version__}, onnxruntime ")
    assert "torch.get_num_threads() = 1" in lines[2] and "intra_op_num_threads = 1" in lines[2]
    assert "load average (1/5/15 min) at start: " in lines[3] and "; at end: " in lines[3]

    rows = _long_rows(quick_text)
    cases = {(r[0], r[1], r[3]) for r in rows}
    # --quick: both models, dense + one sparsity, batches 1 and 8
    assert cases == {(m, s, b) for m in ("resnet20", "digits") for s in ("0", "0.5") for b in "18"}
    assert len(rows) == len(cases) * len(bench.VARIANTS)
    for case in cases:
        assert [r[4] for r in rows if (r[0], r[1], r[3]) == case] == list(bench.VARIANTS)
    for r in rows:
        if r[4] == bench.ORT and not HAVE_ORT:
            assert r[5] == "skipped (onnxruntime not installed)"
            continue
        assert float(r[5]) > 0, r
        assert r[6].endswith("x") and float(r[6][:-1]) > 0, r
        assert float(r[7]) <= 1e-4, r
        if r[4] == bench.EAGER:
            assert r[6] == "1.00x" and float(r[7]) == 0.0
    # pruning halves channels: fewer MACs than dense
    macs = {(r[0], r[1]): int(r[2].replace(",", "")) for r in rows}
    for m in ("resnet20", "digits"):
        assert macs[(m, "0.5")] < macs[(m, "0")] / 3


def test_agreement_check_fails_on_a_wrong_output(monkeypatch: pytest.MonkeyPatch) -> None:
    make = bench.make_channels_last

    def wrong(model, x):
        fwd = make(model, x)
        return lambda: fwd() + 1e-3

    monkeypatch.setattr(bench, "make_channels_last", wrong)
    with pytest.raises(bench.AgreementError, match="eager channels_last differs .* > tol"):
        bench.main(["--quick", "--models", "digits", "--no-jit"])


def test_agreement_check_fails_on_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    case = bench.Case("m", 0.0, 1, 1)
    case.forwards = {bench.EAGER: lambda: torch.zeros(1, 2),
                     bench.JIT: lambda: torch.full((1, 2), float("nan"))}
    with pytest.raises(bench.AgreementError, match="TorchScript frozen"):
        bench.check_agreement(case, 1e-4)


def test_without_onnxruntime_the_ort_rows_say_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "import_onnxruntime", lambda: None)
    text = bench.main(["--quick", "--models", "digits", "--no-jit", "--sparsities", "0"])
    assert "onnxruntime not installed" in text.splitlines()[1]
    assert "onnxruntime is NOT installed" in text
    rows = _long_rows(text)
    ort = [r for r in rows if r[4] == bench.ORT]
    assert len(ort) == 2 and all(r[5] == "skipped (onnxruntime not installed)" for r in ort)
    assert all(r[5] == "skipped (--no-jit)" for r in rows if r[4] == bench.JIT)


def test_round_to_keeps_multiples_of_it_and_labels_the_rows() -> None:
    models = bench.pruned_models("resnet20", [0.25], [1, 8, 16])
    assert [(s, r) for s, r, _, _ in models] == [(0.0, 1), (0.25, 1), (0.25, 8), (0.25, 16)]
    widths = {r: bench.conv_widths(m) for s, r, m, _ in models if s}
    assert widths == {1: "12/24/48", 8: "8/24/48", 16: "16/48"}  # 12 -> 8 or 16 (never below r)
    case = bench.Case("resnet20", 0.25, 1, 1, round_to=8, widths=widths[8])
    assert bench._sparsity(case) == "0.25, round_to 8 (8/24/48)"
    assert bench._sparsity(bench.Case("resnet20", 0.25, 1, 1)) == "0.25"
