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
import datetime as dt
import json
import re
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data import forget as E
from crossrec.data.pseudonym import check_lake_key, pseudonym
from crossrec.io.accounting import AccountingError
from crossrec.io.config import ConfigError, CrossrecConfig
from crossrec.io.delta import write_table
from crossrec.quality.contracts import load_contract

STAGE = "forget"
AUDIT = "ops.erasures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("users", nargs="*", help="user ids as in the raw data (or pseudonyms with --pseudonymized)")
    p.add_argument("--users-file", help="file with one user id a line (instead of, or as well as, USER)")
    p.add_argument("--pseudonymized", action="store_true", help="the ids are the stored pseudonyms")
    p.add_argument("--no-vacuum", dest="vacuum", action="store_false", help="leave VACUUM to `crossrec maintain`/Delta")
    add_common_args(p, validates=False)  # it checks its own result: no row of the users may remain


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> list[E.Erased]:
    """Erase the users named by the flags and record the versions written in ops.runs (so no later run restores an
    older version, and features rebuilds the users' rows from the deletes); returns what each table lost."""
    from crossrec.io.delta import latest_version
    from crossrec.io.runs import stage_run

    with stage_run(spark, cfg, STAGE, []) as stage:
        erased = _forget(cfg, spark, a)
        stage.writes = {e.table: latest_version(cfg.table_path(e.table)) for e in erased}
        stage.details["tables"] = {e.table: e.rows_deleted for e in erased}
        return erased


def _forget(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> list[E.Erased]:
    ids = list(a.users) + ([u.strip() for u in open(a.users_file, encoding="utf-8") if u.strip()] if a.users_file else [])
    if not ids:
        raise ConfigError("no user to forget: give USER ids or --users-file")
    key = cfg.require_pseudonym_key()
    check_lake_key(spark, cfg.table_path("silver.interactions"), key)
    people = sorted(set(ids if a.pseudonymized else (pseudonym(u, key) for u in ids)))
    bad = [p for p in people if not re.fullmatch(r"[0-9a-f]{64}", p)]
    if bad:
        raise ConfigError(f"{len(bad)} id(s) are not pseudonyms (64 hex characters); without --pseudonymized give raw ids")
    erased = E.erase(spark, cfg.table_path, key, people)
    left = {t: n for t, n in E.remaining(spark, cfg.table_path, key, people).items() if n}
    if left:
        raise AccountingError(f"forget: rows of the erased users remain after the deletes: {left}")
    if a.vacuum:
        for e in erased:
            E.vacuum(spark, cfg.table_path(e.table), cfg.vacuum_retention_hours)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    detail = {e.table: json.dumps({"version_before": e.version_before, "version_after": e.version_after,
                                   "vacuum_retention_hours": cfg.vacuum_retention_hours if a.vacuum else None}) for e in erased}
    # per user and table: the rows of all users together (a DELETE reports one count); each user's row names it
    rows = [(cfg.effective_run_id(STAGE), E.user_ref(p), e.table, e.rows_deleted, now, detail[e.table])
            for p in people for e in erased]
    audit = spark.createDataFrame(rows, load_contract(AUDIT).spark_schema())
    write_table(spark, audit, load_contract(AUDIT), cfg.table_path(AUDIT), "append")
    print(f"forgot {len(people)} user(s): " + ", ".join(f"{e.table} -{e.rows_deleted}" for e in erased))
    return erased


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
