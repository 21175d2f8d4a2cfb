"""Clean stage: bronze -> silver.interactions, silver.items, silver.quarantine.

Run it:
    crossrec clean --raw-dir demo-data/raw --lake-root lakehouse --pseudonym-key-file secret.key
    python -m crossrec_jobs.clean ...                       # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/clean.py --spark-master none --lake-root s3a://bucket/lake ...

Nightly, only the bronze rows ingested since clean's last run are read and merged into silver (MERGE on each
table's key: a row already there is a duplicate, a newer catalog row replaces the old one); --full-refresh
rebuilds silver from all of bronze (also done on its own when dataset.json or clean's settings changed). Every
bronze row ends in silver, in silver.quarantine with a reason, or in the duplicate count; the accounting is
checked against Delta's own counts (exit 4 on a mismatch), printed, stored in ops.accounting, and the run with the
versions it read and wrote in ops.runs after its tables passed validation. The rules are in
lib/crossrec/data/silver.py; dataset.json (in --raw-dir) gives each domain's timestamp format and default event type.
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.silver import STAGE, run_clean
from crossrec.io.config import CrossrecConfig as D

run = run_clean


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)
    p.add_argument("--max-quarantine-share", dest="max_quarantine_share", type=float,
                   help="fail (exit 3, nothing written) when more than this share of a domain's or a file's rows is "
                        f"quarantined (default {D.max_quarantine_share:g}; 1 turns the check off)")
    p.add_argument("--full-refresh", dest="full_refresh", action="store_const", const=True,
                   help="rebuild silver from all of bronze instead of merging the rows ingested since the last run")


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
