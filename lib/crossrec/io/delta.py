"""Delta table reads and writes, always through delta-spark and always shaped by the table's contract.

Writes create the table from its contract on first use (schema + partitioning), then append,
overwrite, or replace a slice (``replaceWhere``), each one atomic Delta commit. A table's versions and commit
metrics are read from its log with the ``deltalake`` package (no Spark job), as are the Spark-free readers
(``crossrec.io.readers``).
"""
from __future__ import annotations

import logging

from crossrec.quality.contracts import Contract

log = logging.getLogger(__name__)


def table_exists(spark, path: str) -> bool:
    """Whether a Delta table is at ``path`` (on Spark Connect, where ``delta.tables`` needs a server plugin, by
    asking for its details)."""
    from crossrec.io.spark import is_connect

    if not is_connect(spark):
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, path)
    from pyspark.errors import AnalysisException

    try:
        return spark.sql(f"DESCRIBE DETAIL {quote_path(path)}").first()["format"] == "delta"
    except AnalysisException:
        return False


def run_sql_on(spark, frame, sql: str) -> None:
    """Run ``sql`` with ``{source}`` standing for ``frame`` (a temp view of a unique name, dropped after): SQL
    statements (MERGE) over a DataFrame, the same on a classic session and on Spark Connect."""
    import uuid

    view = f"crossrec_source_{uuid.uuid4().hex}"
    frame.createOrReplaceTempView(view)
    try:
        spark.sql(sql.format(source=view))
    finally:
        spark.catalog.dropTempView(view)


def read_table(spark, path: str, version: int | None = None):
    """Read a Delta table, optionally at a pinned ``version`` (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def latest_version(path: str) -> int:
    """The newest committed version of the Delta table at ``path``, read from its log with ``deltalake`` (a Spark
    history query costs a job per call, and the stages ask after every write)."""
    from deltalake import DeltaTable

    return int(DeltaTable(path).version())


def commits(path: str, since: int = -1) -> list[dict]:
    """Commit information (``version``, ``operation``, ``operationMetrics``...) of the table's versions after ``since``,
    oldest first, read from its log with ``deltalake``."""
    from deltalake import DeltaTable

    dt_ = DeltaTable(path)
    newest = int(dt_.version())
    if newest <= since:
        return []
    found = [c for c in dt_.history(newest - since) if c.get("version", -1) > since]
    return sorted(found, key=lambda c: c["version"])


def _commit_info(path: str, version: int | None = None) -> dict:
    """The commit information of ``version`` (default the newest) of the table at ``path``; {} if it is gone."""
    version = latest_version(path) if version is None else int(version)
    return next((c for c in commits(path, version - 1) if c["version"] == version), {})


def last_operation_metrics(path: str) -> dict[str, str]:
    """``operationMetrics`` of the newest commit (e.g. ``numOutputRows``)."""
    return dict(_commit_info(path).get("operationMetrics") or {})


def quote_path(path: str) -> str:
    """``delta.`<path>``` for SQL, with backticks in the path escaped."""
    return "delta.`" + path.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """A SQL string literal of ``value`` (quotes and backslashes escaped): values never become SQL."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_properties(spark, path: str) -> dict[str, str]:
    """The table properties (``TBLPROPERTIES``) of the Delta table at ``path``."""
    return {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {quote_path(path)}").collect()}


def set_table_properties(spark, path: str, props: dict[str, str]) -> None:
    """Set table properties in one commit; keys and values are escaped, never spliced into the SQL."""
    sets = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in props.items())
    spark.sql(f"ALTER TABLE {quote_path(path)} SET TBLPROPERTIES ({sets})")


def write_table(spark, df, contract: Contract, path: str, mode: str, replace_where: str | None = None) -> int:
    """Write ``df`` (conformed to ``contract``) to the Delta table at ``path``; return the new version.

    Args:
        mode: ``append`` or ``overwrite``; with ``replace_where`` an overwrite replaces only the rows
            matching that predicate (e.g. one run's partition), atomically.
    """
    if mode not in ("append", "overwrite"):
        raise ValueError(f"mode must be append or overwrite, got {mode!r}")
    contract.ensure_table(spark, path)
    writer = contract.conform(df).write.format("delta").mode(mode)
    if mode == "overwrite":
        if replace_where:
            writer = writer.option("replaceWhere", replace_where)
        else:
            writer = writer.option("overwriteSchema", "false")
    writer.save(path)
    version = latest_version(path)
    log.info("wrote %s (%s%s) -> %s v%d", contract.table, mode, f" where {replace_where}" if replace_where else "", path, version)
    return version


def merge_table(spark, df, contract: Contract, path: str, on: list[str], *, update: bool = True,
                delete_flag: str | None = None) -> tuple[int, dict[str, int]]:
    """MERGE ``df`` (conformed to ``contract``) into the Delta table at ``path`` on the columns ``on``; one commit.

    Rows of ``df`` that match a row of the table update it (all columns; with ``update=False`` they are left out:
    an insert-only merge, i.e. deduplication against the rows already there), the others are inserted. With
    ``delete_flag`` (a boolean column of ``df``, not of the contract), matched rows whose flag is true are deleted
    and flagged rows never inserted. Returns the new version and Delta's metrics of the merge
    (``numTargetRowsInserted``, ``numTargetRowsUpdated``, ``numTargetRowsDeleted``, ``numSourceRows``; {} when it made
    no commit).
    """
    from pyspark.sql import functions as F

    contract.ensure_table(spark, path)
    source = contract.conform(df)
    if delete_flag:  # the contract's columns (as conform gives them) and the flag
        from crossrec.quality.contracts import spark_type

        source = df.select(*[F.col(c.name).cast(spark_type(c.type)).alias(c.name) for c in contract.columns],
                           F.col(delete_flag).cast("boolean").alias("_delete"))
    cond = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in on)
    cols = [f"`{c}`" for c in contract.column_names]
    clauses = ["WHEN MATCHED AND s._delete THEN DELETE"] if delete_flag else []
    if update:
        clauses.append("WHEN MATCHED THEN UPDATE SET " + ", ".join(f"{c} = s.{c}" for c in cols))
    clauses.append(f"WHEN NOT MATCHED{' AND NOT s._delete' if delete_flag else ''} THEN INSERT ({', '.join(cols)}) "
                   f"VALUES ({', '.join('s.' + c for c in cols)})")
    before = latest_version(path)
    run_sql_on(spark, source, f"MERGE INTO {quote_path(path)} t USING {{source}} s ON {cond} " + " ".join(clauses))
    version = latest_version(path)
    metrics = write_metrics(path, version, since=before)  # an empty source may commit nothing
    log.info("merged into %s -> %s v%d: %s", contract.table, path, version,
             {k: metrics.get(k) for k in ("numSourceRows", "numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")})
    return version, metrics


DELETE_CHUNK = 20_000  # values per DELETE: bounds the SQL text a statement carries


def delete_in(spark, path: str, column: str, values: list[str], chunk: int = DELETE_CHUNK) -> list[int]:
    """DELETE the rows of the Delta table at ``path`` whose string ``column`` is one of ``values``, in statements of at
    most ``chunk`` values; returns the versions they committed (oldest first).

    A literal IN list needs no join with the table (a MERGE joins it twice); on a table with deletion vectors the
    files keep their bytes. Each statement is a commit of its own: callers that need the change as one step read the
    table at a version they record after their last commit (``ops.runs``)."""
    before = latest_version(path)
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        literals = ", ".join(sql_string(v) for v in part)
        spark.sql(f"DELETE FROM {quote_path(path)} WHERE `{column}` IN ({literals})")
    after = latest_version(path)
    log.info("deleted the rows of %d %s value(s) from %s: v%d -> v%d", len(values), column, path, before, after)
    return list(range(before + 1, after + 1))


def write_metrics(path: str, version: int | None = None, since: int | None = None) -> dict[str, int]:
    """Delta's row metrics of commit ``version`` (default the newest): ``numOutputRows`` of a write, the ``numTarget*``
    of a merge. With ``since`` (the version before the write), a write that made no commit (an empty append) is {}."""
    if since is not None and version is not None and version <= since:
        return {}
    metrics = _commit_info(path, version).get("operationMetrics") or {}
    return {k: int(v) for k, v in metrics.items() if str(v).isdigit()}


def read_changes(spark, path: str, versions: list[int], change_types: tuple[str, ...] = ("insert",)):
    """Rows the commits ``versions`` of a table with the change data feed added (or, with ``change_types``, also
    deleted, ``update_postimage``...), with ``_change_type`` and ``_commit_version``; None when ``versions`` is empty."""
    from functools import reduce

    from pyspark.sql import functions as F

    if not versions:
        return None
    frames = [spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", v)
              .option("endingVersion", v).load(path) for v in versions]
    df = reduce(lambda a, b: a.unionByName(b), frames)
    return df.where(F.col("_change_type").isin(list(change_types)))
