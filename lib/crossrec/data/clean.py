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
from pyspark.sql import types as T

from crossrec import columns as C
from crossrec.data.pseudonym import pseudonym_column

DEFAULT_USER_COL = C.USER_ID
DEFAULT_ITEM_COL = C.ITEM_ID
DEFAULT_DOMAIN_COL = C.DOMAIN
DEFAULT_TS_COL = C.EVENT_TS

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
_BRONZE_META = (C.CORRUPT_RECORD, C.SOURCE_FILE, C.SOURCE_CHECKSUM, C.RUN_ID, C.INGESTED_AT)
_NO_RAW_IDS = _BRONZE_META[1:]  # a malformed line holds the raw user id: it stays in bronze


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


def _malformed(c: Column) -> Column:
    """The detail of a malformed line of a file with user ids: its length, never its content (in bronze only)."""
    return F.concat(F.lit("a line of "), F.length(c).cast("string"), F.lit(" characters that does not parse as the "
                                                                          "file's columns (the line is in bronze)"))


def _dropped_domain() -> Column:
    return F.concat(F.lit("domain "), F.col(C.DOMAIN), F.lit(" is in bronze but no longer in dataset.json"))


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

    ``timestamp_formats`` names every domain of ``dataset.json``: bronze rows of another domain (one dropped from
    it) are quarantined as ``unknown_domain``.
    ``catalog``: the known ``(domain, item_id)`` pairs, each once (:func:`catalog_keys`); when given, a row that passes
    every other check but names an item not in it is quarantined as ``item_not_in_catalog``.

    Output columns: ``domain, local_user_id, item_id, event_type, event_ts, weight, run_id, source`` plus
    ``_status, _reason, _detail, _record, _ingested_at``. ``_record`` (the bronze row but its user id and raw line,
    what the quarantine keeps with the pseudonym: :func:`quarantine_rows`) is built for quarantined rows only, null
    for the others (serialising every good row is a measurable share of a clean). ``max_ts`` is exclusive.
    """
    raw_record = bronze_record(bronze, [C.DOMAIN, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.WEIGHT, *_NO_RAW_IDS])
    ts = F.lit(None).cast("timestamp")
    for d, fmt in timestamp_formats.items():
        ts = F.when(F.col(C.DOMAIN) == d, parse_timestamp("_ts_raw", fmt)).otherwise(ts)
    default_type = F.lit("interaction")
    for d, et in default_event_types.items():
        default_type = F.when(F.col(C.DOMAIN) == d, F.lit(et)).otherwise(default_type)
    df = bronze.select(
        F.col(C.DOMAIN),
        blank_to_null(F.col(C.USER_ID)).alias(C.LOCAL_USER_ID),
        blank_to_null(F.col(C.ITEM_ID)).alias(C.ITEM_ID),
        F.lower(F.coalesce(blank_to_null(F.col(C.EVENT_TYPE)), default_type)).alias(C.EVENT_TYPE),
        blank_to_null(F.col(C.EVENT_TS)).alias("_ts_raw"),
        blank_to_null(F.col(C.WEIGHT)).alias("_w_raw"),
        F.col(C.CORRUPT_RECORD),
        F.col(C.RUN_ID),
        F.col(C.SOURCE_FILE).alias(C.SOURCE),
        F.col(C.INGESTED_AT).alias("_ingested_at"),
        raw_record.alias("_raw"),
    )
    df = df.withColumn(C.EVENT_TS, ts).withColumn(
        C.WEIGHT, F.when(F.col("_w_raw").isNull(), F.lit(1.0)).otherwise(F.expr("try_cast(_w_raw as double)"))
    )
    not_in_catalog = F.lit(False)
    if catalog is not None:
        df = df.join(catalog.withColumn("_known", F.lit(True)), on=[C.DOMAIN, C.ITEM_ID], how="left")
        not_in_catalog = F.col("_known").isNull()
    too_long = (F.length(C.LOCAL_USER_ID) > MAX_ID_CHARS) | (F.length(C.ITEM_ID) > MAX_ID_CHARS) | (F.length(C.EVENT_TYPE) > MAX_ID_CHARS)
    reason, detail = _first_reason(
        [
            (~F.col(C.DOMAIN).isin(list(timestamp_formats)), "unknown_domain", _dropped_domain()),
            (F.col(C.CORRUPT_RECORD).isNotNull(), "malformed_line", _malformed(F.col(C.CORRUPT_RECORD))),
            (F.col(C.LOCAL_USER_ID).isNull(), "missing_user_id", F.lit("user_id is empty")),
            (F.col(C.ITEM_ID).isNull(), "missing_item_id", F.lit("item_id is empty")),
            (F.col("_ts_raw").isNull(), "missing_timestamp", F.lit("event_ts is empty")),
            (has_bad_bytes(F.col(C.LOCAL_USER_ID)) | has_bad_bytes(F.col(C.ITEM_ID)) | has_bad_bytes(F.col(C.EVENT_TYPE)),
             "invalid_encoding", F.lit("bytes not valid in the file's encoding in user_id/item_id/event_type")),
            (F.coalesce(too_long, F.lit(False)), "value_too_long", F.lit(f"an id or event_type longer than {MAX_ID_CHARS} chars")),
            (F.col(C.EVENT_TS).isNull(), "unparseable_timestamp", _show(C.EVENT_TS, F.col("_ts_raw"))),
            ((F.col(C.EVENT_TS) < F.lit(min_ts)) | (F.col(C.EVENT_TS) >= F.lit(max_ts)), "timestamp_out_of_range",
             F.concat(_show(C.EVENT_TS, F.col("_ts_raw")), F.lit(f" outside [{min_ts.isoformat()}, {max_ts.isoformat()})"))),
            (F.col(C.WEIGHT).isNull(), "unparseable_weight", _show(C.WEIGHT, F.col("_w_raw"))),
            (F.isnan(C.WEIGHT) | (F.col(C.WEIGHT) < 0) | (F.abs(C.WEIGHT) == float("inf")), "weight_out_of_range", _show(C.WEIGHT, F.col("_w_raw"))),
            (not_in_catalog, "item_not_in_catalog", F.concat(F.lit("item_id="), F.col(C.ITEM_ID), F.lit(" not in the domain's catalog"))),
        ]
    )
    return (
        df.withColumn(REASON, reason)
        .withColumn(DETAIL, detail)
        .withColumn(STATUS, F.when(F.col(REASON).isNull(), F.lit(OK)).otherwise(F.lit(QUARANTINED)))
        .withColumn("_record", F.when(F.col(REASON).isNotNull(), F.col("_raw")))
        .drop("_ts_raw", "_w_raw", C.CORRUPT_RECORD, "_raw", "_known")
    )


def classify_identity_map(bronze: DataFrame, domains: list[str], key: bytes, restrict_to: DataFrame | None = None) -> DataFrame:
    """Type the identity map, pseudonymise both ids, quarantine bad rows; one global id per (domain, local user).

    Both ids are NFC-normalised and hashed (:func:`~crossrec.data.pseudonym.pseudonym_column`): the map is joined
    and deduplicated on pseudonyms, so no raw id goes past this function and two spellings of one id in Unicode
    are one user. The latest mapping wins: of the mappings of one (domain, local user) the one ingested last is
    kept (a correction file supersedes the earlier one); within one ingest, the smallest global pseudonym.
    Repeats of the kept mapping are duplicates, the others quarantined as ``identity_conflict``.
    Output: ``domain, local_user_id, global_user_id`` (pseudonyms), ``_status, _reason, _detail, _record, source,
    run_id, _ingested_at``. ``restrict_to`` (``domain, local_user_id`` pseudonyms): only the rows of those keys, all of
    them, so their verdicts are the same as over the whole map (a night needs only the keys it touches).
    """
    record = bronze_record(bronze, [C.DOMAIN, *_NO_RAW_IDS])
    df = bronze.select(
        F.lower(blank_to_null(F.col(C.DOMAIN))).alias(C.DOMAIN),
        blank_to_null(F.col(C.USER_ID)).alias("_local_raw"),
        blank_to_null(F.col(C.GLOBAL_USER_ID)).alias("_global_raw"),
        F.col(C.CORRUPT_RECORD),
        F.col(C.SOURCE_FILE).alias(C.SOURCE),
        F.col(C.RUN_ID),
        F.col(C.INGESTED_AT).alias("_ingested_at"),
        record.alias("_record"),
    )
    reason, detail = _first_reason(
        [
            (F.col(C.CORRUPT_RECORD).isNotNull(), "malformed_line", _malformed(F.col(C.CORRUPT_RECORD))),
            (F.col("_local_raw").isNull(), "missing_user_id", F.lit("user_id is empty")),
            (F.col("_global_raw").isNull(), "missing_global_user_id", F.lit("global_user_id is empty")),
            (F.col(C.DOMAIN).isNull() | ~F.col(C.DOMAIN).isin(list(domains)), "unknown_domain",
             F.concat(_show(C.DOMAIN, F.col(C.DOMAIN)), F.lit(f" not in {sorted(domains)}"))),
        ]
    )
    df = (df.withColumn(REASON, reason).withColumn(DETAIL, detail)
          .withColumn(C.LOCAL_USER_ID, pseudonym_column(key, F.col("_local_raw"))))
    if restrict_to is not None:  # before the global ids are hashed: only the kept rows need them
        df = df.join(F.broadcast(restrict_to), [C.DOMAIN, C.LOCAL_USER_ID], "left_semi")
    df = (df.withColumn(C.GLOBAL_USER_ID, pseudonym_column(key, F.col("_global_raw")))
          .drop(C.CORRUPT_RECORD, "_local_raw", "_global_raw"))
    valid = F.col(REASON).isNull()
    latest = Window.partitionBy(C.DOMAIN, C.LOCAL_USER_ID, valid).orderBy(F.col("_ingested_at").desc(), C.GLOBAL_USER_ID)
    df = df.withColumn("_rn", F.row_number().over(latest)).withColumn("_first", F.first(C.GLOBAL_USER_ID).over(latest))
    df = df.withColumn("_first_at", F.first("_ingested_at").over(latest))
    # the verdicts are columns before REASON changes: ``valid`` reads REASON
    df = df.withColumn("_conflict", valid & (F.col(C.GLOBAL_USER_ID) != F.col("_first")))
    df = df.withColumn("_dup", valid & (F.col(C.GLOBAL_USER_ID) == F.col("_first")) & (F.col("_rn") > 1))
    superseded = F.when(F.col("_ingested_at") < F.col("_first_at"), F.lit("superseded by a mapping ingested later"))
    df = df.withColumn(DETAIL, F.when(F.col("_conflict"), F.coalesce(superseded, F.lit(
        "mapped to another global id in the same ingest; the smallest pseudonym was kept"))).otherwise(F.col(DETAIL)))
    df = df.withColumn(REASON, F.when(F.col("_conflict"), F.lit("identity_conflict")).otherwise(F.col(REASON)))
    status = F.when(F.col(REASON).isNotNull(), F.lit(QUARANTINED)).when(F.col("_dup"), F.lit(DUPLICATE)).otherwise(F.lit(OK))
    return df.withColumn(STATUS, status).drop("_rn", "_first", "_first_at", "_conflict", "_dup")


def pseudonymous_users(interactions: DataFrame, identity: DataFrame | None, key: bytes,
                       col_user: str = DEFAULT_USER_COL) -> DataFrame:
    """Replace the raw ``local_user_id`` by ``col_user``: the pseudonym of the identity map's global id for (domain,
    local user), else of the local id itself (a user id without a mapping is global as written). Ids are
    NFC-normalised before hashing and the map is joined on pseudonyms (:func:`classify_identity_map`), so the raw
    id does not survive and Unicode spellings of one id are one user; the key stays out of the plan
    (:mod:`crossrec.data.pseudonym`)."""
    df = interactions.withColumn("_local", pseudonym_column(key, F.col(C.LOCAL_USER_ID))).drop(C.LOCAL_USER_ID)
    if identity is None:
        return df.withColumnRenamed("_local", col_user)
    ids = identity.where(F.col(STATUS) == OK).select(C.DOMAIN, F.col(C.LOCAL_USER_ID).alias("_local"),
                                                    F.col(C.GLOBAL_USER_ID).alias("_gid"))
    out = df.join(ids, on=[C.DOMAIN, "_local"], how="left")
    return out.withColumn(col_user, F.coalesce("_gid", "_local")).drop("_gid", "_local")


def catalog_keys(items: DataFrame, col_item: str = DEFAULT_ITEM_COL) -> DataFrame:
    """The ``(domain, item_id)`` pairs of the ok catalog rows: what :func:`classify_interactions` checks
    interactions against (policy ``quarantine``)."""
    return items.where(F.col(STATUS) == OK).select(C.DOMAIN, col_item).distinct()


def placeholder_items(interactions: DataFrame, items: DataFrame, col_item: str = DEFAULT_ITEM_COL) -> DataFrame:
    """Catalog rows for items that ok interactions reference but the catalog lacks (policy ``placeholder``).

    Same columns as :func:`classify_items` output; title = item id, ``attributes['placeholder'] = 'true'``.
    """
    known = items.where(F.col(STATUS) == OK).select(C.DOMAIN, col_item)
    refs = interactions.where(F.col(STATUS) == OK).select(C.DOMAIN, col_item).distinct()
    missing = refs.join(known, on=[C.DOMAIN, col_item], how="left_anti")
    return missing.select(
        F.col(col_item),
        F.col(C.DOMAIN),
        F.col(col_item).alias(C.TITLE),
        F.col(col_item).alias(C.TEXT),
        F.lit(None).cast("string").alias(C.CATEGORY),
        F.create_map(F.lit("placeholder"), F.lit("true")).alias(C.ATTRIBUTES),
        F.create_map().cast("map<string,array<float>>").alias(C.VECTORS),
        F.lit(0).alias("_bad_vectors"),
        F.lit("placeholder").alias(C.RUN_ID),
        F.lit("placeholder").alias(C.SOURCE),
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
        [DEFAULT_USER_COL, DEFAULT_DOMAIN_COL, DEFAULT_ITEM_COL, C.EVENT_TYPE, DEFAULT_TS_COL],
        [F.col("_ingested_at"), F.col(C.SOURCE), F.col(C.WEIGHT).desc()],
    )


# --------------------------------------------------------------------------- items
def item_vectors(vectors: Mapping[str, Mapping[str, tuple[int, str]]] | None) -> tuple[Column, Column]:
    """``(vectors, _bad_vectors)`` of a bronze items row: its declared vector columns (per domain, raw column ->
    (dim, modality), :attr:`~crossrec.data.rawformat.FileSet.vectors`) parsed as lists of floats into a map
    modality -> vector, and the number left out because they are not a list of ``dim`` finite numbers."""
    present, good = [], []
    for domain, cols in (vectors or {}).items():
        for col, (dim, modality) in cols.items():
            raw = F.col(C.VECTORS)[col]
            parsed = F.from_json(raw, "array<float>")
            ok = parsed.isNotNull() & (F.size(parsed) == dim) & F.forall(
                parsed, lambda x: x.isNotNull() & ~F.isnan(x) & (F.abs(x) < float("inf")))
            there = (F.col(C.DOMAIN) == domain) & blank_to_null(raw).isNotNull()
            present.append(F.when(there & ~ok, 1).otherwise(0))
            good.append(F.when(there & ok, F.struct(F.lit(modality).alias("key"), parsed.alias("value"))))
    if not good:
        return F.create_map().cast("map<string,array<float>>"), F.lit(0)
    vecs = F.map_from_entries(F.filter(F.array(*good), lambda e: e.isNotNull()))
    return vecs, sum(present[1:], present[0])


def classify_items(bronze: DataFrame, max_text_chars: int, domains: list[str] | None = None,
                   vectors: Mapping[str, Mapping[str, tuple[int, str]]] | None = None) -> DataFrame:
    """Type and normalise catalog rows: title, text (text columns joined with '. '), category, attributes, and the
    declared ``vectors`` (:func:`item_vectors`; ``_bad_vectors`` counts those left out).

    Text longer than ``max_text_chars`` is truncated (flag ``_truncated``); text with bytes invalid in the
    file's encoding is kept with U+FFFD (flag ``_bad_text_bytes``). Each (domain, item) keeps its newest
    row (a later catalog file supersedes an earlier one; within one file the row with the greatest text, then
    title, then category: deterministic whatever the read order); the others are duplicates. With ``domains``,
    rows of another domain (one dropped from ``dataset.json``) are quarantined as ``unknown_domain``.
    """
    record = bronze_record_json(bronze, [C.DOMAIN, C.ITEM_ID, C.TITLE, C.CATEGORY, C.TEXT_FIELDS, C.ATTRIBUTES, *_BRONZE_META])
    parts = F.transform(F.array_sort(F.map_entries(F.coalesce(F.col(C.TEXT_FIELDS), F.create_map().cast("map<string,string>")))), lambda e: normalize_text(e["value"]))
    joined = F.concat_ws(". ", F.filter(parts, lambda s: s.isNotNull() & (s != "")))
    title = F.coalesce(normalize_text(F.col(C.TITLE)), F.lit(""))
    vecs, bad_vecs = item_vectors(vectors)
    attrs = F.map_filter(
        F.transform_values(F.coalesce(F.col(C.ATTRIBUTES), F.create_map().cast("map<string,string>")), lambda k, v: normalize_text(v)),
        lambda k, v: v.isNotNull() & (v != ""),
    )
    df = bronze.select(
        blank_to_null(F.col(C.ITEM_ID)).alias(C.ITEM_ID),
        F.col(C.DOMAIN),
        title.alias(C.TITLE),
        joined.alias("_text_full"),
        blank_to_null(normalize_text(F.col(C.CATEGORY))).alias(C.CATEGORY),
        attrs.alias(C.ATTRIBUTES),
        vecs.alias(C.VECTORS),
        bad_vecs.alias("_bad_vectors"),
        F.col(C.RUN_ID),
        F.col(C.SOURCE_FILE).alias(C.SOURCE),
        F.col(C.CORRUPT_RECORD),
        F.col(C.INGESTED_AT).alias("_ingested_at"),
        record.alias("_record"),
    )
    text = F.when(F.col("_text_full") == "", F.col(C.TITLE)).otherwise(F.col("_text_full"))
    df = (
        df.withColumn("_truncated", F.length(text) > max_text_chars)
        .withColumn(C.TEXT, F.substring(text, 1, max_text_chars))
        .withColumn(C.TITLE, F.substring(C.TITLE, 1, max_text_chars))
        .withColumn("_bad_text_bytes", has_bad_bytes(F.col("_text_full")) | has_bad_bytes(F.col(C.TITLE)))
        .drop("_text_full")
    )
    reason, detail = _first_reason(
        [
            (~F.col(C.DOMAIN).isin(list(domains)) if domains is not None else F.lit(False), "unknown_domain",
             _dropped_domain()),
            (F.col(C.CORRUPT_RECORD).isNotNull(), "malformed_line", _show("line", F.col(C.CORRUPT_RECORD))),
            (F.col(C.ITEM_ID).isNull(), "missing_item_id", F.lit("item_id is empty")),
            (has_bad_bytes(F.col(C.ITEM_ID)), "invalid_encoding", F.lit("bytes not valid in the file's encoding in item_id")),
            (F.length(C.ITEM_ID) > MAX_ID_CHARS, "value_too_long", F.lit(f"item_id longer than {MAX_ID_CHARS} chars")),
        ]
    )
    df = (
        df.withColumn(REASON, reason)
        .withColumn(DETAIL, detail)
        .withColumn(STATUS, F.when(F.col(REASON).isNull(), F.lit(OK)).otherwise(F.lit(QUARANTINED)))
        .drop(C.CORRUPT_RECORD)
    )
    # the newest file wins; within one file (rows carry no position), the greatest text, then title, category
    df = mark_duplicates(df, [DEFAULT_DOMAIN_COL, DEFAULT_ITEM_COL],
                         [F.col("_ingested_at").desc(), F.col(C.SOURCE).desc(), F.col(C.TEXT).desc(),
                          F.col(C.TITLE).desc(), F.col(C.CATEGORY).desc_nulls_last()])
    return df.drop("_ingested_at")


# --------------------------------------------------------------------------- entities
def entity_value(c: Column) -> Column:
    """An entity value as it is matched: trimmed, inner whitespace collapsed, lower case; null when empty."""
    return blank_to_null(F.lower(F.regexp_replace(c, r"\s+", " ")))


def _split_pattern(separator: str) -> str:
    """A Java regex that matches ``separator`` literally (``F.split`` takes a regex)."""
    return "\\Q" + separator.replace("\\E", "\\E\\\\E\\Q") + "\\E"


def item_entity_values(items: DataFrame, declared: Mapping[str, Mapping[str, tuple[str, str | None]]]) -> DataFrame:
    """Every entity value of the catalog ``items`` (silver.items rows), before de-duplication: one row per value, with
    ``domain, item_id, entity, entity_type, value, attribute, run_id``.

    ``declared``: per domain, attribute column -> (entity type, separator or None) (the file set's
    :attr:`~crossrec.data.rawformat.FileSet.entities`). A multi-valued cell is split at its separator; parts that are
    empty once normalised (``"a;;b"``) are no values and leave no row."""
    parts = []
    for domain, cols in declared.items():
        mine = items.where(F.col(C.DOMAIN) == domain)
        for col, (etype, sep) in cols.items():
            cell = F.col(C.ATTRIBUTES)[col]
            vals = F.split(cell, _split_pattern(sep)) if sep else F.array(cell)
            parts.append(mine.where(cell.isNotNull()).select(
                C.DOMAIN, C.ITEM_ID, F.lit(etype).alias(C.ENTITY_TYPE), F.lit(col).alias(C.ATTRIBUTE), C.RUN_ID,
                F.explode(vals).alias("_raw")))
    if not parts:
        schema = "domain string, item_id string, entity string, entity_type string, value string, attribute string, run_id string"
        return items.sparkSession.createDataFrame([], schema)
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    out = out.select(C.DOMAIN, C.ITEM_ID, C.ENTITY_TYPE, C.ATTRIBUTE, C.RUN_ID, entity_value(F.col("_raw")).alias(C.VALUE))
    out = out.where(F.col(C.VALUE).isNotNull())
    return out.withColumn(C.ENTITY, F.concat_ws(":", C.ENTITY_TYPE, C.VALUE))


def item_entities(values: DataFrame) -> DataFrame:
    """:func:`item_entity_values` with each (domain, item_id, entity) once: the first attribute (by name) that gave it
    is kept; the others are duplicates, marked by ``_status`` as in every classified frame."""
    return mark_duplicates(values.withColumn(STATUS, F.lit(OK)), [C.DOMAIN, C.ITEM_ID, C.ENTITY], [F.col(C.ATTRIBUTE).asc()])


# --------------------------------------------------------------------------- outputs
def quarantine_rows(classified: DataFrame, source_table: str) -> DataFrame:
    """The quarantined rows of a classified frame, shaped as ``silver.quarantine``: each bronze row as JSON with its
    user ids as pseudonyms (the frame's ``user_id``, or the identity map's ``local_user_id``/``global_user_id``)
    in place of the raw ones, which stay in bronze."""
    q = classified.where(F.col(STATUS) == QUARANTINED)
    record = F.col("_record")
    if isinstance(q.schema["_record"].dataType, T.StructType):
        ids = {C.USER_ID: DEFAULT_USER_COL, C.LOCAL_USER_ID: C.USER_ID, C.GLOBAL_USER_ID: C.GLOBAL_USER_ID}
        pseudonyms = [F.col(c).alias(name) for c, name in ids.items() if c in q.columns]
        record = F.to_json(F.struct(*pseudonyms, "_record.*"))
    return q.select(
        F.lit(source_table).alias(C.SOURCE_TABLE),
        F.col(C.DOMAIN),
        F.col(REASON).alias(C.REASON),
        F.col(DETAIL).alias(C.DETAIL),
        record.alias(C.RECORD),
        F.col(C.SOURCE).alias(C.SOURCE_FILE),
        F.col(C.RUN_ID),
    )


def status_counts(classified: DataFrame) -> DataFrame:
    """Counts per (domain, source file, status, reason): the accounting of one table (an action follows)."""
    return classified.groupBy(DEFAULT_DOMAIN_COL, C.SOURCE, STATUS, REASON).count()


def contract_params(cfg, domains: list[str]) -> dict:
    """Run-time parameters of the silver contracts (allowed domains, event-time window, quarantine reasons)."""
    import datetime as dt

    return {
        "domains": domains,
        "min_event_ts": dt.datetime.fromisoformat(cfg.min_event_ts),
        "max_event_ts": dt.datetime.fromisoformat(cfg.run_date) + dt.timedelta(days=1) - dt.timedelta(microseconds=1),
        "quarantine_reasons": list(QUARANTINE_REASONS),
    }
