"""Ingest stage: raw file sets (dataset.json) -> bronze.interactions, bronze.items, bronze.identity_map.

Run it:
    crossrec ingest --raw-dir demo-data/raw --lake-root lakehouse
    python -m crossrec_jobs.ingest --raw-dir ...            # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/ingest.py --spark-master none --raw-dir s3a://bucket/raw --lake-root s3a://bucket/lake

Every file is checksummed and header-checked before anything is written (a missing column stops the run
naming the file and column). New files are appended to bronze (files recorded by an earlier run are skipped),
the rows this run appended are validated by the table's Great Expectations suite, the raw records (counted
apart from the parser) must equal the rows appended (else exit 4), and the run is recorded in ops.runs. A run
that failed (or was killed) leaves no trace readers see: the next run restores bronze to the recorded version
first, so a failing input fails again on every retry. Library: lib/crossrec/data/bronze.py (the stage),
lib/crossrec/data/ingest.py (reading and checking the files).
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.bronze import STAGE, run_ingest

run = run_ingest


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
