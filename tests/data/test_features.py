"""Features transforms on tiny frames: item index, leave-last-out splits, leak-free sequences, cold start."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from crossrec.data import features as FE
from crossrec.quality.contracts import load_contract
from crossrec.text.encoder import text_hash

pytestmark = pytest.mark.spark
T0 = dt.datetime(2021, 1, 1)


def items_df(spark, rows):
    """rows: (domain, item_id)."""
    full = [(i, d, i.upper(), f"text {i}", "cat", {"brand": "b"}, "r", "s") for d, i in rows]
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


def test_item_index_is_dense_and_deterministic(tiny):
    _, _, index, _ = tiny
    rows = sorted((r.domain, r.item_id, r.item_idx, r.domain_idx, r.domain_item_idx) for r in index.collect())
    assert rows == [
        ("books", "b1", 1, 0, 0), ("books", "b2", 2, 0, 1), ("books", "b3", 3, 0, 2), ("books", "b4", 4, 0, 3),
        ("movies", "m1", 5, 1, 0), ("movies", "m2", 6, 1, 1), ("movies", "m3", 7, 1, 2),
    ]


def test_repeats_are_flagged_and_splits_are_leave_last_out_per_domain(tiny):
    _, _, _, occ = tiny
    assert occ.where("is_repeat").select("user_id", "item_id").collect()[0].asDict() == {"user_id": "alice", "item_id": "b1"}
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    got = {(r.user_id, r.item_id): r.split for r in split.collect()}
    assert got == {
        ("alice", "b1"): "train", ("alice", "b2"): "train", ("alice", "b3"): "valid", ("alice", "b4"): "test",
        ("alice", "m1"): "train", ("alice", "m2"): "valid", ("alice", "m3"): "test",
        ("bob", "b2"): "valid", ("bob", "b3"): "test",
    }


def test_sequences_never_contain_targets(tiny):
    _, _, _, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    seq = {(r.user_id, r.split, r.target_domain): r for r in FE.build_sequences(split, max_seq_len=10).collect()}
    # alice positions: b1 m1 b2 m2 b3 m3 b4 (b1 repeat dropped) -> ids b1=1 b2=2 b3=3 b4=4 m1=5 m2=6 m3=7
    assert seq[("alice", "train", "*")].item_idx == [1, 5, 2]  # train events only
    assert seq[("alice", "valid", "books")].item_idx == [1, 5, 2]  # b3: train events before it (m2 is valid)
    assert seq[("alice", "valid", "movies")].item_idx == [1, 5, 2]  # m2: train before it
    assert seq[("alice", "test", "books")].item_idx == [1, 5, 2, 6, 3]  # b4: train + valid before it; not m3 (test)
    assert seq[("alice", "test", "movies")].item_idx == [1, 5, 2, 6, 3]  # m3: not b4 (later), not itself
    assert seq[("alice", "test", "books")].target_item_idx == 4
    assert seq[("alice", "test", "books")].domain_idx == [0, 1, 0, 1, 0]
    assert seq[("bob", "test", "books")].item_idx == [2] and seq[("bob", "valid", "books")].item_idx == []
    for r in seq.values():
        if r.split != "train":
            assert r.target_item_idx not in r.item_idx
            assert r.history_len == len(r.item_idx) == len(r.event_ts) == len(r.domain_idx)
            assert all(ts < r.target_ts for ts in r.event_ts)


def test_truncation_keeps_newest(tiny):
    _, _, _, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    seq = {(r.user_id, r.split, r.target_domain): r for r in FE.build_sequences(split, max_seq_len=2).collect()}
    assert seq[("alice", "test", "books")].item_idx == [6, 3]
    assert seq[("alice", "train", "*")].item_idx == [1, 5, 2]  # train rows keep every train event


def test_cold_start_users_lose_their_target_domain_history(spark, tiny):
    _, _, _, occ = tiny
    firsts = occ.where(~F.col("is_repeat"))
    cold = FE.select_cold_users(firsts, per_domain=10, max_share=1.0, seed=1)
    assert [r.user_id for r in cold.collect()] == ["alice"]  # bob has one domain: not a candidate
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


def test_train_counts(tiny):
    _, _, index, occ = tiny
    split = FE.assign_splits(occ.where(~F.col("is_repeat")))
    counts = {r.item_id: r.train_count for r in FE.add_train_counts(index, split).collect()}
    assert counts == {"b1": 1, "b2": 1, "b3": 0, "b4": 0, "m1": 1, "m2": 0, "m3": 0}


def test_encoder_input_and_hash_match_python(spark, tiny):
    items, *_ = tiny
    rows = FE.encoder_input(items).collect()
    r = [x for x in rows if x.item_id == "b1"][0]
    assert r.enc_text == "text b1. cat. brand: b"
    assert r.text_hash == text_hash(r.enc_text)


def test_item_texts_rebuild_the_spark_encoder_input(spark):
    """Fine-tuning rebuilds each item's encoder input from silver.items in pandas: the same string as Spark's."""
    from crossrec.text.encoder import item_texts

    rows = [("a", "Oats", "cereal", {"brand": "x", "size": "1kg"}), ("b", "Tea", None, {}),
            ("c", "Pan", "", {"z": "1", "a": "2"}), ("d", "Mug", "cups", None)]
    items = spark.createDataFrame(rows, "item_id string, text string, category string, attributes map<string,string>")
    items = items.withColumn("domain", F.lit("kitchen"))
    spark_rows = sorted((r.item_id, r.enc_text, r.text_hash) for r in FE.encoder_input(items).collect())
    pdf = items.toPandas().sort_values("item_id")
    ours = item_texts(pdf.text.values, pdf.category.values, pdf.attributes.values)
    assert [t for _, t, _ in spark_rows] == ours
    assert [h for *_, h in spark_rows] == [text_hash(t) for t in ours]
    assert ours[:3] == ["Oats. cereal. brand: x; size: 1kg", "Tea", "Pan. . a: 2; z: 1"]


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
