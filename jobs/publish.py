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
older than the published one is refused (exit 2) unless --force. Library: lib/crossrec/score/publish.py.
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.io.config import CrossrecConfig
from crossrec.score.publish import STAGE, run_publish


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
    """:func:`crossrec.score.publish.run_publish` with this job's flags."""
    return run_publish(cfg, spark, table_version=a.table_version, check_only=a.check_only, skip_checks=a.skip_checks,
                       force=a.force)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
