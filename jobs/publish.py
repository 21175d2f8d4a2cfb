"""Publish stage: check one run of gold.recommendations and point readers at it.

Run it:
    crossrec publish --lake-root lakehouse --run-date 2026-11-23            # check the newest version, publish it
    crossrec publish --lake-root lakehouse --run-date 2026-11-23 --check-only    # check only (exit 3 on failure)
    crossrec publish --lake-root lakehouse --run-date 2026-11-23 --table-version 7 --skip-checks

Readers (``crossrec.io.readers.read_recommendations``, ``crossrec recs``) follow the table properties
``crossrec.published.{version,run_date,model_version,k,published_at}``; this job sets them (one Delta commit)
only after the run's rows passed the output checks (lib/crossrec/score/stage.py ``validate_run``), unless
--skip-checks says a task before it already did (the Airflow DAG passes the version it validated).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.rawformat import RawFormatError
from crossrec.io.config import CrossrecConfig

log = logging.getLogger("crossrec.jobs.publish")
STAGE = "publish"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("publish")
    g.add_argument("--table-version", type=int, help="gold.recommendations version to check/publish (default: the newest)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--check-only", action="store_true", help="run the output checks, publish nothing")
    mode.add_argument("--skip-checks", action="store_true", help="publish without checking (the version was checked before)")


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> dict:
    """Check and/or publish; returns {version, run_date, model_version, k, published}."""
    from crossrec.io.delta import latest_version, table_exists
    from crossrec.score import stage as S

    path = cfg.table_path("gold.recommendations")
    if not table_exists(spark, path):
        raise RawFormatError(f"gold.recommendations does not exist at {path}: run `crossrec score` first")
    run_date = dt.date.fromisoformat(cfg.run_date)
    version = a.table_version if a.table_version is not None else latest_version(spark, path)
    if a.skip_checks:
        from pyspark.sql import functions as F

        from crossrec.io.delta import read_table

        meta = read_table(spark, path, version).where(F.col("run_date") == F.lit(run_date)).agg(
            F.max("rank").alias("k"), F.collect_set("model_version").alias("mv")).first()
        if not meta["mv"]:
            raise RawFormatError(f"gold.recommendations v{version} has no rows for run_date {run_date}")
        model_version, k = meta["mv"][0], int(meta["k"])
    else:
        _, model_version, k = S.validate_run(spark, cfg, version, run_date)
        print(f"gold.recommendations v{version} run_date {run_date}: output checks passed")
    out = {"version": version, "run_date": run_date.isoformat(), "model_version": model_version, "k": k, "published": False}
    if not a.check_only:
        S.publish(spark, path, version, run_date, model_version, k)
        out["published"] = True
        print(f"published gold.recommendations v{version} (run_date {run_date}, model {model_version}, k={k})")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
