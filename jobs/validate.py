"""Validate stage: re-check lake tables against their contracts (Great Expectations), e.g. before a consumer reads them.

Run it:
    crossrec validate --lake-root lakehouse --tables silver.interactions,silver.items
    crossrec validate --lake-root lakehouse --tables gold.recommendations --run-date 2026-11-23

Each table is read at its newest Delta version and checked with its contract's suite (columns, nulls, keys,
allowed values, ranges, referential integrity against the referenced tables). gold.recommendations is checked
for --run-date with the output checks of the score stage. Reports go to ``<lake>/_reports/<run_id>/``; a
failed check exits 3.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from crossrec import columns as C
from crossrec.cli.common import add_common_args, run_job
from crossrec.data.rawformat import RawFormatError
from crossrec.io.config import CrossrecConfig

log = logging.getLogger("crossrec.jobs.validate")
STAGE = "validate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, validates=False)  # validating is what it does: no --no-validate
    g = p.add_argument_group("validate")
    g.add_argument("--tables", required=True, help="comma-separated table names, e.g. silver.interactions,silver.items")


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> list:
    """Check every requested table; returns the reports (raises ValidationFailed on the first failure)."""
    from crossrec.data.clean import contract_params
    from crossrec.io.delta import read_table, table_exists
    from crossrec.io.runs import pinned_versions
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator
    from crossrec.score.stage import validate_run

    tables = [t.strip() for t in a.tables.split(",") if t.strip()]
    if not tables:
        raise RawFormatError("--tables names no table")
    validator = Validator(cfg.reports_root, cfg.effective_run_id(STAGE))
    domains = None
    reports = []
    for table in tables:
        contract = load_contract(table)  # a clear error for an unknown table name
        path = cfg.table_path(table)
        if not table_exists(spark, path):
            raise RawFormatError(f"{table} does not exist at {path}")
        version = pinned_versions(spark, cfg.lake_uri, [table])[table]  # what readers read: the recorded version
        if table == "gold.recommendations":
            report, _, _ = validate_run(spark, cfg, version, dt.date.fromisoformat(cfg.run_date))
        else:
            if domains is None:
                items = cfg.table_path("silver.items")
                items_v = pinned_versions(spark, cfg.lake_uri, ["silver.items"])["silver.items"]
                domains = sorted(r[0] for r in read_table(spark, items, items_v).select(C.DOMAIN).distinct().collect())
            refs = {r.table: read_table(spark, cfg.table_path(r.table), pinned_versions(spark, cfg.lake_uri, [r.table])[r.table])
                    for r in contract.references}
            report = validator.check(contract, read_table(spark, path, version), params=contract_params(cfg, domains),
                                     references=refs, version=version)
        print(report.summary())
        reports.append(report)
    validator.finish()
    return reports


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())
