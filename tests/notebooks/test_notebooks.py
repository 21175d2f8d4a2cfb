"""Every notebook in notebooks/ runs top to bottom (nbclient, a real kernel) on a generated, scored lake."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.spark
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_on_a_scored_lake(path, scored_lake, monkeypatch):
    monkeypatch.setenv("CROSSREC_LAKE_ROOT", str(scored_lake["lake"]))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "rows" in text and "recommended in" in text, "the summary and the example users were printed"
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plots were drawn"


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
    assert os.path.getsize(NOTEBOOKS[0]) > 0
