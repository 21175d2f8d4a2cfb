"""Erasing users: every row of the given people leaves bronze, silver, gold and the published recommendations.

Silver and gold name a user by pseudonym, so their rows go with one Delta ``DELETE`` each. Bronze holds raw ids:
its rows of a person are found the way clean joins them (an id is NFC-normalised and hashed; a local id the identity
map maps belongs to its global id, any other id is global as written), and removed with a ``MERGE ... DELETE`` on
the raw values, which never leave the executors and the driver's memory. A malformed bronze line (no parsed user
id) cannot be attributed to anyone and leaves with bronze's own retention. Deleted rows stay in older table
versions until ``VACUUM`` removes their files after the retention (config ``vacuum_retention_hours``).

:func:`run_forget` is the ``crossrec forget`` stage: ids -> pseudonyms, :func:`erase`, the check that no row is left
(:func:`remaining`), :func:`vacuum`, one audit row per user and table in ops.erasures, the run in ops.runs.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import dataclass

from crossrec import columns as C
from crossrec.io.config import ConfigError, CrossrecConfig

log = logging.getLogger(__name__)

STAGE = "forget"
AUDIT = "ops.erasures"

# tables whose rows name a user by pseudonym: table -> the SQL expression that holds it
PSEUDONYM_TABLES = {
    "silver.interactions": [C.USER_ID],
    "silver.identity_map": [C.GLOBAL_USER_ID],
    "silver.quarantine": ["get_json_object(record, '$.user_id')", "get_json_object(record, '$.global_user_id')"],
    "gold.user_sequences": [C.USER_ID],
    "gold.recommendations": [C.USER_ID],
}
BRONZE_TABLES = ("bronze.interactions", "bronze.identity_map")


@dataclass
class Erased:
    """What one table lost: rows deleted, and its versions before and after."""

    table: str
    rows_deleted: int
    version_before: int
    version_after: int


def user_ref(pseudonym: str) -> str:
    """The audit's name for an erased user: a hash of the pseudonym (confirms an erasure, identifies nobody)."""
    return hashlib.sha256(pseudonym.encode("ascii")).hexdigest()[:16]


def _in_list(expr: str, pseudonyms: list[str]) -> str:
    # pseudonyms are 64 lower-case hex characters (checked by the caller): safe as SQL literals
    return f"{expr} IN ({', '.join(repr(p) for p in pseudonyms)})"


def bronze_people(spark, lake, key: bytes, pseudonyms: list[str]):
    """(raw user ids of bronze.interactions as ``(domain, user_id)``, raw global ids of bronze.identity_map) that
    belong to ``pseudonyms``; either None when its table does not exist. Lazy frames: nothing is collected."""
    from pyspark.sql import functions as F

    from crossrec.data.clean import OK, STATUS, blank_to_null, classify_identity_map
    from crossrec.data.pseudonym import pseudonym_column
    from crossrec.io.delta import read_table, table_exists

    targets = spark.createDataFrame([(p,) for p in pseudonyms], "person string")
    ids_path, inter_path = lake("bronze.identity_map"), lake("bronze.interactions")
    mapping = globals_ = None
    if table_exists(spark, ids_path):
        b_ids = read_table(spark, ids_path)
        domains = [r[0] for r in b_ids.select(F.lower(F.trim(C.DOMAIN))).distinct().collect() if r[0]]
        mapping = (classify_identity_map(b_ids, domains, key).where(F.col(STATUS) == OK)
                   .select(C.DOMAIN, F.col(C.LOCAL_USER_ID).alias("_local"), F.col(C.GLOBAL_USER_ID).alias("_gid")))
        globals_ = (b_ids.select(C.GLOBAL_USER_ID).distinct()
                    .withColumn("person", pseudonym_column(key, blank_to_null(F.col(C.GLOBAL_USER_ID))))
                    .join(targets, "person").select(C.GLOBAL_USER_ID))
    locals_ = None
    if table_exists(spark, inter_path):
        users = read_table(spark, inter_path).select(C.DOMAIN, C.USER_ID).distinct()
        users = users.withColumn("_local", pseudonym_column(key, blank_to_null(F.col(C.USER_ID))))
        if mapping is not None:
            users = users.join(mapping, [C.DOMAIN, "_local"], "left")
            users = users.withColumn("person", F.coalesce("_gid", "_local"))
        else:
            users = users.withColumn("person", F.col("_local"))
        locals_ = users.join(targets, "person").select(C.DOMAIN, C.USER_ID)
    return locals_, globals_


def erase(spark, lake, key: bytes, pseudonyms: list[str]) -> list[Erased]:
    """Delete every row of ``pseudonyms`` from the lake's tables (``lake(table)`` gives a table's path); returns
    what each existing table lost. Re-publishes gold.recommendations' published run at the new version."""
    from crossrec.io.delta import last_operation_metrics, latest_version, quote_path, run_sql_on, table_exists
    from crossrec.score.stage import publish, published

    locals_, globals_ = bronze_people(spark, lake, key, pseudonyms)
    out: list[Erased] = []

    def record(table: str, path: str, before: int) -> None:
        after = latest_version(path)
        metrics = last_operation_metrics(path) if after != before else {}
        n = int(metrics.get("numDeletedRows") or metrics.get("numTargetRowsDeleted") or 0)  # DELETE / MERGE
        out.append(Erased(table, n, before, after))
        log.info("%s: %d row(s) deleted (v%d -> v%d)", table, n, before, after)

    for table, source, on in (("bronze.interactions", locals_, "t.domain <=> s.domain AND t.user_id = s.user_id"),
                              ("bronze.identity_map", globals_, "t.global_user_id = s.global_user_id")):
        path = lake(table)
        if source is None:
            continue
        before = latest_version(path)
        run_sql_on(spark, source, f"MERGE INTO {quote_path(path)} t USING {{source}} s ON {on} WHEN MATCHED THEN DELETE")
        record(table, path, before)
    for table, exprs in PSEUDONYM_TABLES.items():
        path = lake(table)
        if not table_exists(spark, path):
            continue
        before = latest_version(path)
        spark.sql(f"DELETE FROM {quote_path(path)} WHERE " + " OR ".join(_in_list(e, pseudonyms) for e in exprs))
        record(table, path, before)
        props = published(spark, path) if table == "gold.recommendations" and out[-1].rows_deleted else {}
        if props:  # readers read the published version: point them at the one without these users (same run)
            publish(spark, path, out[-1].version_after, _date(props["run_date"]), props["model_version"], int(props["k"]))
    return out


def remaining(spark, lake, key: bytes, pseudonyms: list[str]) -> dict[str, int]:
    """Rows of ``pseudonyms`` still in each table (all zero after :func:`erase`): the erasure's own check."""
    from crossrec.io.delta import read_table, table_exists

    left = {}
    locals_, globals_ = bronze_people(spark, lake, key, pseudonyms)
    for table, frame in zip(BRONZE_TABLES, (locals_, globals_)):
        if frame is not None:
            left[table] = frame.count()
    for table, exprs in PSEUDONYM_TABLES.items():
        if table_exists(spark, lake(table)):
            left[table] = read_table(spark, lake(table)).where(" OR ".join(_in_list(e, pseudonyms) for e in exprs)).count()
    return left


def vacuum(spark, path: str, retention_hours: float) -> None:
    """Remove the files no version newer than ``retention_hours`` needs (Delta refuses less than its configured
    minimum, 168 hours by default)."""
    from crossrec.io.delta import quote_path

    spark.sql(f"VACUUM {quote_path(path)} RETAIN {float(retention_hours)} HOURS")


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def run_forget(cfg: CrossrecConfig, spark, users: list[str], users_file: str | None = None, pseudonymized: bool = False,
               vacuum_after: bool = True) -> list[Erased]:
    """Erase ``users`` (and those of ``users_file``, one id a line) and record the versions written in ops.runs (so no
    later run restores an older version, and features rebuilds the users' rows from the deletes); returns what each
    table lost.

    The ids are raw user ids (global ids where an identity map joins domains), or the stored pseudonyms when
    ``pseudonymized``. ``vacuum_after``: VACUUM each table with ``cfg.vacuum_retention_hours``. Raises
    :class:`~crossrec.io.config.ConfigError` when no id is given or an id is not a pseudonym, and
    :class:`~crossrec.io.accounting.AccountingError` when a row of the users remains after the deletes.
    """
    from crossrec.io.delta import latest_version
    from crossrec.io.runs import stage_run

    with stage_run(spark, cfg, STAGE, []) as stage:
        erased = _forget(cfg, spark, users, users_file, pseudonymized, vacuum_after)
        stage.writes = {e.table: latest_version(cfg.table_path(e.table)) for e in erased}
        stage.details["tables"] = {e.table: e.rows_deleted for e in erased}
        return erased


def _forget(cfg: CrossrecConfig, spark, users: list[str], users_file: str | None, pseudonymized: bool,
            vacuum_after: bool) -> list[Erased]:
    from crossrec.data.pseudonym import check_lake_key, pseudonym
    from crossrec.io.accounting import AccountingError
    from crossrec.io.delta import write_table
    from crossrec.quality.contracts import load_contract

    ids = list(users) + ([u.strip() for u in open(users_file, encoding="utf-8") if u.strip()] if users_file else [])
    if not ids:
        raise ConfigError("no user to forget: give USER ids or --users-file")
    key = cfg.require_pseudonym_key()
    check_lake_key(spark, cfg.table_path("silver.interactions"), key)
    people = sorted(set(ids if pseudonymized else (pseudonym(u, key) for u in ids)))
    bad = [p for p in people if not re.fullmatch(r"[0-9a-f]{64}", p)]
    if bad:
        raise ConfigError(f"{len(bad)} id(s) are not pseudonyms (64 hex characters); without --pseudonymized give raw ids")
    erased = erase(spark, cfg.table_path, key, people)
    left = {t: n for t, n in remaining(spark, cfg.table_path, key, people).items() if n}
    if left:
        raise AccountingError(f"forget: rows of the erased users remain after the deletes: {left}")
    if vacuum_after:
        for e in erased:
            vacuum(spark, cfg.table_path(e.table), cfg.vacuum_retention_hours)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    detail = {e.table: json.dumps({"version_before": e.version_before, "version_after": e.version_after,
                                   "vacuum_retention_hours": cfg.vacuum_retention_hours if vacuum_after else None})
              for e in erased}
    # per user and table: the rows of all users together (a DELETE reports one count); each user's row names it
    rows = [(cfg.effective_run_id(STAGE), user_ref(p), e.table, e.rows_deleted, now, detail[e.table])
            for p in people for e in erased]
    audit = spark.createDataFrame(rows, load_contract(AUDIT).spark_schema())
    write_table(spark, audit, load_contract(AUDIT), cfg.table_path(AUDIT), "append")
    print(f"forgot {len(people)} user(s): " + ", ".join(f"{e.table} -{e.rows_deleted}" for e in erased))
    return erased


__all__ = ["run_forget", "STAGE", "AUDIT", "Erased", "PSEUDONYM_TABLES", "BRONZE_TABLES", "user_ref", "bronze_people",
           "erase", "remaining", "vacuum"]
