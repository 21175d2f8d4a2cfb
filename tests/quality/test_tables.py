"""Contracts as Delta tables (``Contract.ensure_table``): the statistics columns a contract names are set on
a new table, and on an existing one that was created without them."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from crossrec.quality.contracts import STATS_COLUMNS_PROPERTY, load_contract

pytestmark = pytest.mark.spark


def _properties(path: str) -> dict:
    from deltalake import DeltaTable

    return DeltaTable(path).metadata().configuration or {}


def test_statistics_columns_are_set_on_new_and_existing_tables(spark, tmp_path):
    import datetime as dt

    contract = load_contract("gold.recommendations")
    assert contract.stats_columns == ("user_id",)
    fresh = str(tmp_path / "fresh")
    contract.ensure_table(spark, fresh)
    assert _properties(fresh)[STATS_COLUMNS_PROPERTY] == "user_id"

    older = str(tmp_path / "older")  # as a table written before the contract named its statistics columns
    dataclasses.replace(contract, stats_columns=()).ensure_table(spark, older)
    assert STATS_COLUMNS_PROPERTY not in _properties(older)
    contract.ensure_table(spark, older)
    assert _properties(older)[STATS_COLUMNS_PROPERTY] == "user_id"

    row = (dt.date(2025, 1, 1), "u1", "books", 1, "b1", 0.5, "v1", "movies:m1", "history_item", None)
    spark.createDataFrame([row], contract.spark_schema()).write.format("delta").mode("append").save(older)
    from deltalake import DeltaTable

    adds = pa.table(DeltaTable(older).get_add_actions(flatten=True)).to_pandas()  # arro3 -> pyarrow
    assert sorted(c for c in adds.columns if c.startswith("min.")) == ["min.user_id"]
    assert adds["min.user_id"].tolist() == ["u1"] and adds.num_records.tolist() == [1]
