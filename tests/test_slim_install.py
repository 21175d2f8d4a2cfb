"""The slim reader install: `pip install crossrec` (no extras) into a fresh venv has no JVM stack and no torch, and
its `crossrec tables` / `crossrec recs` and `crossrec.io.readers` read a lake the pipeline wrote.

The venv is built from this working tree with uv (from the dev install) and PyPI; the lake is the session's
``scored_lake`` (conftest.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossrec.io.readers import read_recommendations

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "pyspark", "ray", "great-expectations", "transformers", "delta-spark", "apache-airflow", "scipy"}


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("slim") / "venv"
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip(f"uv is not installed next to {sys.executable} (make install puts it there)")
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(REPO)], check=True)
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_slim_install_reads_the_lake_without_spark_or_torch(slim_venv, scored_lake):
    listed = _run(slim_venv, "python", "-c", "import importlib.metadata as m, json; "
                  "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))")
    installed = set(json.loads(listed.stdout))
    assert "crossrec" in installed and "deltalake" in installed
    assert not installed & HEAVY, f"the slim install pulls {sorted(installed & HEAVY)}"

    lake = str(scored_lake["lake"])
    tables = _run(slim_venv, "crossrec", "tables", "--lake-root", lake)
    assert tables.returncode == 0, tables.stderr
    assert "gold.recommendations" in tables.stdout and "silver.interactions" in tables.stdout

    want = read_recommendations(lake)
    user = want.user_id.iloc[0]
    recs = _run(slim_venv, "crossrec", "recs", user, "--pseudonymized", "--lake-root", lake, "--json")
    assert recs.returncode == 0, recs.stderr
    got = json.loads(recs.stdout)
    mine = want[want.user_id == user].sort_values(["domain", "rank"])
    assert [(r["domain"], r["rank"], r["item_id"]) for r in got] == list(zip(mine.domain, mine["rank"], mine.item_id))

    code = (f"from crossrec.io.readers import read_recommendations as r; d = r({lake!r}); "
            "print(len(d), d.user_id.nunique())")
    readers = _run(slim_venv, "python", "-c", code)
    assert readers.returncode == 0, readers.stderr
    assert readers.stdout.split() == [str(len(want)), str(want.user_id.nunique())]


@pytest.mark.slow
def test_slim_install_names_the_extra_a_command_needs(slim_venv, scored_lake):
    lake = str(scored_lake["lake"])
    query = _run(slim_venv, "crossrec", "query", "sea stories", "--lake-root", lake)
    assert query.returncode == 2 and "pip install 'crossrec[pipeline]'" in query.stderr, query.stderr
    clean = _run(slim_venv, "crossrec", "clean", "--lake-root", lake)
    assert clean.returncode == 2 and "needs pyspark" in clean.stderr, clean.stderr
    assert "Traceback" not in query.stderr + clean.stderr
