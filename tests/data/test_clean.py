"""Clean transforms on tiny inline frames with explicit schemas (real Spark, no mocks)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from crossrec.data import clean as C
from crossrec.quality.contracts import load_contract

pytestmark = pytest.mark.spark

MIN_TS = dt.datetime(1995, 1, 1)
MAX_TS = dt.datetime(2024, 7, 1)  # run date 2024-06-30, exclusive end
INGESTED = dt.datetime(2024, 6, 30, 12, 0, 0)


def bronze_interactions(spark, rows):
    """rows: (domain, user_id, item_id, event_type, event_ts, weight, corrupt_record[, source_file])."""
    full = [(*r, *([] if len(r) == 8 else ["f.csv"]), "sha", "run1", INGESTED) for r in rows]
    return spark.createDataFrame(full, load_contract("bronze.interactions").spark_schema())


def bronze_items(spark, rows, vectors=None):
    """rows: (domain, item_id, title, category, text_fields, attributes, corrupt_record[, source_file, ingested_at]);
    ``vectors``: each row's raw vector map (default none)."""
    full = []
    for k, r in enumerate(rows):
        src, ing = (r[7], r[8]) if len(r) == 9 else ("items.csv", INGESTED)
        full.append((*r[:7], src, "sha", "run1", ing, vectors[k] if vectors else None))
    return spark.createDataFrame(full, load_contract("bronze.items").spark_schema())


def classify(spark, rows, fmt="iso8601"):
    df = bronze_interactions(spark, rows)
    return C.classify_interactions(df, {"books": fmt, "movies": "epoch_s", "music": "epoch_ms"}, {"books": "interaction"}, MIN_TS, MAX_TS)


def reasons(df):
    return [r[C.REASON] for r in df.orderBy("source", "item_id").select(C.REASON).collect()]


# the typed columns of classify_interactions (its internal _record and _ingested_at aside)
TYPED = ("domain string, local_user_id string, item_id string, event_type string, event_ts timestamp, weight double, "
         "run_id string, source string, _status string, _reason string, _detail string")


def columns_of(ddl):
    return [c.split()[0] for c in ddl.split(", ")]


def test_valid_row_is_typed(spark):
    out = classify(spark, [("books", " u1 ", "b1", "View", "2021-01-01T10:00:00Z", "2.5", None)])
    expected = spark.createDataFrame(
        [("books", "u1", "b1", "view", dt.datetime(2021, 1, 1, 10, 0, 0), 2.5, "run1", "f.csv", C.OK, None, None)], TYPED)
    assertDataFrameEqual(out.select(columns_of(TYPED)), expected)
    assert out.where(F.col("_record").isNotNull()).count() == 0  # only quarantined rows carry their bronze record


OUT_OF_RANGE = " outside [1995-01-01T00:00:00, 2024-07-01T00:00:00)"


@pytest.mark.parametrize(
    "raw, reason, detail",
    [
        (("books", "u1", "b1", "view", "2021-01-01", "1", "u1,b1"), "malformed_line",
         "a line of 5 characters that does not parse as the file's columns (the line is in bronze)"),
        (("books", "  ", "b1", "view", "2021-01-01", "1", None), "missing_user_id", "user_id is empty"),
        (("books", None, "b1", "view", "2021-01-01", "1", None), "missing_user_id", "user_id is empty"),
        (("books", "u1", "", "view", "2021-01-01", "1", None), "missing_item_id", "item_id is empty"),
        (("books", "u1", "b1", "view", None, "1", None), "missing_timestamp", "event_ts is empty"),
        (("books", "u\ufffd1", "b1", "view", "2021-01-01", "1", None), "invalid_encoding",
         "bytes not valid in the file's encoding in user_id/item_id/event_type"),
        (("books", "u" * 600, "b1", "view", "2021-01-01", "1", None), "value_too_long", "an id or event_type longer than 512 chars"),
        (("books", "u1", "b1", "view", "yesterday", "1", None), "unparseable_timestamp", "event_ts=yesterday"),
        (("books", "u1", "b1", "view", "1990-05-01T00:00:00Z", "1", None), "timestamp_out_of_range", "event_ts=1990-05-01T00:00:00Z" + OUT_OF_RANGE),
        (("books", "u1", "b1", "view", "2099-01-01T00:00:00Z", "1", None), "timestamp_out_of_range", "event_ts=2099-01-01T00:00:00Z" + OUT_OF_RANGE),
        (("books", "u1", "b1", "view", "2024-07-01T00:00:00Z", "1", None), "timestamp_out_of_range", "event_ts=2024-07-01T00:00:00Z" + OUT_OF_RANGE),
        (("books", "u1", "b1", "view", "2021-01-01", "lots", None), "unparseable_weight", "weight=lots"),
        (("books", "u1", "b1", "view", "2021-01-01", "-1", None), "weight_out_of_range", "weight=-1"),
        (("books", "u1", "b1", "view", "2021-01-01", "NaN", None), "weight_out_of_range", "weight=NaN"),
        (("books", "u1", "b1", "view", "2021-01-01", "Infinity", None), "weight_out_of_range", "weight=Infinity"),
        (("movies", "u1", "m1", "view", "1e30", "1", None), "timestamp_out_of_range", "event_ts=1e30" + OUT_OF_RANGE),
        (("movies", "u1", "m1", "view", "12:00", "1", None), "unparseable_timestamp", "event_ts=12:00"),
    ],
)
def test_bad_rows_get_their_reason(spark, raw, reason, detail):
    out = classify(spark, [raw]).select(C.STATUS, C.REASON, C.DETAIL)
    expected = spark.createDataFrame([(C.QUARANTINED, reason, detail)], "_status string, _reason string, _detail string")
    assertDataFrameEqual(out, expected)


def test_timestamp_formats(spark):
    rows = [
        ("books", "u", "b1", None, "2021-03-04 05:06:07", None, None),
        ("movies", "u", "m1", None, "1614834367", None, None),
        ("music", "u", "s1", None, "1614834367000", None, None),
    ]
    out = classify(spark, rows).select("domain", "event_ts", "weight", "event_type", C.STATUS)
    # no weight -> 1.0; no event type -> the domain's default (books: "interaction" from the config, others built in)
    expected = spark.createDataFrame(
        [(d, dt.datetime(2021, 3, 4, 5, 6, 7), 1.0, "interaction", C.OK) for d in ("books", "movies", "music")],
        "domain string, event_ts timestamp, weight double, event_type string, _status string")
    assertDataFrameEqual(out, expected)


def test_custom_timestamp_pattern(spark):
    df = bronze_interactions(spark, [("books", "u", "b1", None, "04/03/2021 05:06", None, None)])
    out = C.classify_interactions(df, {"books": "dd/MM/yyyy HH:mm"}, {}, MIN_TS, MAX_TS)
    expected = spark.createDataFrame([("b1", dt.datetime(2021, 3, 4, 5, 6), C.OK)],
                                     "item_id string, event_ts timestamp, _status string")
    assertDataFrameEqual(out.select("item_id", "event_ts", C.STATUS), expected)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.text(min_size=1, max_size=40)), min_size=1, max_size=5),
       st.binary(min_size=1, max_size=80))
@example(["\U0002F800", "e\u0301"], b"\x00")  # a compatibility ideograph and a decomposed accent: NFC changes both
def test_pseudonyms_match_python_hmac_of_the_nfc_form(spark, values, key):
    from crossrec.data.pseudonym import pseudonym, pseudonym_column

    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, v string")
    got = df.select("i", pseudonym_column(key, F.col("v")).alias("h"))
    want = [(i, None if v is None else hmac.new(key, unicodedata.normalize("NFC", v).encode("utf-8"),
                                                hashlib.sha256).hexdigest()) for i, v in enumerate(values)]
    assert [h for _, h in want] == [None if v is None else pseudonym(v, key) for v in values]
    assertDataFrameEqual(got, spark.createDataFrame(want, "i int, h string"))


def test_the_key_is_no_literal_of_the_plan(spark):
    """What explain, the Spark UI and the event log print of a pseudonymising query holds no form of the key."""
    import base64

    key = b"plan-secret-0123456789abcdef"
    df = spark.createDataFrame([("books", "alice")], "domain string, local_user_id string")
    df = C.pseudonymous_users(df, None, key)
    plan = df._jdf.queryExecution().toString() + df._jdf.queryExecution().executedPlan().toString()
    padded = key.ljust(64, b"\0")
    forms = [key, key.hex().encode(), base64.b64encode(key).rstrip(b"=")]
    for pad in (0x36, 0x5C):
        xored = bytes(b ^ pad for b in padded)
        forms += [xored.hex().encode(), xored.hex().upper().encode(), base64.b64encode(xored).rstrip(b"=")]
    assert "pseudonym(" in plan
    assert not [f for f in forms if f.decode("latin-1") in plan or f.decode("latin-1").upper() in plan.upper()]


def test_pseudonymous_users_drop_the_raw_id_and_one_unicode_spelling_is_one_user(spark):
    composed, decomposed = "jos\u00e9", "jose\u0301"
    df = spark.createDataFrame([("books", "alice"), ("books", composed), ("movies", decomposed)],
                               "domain string, local_user_id string")
    out = C.pseudonymous_users(df, None, b"k" * 20)
    alice = hmac.new(b"k" * 20, b"alice", hashlib.sha256).hexdigest()
    jose = hmac.new(b"k" * 20, composed.encode(), hashlib.sha256).hexdigest()  # the NFC spelling's pseudonym
    # the schema compare checks the columns too: domain and user_id, no local_user_id
    expected = spark.createDataFrame([("books", alice), ("books", jose), ("movies", jose)], "domain string, user_id string")
    assertDataFrameEqual(out, expected)


def test_identity_map_conflicts_duplicates_and_unknown_domains(spark):
    schema = load_contract("bronze.identity_map").spark_schema()
    later = dt.datetime(2024, 7, 1, 12)
    rows = [
        ("music", "m-1", "u1", None, INGESTED), ("music", "m-1", "u1", None, INGESTED),  # exact repeat -> duplicate
        ("music", "m-2", "u2", None, INGESTED), ("music", "m-2", "u9", None, INGESTED),  # conflict in one ingest
        ("music", "m-4", "u4", None, INGESTED), ("music", "m-4", "u5", None, later),  # a correction: the latest wins
        ("games", "g-1", "u1", None, INGESTED),  # unknown domain
        ("music", "m-3", None, None, INGESTED),  # no global id
        (None, None, None, "garbage u7,x", INGESTED),
    ]
    df = spark.createDataFrame([(*r[:4], "map.csv", "sha", "run1", r[4]) for r in rows], schema)
    key = b"key-key-key-key-key"
    out = C.classify_identity_map(df, ["books", "music"], key)
    p = {u: hmac.new(key, u.encode(), hashlib.sha256).hexdigest() for u in ("m-1", "m-2", "m-3", "m-4", "g-1", "u1", "u2",
                                                                            "u4", "u5", "u9")}
    kept_u2 = min(p["u2"], p["u9"])  # one ingest: the smallest pseudonym wins (deterministic)
    lost_u2 = max(p["u2"], p["u9"])
    same_ingest = "mapped to another global id in the same ingest; the smallest pseudonym was kept"
    expected = spark.createDataFrame([
        ("music", p["m-1"], p["u1"], C.OK, None, None), ("music", p["m-1"], p["u1"], C.DUPLICATE, None, None),
        ("music", p["m-2"], kept_u2, C.OK, None, None),
        ("music", p["m-2"], lost_u2, C.QUARANTINED, "identity_conflict", same_ingest),
        ("music", p["m-4"], p["u5"], C.OK, None, None),
        ("music", p["m-4"], p["u4"], C.QUARANTINED, "identity_conflict", "superseded by a mapping ingested later"),
        ("games", p["g-1"], p["u1"], C.QUARANTINED, "unknown_domain", "domain=games not in ['books', 'music']"),
        ("music", p["m-3"], None, C.QUARANTINED, "missing_global_user_id", "global_user_id is empty"),
        (None, None, None, C.QUARANTINED, "malformed_line",
         "a line of 12 characters that does not parse as the file's columns (the line is in bronze)"),
    ], "domain string, local_user_id string, global_user_id string, _status string, _reason string, _detail string")
    assertDataFrameEqual(out.select(expected.columns), expected)
    q = {r.reason + (r.detail or "")[:10]: r for r in C.quarantine_rows(out, "bronze.identity_map").collect()}
    text = " ".join(f"{r.detail} {r.record}" for r in q.values())
    assert not {"m-1", "m-2", "m-3", "m-4", "u4", "u7", "garbage"} & set(re.findall(r"[\w-]+", text)), text
    superseded = next(r for r in q.values() if r.detail == "superseded by a mapping ingested later")
    assert json.loads(superseded.record)["global_user_id"] == p["u4"]
    inter = classify(spark, [("music", "m-2", "s1", "play", "1614834367000", None, None),
                             ("music", "m-7", "s1", "play", "1614834367000", None, None),
                             ("music", "m-4", "s1", "play", "1614834367000", None, None)])
    # m-2 -> its kept global id; m-7 (no mapping) -> its own pseudonym; m-4 -> the latest mapping's global id
    joined = C.pseudonymous_users(inter, out, key).select("domain", "item_id", "user_id")
    m7 = hmac.new(key, b"m-7", hashlib.sha256).hexdigest()
    assertDataFrameEqual(joined, spark.createDataFrame([("music", "s1", u) for u in (kept_u2, m7, p["u5"])],
                                                       "domain string, item_id string, user_id string"))


def test_catalog_check_and_dedupe(spark):
    items = C.classify_items(
        bronze_items(spark, [("books", "b1", "T", None, {"00_title": "T"}, {}, None)]), 1000
    )
    bronze = bronze_interactions(spark, [
        ("books", "u1", "b1", "view", "2021-01-01T00:00:00Z", "1", None, "a.csv"),
        ("books", "u1", "b1", "view", "2021-01-01T00:00:00Z", "1", None, "b.csv"),  # duplicate of the first
        ("books", "u1", " b2", "view", "2021-01-01T00:00:00Z", "1", None, "a.csv"),  # not in catalog
        ("books", "", "b1", "view", "2021-01-01T00:00:00Z", "1", None, "c.csv"),  # quarantined, not a duplicate
    ])
    inter = C.classify_interactions(bronze, {"books": "iso8601"}, {}, MIN_TS, MAX_TS, catalog=C.catalog_keys(items))
    inter = C.pseudonymous_users(inter, None, b"key-key-key-key-key")
    out = C.dedupe_interactions(inter)
    expected = spark.createDataFrame([
        ("b1", "a.csv", C.OK, None, None),
        ("b1", "b.csv", C.DUPLICATE, None, None),
        ("b1", "c.csv", C.QUARANTINED, "missing_user_id", "user_id is empty"),
        ("b2", "a.csv", C.QUARANTINED, "item_not_in_catalog", "item_id=b2 not in the domain's catalog"),
    ], "item_id string, source string, _status string, _reason string, _detail string")
    assertDataFrameEqual(out.select(expected.columns), expected)
    q = C.quarantine_rows(out, "bronze.interactions")
    assert q.columns == load_contract("silver.quarantine").column_names
    expected_q = spark.createDataFrame([
        ("bronze.interactions", "books", "missing_user_id", "user_id is empty", "c.csv", "run1"),
        ("bronze.interactions", "books", "item_not_in_catalog", "item_id=b2 not in the domain's catalog", "a.csv", "run1"),
    ], "source_table string, domain string, reason string, detail string, source_file string, run_id string")
    assertDataFrameEqual(q.drop("record"), expected_q)
    # the quarantine keeps each bad row as it arrived in bronze (raw, untrimmed values) but its user id, which is
    # the pseudonym; good rows carry none
    records = {r.reason: json.loads(r.record) for r in q.collect()}
    assert records["item_not_in_catalog"] == {
        "user_id": hmac.new(b"key-key-key-key-key", b"u1", hashlib.sha256).hexdigest(), "domain": "books", "item_id": " b2", "event_type": "view", "event_ts": "2021-01-01T00:00:00Z",
        "weight": "1", "source_file": "a.csv", "source_checksum": "sha", "run_id": "run1", "ingested_at": "2024-06-30T12:00:00.000Z",
    }
    assert "user_id" not in records["missing_user_id"] and records["missing_user_id"]["source_file"] == "c.csv"
    assert out.where(F.col(C.STATUS) != C.QUARANTINED).where(F.col("_record").isNotNull()).count() == 0


def test_placeholder_items_for_missing_catalog_entries(spark):
    items = C.classify_items(bronze_items(spark, [("books", "b1", "T", None, {}, {}, None)]), 1000)
    inter = C.pseudonymous_users(classify(spark, [("books", "u1", "b2", "view", "2021-01-01", "1", None)]), None,
                                 b"0123456789abcdef")
    ph = C.placeholder_items(inter, items)
    expected = spark.createDataFrame(
        [("b2", "books", "b2", "b2", None, {"placeholder": "true"}, {}, 0, "placeholder", "placeholder", C.OK, None, None,
          None, False, False)],
        "item_id string, domain string, title string, text string, category string, attributes map<string,string>, "
        "vectors map<string,array<float>>, _bad_vectors int, run_id string, source string, _status string, "
        "_reason string, _detail string, _record string, _truncated boolean, _bad_text_bytes boolean")
    assertDataFrameEqual(ph, expected)  # one row: b1 is in the catalog
    assert set(load_contract("silver.items").column_names) <= set(ph.columns)


def test_items_text_normalised_truncated_and_newest_wins(spark):
    old, new = dt.datetime(2024, 1, 1), dt.datetime(2024, 2, 1)
    rows = [
        ("books", "b1", "  Old\ttitle ", "scifi", {"00_title": "Old title"}, {"author": " Ann "}, None, "v1.csv", old),
        ("books", "b1", "New  title", " scifi ", {"00_title": "New  title", "01_blurb": "Line1\nLine2\u0007"}, {"author": "Ann", "x": " "}, None, "v2.csv", new),
        ("books", "b2", None, None, {"00_title": None, "01_blurb": "x" * 50}, {}, None, "v2.csv", new),
        ("books", "b3", "caf\ufffd", None, {"00_title": "caf\ufffd"}, {}, None, "v2.csv", new),
        ("books", None, "no id", None, {}, {}, None, "v2.csv", new),
    ]
    out = C.classify_items(bronze_items(spark, rows), max_text_chars=25)
    expected = spark.createDataFrame([
        ("b1", "v1.csv", "Old title", "Old title", "scifi", {"author": "Ann"}, False, False, C.DUPLICATE, None, None),
        ("b1", "v2.csv", "New title", "New title. Line1 Line2", "scifi", {"author": "Ann"}, False, False, C.OK, None, None),
        ("b2", "v2.csv", "", "x" * 25, None, {}, True, False, C.OK, None, None),
        ("b3", "v2.csv", "caf\ufffd", "caf\ufffd", None, {}, False, True, C.OK, None, None),
        (None, "v2.csv", "no id", "no id", None, {}, False, False, C.QUARANTINED, "missing_item_id", "item_id is empty"),
    ], "item_id string, source string, title string, text string, category string, attributes map<string,string>, "
       "_truncated boolean, _bad_text_bytes boolean, _status string, _reason string, _detail string")
    assertDataFrameEqual(out.select(expected.columns), expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), min_size=1, max_size=6))
def test_normalize_text_properties(spark, values):
    df = spark.createDataFrame([(v,) for v in values], "v string")
    out = [r.n for r in df.select(C.normalize_text(F.col("v")).alias("n")).collect()]
    for o in out:
        assert o == o.strip()
        assert "  " not in o and "\n" not in o and "\t" not in o


def test_status_counts_account_for_every_row(spark):
    rows = [("books", "u1", f"b{i % 3}", "view", "2021-01-01T00:00:00Z", "1", None) for i in range(9)]
    rows += [("books", "", "b1", "view", "2021-01-01T00:00:00Z", "1", None)]
    inter = C.dedupe_interactions(C.pseudonymous_users(classify(spark, rows), None, b"0123456789abcdef"))
    expected = spark.createDataFrame(
        [("books", "f.csv", C.OK, None, 3), ("books", "f.csv", C.DUPLICATE, None, 6),
         ("books", "f.csv", C.QUARANTINED, "missing_user_id", 1)],
        "domain string, source string, _status string, _reason string, count long")
    assertDataFrameEqual(C.status_counts(inter), expected)  # 3 + 6 + 1 = the 10 rows in


def test_conflicting_rows_of_one_item_in_one_file_have_a_deterministic_winner(spark):
    """Rows of one file carry no position: the greatest text wins, whichever order Spark reads them in."""
    rows = [("books", "b1", "Alpha", None, {"00_title": "Alpha"}, {}, None),
            ("books", "b1", "Zeta", None, {"00_title": "Zeta"}, {}, None),
            ("books", "b1", "Mid", None, {"00_title": "Mid"}, {}, None)]
    expected = spark.createDataFrame([("Zeta", C.OK), ("Mid", C.DUPLICATE), ("Alpha", C.DUPLICATE)],
                                     "title string, _status string")
    for order in (rows, rows[::-1]):
        out = C.classify_items(bronze_items(spark, order), 1000)
        assertDataFrameEqual(out.select("title", C.STATUS), expected)


def test_item_entities_split_normalise_and_dedupe(spark):
    rows = [("books", "b1", "T", None, {}, {"author": " Ada  Berg ; Lars Sato;;", "publisher": "Vellum"}, None),
            ("books", "b2", "T", None, {}, {"author": "ada berg"}, None),
            ("movies", "m1", "T", None, {}, {"director": "ADA BERG", "co": "Ada Berg"}, None)]
    items = C.classify_items(bronze_items(spark, rows), 1000).where(F.col(C.STATUS) == C.OK)
    declared = {"books": {"author": ("person", ";"), "publisher": ("publisher", None)},
                "movies": {"director": ("person", None), "co": ("person", None)}}
    out = C.item_entities(C.item_entity_values(items, declared))
    expected = spark.createDataFrame([
        ("books", "b1", "person:ada berg", "author", C.OK), ("books", "b1", "person:lars sato", "author", C.OK),
        ("books", "b1", "publisher:vellum", "publisher", C.OK), ("books", "b2", "person:ada berg", "author", C.OK),
        ("movies", "m1", "person:ada berg", "co", C.OK), ("movies", "m1", "person:ada berg", "director", C.DUPLICATE),
    ], "domain string, item_id string, entity string, attribute string, _status string")
    assertDataFrameEqual(out.select("domain", "item_id", "entity", "attribute", C.STATUS), expected)


def test_item_entities_separator_is_literal_and_nothing_declared_is_empty(spark):
    rows = [("books", "b1", "T", None, {}, {"tags": "a.b|c\\E.d"}, None)]
    items = C.classify_items(bronze_items(spark, rows), 1000)
    got = C.item_entity_values(items, {"books": {"tags": ("tag", "|")}}).select("value")
    assertDataFrameEqual(got, spark.createDataFrame([("a.b",), ("c\\e.d",)], "value string"))
    got = C.item_entity_values(items, {"books": {"tags": ("tag", "\\E.")}}).select("value")
    assertDataFrameEqual(got, spark.createDataFrame([("a.b|c",), ("d",)], "value string"))
    assert C.item_entity_values(items, {}).count() == 0


def test_item_vectors_are_parsed_per_modality_and_bad_ones_counted(spark):
    rows = [("books", f"b{k}", "T", None, {}, {}, None) for k in range(5)] + [("movies", "m1", "T", None, {}, {}, None)]
    vectors = [{"img": "[0.5, -1, 2e-3]"}, {"img": "[1.0, 2.0]"}, {"img": '[1, "x", 3]'}, {"img": "[1, NaN, 3]"},
               {"img": "  "}, {"poster": "[0.25, 0.5, 1]"}]
    declared = {"books": {"img": (3, "image")}, "movies": {"poster": (3, "image")}}
    out = C.classify_items(bronze_items(spark, rows, vectors), 1000, vectors=declared)
    got = {r["item_id"]: (r["vectors"], r["_bad_vectors"]) for r in out.select("item_id", "vectors", "_bad_vectors").collect()}
    assert got["b0"] == ({"image": pytest.approx([0.5, -1.0, 0.002])}, 0)
    assert got["m1"] == ({"image": [0.25, 0.5, 1.0]}, 0), "another column of another domain, the same modality"
    assert [got[k] for k in ("b1", "b2", "b3")] == [({}, 1)] * 3, "wrong length, not a number, NaN: left out, counted"
    assert got["b4"] == ({}, 0), "a blank cell is no vector"
    assert C.classify_items(bronze_items(spark, rows, vectors), 1000).select("vectors").first()[0] == {}, "none declared"
