"""notebooks/analysis.ipynb runs end to end against a tiny real experiment.

The experiment comes from the search CLI itself (2 trials x 2 iterations of a quarter
epoch on a 1-epoch digits baseline); the notebook is executed with nbclient in a kernel
that is guaranteed to be THIS interpreter (see ``_kernel_manager``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"
KERNEL_NAME = "tune-prune-test-python"


def _kernel_manager(spec_root: Path):
    """A KernelManager whose only kernel spec runs ``sys.executable -m ipykernel_launcher``.

    Relying on the ``python3`` spec is fragile: the venv's spec (shipped by the ipykernel
    wheel) says ``python``, which jupyter_client maps to sys.executable, but a user-level
    spec (``~/.local/share/jupyter/kernels/python3``, ``jupyter kernelspec install``) can
    shadow it and point at another interpreter without tune_prune. Writing a spec with
    ipykernel's own ``write_kernel_spec`` (argv[0] = sys.executable) into a temporary
    folder and giving the KernelManager a KernelSpecManager that looks only there works
    on a fresh ``./run.sh`` venv with no ``ipykernel install`` step.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    write_kernel_spec(spec_root / KERNEL_NAME)
    ksm = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    assert ksm.get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_prune.search.cli import main

    storage = tmp_path_factory.mktemp("nb_results")
    code = main([
        "--num-samples", "2", "--min-iterations", "2", "--max-iterations", "2",
        "--finetune-epochs", "0.25", "--generators", "agp", "linear",
        "--workload-option", "baseline_epochs=1", "--storage-path", str(storage),
        "--name", "nb", "--max-concurrent", "2", "--num-cpus", "2", "--no-include-dashboard",
        "--early-stopping", "none",
    ])
    assert code == 0
    return storage / "nb"


def test_analysis_notebook_runs_and_saves_figures(experiment: Path, tmp_path: Path, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TUNE_PRUNE_EXPERIMENT", str(experiment))
    monkeypatch.setenv("TUNE_PRUNE_TOP_K", "2")
    monkeypatch.delenv("TUNE_PRUNE_FIGURES_DIR", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    figures = json.loads((experiment / "analysis" / "figures.json").read_text())
    assert set(figures) == {"score_vs_sparsity", "pareto_score_vs_cost", "topk_sparsity_curves"}
    for path in figures.values():
        assert Path(path).parent == experiment / "analysis"
        assert Path(path).stat().st_size > 1000
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 3
    # nothing written next to the notebook
    assert not list(NOTEBOOK.parent.glob("*.png"))


def test_missing_experiment_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """The first code cell fails with a message naming the variable, not a pandas traceback."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("TUNE_PRUNE_EXPERIMENT", str(tmp_path / "nope"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="TUNE_PRUNE_EXPERIMENT"):
        client.execute()


def test_default_is_newest_experiment_under_tune_prune_results(experiment: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    """Without TUNE_PRUNE_EXPERIMENT the notebook reads the newest folder of ./tune_prune_results."""
    import os

    import nbformat
    from nbclient import NotebookClient

    root = tmp_path / "tune_prune_results"
    old = root / "older"
    old.mkdir(parents=True)
    (old / "trials.csv").write_text("not,a,search\n")  # would break the notebook if chosen
    os.utime(old / "trials.csv", (0, 0))
    (root / "newest").symlink_to(experiment, target_is_directory=True)
    monkeypatch.delenv("TUNE_PRUNE_EXPERIMENT", raising=False)
    monkeypatch.setenv("TUNE_PRUNE_FIGURES_DIR", str(tmp_path / "figs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    out = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.get("output_type") == "stream")
    assert str(root / "newest") in out or str(experiment) in out, out
    assert len(list((tmp_path / "figs").glob("*.png"))) == 3
