"""The walkthrough notebook runs end to end (nbclient, a fresh kernel with its own embedded Ray)."""

from __future__ import annotations

import os

import nbformat
from helpers import REPO
from nbclient import NotebookClient


def test_walkthrough_notebook_executes(tmp_path, monkeypatch, spawns_ray):
    notebook = nbformat.read(REPO / "notebooks" / "walkthrough.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed clean
    output = tmp_path / "runs"
    monkeypatch.setenv("MINIGPT_NOTEBOOK_OUTPUT", str(output))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "winner:" in printed and "report:" in printed and "CompletionUsage" in printed
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) == 2  # the training curves and the Pareto plot
    assert (output / "report" / "report.md").is_file()
