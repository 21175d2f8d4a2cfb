"""Clean: bronze -> silver transforms. Every function here is ``DataFrame -> DataFrame``.

Each bronze row ends in exactly one of three places: the silver table, ``silver.quarantine`` (with a
reason and a detail), or the duplicate count. The row's fate is a column (``_status``: ok / quarantined /
duplicate) so that a job can write both outputs and count them from one persisted frame.

Quarantine reasons (first that applies):
    malformed_line, missing_user_id, missing_item_id, missing_timestamp, invalid_encoding, value_too_long,
    unparseable_timestamp, timestamp_out_of_range, unparseable_weight, weight_out_of_range,
    item_not_in_catalog, unknown_domain, missing_global_user_id, identity_conflict
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from crossrec.data.pseudonym import pseudonym_column

DEFAULT_USER_COL = "user_id"
DEFAULT_ITEM_COL = "item_id"
DEFAULT_DOMAIN_COL = "domain"
DEFAULT_TS_COL = "event_ts"

STATUS = "_status"
REASON = "_reason"
DETAIL = "_detail"
OK, QUARANTINED, DUPLICATE = "ok", "quarantined", "duplicate"

QUARANTINE_REASONS = (
    "malformed_line",
    "missing_user_id",
    "missing_item_id",
    "missing_timestamp",
    "invalid_encoding",
    "value_too_long",
    "unparseable_timestamp",
    "timestamp_out_of_range",
    "unparseable_weight",
    "weight_out_of_range",
    "item_not_in_catalog",
    "unknown_domain",
    "missing_global_user_id",
    "identity_conflict",
)
MAX_ID_CHARS = 512
REPLACEMENT_CHAR = "\ufffd"  # what a decoder leaves for bytes that are not valid in the file's encoding
_EPOCH_S_LIMIT = 1e11  # year ~5138: beyond this a number is not an epoch in seconds
_BRONZE_META = ("corrupt_record", "source_file", "source_checksum", "run_id", "ingested_at")


# --------------------------------------------------------------------------- small column helpers
def blank_to_null(c: Column) -> Column:
    """Trimmed string, null when empty."""
    t = F.trim(c)
    return F.when(t == "", None).otherwise(t)


def normalize_text(c: Column) -> Column:
    """Control characters and runs of whitespace to one space, trimmed."""
    # (?U): Unicode classes, so NEL, NBSP, line/paragraph separators and all Cc controls count too
    return F.trim(F.regexp_replace(c, r"(?U)[\p{Cntrl}\s\p{Z}]+", " "))


def has_bad_bytes(c: Column) -> Column:
    return F.coalesce(F.instr(c, REPLACEMENT_CHAR) > 0, F.lit(False))


def parse_timestamp(col_name: str, fmt: str) -> Column:
    """Parse the raw timestamp strings of column ``col_name`` in a documented format; null if unparseable.

    Numbers beyond any plausible epoch give a far-future sentinel so they are reported as out of range,
    not as unparseable.
    """
    if fmt in ("epoch_s", "epoch_ms"):
        num = F.expr(f"try_cast(`{col_name}` as double)")
        secs = num / 1000.0 if fmt == "epoch_ms" else num
        far = F.lit(dt.datetime(9999, 1, 1))
        return F.when(num.isNull() | F.isnan(num), None).when(F.abs(secs) >= _EPOCH_S_LIMIT, far).otherwise(
            F.timestamp_micros((secs * 1_000_000).cast("long"))
        )
    if fmt == "iso8601":
        return F.expr(f"try_to_timestamp(`{col_name}`)")
    pattern = fmt.replace("\\", "\\\\").replace("'", "\\'")
    return F.expr(f"try_to_timestamp(`{col_name}`, '{pattern}')")


def _first_reason(checks: list[tuple[Column, str, Column]]) -> tuple[Column, Column]:
    reason, detail = F.lit(None).cast("string"), F.lit(None).cast("string")
    for cond, name, det in reversed(checks):
        reason = F.when(cond, F.lit(name)).otherwise(reason)
        detail = F.when(cond, det).otherwise(detail)
    return reason, detail


def _show(name: str, c: Column) -> Column:
    return F.concat(F.lit(f"{name}="), F.coalesce(F.substring(c, 1, 120), F.lit("<null>")))


def bronze_record(df: DataFrame, columns: list[str]) -> Column:
    """The bronze row's ``columns`` (those ``df`` has) as one struct."""
    return F.struct(*[F.col(c) for c in columns if c in df.columns])


def bronze_record_json(df: DataFrame, columns: list[str]) -> Column:
    """The bronze row as JSON (what the quarantine keeps)."""
    return F.to_json(bronze_record(df, columns))


# --------------------------------------------------------------------------- interactions
def classify_interactions(
    bronze: DataFrame,
    timestamp_formats: Mapping[str, str],
    default_event_types: Mapping[str, str],
    min_ts: dt.datetime,
    max_ts: dt.datetime,
    catalog: DataFrame | None = None,
) -> DataFrame:
    """Type bronze interactions and give every row a status and (if quarantined) a reason.

    ``catalog``: the known ``(domain, item_id)`` pairs, each once (:func:`catalog_keys`); when given, a row that passes
    every other check but names an item not in it is quarantined as ``item_not_in_catalog``.

    Output columns: ``domain, local_user_id, item_id, event_type, event_ts, weight, run_id, source`` plus
    ``_status, _reason, _detail, _record, _ingested_at``. ``_record`` (the bronze row as JSON, what the
    quarantine keeps) is built for quarantined rows only and is null for the others: serialising a million
    good rows cost ~4 s of a 1M-row clean. ``max_ts`` is exclusive.
    """
    raw_record = bronze_record(bronze, ["domain", "user_id", "item_id", "event_type", "event_ts", "weight", *_BRONZE_META])
    ts = F.lit(None).cast("timestamp")
    for d, fmt in timestamp_formats.items():
        ts = F.when(F.col("domain") == d, parse_timestamp("_ts_raw", fmt)).otherwise(ts)
    default_type = F.lit("interaction")
    for d, et in default_event_types.items():
        default_type = F.when(F.col("domain") == d, F.lit(et)).otherwise(default_type)
    df = bronze.select(
        F.col("domain"),
        blank_to_null(F.col("user_id")).alias("local_user_id"),
        blank_to_null(F.col("item_id")).alias("item_id"),
        F.lower(F.coalesce(blank_to_null(F.col("event_type")), default_type)).alias("event_type"),
        blank_to_null(F.col("event_ts")).alias("_ts_raw"),
        blank_to_null(F.col("weight")).alias("_w_raw"),
        F.col("corrupt_record"),
        F.col("run_id"),
        F.col("source_file").alias("source"),
        F.col("ingested_at").alias("_ingested_at"),
        raw_record.alias("_raw"),
    )
    df = df.withColumn("event_ts", ts).withColumn(
        "weight", F.when(F.col("_w_raw").isNull(), F.lit(1.0)).otherwise(F.expr("try_cast(_w_raw as double)"))
    )
    not_in_catalog = F.lit(False)
    if catalog is not None:
        df = df.join(catalog.withColumn("_known", F.lit(True)), on=["domain", "item_id"], how="left")
        not_in_catalog = F.col("_known").isNull()
    too_long = (F.length("local_user_id") > MAX_ID_CHARS) | (F.length("item_id") > MAX_ID_CHARS) | (F.length("event_type") > MAX_ID_CHARS)
    reason, detail = _first_reason(
        [
            (F.col("corrupt_record").isNotNull(), "malformed_line", _show("line", F.col("corrupt_record"))),
            (F.col("local_user_id").isNull(), "missing_user_id", F.lit("user_id is empty")),
            (F.col("item_id").isNull(), "missing_item_id", F.lit("item_id is empty")),
            (F.col("_ts_raw").isNull(), "missing_timestamp", F.lit("event_ts is empty")),
            (has_bad_bytes(F.col("local_user_id")) | has_bad_bytes(F.col("item_id")) | has_bad_bytes(F.col("event_type")),
             "invalid_encoding", F.lit("bytes not valid in the file's encoding in user_id/item_id/event_type")),
            (F.coalesce(too_long, F.lit(False)), "value_too_long", F.lit(f"an id or event_type longer than {MAX_ID_CHARS} chars")),
            (F.col("event_ts").isNull(), "unparseable_timestamp", _show("event_ts", F.col("_ts_raw"))),
            ((F.col("event_ts") < F.lit(min_ts)) | (F.col("event_ts") >= F.lit(max_ts)), "timestamp_out_of_range",
             F.concat(_show("event_ts", F.col("_ts_raw")), F.lit(f" outside [{min_ts.isoformat()}, {max_ts.isoformat()})"))),
            (F.col("weight").isNull(), "unparseable_weight", _show("weight", F.col("_w_raw"))),
            (F.isnan("weight") | (F.col("weight") < 0) | (F.abs("weight") == float("inf")), "weight_out_of_range", _show("weight", F.col("_w_raw"))),
            (not_in_catalog, "item_not_in_catalog", F.concat(F.lit("item_id="), F.col("item_id"), F.lit(" not in the domain's catalog"))),
        ]
    )
    return (
        df.withColumn(REASON, reason)
        .withColumn(DETAIL, detail)
        .withColumn(STATUS, F.when(F.col(REASON).isNull(), F.lit(OK)).otherwise(F.lit(QUARANTINED)))
        .withColumn("_record", F.when(F.col(REASON).isNotNull(), F.to_json("_raw")))
        .drop("_ts_raw", "_w_raw", "corrupt_record", "_raw", "_known")
    )


def classify_identity_map(bronze: DataFrame, domains: list[str]) -> DataFrame:
    """Type the identity map; quarantine bad rows; one global id per (domain, local user).

    Exact repeats are duplicates; a (domain, user) mapped to several global ids keeps the smallest and
    quarantines the others as ``identity_conflict``.
    Output: ``domain, local_user_id, global_user_id, _status, _reason, _detail, _record, source, run_id``.
    """
    record = bronze_record_json(bronze, ["domain", "user_id", "global_user_id", *_BRONZE_META])
    df = bronze.select(
        F.lower(blank_to_null(F.col("domain"))).alias("domain"),
        blank_to_null(F.col("user_id")).alias("local_user_id"),
        blank_to_null(F.col("global_user_id")).alias("global_user_id"),
        F.col("corrupt_record"),
        F.col("source_file").alias("source"),
        F.col("run_id"),
        F.col("ingested_at").alias("_ingested_at"),
        record.alias("_record"),
    )
    reason, detail = _first_reason(
        [
            (F.col("corrupt_record").isNotNull(), "malformed_line", _show("line", F.col("corrupt_record"))),
            (F.col("local_user_id").isNull(), "missing_user_id", F.lit("user_id is empty")),
            (F.col("global_user_id").isNull(), "missing_global_user_id", F.lit("global_user_id is empty")),
            (F.col("domain").isNull() | ~F.col("domain").isin(list(domains)), "unknown_domain",
             F.concat(_show("domain", F.col("domain")), F.lit(f" not in {sorted(domains)}"))),
        ]
    )
    df = df.withColumn(REASON, reason).withColumn(DETAIL, detail).drop("corrupt_record")
    valid = F.col(REASON).isNull()
    key = Window.partitionBy("domain", "local_user_id", valid).orderBy("global_user_id", "_ingested_at", "source")
    first_global = F.first("global_user_id").over(key)
    rn = F.row_number().over(key)
    df = df.withColumn("_rn", rn).withColumn("_first", first_global)
    conflict = valid & (F.col("global_user_id") != F.col("_first"))
    dup = valid & (F.col("global_user_id") == F.col("_first")) & (F.col("_rn") > 1)
    df = df.withColumn(REASON, F.when(conflict, F.lit("identity_conflict")).otherwise(F.col(REASON)))
    df = df.withColumn(DETAIL, F.when(conflict, F.concat(F.lit("also mapped to "), F.col("_first"))).otherwise(F.col(DETAIL)))
    status = F.when(F.col(REASON).isNotNull(), F.lit(QUARANTINED)).when(dup, F.lit(DUPLICATE)).otherwise(F.lit(OK))
    return df.withColumn(STATUS, status).drop("_rn", "_first")


def apply_identity(interactions: DataFrame, identity: DataFrame | None) -> DataFrame:
    """Add ``global_user_id``: the identity map's id for (domain, local user), else the local id itself."""
    if identity is None:
        return interactions.withColumn("global_user_id", F.col("local_user_id"))
    ids = identity.where(F.col(STATUS) == OK).select("domain", "local_user_id", F.col("global_user_id").alias("_gid"))
    out = interactions.join(ids, on=["domain", "local_user_id"], how="left")
    return out.withColumn("global_user_id", F.coalesce("_gid", "local_user_id")).drop("_gid")


def pseudonymize(df: DataFrame, key: bytes, source_col: str = "global_user_id", col_user: str = DEFAULT_USER_COL) -> DataFrame:
    """Replace ``source_col`` by its keyed hash in ``col_user`` (the raw id does not survive; the key stays out of
    the plan: :mod:`crossrec.data.pseudonym`)."""
    return df.withColumn(col_user, pseudonym_column(key, F.col(source_col))).drop(source_col)


def catalog_keys(items: DataFrame, col_item: str = DEFAULT_ITEM_COL) -> DataFrame:
    """The ``(domain, item_id)`` pairs of the ok catalog rows: what :func:`classify_interactions` checks
    interactions against (policy ``quarantine``)."""
    return items.where(F.col(STATUS) == OK).select("domain", col_item).distinct()


def placeholder_items(interactions: DataFrame, items: DataFrame, col_item: str = DEFAULT_ITEM_COL) -> DataFrame:
    """Catalog rows for items that ok interactions reference but the catalog lacks (policy ``placeholder``).

    Same columns as :func:`classify_items` output; title = item id, ``attributes['placeholder'] = 'true'``.
    """
    known = items.where(F.col(STATUS) == OK).select("domain", col_item)
    refs = interactions.where(F.col(STATUS) == OK).select("domain", col_item).distinct()
    missing = refs.join(known, on=["domain", col_item], how="left_anti")
    return missing.select(
        F.col(col_item),
        F.col("domain"),
        F.col(col_item).alias("title"),
        F.col(col_item).alias("text"),
        F.lit(None).cast("string").alias("category"),
        F.create_map(F.lit("placeholder"), F.lit("true")).alias("attributes"),
        F.lit("placeholder").alias("run_id"),
        F.lit("placeholder").alias("source"),
        F.lit(OK).alias(STATUS),
        F.lit(None).cast("string").alias(REASON),
        F.lit(None).cast("string").alias(DETAIL),
        F.lit(None).cast("string").alias("_record"),
        F.lit(False).alias("_truncated"),
        F.lit(False).alias("_bad_text_bytes"),
    )


def mark_duplicates(df: DataFrame, key: list[str], order: list[Column]) -> DataFrame:
    """Among ok rows, keep the first of each ``key`` by ``order``; the others become duplicates.

    Only ok rows take part, so a quarantined copy never hides a good one.
    """
    ok = F.col(STATUS) == OK
    w = Window.partitionBy(*[F.col(k) for k in key], ok).orderBy(*order)
    rn = F.row_number().over(w)
    return df.withColumn(STATUS, F.when(ok & (rn > 1), F.lit(DUPLICATE)).otherwise(F.col(STATUS)))


def dedupe_interactions(df: DataFrame) -> DataFrame:
    """Exact repeats of (user, domain, item, event type, time): first arrival wins."""
    return mark_duplicates(
        df,
        [DEFAULT_USER_COL, DEFAULT_DOMAIN_COL, DEFAULT_ITEM_COL, "event_type", DEFAULT_TS_COL],
        [F.col("_ingested_at"), F.col("source"), F.col("weight").desc()],
    )


# --------------------------------------------------------------------------- items
def classify_items(bronze: DataFrame, max_text_chars: int) -> DataFrame:
    """Type and normalise catalog rows: title, text (text columns joined with '. '), category, attributes.

    Text longer than ``max_text_chars`` is truncated (flag ``_truncated``); text with bytes invalid in the
    file's encoding is kept with U+FFFD (flag ``_bad_text_bytes``). Each (domain, item) keeps its newest
    row (a later catalog file supersedes an earlier one); older rows are duplicates.
    """
    record = bronze_record_json(bronze, ["domain", "item_id", "title", "category", "text_fields", "attributes", *_BRONZE_META])
    parts = F.transform(F.array_sort(F.map_entries(F.coalesce(F.col("text_fields"), F.create_map().cast("map<string,string>")))), lambda e: normalize_text(e["value"]))
    joined = F.concat_ws(". ", F.filter(parts, lambda s: s.isNotNull() & (s != "")))
    title = F.coalesce(normalize_text(F.col("title")), F.lit(""))
    attrs = F.map_filter(
        F.transform_values(F.coalesce(F.col("attributes"), F.create_map().cast("map<string,string>")), lambda k, v: normalize_text(v)),
        lambda k, v: v.isNotNull() & (v != ""),
    )
    df = bronze.select(
        blank_to_null(F.col("item_id")).alias("item_id"),
        F.col("domain"),
        title.alias("title"),
        joined.alias("_text_full"),
        blank_to_null(normalize_text(F.col("category"))).alias("category"),
        attrs.alias("attributes"),
        F.col("run_id"),
        F.col("source_file").alias("source"),
        F.col("corrupt_record"),
        F.col("ingested_at").alias("_ingested_at"),
        record.alias("_record"),
    )
    text = F.when(F.col("_text_full") == "", F.col("title")).otherwise(F.col("_text_full"))
    df = (
        df.withColumn("_truncated", F.length(text) > max_text_chars)
        .withColumn("text", F.substring(text, 1, max_text_chars))
        .withColumn("title", F.substring("title", 1, max_text_chars))
        .withColumn("_bad_text_bytes", has_bad_bytes(F.col("_text_full")) | has_bad_bytes(F.col("title")))
        .drop("_text_full")
    )
    reason, detail = _first_reason(
        [
            (F.col("corrupt_record").isNotNull(), "malformed_line", _show("line", F.col("corrupt_record"))),
            (F.col("item_id").isNull(), "missing_item_id", F.lit("item_id is empty")),
            (has_bad_bytes(F.col("item_id")), "invalid_encoding", F.lit("bytes not valid in the file's encoding in item_id")),
            (F.length("item_id") > MAX_ID_CHARS, "value_too_long", F.lit(f"item_id longer than {MAX_ID_CHARS} chars")),
        ]
    )
    df = (
        df.withColumn(REASON, reason)
        .withColumn(DETAIL, detail)
        .withColumn(STATUS, F.when(F.col(REASON).isNull(), F.lit(OK)).otherwise(F.lit(QUARANTINED)))
        .drop("corrupt_record")
    )
    df = mark_duplicates(df, [DEFAULT_DOMAIN_COL, DEFAULT_ITEM_COL], [F.col("_ingested_at").desc(), F.col("source").desc()])
    return df.drop("_ingested_at")


# --------------------------------------------------------------------------- outputs
def quarantine_rows(classified: DataFrame, source_table: str) -> DataFrame:
    """The quarantined rows of a classified frame, shaped as ``silver.quarantine``."""
    return classified.where(F.col(STATUS) == QUARANTINED).select(
        F.lit(source_table).alias("source_table"),
        F.col("domain"),
        F.col(REASON).alias("reason"),
        F.col(DETAIL).alias("detail"),
        F.col("_record").alias("record"),
        F.col("source").alias("source_file"),
        F.col("run_id"),
    )


def status_counts(classified: DataFrame, by: str = DEFAULT_DOMAIN_COL) -> DataFrame:
    """Counts per (domain, status, reason): the accounting of one table (an action follows)."""
    return classified.groupBy(by, STATUS, REASON).count()


def contract_params(cfg, domains: list[str]) -> dict:
    """Run-time parameters of the silver contracts (allowed domains, event-time window, quarantine reasons)."""
    import datetime as dt

    return {
        "domains": domains,
        "min_event_ts": dt.datetime.fromisoformat(cfg.min_event_ts),
        "max_event_ts": dt.datetime.fromisoformat(cfg.run_date) + dt.timedelta(days=1) - dt.timedelta(microseconds=1),
        "quarantine_reasons": list(QUARANTINE_REASONS),
    }
