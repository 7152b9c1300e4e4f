"""notebooks/analysis.ipynb: stored without outputs, and runs end to end on a tiny run, its report and a sweep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import HANG_TIMEOUT_S, ROOT

NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
KERNEL = "wrncifar-tests"
# Figures each tagged cell draws on the tiny synthetic run (no superclasses: three report figures, not four).
FIGURES = {"figure-curves": 1, "figure-report": 3, "figure-gallery": 1, "figure-sweep": 1}


def test_the_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def with_parameters(notebook: nbformat.NotebookNode, **values: object) -> nbformat.NotebookNode:
    """Papermill's convention: a cell right after the one tagged `parameters` sets the values."""
    (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, injected)
    return notebook


@pytest.fixture
def this_interpreters_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec that starts ipykernel in the interpreter running the tests (not whatever `python3` is)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


@pytest.mark.slow
def test_the_notebook_runs_on_a_tiny_run_and_draws_its_figures(
    trained_run: Path, evaluated_run: Path, sweep_dir: Path, this_interpreters_kernel: str
) -> None:
    notebook = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        run_dir=str(trained_run),
        report_dir=str(evaluated_run / "report"),
        sweep_dir=str(sweep_dir),
    )
    client = NotebookClient(
        notebook,
        kernel_name=this_interpreters_kernel,
        timeout=HANG_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # Jupyter starts a notebook in its folder
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    figures = {}
    for cell in notebook.cells:
        for tag in cell.metadata.get("tags", []):
            if tag.startswith("figure-"):
                figures[tag] = sum("image/png" in output.get("data", {}) for output in cell.outputs)
    assert figures == FIGURES
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "No superclasses" in printed
    assert f"sweep:  {sweep_dir}" in printed
