"""The clean stage: bronze -> silver.interactions, silver.items, silver.quarantine, nightly or as a full rebuild.

**Incremental (the default).** Only the bronze rows the ingest runs recorded since clean's last run are read
(Delta's change data feed of exactly those commits). They are classified like a full rebuild would
(:mod:`crossrec.data.clean`), then

* silver.items: MERGE on (domain, item_id): a newer catalog row replaces the one there (a later file wins);
* silver.interactions: an insert-only MERGE on the table's key: a row already in silver is a duplicate
  (the first arrival wins, as in a full rebuild);
* silver.quarantine: appended.

A quarantine verdict is made once, on the night a row arrives (an interaction on an item that arrives on a later
night stays quarantined); ``--full-refresh`` judges every row again.

**Full rebuild** (``full_refresh``, the first run, or when ``dataset.json`` or a setting that changes verdicts
differs from the last run's, or when an identity-map row re-maps a user already in silver): silver is rebuilt from
all of bronze at its recorded versions and overwritten.

Either way: every bronze row read ends in silver, the quarantine or the duplicate count; the rows read must equal
what Delta reports the ingest commits appended (independently of the classification), and the silver rows
written must equal what the classification kept (Delta's own write metrics); a mismatch is an
:class:`~crossrec.io.accounting.AccountingError` (exit 4). The written versions are validated, then recorded in
ops.runs (:mod:`crossrec.io.runs`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from functools import reduce

from crossrec.data import clean as C
from crossrec.data.pseudonym import check_lake_key, fingerprint, record_lake_key
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import (AccountingError, AccountingRow, check_balanced, check_quarantine_share,
                                    format_accounting, write_accounting)
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import (latest_version, merge_table, read_changes, read_table, table_exists, write_metrics,
                               write_table)
from crossrec.io.runs import Ledger, StageRun, stage_run
from crossrec.io.spark import SHUFFLE_PARTITIONS, size_shuffles
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Validator

log = logging.getLogger(__name__)

STAGE = "clean"
BRONZE = ("bronze.interactions", "bronze.items", "bronze.identity_map")
SILVER = ("silver.items", "silver.interactions", "silver.quarantine")
CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
ROWS_PER_PARTITION = 500_000  # shuffle partitions of a night: one per this many new bronze rows (io.spark.size_shuffles)


def run_clean(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Bring silver up to the recorded bronze versions (incremental or full), validate, record; return the accounting."""
    with stage_run(spark, cfg, STAGE, list(SILVER)) as stage:
        accounting = _clean(cfg, spark, stage)
    print(format_accounting(accounting))
    write_accounting(spark, cfg, stage.run_id, accounting)
    return accounting


def settings_fingerprint(cfg: CrossrecConfig, dataset) -> str:
    """What makes a row's verdict: the data set's file sets and the settings clean applies. A change means a rebuild."""
    sets = sorted((fs.kind, fs.domain or "", fs.timestamp or "", fs.default_event_type or "") for fs in dataset.file_sets)
    doc = {"file_sets": sets, "min_event_ts": cfg.min_event_ts, "max_text_chars": cfg.max_text_chars,
           "missing_items": cfg.missing_items, "key": fingerprint(cfg.require_pseudonym_key())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _clean(cfg: CrossrecConfig, spark, stage: StageRun) -> list[AccountingRow]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    dataset = load_dataset(cfg.raw_dir, outside_root=cfg.raw_paths_outside_root)
    domains = list(dataset.domains)
    key = cfg.require_pseudonym_key()
    new_key = check_lake_key(spark, cfg.table_path("silver.interactions"), key)  # never mix two keys' pseudonyms
    ledger = Ledger(cfg.lake_uri)
    recorded = ledger.recorded_versions()
    if "bronze.interactions" not in recorded or not table_exists(spark, cfg.table_path("bronze.interactions")):
        raise RawFormatError(f"bronze.interactions has no recorded version at {cfg.table_path('bronze.interactions')}: "
                             "run `crossrec ingest` first")
    stage.reads = {t: recorded[t] for t in BRONZE if t in recorded and table_exists(spark, cfg.table_path(t))}
    log.info("reading bronze at its recorded versions %s", stage.reads)
    fp = settings_fingerprint(cfg, dataset)
    stage.details["settings"] = fp
    last = ledger.last(STAGE)
    reason = _full_reason(cfg, spark, last, fp)

    def bronze_full(table: str):
        return read_table(spark, cfg.table_path(table), stage.reads[table]) if table in stage.reads else None

    ids = None  # the classified identity map: every mapping (a rebuild), the keys this night touches (a night)
    batch: dict[str, object] = {}
    configured_shuffles = spark.conf.get(SHUFFLE_PARTITIONS)
    expected_in = None  # rows the ingest commits read appended (Delta's commit metrics, not the data)
    if reason is None:
        expected_in = _rows_appended(spark, cfg, ledger, stage.reads, last)
        size_shuffles(spark, sum(expected_in.values()), ROWS_PER_PARTITION)
        for t in stage.reads:
            versions = ledger.written_versions(t, last["reads"].get(t, 0), stage.reads[t])
            batch[t] = read_changes(spark, cfg.table_path(t), versions)
            # a night's rows are few and read by several jobs: read the change feed once
            batch[t] = batch[t].drop(*CDF_COLUMNS).persist(StorageLevel.MEMORY_AND_DISK) if batch[t] is not None else None
        if "bronze.identity_map" in stage.reads:
            ids = _night_identity_map(spark, batch, bronze_full("bronze.identity_map"), domains, key)
        reason = _remapped_users(spark, cfg, batch.get("bronze.identity_map"), ids, last)
        stage.lap("identity map checked")
    stage.mode = "full" if reason else "incremental"
    if reason:
        log.info("clean: full rebuild from bronze (%s)", reason)
        stage.details["full_because"] = reason
        for frame in batch.values():
            if frame is not None:
                frame.unpersist()
        batch = {t: bronze_full(t) for t in stage.reads}
        spark.conf.set(SHUFFLE_PARTITIONS, configured_shuffles)
        if ids is not None:
            ids.unpersist()
        if "bronze.identity_map" in stage.reads:
            ids = C.classify_identity_map(bronze_full("bronze.identity_map"), domains, key).persist(StorageLevel.MEMORY_AND_DISK)
    else:
        log.info("clean: merging the bronze rows of %s", {t: ledger.written_versions(t, last["reads"].get(t, 0), v)
                                                        for t, v in stage.reads.items()})
    if reason:
        expected_in = _rows_appended(spark, cfg, ledger, stage.reads, None)
    stage.lap("bronze rows counted")

    min_ts = dt.datetime.fromisoformat(cfg.min_event_ts)
    max_ts = dt.datetime.fromisoformat(cfg.run_date) + dt.timedelta(days=1)
    empty_items = spark.createDataFrame([], load_contract("bronze.items").spark_schema())
    empty_inter = spark.createDataFrame([], load_contract("bronze.interactions").spark_schema())
    items = C.classify_items(batch.get("bronze.items") or empty_items, cfg.max_text_chars, domains)
    items = items.persist(StorageLevel.MEMORY_AND_DISK)
    silver_items_path = cfg.table_path("silver.items")
    known = None  # the catalog already in silver (incremental only)
    if stage.mode == "incremental" and "silver.items" in recorded:
        known = read_table(spark, silver_items_path, recorded["silver.items"]).select("domain", "item_id")
    ts_formats = {fs.domain: fs.timestamp for fs in dataset.file_sets if fs.kind == "interactions"}
    event_types = {fs.domain: fs.default_event_type for fs in dataset.file_sets if fs.kind == "interactions"}
    catalog = None
    if cfg.missing_items == "quarantine":
        catalog = C.catalog_keys(items)
        catalog = catalog.unionByName(known).distinct() if known is not None else catalog
    inter = C.classify_interactions(batch.get("bronze.interactions") or empty_inter, ts_formats, event_types,
                                    min_ts, max_ts, catalog=catalog)
    inter = C.pseudonymous_users(inter, ids, key)
    placeholders = None
    if catalog is None:
        placeholders = C.placeholder_items(inter, items)
        if known is not None:
            placeholders = placeholders.join(known, ["domain", "item_id"], "left_anti")
        placeholders = placeholders.persist(StorageLevel.MEMORY_AND_DISK)
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
    labelled = [(t, f) for t, f in (("silver.interactions", inter), ("silver.items", items), ("silver.identity_map", ids if stage.mode == "full" else None)) if f is not None]
    counts = reduce(lambda a, b: a.unionByName(b), [C.status_counts(f).withColumn("_table", F.lit(t)) for t, f in labelled]).collect()
    by_table = {t: [r for r in counts if r["_table"] == t] for t, _ in labelled}
    for table in ("silver.interactions", "silver.items"):  # a mostly broken input fails before anything is written
        check_quarantine_share(by_table[table], cfg.max_quarantine_share, table)
    for table, n in expected_in.items():  # a night's mappings are not counted: they are joined, not classified
        got = by_table.get(table.replace("bronze.", "silver."))
        if got is not None and sum(r["count"] for r in got) != n:
            raise AccountingError(f"clean {table}: the ingest commits read appended {n:,} rows; "
                                  f"{sum(r['count'] for r in got):,} were classified")
    accounting = _accounting("silver.interactions", by_table["silver.interactions"], domains)
    accounting += _accounting("silver.items", by_table["silver.items"], domains, extra=item_flags)
    if ids is not None and stage.mode == "full":
        accounting += _accounting("silver.identity_map", by_table["silver.identity_map"], [])
    check_balanced(accounting)
    stage.lap("classified")

    # ---- writes
    item_cols = load_contract("silver.items").column_names
    ok_items = items.where(F.col(C.STATUS) == C.OK).select(*item_cols)
    if placeholders is not None:
        ok_items = ok_items.unionByName(placeholders.select(*item_cols))
    quarantine = [C.quarantine_rows(inter, "bronze.interactions"), C.quarantine_rows(items, "bronze.items")]
    if ids is not None and stage.mode == "full":
        quarantine.append(C.quarantine_rows(ids, "bronze.identity_map"))
    quarantine = reduce(lambda a, b: a.unionByName(b), quarantine)
    ok_inter = inter.where(F.col(C.STATUS) == C.OK)
    n_items = sum(r.rows_out for r in accounting if r.table_name == "silver.items") + sum(n_placeholders.values())
    n_inter = sum(r.rows_out for r in accounting if r.table_name == "silver.interactions")
    n_quar = sum(r.quarantined for r in accounting)
    w = stage.writes
    if stage.mode == "full":
        for table, df in (("silver.items", ok_items), ("silver.interactions", ok_inter), ("silver.quarantine", quarantine)):
            w[table] = write_table(spark, df, load_contract(table), cfg.table_path(table), "overwrite")
            _check_written(table, write_metrics(spark, cfg.table_path(table), w[table]).get("numOutputRows"),
                           {"silver.items": n_items, "silver.interactions": n_inter, "silver.quarantine": n_quar}[table])
    else:
        w["silver.items"], m = merge_table(spark, ok_items, load_contract("silver.items"), silver_items_path, ["domain", "item_id"])
        _check_written("silver.items", m.get("numTargetRowsInserted", 0) + m.get("numTargetRowsUpdated", 0), n_items)
        stage.lap("merged silver.items")
        # insert-only on the key: an anti-join against silver, then an append (a MERGE would plan a join and a
        # rewrite for rows it never updates)
        contract = load_contract("silver.interactions")
        path = cfg.table_path("silver.interactions")
        key = list(contract.key)
        batch_rows = contract.conform(ok_inter)  # from the persisted classification
        # silver scanned once against the (small, broadcast) batch: no shuffle of silver
        there = read_table(spark, path, recorded["silver.interactions"]).select(*key).join(
            F.broadcast(batch_rows.select(*key)), key, "left_semi")
        fresh = batch_rows.join(there, key, "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        _move_to_duplicates(accounting, {r["domain"]: r["count"] for r in fresh.groupBy("domain").count().collect()})
        n_inter = sum(r.rows_out for r in accounting if r.table_name == "silver.interactions")
        w["silver.interactions"] = recorded["silver.interactions"]
        if n_inter:
            w["silver.interactions"] = write_table(spark, fresh, contract, path, "append")
            _check_written("silver.interactions", write_metrics(spark, path, w["silver.interactions"]).get("numOutputRows"), n_inter)
        fresh.unpersist()
        stage.lap("appended silver.interactions")
        w["silver.quarantine"] = recorded.get("silver.quarantine", -1)
        if n_quar:  # nothing to append most nights: no commit
            path = cfg.table_path("silver.quarantine")
            w["silver.quarantine"] = write_table(spark, quarantine, load_contract("silver.quarantine"), path, "append")
            _check_written("silver.quarantine", write_metrics(spark, path, w["silver.quarantine"]).get("numOutputRows"), n_quar)
            stage.lap("appended silver.quarantine")

    if cfg.validate:
        expected = {"silver.items": n_items, "silver.interactions": n_inter, "silver.quarantine": n_quar}
        committed = [t for t, v in w.items() if v > recorded.get(t, -1)]  # an empty append commits nothing
        _validate(spark, cfg, stage, domains, expected, committed, merged=stage.mode == "incremental")
        stage.lap("validated")
    if new_key:
        record_lake_key(spark, cfg.table_path("silver.interactions"), key)
        w["silver.interactions"] = latest_version(spark, cfg.table_path("silver.interactions"))
    for frame in (inter, items, ids, placeholders, *batch.values()):
        if frame is not None:
            frame.unpersist()
    for r in accounting:
        r.details["bronze_versions"] = stage.reads
    stage.accounting = accounting
    return accounting


def _full_reason(cfg: CrossrecConfig, spark, last: dict | None, fp: str) -> str | None:
    """Why this run must rebuild from all of bronze, or None when it can merge the new rows."""
    if cfg.full_refresh:
        return "full_refresh requested"
    if last is None:
        return "no earlier clean run"
    if last["details"].get("settings") != fp:
        return "dataset.json or the settings clean applies changed since the last run"
    missing = [t for t in SILVER if not table_exists(spark, cfg.table_path(t))]
    return f"{missing} missing" if missing else None


def _night_identity_map(spark, batch: dict, bronze_map, domains: list[str], key: bytes):
    """The classified mappings (ids and verdicts) of the keys a night touches: the users of its interactions and the
    keys of its new mappings, with all their rows, so the latest-wins rule decides as it would over the whole map."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from crossrec.data.pseudonym import pseudonym_column

    keys = spark.createDataFrame([], "domain string, local_user_id string")
    if batch.get("bronze.interactions") is not None:  # the same domain and id as classify_interactions reads
        keys = keys.unionByName(batch["bronze.interactions"].select(
            "domain", pseudonym_column(key, C.blank_to_null(F.col("user_id"))).alias("local_user_id")))
    if batch.get("bronze.identity_map") is not None:  # the same domain and id as classify_identity_map reads
        keys = keys.unionByName(batch["bronze.identity_map"].select(
            F.lower(C.blank_to_null(F.col("domain"))).alias("domain"),
            pseudonym_column(key, C.blank_to_null(F.col("user_id"))).alias("local_user_id")))
    keys = keys.where(F.col("domain").isNotNull() & F.col("local_user_id").isNotNull()).distinct()
    ids = C.classify_identity_map(bronze_map, domains, key, restrict_to=keys)
    return ids.select("domain", "local_user_id", "global_user_id", C.STATUS, C.REASON, "_ingested_at").persist(
        StorageLevel.MEMORY_AND_DISK)


def _remapped_users(spark, cfg, new_ids, ids, last: dict) -> str | None:
    """A reason for a rebuild when the new identity-map rows give a (domain, local user) another global id than
    before, or map one whose rows are in silver under its own id; None when they only add new users.

    Read from ``ids`` (every bronze mapping of the keys the night touches, classified): the mappings ingested before
    the new rows decide, per key the new rows touch, the global id silver was built with (the same latest-wins rule)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    since = new_ids.agg(F.min("ingested_at")).first()[0] if new_ids is not None else None
    if since is None:
        return None
    keys = ["domain", "local_user_id"]
    valid = ids.where((F.col(C.STATUS) != C.QUARANTINED) | (F.col(C.REASON) == "identity_conflict"))
    touched = valid.where(F.col("_ingested_at") >= since).select(*keys).distinct()
    latest = Window.partitionBy(*keys).orderBy(F.col("_ingested_at").desc(), "global_user_id")
    touched = F.broadcast(touched)
    before = (valid.where(F.col("_ingested_at") < since).join(touched, keys, "left_semi")
              .withColumn("_rn", F.row_number().over(latest)).where(F.col("_rn") == 1)
              .select(*keys, F.col("global_user_id").alias("_was")))
    now = ids.where(F.col(C.STATUS) == C.OK).join(touched, keys, "left_semi").select(*keys, "global_user_id")
    # small (one row per touched key): kept, as both checks read it; each check is one job over all partitions
    # (``take(1)`` of an empty result re-runs the plan over ever more partitions)
    verdict = now.join(F.broadcast(before), keys, "left").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if _any(verdict.where(F.col("_was").isNotNull() & (F.col("_was") != F.col("global_user_id")))):
            return "the identity map gives a user another global id"
        added = verdict.where(F.col("_was").isNull()).select("domain", "local_user_id")
        silver = read_table(spark, cfg.table_path("silver.interactions"), last["writes"].get("silver.interactions"))
        if _any(silver.select("domain", F.col("user_id").alias("local_user_id")).join(F.broadcast(added), keys, "left_semi")):
            return "the identity map maps a user whose rows are in silver under their own id"
        return None
    finally:
        verdict.unpersist()


def _any(df) -> bool:
    """Whether ``df`` has a row, in one job."""
    from pyspark.sql import functions as F

    return df.select(F.lit(1).alias("x")).groupBy().count().first()[0] > 0


def _rows_appended(spark, cfg, ledger: Ledger, reads: dict[str, int], last: dict | None) -> dict[str, int]:
    """Rows the ingest commits clean reads appended, as Delta recorded them (``numOutputRows``); for a full rebuild
    the rows of the tables at their versions (the data files' record counts)."""
    from delta.tables import DeltaTable

    out = {}
    for t, v in reads.items():
        path = cfg.table_path(t)
        if last is None:
            out[t] = read_table(spark, path, v).count()
            continue
        versions = ledger.written_versions(t, last["reads"].get(t, 0), v)
        hist = DeltaTable.forPath(spark, path).history().where(f"version in ({','.join(map(str, versions)) or '-1'})")
        out[t] = sum(int((r["operationMetrics"] or {}).get("numOutputRows", 0)) for r in hist.select("operationMetrics").collect())
    return out


def _move_to_duplicates(accounting: list[AccountingRow], inserted: dict[str, int]) -> None:
    """The new ok rows not inserted (``inserted``: per domain) are already in silver: duplicates of an earlier night."""
    for r in accounting:
        if r.table_name == "silver.interactions" and r.rows_out != inserted.get(r.domain, 0):
            n = r.rows_out - inserted.get(r.domain, 0)
            r.rows_out -= n
            r.duplicates += n
            r.details["duplicates_of_earlier_nights"] = n


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


def _check_written(table: str, written: int | None, expected: int) -> None:
    if written is not None and written != expected:
        raise AccountingError(f"clean {table}: Delta reports {written:,} rows written; the accounting expects {expected:,}")


def _validate(spark, cfg, stage: StageRun, domains: list[str], expected: dict[str, int], committed: list[str],
              merged: bool) -> None:
    """Validate what this run committed, with its row counts: a rebuild's tables whole, a merge's rows it added or
    changed (read from the change feed of its commit)."""
    validator = Validator(cfg.reports_root, stage.run_id)
    params = C.contract_params(cfg, domains)
    silver_items = read_table(spark, cfg.table_path("silver.items"), stage.writes["silver.items"])
    for table in committed:
        version, path = stage.writes[table], cfg.table_path(table)
        if merged:
            df = read_changes(spark, path, [version], ("insert", "update_postimage")).drop(*CDF_COLUMNS)
        else:
            df = read_table(spark, path, version)
        validator.check(load_contract(table), df, params=params, expected_rows=expected[table],
                        references={"silver.items": silver_items}, version=version)
