"""The Colab notebooks execute top to bottom on the CPU (they only import the package)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


def test_there_are_four_notebooks():
    assert {p.stem for p in NOTEBOOKS} == {
        "quickstart",
        "tree_explorer",
        "judge_debugging",
        "learning_curves",
    }


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # the kernel sees one CPU device, as in Colab
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    # No library code in notebooks: every def is a tiny local helper, no classes.
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "class " not in src and src.count("def ") <= 1
