"""Table contracts: one YAML file a table in ``schemas/`` (shipped as the ``crossrec_schemas`` package).

From a contract come the Spark ``StructType`` (:meth:`Contract.spark_schema`), the Delta table
definition with its partitioning (:meth:`Contract.ensure_table`) and the Great Expectations suite
(:func:`crossrec.quality.validate.build_expectations`). Nothing else declares a table's columns.

Values written ``$name`` in a contract (``allowed: $domains``, ``max: $max_event_ts``) are run-time
parameters, filled in by the job that validates the table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

log = logging.getLogger(__name__)

_SIMPLE_TYPES = {
    "string": "StringType",
    "long": "LongType",
    "int": "IntegerType",
    "double": "DoubleType",
    "float": "FloatType",
    "boolean": "BooleanType",
    "timestamp": "TimestampType",
    "date": "DateType",
    "binary": "BinaryType",
}


# Delta collects file statistics (min/max, nulls) for these columns only; readers skip files by them
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
CDF_PROPERTY = "delta.enableChangeDataFeed"
DV_PROPERTY = "delta.enableDeletionVectors"


class ContractError(ValueError):
    """A contract file is malformed, or a table does not match its contract."""


@dataclass(frozen=True)
class Column:
    """One column of a contract."""

    name: str
    type: str
    nullable: bool = True
    description: str = ""
    allowed: Any = None  # list of values or "$param"
    min: Any = None  # number, ISO date or "$param"
    max: Any = None


@dataclass(frozen=True)
class Reference:
    """Referential integrity: every ``columns`` tuple of this table exists in ``table``."""

    columns: tuple[str, ...]
    table: str


@dataclass(frozen=True)
class Contract:
    """A table's contract: name, columns, partitioning, key, references, row-count bounds, and the columns
    Delta keeps file statistics for (``stats_columns``: the ones readers filter on; statistics of the others
    cost write time and skip nothing)."""

    table: str
    columns: tuple[Column, ...]
    description: str = ""
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()
    row_count: dict = field(default_factory=dict)
    stats_columns: tuple[str, ...] = ()  # Delta file statistics only for these (empty: Delta's default, the first 32)
    change_data_feed: bool = False  # Delta's change data feed: readers of changes (the next stage, services) read only them
    zorder_by: tuple[str, ...] = ()  # the lookup keys ``crossrec maintain --zorder`` clusters the files by
    # Delta deletion vectors: a MERGE or DELETE marks the rows it replaces instead of rewriting their files (a nightly
    # merge of 1% of the users would otherwise rewrite every file); readers go through crossrec.io.readers
    deletion_vectors: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.table} has no column {name!r}")

    def spark_schema(self):
        """The Spark ``StructType`` of the table."""
        from pyspark.sql import types as T

        return T.StructType([T.StructField(c.name, spark_type(c.type), c.nullable) for c in self.columns])

    def conform(self, df):
        """Select the contract's columns in order, cast to the contract's types; error on a missing column."""
        from pyspark.sql import functions as F

        missing = [c.name for c in self.columns if c.name not in df.columns]
        if missing:
            raise ContractError(f"{self.table}: frame lacks contract columns {missing}; has {df.columns}")
        return df.select(*[F.col(c.name).cast(spark_type(c.type)).alias(c.name) for c in self.columns])

    def ensure_table(self, spark, path: str) -> None:
        """Create the Delta table at ``path`` with this schema and partitioning, if it does not exist.

        An existing table is migrated when the contract only *adds* nullable-in-the-past columns (ALTER
        TABLE ADD COLUMNS); a removed, retyped or reordered column is an error that names it. A changed
        ``stats_columns`` is set on the table (files written later follow it).
        """
        from crossrec.io.delta import table_exists
        from crossrec.io.spark import is_connect

        if table_exists(spark, path):
            self._migrate(spark, path)
            return
        props = {STATS_COLUMNS_PROPERTY: ",".join(self.stats_columns)} if self.stats_columns else {}
        if self.change_data_feed:
            props[CDF_PROPERTY] = "true"
        if self.deletion_vectors:
            props[DV_PROPERTY] = "true"
        comment = " ".join(self.description.split())
        if is_connect(spark):  # delta.tables needs a Delta Connect plugin on the server; SQL needs only the extension
            _create_with_sql(self, spark, path, comment, props)
            return
        from delta.tables import DeltaTable

        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(self.spark_schema())
        if comment:
            builder = builder.comment(comment)
        if self.partition_by:
            builder = builder.partitionedBy(*self.partition_by)
        for k, v in props.items():
            builder = builder.property(k, v)
        builder.execute()

    def _migrate(self, spark, path: str) -> None:
        _migrate_table(self, spark, path)


def _create_with_sql(contract: Contract, spark, path: str, comment: str, props: dict[str, str]) -> None:
    """CREATE TABLE IF NOT EXISTS at ``path`` in SQL. SQL cannot declare array elements NOT NULL, so such a table's
    arrays admit nulls in the schema; the contract's checks still refuse them, and migration compares types without
    nullability."""
    from crossrec.io.delta import quote_path, sql_string

    cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}{'' if f.nullable else ' NOT NULL'}"
                     for f in contract.spark_schema().fields)
    sql = f"CREATE TABLE IF NOT EXISTS {quote_path(path)} ({cols}) USING DELTA"
    if contract.partition_by:
        sql += " PARTITIONED BY (" + ", ".join(f"`{c}`" for c in contract.partition_by) + ")"
    if comment:
        sql += f" COMMENT {sql_string(comment)}"
    if props:
        sql += " TBLPROPERTIES (" + ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in props.items()) + ")"
    spark.sql(sql)


def _migrate_table(contract: Contract, spark, path: str) -> None:
    from crossrec.io.delta import quote_path, set_table_properties, table_properties

    have = spark.read.format("delta").load(path).schema
    want = contract.spark_schema()
    have_names = [f.name for f in have.fields]
    want_names = [f.name for f in want.fields]
    if want_names[: len(have_names)] != have_names:
        raise ContractError(
            f"{contract.table} at {path} has columns {have_names}; the contract wants {want_names}. Only new "
            "columns at the end can be added in place: migrate the table (or rebuild it) by hand"
        )
    for f_have, f_want in zip(have.fields, want.fields):
        if f_have.dataType.simpleString() != f_want.dataType.simpleString():  # nullability aside (see _create_with_sql)
            raise ContractError(f"{contract.table} at {path}: column {f_have.name} is {f_have.dataType.simpleString()}, contract says {f_want.dataType.simpleString()}")
    new = want.fields[len(have_names):]
    if new:
        cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new)
        log.warning("%s: adding column(s) %s to the existing table at %s", contract.table, [f.name for f in new], path)
        spark.sql(f"ALTER TABLE {quote_path(path)} ADD COLUMNS ({cols})")
    props = table_properties(spark, path)
    if contract.change_data_feed and props.get(CDF_PROPERTY) != "true":
        log.info("%s: turning on the change data feed at %s (changes from now on)", contract.table, path)
        set_table_properties(spark, path, {CDF_PROPERTY: "true"})
    if contract.deletion_vectors and props.get(DV_PROPERTY) != "true":
        log.info("%s: turning on deletion vectors at %s", contract.table, path)
        set_table_properties(spark, path, {DV_PROPERTY: "true"})
    if contract.stats_columns:
        want_stats = ",".join(contract.stats_columns)
        if props.get(STATS_COLUMNS_PROPERTY) != want_stats:
            log.info("%s: file statistics for %s only (table property %s) at %s; files written from now on",
                     contract.table, want_stats, STATS_COLUMNS_PROPERTY, path)
            set_table_properties(spark, path, {STATS_COLUMNS_PROPERTY: want_stats})


def type_tree(name: str) -> str | tuple:
    """Parse a contract type name (``string``, ``map<string,string>``, ``array<float>``) without Spark: a simple
    name, ``("array", element)`` or ``("map", key, value)``. Readers without a JVM load contracts through this."""
    name = name.strip().replace(" ", "")
    if name in _SIMPLE_TYPES:
        return name
    if name.startswith("array<") and name.endswith(">"):
        return ("array", type_tree(name[6:-1]))
    if name.startswith("map<") and name.endswith(">"):
        k, _, v = name[4:-1].partition(",")
        return ("map", type_tree(k), type_tree(v))
    raise ContractError(f"unknown column type {name!r}; known: {sorted(_SIMPLE_TYPES)}, array<..>, map<..,..>")


def spark_type(name: str):
    """The Spark type of a contract type name (see :func:`type_tree`)."""
    from pyspark.sql import types as T

    def build(tree, in_map: bool = False):
        if isinstance(tree, str):
            return getattr(T, _SIMPLE_TYPES[tree])()
        if tree[0] == "array":  # Delta refuses a NOT NULL inside a map's values: there elements may be null
            return T.ArrayType(build(tree[1], in_map), containsNull=in_map)
        return T.MapType(build(tree[1], True), build(tree[2], True), valueContainsNull=True)

    return build(type_tree(name))


_KEYS = ("table", "description", "columns", "partition_by", "key", "references", "row_count", "stats_columns",
         "change_data_feed", "zorder_by", "deletion_vectors")


def _parse(data: dict, source: str) -> Contract:
    unknown = sorted(set(data) - set(_KEYS)) if isinstance(data, dict) else []
    if unknown:  # a misspelt key would otherwise be ignored without a word
        raise ContractError(f"{source}: unknown key(s) {unknown}; a contract has {list(_KEYS)}")
    try:
        cols = tuple(Column(**c) for c in data["columns"])
        refs = tuple(Reference(columns=tuple(r["columns"]), table=r["table"]) for r in data.get("references", []))
        contract = Contract(
            table=data["table"],
            columns=cols,
            description=data.get("description", ""),
            partition_by=tuple(data.get("partition_by", [])),
            key=tuple(data.get("key", [])),
            references=refs,
            row_count=dict(data.get("row_count", {})),
            stats_columns=tuple(data.get("stats_columns", [])),
            change_data_feed=bool(data.get("change_data_feed", False)),
            zorder_by=tuple(data.get("zorder_by", [])),
            deletion_vectors=bool(data.get("deletion_vectors", False)),
        )
    except (KeyError, TypeError) as e:
        raise ContractError(f"{source}: malformed contract ({e})") from e
    names = contract.column_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ContractError(f"{source}: duplicate column name(s) {dup}")
    ref_cols = tuple(c for r in contract.references for c in r.columns)
    for group, label in ((contract.partition_by, "partition_by"), (contract.key, "key"), (ref_cols, "references"),
                         (contract.stats_columns, "stats_columns"), (contract.zorder_by, "zorder_by")):
        bad = [c for c in group if c not in names]
        if bad:
            raise ContractError(f"{source}: {label} names unknown columns {bad}")
    both = [c for c in contract.stats_columns if c in contract.partition_by]
    if both:  # Delta refuses statistics on partition columns: their value is in the file's path already
        raise ContractError(f"{source}: stats_columns names partition columns {both}")
    for c in cols:
        try:
            type_tree(c.type)  # fail early on a typo
        except ContractError as e:
            raise ContractError(f"{source}: column {c.name}: {e}") from e
    return contract


@lru_cache(maxsize=None)
def load_contract(table: str) -> Contract:
    """Load the contract of ``table`` (``layer.name``) from ``schemas/<layer>_<name>.yaml``."""
    fname = table.replace(".", "_") + ".yaml"
    res = files("crossrec_schemas") / fname
    if not res.is_file():
        known = sorted(p.name for p in files("crossrec_schemas").iterdir() if p.name.endswith(".yaml"))
        raise ContractError(f"no contract for table {table!r} (looked for schemas/{fname}; have {known})")
    data = yaml.safe_load(res.read_text(encoding="utf-8"))
    contract = _parse(data, f"schemas/{fname}")
    if contract.table != table:
        raise ContractError(f"schemas/{fname} declares table {contract.table!r}, expected {table!r}")
    return contract


def all_contracts() -> list[Contract]:
    """Every contract in ``schemas/``."""
    out = []
    for p in sorted(files("crossrec_schemas").iterdir(), key=lambda p: p.name):
        if p.name.endswith(".yaml"):
            out.append(load_contract(yaml.safe_load(p.read_text(encoding="utf-8"))["table"]))
    return out
