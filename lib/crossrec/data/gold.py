"""The features stage: silver -> gold.item_index, gold.user_sequences, gold.item_embeddings, nightly or in full.

**Incremental (the default).** The users with changes are read from silver.interactions' change data feed of
the commits recorded since features' last run (new rows, and rows erased by ``crossrec forget``); only their
sequence rows are rebuilt from their whole history and replace theirs in gold.user_sequences: a ``DELETE`` by user id
(deletion vectors: no file is rewritten), then an append. These are two commits; every reader reads the version
recorded after the second (``ops.runs``), and a run killed between them is rolled back by the next. The item index
is stable: items keep their ids, new items get the next ones, so a model trained on an older index still reads the
new tables. ``train_count`` moves by the changed users' train events.
Embeddings are computed for new or changed texts only and MERGEd into the cache; nothing is collected to the driver.
The cold-start sample is stable too: the per-domain (hash, user) thresholds of its first draw are stored as a property
of gold.user_sequences and every user, new or old, is judged against them (lib/crossrec/data/features.py).

**Full rebuild** (``full_refresh``, the first run, after a full clean, a new domain, or changed sequence settings):
every user's rows from all of silver, the tables overwritten; ids and the stored sample thresholds are kept when the
settings that made them are unchanged.

Row accounting per domain: interactions in = sequence events out + repeats + withheld + not in the index; the
events the written rows hold (read back from the table) must equal the events out (exit 4 otherwise).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from functools import partial

from crossrec import columns as C
from crossrec.data import features as FE
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import AccountingError, AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import (delete_in, latest_version, merge_table, read_changes, read_table, set_table_properties, table_exists,
                               table_properties, write_table)
from crossrec.io.runs import Ledger, StageRun, stage_run
from crossrec.io.spark import ROWS_PER_PARTITION, default_parallelism, is_local, size_shuffles
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Check, Validator

log = logging.getLogger(__name__)

STAGE = "features"
SILVER = ("silver.interactions", "silver.items")
GOLD = ("gold.item_index", "gold.user_sequences", "gold.item_embeddings")
COLD_PROPERTY = "crossrec.cold_start"
SEQ_KEY = [C.USER_ID, C.SPLIT, C.TARGET_DOMAIN]
USERS_PER_PARTITION = 20_000  # shuffle partitions of a night: one per this many changed users (their whole history)
DRIVER_ENCODE_MAX = 2_000  # texts encoded in the driver rather than in a Spark job (the model loads once per process)


def run_features(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Bring gold up to the recorded silver versions (incremental or full), validate, record; return the accounting."""
    with stage_run(spark, cfg, STAGE, list(GOLD)) as stage:
        accounting, summary = _features(cfg, spark, stage)
    print(format_accounting(accounting))
    print(f"gold.user_sequences rows written this run ({stage.mode}; split, target domain, cold start):")
    for r in summary:
        print(f"  {r[C.SPLIT]:<6} {r[C.TARGET_DOMAIN]:<12} cold={str(r[C.COLD_START]):<5} {r['count']:>10,}")
    write_accounting(spark, cfg, stage.run_id, accounting)
    return accounting


def cohort_users(spark, cfg: CrossrecConfig):
    """Pseudonymised ids of the configured cohort, or None when the data set has no cohort file."""
    from pyspark.sql import functions as F

    from crossrec.data.pseudonym import pseudonym_column

    if not cfg.cold_start_cohort:
        return None
    try:
        dataset = load_dataset(cfg.raw_dir, outside_root=cfg.raw_paths_outside_root)
    except RawFormatError:
        log.info("no raw data set at %s: cold-start sample drawn by fraction", cfg.raw_dir)
        return None
    name = dataset.extras.get("user_cohorts")
    if not name:
        return None
    from crossrec.io.lakefs import filesystem, join

    path = join(dataset.root, name)
    fs, inner = filesystem(path)  # the raw folder may be on an object store
    with fs.open_input_stream(inner) as fh:
        rows = csv.DictReader(io.StringIO(fh.read().decode("utf-8")))
        ids = [r["user_id"] for r in rows if r.get("cohort") == cfg.cold_start_cohort]
    if not ids:
        raise RawFormatError(f"{path}: no user of cohort {cfg.cold_start_cohort!r}")
    log.info("cold-start sample: %d users of cohort %r (%s)", len(ids), cfg.cold_start_cohort, path)
    raw = spark.createDataFrame([(i,) for i in ids], "raw_id string")
    # the same keyed hash as clean: the identity map is not applied (cohort files name global ids)
    return raw.select(pseudonym_column(cfg.require_pseudonym_key(), F.col("raw_id")).alias(C.USER_ID))


def _settings(cfg: CrossrecConfig) -> dict:
    return {"max_seq_len": cfg.max_seq_len, "cold_start_users": cfg.cold_start_users, "seed": cfg.seed,
            "cold_start_fraction": cfg.cold_start_fraction, "cold_start_cohort": cfg.cold_start_cohort}


def _full_reason(cfg: CrossrecConfig, spark, ledger: Ledger, last: dict | None, reads: dict, domains: list[str]) -> str | None:
    if cfg.full_refresh:
        return "full_refresh requested"
    if last is None:
        return "no earlier features run"
    if last[C.DETAILS].get("settings") != _settings(cfg):
        return "the sequence or cold-start settings changed since the last run"
    if sorted(last[C.DETAILS].get("domains", [])) != domains:
        return f"the domains changed ({last[C.DETAILS].get('domains')} -> {domains})"
    missing = [t for t in GOLD if not table_exists(spark, cfg.table_path(t))]
    if missing:
        return f"{missing} missing"
    since = last["reads"].get("silver.interactions", -1)
    for r in ledger.succeeded("clean"):
        if r["mode"] == "full" and since < r["writes"].get("silver.interactions", -1) <= reads["silver.interactions"]:
            return "clean rebuilt silver since the last run"
    return None


def _features(cfg: CrossrecConfig, spark, stage: StageRun):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    ledger = Ledger(cfg.lake_uri)
    recorded = ledger.recorded_versions()
    for t in SILVER:
        if t not in recorded or not table_exists(spark, cfg.table_path(t)):
            raise RawFormatError(f"{t} has no recorded version at {cfg.table_path(t)}: run `crossrec clean` first")
    stage.reads = {t: recorded[t] for t in SILVER}
    inter_all = read_table(spark, cfg.table_path("silver.interactions"), stage.reads["silver.interactions"])
    items = read_table(spark, cfg.table_path("silver.items"), stage.reads["silver.items"])
    domains = sorted(r[0] for r in items.select(C.DOMAIN).distinct().collect())
    last = ledger.last(STAGE)
    seq_path, index_path = cfg.table_path("gold.user_sequences"), cfg.table_path("gold.item_index")
    cohort = cohort_users(spark, cfg)
    stored = None  # the cold-start sample's thresholds, kept from the run that drew them
    if cohort is None and table_exists(spark, seq_path):
        stored = json.loads(table_properties(spark, seq_path).get(COLD_PROPERTY, "null"))
        if stored is not None and (stored.get("settings") != _settings(cfg) or sorted(stored["thresholds"]) != domains):
            stored = None
    reason = _full_reason(cfg, spark, ledger, last, stage.reads, domains)
    if reason is None and cohort is None and stored is None:
        reason = "no cold-start thresholds stored for these settings"
    stage.mode = "full" if reason else "incremental"
    stage.details.update(settings=_settings(cfg), domains=domains)
    log.info("reading silver at its recorded versions %s; domains %s; %s", stage.reads, domains,
             f"full rebuild ({reason})" if reason else "incremental")
    if reason:
        stage.details["full_because"] = reason

    todo, n_todo = _texts_to_encode(spark, cfg, items)
    if 0 < n_todo <= DRIVER_ENCODE_MAX:  # the driver will encode them: load the model while Spark works
        from crossrec.text.encoder import preload_encoder

        preload_encoder()
    old_index = read_table(spark, index_path, recorded["gold.item_index"]) if "gold.item_index" in recorded else None
    index = FE.extend_item_index(old_index, items).persist(StorageLevel.MEMORY_AND_DISK)
    users = None
    if stage.mode == "incremental":
        versions = ledger.written_versions("silver.interactions", last["reads"]["silver.interactions"], stage.reads["silver.interactions"])
        changes = read_changes(spark, cfg.table_path("silver.interactions"), versions,
                               ("insert", "delete", "update_preimage", "update_postimage"))
        users = (changes.select(C.USER_ID).distinct() if changes is not None else
                 spark.createDataFrame([], "user_id string")).persist(StorageLevel.MEMORY_AND_DISK)
        stage.details["users_changed"] = users.count()
        size_shuffles(spark, stage.details["users_changed"], USERS_PER_PARTITION)
        log.info("features: %d user(s) with changes in silver.interactions versions %s", stage.details["users_changed"], versions)
        stage.lap("changed users found")
    else:  # every user's history: sized to silver's rows (a count Delta answers from its log), not the configured number
        size_shuffles(spark, inter_all.count(), ROWS_PER_PARTITION)
    inter = inter_all
    if users is not None:  # the changed users' whole history: small, read by the sequences and the accounting
        inter = inter_all.join(F.broadcast(users), C.USER_ID, "left_semi").persist(StorageLevel.MEMORY_AND_DISK)

    occ = FE.first_occurrences(inter, index).persist(StorageLevel.MEMORY_AND_DISK)
    firsts = occ.where(~F.col("is_repeat")).drop("is_repeat")
    if cohort is not None:
        cold = FE.select_cold_users(firsts, cfg.cold_start_users, cfg.cold_start_fraction, cfg.seed, cohort)
    else:
        if stored is None:  # a full run over every user: draw the sample (kept for the nights after)
            stored = {"settings": _settings(cfg),
                      "thresholds": FE.cold_thresholds(firsts, cfg.cold_start_users, cfg.cold_start_fraction, cfg.seed)}
        stage.details["cold_start_thresholds"] = stored["thresholds"]
        cold = FE.cold_users_by_threshold(firsts, cfg.seed, stored["thresholds"])
    split = FE.assign_splits(firsts, cold).persist(StorageLevel.MEMORY_AND_DISK)
    seqs = FE.build_sequences(split, cfg.max_seq_len)

    accounting = _sequence_accounting(inter, occ, split, domains)
    stage.lap("sequences built")
    w = stage.writes
    contract = load_contract("gold.user_sequences")
    old = None  # the changed users' rows before this run, as the change feed of their deletion keeps them
    if stage.mode == "full":
        w["gold.user_sequences"] = write_table(spark, seqs, contract, seq_path, "overwrite")
        rows_version = w["gold.user_sequences"]
    else:  # the changed users' rows replaced: deleted by user id, then their new rows appended
        deleted = delete_in(spark, seq_path, C.USER_ID, [r[0] for r in users.collect()])
        old = read_changes(spark, seq_path, deleted, ("delete",))
        before = latest_version(seq_path)
        w["gold.user_sequences"] = write_table(spark, seqs, contract, seq_path, "append")
        rows_version = w["gold.user_sequences"] if w["gold.user_sequences"] > before else None  # None: no row to add
    counts = _train_counts(spark, cfg, recorded, split, old, incremental=stage.mode == "incremental")
    new_index = index.drop(C.TRAIN_COUNT) if C.TRAIN_COUNT in index.columns else index
    new_index = new_index.join(counts, C.ITEM_IDX, "left").withColumn(C.TRAIN_COUNT, F.coalesce(C.TRAIN_COUNT, F.lit(0)).cast("long"))
    stage.lap("gold.user_sequences written")
    if cohort is None and table_properties(spark, seq_path).get(COLD_PROPERTY) != json.dumps(stored, sort_keys=True):
        set_table_properties(spark, seq_path, {COLD_PROPERTY: json.dumps(stored, sort_keys=True)})
        w["gold.user_sequences"] = latest_version(seq_path)
    # the index is small next to the events: rewritten whole, ids kept
    new_index = new_index.persist(StorageLevel.MEMORY_AND_DISK)
    new_index.count()
    w["gold.item_index"] = write_table(spark, new_index, load_contract("gold.item_index"), index_path, "overwrite")
    stage.lap("gold.item_index written")
    w["gold.item_embeddings"], n_encoded = _embeddings(spark, cfg, todo, n_todo)
    stage.lap("gold.item_embeddings written")

    written = _written_events(_rows_written(spark, seq_path, rows_version, users))
    expected = sum(r.rows_out for r in accounting)
    if written != expected:
        raise AccountingError(f"features gold.user_sequences: the rows written hold {written:,} events; the accounting "
                              f"expects {expected:,} (sequence events out)")
    n_items = {r[C.DOMAIN]: r["count"] for r in items.groupBy(C.DOMAIN).count().collect()}
    for d in domains:
        accounting.append(AccountingRow(STAGE, "gold.item_index", d, rows_in=n_items[d], rows_out=n_items[d]))
        accounting.append(AccountingRow(STAGE, "gold.item_embeddings", d, rows_in=n_items[d], rows_out=n_items[d]))
    accounting[-1].details = {"encoded": n_encoded, "reused_total": sum(n_items.values()) - n_encoded}
    for r in accounting:
        r.details["silver_versions"] = stage.reads
    check_balanced(accounting)
    stage.lap("accounting checked")

    if cfg.validate:
        validator = Validator(cfg.reports_root, stage.run_id)
        checks = []
        for table, version in w.items():
            if table == "gold.user_sequences" and rows_version is None:
                continue  # the night added no row (no user changed, or every changed user was erased)
            df = read_table(spark, cfg.table_path(table), version)
            if table == "gold.user_sequences" and users is not None:
                df = _rows_written(spark, seq_path, rows_version, users)  # the rows this run appended
            rows = sum(n_items.values()) if table != "gold.user_sequences" else None
            checks.append(Check(load_contract(table), df, params={"domains": domains}, expected_rows=rows,
                                references={"silver.items": items}, version=version))
        validator.check_all(checks)
        stage.details["data_docs"] = validator.finish()
        stage.lap("validated")
    written_rows = _rows_written(spark, seq_path, rows_version, users)
    summary = written_rows.groupBy(C.SPLIT, C.TARGET_DOMAIN, C.COLD_START).count().orderBy(C.SPLIT, C.TARGET_DOMAIN, C.COLD_START).collect()
    for frame in (index, occ, split, new_index, users, todo, inter if users is not None else None):
        if frame is not None:
            frame.unpersist()
    stage.accounting = accounting
    return accounting, summary


def _sequence_accounting(inter, occ, split, domains: list[str]) -> list[AccountingRow]:
    from pyspark.sql import functions as F

    per_domain = {r[C.DOMAIN]: r for r in occ.groupBy(C.DOMAIN).agg(
        F.count("*").alias("n"), F.sum(F.col("is_repeat").cast("long")).alias("repeats")).collect()}
    per_split = split.groupBy(C.DOMAIN, C.SPLIT, "withheld").count().collect()
    n_in = {r[C.DOMAIN]: r["count"] for r in inter.groupBy(C.DOMAIN).count().collect()}
    out = []
    for d in domains:
        row = AccountingRow(STAGE, "gold.user_sequences", d, rows_in=n_in.get(d, 0))
        row.duplicates = int(per_domain[d]["repeats"]) if d in per_domain else 0
        row.withheld = sum(r["count"] for r in per_split if r[C.DOMAIN] == d and r["withheld"])
        row.rows_out = sum(r["count"] for r in per_split if r[C.DOMAIN] == d and not r["withheld"])
        row.quarantined = row.rows_in - (per_domain[d]["n"] if d in per_domain else 0)  # items missing from the index
        row.details = {s: sum(r["count"] for r in per_split if r[C.DOMAIN] == d and r[C.SPLIT] == s and not r["withheld"])
                       for s in ("train", "valid", "test")}
        out.append(row)
    return out


def _train_counts(spark, cfg, recorded: dict, split, old, incremental: bool):
    """``item_idx, train_count`` after this run: all train events (a full run), or (``incremental``) the stored counts
    moved by the changed users' train events: new minus ``old`` (their rows before this run, from the change
    feed of their deletion; None when no user changed)."""
    from pyspark.sql import functions as F

    new = split.where((F.col(C.SPLIT) == FE.TRAIN) & ~F.col("withheld")).groupBy(C.ITEM_IDX).agg(F.count("*").alias("n"))
    if not incremental:
        return new.withColumnRenamed("n", C.TRAIN_COUNT)
    stored = read_table(spark, cfg.table_path("gold.item_index"), recorded["gold.item_index"]).select(C.ITEM_IDX, F.col(C.TRAIN_COUNT).alias("n"))
    moved = stored.unionByName(new)
    if old is not None:
        moved = moved.unionByName(old.where(F.col(C.SPLIT) == FE.TRAIN).select(F.explode(C.ITEM_IDX).alias(C.ITEM_IDX))
                                  .groupBy(C.ITEM_IDX).agg((-F.count("*")).alias("n")))
    return moved.groupBy(C.ITEM_IDX).agg(F.sum("n").cast("long").alias(C.TRAIN_COUNT))


def _rows_written(spark, path: str, version: int | None, users):
    """The sequence rows a run wrote: the whole table at ``version`` (a full run), or the rows it appended, from the
    change data feed of that commit (an incremental run; ``version`` None: it appended none)."""
    from crossrec.data.silver import CDF_COLUMNS

    if users is None:
        return read_table(spark, path, version)
    if version is None:  # the run added no row
        return spark.createDataFrame([], load_contract("gold.user_sequences").spark_schema())
    return read_changes(spark, path, [version], ("insert",)).drop(*CDF_COLUMNS)


def _written_events(rows) -> int:
    """Events the sequence rows hold (train rows: their history; valid/test rows: their target)."""
    from pyspark.sql import functions as F

    n = rows.select(F.sum(F.when(F.col(C.SPLIT) == FE.TRAIN, F.size(C.ITEM_IDX)).otherwise(F.lit(1))).alias("n")).first()["n"]
    return int(n or 0)


def _texts_to_encode(spark, cfg: CrossrecConfig, items):
    """The items whose text (hash) is not in gold.item_embeddings at its recorded version (``domain, item_id,
    enc_text, text_hash``, kept), and how many."""
    from pyspark import StorageLevel

    todo = FE.encoder_input(items)
    path = cfg.table_path("gold.item_embeddings")
    if table_exists(spark, path):
        cached = read_table(spark, path, Ledger(cfg.lake_uri).recorded_versions().get("gold.item_embeddings"))
        todo = todo.join(cached.select(C.DOMAIN, C.ITEM_ID, C.TEXT_HASH), [C.DOMAIN, C.ITEM_ID, C.TEXT_HASH], "left_anti")
    todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
    n_todo = todo.count()
    log.info("text encoder: %d item(s) to encode (new or changed text)", n_todo)
    return todo, n_todo


def _embeddings(spark, cfg: CrossrecConfig, todo, n_todo: int) -> tuple[int, int]:
    """Encode ``todo`` (:func:`_texts_to_encode`) and MERGE it into gold.item_embeddings; return (version, encoded)."""
    from pyspark import StorageLevel

    from crossrec.text.encoder import encode_batches

    path = cfg.table_path("gold.item_embeddings")
    contract = load_contract("gold.item_embeddings")
    if n_todo == 0:
        contract.ensure_table(spark, path)
        return latest_version(path), 0
    if n_todo <= DRIVER_ENCODE_MAX:  # a night's few new texts: no Spark job, no model load in a Python worker
        import pandas as pd

        frames = list(encode_batches(iter([todo.toPandas()])))
        encoded = spark.createDataFrame(pd.concat(frames, ignore_index=True), contract.spark_schema())
        version, _ = merge_table(spark, encoded, contract, path, [C.DOMAIN, C.ITEM_ID])
        return version, n_todo
    parts = max(1, min(default_parallelism(spark), n_todo // 2000 + 1))
    # on one machine the Python workers share its cores: cap torch's threads so they do not oversubscribe
    threads = max(1, (os.cpu_count() or 1) // parts) if is_local(spark) else None
    encoded = todo.repartition(parts).mapInPandas(partial(encode_batches, threads=threads), schema=contract.spark_schema())
    encoded = encoded.persist(StorageLevel.DISK_ONLY)  # a merge may read its source twice: encode once
    encoded.count()
    version, _ = merge_table(spark, encoded, contract, path, [C.DOMAIN, C.ITEM_ID])
    encoded.unpersist()
    return version, n_todo
