"""Features stage: silver -> gold.item_index, gold.user_sequences, gold.item_embeddings.

Run it:
    crossrec features --lake-root lakehouse --raw-dir demo-data/raw [--max-seq-len 50]
    python -m crossrec_jobs.features ...                    # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/features.py --spark-master none --lake-root s3a://bucket/lake ...

Reads silver at pinned versions; builds dense item ids, the leave-last-out splits per domain with the
cross-domain cold-start sample (rules in lib/crossrec/data/features.py), the model's sequences, and
the text-encoder vectors of every item (a pandas UDF runs all-MiniLM-L6-v2 in batches; items whose text
hash is unchanged keep their cached vector). Each table is validated; the row accounting is printed and
stored. The cold-start sample: per domain, a seeded --cold-start-users of the users active in it and in
another domain (at most --cold-start-fraction of the candidates), or every user of the data set's cohort named
by --cold-start-cohort (dataset.json extras.user_cohorts).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from functools import partial

from crossrec.cli.common import add_common_args, run_job
from crossrec.data import features as FE
from crossrec.data.rawformat import RawFormatError, load_dataset
from crossrec.io.accounting import AccountingRow, check_balanced, format_accounting, write_accounting
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import latest_version, read_table, table_exists, write_table
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import Validator

log = logging.getLogger("crossrec.jobs.features")
STAGE = "features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)
    g = p.add_argument_group("features")
    g.add_argument("--max-seq-len", dest="max_seq_len", type=int, help="events of history kept per sample (default 50)")
    g.add_argument("--cold-start-users", dest="cold_start_users", type=int,
                   help="per domain, users active in it and another domain made new to it (history withheld) for the "
                        "cold-start evaluation (default 2000)")
    g.add_argument("--cold-start-fraction", dest="cold_start_fraction", type=float,
                   help="at most this share of a domain's multi-domain users is sampled (default 0.5)")
    g.add_argument("--cold-start-cohort", dest="cold_start_cohort",
                   help="use every user of this cohort of dataset.json extras.user_cohorts as the cold-start sample "
                        "instead (default: none, the seeded sample)")
    g.add_argument("--seed", type=int, help="seed of the sampled choices (default 42)")


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
    path = os.path.join(dataset.root, name)
    with open(path, encoding="utf-8") as fh:
        ids = [r["user_id"] for r in csv.DictReader(fh) if r.get("cohort") == cfg.cold_start_cohort]
    if not ids:
        raise RawFormatError(f"{path}: no user of cohort {cfg.cold_start_cohort!r}")
    log.info("cold-start sample: %d users of cohort %r (%s)", len(ids), cfg.cold_start_cohort, path)
    raw = spark.createDataFrame([(i,) for i in ids], "raw_id string")
    # the same keyed hash as clean: the identity map is not applied (cohort files name global ids)
    return raw.select(pseudonym_column(cfg.require_pseudonym_key(), F.col("raw_id")).alias("user_id"))


def run(cfg: CrossrecConfig, spark) -> list[AccountingRow]:
    """Build the gold tables from silver, validate them, and return the row accounting."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    versions = {}
    for t in ("silver.interactions", "silver.items"):
        if not table_exists(spark, cfg.table_path(t)):
            raise RawFormatError(f"{t} does not exist at {cfg.table_path(t)}: run `crossrec clean` first")
        versions[t] = latest_version(spark, cfg.table_path(t))
    inter = read_table(spark, cfg.table_path("silver.interactions"), versions["silver.interactions"])
    items = read_table(spark, cfg.table_path("silver.items"), versions["silver.items"])
    domains = sorted(r[0] for r in items.select("domain").distinct().collect())
    log.info("reading silver at versions %s; domains %s", versions, domains)

    index = FE.build_item_index(items).persist(StorageLevel.MEMORY_AND_DISK)
    occ = FE.first_occurrences(inter, index).persist(StorageLevel.MEMORY_AND_DISK)
    firsts = occ.where(~F.col("is_repeat")).drop("is_repeat")
    cold = FE.select_cold_users(firsts, cfg.cold_start_users, cfg.cold_start_fraction, cfg.seed, cohort_users(spark, cfg))
    split = FE.assign_splits(firsts, cold).persist(StorageLevel.MEMORY_AND_DISK)

    # ---- accounting of interactions -> sequence events (one aggregate)
    per_domain = {r["domain"]: r for r in occ.groupBy("domain").agg(
        F.count("*").alias("n"), F.sum(F.col("is_repeat").cast("long")).alias("repeats")).collect()}
    per_split = split.groupBy("domain", "split", "withheld").count().collect()
    n_in = {r["domain"]: r["count"] for r in inter.groupBy("domain").count().collect()}
    accounting = []
    for d in domains:
        row = AccountingRow(STAGE, "gold.user_sequences", d, rows_in=n_in.get(d, 0))
        row.duplicates = int(per_domain[d]["repeats"]) if d in per_domain else 0
        row.withheld = sum(r["count"] for r in per_split if r["domain"] == d and r["withheld"])
        row.rows_out = sum(r["count"] for r in per_split if r["domain"] == d and not r["withheld"])
        row.quarantined = row.rows_in - (per_domain[d]["n"] if d in per_domain else 0)  # items missing from the index
        row.details = {s: sum(r["count"] for r in per_split if r["domain"] == d and r["split"] == s and not r["withheld"]) for s in ("train", "valid", "test")}
        row.details["silver_versions"] = versions
        accounting.append(row)

    # ---- item embeddings: reuse cached vectors whose text hash is unchanged
    enc_in = FE.encoder_input(items)
    emb_path = cfg.table_path("gold.item_embeddings")
    emb_contract = load_contract("gold.item_embeddings")
    if table_exists(spark, emb_path):
        cached = read_table(spark, emb_path, latest_version(spark, emb_path)).select("domain", "item_id", "text_hash", "encoder", "embedding")
        reused = cached.join(enc_in.select("domain", "item_id", "text_hash"), ["domain", "item_id", "text_hash"], "inner")
        todo = enc_in.join(cached.select("domain", "item_id", "text_hash"), ["domain", "item_id", "text_hash"], "left_anti")
        # materialise: the table is overwritten below while these rows came from it
        reused = spark.createDataFrame(reused.toPandas(), emb_contract.spark_schema()) if reused.take(1) else None
    else:
        reused, todo = None, enc_in
    n_todo = todo.count()
    log.info("text encoder: %d item(s) to encode, %s reused from the cache", n_todo, "some" if reused is not None else "none")
    from crossrec.text.encoder import encode_batches

    parts = max(1, min(spark.sparkContext.defaultParallelism, n_todo // 2000 + 1))
    # on one machine the Python workers share its cores: cap torch's threads so they do not oversubscribe
    local = spark.sparkContext.master.startswith("local")
    threads = max(1, (os.cpu_count() or 1) // parts) if local else None
    encoded = todo.repartition(parts).mapInPandas(partial(encode_batches, threads=threads), schema=emb_contract.spark_schema())
    embeddings = encoded if reused is None else encoded.unionByName(reused)

    # ---- writes
    written = {
        "gold.item_index": write_table(spark, FE.add_train_counts(index, split), load_contract("gold.item_index"), cfg.table_path("gold.item_index"), "overwrite"),
        "gold.user_sequences": write_table(spark, FE.build_sequences(split, cfg.max_seq_len), load_contract("gold.user_sequences"), cfg.table_path("gold.user_sequences"), "overwrite"),
        "gold.item_embeddings": write_table(spark, embeddings, emb_contract, emb_path, "overwrite"),
    }
    n_items = {r["domain"]: r["count"] for r in items.groupBy("domain").count().collect()}
    for d in domains:
        accounting.append(AccountingRow(STAGE, "gold.item_index", d, rows_in=n_items[d], rows_out=n_items[d]))
        accounting.append(AccountingRow(STAGE, "gold.item_embeddings", d, rows_in=n_items[d], rows_out=n_items[d]))
    accounting[-1].details = {"encoded": n_todo, "reused_total": sum(n_items.values()) - n_todo}
    check_balanced(accounting)

    if cfg.validate:
        validator = Validator(cfg.reports_root, cfg.effective_run_id(STAGE))
        silver_items = read_table(spark, cfg.table_path("silver.items"), versions["silver.items"])
        for table, version in written.items():
            expected = sum(n_items.values()) if table != "gold.user_sequences" else None
            validator.check(load_contract(table), read_table(spark, cfg.table_path(table), version), params={"domains": domains},
                            expected_rows=expected, references={"silver.items": silver_items}, version=version)
    seq = read_table(spark, cfg.table_path("gold.user_sequences"), written["gold.user_sequences"])
    summary = seq.groupBy("split", "target_domain", "cold_start").count().orderBy("split", "target_domain", "cold_start").collect()
    for frame in (index, occ, split):
        frame.unpersist()
    print(format_accounting(accounting))
    print("gold.user_sequences rows (split, target domain, cold start):")
    for r in summary:
        print(f"  {r['split']:<6} {r['target_domain']:<12} cold={str(r['cold_start']):<5} {r['count']:>10,}")
    write_accounting(spark, cfg, cfg.effective_run_id(STAGE), accounting)
    return accounting


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
