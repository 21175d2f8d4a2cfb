"""Tests of crossrec.io.delta's SQL helpers: values and paths are escaped, never spliced into SQL."""
from __future__ import annotations

import pytest

from crossrec.io.delta import quote_path, sql_string


@pytest.mark.parametrize("value, literal", [("v1", "'v1'"), ("it's", r"'it\'s'"), ("a\\'b", r"'a\\\'b'"),
                                            ("x'); DROP TABLE t; --", r"'x\'); DROP TABLE t; --'")])
def test_sql_string_escapes_quotes_and_backslashes(value, literal):
    assert sql_string(value) == literal


def test_quote_path_escapes_backticks():
    assert quote_path("/lake/a`b") == "delta.`/lake/a``b`"


@pytest.mark.spark
def test_table_properties_round_trip_any_value(spark, tmp_path):
    from crossrec.io.delta import set_table_properties, table_properties

    path = str(tmp_path / "t`x")
    spark.range(1).write.format("delta").save(path)
    odd = {"crossrec.published.model_version": "m'1\\2 `; DROP", "crossrec.other": "plain"}
    set_table_properties(spark, path, odd)
    assert {k: v for k, v in table_properties(spark, path).items() if k.startswith("crossrec.")} == odd


@pytest.mark.spark
def test_a_merge_with_deletion_vectors_reads_the_same_without_spark(spark, tmp_path):
    """gold.user_sequences' contract turns on deletion vectors (a night's merge marks rows instead of rewriting
    files); the Spark-free reader applies them, with columns and filters, and counts rows as Spark does."""
    from deltalake import DeltaTable

    from crossrec.io.delta import merge_table, write_table
    from crossrec.io.readers import arrow_table, count_rows
    from crossrec.quality.contracts import load_contract

    contract = load_contract("gold.user_sequences")
    assert contract.deletion_vectors
    path = str(tmp_path / "user_sequences")

    def row(user: str, items: list[int], delete: bool | None = None) -> dict:
        r = {"user_id": user, "split": "train", "target_domain": "*", "item_idx": items, "domain_idx": [1] * len(items),
             "event_ts": [10] * len(items), "target_item_idx": None, "target_ts": None, "cold_start": False,
             "history_len": len(items)}
        return r if delete is None else {**r, "_delete": delete}

    write_table(spark, spark.createDataFrame([row(f"u{i}", [i, i + 1]) for i in range(50)], contract.spark_schema()).coalesce(1),
                contract, path, "append")
    change = spark.createDataFrame([row("u3", [7], False), row("u4", [4], True)],
                                   contract.spark_schema().add("_delete", "boolean"))
    merge_table(spark, change, contract, path, list(contract.key), delete_flag="_delete")
    table = DeltaTable(path)
    assert "deletionVectors" in (table.protocol().reader_features or [])  # the merge wrote one, no file rewrite
    got = arrow_table(path, columns=["user_id", "item_idx"], filters=[("split", "in", ["train"])]).to_pandas()
    want = spark.read.format("delta").load(path).select("user_id", "item_idx").toPandas()
    assert sorted(got.user_id) == sorted(want.user_id) and len(got) == 49
    assert list(got.loc[got.user_id == "u3", "item_idx"].iloc[0]) == [7]
    assert count_rows(table) == 49 and arrow_table(path, filters=[("user_id", "=", "u4")]).num_rows == 0


@pytest.mark.spark
def test_a_run_sizes_its_shuffles_and_the_session_gets_its_setting_back(spark, tmp_path):
    from crossrec.io.config import resolve_config
    from crossrec.io.runs import stage_run
    from crossrec.io.spark import ADAPTIVE, SHUFFLE_PARTITIONS, size_shuffles

    spark.conf.set(SHUFFLE_PARTITIONS, "64")
    adaptive = spark.conf.get(ADAPTIVE)
    try:
        cfg = resolve_config(None, {"lake_root": str(tmp_path / "lake"), "run_date": "2024-01-01"})
        with stage_run(spark, cfg, "clean", []):
            floor = spark.sparkContext.defaultParallelism
            assert size_shuffles(spark, 10, 1_000) == floor  # a small night: the cluster's parallelism
            assert spark.conf.get(ADAPTIVE) == "false"  # less than a partition: nothing for adaptive execution to do
            assert size_shuffles(spark, 10_000 * floor, 1_000) == 10 * floor
            assert spark.conf.get(ADAPTIVE) == adaptive  # a second call sizes from the session's own settings
            assert size_shuffles(spark, 10**12, 1_000) == 64  # never above the configured number
            assert spark.conf.get(SHUFFLE_PARTITIONS) == "64"
            size_shuffles(spark, 10, 1_000)
        assert spark.conf.get(SHUFFLE_PARTITIONS) == "64"  # restored when the run ends
        assert spark.conf.get(ADAPTIVE) == adaptive
    finally:
        spark.conf.set(SHUFFLE_PARTITIONS, "2")
