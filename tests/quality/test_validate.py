"""Great Expectations checkpoints from contracts, on real Spark frames: pass, fail, report."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from crossrec.cli.common import EXIT_VALIDATION, run_guarded
from crossrec.quality.contracts import load_contract
from crossrec.quality.validate import LOCAL_MAX_ROWS, Check, ValidationFailed, Validator

pytestmark = pytest.mark.spark
PARAMS = {"domains": ["books", "movies"], "min_event_ts": dt.datetime(1995, 1, 1), "max_event_ts": dt.datetime(2024, 7, 1)}
T = dt.datetime(2021, 1, 1)


def frames(spark, inter_rows):
    c = load_contract("silver.interactions")
    items = spark.createDataFrame([("b1", "books", "t", "t", None, {}, "r", "s", {})], load_contract("silver.items").spark_schema())
    return c, spark.createDataFrame(inter_rows, c.spark_schema()), items


ENGINES = {"pandas": LOCAL_MAX_ROWS, "spark": 0}  # Validator(local_max_rows=...): a small batch's engine


def engine(v: Validator, n: int) -> str:
    """The GE execution engine check number ``n`` of ``v`` ran on."""
    return type(v.context.data_sources.get(f"crossrec-{n}")).__name__.removesuffix("Datasource").lower()


@pytest.mark.parametrize("eng", ENGINES)
def test_valid_table_passes(spark, tmp_path, eng):
    c, df, items = frames(spark, [("u1", "books", "b1", "view", T, 1.0, "r", "s")])
    v = Validator(str(tmp_path), "run1", local_max_rows=ENGINES[eng])
    rep = v.check(c, df, PARAMS, expected_rows=1, references={"silver.items": items}, version=7)
    assert rep.success and rep.rows == 1 and rep.version == 7 and engine(v, 1) == eng
    assert json.loads((tmp_path / "run1" / "silver.interactions.json").read_text())["success"] is True


def test_a_batch_above_the_local_limit_is_validated_on_spark(spark, tmp_path):
    rows = [(f"u{i}", "books", "b1", "view", T, 1.0, "r", "s") for i in range(3)]
    c, df, items = frames(spark, rows)
    v = Validator(str(tmp_path), "big", local_max_rows=2)
    for expected in (None, 3):  # probed (3 rows collected, over the limit), then known from the row count
        assert v.check(c, df, PARAMS, expected_rows=expected, references={"silver.items": items}).success
    assert [engine(v, n) for n in (1, 2)] == ["spark", "spark"]
    assert v.check(c, df.limit(2), PARAMS, references={"silver.items": items}).success and engine(v, 3) == "pandas"


def test_check_all_runs_every_check_then_raises_the_first_failure(spark, tmp_path):
    c, df, items = frames(spark, [("u1", "books", "b1", "view", T, 1.0, "r", "s")])
    v = Validator(str(tmp_path), "all")
    ok = Check(load_contract("silver.items"), items, PARAMS, expected_rows=1, version=4)
    bad = Check(c, df, PARAMS, expected_rows=2, references={"silver.items": items}, version=5)  # 1 row written
    with pytest.raises(ValidationFailed) as e:
        v.check_all([bad, ok])
    assert (e.value.report.table, e.value.report.version) == ("silver.interactions", 5)
    report = lambda t: json.loads((tmp_path / "all" / f"{t}.json").read_text())  # noqa: E731
    assert report("silver.items")["success"] is True, "the passing check ran to its end beside the failing one"
    assert report("silver.interactions")["success"] is False
    pages = {p.name.split("#")[0] for p in (tmp_path / "all" / "docs" / "validations" / "silver").iterdir()}
    assert pages == {"interactions", "items"}, "the Data Docs, built after both ended, show both checks"
    good = Check(c, df, PARAMS, expected_rows=1, references={"silver.items": items}, version=6)
    reports = v.check_all([ok, good])
    assert [(r.table, r.version, r.success, r.rows) for r in reports] == [("silver.items", 4, True, 1),
                                                                         ("silver.interactions", 6, True, 1)]


def test_data_docs_are_built_once_by_finish_and_at_once_by_a_failed_check(spark, tmp_path, monkeypatch):
    c, df, items = frames(spark, [("u1", "books", "b1", "view", T, 1.0, "r", "s")])
    v = Validator(str(tmp_path), "docs")
    builds = []
    real = v.context.build_data_docs
    monkeypatch.setattr(v.context, "build_data_docs", lambda **kw: builds.append(1) or real(**kw))
    index = tmp_path / "docs" / "docs" / "index.html"
    for n in (1, 2):
        rep = v.check(c, df, PARAMS, expected_rows=1, references={"silver.items": items}, version=n)
    assert builds == [] and not index.exists() and rep.docs_url == index.as_uri()
    pages = lambda: len(list((index.parent / "validations").rglob("*.html")))  # noqa: E731
    assert v.finish() == index.as_uri() and builds == [1] and pages() == 2
    assert v.finish() == index.as_uri() and builds == [1], "nothing new to render"
    with pytest.raises(ValidationFailed):  # a failed check's page is there before the job stops
        v.check(c, df, PARAMS, expected_rows=2, references={"silver.items": items}, version=3)
    assert builds == [1, 1] and (index.parent / "validations" / "silver" / "interactions#3").is_dir()


@pytest.mark.parametrize("eng", ENGINES)
def test_each_broken_rule_is_reported(spark, tmp_path, eng):
    rows = [
        ("u1", "books", "b1", "view", T, 1.0, "r", "s"),
        ("u1", "books", "b1", "view", T, 1.0, "r", "s"),  # duplicate key
        ("u2", "games", "b1", "view", T, 1.0, "r", "s"),  # domain not allowed, item not in games catalog
        ("u3", "books", "b9", "view", dt.datetime(1990, 1, 1), -2.0, "r", "s"),  # dangling item, too old, negative
    ]
    c, df, items = frames(spark, rows)
    with pytest.raises(ValidationFailed) as e:
        Validator(str(tmp_path), "run2", local_max_rows=ENGINES[eng]).check(c, df, PARAMS, expected_rows=3,
                                                                           references={"silver.items": items}, version=3)
    failed = {(f["expectation"], str(f["target"])) for f in e.value.report.failures}
    assert failed == {
        ("expect_compound_columns_to_be_unique", str(["user_id", "domain", "item_id", "event_type", "event_ts"])),
        ("expect_column_values_to_be_in_set", "domain"),
        ("expect_column_values_to_be_between", "event_ts"),
        ("expect_column_values_to_be_between", "weight"),
        ("expect_column_values_to_not_be_null", "__ref_silver_items"),
        ("expect_table_row_count_to_be_between", "table"),
    }
    text = str(e.value)
    # a failed suite is re-run for its details: counts and offending values, not just pass/fail
    assert "silver.interactions v3: FAILED" in text and "games" in text and "report:" in text
    assert e.value.report.rows == 4 and "1 unexpected" in text
    saved = json.loads((tmp_path / "run2" / "silver.interactions.json").read_text())
    assert saved["success"] is False and len([r for r in saved["results"] if not r["success"]]) == 6


def test_failed_checkpoint_exits_3(spark, tmp_path):
    c, df, items = frames(spark, [("u1", "nope", "b1", "view", T, 1.0, "r", "s")])

    def body():
        Validator(str(tmp_path), "run3").check(c, df, PARAMS, references={"silver.items": items})

    assert run_guarded("test", body) == EXIT_VALIDATION


def test_spark_batches_are_cached_only_for_suites_with_cross_row_queries(spark, tmp_path, monkeypatch):
    """A contract's expectations share GE's aggregate passes, so their batch is not cached (a cache of the whole table
    costs more than it saves); a suite with cross-row queries caches it for them and drops that copy afterwards."""
    from crossrec.quality.validate import unexpected_rows_check

    c, df, items = frames(spark, [("u1", "books", "b1", "view", T, 1.0, "r", "s")])
    cached = []
    persist = type(df).persist
    monkeypatch.setattr(type(df), "persist", lambda self, *a, **k: cached.append(self) or persist(self, *a, **k))
    v = Validator(str(tmp_path), "cache", local_max_rows=0)
    assert v.check(c, df, PARAMS, references={"silver.items": items}).success and engine(v, 1) == "spark"
    assert cached == []
    query = unexpected_rows_check("SELECT user_id FROM {batch} WHERE weight < 0", "no negative weight")
    assert v.check(c, df, PARAMS, references={"silver.items": items}, extra_expectations=[query]).success
    assert len(cached) == 1 and not df.is_cached and not cached[0].is_cached


def test_cross_row_check_runs_its_query_once_to_pass_and_names_offending_rows_when_it_fails(spark, tmp_path):
    """``unexpected_rows_check``: a passing suite runs the query once (stock GE runs it twice: the row count and the
    first rows, which pass/fail discards); a failing one is re-run for its report, which names the first rows."""
    from crossrec.quality.validate import unexpected_rows_check

    from pyspark.sql import functions as F

    seen = spark.sparkContext.accumulator(0)

    @F.udf("boolean")
    def counted(weight):  # counts the rows each run of the query reads
        seen.add(1)
        return weight < 0

    spark.udf.register("crossrec_test_counted", counted)
    rows = [(f"u{i}", "books", "b1", "view", T, 1.0, "r", "s") for i in range(6)]
    c, df, items = frames(spark, rows)
    def check():  # an expectation belongs to one suite: a new one for each
        return unexpected_rows_check("SELECT user_id, weight FROM {batch} WHERE crossrec_test_counted(weight)",
                                     "no negative weight (counted)")

    rep = Validator(str(tmp_path), "once").check(c, df, PARAMS, references={"silver.items": items},
                                                 extra_expectations=[check()])
    assert rep.success
    assert seen.value == len(rows), f"the query read {seen.value} rows for a {len(rows)}-row batch: run more than once"

    bad = rows[:5] + [("u9", "books", "b1", "view", T, -3.0, "r", "s")]
    c, df, items = frames(spark, bad)
    with pytest.raises(ValidationFailed) as e:
        Validator(str(tmp_path), "fails").check(c, df, PARAMS, references={"silver.items": items},
                                                extra_expectations=[check()])
    (failure,) = [f for f in e.value.report.failures if f["target"] == "no negative weight (counted)"]
    assert failure["observed"].startswith("1 unexpected") and "u9" in failure["observed"] and "-3.0" in failure["observed"]


def test_reports_of_bronze_tables_show_no_raw_user_id():
    from crossrec.quality.validate import _examples

    rows = [{"user_id": "alice", "item_id": "b1"}, {"global_user_id": "A-17", "domain": "x"}]
    assert _examples(rows, "description", raw_ids=True) == [{"user_id": "<user id>", "item_id": "b1"},
                                                             {"global_user_id": "<user id>", "domain": "x"}]
    assert _examples(["alice", "bob"], "user_id", raw_ids=True) == ["<user id>", "<user id>"]
    assert _examples(["alice"], ["domain", "user_id"], raw_ids=True) == ["<user id>"]
    assert _examples(["b1"], "item_id", raw_ids=True) == ["b1"]
    assert _examples(rows, "description", raw_ids=False) == rows  # silver/gold hold pseudonyms: shown
