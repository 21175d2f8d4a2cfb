"""Delta table reads and writes, always through delta-spark and always shaped by the table's contract.

Writes create the table from its contract on first use (schema + partitioning), then append,
overwrite, or replace a slice (``replaceWhere``), each one atomic Delta commit. Readers that need no
Spark use the ``deltalake`` package instead (``crossrec.io.readers``).
"""
from __future__ import annotations

import logging

from crossrec.quality.contracts import Contract

log = logging.getLogger(__name__)


def table_exists(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark, path: str, version: int | None = None):
    """Read a Delta table, optionally at a pinned ``version`` (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def latest_version(spark, path: str) -> int:
    """The newest committed version of the Delta table at ``path``."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def last_operation_metrics(spark, path: str) -> dict[str, str]:
    """``operationMetrics`` of the newest commit (e.g. ``numOutputRows``)."""
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").first()
    return dict(row[0] or {})


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
    version = latest_version(spark, path)
    log.info("wrote %s (%s%s) -> %s v%d", contract.table, mode, f" where {replace_where}" if replace_where else "", path, version)
    return version
