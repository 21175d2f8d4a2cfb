"""Tests of the ``crossrec`` console script, run as a subprocess the way README users run it.

Only sub-commands that need no Spark session run here: help texts, ``generate``, ``import`` errors and
``tables`` on an empty lake (argparse exits before any session is built).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossrec.cli.main import main
from crossrec.data.rawformat import load_dataset

CROSSREC = Path(sys.executable).with_name("crossrec")
pytestmark = pytest.mark.skipif(not CROSSREC.is_file(), reason=f"console script {CROSSREC} not installed")


def crossrec(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # a generous timeout: none of these start Spark, so a hang means something does
    return subprocess.run([str(CROSSREC), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_help_lists_every_command():
    r = crossrec("--help")
    assert r.returncode == 0, r.stderr
    commands = [line.split()[0] for line in r.stdout.split("commands:", 1)[1].splitlines() if line.strip()]
    assert commands == ["generate", "import", "tables", "recs", "query", "models", "cluster", "bench", "ingest", "clean", "features",
                        "prepare", "train", "evaluate", "score", "publish", "validate", "forget", "maintain"]


def test_no_arguments_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out
    assert main(["-h"]) == 0


def test_unknown_command_exits_2():
    r = crossrec("ingets")
    assert r.returncode == 2
    assert "unknown command 'ingets'" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("stage", ["ingest", "clean", "features", "prepare"])
def test_stage_help_shows_the_common_flags_without_spark(stage):
    r = crossrec(stage, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: crossrec {stage}")
    for flag in ("--raw-dir", "--lake-root", "--run-date", "--run-id", "--spark-master", "--pseudonym-key-file",
                 "--config", "--no-validate"):
        assert flag in r.stdout, flag
    assert r.stderr == ""  # nothing from a JVM / Spark session


def test_validate_offers_no_flag_to_skip_validation():
    r = crossrec("validate", "--help")
    assert r.returncode == 0 and "--tables" in r.stdout, r.stderr
    assert "--no-validate" not in r.stdout


def test_version_names_the_installed_package():
    from importlib.metadata import version

    r = crossrec("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"crossrec {version('crossrec')}", (r.stdout, r.stderr)


@pytest.mark.parametrize("stage", ["ingest", "clean", "features", "evaluate", "train"])
def test_stage_rejects_an_unknown_flag(stage):
    r = crossrec(stage, "--lake-rot", "x")
    assert r.returncode == 2
    assert "unrecognized arguments: --lake-rot" in r.stderr


def test_generate_writes_a_raw_data_set(tmp_path):
    out = tmp_path / "raw"
    r = crossrec("generate", str(out), "--users", "50", "--domains", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["out"] == str(out)
    assert summary["users"]["total"] == 50
    assert summary["users"]["single_domain"] + summary["users"]["multi_domain"] == 50
    assert (out / "dataset.json").is_file()
    ds = load_dataset(out)  # what generate writes follows the documented raw format
    assert len(ds.domains) == 2
    assert all(fs.files for fs in ds.file_sets)


def test_generate_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert crossrec("generate", str(a), "--users", "30", "--seed", "3").returncode == 0
    assert crossrec("generate", str(b), "--users", "30", "--seed", "3").returncode == 0
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert Path("dataset.json") in files_a and Path("manifest.json") in files_a
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_import_with_missing_source_exits_2(tmp_path):
    src, out = tmp_path / "missing", tmp_path / "out"
    r = crossrec("import", "amazon-food-kitchen", str(src), str(out))
    assert r.returncode == 2
    assert str(src / "items.tsv") in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()  # nothing written when the source is incomplete


def test_import_needs_a_source_kind():
    r = crossrec("import")
    assert r.returncode == 2
    assert "amazon-food-kitchen" in r.stderr


def test_tables_on_an_empty_lake_exits_2(tmp_path):
    r = crossrec("tables", "--lake-root", str(tmp_path))
    assert r.returncode == 2
    assert f"no crossrec tables under {tmp_path}" in r.stderr
