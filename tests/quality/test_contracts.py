"""Tests of the table contracts (schemas/*.yaml, crossrec.quality.contracts) and of the Great Expectations
suite derived from them (crossrec.quality.validate.build_expectations). No Spark session is started:
``pyspark.sql.types`` and the GE expectation classes are plain Python objects."""
from __future__ import annotations

import datetime as dt
from importlib.resources import files
from pathlib import Path

import great_expectations.expectations as gxe
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pyspark.sql import types as T

from crossrec.quality.contracts import ContractError, _parse, all_contracts, load_contract, spark_type
from crossrec.quality.validate import REF_MARKER, build_expectations

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
YAMLS = sorted(SCHEMAS.glob("*.yaml"))
RAW = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in YAMLS}
TABLES = sorted(d["table"] for d in RAW.values())

# contract type name -> Spark's simpleString, written out independently of the parser
SIMPLE = {
    "string": "string", "long": "bigint", "int": "int", "double": "double", "float": "float",
    "boolean": "boolean", "timestamp": "timestamp", "date": "date", "binary": "binary",
}
PARAMS = {
    "domains": ["books", "movies"],
    "min_event_ts": dt.datetime(1995, 1, 1),
    "max_event_ts": dt.datetime(2024, 6, 30, 23, 59, 59),
    "quarantine_reasons": ["bad_timestamp", "unknown_item"],
    "k": 10,
}


def _expected_simple_string(contract_type: str) -> str:
    t = contract_type.replace(" ", "")
    if t.startswith("map<"):
        k, v = t[4:-1].split(",", 1)
        return f"map<{SIMPLE[k]},{_expected_simple_string(v)}>"
    if t.startswith("array<"):
        return f"array<{_expected_simple_string(t[6:-1])}>"
    return SIMPLE[t]


def _of(exps, cls):
    return [e for e in exps if type(e) is cls]


# -------------------------------------------------------------------------------------- contract files
# every table the pipeline writes, written out: ingest (bronze), clean (silver), features and score (gold), the
# run/accounting/erasure records (ops)
PIPELINE_TABLES = {
    "bronze.interactions", "bronze.items", "bronze.identity_map",
    "silver.interactions", "silver.items", "silver.identity_map", "silver.quarantine", "silver.item_entities",
    "gold.item_index", "gold.user_sequences", "gold.item_embeddings", "gold.recommendations", "gold.metrics",
    "ops.accounting", "ops.runs", "ops.erasures",
}


def test_there_are_contracts():
    """One contract per table the pipeline writes: no table without one, no contract without a table."""
    assert len(TABLES) == len(set(TABLES)), f"a table has two contracts: {TABLES}"
    assert set(TABLES) == PIPELINE_TABLES
    assert {c.table for c in all_contracts()} == PIPELINE_TABLES


def test_the_library_names_only_contract_tables():
    """The table lists of the library (the gold inputs of training, the tables erasure rewrites) are contract tables."""
    from crossrec.bench.quality import GOLD_TABLES as BENCH_GOLD_TABLES
    from crossrec.data.forget import AUDIT, BRONZE_TABLES, PSEUDONYM_TABLES
    from crossrec.train.config import GOLD_TABLES

    named = {*GOLD_TABLES, *BENCH_GOLD_TABLES, *PSEUDONYM_TABLES, *BRONZE_TABLES, AUDIT}
    assert named <= PIPELINE_TABLES, named - PIPELINE_TABLES


def test_all_contracts_loads_every_yaml():
    assert [c.table for c in all_contracts()] == [RAW[p.name]["table"] for p in YAMLS]
    assert sorted(p.name for p in files("crossrec_schemas").iterdir() if p.name.endswith(".yaml")) == [p.name for p in YAMLS]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_file_name_matches_table(path):
    assert path.stem == RAW[path.name]["table"].replace(".", "_")


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_contract_matches_its_yaml(path):
    raw = RAW[path.name]
    c = load_contract(raw["table"])
    assert c.column_names == [col["name"] for col in raw["columns"]]
    assert [col.type for col in c.columns] == [col["type"] for col in raw["columns"]]
    assert list(c.partition_by) == raw.get("partition_by", [])
    assert list(c.key) == raw.get("key", [])
    assert [(list(r.columns), r.table) for r in c.references] == [(r["columns"], r["table"]) for r in raw.get("references", [])]
    assert list(c.stats_columns) == raw.get("stats_columns", [])


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_spark_schema_matches_yaml(path):
    raw = RAW[path.name]
    schema = load_contract(raw["table"]).spark_schema()
    assert isinstance(schema, T.StructType)
    assert [f.name for f in schema.fields] == [col["name"] for col in raw["columns"]]
    assert [f.nullable for f in schema.fields] == [col.get("nullable", True) for col in raw["columns"]]
    assert [f.dataType.simpleString() for f in schema.fields] == [_expected_simple_string(col["type"]) for col in raw["columns"]]


@pytest.mark.parametrize("table", TABLES)
def test_keys_partitions_and_references_name_real_columns(table):
    c = load_contract(table)
    names = set(c.column_names)
    assert len(names) == len(c.column_names), "duplicate column names"
    assert set(c.partition_by) <= names
    assert set(c.key) <= names
    for ref in c.references:
        assert set(ref.columns) <= names
        assert set(ref.columns) <= set(load_contract(ref.table).column_names)
        # the referenced columns identify a row of the referenced table
        assert set(load_contract(ref.table).key) == set(ref.columns)


@pytest.mark.parametrize("table", TABLES)
def test_key_columns_are_not_nullable(table):
    c = load_contract(table)
    assert [k for k in c.key if c.column(k).nullable] == []
    assert [k for k in c.partition_by if c.column(k).nullable] == []


def test_design_columns_of_silver_interactions():
    c = load_contract("silver.interactions")
    assert c.column_names == ["user_id", "domain", "item_id", "event_type", "event_ts", "weight", "run_id", "source"]
    assert c.partition_by == ("domain",)
    assert [col.name for col in c.columns if col.nullable] == []
    assert c.spark_schema()["event_ts"].dataType == T.TimestampType()
    assert c.spark_schema()["weight"].dataType == T.DoubleType()


def test_design_columns_of_silver_items():
    c = load_contract("silver.items")
    assert c.column_names == ["item_id", "domain", "title", "text", "category", "attributes", "run_id", "source", "vectors"]
    assert c.key == ("domain", "item_id")
    assert c.spark_schema()["attributes"].dataType == T.MapType(T.StringType(), T.StringType(), True)
    assert c.spark_schema()["vectors"].dataType == T.MapType(T.StringType(), T.ArrayType(T.FloatType(), True), True)


def test_recommendations_keep_file_statistics_for_the_lookup_column_only():
    # readers look a user up (crossrec.io.readers.read_recommendations); the score stage writes user ranges per file
    assert load_contract("gold.recommendations").stats_columns == ("user_id",)


def test_unknown_table_names_the_file_it_looked_for():
    with pytest.raises(ContractError, match=r"schemas/silver_nope\.yaml"):
        load_contract("silver.nope")


def test_column_lookup():
    c = load_contract("silver.items")
    assert c.column("text").nullable is False
    with pytest.raises(KeyError, match="silver.items has no column 'txt'"):
        c.column("txt")


# ------------------------------------------------------------------------------------------- spark_type
@pytest.mark.parametrize(
    "name, expected",
    [
        ("string", T.StringType()),
        ("long", T.LongType()),
        ("int", T.IntegerType()),
        ("double", T.DoubleType()),
        ("timestamp", T.TimestampType()),
        ("date", T.DateType()),
        ("boolean", T.BooleanType()),
        ("map<string,string>", T.MapType(T.StringType(), T.StringType(), valueContainsNull=True)),
        (" map< string , long > ", T.MapType(T.StringType(), T.LongType(), valueContainsNull=True)),
        ("array<float>", T.ArrayType(T.FloatType(), containsNull=False)),
        ("array<array<int>>", T.ArrayType(T.ArrayType(T.IntegerType(), False), False)),
        ("map<string,array<double>>", T.MapType(T.StringType(), T.ArrayType(T.DoubleType(), True), True)),  # Delta: no NOT NULL in map values
    ],
)
def test_spark_type(name, expected):
    assert spark_type(name) == expected


@pytest.mark.parametrize("name", ["varchar", "String", "bigint", "array<>", "array<varchar>", "map<string>",
                                  "map<string,>", "array<int", "struct<a:int>", ""])
def test_unknown_spark_type(name):
    with pytest.raises(ContractError, match="unknown column type"):
        spark_type(name)


SIMPLE_SPARK = {"string": T.StringType(), "long": T.LongType(), "int": T.IntegerType(), "double": T.DoubleType(),
                "float": T.FloatType(), "boolean": T.BooleanType(), "timestamp": T.TimestampType(),
                "date": T.DateType(), "binary": T.BinaryType()}
simple_types = st.sampled_from(sorted(SIMPLE_SPARK)).map(lambda n: (n, SIMPLE_SPARK[n]))


def _compound(children):
    arrays = children.map(lambda c: (f"array<{c[0]}>", T.ArrayType(c[1], containsNull=False)))
    maps = st.tuples(simple_types, children).map(
        lambda kv: (f"map<{kv[0][0]},{kv[1][0]}>", T.MapType(kv[0][1], kv[1][1], valueContainsNull=True)))
    return arrays | maps


def _in_maps_nullable(t, in_map: bool = False):
    """``t`` with the arrays inside a map's key or value free to hold nulls (Delta refuses NOT NULL there)."""
    if isinstance(t, T.ArrayType):
        return T.ArrayType(_in_maps_nullable(t.elementType, in_map), containsNull=in_map)
    if isinstance(t, T.MapType):
        return T.MapType(_in_maps_nullable(t.keyType, True), _in_maps_nullable(t.valueType, True), True)
    return t


@given(st.recursive(simple_types, _compound, max_leaves=6), st.sampled_from(["", " "]))
def test_spark_type_parses_nested_types(pair, pad):
    text, expected = pair
    assert spark_type(pad + text.replace(",", pad + "," + pad) + pad) == _in_maps_nullable(expected)


# ---------------------------------------------------------------------------------------------- _parse
GOOD = {"table": "t.x", "columns": [{"name": "a", "type": "string", "nullable": False}, {"name": "b", "type": "long"}]}


def _load_bad(tmp_path: Path, text: str):
    p = tmp_path / "bad.yaml"
    p.write_text(text, encoding="utf-8")
    return _parse(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))


def test_parse_minimal_contract():
    c = _parse(GOOD, "good.yaml")
    assert (c.table, c.column_names, c.key, c.partition_by, c.references, c.row_count, c.stats_columns) == (
        "t.x", ["a", "b"], (), (), (), {}, ())
    assert [col.nullable for col in c.columns] == [False, True]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("columns: [{name: a, type: string}]\n", "'table'"),
        ("table: t.x\n", "'columns'"),
        ("table: t.x\ncolumns: [{name: a}]\n", "'type'"),
        ("table: t.x\ncolumns: [{name: a, type: string, colour: red}]\n", "'colour'"),
        ("table: t.x\ncolumns: [a, b]\n", "malformed contract"),
        ("table: t.x\ncolumns: [{name: a, type: string}]\nreferences: [{table: t.y}]\n", "'columns'"),
        ("table: t.x\ncolumns: [{name: a, type: string}]\nkey: [b]\n", "key names unknown columns ['b']"),
        ("table: t.x\ncolumns: [{name: a, type: string}]\npartition_by: [b]\n", "partition_by names unknown columns ['b']"),
        ("table: t.x\ncolumns: [{name: a, type: strng}]\n", "unknown column type 'strng'"),
        ("table: t.x\ncolumns: [{name: a, type: string}]\nstats_columns: [b]\n", "stats_columns names unknown columns ['b']"),
        ("table: t.x\ncolumns: [{name: a, type: string}, {name: b, type: long}]\npartition_by: [a]\nstats_columns: [a, b]\n",
         "stats_columns names partition columns ['a']"),
        ("table: t.x\ncolumns: [{name: a, type: string}]\nstat_columns: [a]\n", "unknown key(s) ['stat_columns']"),
        ("", "malformed contract"),
    ],
)
def test_malformed_contract(tmp_path, text, needle):
    with pytest.raises(ContractError) as e:
        _load_bad(tmp_path, text)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        "table: t.x\ncolumns: [{name: a, type: string}]\nkey: [b]\n",
        "table: t.x\ncolumns: [{name: a}]\n",
        pytest.param("table: t.x\ncolumns: [{name: a, type: strng}]\n", id="type-typo"),
    ],
)
def test_malformed_contract_error_names_the_file(tmp_path, text):
    with pytest.raises(ContractError, match="bad.yaml"):
        _load_bad(tmp_path, text)


def test_reference_to_unknown_column_is_rejected(tmp_path):
    with pytest.raises(ContractError, match="nope"):
        _load_bad(tmp_path, "table: t.x\ncolumns: [{name: a, type: string}]\n"
                            "references: [{columns: [nope], table: silver.items}]\n")


def test_duplicate_column_is_rejected(tmp_path):
    with pytest.raises(ContractError, match="'a'"):
        _load_bad(tmp_path, "table: t.x\ncolumns: [{name: a, type: string}, {name: a, type: long}]\n")


# --------------------------------------------------------------------------------------- build_expectations
@pytest.mark.parametrize("table", TABLES)
def test_one_not_null_per_non_nullable_column(table):
    c = load_contract(table)
    raw = RAW[table.replace(".", "_") + ".yaml"]
    exps = build_expectations(c, PARAMS)
    markers = [REF_MARKER.format(r.table.replace(".", "_")) for r in c.references]
    not_null = [e.column for e in _of(exps, gxe.ExpectColumnValuesToNotBeNull)]
    assert not_null == [col["name"] for col in raw["columns"] if col.get("nullable", True) is False] + markers


@pytest.mark.parametrize("table", TABLES)
def test_column_set_is_exact_and_includes_reference_markers(table):
    c = load_contract(table)
    (match,) = _of(build_expectations(c, PARAMS), gxe.ExpectTableColumnsToMatchSet)
    markers = [f"__ref_{r.table.replace('.', '_')}" for r in c.references]
    assert list(match.column_set) == c.column_names + markers
    assert match.exact_match is True


def test_reference_marker_of_silver_interactions():
    exps = build_expectations(load_contract("silver.interactions"), PARAMS)
    (match,) = _of(exps, gxe.ExpectTableColumnsToMatchSet)
    assert "__ref_silver_items" in match.column_set
    assert "__ref_silver_items" in [e.column for e in _of(exps, gxe.ExpectColumnValuesToNotBeNull)]


@pytest.mark.parametrize("table", ["silver.interactions", "silver.items", "bronze.interactions", "bronze.items"])
def test_domains_param_fills_the_allowed_set(table):
    exps = build_expectations(load_contract(table), {**PARAMS, "domains": ["music", "books"]})
    in_set = {e.column: list(e.value_set) for e in _of(exps, gxe.ExpectColumnValuesToBeInSet)}
    assert in_set == {"domain": ["music", "books"]}


def test_literal_allowed_list_and_param_in_one_contract():
    exps = build_expectations(load_contract("silver.quarantine"), PARAMS)
    in_set = {e.column: list(e.value_set) for e in _of(exps, gxe.ExpectColumnValuesToBeInSet)}
    assert in_set == {
        "source_table": ["bronze.interactions", "bronze.items", "bronze.identity_map"],
        "reason": PARAMS["quarantine_reasons"],
    }


@pytest.mark.parametrize("table, param", [("silver.items", "$domains"), ("silver.quarantine", "$quarantine_reasons"),
                                          ("silver.interactions", "$min_event_ts")])
def test_missing_param_is_named(table, param):
    params = {k: v for k, v in PARAMS.items() if k != param[1:]}
    with pytest.raises(ContractError) as e:
        build_expectations(load_contract(table), params)
    assert f"'{param}'" in str(e.value)
    assert table in str(e.value)


def test_contract_without_params_needs_none():
    exps = build_expectations(load_contract("ops.accounting"))
    between = {e.column: (e.min_value, e.max_value) for e in _of(exps, gxe.ExpectColumnValuesToBeBetween)}
    assert between == {c: (0, None) for c in ("rows_in", "rows_out", "quarantined", "duplicates", "skipped", "withheld")}


def test_event_ts_bounds_from_params():
    exps = build_expectations(load_contract("silver.interactions"), PARAMS)
    between = {e.column: (e.min_value, e.max_value) for e in _of(exps, gxe.ExpectColumnValuesToBeBetween)}
    assert between == {"event_ts": (PARAMS["min_event_ts"], PARAMS["max_event_ts"]), "weight": (0, None)}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2020-02-03", dt.datetime(2020, 2, 3)),
        ("2020-02-03T04:05:06", dt.datetime(2020, 2, 3, 4, 5, 6)),
        (dt.date(2020, 2, 3), dt.datetime(2020, 2, 3)),
        (dt.datetime(2020, 2, 3, 4, 5, tzinfo=dt.timezone.utc), dt.datetime(2020, 2, 3, 4, 5)),
    ],
)
def test_timestamp_bounds_become_naive_datetimes(value, expected):
    exps = build_expectations(load_contract("silver.interactions"), {**PARAMS, "min_event_ts": value})
    (ts,) = [e for e in _of(exps, gxe.ExpectColumnValuesToBeBetween) if e.column == "event_ts"]
    assert ts.min_value == expected
    assert ts.min_value.tzinfo is None


@pytest.mark.parametrize("value", [dt.datetime(2020, 2, 3, 6, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                                   "2020-02-03T06:05:00+02:00"])
def test_aware_bounds_are_converted_to_utc(value):
    exps = build_expectations(load_contract("silver.interactions"), {**PARAMS, "min_event_ts": value})
    (ts,) = [e for e in _of(exps, gxe.ExpectColumnValuesToBeBetween) if e.column == "event_ts"]
    assert ts.min_value == dt.datetime(2020, 2, 3, 4, 5)
    assert ts.min_value.tzinfo is None


@pytest.mark.parametrize("table", TABLES)
def test_key_uniqueness(table):
    c = load_contract(table)
    exps = build_expectations(c, PARAMS)
    single = [e.column for e in _of(exps, gxe.ExpectColumnValuesToBeUnique)]
    compound = [list(e.column_list) for e in _of(exps, gxe.ExpectCompoundColumnsToBeUnique)]
    if not c.key:
        assert (single, compound) == ([], [])
    elif len(c.key) == 1:
        assert (single, compound) == ([c.key[0]], [])
    else:
        assert (single, compound) == ([], [list(c.key)])


def test_single_column_key():
    c = _parse({"table": "t.x", "key": ["a"], "columns": [{"name": "a", "type": "string"}]}, "x.yaml")
    exps = build_expectations(c)
    assert [e.column for e in _of(exps, gxe.ExpectColumnValuesToBeUnique)] == ["a"]
    assert _of(exps, gxe.ExpectCompoundColumnsToBeUnique) == []


@given(n=st.integers(min_value=0, max_value=10**12))
def test_expected_rows_pins_the_row_count(n):
    exps = build_expectations(load_contract("silver.items"), PARAMS, expected_rows=n)
    (rc,) = _of(exps, gxe.ExpectTableRowCountToBeBetween)
    assert (rc.min_value, rc.max_value) == (n, n)


def test_no_row_count_expectation_without_bounds():
    assert _of(build_expectations(load_contract("silver.items"), PARAMS), gxe.ExpectTableRowCountToBeBetween) == []


def test_contract_row_count_bounds_and_expected_rows_override():
    c = _parse({**GOOD, "row_count": {"min": 1}}, "x.yaml")
    (rc,) = _of(build_expectations(c), gxe.ExpectTableRowCountToBeBetween)
    assert (rc.min_value, rc.max_value) == (1, None)
    (rc,) = _of(build_expectations(c, expected_rows=5), gxe.ExpectTableRowCountToBeBetween)
    assert (rc.min_value, rc.max_value) == (5, 5)


def test_full_suite_of_a_small_contract():
    c = _parse({"table": "t.x", "key": ["a", "b"], "row_count": {"min": 2, "max": 9},
                "references": [{"columns": ["a"], "table": "t.y"}],
                "columns": [{"name": "a", "type": "string", "nullable": False, "allowed": ["p", "q"]},
                            {"name": "b", "type": "long", "min": "$lo", "max": 10}]}, "x.yaml")
    exps = build_expectations(c, {"lo": 3})
    fields = ("column", "column_set", "exact_match", "value_set", "min_value", "max_value", "column_list")
    described = [(type(e).__name__, {k: v for k, v in e.dict().items() if k in fields and v is not None}) for e in exps]
    assert described == [
        ("ExpectTableColumnsToMatchSet", {"column_set": ["a", "b", "__ref_t_y"], "exact_match": True}),
        ("ExpectColumnValuesToNotBeNull", {"column": "a"}),
        ("ExpectColumnValuesToBeInSet", {"column": "a", "value_set": ["p", "q"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "b", "min_value": 3, "max_value": 10}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["a", "b"]}),
        ("ExpectColumnValuesToNotBeNull", {"column": "__ref_t_y"}),
        ("ExpectTableRowCountToBeBetween", {"min_value": 2, "max_value": 9}),
    ]
