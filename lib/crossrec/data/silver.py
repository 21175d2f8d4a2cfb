"""The clean stage: bronze -> silver.interactions, silver.items, silver.quarantine, silver.identity_map, nightly or as
a full rebuild.

**Incremental (the default).** Only the bronze rows the ingest runs recorded since clean's last run are read
(Delta's change data feed of exactly those commits). They are classified like a full rebuild would
(:mod:`crossrec.data.clean`), then

* silver.items: MERGE on (domain, item_id): a newer catalog row replaces the one there (a later file wins);
* silver.interactions: appended after an anti-join on the table's key: a row already in silver is a duplicate
  (the first arrival wins, as in a full rebuild);
* silver.quarantine: appended;
* silver.identity_map (the map as applied: one pseudonymous mapping per local user): the night's new mapping rows
  are classified and looked up there, and new keys appended; bronze.identity_map is not read again.

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

from crossrec import columns as C
from crossrec.data import clean
from crossrec.data.pseudonym import check_lake_key, fingerprint, record_lake_key
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import (AccountingError, AccountingRow, check_balanced, check_quarantine_share,
                                    format_accounting, write_accounting)
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import (commits, latest_version, merge_table, read_changes, read_table, table_exists, write_metrics,
                               write_table)
from crossrec.io.runs import Ledger, StageRun, stage_run
from crossrec.io.spark import ROWS_PER_PARTITION, size_shuffles
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Check, Validator

log = logging.getLogger(__name__)

STAGE = "clean"
BRONZE = ("bronze.interactions", "bronze.items", "bronze.identity_map")
IDENTITY_MAP = "silver.identity_map"  # written when the data set has an identity map
ENTITIES = "silver.item_entities"  # derived from silver.items (see _write_entities)
SILVER = ("silver.items", "silver.interactions", "silver.quarantine", IDENTITY_MAP, ENTITIES)
CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


def run_clean(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Bring silver up to the recorded bronze versions (incremental or full), validate, record; return the accounting."""
    with stage_run(spark, cfg, STAGE, list(SILVER)) as stage:
        accounting = _clean(cfg, spark, stage)
    print(format_accounting(accounting))
    write_accounting(spark, cfg, stage.run_id, accounting)
    return accounting


def settings_fingerprint(cfg: CrossrecConfig, dataset) -> str:
    """What makes a row's verdict: the data set's file sets and the settings clean applies. A change means a rebuild."""
    sets = sorted((fs.kind, fs.domain or "", fs.timestamp or "", fs.default_event_type or "",
                   json.dumps(fs.vectors, sort_keys=True)) for fs in dataset.file_sets)
    doc = {"file_sets": sets, "min_event_ts": cfg.min_event_ts, "max_text_chars": cfg.max_text_chars,
           "missing_items": cfg.missing_items, "key": fingerprint(cfg.require_pseudonym_key())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _clean(cfg: CrossrecConfig, spark, stage: StageRun, rebuild_because: str | None = None) -> list[AccountingRow]:
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
    outputs = [t for t in SILVER if t != ENTITIES and (t != IDENTITY_MAP or "bronze.identity_map" in stage.reads)]
    reason = rebuild_because or _full_reason(cfg, spark, last, fp, {t: recorded.get(t) for t in outputs})

    def bronze_full(table: str):
        return read_table(spark, cfg.table_path(table), stage.reads[table]) if table in stage.reads else None

    ids = None  # the identity map pseudonymous_users applies: (domain, local_user_id) -> global_user_id, ok rows
    judged = None  # the mapping rows this run classified (all of bronze on a rebuild, the night's on a night)
    added = None  # a night's new mappings (keys not in silver.identity_map)
    batch: dict[str, object] = {}
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
            applied = read_table(spark, cfg.table_path(IDENTITY_MAP), recorded[IDENTITY_MAP])
            judged, added, reason = _night_mappings(batch.get("bronze.identity_map"), applied, domains, key)
            ids = _applied(applied if added is None else applied.unionByName(added.select(*applied.columns)))
        stage.lap("identity map checked")
    stage.mode = "full" if reason else "incremental"
    if reason:
        log.info("clean: full rebuild from bronze (%s)", reason)
        stage.details["full_because"] = reason
        _unpersist(*batch.values(), judged, added)
        batch = {t: bronze_full(t) for t in stage.reads}
        expected_in = _rows_appended(spark, cfg, ledger, stage.reads, None)
        # sized to all of bronze: the configured number of tasks per shuffle is most of a small lake's rebuild
        size_shuffles(spark, sum(expected_in.values()), ROWS_PER_PARTITION)
        added = None
        if "bronze.identity_map" in stage.reads:
            judged = clean.classify_identity_map(batch["bronze.identity_map"], domains, key).persist(StorageLevel.MEMORY_AND_DISK)
            ids = judged
    else:
        log.info("clean: merging the bronze rows of %s", {t: ledger.written_versions(t, last["reads"].get(t, 0), v)
                                                        for t, v in stage.reads.items()})
    stage.lap("bronze rows counted")

    min_ts = dt.datetime.fromisoformat(cfg.min_event_ts)
    max_ts = dt.datetime.fromisoformat(cfg.run_date) + dt.timedelta(days=1)
    empty_items = spark.createDataFrame([], load_contract("bronze.items").spark_schema())
    empty_inter = spark.createDataFrame([], load_contract("bronze.interactions").spark_schema())
    vectors = {fs.domain: fs.vectors for fs in dataset.file_sets if fs.kind == "items" and fs.vectors}
    items = clean.classify_items(batch.get("bronze.items") or empty_items, cfg.max_text_chars, domains, vectors)
    items = items.persist(StorageLevel.MEMORY_AND_DISK)
    silver_items_path = cfg.table_path("silver.items")
    known = None  # the catalog already in silver (incremental only)
    if stage.mode == "incremental" and "silver.items" in recorded:
        known = read_table(spark, silver_items_path, recorded["silver.items"]).select(C.DOMAIN, C.ITEM_ID)
    ts_formats = {fs.domain: fs.timestamp for fs in dataset.file_sets if fs.kind == "interactions"}
    event_types = {fs.domain: fs.default_event_type for fs in dataset.file_sets if fs.kind == "interactions"}
    catalog = None
    if cfg.missing_items == "quarantine":
        catalog = clean.catalog_keys(items)
        catalog = catalog.unionByName(known).distinct() if known is not None else catalog
    inter = clean.classify_interactions(batch.get("bronze.interactions") or empty_inter, ts_formats, event_types,
                                    min_ts, max_ts, catalog=catalog)
    inter = clean.pseudonymous_users(inter, ids, key)
    placeholders = None
    if catalog is None:
        placeholders = clean.placeholder_items(inter, items)
        if known is not None:
            placeholders = placeholders.join(known, [C.DOMAIN, C.ITEM_ID], "left_anti")
        placeholders = placeholders.persist(StorageLevel.MEMORY_AND_DISK)
    inter = clean.dedupe_interactions(inter).persist(StorageLevel.MEMORY_AND_DISK)
    contract = load_contract("silver.interactions")
    ok_inter = contract.conform(inter.where(F.col(clean.STATUS) == clean.OK))
    matches = None  # silver.interactions' keys of the night's users and new mappings (incremental only)
    if stage.mode == "incremental":
        matches = _silver_matches(spark, cfg, recorded["silver.interactions"], ok_inter, added)
        if added is not None and _any(matches.where(F.col("_added"))):
            _unpersist(*batch.values(), judged, added, items, placeholders, inter, matches)
            stage.lap("silver looked up")
            return _clean(cfg, spark, stage, "the identity map maps a user whose rows are in silver under their own id")

    # ---- accounting (actions on the persisted frames: one small aggregate each)
    item_flags = {
        r[C.DOMAIN]: {"text_truncated": r["t"], "text_with_invalid_bytes": r["b"],
                      **({"vectors": r["v"], "vectors_invalid": r["bv"]} if r[C.DOMAIN] in vectors else {})}
        for r in items.where(F.col(clean.STATUS) == clean.OK).groupBy(C.DOMAIN)
        .agg(F.sum(F.col("_truncated").cast("long")).alias("t"), F.sum(F.col("_bad_text_bytes").cast("long")).alias("b"),
             F.sum(F.size(C.VECTORS)).alias("v"), F.sum(F.col("_bad_vectors").cast("long")).alias("bv")).collect()
    }
    for d, flags in item_flags.items():
        if flags.get("vectors_invalid"):
            log.warning("clean: %s: %d item vector(s) left out: not a list of the declared dim of finite numbers "
                        "(accounting details vectors_invalid)", d, flags["vectors_invalid"])
    n_placeholders = {r[C.DOMAIN]: r["count"] for r in placeholders.groupBy(C.DOMAIN).count().collect()} if placeholders is not None else {}
    for d, n in n_placeholders.items():
        item_flags.setdefault(d, {})["placeholder_items_added"] = n
    labelled = [(t, f) for t, f in (("silver.interactions", inter), ("silver.items", items), (IDENTITY_MAP, judged)) if f is not None]
    counts = reduce(lambda a, b: a.unionByName(b), [clean.status_counts(f).withColumn("_table", F.lit(t)) for t, f in labelled]).collect()
    by_table = {t: [r for r in counts if r["_table"] == t] for t, _ in labelled}
    for table in ("silver.interactions", "silver.items"):  # a mostly broken input fails before anything is written
        check_quarantine_share(by_table[table], cfg.max_quarantine_share, table)
    for table, n in expected_in.items():
        got = by_table.get(table.replace("bronze.", "silver."), [])
        if sum(r["count"] for r in got) != n:
            raise AccountingError(f"clean {table}: the ingest commits read appended {n:,} rows; "
                                  f"{sum(r['count'] for r in got):,} were classified")
    accounting = _accounting("silver.interactions", by_table["silver.interactions"], domains)
    accounting += _accounting("silver.items", by_table["silver.items"], domains, extra=item_flags)
    if IDENTITY_MAP in by_table:
        accounting += _accounting(IDENTITY_MAP, by_table[IDENTITY_MAP], [])
        if added is not None:  # a night's mapping already in silver.identity_map is a duplicate of an earlier night
            _move_to_duplicates(accounting, IDENTITY_MAP, {r[C.DOMAIN]: r["count"] for r in added.groupBy(C.DOMAIN).count().collect()})
    check_balanced(accounting)
    stage.lap("classified")

    # ---- writes
    item_cols = load_contract("silver.items").column_names
    ok_items = items.where(F.col(clean.STATUS) == clean.OK).select(*item_cols)
    if placeholders is not None:
        ok_items = ok_items.unionByName(placeholders.select(*item_cols))
    quarantine = [clean.quarantine_rows(inter, "bronze.interactions"), clean.quarantine_rows(items, "bronze.items")]
    if judged is not None:
        quarantine.append(clean.quarantine_rows(judged, "bronze.identity_map"))
    quarantine = reduce(lambda a, b: a.unionByName(b), quarantine)
    n_items = sum(r.rows_out for r in accounting if r.table_name == "silver.items") + sum(n_placeholders.values())
    n_inter = sum(r.rows_out for r in accounting if r.table_name == "silver.interactions")
    n_quar = sum(r.quarantined for r in accounting)
    n_ids = sum(r.rows_out for r in accounting if r.table_name == IDENTITY_MAP)
    w = stage.writes
    if stage.mode == "full":
        rebuilt = [("silver.items", ok_items, n_items), ("silver.interactions", ok_inter, n_inter),
                   ("silver.quarantine", quarantine, n_quar)]
        if judged is not None:
            rebuilt.append((IDENTITY_MAP, judged.where(F.col(clean.STATUS) == clean.OK), n_ids))
        for table, df, n in rebuilt:
            w[table] = write_table(spark, df, load_contract(table), cfg.table_path(table), "overwrite")
            _check_written(table, write_metrics(cfg.table_path(table), w[table]).get("numOutputRows"), n)
        stage.lap(f"rebuilt {', '.join(t for t, _, _ in rebuilt)}")
    else:
        w["silver.items"], m = merge_table(spark, ok_items, load_contract("silver.items"), silver_items_path, [C.DOMAIN, C.ITEM_ID])
        _check_written("silver.items", m.get("numTargetRowsInserted", 0) + m.get("numTargetRowsUpdated", 0), n_items)
        stage.lap("merged silver.items")
        # insert-only on the key: an anti-join against silver's matching rows, then an append (a MERGE would plan a
        # join and a rewrite for rows it never updates)
        path = cfg.table_path("silver.interactions")
        key = list(contract.key)
        fresh = ok_inter.join(matches.where(F.col("_dup")).select(*key), key, "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        _move_to_duplicates(accounting, "silver.interactions",
                            {r[C.DOMAIN]: r["count"] for r in fresh.groupBy(C.DOMAIN).count().collect()})
        n_inter = sum(r.rows_out for r in accounting if r.table_name == "silver.interactions")
        w["silver.interactions"] = recorded["silver.interactions"]
        if n_inter:
            w["silver.interactions"] = write_table(spark, fresh, contract, path, "append")
            _check_written("silver.interactions", write_metrics(path, w["silver.interactions"]).get("numOutputRows"), n_inter)
        fresh.unpersist()
        stage.lap("appended silver.interactions")
        w["silver.quarantine"] = recorded.get("silver.quarantine", -1)
        if n_quar:  # nothing to append most nights: no commit
            path = cfg.table_path("silver.quarantine")
            w["silver.quarantine"] = write_table(spark, quarantine, load_contract("silver.quarantine"), path, "append")
            _check_written("silver.quarantine", write_metrics(path, w["silver.quarantine"]).get("numOutputRows"), n_quar)
            stage.lap("appended silver.quarantine")
        if IDENTITY_MAP in recorded:
            w[IDENTITY_MAP] = recorded[IDENTITY_MAP]
        if n_ids:  # the night's new keys (a changed mapping rebuilds)
            path = cfg.table_path(IDENTITY_MAP)
            w[IDENTITY_MAP] = write_table(spark, added, load_contract(IDENTITY_MAP), path, "append")
            _check_written(IDENTITY_MAP, write_metrics(path, w[IDENTITY_MAP]).get("numOutputRows"), n_ids)
            stage.lap("appended silver.identity_map")

    declared = {fs.domain: fs.entities for fs in dataset.file_sets if fs.kind == "items" and fs.entities}
    n_entities, appended = _write_entities(spark, cfg, stage, recorded, last, declared, accounting, ok_items)
    if cfg.validate:
        expected = {"silver.items": n_items, "silver.interactions": n_inter, "silver.quarantine": n_quar, IDENTITY_MAP: n_ids,
                    ENTITIES: n_entities}
        committed = [t for t, v in w.items() if v > recorded.get(t, -1)]  # an empty append commits nothing
        whole = set() if stage.mode == "incremental" and appended else {ENTITIES}
        _validate(spark, cfg, stage, domains, expected, committed, merged=stage.mode == "incremental", whole=whole)
        stage.lap("validated")
    if new_key:
        record_lake_key(spark, cfg.table_path("silver.interactions"), key)
        w["silver.interactions"] = latest_version(cfg.table_path("silver.interactions"))
    _unpersist(inter, items, judged, added, placeholders, matches, *batch.values())
    for r in accounting:
        r.details["bronze_versions"] = stage.reads
    stage.accounting = accounting
    return accounting


def _write_entities(spark, cfg: CrossrecConfig, stage: StageRun, recorded: dict, last: dict | None,
                    declared: dict, accounting: list[AccountingRow], night_items) -> tuple[int, bool]:
    """Bring silver.item_entities up to the silver.items version this run wrote; returns (rows written, whether they
    were appended). Its accounting counts entity values: each ends in the table or, repeated within an item or already
    there, as a duplicate. ``night_items`` are the rows this run put in silver.items (an incremental run's MERGE
    inserts or updates every one of them).

    Kept when neither the catalog nor the declarations (``declared``: per domain, :attr:`FileSet.entities`) changed, or
    nothing is declared. A night whose changed items only add entities (new items, a changed title) appends them
    (:func:`_entities_to_append`); one that changes or removes an entity of an item, a full clean, or new declarations
    rewrite the table from silver.items."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    fp = hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()[:16]
    stage.details["entities"] = fp
    w, path = stage.writes, cfg.table_path(ENTITIES)
    same = ENTITIES in recorded and last is not None and last[C.DETAILS].get("entities") == fp and table_exists(spark, path)
    if same and (w["silver.items"] == recorded.get("silver.items") or not declared):
        w[ENTITIES] = recorded[ENTITIES]
        return 0, False
    contract = load_contract(ENTITIES)
    night = _entities_to_append(spark, cfg, recorded, night_items, declared) if same and stage.mode == "incremental" else None
    if night is not None:
        new_rows, rows = night
        check_balanced(rows)
        accounting += rows
        w[ENTITIES] = recorded[ENTITIES]
        if new_rows:
            w[ENTITIES] = write_table(spark, spark.createDataFrame(new_rows, contract.spark_schema()), contract, path, "append")
            _check_written(ENTITIES, write_metrics(path, w[ENTITIES]).get("numOutputRows"), len(new_rows))
        stage.lap(f"appended {ENTITIES} ({len(new_rows):,} rows)")
        return len(new_rows), True
    items = read_table(spark, cfg.table_path("silver.items"), w["silver.items"])
    judged = clean.item_entities(clean.item_entity_values(items, declared)).persist(StorageLevel.MEMORY_AND_DISK)
    rows = _accounting(ENTITIES, [dict(r.asDict(), **{clean.REASON: None}) for r in judged.groupBy(C.DOMAIN, clean.STATUS).count().collect()], list(declared))
    check_balanced(rows)
    accounting += rows
    n = sum(r.rows_out for r in rows)
    w[ENTITIES] = write_table(spark, judged.where(F.col(clean.STATUS) == clean.OK), contract, path, "overwrite")
    _check_written(ENTITIES, write_metrics(path, w[ENTITIES]).get("numOutputRows"), n)
    judged.unpersist()
    stage.lap(f"rewrote {ENTITIES} ({n:,} rows)")
    return n, False


NIGHT_ENTITIES_MAX = 100_000  # entity values of a night's changed items compared on the driver; more: a rewrite


def _entities_to_append(spark, cfg: CrossrecConfig, recorded: dict, changed, declared: dict):
    """The rows a night adds to silver.item_entities and their accounting, or None when the night changes or removes an
    entity the table holds (or its items have more than :data:`NIGHT_ENTITIES_MAX` values): the table is then rewritten.

    ``changed`` are the silver.items rows the night inserted or updated; their entity values are compared with their
    rows in the table at its recorded version, on the driver (a night's few)."""
    from collections import Counter

    from pyspark.sql import functions as F

    contract = load_contract(ENTITIES)
    values = clean.item_entities(clean.item_entity_values(changed, declared))
    got = values.select(*contract.column_names, clean.STATUS).limit(NIGHT_ENTITIES_MAX + 1).collect()
    if len(got) > NIGHT_ENTITIES_MAX:
        return None
    content = [C.DOMAIN, C.ITEM_ID, C.ENTITY, C.ENTITY_TYPE, C.VALUE, C.ATTRIBUTE]
    keys = F.broadcast(changed.select(C.DOMAIN, C.ITEM_ID))
    there = {tuple(r) for r in read_table(spark, cfg.table_path(ENTITIES), recorded[ENTITIES])
             .join(keys, [C.DOMAIN, C.ITEM_ID], "left_semi").select(*content).collect()}
    ok = {tuple(r[c] for c in content): r for r in got if r[clean.STATUS] == clean.OK}
    if there - ok.keys():  # an entity of a changed item is gone or changed
        return None
    new_rows = [tuple(r[c] for c in contract.column_names) for t, r in ok.items() if t not in there]
    counts = Counter((r[C.DOMAIN], r[clean.STATUS]) for r in got)
    rows = _accounting(ENTITIES, [{C.DOMAIN: d, clean.STATUS: st, clean.REASON: None, "count": n} for (d, st), n in counts.items()],
                       list(declared))
    _move_to_duplicates(rows, ENTITIES, Counter(r[0] for r in new_rows))
    return new_rows, rows


def _full_reason(cfg: CrossrecConfig, spark, last: dict | None, fp: str, outputs: dict[str, int | None]) -> str | None:
    """Why this run must rebuild from all of bronze, or None when it can merge the new rows into ``outputs`` (the
    tables this run writes, with their recorded versions)."""
    if cfg.full_refresh:
        return "full_refresh requested"
    if last is None:
        return "no earlier clean run"
    if last[C.DETAILS].get("settings") != fp:
        return "dataset.json or the settings clean applies changed since the last run"
    missing = [t for t, v in outputs.items() if v is None or not table_exists(spark, cfg.table_path(t))]
    return f"{missing} missing" if missing else None


def _applied(mappings):
    """``silver.identity_map`` rows as :func:`~crossrec.data.clean.pseudonymous_users` reads a classified map."""
    from pyspark.sql import functions as F

    return mappings.select(C.DOMAIN, C.LOCAL_USER_ID, C.GLOBAL_USER_ID).withColumn(clean.STATUS, F.lit(clean.OK))


def _night_mappings(new_rows, applied, domains: list[str], key: bytes):
    """Classify a night's new identity-map rows against the map silver was built with.

    Returns ``(judged, added, reason)``: the new rows classified (None without new rows), the winning mappings of
    keys ``applied`` (silver.identity_map) does not hold yet, and a reason for a rebuild when a winner gives a key
    another global id than ``applied`` (None otherwise). The new rows were ingested after every row of ``applied``, so
    a winner among them is the winner over the whole map (latest wins). Whether an added key already has rows in silver
    under its own id is answered with the night's other lookup of silver (:func:`_silver_matches`)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if new_rows is None:
        return None, None, None
    keys = [C.DOMAIN, C.LOCAL_USER_ID]
    judged = clean.classify_identity_map(new_rows, domains, key).persist(StorageLevel.MEMORY_AND_DISK)
    winners = judged.where(F.col(clean.STATUS) == clean.OK)
    was = applied.select(*keys, F.col(C.GLOBAL_USER_ID).alias("_was"))
    if _any(winners.join(was, keys).where(F.col("_was") != F.col(C.GLOBAL_USER_ID))):
        return judged, None, "the identity map gives a user another global id"
    return judged, winners.join(was, keys, "left_anti").persist(StorageLevel.MEMORY_AND_DISK), None


def _silver_matches(spark, cfg, version: int, batch, added):
    """The keys of silver.interactions (at ``version``) that a night needs, from one scan: rows the night's ``batch``
    repeats (``_dup``) and rows of a local user id the night's ``added`` mappings map (``_added``: such a night
    rebuilds). Silver is joined on (domain, user_id) against the night's users, broadcast with their keys; persisted."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    key = list(load_contract("silver.interactions").key)
    user = [C.DOMAIN, C.USER_ID]
    rest = [c for c in key if c not in user]
    wanted = batch.select(*user, F.struct(*rest).alias("_k"), F.lit(False).alias("_added"))
    if added is not None:
        wanted = wanted.unionByName(added.select(C.DOMAIN, F.col(C.LOCAL_USER_ID).alias(C.USER_ID),
                                                 F.lit(None).cast(wanted.schema["_k"].dataType).alias("_k"),
                                                 F.lit(True).alias("_added")))
    wanted = wanted.groupBy(*user).agg(F.collect_set("_k").alias("_keys"), F.max("_added").alias("_added"))
    silver = read_table(spark, cfg.table_path("silver.interactions"), version).select(*key)
    return (silver.join(F.broadcast(wanted), user)
            .select(*key, F.array_contains("_keys", F.struct(*rest)).alias("_dup"), "_added")
            .where(F.col("_dup") | F.col("_added")).persist(StorageLevel.MEMORY_AND_DISK))


def _unpersist(*frames) -> None:
    """Drop the cached frames of a run (None entries skipped)."""
    for frame in frames:
        if frame is not None:
            frame.unpersist()


def _any(df) -> bool:
    """Whether ``df`` has a row, in one job."""
    from pyspark.sql import functions as F

    return df.select(F.lit(1).alias("x")).groupBy().count().first()[0] > 0


def _rows_appended(spark, cfg, ledger: Ledger, reads: dict[str, int], last: dict | None) -> dict[str, int]:
    """Rows the ingest commits clean reads appended, as Delta recorded them (``numOutputRows``); for a full rebuild
    the rows of the tables at their versions (the data files' record counts)."""
    out = {}
    for t, v in reads.items():
        path = cfg.table_path(t)
        if last is None:
            out[t] = read_table(spark, path, v).count()
            continue
        versions = ledger.written_versions(t, last["reads"].get(t, 0), v)
        out[t] = sum(int((c.get("operationMetrics") or {}).get("numOutputRows", 0))
                     for c in commits(path, min(versions, default=v + 1) - 1) if c["version"] in versions)
    return out


def _move_to_duplicates(accounting: list[AccountingRow], table: str, inserted: dict[str, int]) -> None:
    """The new ok rows of ``table`` not inserted (``inserted``: per domain) are already there: duplicates of an
    earlier night."""
    for r in accounting:
        if r.table_name == table and r.rows_out != inserted.get(r.domain, 0):
            n = r.rows_out - inserted.get(r.domain, 0)
            r.rows_out -= n
            r.duplicates += n
            r.details["duplicates_of_earlier_nights"] = n


def _accounting(table: str, counts: list, domains: list[str], extra: dict | None = None) -> list[AccountingRow]:
    rows = {d: AccountingRow(STAGE, table, d) for d in domains}
    for r in counts:
        acc = rows.setdefault(r[C.DOMAIN] or "<none>", AccountingRow(STAGE, table, r[C.DOMAIN] or "<none>"))
        acc.rows_in += r["count"]
        if r[clean.STATUS] == clean.OK:
            acc.rows_out += r["count"]
        elif r[clean.STATUS] == clean.DUPLICATE:
            acc.duplicates += r["count"]
        else:
            acc.quarantined += r["count"]
            acc.details.setdefault("quarantined_by_reason", {})[r[clean.REASON]] = r["count"]
    for d, info in (extra or {}).items():
        rows.setdefault(d, AccountingRow(STAGE, table, d)).details.update(info)
    return list(rows.values())


def _check_written(table: str, written: int | None, expected: int) -> None:
    if written is not None and written != expected:
        raise AccountingError(f"clean {table}: Delta reports {written:,} rows written; the accounting expects {expected:,}")


def _validate(spark, cfg, stage: StageRun, domains: list[str], expected: dict[str, int], committed: list[str],
              merged: bool, whole: set[str] = frozenset()) -> None:
    """Validate what this run committed, with its row counts: a rebuild's tables whole, a merge's rows it added or
    changed (read from the change feed of its commit), the tables of ``whole`` (rewritten by a night) whole."""
    validator = Validator(cfg.reports_root, stage.run_id)
    params = clean.contract_params(cfg, domains)
    silver_items = read_table(spark, cfg.table_path("silver.items"), stage.writes["silver.items"])
    checks = []
    for table in committed:
        version, path = stage.writes[table], cfg.table_path(table)
        if merged and table not in whole:
            df = read_changes(spark, path, [version], ("insert", "update_postimage")).drop(*CDF_COLUMNS)
        else:
            df = read_table(spark, path, version)
        checks.append(Check(load_contract(table), df, params=params, expected_rows=expected[table],
                            references={"silver.items": silver_items}, version=version))
    validator.check_all(checks)
    stage.details["data_docs"] = validator.finish()
