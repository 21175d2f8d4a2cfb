"""Features transforms on tiny frames: item index, leave-last-out splits, leak-free sequences, cold start."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from crossrec.data import features as FE
from crossrec.quality.contracts import load_contract
from crossrec.text.encoder import text_hash

pytestmark = pytest.mark.spark
T0 = dt.datetime(2021, 1, 1)


def ts(h):
    """The epoch seconds of the event ``h`` hours after T0 (what ``first_occurrences`` keeps as ``ts``)."""
    return int((T0 + dt.timedelta(hours=h)).timestamp())


def items_df(spark, rows):
    """rows: (domain, item_id)."""
    full = [(i, d, i.upper(), f"text {i}", "cat", {"brand": "b"}, "r", "s", {}) for d, i in rows]
    return spark.createDataFrame(full, load_contract("silver.items").spark_schema())


def inter_df(spark, rows):
    """rows: (user, domain, item, hours after T0)."""
    full = [(u, d, i, "view", T0 + dt.timedelta(hours=h), 1.0, "r", "s") for u, d, i, h in rows]
    return spark.createDataFrame(full, load_contract("silver.interactions").spark_schema())


@pytest.fixture()
def tiny(spark):
    items = items_df(spark, [("books", "b1"), ("books", "b2"), ("books", "b3"), ("books", "b4"), ("movies", "m1"), ("movies", "m2"), ("movies", "m3")])
    inter = inter_df(spark, [
        # alice: books b1 b2 b3 b4 interleaved with movies m1 m2 m3; b1 again later (a repeat)
        ("alice", "books", "b1", 1), ("alice", "movies", "m1", 2), ("alice", "books", "b2", 3), ("alice", "movies", "m2", 4),
        ("alice", "books", "b3", 5), ("alice", "books", "b1", 6), ("alice", "movies", "m3", 7), ("alice", "books", "b4", 8),
        # bob: books only, two events
        ("bob", "books", "b2", 1), ("bob", "books", "b3", 2),
    ])
    index = FE.build_item_index(items)
    occ = FE.first_occurrences(inter, index)
    return items, inter, index, occ


def test_item_index_is_dense_and_deterministic(spark, tiny):
    _, _, index, _ = tiny
    expected = spark.createDataFrame([
        ("books", "b1", 1, 0, 0, "cat"), ("books", "b2", 2, 0, 1, "cat"), ("books", "b3", 3, 0, 2, "cat"),
        ("books", "b4", 4, 0, 3, "cat"), ("movies", "m1", 5, 1, 0, "cat"), ("movies", "m2", 6, 1, 1, "cat"),
        ("movies", "m3", 7, 1, 2, "cat"),
    ], "domain string, item_id string, item_idx long, domain_idx long, domain_item_idx long, category string")
    assertDataFrameEqual(index, expected)


def test_repeats_are_flagged_and_splits_are_leave_last_out_per_domain(spark, tiny):
    _, _, _, occ = tiny
    # alice's second b1 (6 h after T0) is the one repeat, at its position among her events
    repeats = spark.createDataFrame([("alice", "b1", ts(6), 6)], "user_id string, item_id string, ts long, pos long")
    assertDataFrameEqual(occ.where("is_repeat").select(repeats.columns), repeats)
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    expected = spark.createDataFrame([
        ("alice", "books", "b1", "train"), ("alice", "books", "b2", "train"), ("alice", "books", "b3", "valid"),
        ("alice", "books", "b4", "test"),
        ("alice", "movies", "m1", "train"), ("alice", "movies", "m2", "valid"), ("alice", "movies", "m3", "test"),
        ("bob", "books", "b2", "valid"), ("bob", "books", "b3", "test"),
    ], "user_id string, domain string, item_id string, split string")
    assertDataFrameEqual(split.select(expected.columns), expected)
    assert split.where("withheld").count() == 0  # no cold-start sample: nothing withheld


def test_sequences_never_contain_targets(spark, tiny):
    _, _, _, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    sequences = FE.build_sequences(split, max_seq_len=10)
    # alice positions: b1 m1 b2 m2 b3 m3 b4 (b1 repeat dropped) -> ids b1=1 b2=2 b3=3 b4=4 m1=5 m2=6 m3=7;
    # hours after T0: b1 1, m1 2, b2 3, m2 4, b3 5, m3 7, b4 8. bob: b2 1, b3 2
    train_a = ([1, 5, 2], [0, 1, 0], [ts(1), ts(2), ts(3)])
    before_test_a = ([1, 5, 2, 6, 3], [0, 1, 0, 1, 0], [ts(1), ts(2), ts(3), ts(4), ts(5)])
    expected = spark.createDataFrame([
        ("alice", "train", "*", *train_a, None, None, False, 3),  # train events only
        ("alice", "valid", "books", *train_a, 3, ts(5), False, 3),  # b3: train events before it (m2 is valid)
        ("alice", "valid", "movies", *train_a, 6, ts(4), False, 3),  # m2: train before it
        ("alice", "test", "books", *before_test_a, 4, ts(8), False, 5),  # b4: train + valid before it; not m3 (test)
        ("alice", "test", "movies", *before_test_a, 7, ts(7), False, 5),  # m3: not b4 (later), not itself
        ("bob", "train", "*", [], [], [], None, None, False, 0),
        ("bob", "valid", "books", [], [], [], 2, ts(1), True, 0),  # nothing before it: new to the domain
        ("bob", "test", "books", [2], [0], [ts(1)], 3, ts(2), False, 1),
    ], "user_id string, split string, target_domain string, item_idx array<long>, domain_idx array<long>, "
       "event_ts array<long>, target_item_idx long, target_ts long, cold_start boolean, history_len long")
    assertDataFrameEqual(sequences, expected)
    for r in sequences.collect():  # the invariants, whatever the rows
        if r.split != "train":
            assert r.target_item_idx not in r.item_idx
            assert r.history_len == len(r.item_idx) == len(r.event_ts) == len(r.domain_idx)
            assert all(t < r.target_ts for t in r.event_ts)


def test_truncation_keeps_newest(spark, tiny):
    _, _, _, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    seq = FE.build_sequences(split, max_seq_len=2).select("user_id", "split", "target_domain", "item_idx", "history_len")
    expected = spark.createDataFrame([
        ("alice", "train", "*", [1, 5, 2], 3),  # train rows keep every train event
        ("alice", "valid", "books", [5, 2], 2), ("alice", "valid", "movies", [5, 2], 2),
        ("alice", "test", "books", [6, 3], 2), ("alice", "test", "movies", [6, 3], 2),
        ("bob", "train", "*", [], 0), ("bob", "valid", "books", [], 0), ("bob", "test", "books", [2], 1),
    ], "user_id string, split string, target_domain string, item_idx array<long>, history_len long")
    assertDataFrameEqual(seq, expected)


def test_cold_start_users_lose_their_target_domain_history(spark, tiny):
    _, _, _, occ = tiny
    firsts = occ.where(~F.col("is_repeat"))
    cold = FE.select_cold_users(firsts, per_domain=10, max_share=1.0, seed=1)
    # bob has one domain: not a candidate; alice's target domain is the seed's pick, one of hers
    assertDataFrameEqual(cold.select("user_id"), spark.createDataFrame([("alice",)], "user_id string"))
    d = cold.first().domain
    split = FE.assign_splits(firsts, cold)
    kept = split.where(~F.col("withheld") & (F.col("domain") == d)).collect()
    assert [r.split for r in kept if r.user_id == "alice"] == ["test"]
    seq = {(r.user_id, r.split, r.target_domain): r for r in FE.build_sequences(split, 10).collect()}
    test_row = seq[("alice", "test", d)]
    assert test_row.cold_start is True
    assert (d_idx := {"books": 0, "movies": 1}[d]) not in test_row.domain_idx and d_idx not in seq[("alice", "train", "*")].domain_idx
    other = "movies" if d == "books" else "books"
    assert seq[("alice", "test", other)].cold_start is False
    assert ("alice", "valid", d) not in seq  # withheld too


def test_cold_sample_is_seeded_and_sized(spark):
    """Per domain, the first ``per_domain`` users given it (seeded), capped at ``max_share`` of them."""
    rows = [(f"u{i}", dom, f"{dom[0]}{i % 3}", h) for i in range(400) for h, dom in ((1, "books"), (2, "movies"))]
    rows += [("solo", "books", "b0", 1)]  # one domain: never a candidate
    items = items_df(spark, [("books", f"b{i}") for i in range(3)] + [("movies", f"m{i}") for i in range(3)])
    occ = FE.first_occurrences(inter_df(spark, rows), FE.build_item_index(items))

    def sample(per_domain, share, seed, users=None):
        return sorted(tuple(r) for r in FE.select_cold_users(occ, per_domain, share, seed, users).collect())

    a, b, c = sample(50, 0.5, 5), sample(50, 0.5, 5), sample(50, 0.5, 6)
    assert a == b and a != c
    per = {d: sum(1 for _, x in a if x == d) for d in ("books", "movies")}
    assert per == {"books": 50, "movies": 50}  # exactly per_domain in each domain
    assert len({u for u, _ in a}) == 100  # one target domain per user
    capped = sample(1000, 0.1, 5)  # ~200 candidates per domain, at most 10% of them
    per = {d: sum(1 for _, x in capped if x == d) for d in ("books", "movies")}
    assert 10 <= per["books"] <= 30 and 10 <= per["movies"] <= 30, per
    assert set(sample(50, 0.5, 7)) >= set(sample(20, 0.5, 7))  # a bigger sample extends a smaller one
    assert sample(0, 0.5, 5) == []
    users = spark.createDataFrame([("u1",), ("u2",), ("nobody",), ("solo",)], "user_id string")
    assert sorted(u for u, _ in sample(0, 0.0, 5, users)) == ["u1", "u2"]  # a cohort: every multi-domain user of it


def test_train_counts(spark, tiny):
    _, _, index, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    counts = FE.add_train_counts(index, split).select("item_idx", "item_id", "train_count")
    expected = spark.createDataFrame(
        [(1, "b1", 1), (2, "b2", 1), (3, "b3", 0), (4, "b4", 0), (5, "m1", 1), (6, "m2", 0), (7, "m3", 0)],
        "item_idx long, item_id string, train_count long")
    assertDataFrameEqual(counts, expected)


def test_encoder_input_and_hash_match_python(spark, tiny):
    items, *_ = tiny
    ids = [("books", "b1"), ("books", "b2"), ("books", "b3"), ("books", "b4"), ("movies", "m1"), ("movies", "m2"),
           ("movies", "m3")]
    expected = spark.createDataFrame([(d, i, f"text {i}. cat. brand: b", text_hash(f"text {i}. cat. brand: b"))
                                      for d, i in ids], "domain string, item_id string, enc_text string, text_hash string")
    assertDataFrameEqual(FE.encoder_input(items), expected)


def test_item_texts_rebuild_the_spark_encoder_input(spark):
    """Fine-tuning rebuilds each item's encoder input from silver.items in pandas: the same string as Spark's."""
    from crossrec.text.encoder import item_texts

    rows = [("a", "Oats", "cereal", {"brand": "x", "size": "1kg"}), ("b", "Tea", None, {}),
            ("c", "Pan", "", {"z": "1", "a": "2"}), ("d", "Mug", "cups", None)]
    items = spark.createDataFrame(rows, "item_id string, text string, category string, attributes map<string,string>")
    items = items.withColumn("domain", F.lit("kitchen"))
    pdf = items.toPandas().sort_values("item_id")
    ours = item_texts(pdf.text.values, pdf.category.values, pdf.attributes.values)
    assert ours[:3] == ["Oats. cereal. brand: x; size: 1kg", "Tea", "Pan. . a: 2; z: 1"]
    expected = spark.createDataFrame([(i, t, text_hash(t)) for i, t in zip(pdf.item_id.values, ours)],
                                     "item_id string, enc_text string, text_hash string")
    assertDataFrameEqual(FE.encoder_input(items).select("item_id", "enc_text", "text_hash"), expected)


@pytest.mark.slow
def test_text_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from crossrec.text.encoder import TextEncoder, model_path

    texts = ["The Galaxy Chronicle. A story of space.", "Sourdough Secrets", "jazz " * 300]
    ours = TextEncoder(device="cpu").encode(texts, batch_size=2)
    ref = SentenceTransformer(model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
