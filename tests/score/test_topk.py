"""The PyTorch half of scoring (no Spark): top-K per domain, seen items excluded, reasons, popularity fallback."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from crossrec.inference import score_covariance  # noqa: E402
from crossrec.model.artifact import load_artifact, save_artifact  # noqa: E402
from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.encoder import ItemFeatures  # noqa: E402
from crossrec.model.transformer import CrossDomainTransformer  # noqa: E402
from crossrec.rerank.base import Catalog, TermSet  # noqa: E402
from crossrec.rerank.cold_popularity import ColdPopularityTerm  # noqa: E402
from crossrec.rerank.cold_text import ColdTextTerm  # noqa: E402
from crossrec.rerank.cooccurrence import CooccurrenceTerm  # noqa: E402
from crossrec.rerank.next_item import NextItemTerm  # noqa: E402
from crossrec.rerank.text_similarity import TextSimilarityTerm  # noqa: E402
from crossrec.score.topk import POPULARITY, Scorer  # noqa: E402

# books: items 1-6, movies: items 7-9 (only three: fewer than K=4 once one is seen)
DOMAINS = ["books"] * 6 + ["movies"] * 3


@pytest.fixture()
def artifact(tmp_path):
    n = len(DOMAINS)
    dom = np.array([0 if d == "books" else 1 for d in DOMAINS])
    local = np.array([*range(6), *range(3)])
    feats = ItemFeatures.from_item_index(np.arange(1, n + 1), dom, local, text_emb=np.random.default_rng(0).normal(size=(n, 8)))
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2, max_seq_len=5), feats)
    index = pd.DataFrame({"item_idx": np.arange(1, n + 1), "domain": DOMAINS, "item_id": [f"i{k}" for k in range(1, n + 1)],
                          "domain_idx": dom, "domain_item_idx": local})
    return save_artifact(tmp_path / "20250101-abcdef01", model, None, index, {"input_domains": None})


def test_a_pick_that_shares_an_entity_with_its_reason_item_names_the_entity(tmp_path):
    """Items 1 (books), 7 and 8 (movies) carry entity 1 ("person:ada berg"), 2 and 8 entity 2: a user who read item 1
    is told "same person as books:i1" for movies i7 and i8 (8's other entity is not shared), a history item for i9."""
    from crossrec.score.topk import HISTORY_ITEM, SHARED_ENTITY

    n = len(DOMAINS)
    dom = np.array([0 if d == "books" else 1 for d in DOMAINS])
    local = np.array([*range(6), *range(3)])
    ents = np.zeros((n, 2), dtype=np.int64)
    ents[0], ents[6], ents[1], ents[7] = [1, 0], [1, 0], [2, 0], [2, 1]
    feats = ItemFeatures.from_item_index(np.arange(1, n + 1), dom, local, text_emb=np.random.default_rng(0).normal(size=(n, 8)),
                                         item_entities=ents)
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                               max_seq_len=5, n_entities=2), feats)
    with torch.no_grad():  # make the entity dominate the representations: item 1's nearest movie is item 7
        model.item_encoder.entity_emb.weight[1:] *= 200
    index = pd.DataFrame({"item_idx": np.arange(1, n + 1), "domain": DOMAINS, "item_id": [f"i{k}" for k in range(1, n + 1)],
                          "domain_idx": dom, "domain_item_idx": local})
    folder = save_artifact(tmp_path / "20250101-ent00001", model, None, index, {"input_domains": None},
                           ["person:ada berg", "brand:acme"])
    scorer = Scorer(folder, k=3, popularity=np.arange(n + 1, dtype=float))
    rows = pd.DataFrame(scorer.rows(["u0", "u1"], [np.array([1]), np.array([], dtype=np.int64)], [np.array([0]), np.array([], dtype=np.int64)]))
    linked = rows[(rows.user_id == "u0") & rows.item_id.isin(["i7", "i8"])]
    assert len(linked) == 2 and set(zip(linked.reason, linked.reason_kind, linked.reason_entity)) == {
        ("books:i1", SHARED_ENTITY, "person:ada berg")}
    other = rows[(rows.user_id == "u0") & ~rows.item_id.isin(["i7", "i8"])]
    assert (other.reason_kind == HISTORY_ITEM).all() and other.reason_entity.isna().all(), other.to_string()
    u1 = rows[rows.user_id == "u1"]
    assert (u1.reason_kind == POPULARITY).all() and u1.reason_entity.isna().all()


def with_terms(folder, terms: list, params: dict) -> TermSet:
    """Give the artifact in ``folder`` these terms (bound to its model's catalog) at ``params``; returns the set."""
    art = load_artifact(folder)
    catalog = Catalog.from_model(art.model)
    for term, state in terms:
        term.load_state_dict(state, catalog)
    ts = TermSet([t for t, _ in terms], params, ["books", "movies"])
    save_artifact(folder, art.model, ts, art.item_index, art.metrics, list(art.entities))
    return ts


def evaluation_scores(folder, terms: TermSet, batch: dict, d: int) -> np.ndarray:
    """The model's scores of domain ``d`` plus ``terms``, as the evaluation computes them (before exclusions)."""
    model = load_artifact(folder).model
    with torch.no_grad():
        h, reps = model.user_vectors(batch, d), model.domain_item_reps(d)
        return terms.apply(h @ reps.T, batch["item_idx"], d, h, score_covariance(reps)).numpy()


def test_rows_exclude_seen_items_explain_picks_and_fall_back_to_popularity(artifact):
    pop = np.array([0, 1, 2, 3, 4, 5, 6, 9, 8, 7], dtype=float)  # popularity per global id (0 = padding)
    scorer = Scorer(artifact, k=4, popularity=pop)
    hist = [np.array([1, 7, 2, 3, 4, 5, 6]), np.array([], dtype=np.int64), np.array([8])]  # u0: longer than max_seq_len
    rows = pd.DataFrame(scorer.rows(["u0", "u1", "u2"], hist, [np.arange(len(h)) for h in hist]))
    got = rows.groupby(["user_id", "domain"]).item_id.apply(list).to_dict()
    assert ("u0", "books") not in got, "every book seen: nothing to recommend"
    assert sorted(got[("u0", "movies")]) == ["i8", "i9"], "fewer unseen items than K: only those"
    assert got[("u1", "books")] == ["i6", "i5", "i4", "i3"] and got[("u1", "movies")] == ["i7", "i8", "i9"], "empty history: popularity"
    assert set(rows[rows.user_id == "u1"].reason) == {POPULARITY}
    assert (rows.reason_kind == np.where(rows.reason == POPULARITY, POPULARITY, "history_item")).all(), "no entities"
    assert rows.reason_entity.isna().all()
    u0 = rows[rows.user_id == "u0"]
    assert set(u0.reason) <= {f"{DOMAINS[i - 1]}:i{i}" for i in hist[0]}, "the reason is one of the user's own items"
    assert set(rows[rows.user_id == "u2"].reason) == {"movies:i8"}
    assert "i8" not in got[("u2", "movies")]
    for _, g in rows.groupby(["user_id", "domain"]):
        assert g["rank"].tolist() == list(range(1, len(g) + 1)) and (np.diff(g.score.values) <= 0).all()
    assert set(rows.model_version) == {"20250101-abcdef01"}


def test_record_batch_holds_the_same_rows_as_rows_with_run_date_and_the_asked_column_order(artifact):
    import datetime as dt

    pa = pytest.importorskip("pyarrow")
    from crossrec.score.stage import COLUMNS, list_column

    scorer = Scorer(artifact, k=3, popularity=np.arange(10, dtype=float))
    # histories arrive from Spark as a list column of a slice of a larger Arrow batch
    whole = pa.RecordBatch.from_pydict({
        "user_id": ["skip", "u0", "u1", "u2"],
        "item_idx": pa.array([[9], [1, 7, 2], [], [8, 3]], pa.list_(pa.int64())),
        "event_ts": pa.array([[5], [1, 2, 3], [], [4, 5]], pa.list_(pa.int64())),
    })
    chunk = whole.slice(1, 3)
    hist = list_column(chunk.column("item_idx"))
    assert [h.tolist() for h in hist] == [[1, 7, 2], [], [8, 3]]
    ts = list_column(chunk.column("event_ts"))
    rb = scorer.record_batch(chunk.column("user_id"), hist, ts, dt.date(2025, 1, 2), COLUMNS)
    assert rb.schema.names == COLUMNS
    assert rb.schema.field("run_date").type == pa.date32() and rb.schema.field("user_id").type == pa.string()
    got = rb.to_pandas()
    assert (got.run_date == dt.date(2025, 1, 2)).all()
    want = pd.DataFrame(scorer.rows(["u0", "u1", "u2"], hist, ts))
    pd.testing.assert_frame_equal(got.drop(columns="run_date"), want[COLUMNS[1:]])
    assert set(got.user_id) == {"u0", "u1", "u2"} and set(got[got.user_id == "u1"].reason) == {POPULARITY}


def test_score_body_batches_users_by_history_length_without_mixing_up_users(artifact):
    """The mapInArrow body reorders users by history length before batching; each user must still get the
    rows of their own history (the same as scoring everyone in one batch, in input order)."""
    import datetime as dt

    pa = pytest.importorskip("pyarrow")
    from crossrec.score.stage import COLUMNS, score_batches

    hist = [[1, 7, 2, 3], [8], [], [4, 5], [9, 1, 6], [2]]
    users = [f"u{i}" for i in range(len(hist))]
    rb = pa.RecordBatch.from_pydict({"user_id": users, "item_idx": pa.array(hist, pa.list_(pa.int64())),
                                     "event_ts": pa.array([list(range(len(h))) for h in hist], pa.list_(pa.int64()))})
    pop = np.arange(10, dtype=float)
    out = list(score_batches([rb], str(artifact), 3, pop, dt.date(2025, 1, 2), None, batch_users=2))
    assert len(out) == 3  # six users in model batches of two
    got = pd.concat([b.to_pandas() for b in out]).drop(columns="run_date")
    want = pd.DataFrame(Scorer(artifact, k=3, popularity=pop).rows(
        users, [np.array(h, dtype=np.int64) for h in hist], [np.arange(len(h)) for h in hist]))[COLUMNS[1:]]
    key = ["user_id", "domain", "rank"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True),
                                  check_exact=False, rtol=1e-5)


def test_scorer_ranks_with_the_artifacts_cooccurrence_and_new_user_terms(artifact):
    n = len(DOMAINS)
    indptr = torch.zeros(n + 2, dtype=torch.long)
    indptr[2:] = 1  # history item 1 supports item 5 (both books), with weight 8 in books
    pop = torch.zeros(n + 1)
    pop[7:] = torch.linspace(2.0, -2.0, n - 6)  # movies' popularity feature; weight 1 for users new to movies
    terms = with_terms(artifact, [(CooccurrenceTerm(), {"indptr": indptr, "indices": torch.tensor([5], dtype=torch.int32),
                                                         "values": torch.tensor([1.0])}),
                                  (ColdPopularityTerm(), {"popularity": pop}), (ColdTextTerm(), {})],
                       {"cooccurrence": {0: {"weight": 8.0, "decay": 1.0}}, "cold_popularity": {1: {"weight": 1.0}},
                        "cold_text": {1: {"weight": 1.5, "decay": 0.6}}})  # new users' text
    scorer = Scorer(artifact, k=3)
    rows = pd.DataFrame(scorer.rows(["u0", "u1"], [np.array([1, 8]), np.array([1, 2])], [np.arange(2)] * 2))
    batch = {"item_idx": torch.tensor([[1, 8], [1, 2]]), "domain_idx": torch.tensor([[0, 1], [0, 0]]),
             "event_ts": torch.tensor([[0, 1], [0, 1]])}
    for d, name in enumerate(["books", "movies"]):
        want = evaluation_scores(artifact, terms, batch, d)  # the evaluation's scores, every term included
        for u in (0, 1):
            picks = rows[(rows.domain == name) & (rows.user_id == f"u{u}")]
            cols = [int(i[1:]) - 1 - (6 if name == "movies" else 0) for i in picks.item_id]
            np.testing.assert_allclose(picks.score.values, want[u, cols], rtol=1e-5, atol=1e-6)
    assert rows[(rows.domain == "books") & (rows.user_id == "u0")].item_id.iloc[0] == "i5", \
        "the co-occurring item comes first"
    want = evaluation_scores(artifact, terms, batch, 1)
    plain = evaluation_scores(artifact, TermSet(terms.terms, {}, terms.domains), batch, 1)
    pop_only = evaluation_scores(artifact, TermSet(terms.terms, {"cold_popularity": {1: {"weight": 1.0}}}, terms.domains),
                                 batch, 1)
    assert not np.allclose(want[1], plain[1]) and np.allclose(want[0], plain[0]), \
        "the new-user terms change the scores of the user new to movies (u1) only"
    assert not np.allclose(want[1], pop_only[1]), "the text term adds to popularity for u1"


def test_scorer_ranks_with_the_artifacts_text_similarity_and_next_item_terms(artifact):
    n = len(DOMAINS)
    indptr = torch.zeros(n + 2, dtype=torch.long)
    indptr[3:] = 1  # item 2 was followed by item 4 (both books)
    terms = with_terms(artifact, [(NextItemTerm(), {"indptr": indptr, "indices": torch.tensor([4], dtype=torch.int32),
                                                     "values": torch.tensor([3.0])}), (TextSimilarityTerm(), {})],
                       {"next_item": {0: {"weight": 4.0}}, "text_similarity": {0: {"weight": 1.0, "decay": 1.0},
                                                                                1: {"weight": 2.0, "decay": 0.5}}})
    scorer = Scorer(artifact, k=3)
    assert sorted(scorer.predictor.terms.prepare()) == [0, 1], "small domains: the terms' dense tables"
    rows = pd.DataFrame(scorer.rows(["u0", "u1"], [np.array([1, 8, 2]), np.array([7, 3])], [np.arange(3), np.arange(2)]))
    batch = {"item_idx": torch.tensor([[1, 8, 2], [7, 3, 0]]), "domain_idx": torch.tensor([[0, 1, 0], [1, 0, 0]]),
             "event_ts": torch.tensor([[0, 1, 2], [0, 1, 0]])}
    for d, name in enumerate(["books", "movies"]):
        want = evaluation_scores(artifact, terms, batch, d)  # the evaluation's scores, every term included
        plain = evaluation_scores(artifact, TermSet(terms.terms, {}, terms.domains), batch, d)
        assert not np.allclose(want, plain), f"the terms change {name}' scores"
        for u in (0, 1):
            picks = rows[(rows.domain == name) & (rows.user_id == f"u{u}")]
            cols = [int(i[1:]) - 1 - (6 if name == "movies" else 0) for i in picks.item_id]
            np.testing.assert_allclose(picks.score.values, want[u, cols], rtol=1e-5, atol=1e-6)
    assert rows[(rows.domain == "books") & (rows.user_id == "u0")].item_id.iloc[0] == "i4", \
        "the item that followed u0's latest book comes first"


def test_reason_text_renders_each_kind():
    from crossrec.score.reasons import reason_text

    titles = {("books", "i1"): "The Last Alpine"}
    assert reason_text("movies", "books:i1", "shared_entity", "person:ada berg", titles) == (
        'same person (ada berg) as "The Last Alpine" in books')
    assert reason_text("movies", "books:i1", "history_item", None, titles) == 'because of "The Last Alpine" in books'
    assert reason_text("movies", "books:i2", "history_item", None, titles) == 'because of "i2" in books'
    assert reason_text("movies", "popularity", "popularity", None, titles) == "popular in movies"


def test_a_pick_the_entity_term_raised_is_explained_by_the_event_and_entity_it_credits(tmp_path):
    """The cold entity term on for movies: a user new to movies who read books 1 (entity 1) and 2 (entity 2) is told
    "person:ada berg, as books:i1" for movie 7 and "brand:acme, as books:i2" for movie 8 (the representations alone
    name book 1 for both, this model's cosines); the credit decays with age, so of two books sharing the entity the
    later is named."""
    from crossrec.rerank.entity import ColdEntityTerm
    from crossrec.score.topk import SHARED_ENTITY

    n = len(DOMAINS)
    dom = np.array([0 if d == "books" else 1 for d in DOMAINS])
    local = np.array([*range(6), *range(3)])
    ents = np.zeros((n, 1), dtype=np.int64)
    ents[0], ents[1], ents[2], ents[6], ents[7] = 1, 2, 1, 1, 2
    feats = ItemFeatures.from_item_index(np.arange(1, n + 1), dom, local, text_emb=np.random.default_rng(0).normal(size=(n, 8)),
                                         item_entities=ents)
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                               max_seq_len=5, n_entities=2), feats)
    index = pd.DataFrame({"item_idx": np.arange(1, n + 1), "domain": DOMAINS, "item_id": [f"i{k}" for k in range(1, n + 1)],
                          "domain_idx": dom, "domain_item_idx": local})
    folder = save_artifact(tmp_path / "20250101-ent00002", model, None, index, {"input_domains": None},
                           ["person:ada berg", "brand:acme"])
    with_terms(folder, [(ColdEntityTerm(), {})], {"cold_entity": {1: {"weight": 50.0, "decay": 0.5}}})
    scorer = Scorer(folder, k=3)
    rows = pd.DataFrame(scorer.rows(["u0", "u1"], [np.array([1, 2]), np.array([1, 3, 2])], [np.arange(2), np.arange(3)]))
    movies = rows[rows.domain == "movies"].set_index(["user_id", "item_id"])
    assert movies.loc[("u0", "i7"), ["reason", "reason_kind", "reason_entity"]].tolist() == [
        "books:i1", SHARED_ENTITY, "person:ada berg"]
    assert movies.loc[("u0", "i8"), ["reason", "reason_entity"]].tolist() == ["books:i2", "brand:acme"]
    assert movies.loc[("u1", "i7"), "reason"] == "books:i3", "books 1 and 3 both name ada berg: the later counts more"
    assert movies.loc[("u0", "i9"), "reason_kind"] != SHARED_ENTITY, "item 9 shares nothing"


def test_freed_memory_is_retained_where_the_c_library_is_glibc():
    import platform

    from crossrec.score.topk import retain_freed_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is glibc
    assert retain_freed_memory() is glibc, "a second call changes nothing"
