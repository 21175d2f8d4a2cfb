"""Maintain stage: Delta upkeep of the whole lake (compaction, Z-order, retention, VACUUM).

Run it:
    crossrec maintain --lake-root lakehouse [--zorder] [--keep-run-dates 7] [--keep-models 3] [--compact-file-mb 64]
    python -m crossrec_jobs.maintain ...                    # same thing

OPTIMIZE bin-packs the files smaller than --compact-file-mb that nightly merges leave; --zorder also clusters the
tables whose contract names zorder_by (the user lookups) and rewrites them, so the DAG asks for it weekly.
gold.recommendations keeps the newest --keep-run-dates run dates (the published one always), the model registry the
newest --keep-models versions (the champion always; the others' artifact folders go with them); VACUUM then deletes files older than vacuum_retention_hours
that no kept version needs. The run and the versions it committed are recorded in ops.runs. Rules:
lib/crossrec/io/maintain.py.
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.io.config import CrossrecConfig as D
from crossrec.io.maintain import STAGE, run_maintain


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, validates=False)
    g = p.add_argument_group("maintain")
    g.add_argument("--zorder", action="store_true", help="also Z-order the tables whose contract names zorder_by (rewrites them)")
    g.add_argument("--keep-run-dates", dest="keep_run_dates", type=int, help=f"run dates of gold.recommendations kept (default {D.keep_run_dates})")
    g.add_argument("--keep-models", dest="keep_models", type=int, help=f"registered model versions kept, besides the champion (default {D.keep_models})")
    g.add_argument("--compact-file-mb", dest="compact_file_mb", type=float,
                   help=f"compaction rewrites only files smaller than this many MiB (default {D.compact_file_mb:g})")
    g.add_argument("--vacuum-retention-hours", dest="vacuum_retention_hours", type=float,
                   help=f"VACUUM keeps what table versions of this many hours need (default {D.vacuum_retention_hours:g})")


def run(cfg, spark, args: argparse.Namespace) -> dict:
    return run_maintain(cfg, spark, zorder=args.zorder)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
