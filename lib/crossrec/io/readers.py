"""Spark-free readers of the lakehouse, for services, notebooks and the CLI (``deltalake`` package, no JVM)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from crossrec.quality.contracts import all_contracts


@dataclass(frozen=True)
class TableInfo:
    """One Delta table of the lake: its name, location, newest version and row count."""

    table: str
    path: str
    version: int
    rows: int


def table_path(lake_root: str, table: str) -> str:
    layer, _, name = table.partition(".")
    return f"{lake_root.rstrip('/')}/{layer}/{name}"


def read_table(lake_root: str, table: str, version: int | None = None, columns: list[str] | None = None):
    """A table (optionally at ``version``) as a pandas DataFrame."""
    from deltalake import DeltaTable

    return DeltaTable(table_path(lake_root, table), version=version).to_pandas(columns=columns)


def list_tables(lake_root: str) -> list[TableInfo]:
    """Every contract table that exists under ``lake_root``, with version and row count."""
    from deltalake import DeltaTable

    out = []
    for c in all_contracts():
        path = table_path(lake_root, c.table)
        if "://" not in path and not os.path.isdir(os.path.join(path, "_delta_log")):
            continue
        try:
            dt = DeltaTable(path)
        except Exception:  # deltalake raises TableNotFoundError for remote paths without a log
            continue
        out.append(TableInfo(c.table, path, dt.version(), dt.to_pyarrow_dataset().count_rows()))
    return out
