"""Prepare stage: ingest -> clean -> features in one Spark application.

Run it:
    crossrec prepare --raw-dir demo-data/raw --lake-root lakehouse [--max-seq-len 50]
    python -m crossrec_jobs.prepare ...                     # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/prepare.py --spark-master none --raw-dir s3a://bucket/raw --lake-root s3a://bucket/lake

The three data stages, each exactly as its own job runs it (jobs/ingest.py, jobs/clean.py, jobs/features.py:
the same tables, checks, row accounting and run ids), one after the other in one Spark session. It is for
running the data stages without an orchestrator: one application start instead of three (on a cluster each
start also brings up a fresh set of executors). It stops at the first stage that fails, with that stage's
exit code, and the stages after it do not run. The Airflow DAG runs the stages as separate tasks instead,
with its own validation task between clean and features.
"""
from __future__ import annotations

import logging
import sys
import time

from crossrec.cli.common import run_job
from crossrec.io.accounting import AccountingRow
from crossrec.io.config import CrossrecConfig
from crossrec_jobs import clean, features, ingest

log = logging.getLogger("crossrec.jobs.prepare")
STAGE = "prepare"
STAGES = (ingest, clean, features)

# features' flags are the common ones (raw dir included) plus its own
add_arguments = features.add_arguments


def run(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Run ingest, clean and features in order on ``spark``; return their row accounting, in that order."""
    accounting: list[AccountingRow] = []
    for job in STAGES:
        t0 = time.time()
        log.info("prepare: %s", job.STAGE)
        accounting += job.run(cfg, spark)
        log.info("prepare: %s done in %.1fs", job.STAGE, time.time() - t0)
    return accounting


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
