"""Forget stage: erase users from every table of the lake (bronze, silver, gold, the published recommendations).

Run it:
    crossrec forget --users-file erase.txt --lake-root lakehouse --pseudonym-key-file secret.key
    crossrec forget USER [USER ...] [--pseudonymized] [--no-vacuum]

USER is the id as in the raw data (its global id when an identity map joins domains), or the stored pseudonym
with --pseudonymized; a file keeps raw ids out of shell history and process lists. Rows are deleted with Delta
DELETE/MERGE, the published run is re-published without them, every table is checked to hold none of them (exit 4
if one does), each table is vacuumed with vacuum_retention_hours, and ops.erasures records one audit row per user
and table. Library: lib/crossrec/data/forget.py.
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.forget import STAGE, Erased, run_forget
from crossrec.io.config import CrossrecConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("users", nargs="*", help="user ids as in the raw data (or pseudonyms with --pseudonymized)")
    p.add_argument("--users-file", help="file with one user id a line (instead of, or as well as, USER)")
    p.add_argument("--pseudonymized", action="store_true", help="the ids are the stored pseudonyms")
    p.add_argument("--no-vacuum", dest="vacuum", action="store_false", help="leave VACUUM to `crossrec maintain`/Delta")
    add_common_args(p, validates=False)  # it checks its own result: no row of the users may remain


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> list[Erased]:
    """:func:`crossrec.data.forget.run_forget` with this job's arguments."""
    return run_forget(cfg, spark, a.users, users_file=a.users_file, pseudonymized=a.pseudonymized, vacuum_after=a.vacuum)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
