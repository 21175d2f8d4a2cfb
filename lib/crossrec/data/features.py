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

from crossrec import columns as C
from crossrec.text.encoder import ENCODER_NAME

TRAIN, VALID, TEST = "train", "valid", "test"
ALL_DOMAINS = "*"


def build_item_index(items: DataFrame) -> DataFrame:
    """Dense ids for ``silver.items``: ``item_idx`` 1..N over all domains (0 = padding), ``domain_idx``
    over sorted domain names, ``domain_item_idx`` 0..n_d-1 inside a domain. Deterministic: ordered by
    (domain, item_id). ``train_count`` is added by :func:`add_train_counts`."""
    # a global ordering needs one partition; the item catalog is small next to the interactions
    by_all = Window.orderBy(C.DOMAIN, C.ITEM_ID)
    by_domain = Window.partitionBy(C.DOMAIN).orderBy(C.ITEM_ID)
    return items.select(C.DOMAIN, C.ITEM_ID, C.CATEGORY).select(
        C.DOMAIN,
        C.ITEM_ID,
        F.row_number().over(by_all).cast("long").alias(C.ITEM_IDX),
        (F.dense_rank().over(Window.orderBy(C.DOMAIN)) - 1).cast("long").alias(C.DOMAIN_IDX),
        (F.row_number().over(by_domain) - 1).cast("long").alias(C.DOMAIN_ITEM_IDX),
        C.CATEGORY,
    )


def first_occurrences(interactions: DataFrame, item_index: DataFrame) -> DataFrame:
    """Join ids onto interactions, give each user's events a position, flag repeats of an item.

    Output: ``user_id, domain, item_id, item_idx, domain_idx, ts, pos, is_repeat``.
    """
    df = interactions.join(item_index.select(C.DOMAIN, C.ITEM_ID, C.ITEM_IDX, C.DOMAIN_IDX), [C.DOMAIN, C.ITEM_ID], "inner")
    df = df.withColumn("ts", F.unix_seconds(C.EVENT_TS))
    order = Window.partitionBy(C.USER_ID).orderBy(C.EVENT_TS, C.DOMAIN, C.ITEM_ID, C.EVENT_TYPE)
    first = Window.partitionBy(C.USER_ID, C.DOMAIN, C.ITEM_ID).orderBy(C.EVENT_TS, C.EVENT_TYPE)
    return df.select(
        C.USER_ID, C.DOMAIN, C.ITEM_ID, C.ITEM_IDX, C.DOMAIN_IDX, "ts",
        F.row_number().over(order).cast("long").alias("pos"),
        (F.row_number().over(first) > 1).alias("is_repeat"),
    )


def _picked_domains(events: DataFrame, seed: int, users: DataFrame | None = None) -> DataFrame:
    """``(user_id, domain)``: each candidate (a user active in two or more domains; with ``users``, only those) with
    the one of their domains a seeded hash gives them. A pure function of the user's domains."""
    per_user = events.groupBy(C.USER_ID).agg(F.collect_set(C.DOMAIN).alias("domains")).where(F.size("domains") >= 2)
    if users is not None:
        per_user = per_user.join(users.select(C.USER_ID).distinct(), C.USER_ID, "inner")
    pick = F.explode("domains").alias(C.DOMAIN)
    cand = per_user.select(C.USER_ID, pick).withColumn("_h", F.xxhash64(C.USER_ID, C.DOMAIN, F.lit(seed)))
    w = Window.partitionBy(C.USER_ID).orderBy("_h", C.DOMAIN)
    return cand.withColumn("_r", F.row_number().over(w)).where("_r = 1").select(C.USER_ID, C.DOMAIN)


def _user_hash(seed: int) -> Column:
    return F.xxhash64(C.USER_ID, F.lit(seed))


def cold_thresholds(events: DataFrame, per_domain: int, max_share: float, seed: int) -> dict[str, list | None]:
    """Per domain, the (hash, user id) of the last user the seeded sample takes (see :func:`select_cold_users`), or
    None when it takes nobody: a new user joins the sample exactly when their (hash, id) is at most this, so the sample
    is stable night after night and new users enter it at the same rate."""
    assert per_domain >= 0 and 0.0 <= max_share <= 1.0, f"per_domain >= 0 and max_share in [0, 1], got {per_domain}, {max_share}"
    picked = _picked_domains(events, seed).withColumn("_h", _user_hash(seed))
    by_hash = Window.partitionBy(C.DOMAIN).orderBy("_h", C.USER_ID)
    ranked = picked.withColumn("_r", F.row_number().over(by_hash)).withColumn("_n", F.count("*").over(Window.partitionBy(C.DOMAIN)))
    cap = F.least(F.lit(int(per_domain)), F.floor(F.col("_n") * F.lit(float(max_share))))
    last = ranked.where(F.col("_r") == cap).select(C.DOMAIN, "_h", C.USER_ID).collect()
    domains = [r[0] for r in events.select(C.DOMAIN).distinct().collect()]
    out: dict[str, list | None] = {d: None for d in domains}
    out.update({r[C.DOMAIN]: [int(r["_h"]), r[C.USER_ID]] for r in last})
    return out


def cold_users_by_threshold(events: DataFrame, seed: int, thresholds: dict[str, list | None]) -> DataFrame:
    """The cold-start sample of the users in ``events`` under stored :func:`cold_thresholds`."""
    picked = _picked_domains(events, seed).withColumn("_h", _user_hash(seed))
    cond = F.lit(False)
    for d, t in thresholds.items():
        if t is not None:
            h, u = t
            cond = cond | ((F.col(C.DOMAIN) == d) & ((F.col("_h") < F.lit(h)) | ((F.col("_h") == F.lit(h)) & (F.col(C.USER_ID) <= F.lit(u)))))
    return picked.where(cond).select(C.USER_ID, C.DOMAIN)


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
    old = index.select(C.DOMAIN, C.ITEM_ID, C.ITEM_IDX, C.DOMAIN_IDX, C.DOMAIN_ITEM_IDX)
    new = items.select(C.DOMAIN, C.ITEM_ID).join(old, [C.DOMAIN, C.ITEM_ID], "left_anti")
    doms = old.groupBy(C.DOMAIN).agg(F.max(C.DOMAIN_IDX).alias(C.DOMAIN_IDX), F.max(C.DOMAIN_ITEM_IDX).alias("_last"))
    top = old.agg(F.max(C.ITEM_IDX).alias("m"), F.max(C.DOMAIN_IDX).alias("d")).first()
    new_doms = new.select(C.DOMAIN).distinct().join(doms, C.DOMAIN, "left_anti").withColumn(
        "_nd", F.lit(int(top["d"])) + F.dense_rank().over(Window.orderBy(C.DOMAIN)))
    new = new.join(doms, C.DOMAIN, "left").join(new_doms, C.DOMAIN, "left")
    added = new.select(
        C.DOMAIN, C.ITEM_ID,
        (F.lit(int(top["m"])) + F.row_number().over(Window.orderBy(C.DOMAIN, C.ITEM_ID))).cast("long").alias(C.ITEM_IDX),
        F.coalesce(C.DOMAIN_IDX, "_nd", F.lit(-1)).cast("long").alias(C.DOMAIN_IDX),  # never -1: not nullable for Spark
        (F.coalesce("_last", F.lit(-1)) + F.row_number().over(Window.partitionBy(C.DOMAIN).orderBy(C.ITEM_ID))).cast("long").alias(C.DOMAIN_ITEM_IDX),
    )
    ids = old.unionByName(added)
    return ids.join(items.select(C.DOMAIN, C.ITEM_ID, C.CATEGORY), [C.DOMAIN, C.ITEM_ID], "inner")


def assign_splits(events: DataFrame, cold_users: DataFrame | None = None) -> DataFrame:
    """Add ``split`` (train / valid / test) to first occurrences and ``withheld`` for the cold-start sample.

    Input: output of :func:`first_occurrences` without repeats. Withheld events stay in the frame (with
    ``withheld = true``) so that a job can count them; :func:`build_sequences` ignores them.
    """
    newest = Window.partitionBy(C.USER_ID, C.DOMAIN).orderBy(F.col("pos").desc())
    df = events.withColumn("_rank", F.row_number().over(newest))
    df = df.withColumn(C.SPLIT, F.when(F.col("_rank") == 1, TEST).when(F.col("_rank") == 2, VALID).otherwise(TRAIN))
    if cold_users is None:
        return df.withColumn("withheld", F.lit(False)).drop("_rank")
    cold = cold_users.select(C.USER_ID, C.DOMAIN, F.lit(True).alias("_cold"))
    df = df.join(cold, [C.USER_ID, C.DOMAIN], "left")
    withheld = F.coalesce(F.col("_cold"), F.lit(False)) & (F.col(C.SPLIT) != TEST)
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
    ev = F.struct("pos", C.ITEM_IDX, C.DOMAIN_IDX, "ts", C.SPLIT, C.DOMAIN)
    per_user = (
        events.where(~F.col("withheld"))
        .groupBy(C.USER_ID)
        .agg(F.array_sort(F.collect_list(ev)).alias("events"))  # sorted by pos: the struct's first field
    )
    train = per_user.select(
        C.USER_ID,
        F.lit(TRAIN).alias(C.SPLIT),
        F.lit(ALL_DOMAINS).alias(C.TARGET_DOMAIN),
        F.filter("events", lambda e: e[C.SPLIT] == TRAIN).alias("hist"),
        F.lit(None).cast("long").alias(C.TARGET_ITEM_IDX),
        F.lit(None).cast("long").alias(C.TARGET_TS),
        F.lit(None).cast("long").alias("_target_domain_idx"),
    )
    targets = per_user.select(C.USER_ID, "events", F.explode(F.filter("events", lambda e: e[C.SPLIT] != TRAIN)).alias("t"))
    visible = lambda e: (e["pos"] < F.col("t.pos")) & (  # noqa: E731  (a lambda for Spark's filter)
        (e[C.SPLIT] == TRAIN) | ((F.col("t.split") == TEST) & (e[C.SPLIT] == VALID))
    )
    held = targets.select(
        C.USER_ID,
        F.col("t.split").alias(C.SPLIT),
        F.col("t.domain").alias(C.TARGET_DOMAIN),
        F.filter("events", visible).alias("hist"),
        F.col("t.item_idx").alias(C.TARGET_ITEM_IDX),
        F.col("t.ts").alias(C.TARGET_TS),
        F.col("t.domain_idx").alias("_target_domain_idx"),
    ).withColumn("hist", _last("hist", max_seq_len))
    rows = train.unionByName(held)
    cold = F.when(F.col(C.SPLIT) == TRAIN, F.lit(False)).otherwise(
        ~F.exists("hist", lambda e: e[C.DOMAIN_IDX] == F.col("_target_domain_idx"))
    )
    return rows.select(
        C.USER_ID,
        C.SPLIT,
        C.TARGET_DOMAIN,
        F.transform("hist", lambda e: e[C.ITEM_IDX]).alias(C.ITEM_IDX),
        F.transform("hist", lambda e: e[C.DOMAIN_IDX]).alias(C.DOMAIN_IDX),
        F.transform("hist", lambda e: e["ts"]).alias(C.EVENT_TS),
        C.TARGET_ITEM_IDX,
        C.TARGET_TS,
        cold.alias(C.COLD_START),
        F.size("hist").cast("long").alias(C.HISTORY_LEN),
    )


def add_train_counts(item_index: DataFrame, events: DataFrame) -> DataFrame:
    """``train_count``: each item's events in the train split (withheld events excluded)."""
    counts = events.where((F.col(C.SPLIT) == TRAIN) & ~F.col("withheld")).groupBy(C.ITEM_IDX).agg(F.count("*").alias(C.TRAIN_COUNT))
    return item_index.join(counts, C.ITEM_IDX, "left").withColumn(C.TRAIN_COUNT, F.coalesce(C.TRAIN_COUNT, F.lit(0)).cast("long"))


def encoder_input(items: DataFrame) -> DataFrame:
    """``domain, item_id, enc_text, text_hash``: what the language model reads for an item (its text,
    category and attributes) and the cache key of that exact string (see ``crossrec.text.encoder.text_hash``)."""
    attrs = F.array_join(F.transform(F.array_sort(F.map_entries(C.ATTRIBUTES)), lambda e: F.concat_ws(": ", e["key"], e["value"])), "; ")
    text = F.concat_ws(". ", F.col(C.TEXT), F.col(C.CATEGORY), F.when(attrs != "", attrs))
    return items.select(
        C.DOMAIN, C.ITEM_ID, text.alias("enc_text"),
        F.sha2(F.concat(F.lit(f"{ENCODER_NAME}\n"), text), 256).alias(C.TEXT_HASH),
    )
