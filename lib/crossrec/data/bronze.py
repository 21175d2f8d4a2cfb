"""The ingest stage: raw file sets (``dataset.json``) -> bronze.interactions, bronze.items, bronze.identity_map.

Every file is checksummed and header-checked before anything is written (:func:`crossrec.data.ingest.plan_files`).
Files recorded by an earlier ingest run are skipped; the new ones are appended to their bronze table in one Delta
commit per table. The accounting is per file set: the raw records, counted apart from the parser
(:func:`crossrec.data.ingest.count_raw_records`), must equal the rows the commit appended, and Delta's own write
metrics must agree with the rows read back (else :class:`~crossrec.io.accounting.AccountingError`, exit 4). The
appended rows are validated by their table's Great Expectations suite, then the run is recorded in ops.runs with the
checksums and row counts of its files (what the next run skips). A failed or killed run leaves no trace readers
see: :func:`crossrec.io.runs.stage_run` restores bronze to the recorded version first.
"""
from __future__ import annotations

import datetime as dt
import logging
from functools import reduce

from crossrec import columns as C
from crossrec.data.ingest import (BRONZE_TABLE, FilePlan, check_empty_domains, count_raw_records, plan_files,
                                   read_file_set)
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import AccountingError, AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import read_changes, read_table, table_exists, write_metrics, write_table
from crossrec.io.runs import Ledger, StageRun, stage_run
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Check, Validator

log = logging.getLogger(__name__)

STAGE = "ingest"
CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


def run_ingest(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Append every new raw file to bronze, validate what was appended, record the run; return the accounting.

    Raises :class:`~crossrec.data.rawformat.RawFormatError` on bad or empty input (before any write) and
    :class:`~crossrec.io.accounting.AccountingError` when the rows appended do not add up.
    """
    with stage_run(spark, cfg, STAGE, sorted(set(BRONZE_TABLE.values()))) as stage:
        return _ingest(cfg, spark, stage)


def _seen_files(spark, cfg: CrossrecConfig, ledger: Ledger) -> tuple[dict[tuple[str, str | None], set[str]], dict[str, int]]:
    """Checksums of the files ingested before, per (bronze table, domain), and the rows each gave: from the ledger's
    ingest runs, or (a lake adopted from before the ledger) from bronze itself."""
    seen: dict[tuple[str, str | None], set[str]] = {}
    seen_rows: dict[str, int] = {}
    runs = ledger.succeeded(STAGE)
    if runs or not any(r[C.STAGE] == "adopt" for r in ledger.succeeded()):
        for r in runs:
            for table, by_domain in r[C.DETAILS].get("files", {}).items():
                for domain, files in by_domain.items():
                    seen.setdefault((table, domain if domain != "*" else None), set()).update(files)
                    for sha, n in files.items():
                        seen_rows[sha] = seen_rows.get(sha, 0) + n
        return seen, seen_rows
    for table in sorted(set(BRONZE_TABLE.values())):
        path = cfg.table_path(table)
        if table_exists(spark, path):
            for r in read_table(spark, path).groupBy(C.DOMAIN, C.SOURCE_CHECKSUM).count().collect():
                seen.setdefault((table, r[C.DOMAIN] if table != "bronze.identity_map" else None), set()).add(r[C.SOURCE_CHECKSUM])
                seen_rows[r[C.SOURCE_CHECKSUM]] = seen_rows.get(r[C.SOURCE_CHECKSUM], 0) + r["count"]
    return seen, seen_rows


def _ingest(cfg: CrossrecConfig, spark, stage: StageRun) -> list[AccountingRow]:
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
            # counted apart from the parse: what the appended rows must add up to
            row.rows_in = count_raw_records(spark, fs, [p for p, _ in plan.new], plan.lines)
        accounting[i] = row

    checks: list[Check] = []  # what this run appended (earlier runs validated theirs), checked once all is written
    files: dict[str, dict[str, dict[str, int]]] = {}
    for table, dfs in frames.items():
        df = reduce(lambda a, b: a.unionByName(b), dfs)
        df = df.withColumn(C.RUN_ID, F.lit(run_id)).withColumn(C.INGESTED_AT, F.lit(started))
        path = cfg.table_path(table)
        version = write_table(spark, df, load_contract(table), path, "append")  # one atomic commit per table
        stage.writes[table] = version
        appended = read_changes(spark, path, [version])  # exactly this commit's rows
        per_file = appended.groupBy(C.DOMAIN, C.SOURCE_CHECKSUM).agg(
            F.count("*").alias("n"), F.count(C.CORRUPT_RECORD).alias("corrupt")).collect()
        for r in per_file:
            by_sha = files.setdefault(table, {}).setdefault(r[C.DOMAIN] if table != "bronze.identity_map" else "*", {})
            by_sha[r[C.SOURCE_CHECKSUM]] = by_sha.get(r[C.SOURCE_CHECKSUM], 0) + r["n"]
        written = write_metrics(path, version).get("numOutputRows")
        if written is not None and written != sum(r["n"] for r in per_file):
            raise AccountingError(f"ingest {table}: Delta reports {written} rows appended, {sum(r['n'] for r in per_file)} read back")
        for i, plan in enumerate(plans):
            if BRONZE_TABLE[plan.file_set.kind] == table and plan.new:
                _count_appended(accounting[i], plan, per_file)
        checks.append(Check(load_contract(table), appended.drop(*CDF_COLUMNS), params={"domains": list(dataset.domains)},
                            version=version))
    if cfg.validate:
        validator = Validator(cfg.reports_root, run_id)
        validator.check_all(checks)
        stage.details["data_docs"] = validator.finish()
    rows = list(accounting.values())
    check_balanced(rows)
    print(format_accounting(rows))
    write_accounting(spark, cfg, run_id, rows)
    stage.accounting, stage.details["files"] = rows, files
    return rows


def _count_appended(row: AccountingRow, plan: FilePlan, per_file: list) -> None:
    """Fill one file set's accounting row from the (domain, source_checksum, n, corrupt) counts of the commit."""
    shas = {sha for _, sha in plan.new}
    mine = [r for r in per_file if r[C.SOURCE_CHECKSUM] in shas]
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
