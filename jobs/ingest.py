"""Ingest stage: raw file sets (dataset.json) -> bronze.interactions, bronze.items, bronze.identity_map.

Run it:
    crossrec ingest --raw-dir demo-data/raw --lake-root lakehouse
    python -m crossrec_jobs.ingest --raw-dir ...            # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/ingest.py --spark-master none --raw-dir s3a://bucket/raw --lake-root s3a://bucket/lake

Every file is checksummed and header-checked before anything is written (a missing column stops the run
naming the file and column). New files are appended to bronze, files seen before are skipped, then each
table written is validated by its Great Expectations suite and the row accounting is printed and stored.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from functools import reduce

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.ingest import BRONZE_TABLE, check_empty_domains, plan_files, read_file_set
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import read_table, table_exists, write_table
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Validator

log = logging.getLogger("crossrec.jobs.ingest")
STAGE = "ingest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)


def run(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Append every new raw file to bronze, validate, and return the row accounting."""
    from pyspark.sql import functions as F

    run_id = cfg.effective_run_id(STAGE)
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    dataset = load_dataset(cfg.raw_dir, outside_root=cfg.raw_paths_outside_root)

    seen: dict[tuple[str, str | None], set[str]] = {}
    seen_rows: dict[str, int] = {}
    for table in sorted(set(BRONZE_TABLE.values())):
        path = cfg.table_path(table)
        if table_exists(spark, path):
            # one row per ingested file: small
            for r in read_table(spark, path).groupBy("domain", "source_checksum").count().collect():
                seen.setdefault((table, r["domain"] if table != "bronze.identity_map" else None), set()).add(r["source_checksum"])
                seen_rows[r["source_checksum"]] = seen_rows.get(r["source_checksum"], 0) + r["count"]
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
        accounting[i] = row

    validator = Validator(cfg.reports_root, run_id) if cfg.validate else None
    for table, dfs in frames.items():
        df = reduce(lambda a, b: a.unionByName(b), dfs)
        df = df.withColumn("run_id", F.lit(run_id)).withColumn("ingested_at", F.lit(started))
        path = cfg.table_path(table)
        version = write_table(spark, df, load_contract(table), path, "append")  # one atomic commit per table
        # what this run appended, per domain and source file set (reads only this run's new files)
        per_domain = {
            r["domain"]: r
            for r in read_table(spark, path, version)
            .where((F.col("run_id") == run_id) & F.col("source_checksum").isin(new_checksums[table]))
            .groupBy("domain").agg(F.count("*").alias("n"), F.count("corrupt_record").alias("corrupt"))
            .collect()
        }
        for i, plan in enumerate(plans):
            if BRONZE_TABLE[plan.file_set.kind] != table or not plan.new:
                continue
            row = accounting[i]
            if plan.file_set.domain is None:  # the identity map: all of this run's rows
                n = sum(r["n"] for r in per_domain.values())
                corrupt = sum(r["corrupt"] for r in per_domain.values())
            else:
                n, corrupt = (per_domain[plan.file_set.domain]["n"], per_domain[plan.file_set.domain]["corrupt"]) if plan.file_set.domain in per_domain else (0, 0)
            row.rows_in = row.rows_out = int(n)
            row.details["corrupt_records"] = int(corrupt)
            log.info(
                "%s: %d new file(s), %d row(s) appended (%d unparseable lines kept for clean), %d file(s) seen before",
                plan.file_set.label, len(plan.new), n, corrupt, len(plan.seen),
            )
        if validator:
            validator.check(load_contract(table), read_table(spark, path, version), params={"domains": list(dataset.domains)}, version=version)
    accounting = list(accounting.values())
    check_balanced(accounting)
    print(format_accounting(accounting))
    write_accounting(spark, cfg, run_id, accounting)
    return accounting


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
