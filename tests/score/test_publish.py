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
