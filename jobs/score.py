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
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.io.config import CrossrecConfig
from crossrec.score.stage import STAGE, USERS_PER_PARTITION, run_score


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("score")
    g.add_argument("--k", type=int, default=10, help="items per user and domain (default 10)")
    g.add_argument("--model-version", help="registered version (3, @alias, models:/crossrec/3), artifact version or "
                   "artifact folder (default: models:/crossrec@champion)")
    g.add_argument("--batch-users", type=int, default=1024, help="users per model batch inside a task (default 1024)")
    g.add_argument("--users-per-partition", type=int, default=USERS_PER_PARTITION,
                   help=f"users per Spark task (default {USERS_PER_PARTITION:,})")
    g.add_argument("--no-publish", dest="publish", action="store_false", help="write and validate, but do not switch readers to this run")


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> dict:
    """:func:`crossrec.score.stage.run_score` with this job's flags."""
    return run_score(cfg, spark, k=a.k, version=a.model_version, publish=a.publish, batch_users=a.batch_users,
                     users_per_partition=a.users_per_partition)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
