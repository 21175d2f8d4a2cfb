"""Score stage: model artifact + silver.interactions -> gold.recommendations (top-K per user and domain).

Run it:
    crossrec score --lake-root lakehouse [--k 10] [--model-version V] [--run-date 2026-11-23] [--no-publish]
    python -m crossrec_jobs.score ...                       # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/score.py --spark-master none --lake-root s3a://bucket/lake ...

For every active user (anyone in silver.interactions) and every domain: the K best items the user has not
interacted with, scored by the Transformer from the user's whole cross-domain history (a Spark
``mapInArrow`` stage; the artifact loads once per executor process; GPU when the executor has one), with
``reason`` = the history item that most supports each pick; users with no history the model knows get the
most popular unseen items, reason ``popularity``. The rows for --run-date replace that date's partition in
one Delta commit (a re-run never doubles them; a killed run leaves the previous version readable). Great
Expectations then checks the run (contract + K rows per user and domain, ranks 1..K, non-increasing scores,
no seen item, every active user present); only then is the version published to readers (table properties
``crossrec.published.*``; --no-publish leaves that to `crossrec publish`). Library: lib/crossrec/score/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.rawformat import RawFormatError
from crossrec.io.accounting import AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import read_table, table_exists, write_table
from crossrec.io.runs import pinned_versions, stage_run
from crossrec.quality.contracts import load_contract

log = logging.getLogger("crossrec.jobs.score")
STAGE = "score"
TABLE = "gold.recommendations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("score")
    g.add_argument("--k", type=int, default=10, help="items per user and domain (default 10)")
    g.add_argument("--model-version", help="registered version (3, @alias, models:/crossrec/3), artifact version or "
                   "artifact folder (default: models:/crossrec@champion)")
    g.add_argument("--batch-users", type=int, default=1024, help="users per model batch inside a task (default 1024)")
    g.add_argument("--users-per-partition", type=int, default=5000, help="users per Spark task (default 5000)")
    g.add_argument("--no-publish", dest="publish", action="store_false", help="write and validate, but do not switch readers to this run")


def artifact_folder(cfg: CrossrecConfig, version: str | None) -> str:
    """The model artifact to score with (crossrec.io.registry.artifact_folder; None = the registry's champion)."""
    from crossrec.io.registry import artifact_folder

    return artifact_folder(cfg.lake_uri, version, cfg.mlflow_tracking_uri)


def run(cfg: CrossrecConfig, spark, k: int = 10, version: str | None = None, publish: bool = True,
        batch_users: int = 1024, users_per_partition: int = 5000) -> dict:
    """Score every active user, write and validate the run_date's partition, record the run in ops.runs, publish it
    (not when a newer run date is published: a backfill is written and checked only); returns a summary."""
    with stage_run(spark, cfg, STAGE, [TABLE]) as stage:
        return _score(cfg, spark, stage, k, version, publish, batch_users, users_per_partition)


def _score(cfg: CrossrecConfig, spark, stage, k: int, version: str | None, publish: bool, batch_users: int,
           users_per_partition: int) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from crossrec.score import stage as S

    if k < 1:
        raise RawFormatError(f"--k must be >= 1, got {k}")
    if publish and not cfg.validate:
        raise RawFormatError("--no-validate needs --no-publish: only validated runs are published (`crossrec publish` checks first)")
    t0 = time.time()
    folder = artifact_folder(cfg, version)
    model_version = os.path.basename(folder.rstrip("/"))
    run_date = dt.date.fromisoformat(cfg.run_date)
    inter_path = cfg.table_path("silver.interactions")
    if not table_exists(spark, inter_path):
        raise RawFormatError(f"silver.interactions does not exist at {inter_path}: run `crossrec clean` first")
    silver_v = pinned_versions(spark, cfg.lake_uri, ["silver.interactions"])["silver.interactions"]
    stage.reads = {"silver.interactions": silver_v}
    stage.details.update(model_version=model_version, k=k)
    inter = read_table(spark, inter_path, silver_v)
    catalog = S.catalog_frame(spark, folder).persist()
    n_items = catalog.count()
    domains = sorted(r[0] for r in catalog.select("domain").distinct().collect())
    firsts = S.first_events(inter).persist(StorageLevel.MEMORY_AND_DISK)
    hist = S.user_histories(firsts, catalog).persist(StorageLevel.MEMORY_AND_DISK)
    n_users = hist.count()
    if n_users == 0:
        raise RawFormatError(f"silver.interactions v{silver_v} has no users to score")
    stats = hist.agg(F.sum((F.size("item_idx") == 0).cast("long")).alias("fallback"),
                     F.sum("n_unknown").alias("unknown")).first()
    log.info("scoring with %s (%d items, domains %s): %d active users (silver.interactions v%d), %d without known "
             "history (popularity), %d seen items unknown to the model", model_version, n_items, domains, n_users,
             silver_v, stats["fallback"], stats["unknown"])
    pop = S.popularity(firsts, catalog, n_items)

    contract = load_contract(TABLE)
    recs = S.score_users(spark, hist, folder, k, pop, run_date, n_users, contract.spark_schema(), batch_users, users_per_partition)
    path = cfg.table_path(TABLE)
    with S.Progress(spark, STAGE, n_users, tasks=S.scoring_partitions(spark, n_users, users_per_partition)):
        t_score = time.time()
        version_written = write_table(spark, recs, contract, path, "overwrite", replace_where=f"run_date = '{run_date.isoformat()}'")
        score_s = time.time() - t_score
    written = read_table(spark, path, version_written).where(F.col("run_date") == F.lit(run_date))
    per_domain = {r["domain"]: r for r in written.groupBy("domain").agg(
        F.count("*").alias("rows"), F.countDistinct("user_id").alias("users"),
        F.sum((F.col("reason") == "popularity").cast("long")).alias("fallback_rows")).collect()}
    n_rows = sum(r["rows"] for r in per_domain.values())
    log.info("scored %d users in %.1fs (%.0f users/s): %d rows", n_users, score_s, n_users / max(score_s, 1e-9), n_rows)

    # users who already have every item of a domain get no row there: counted as withheld, not lost
    exhausted = {r["domain"]: r["count"] for r in S.exhausted_users(firsts, catalog).groupBy("domain").count().collect()}
    accounting = []
    for d in domains:
        r = per_domain.get(d)
        row = AccountingRow(STAGE, TABLE, d, rows_in=n_users, rows_out=int(r["users"]) if r else 0,
                            withheld=int(exhausted.get(d, 0)))
        row.details = {"unit": "users (withheld: nothing unseen left in the domain)", "rows": int(r["rows"]) if r else 0,
                       "fallback_rows": int(r["fallback_rows"]) if r else 0, "model_version": model_version}
        accounting.append(row)

    if cfg.validate:
        report, _, _ = S.validate_run(spark, cfg, version_written, run_date)
        stage.details["data_docs"] = report.docs_url
    print(format_accounting(accounting))
    check_balanced(accounting)  # every active user has recommendations in every domain
    write_accounting(spark, cfg, cfg.effective_run_id(STAGE), accounting)
    stage.writes, stage.accounting = {TABLE: version_written}, accounting
    stage.details["validated"] = bool(cfg.validate)
    published = None
    if publish:
        try:
            published = S.publish(spark, path, version_written, run_date, model_version, k)
            stage.writes[TABLE] = published
        except S.PublishBackwards as e:
            log.warning("%s", e)
            publish = False
    for frame in (catalog, firsts, hist):
        frame.unpersist()
    summary = {"run_date": run_date.isoformat(), "model_version": model_version, "users": n_users, "rows": n_rows,
               "table_version": version_written, "published": publish, "score_s": round(score_s, 1),
               "users_per_s": round(n_users / max(score_s, 1e-9), 1), "wall_s": round(time.time() - t0, 1)}
    print(f"gold.recommendations v{version_written}: {n_rows:,} rows for {n_users:,} users x {len(domains)} domains "
          f"(k={k}), {summary['users_per_s']:.0f} users/s; "
          + (f"published (table v{published})" if publish else "not published (--no-publish)"))
    return summary


def main(argv: list[str] | None = None) -> int:
    def body(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> None:
        run(cfg, spark, k=a.k, version=a.model_version, publish=a.publish, batch_users=a.batch_users,
            users_per_partition=a.users_per_partition)

    return run_job(STAGE, __doc__, add_arguments, body, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
