"""The whole pipeline on Spark Connect with the lake in an S3-compatible object store.

On loopback: moto's S3 server, and a Spark Connect server with Delta and Hadoop's S3A connector
(``crossrec cluster connect``). ``crossrec prepare``, ``train``, ``score`` run as client processes with
``--spark-remote`` and ``--lake-root s3a://...``: Spark reads and writes through S3A, training reads through
``deltalake`` and keeps Ray Train's run storage on the store, the artifact is copied there and registered in MLflow
by its ``s3://`` URI, and the Data Docs go there too. The tables prepare writes equal those the embedded session
wrote from the same raw data and key on a local lake (the ``scored_lake`` fixture), and the Spark-free readers read
the published run from the store.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import SCORE_DAY, SCORE_K, moto_s3

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.ray]

BUCKET = "crossrec-test"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """moto's S3 server with the test's bucket; the AWS variables every client reads, set for the module."""
    server, env = moto_s3(BUCKET)
    env.update({"CROSSREC_CACHE_DIR": str(tmp_path_factory.mktemp("artifact-cache")),
                "CROSSREC_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the readers this test calls in-process, and the servers it starts, read them too
    yield env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


@pytest.fixture(scope="module")
def connect_url(s3_env, tmp_path_factory):
    from crossrec import cluster
    from crossrec.io.spark import with_object_store

    state = str(tmp_path_factory.mktemp("connect"))
    info = cluster.connect(state, "local[2]", conf=with_object_store({}, [f"s3a://{BUCKET}/"], embedded=True))
    yield info["url"]
    cluster.down(state)


def crossrec(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "crossrec.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, timeout=900).returncode
    assert rc == 0, f"crossrec {args[0]} exited {rc}:\n" + log.read_text()[-3000:]


def frame(lake: str, table: str, drop: tuple[str, ...] = ()):
    import numpy as np

    from crossrec.io.readers import read_table

    df = read_table(lake, table)
    df = df.drop(columns=[c for c in drop if c in df.columns])
    for c in df.columns:  # arrays and maps as text, so the rows sort
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: str(list(v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_pipeline_on_spark_connect_with_the_lake_in_an_object_store(scored_lake, s3_env, connect_url, tmp_path):
    import pandas as pd

    from crossrec.io.readers import published_run, read_recommendations
    from crossrec.io.registry import Registry

    lake = f"s3a://{BUCKET}/lake"
    common = ["--lake-root", lake, "--pseudonym-key-file", str(scored_lake["key"]), "--run-date", SCORE_DAY]
    remote = [*common, "--spark-remote", connect_url]
    crossrec(["prepare", "--raw-dir", str(scored_lake["raw"]), *remote], tmp_path / "prepare.log")
    crossrec(["train", *common, "--epochs", "1", "--workers", "1", "--no-refit"], tmp_path / "train.log")
    crossrec(["score", *remote, "--k", str(SCORE_K)], tmp_path / "score.log")

    ran = "".join((tmp_path / f"{s}.log").read_text() for s in ("prepare", "train", "score"))
    assert "via Spark Connect at " + connect_url in ran
    assert "expectations passed" in ran  # the checks ran on the Connect session (scored_lake skips them)
    run_cols = ("run_id", "model_version")
    for table in ("silver.interactions", "silver.items", "gold.item_index", "gold.user_sequences"):
        ours, theirs = frame(lake, table, run_cols), frame(str(scored_lake["lake"]), table, run_cols)
        pd.testing.assert_frame_equal(ours, theirs, obj=table)

    champion = Registry(lake, s3_env["CROSSREC_MLFLOW_TRACKING_URI"]).champion()
    assert champion is not None and champion.folder == f"s3://{BUCKET}/lake/models/{champion.model_version}"
    for marker in ("MLmodel", "config.json", "model.safetensors", "item_index.parquet"):
        assert f"lake/models/{champion.model_version}/{marker}" in keys("lake/models/")
    assert any(k.startswith("lake/_ray/") and "checkpoint" in k for k in keys("lake/_ray/")), "no Ray checkpoint on the store"
    assert f"lake/_reports/clean-{SCORE_DAY}/docs/index.html" in keys("lake/_reports/")

    run = published_run(lake)
    assert run["model_version"] == champion.model_version and run["run_date"] == SCORE_DAY
    recs = read_recommendations(lake)
    per_user = recs.groupby(["user_id", "domain"]).size()
    assert len(per_user) > 0 and (per_user == SCORE_K).all()
    assert recs.user_id.nunique() == frame(lake, "silver.interactions")["user_id"].nunique()  # every active user
