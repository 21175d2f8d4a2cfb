"""Features: silver -> gold transforms (``DataFrame -> DataFrame``): item index, splits, sequences, text input.

Split rule (leave-last-out per domain). A user's events are ordered by (time, domain, item, type) into a
position ``pos``. In each domain the newest event is that domain's **test** target and the one before its
**valid** target; everything else is **train**. Each (user, domain, item) counts once, at its first
occurrence (later repeats are counted as duplicates), so a target is never also a training item.

Histories never contain targets: a valid row sees only train events before it; a test row sees train and
valid events before it; train rows contain only train events.

Cold-start sample: selected users, each with one target domain, lose all their events in that domain
except its test target (the events are *withheld*), so they are evaluated there as users new to the
domain whose history comes from the other domains only.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from crossrec.text.encoder import ENCODER_NAME

TRAIN, VALID, TEST = "train", "valid", "test"
ALL_DOMAINS = "*"


def build_item_index(items: DataFrame) -> DataFrame:
    """Dense ids for ``silver.items``: ``item_idx`` 1..N over all domains (0 = padding), ``domain_idx``
    over sorted domain names, ``domain_item_idx`` 0..n_d-1 inside a domain. Deterministic: ordered by
    (domain, item_id). ``train_count`` is added by :func:`add_train_counts`."""
    # a global ordering needs one partition; the item catalog is small next to the interactions
    by_all = Window.orderBy("domain", "item_id")
    by_domain = Window.partitionBy("domain").orderBy("item_id")
    return items.select("domain", "item_id", "category").select(
        "domain",
        "item_id",
        F.row_number().over(by_all).cast("long").alias("item_idx"),
        (F.dense_rank().over(Window.orderBy("domain")) - 1).cast("long").alias("domain_idx"),
        (F.row_number().over(by_domain) - 1).cast("long").alias("domain_item_idx"),
        "category",
    )


def first_occurrences(interactions: DataFrame, item_index: DataFrame) -> DataFrame:
    """Join ids onto interactions, give each user's events a position, flag repeats of an item.

    Output: ``user_id, domain, item_id, item_idx, domain_idx, ts, pos, is_repeat``.
    """
    df = interactions.join(item_index.select("domain", "item_id", "item_idx", "domain_idx"), ["domain", "item_id"], "inner")
    df = df.withColumn("ts", F.unix_seconds("event_ts"))
    order = Window.partitionBy("user_id").orderBy("event_ts", "domain", "item_id", "event_type")
    first = Window.partitionBy("user_id", "domain", "item_id").orderBy("event_ts", "event_type")
    return df.select(
        "user_id", "domain", "item_id", "item_idx", "domain_idx", "ts",
        F.row_number().over(order).cast("long").alias("pos"),
        (F.row_number().over(first) > 1).alias("is_repeat"),
    )


def _picked_domains(events: DataFrame, seed: int, users: DataFrame | None = None) -> DataFrame:
    """``(user_id, domain)``: each candidate (a user active in two or more domains; with ``users``, only those) with
    the one of their domains a seeded hash gives them. A pure function of the user's domains."""
    per_user = events.groupBy("user_id").agg(F.collect_set("domain").alias("domains")).where(F.size("domains") >= 2)
    if users is not None:
        per_user = per_user.join(users.select("user_id").distinct(), "user_id", "inner")
    pick = F.explode("domains").alias("domain")
    cand = per_user.select("user_id", pick).withColumn("_h", F.xxhash64("user_id", "domain", F.lit(seed)))
    w = Window.partitionBy("user_id").orderBy("_h", "domain")
    return cand.withColumn("_r", F.row_number().over(w)).where("_r = 1").select("user_id", "domain")


def _user_hash(seed: int) -> Column:
    return F.xxhash64("user_id", F.lit(seed))


def cold_thresholds(events: DataFrame, per_domain: int, max_share: float, seed: int) -> dict[str, list | None]:
    """Per domain, the (hash, user id) of the last user the seeded sample takes (see :func:`select_cold_users`), or
    None when it takes nobody: a new user joins the sample exactly when their (hash, id) is at most this, so the sample
    is stable night after night and new users enter it at the same rate."""
    assert per_domain >= 0 and 0.0 <= max_share <= 1.0, f"per_domain >= 0 and max_share in [0, 1], got {per_domain}, {max_share}"
    picked = _picked_domains(events, seed).withColumn("_h", _user_hash(seed))
    by_hash = Window.partitionBy("domain").orderBy("_h", "user_id")
    ranked = picked.withColumn("_r", F.row_number().over(by_hash)).withColumn("_n", F.count("*").over(Window.partitionBy("domain")))
    cap = F.least(F.lit(int(per_domain)), F.floor(F.col("_n") * F.lit(float(max_share))))
    last = ranked.where(F.col("_r") == cap).select("domain", "_h", "user_id").collect()
    domains = [r[0] for r in events.select("domain").distinct().collect()]
    out: dict[str, list | None] = {d: None for d in domains}
    out.update({r["domain"]: [int(r["_h"]), r["user_id"]] for r in last})
    return out


def cold_users_by_threshold(events: DataFrame, seed: int, thresholds: dict[str, list | None]) -> DataFrame:
    """The cold-start sample of the users in ``events`` under stored :func:`cold_thresholds`."""
    picked = _picked_domains(events, seed).withColumn("_h", _user_hash(seed))
    cond = F.lit(False)
    for d, t in thresholds.items():
        if t is not None:
            h, u = t
            cond = cond | ((F.col("domain") == d) & ((F.col("_h") < F.lit(h)) | ((F.col("_h") == F.lit(h)) & (F.col("user_id") <= F.lit(u)))))
    return picked.where(cond).select("user_id", "domain")


def select_cold_users(events: DataFrame, per_domain: int, max_share: float, seed: int,
                      users: DataFrame | None = None) -> DataFrame:
    """The cold-start sample: ``(user_id, domain)`` rows, one target domain per sampled user.

    Candidates are users active in two or more domains. Each candidate is given one of their domains by a seeded
    hash; in each domain, the first ``per_domain`` of the users given it (in seeded-hash order) become new to it,
    but never more than ``max_share`` of them, so that users active in that domain and another stay in training
    to learn the transfer from. With ``users`` (a frame of ``user_id``), those users are the candidates and every
    one of them is sampled (e.g. a data set's own test cohort).
    """
    if users is not None:
        return _picked_domains(events, seed, users)
    return cold_users_by_threshold(events, seed, cold_thresholds(events, per_domain, max_share, seed))


def extend_item_index(index: DataFrame | None, items: DataFrame) -> DataFrame:
    """The item index of ``items`` keeping every id ``index`` gave: items not in it get the next ``item_idx`` (over
    all domains) and ``domain_item_idx`` (in their domain), in (domain, item_id) order; a domain not in it gets the
    next ``domain_idx``. Categories come from ``items``. Without ``index``: :func:`build_item_index`."""
    if index is None:
        return build_item_index(items)
    old = index.select("domain", "item_id", "item_idx", "domain_idx", "domain_item_idx")
    new = items.select("domain", "item_id").join(old, ["domain", "item_id"], "left_anti")
    doms = old.groupBy("domain").agg(F.max("domain_idx").alias("domain_idx"), F.max("domain_item_idx").alias("_last"))
    top = old.agg(F.max("item_idx").alias("m"), F.max("domain_idx").alias("d")).first()
    new_doms = new.select("domain").distinct().join(doms, "domain", "left_anti").withColumn(
        "_nd", F.lit(int(top["d"])) + F.dense_rank().over(Window.orderBy("domain")))
    new = new.join(doms, "domain", "left").join(new_doms, "domain", "left")
    added = new.select(
        "domain", "item_id",
        (F.lit(int(top["m"])) + F.row_number().over(Window.orderBy("domain", "item_id"))).cast("long").alias("item_idx"),
        F.coalesce("domain_idx", "_nd", F.lit(-1)).cast("long").alias("domain_idx"),  # never -1: not nullable for Spark
        (F.coalesce("_last", F.lit(-1)) + F.row_number().over(Window.partitionBy("domain").orderBy("item_id"))).cast("long").alias("domain_item_idx"),
    )
    ids = old.unionByName(added)
    return ids.join(items.select("domain", "item_id", "category"), ["domain", "item_id"], "inner")


def assign_splits(events: DataFrame, cold_users: DataFrame | None = None) -> DataFrame:
    """Add ``split`` (train / valid / test) to first occurrences and ``withheld`` for the cold-start sample.

    Input: output of :func:`first_occurrences` without repeats. Withheld events stay in the frame (with
    ``withheld = true``) so that a job can count them; :func:`build_sequences` ignores them.
    """
    newest = Window.partitionBy("user_id", "domain").orderBy(F.col("pos").desc())
    df = events.withColumn("_rank", F.row_number().over(newest))
    df = df.withColumn("split", F.when(F.col("_rank") == 1, TEST).when(F.col("_rank") == 2, VALID).otherwise(TRAIN))
    if cold_users is None:
        return df.withColumn("withheld", F.lit(False)).drop("_rank")
    cold = cold_users.select("user_id", "domain", F.lit(True).alias("_cold"))
    df = df.join(cold, ["user_id", "domain"], "left")
    withheld = F.coalesce(F.col("_cold"), F.lit(False)) & (F.col("split") != TEST)
    return df.withColumn("withheld", withheld).withColumn("cold_sampled", F.coalesce(F.col("_cold"), F.lit(False))).drop("_rank", "_cold")


def _last(arr: str, n: int) -> Column:
    """The newest ``n`` elements of an array sorted oldest first."""
    return F.expr(f"slice({arr}, greatest(size({arr}) - {n} + 1, 1), {n})")


def build_sequences(events: DataFrame, max_seq_len: int) -> DataFrame:
    """Rows of ``gold.user_sequences`` from split events (see the module docstring for the rules).

    Train rows keep every train event (the full training data: baselines fit on it, and a model cuts its
    own windows); valid and test rows keep the newest ``max_seq_len`` events before their target.
    """
    assert max_seq_len >= 1, f"max_seq_len must be >= 1, got {max_seq_len}"
    ev = F.struct("pos", "item_idx", "domain_idx", "ts", "split", "domain")
    per_user = (
        events.where(~F.col("withheld"))
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(ev)).alias("events"))  # sorted by pos: the struct's first field
    )
    train = per_user.select(
        "user_id",
        F.lit(TRAIN).alias("split"),
        F.lit(ALL_DOMAINS).alias("target_domain"),
        F.filter("events", lambda e: e["split"] == TRAIN).alias("hist"),
        F.lit(None).cast("long").alias("target_item_idx"),
        F.lit(None).cast("long").alias("target_ts"),
        F.lit(None).cast("long").alias("_target_domain_idx"),
    )
    targets = per_user.select("user_id", "events", F.explode(F.filter("events", lambda e: e["split"] != TRAIN)).alias("t"))
    visible = lambda e: (e["pos"] < F.col("t.pos")) & (  # noqa: E731  (a lambda for Spark's filter)
        (e["split"] == TRAIN) | ((F.col("t.split") == TEST) & (e["split"] == VALID))
    )
    held = targets.select(
        "user_id",
        F.col("t.split").alias("split"),
        F.col("t.domain").alias("target_domain"),
        F.filter("events", visible).alias("hist"),
        F.col("t.item_idx").alias("target_item_idx"),
        F.col("t.ts").alias("target_ts"),
        F.col("t.domain_idx").alias("_target_domain_idx"),
    ).withColumn("hist", _last("hist", max_seq_len))
    rows = train.unionByName(held)
    cold = F.when(F.col("split") == TRAIN, F.lit(False)).otherwise(
        ~F.exists("hist", lambda e: e["domain_idx"] == F.col("_target_domain_idx"))
    )
    return rows.select(
        "user_id",
        "split",
        "target_domain",
        F.transform("hist", lambda e: e["item_idx"]).alias("item_idx"),
        F.transform("hist", lambda e: e["domain_idx"]).alias("domain_idx"),
        F.transform("hist", lambda e: e["ts"]).alias("event_ts"),
        "target_item_idx",
        "target_ts",
        cold.alias("cold_start"),
        F.size("hist").cast("long").alias("history_len"),
    )


def add_train_counts(item_index: DataFrame, events: DataFrame) -> DataFrame:
    """``train_count``: each item's events in the train split (withheld events excluded)."""
    counts = events.where((F.col("split") == TRAIN) & ~F.col("withheld")).groupBy("item_idx").agg(F.count("*").alias("train_count"))
    return item_index.join(counts, "item_idx", "left").withColumn("train_count", F.coalesce("train_count", F.lit(0)).cast("long"))


def encoder_input(items: DataFrame) -> DataFrame:
    """``domain, item_id, enc_text, text_hash``: what the language model reads for an item (its text,
    category and attributes) and the cache key of that exact string (see ``crossrec.text.encoder.text_hash``)."""
    attrs = F.array_join(F.transform(F.array_sort(F.map_entries("attributes")), lambda e: F.concat_ws(": ", e["key"], e["value"])), "; ")
    text = F.concat_ws(". ", F.col("text"), F.col("category"), F.when(attrs != "", attrs))
    return items.select(
        "domain", "item_id", text.alias("enc_text"),
        F.sha2(F.concat(F.lit(f"{ENCODER_NAME}\n"), text), 256).alias("text_hash"),
    )
