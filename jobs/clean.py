"""Clean stage: bronze -> silver.interactions, silver.items, silver.quarantine.

Run it:
    crossrec clean --raw-dir demo-data/raw --lake-root lakehouse --pseudonym-key-file secret.key
    python -m crossrec_jobs.clean ...                       # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/clean.py --spark-master none --lake-root s3a://bucket/lake ...

Silver is rebuilt from all of bronze (read at pinned versions) on every run, so re-running gives the
same tables. Every bronze row ends in silver, in silver.quarantine with a reason, or in the duplicate
count; the accounting is checked to balance, printed and stored in ops.accounting. dataset.json (in
--raw-dir) gives each domain's timestamp format and default event type.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from functools import reduce

from crossrec.cli.common import add_common_args, run_job
from crossrec.data import clean as C
from crossrec.data.pseudonym import check_lake_key, record_lake_key
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import (AccountingRow, check_balanced, check_quarantine_share, format_accounting,
                                    write_accounting)
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import latest_version, read_table, table_exists, write_table
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Validator

log = logging.getLogger("crossrec.jobs.clean")
STAGE = "clean"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)
    p.add_argument("--max-quarantine-share", dest="max_quarantine_share", type=float,
                   help="fail (exit 3, nothing written) when more than this share of a domain's or a file's rows is "
                        "quarantined (default 0.5; 1 turns the check off)")


def _accounting(table: str, counts: list, domains: list[str], extra: dict | None = None) -> list[AccountingRow]:
    rows = {d: AccountingRow(STAGE, table, d) for d in domains}
    for r in counts:
        acc = rows.setdefault(r["domain"] or "<none>", AccountingRow(STAGE, table, r["domain"] or "<none>"))
        acc.rows_in += r["count"]
        if r[C.STATUS] == C.OK:
            acc.rows_out += r["count"]
        elif r[C.STATUS] == C.DUPLICATE:
            acc.duplicates += r["count"]
        else:
            acc.quarantined += r["count"]
            acc.details.setdefault("quarantined_by_reason", {})[r[C.REASON]] = r["count"]
    for d, info in (extra or {}).items():
        rows.setdefault(d, AccountingRow(STAGE, table, d)).details.update(info)
    return list(rows.values())


def run(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Rebuild silver from bronze, validate it, and return the row accounting."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    dataset = load_dataset(cfg.raw_dir, outside_root=cfg.raw_paths_outside_root)
    domains = list(dataset.domains)
    key = cfg.require_pseudonym_key()
    new_key = check_lake_key(spark, cfg.table_path("silver.interactions"), key)  # never mix two keys' pseudonyms
    min_ts = dt.datetime.fromisoformat(cfg.min_event_ts)
    max_ts = dt.datetime.fromisoformat(cfg.run_date) + dt.timedelta(days=1)

    versions: dict[str, int] = {}

    def bronze(table: str, required: bool = True):
        path = cfg.table_path(table)
        if not table_exists(spark, path):
            if required:
                raise RawFormatError(f"{table} does not exist at {path}: run `crossrec ingest` first")
            return None
        versions[table] = latest_version(spark, path)
        return read_table(spark, path, versions[table])

    b_inter, b_items, b_ids = bronze("bronze.interactions"), bronze("bronze.items"), bronze("bronze.identity_map", False)
    log.info("reading bronze at versions %s", versions)

    items = C.classify_items(b_items, cfg.max_text_chars, domains).persist(StorageLevel.MEMORY_AND_DISK)
    ids = C.classify_identity_map(b_ids, domains, key).persist(StorageLevel.MEMORY_AND_DISK) if b_ids is not None else None
    ts_formats = {fs.domain: fs.timestamp for fs in dataset.file_sets if fs.kind == "interactions"}
    event_types = {fs.domain: fs.default_event_type for fs in dataset.file_sets if fs.kind == "interactions"}
    catalog = C.catalog_keys(items) if cfg.missing_items == "quarantine" else None
    inter = C.classify_interactions(b_inter, ts_formats, event_types, min_ts, max_ts, catalog=catalog)
    inter = C.pseudonymous_users(inter, ids, key)
    placeholders = None
    if catalog is None:
        placeholders = C.placeholder_items(inter, items).persist(StorageLevel.MEMORY_AND_DISK)
    inter = C.dedupe_interactions(inter).persist(StorageLevel.MEMORY_AND_DISK)

    # ---- accounting (actions on the persisted frames: one small aggregate each)
    item_flags = {
        r["domain"]: {"text_truncated": r["t"], "text_with_invalid_bytes": r["b"]}
        for r in items.where(F.col(C.STATUS) == C.OK).groupBy("domain")
        .agg(F.sum(F.col("_truncated").cast("long")).alias("t"), F.sum(F.col("_bad_text_bytes").cast("long")).alias("b")).collect()
    }
    n_placeholders = {r["domain"]: r["count"] for r in placeholders.groupBy("domain").count().collect()} if placeholders is not None else {}
    for d, n in n_placeholders.items():
        item_flags.setdefault(d, {})["placeholder_items_added"] = n
    labelled = [(t, f) for t, f in (("silver.interactions", inter), ("silver.items", items), ("silver.identity_map", ids)) if f is not None]
    counts = reduce(lambda a, b: a.unionByName(b), [C.status_counts(f).withColumn("_table", F.lit(t)) for t, f in labelled]).collect()
    by_table = {t: [r for r in counts if r["_table"] == t] for t, _ in labelled}
    for table in ("silver.interactions", "silver.items"):  # a mostly broken input fails before anything is written
        check_quarantine_share(by_table[table], cfg.max_quarantine_share, table)
    accounting = _accounting("silver.interactions", by_table["silver.interactions"], domains)
    accounting += _accounting("silver.items", by_table["silver.items"], domains, item_flags)
    if ids is not None:
        accounting += _accounting("silver.identity_map", by_table["silver.identity_map"], [])
    for r in accounting:
        r.details["bronze_versions"] = versions
    check_balanced(accounting)

    # ---- writes (each an atomic overwrite: a re-run replaces, never adds)
    item_cols = load_contract("silver.items").column_names
    ok_items = items.where(F.col(C.STATUS) == C.OK).select(*item_cols)
    if placeholders is not None:
        ok_items = ok_items.unionByName(placeholders.select(*item_cols))
    quarantine = [C.quarantine_rows(inter, "bronze.interactions"), C.quarantine_rows(items, "bronze.items")]
    if ids is not None:
        quarantine.append(C.quarantine_rows(ids, "bronze.identity_map"))
    outputs = {
        "silver.items": ok_items,
        "silver.interactions": inter.where(F.col(C.STATUS) == C.OK),
        "silver.quarantine": reduce(lambda a, b: a.unionByName(b), quarantine),
    }
    expected = {
        "silver.items": sum(r.rows_out for r in accounting if r.table_name == "silver.items") + sum(n_placeholders.values()),
        "silver.interactions": sum(r.rows_out for r in accounting if r.table_name == "silver.interactions"),
        "silver.quarantine": sum(r.quarantined for r in accounting),
    }
    written: dict[str, int] = {}
    for table, df in outputs.items():
        written[table] = write_table(spark, df, load_contract(table), cfg.table_path(table), "overwrite")

    if cfg.validate:
        validator = Validator(cfg.reports_root, cfg.effective_run_id(STAGE))
        params = C.contract_params(cfg, domains)
        silver_items = read_table(spark, cfg.table_path("silver.items"), written["silver.items"])
        for table, version in written.items():
            validator.check(
                load_contract(table),
                read_table(spark, cfg.table_path(table), version),
                params=params,
                expected_rows=expected[table],
                references={"silver.items": silver_items},
                version=version,
            )
    if new_key:
        record_lake_key(spark, cfg.table_path("silver.interactions"), key)
    for frame in (inter, items, ids, placeholders):
        if frame is not None:
            frame.unpersist()
    print(format_accounting(accounting))
    write_accounting(spark, cfg, cfg.effective_run_id(STAGE), accounting)
    return accounting


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
