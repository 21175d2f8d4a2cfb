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
