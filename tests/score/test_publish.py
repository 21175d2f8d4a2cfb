"""``crossrec publish`` on a scored lake: it publishes the version score recorded for the run date, checks any version
with --check-only without publishing it, and refuses a run date no score run recorded."""
from __future__ import annotations

import shutil

import pytest
from deltalake import DeltaTable

from crossrec.io.runs import Ledger
from crossrec_jobs import publish
from support import SCORE_DAY

pytestmark = pytest.mark.spark


def test_publish_checks_and_points_readers_at_the_recorded_run(spark, scored_lake, tmp_path, capsys):
    lake = tmp_path / "lake"
    shutil.copytree(scored_lake["lake"], lake)
    table = str(lake / "gold" / "recommendations")
    common = ["--lake-root", str(lake), "--pseudonym-key-file", str(scored_lake["key"]), "--spark-master", "local[2]"]
    recorded = int([r for r in Ledger(str(lake)).succeeded("score") if r["run_date"] == SCORE_DAY][-1]
                   ["writes"]["gold.recommendations"])

    before = DeltaTable(table).version()
    assert publish.main([*common, "--run-date", SCORE_DAY, "--table-version", str(recorded), "--check-only"]) == 0
    assert "output checks passed" in capsys.readouterr().out
    assert DeltaTable(table).version() == before, "--check-only commits nothing"

    assert publish.main([*common, "--run-date", SCORE_DAY]) == 0
    out = capsys.readouterr().out
    assert f"published gold.recommendations v{recorded} (run_date {SCORE_DAY}" in out
    assert "output checks passed" not in out, "score validated the version it recorded: no second check"
    conf = DeltaTable(table).metadata().configuration
    assert int(conf["crossrec.published.version"]) == recorded and conf["crossrec.published.run_date"] == SCORE_DAY
    assert Ledger(str(lake)).succeeded("publish")[-1]["writes"] == {"gold.recommendations": DeltaTable(table).version()}

    assert publish.main([*common, "--run-date", "2024-12-31"]) == 2, "no score run recorded for that date"


def test_an_artifact_folder_outside_the_lake_is_scored_checked_and_published(spark, scored_lake, tmp_path, capsys):
    """``--model-version FOLDER`` may name an artifact that neither the registry nor the lake's models/ holds (what
    ``crossrec train --no-register --model-root`` writes): score checks the rows against that folder, and publish
    finds it in the score run's record."""
    from crossrec_jobs import score

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake["lake"], lake)
    folder = tmp_path / "elsewhere" / "20250105-copy0001"
    shutil.copytree(next((lake / "models").glob("*-test*")), folder)
    common = ["--lake-root", str(lake), "--pseudonym-key-file", str(scored_lake["key"]), "--spark-master", "local[2]"]
    table = str(lake / "gold" / "recommendations")

    day = "2025-01-05"
    assert score.main([*common, "--run-date", day, "--model-version", str(folder), "--no-publish"]) == 0
    run = [r for r in Ledger(str(lake)).succeeded("score") if r["run_date"] == day][-1]
    assert run["details"]["model_folder"] == str(folder) and run["details"]["validated"]

    day = "2025-01-06"  # not checked by score: publish checks it against the recorded folder, then publishes
    assert score.main([*common, "--run-date", day, "--model-version", str(folder), "--no-validate", "--no-publish"]) == 0
    assert publish.main([*common, "--run-date", day]) == 0
    out = capsys.readouterr().out
    assert "output checks passed" in out and "model 20250105-copy0001" in out
    assert DeltaTable(table).metadata().configuration["crossrec.published.run_date"] == day
