"""Every notebook in notebooks/ runs top to bottom (nbclient, a real kernel) on a generated, scored lake."""
from __future__ import annotations

import ast
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
    """Each notebook, without running it: valid nbformat, its code compiles, it reads the lake of CROSSREC_LAKE_ROOT
    through the public readers (crossrec.io.readers, no Spark), and every name and table it asks for exists."""
    import importlib

    from IPython.core.inputtransformer2 import TransformerManager

    from crossrec.quality.contracts import all_contracts

    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
    tables = {c.table for c in all_contracts()}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", f"{path.name}: the tests run it with the python3 kernel"
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code cells"
        trees = [ast.parse(TransformerManager().transform_cell(src), f"{path.name} cell {i}") for i, src in enumerate(code)]
        imports = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.ImportFrom)]
        readers = {a.name for n in imports if n.module == "crossrec.io.readers" for a in n.names}
        assert readers, f"{path.name} does not read the lake through crossrec.io.readers"
        for n in imports:
            if (n.module or "").startswith("crossrec"):
                module = importlib.import_module(n.module)
                missing = [a.name for a in n.names if not hasattr(module, a.name)]
                assert not missing, f"{path.name} imports {missing} from {n.module}, which has no such names"
        modules = {n.module or "" for n in imports} | {a.name for t in trees for n in ast.walk(t) if isinstance(n, ast.Import)
                                                   for a in n.names}
        assert not {m for m in modules if m.split(".")[0] == "pyspark"}, f"{path.name} should read the lake without Spark"
        read = [n.args[1].value for t in trees for n in ast.walk(t) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "read_table" and len(n.args) > 1 and isinstance(n.args[1], ast.Constant)]
        assert set(read) <= tables, f"{path.name} reads tables without a contract: {set(read) - tables}"
        assert "CROSSREC_LAKE_ROOT" in "".join(code), f"{path.name} ignores CROSSREC_LAKE_ROOT (the executing test sets it)"
