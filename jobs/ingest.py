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
first, so a failing input fails again on every retry.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from functools import reduce

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.ingest import BRONZE_TABLE, check_empty_domains, count_raw_records, plan_files, read_file_set
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import AccountingError, AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import read_changes, read_table, table_exists, write_metrics, write_table
from crossrec.io.runs import Ledger, stage_run
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Validator

log = logging.getLogger("crossrec.jobs.ingest")
STAGE = "ingest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)


def _seen_files(spark, cfg: CrossrecConfig, ledger: Ledger) -> tuple[dict, dict[str, int]]:
    """Checksums of the files ingested before, per (bronze table, domain), and the rows each gave: from the ledger's
    ingest runs, or (a lake adopted from before the ledger) from bronze itself."""
    seen: dict[tuple[str, str | None], set[str]] = {}
    seen_rows: dict[str, int] = {}
    runs = ledger.succeeded(STAGE)
    if runs or not any(r["stage"] == "adopt" for r in ledger.succeeded()):
        for r in runs:
            for table, by_domain in r["details"].get("files", {}).items():
                for domain, files in by_domain.items():
                    seen.setdefault((table, domain if domain != "*" else None), set()).update(files)
                    for sha, n in files.items():
                        seen_rows[sha] = seen_rows.get(sha, 0) + n
        return seen, seen_rows
    for table in sorted(set(BRONZE_TABLE.values())):
        path = cfg.table_path(table)
        if table_exists(spark, path):
            for r in read_table(spark, path).groupBy("domain", "source_checksum").count().collect():
                seen.setdefault((table, r["domain"] if table != "bronze.identity_map" else None), set()).add(r["source_checksum"])
                seen_rows[r["source_checksum"]] = seen_rows.get(r["source_checksum"], 0) + r["count"]
    return seen, seen_rows


def run(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Append every new raw file to bronze, validate what was appended, record the run; return the accounting."""
    with stage_run(spark, cfg, STAGE, sorted(set(BRONZE_TABLE.values()))) as stage:
        return _ingest(cfg, spark, stage)


def _ingest(cfg: CrossrecConfig, spark, stage) -> list[AccountingRow]:
    from pyspark.sql import functions as F

    run_id = stage.run_id
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    dataset = load_dataset(cfg.raw_dir, outside_root=cfg.raw_paths_outside_root)
    seen, seen_rows = _seen_files(spark, cfg, Ledger(cfg.lake_uri))
    plans = plan_files(spark, dataset, seen)  # raises on bad input, before any write
    if not seen and not any(plan.new for plan in plans):
        empty = [p for plan in plans for p in plan.empty]
        raise RawFormatError(f"{cfg.raw_dir}: the input is empty ({len(empty)} file(s), none with rows: {empty[:5]})")
    check_empty_domains(plans, cfg.allow_empty_domains)

    accounting: dict[int, AccountingRow] = {}
    frames: dict[str, list] = {}
    new_checksums: dict[str, list[str]] = {}
    for i, plan in enumerate(plans):
        fs, table = plan.file_set, BRONZE_TABLE[plan.file_set.kind]
        row = AccountingRow(STAGE, table, fs.domain or "*")
        row.skipped = sum(seen_rows.get(sha, 0) for sha in {sha for _, sha in plan.seen})  # copies share a checksum
        row.details = {
            "files_new": len(plan.new),
            "files_seen_before": [p for p, _ in plan.seen],
            "files_duplicate_content": [p for p, _ in plan.duplicate],
            "files_empty": plan.empty,
        }
        for p in plan.empty:
            log.warning("%s: empty file (no header or no rows); nothing to ingest", p)
        if plan.new:
            frames.setdefault(table, []).append(read_file_set(spark, fs, plan.new))
            new_checksums.setdefault(table, []).extend(sha for _, sha in plan.new)
            # counted apart from the parse: what the appended rows must add up to
            row.rows_in = count_raw_records(spark, fs, [p for p, _ in plan.new])
        accounting[i] = row

    validator = Validator(cfg.reports_root, run_id) if cfg.validate else None
    files: dict[str, dict[str, dict[str, int]]] = {}
    for table, dfs in frames.items():
        df = reduce(lambda a, b: a.unionByName(b), dfs)
        df = df.withColumn("run_id", F.lit(run_id)).withColumn("ingested_at", F.lit(started))
        path = cfg.table_path(table)
        version = write_table(spark, df, load_contract(table), path, "append")  # one atomic commit per table
        stage.writes[table] = version
        appended = read_changes(spark, path, [version])  # exactly this commit's rows
        per_file = appended.groupBy("domain", "source_checksum").agg(
            F.count("*").alias("n"), F.count("corrupt_record").alias("corrupt")).collect()
        for r in per_file:
            by_sha = files.setdefault(table, {}).setdefault(r["domain"] if table != "bronze.identity_map" else "*", {})
            by_sha[r["source_checksum"]] = by_sha.get(r["source_checksum"], 0) + r["n"]
        written = write_metrics(path, version).get("numOutputRows")
        if written is not None and written != sum(r["n"] for r in per_file):
            raise AccountingError(f"ingest {table}: Delta reports {written} rows appended, {sum(r['n'] for r in per_file)} read back")
        for i, plan in enumerate(plans):
            if BRONZE_TABLE[plan.file_set.kind] != table or not plan.new:
                continue
            row = accounting[i]
            shas = {sha for _, sha in plan.new}
            mine = [r for r in per_file if r["source_checksum"] in shas]
            n, corrupt = sum(r["n"] for r in mine), sum(r["corrupt"] for r in mine)
            row.rows_out = int(n)
            if row.rows_in is None:  # not countable apart from the parse (multi-line CSV)
                row.rows_in = row.rows_out
                row.details["rows_in"] = "counted by the parser (multi-line CSV)"
            row.details["corrupt_records"] = int(corrupt)
            log.info(
                "%s: %d new file(s), %d raw record(s), %d row(s) appended (%d unparseable lines kept for clean), "
                "%d file(s) seen before", plan.file_set.label, len(plan.new), row.rows_in, n, corrupt, len(plan.seen),
            )
        if validator:  # what this run appended; the rows of earlier runs were validated by them
            validator.check(load_contract(table), appended.drop("_change_type", "_commit_version", "_commit_timestamp"),
                            params={"domains": list(dataset.domains)}, version=version)
    accounting = list(accounting.values())
    check_balanced(accounting)
    print(format_accounting(accounting))
    write_accounting(spark, cfg, run_id, accounting)
    stage.accounting, stage.details["files"] = accounting, files
    if validator:
        stage.details["data_docs"] = validator.docs_url
    return accounting


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
