"""Publish stage: check one run of gold.recommendations and point readers at it.

Run it:
    crossrec publish --lake-root lakehouse --run-date 2026-11-23            # the version score recorded for that date
    crossrec publish --lake-root lakehouse --run-date 2026-11-23 --check-only    # check only (exit 3 on failure)
    crossrec publish --lake-root lakehouse --run-date 2026-11-23 --table-version 7 --skip-checks

Readers (``crossrec.io.readers.read_recommendations``, ``crossrec recs``) follow the table properties
``crossrec.published.{version,run_date,model_version,k,published_at}``; this job sets them (one Delta commit).
By default it publishes the table version the newest succeeded ``crossrec score`` run of --run-date recorded in
ops.runs (score validated it before recording it: no second check), else it checks the version first
(lib/crossrec/score/stage.py ``validate_run``) unless --skip-checks. Publishing moves forward only: a run date
older than the published one is refused (exit 2) unless --force.
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
    g.add_argument("--table-version", type=int, help="gold.recommendations version to check/publish (default: the one the "
                   "newest score run of --run-date recorded)")
    g.add_argument("--force", action="store_true", help="publish even when a newer run date is published (moves readers back)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--check-only", action="store_true", help="run the output checks, publish nothing")
    mode.add_argument("--skip-checks", action="store_true", help="publish without checking (the version was checked before)")


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> dict:
    """Check and/or publish; returns {version, run_date, model_version, k, published}."""
    from crossrec.io.runs import stage_run

    with stage_run(spark, cfg, STAGE, []) as stage:
        out = _publish(cfg, spark, a)
        stage.reads = {"gold.recommendations": out["version"]}
        if out["published"]:
            stage.writes = {"gold.recommendations": out["table_version"]}
        return out


def _publish(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> dict:
    from crossrec.io.delta import table_exists
    from crossrec.io.runs import Ledger
    from crossrec.score import stage as S

    path = cfg.table_path("gold.recommendations")
    if not table_exists(spark, path):
        raise RawFormatError(f"gold.recommendations does not exist at {path}: run `crossrec score` first")
    run_date = dt.date.fromisoformat(cfg.run_date)
    skip_checks, version = a.skip_checks, a.table_version
    if version is None:
        scored = [r for r in Ledger(cfg.lake_uri).succeeded("score") if r["run_date"] == cfg.run_date]
        if not scored:
            raise RawFormatError(f"no succeeded `crossrec score` run for {run_date} in ops.runs: score it first, or name "
                                 "the version with --table-version")
        version = int(scored[-1]["writes"]["gold.recommendations"])
        skip_checks = skip_checks or bool(scored[-1]["details"].get("validated"))
        log.info("publishing v%d, recorded by score run %s%s", version, scored[-1]["run_id"],
                 " (validated by it)" if skip_checks else "")
    if skip_checks:
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
        try:
            out["table_version"] = S.publish(spark, path, version, run_date, model_version, k, force=a.force)
        except S.PublishBackwards as e:
            raise RawFormatError(str(e)) from None
        out["published"] = True
        print(f"published gold.recommendations v{version} (run_date {run_date}, model {model_version}, k={k})")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
