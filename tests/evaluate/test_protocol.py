"""The evaluation protocol on tiny gold tables (written directly as test fixtures; no Spark)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from deltalake import write_deltalake

from crossrec.evaluate.protocol import baseline_score_fn, evaluate, load_eval_data, paired_records
from crossrec.model.baselines import Popularity


@pytest.fixture()
def lake(tmp_path):
    # books: items 1-3 (cols 0-2); movies: items 4-5 (cols 0-1)
    index = pd.DataFrame({
        "domain": ["books"] * 3 + ["movies"] * 2, "item_id": ["b1", "b2", "b3", "m1", "m2"],
        "item_idx": [1, 2, 3, 4, 5], "domain_idx": [0, 0, 0, 1, 1], "domain_item_idx": [0, 1, 2, 0, 1],
        "category": [None] * 5, "train_count": [2, 1, 0, 1, 0],
    })
    seq = pd.DataFrame([
        # alice: train b1 m1 b2; valid books b3? no: valid movies m2 ; test books b3 (history b1 m1 b2 m2)
        ("alice", "train", "*", [1, 4, 2], [0, 1, 0], [10, 20, 30], None, None, False, 3),
        ("alice", "valid", "movies", [1, 4, 2], [0, 1, 0], [10, 20, 30], 5, 40, False, 3),
        ("alice", "test", "books", [1, 4, 2, 5], [0, 1, 0, 1], [10, 20, 30, 40], 3, 50, False, 4),
        # bob: cold in movies (books history only)
        ("bob", "train", "*", [1], [0], [5], None, None, False, 1),
        ("bob", "test", "movies", [1], [0], [5], 4, 60, True, 1),
    ], columns=["user_id", "split", "target_domain", "item_idx", "domain_idx", "event_ts", "target_item_idx", "target_ts", "cold_start", "history_len"])
    root = tmp_path / "lake"
    write_deltalake(str(root / "gold" / "item_index"), index)
    write_deltalake(str(root / "gold" / "user_sequences"), seq)
    return str(root)


def test_load_builds_exclusions_segments_and_training_data(lake):
    data = load_eval_data(lake)
    books, movies = data.tests
    assert (books.domain, movies.domain) == ("books", "movies")
    assert books.target_col.tolist() == [2] and movies.target_col.tolist() == [0]
    assert sorted(books.exclude[0].indices.tolist()) == [0, 1]  # alice's books history: b1, b2
    assert movies.exclude.nnz == 0
    assert movies.segments["cold_start"].tolist() == [True] and books.segments["cold_item"].tolist() == [True]
    # training data: train events + the valid target (m2) for the test split
    assert sorted(data.train.item.tolist()) == [1, 1, 2, 4, 5]
    valid = load_eval_data(lake, split="valid")
    assert sorted(valid.train.item.tolist()) == [1, 1, 2, 4]
    # the valid split's training events plus its targets = the test split's training events, without a re-read
    known = valid.train_with_targets()
    assert sorted(zip(known.user, known.item, known.domain, known.ts)) == \
        sorted(zip(data.train.user, data.train.item, data.train.domain, data.train.ts))
    assert data.versions == {"gold.item_index": 0, "gold.user_sequences": 0}


def oracle(dt_, rows):
    """Scores 1 for each row's target, 0 elsewhere."""
    s = np.zeros((len(rows), dt_.exclude.shape[1]), np.float32)
    s[np.arange(len(rows)), dt_.target_col[rows]] = 1.0
    return s


def test_oracle_scores_perfectly_and_popularity_is_measured(lake):
    data = load_eval_data(lake)
    recs = pd.DataFrame(evaluate("oracle", oracle, data))
    ndcg = recs[(recs.metric == "ndcg") & (recs.k == 10)]
    assert set(ndcg.segment) == {"all", "cold_start", "cold_item"}
    assert (ndcg.value == 1.0).all()
    pop = Popularity().fit(data.train)
    recs = pd.DataFrame(evaluate("pop", baseline_score_fn(pop), data))
    mrr = recs[(recs.metric == "mrr") & (recs.segment == "all")].set_index("domain").value
    # books: b3 (count 0) vs candidates {b3} only (b1, b2 excluded) -> rank 1; movies: m1 (1) vs m2 (1) tie -> rank 2
    assert mrr["books"] == 1.0 and mrr["movies"] == 0.5


def test_input_domains_filter_history_and_domains(lake):
    """A single-domain model sees only its domain's events and is evaluated on its domain only."""
    torch = pytest.importorskip("torch")
    from crossrec.evaluate.protocol import transformer_score_fn
    from crossrec.inference import Predictor
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    data = load_eval_data(lake)
    books, movies = data.tests
    feats = ItemFeatures.from_item_index([1, 2, 3, 4, 5], [0, 0, 0, 1, 1], [0, 1, 2, 0, 1],
                                         text_emb=np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=5, n_domains=2, text_dim=4, d_model=8, n_layers=1, n_heads=2), feats)
    alice = transformer_score_fn(model, data, input_domains=["books"])(books, np.array([0]))
    p = Predictor(model, None, data.item_counts())
    want = p.scores(p.collate([np.array([1, 2])], [np.array([10, 30])]), 0)  # alice's books events only: b1, b2
    np.testing.assert_allclose(alice, want.numpy())
    assert np.isneginf(alice[0, :2]).all() and np.isfinite(alice[0, 2]), "her books history excluded, b3 ranked"
    bob = transformer_score_fn(model, data, input_domains=["movies"])(movies, np.array([0]))
    assert bob.tolist() == [[1.0, 1.0]], "bob has no movies history: cold for a movies-only model, scored by popularity"

    recs = evaluate("pop", baseline_score_fn(Popularity().fit(data.train)), data, domains=["movies"])
    assert {r["domain"] for r in recs} == {"movies"}


def test_paired_records_compare_with_the_best_other_model_user_by_user(lake):
    data = load_eval_data(lake)
    per_row: dict = {}
    evaluate("oracle", oracle, data, per_row=per_row.setdefault("oracle", {}))
    evaluate("pop", baseline_score_fn(Popularity().fit(data.train)), data, per_row=per_row.setdefault("pop", {}))
    evaluate("anti", lambda dt_, rows: -oracle(dt_, rows), data, per_row=per_row.setdefault("anti", {}))
    assert per_row["oracle"][("books", "all")].tolist() == [1.0]
    recs = {(r["domain"], r["segment"]): r for r in paired_records(per_row, ["oracle"])}
    movies = recs[("movies", "all")]
    # movies: pop ranks bob's m1 second of 2 (tie) -> NDCG 1/log2(3); anti ranks it last too: pop wins the tie by name
    assert movies["vs"] in ("pop", "anti") and movies["value"] == pytest.approx(1 - 1 / np.log2(3))
    assert movies["metric"] == "ndcg_paired_diff" and movies["k"] == 10 and movies["n_users"] == 1
    assert set(recs) == {("books", "all"), ("books", "cold_item"), ("movies", "all"), ("movies", "cold_start")}
    assert paired_records(per_row, ["oracle", "pop", "anti"]) == [], "nothing left to compare with"
    # a named pair is compared with its own side only, and neither side is anyone's best rival
    both = paired_records(per_row, ["pop", "oracle:anti"])
    assert {r["vs"] for r in both if r["model"] == "pop"} == set(), "oracle and anti are a pair's sides: no rival left"
    pair = {(r["domain"], r["segment"]): r for r in both if r["model"] == "oracle"}
    assert {r["vs"] for r in pair.values()} == {"anti"} and set(pair) == set(recs)
    assert pair[("books", "all")]["value"] == pytest.approx(1.0 - per_row["anti"][("books", "all")].mean())
