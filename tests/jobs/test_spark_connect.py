"""The Spark jobs on Spark Connect: a Connect server with Delta on loopback (``crossrec cluster connect``), and
``crossrec prepare`` then ``crossrec score`` as client processes with ``--spark-remote`` write the tables the embedded
session writes from the same raw data, model and key (the ``scored_lake`` fixture), checks included."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import SCORE_DAY, SCORE_K, write_artifact

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    from crossrec import cluster

    state = str(tmp_path_factory.mktemp("connect"))
    info = cluster.connect(state, "local[2]")
    yield info["url"]
    cluster.down(state)


def crossrec(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "crossrec.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, timeout=900).returncode
    assert rc == 0, f"crossrec {args[0]} exited {rc}:\n" + log.read_text()[-3000:]


def frame(lake: Path, table: str, drop: tuple[str, ...] = ()):
    from crossrec.io.readers import read_table

    df = read_table(str(lake), table)
    df = df.drop(columns=[c for c in drop if c in df.columns])
    import numpy as np

    for c in df.columns:  # arrays and maps as text, so the rows sort
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: str(list(v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_prepare_and_score_on_spark_connect_write_the_tables_of_the_embedded_session(scored_lake, connect_url, tmp_path):
    import pandas as pd

    lake = tmp_path / "lake"
    remote = ["--lake-root", str(lake), "--pseudonym-key-file", str(scored_lake["key"]), "--run-date", SCORE_DAY,
              "--spark-remote", connect_url]
    crossrec(["prepare", "--raw-dir", str(scored_lake["raw"]), *remote], tmp_path / "prepare.log")
    write_artifact(lake)  # the model scored_lake scored with (same seed, same catalog)
    crossrec(["score", *remote, "--k", str(SCORE_K)], tmp_path / "score.log")

    ran = (tmp_path / "prepare.log").read_text() + (tmp_path / "score.log").read_text()
    assert "via Spark Connect at " + connect_url in ran
    assert "expectations passed" in ran  # the checks ran on the Connect session (scored_lake skips them)
    run_id = ["run_id", "model_version", "ingested_at", "cleaned_at", "built_at", "updated_at", "written_at"]
    for table in ("silver.interactions", "silver.items", "gold.item_index", "gold.user_sequences"):
        pd.testing.assert_frame_equal(frame(lake, table, tuple(run_id)), frame(scored_lake["lake"], table, tuple(run_id)),
                                      obj=table)
    ours, theirs = (frame(root, "gold.recommendations", ("model_version",)) for root in (lake, scored_lake["lake"]))
    assert len(ours) > 0
    pd.testing.assert_frame_equal(ours.drop(columns="score"), theirs.drop(columns="score"))
    assert (ours.score - theirs.score).abs().max() < 1e-5
