"""The co-occurrence term's similarity: item-KNN's, restricted to pairs within one domain."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("torch")

from crossrec.model.baselines import InteractionData, cosine_topk  # noqa: E402
from crossrec.model.cooccurrence import same_domain_similarity  # noqa: E402


SIZES = (12, 9)  # books 1..12, movies 13..21
SEQ_COLUMNS = ["user_id", "split", "target_domain", "item_idx", "domain_idx", "event_ts", "target_item_idx", "target_ts",
               "cold_start", "history_len"]


def two_domain_index():
    """(domain of items 1..21, gold.item_index of books and movies)."""
    import pandas as pd

    dom = np.repeat([0, 1], SIZES)
    index = pd.DataFrame({"domain": np.where(dom == 0, "books", "movies"), "item_id": [f"i{i}" for i in range(1, 22)],
                          "item_idx": np.arange(1, 22), "domain_idx": dom,
                          "domain_item_idx": np.concatenate([np.arange(n) for n in SIZES]),
                          "category": [None] * 21, "train_count": np.ones(21, dtype=np.int64)})
    return dom, index


def valid_split(tmp_path, index, rows):
    """Write the item index and gold.user_sequences ``rows`` (SEQ_COLUMNS) to a lake; its valid split."""
    import pandas as pd
    from deltalake import write_deltalake

    from crossrec.evaluate.protocol import load_eval_data

    lake = tmp_path / "lake"
    write_deltalake(str(lake / "gold" / "item_index"), index)
    write_deltalake(str(lake / "gold" / "user_sequences"), pd.DataFrame(rows, columns=SEQ_COLUMNS))
    return load_eval_data(str(lake), split="valid")


def untrained_model(dom, seed: int):
    """A tiny untrained CrossDomainTransformer over the 21 items of :func:`two_domain_index`."""
    import torch

    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    ids = torch.arange(22)
    item_dom = torch.tensor([0, *dom])
    feats = ItemFeatures(text_emb=torch.randn(22, 8, generator=torch.Generator().manual_seed(seed)),
                         item_domain=item_dom, item_attr=torch.zeros(22, dtype=torch.long),
                         domain_items=[ids[(item_dom == k) & (ids > 0)] for k in (0, 1)])
    torch.manual_seed(seed)
    return CrossDomainTransformer(ModelConfig(n_items=21, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                              dropout=0.0, max_seq_len=8), feats)


def test_same_domain_similarity_is_item_knn_without_the_cross_domain_pairs():
    rng = np.random.default_rng(0)
    domain_items = [np.arange(1, 13), np.arange(13, 21)]
    item_domain = np.zeros(21, dtype=np.int64)
    item_domain[13:] = 1
    user = rng.integers(0, 40, size=300)
    item = rng.integers(1, 21, size=300)
    data = InteractionData(user=user, item=item, domain=item_domain[item], ts=np.arange(300), n_users=40,
                           n_items=20, n_domains=2, domain_items=domain_items)
    indptr, indices, values = same_domain_similarity(data, k=4, shrink=1.0)
    full = cosine_topk(data.user_item_matrix("binary"), k=4, shrink=1.0).toarray().T  # (i, j): i's neighbour j
    same = item_domain[:, None] == item_domain[None, :]
    got = sp.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()), shape=full.shape).toarray()
    np.testing.assert_allclose(got, np.where(same, full, 0.0))
    assert (np.where(same, 0.0, full) > 0).any(), "the data have cross-domain neighbours, and they were dropped"
    assert (got > 0).sum() > 20
    assert (np.diff(indptr.numpy()) <= 4).all(), "a row holds at most the item's k nearest neighbours"
    assert (np.diff(cosine_topk(data.user_item_matrix("binary"), k=4, shrink=1.0).tocsr().indptr) > 4).any(), \
        "the data have an item among more than k items' nearest: the other orientation would exceed k"


def test_fitted_weights_score_on_validation_what_the_fit_reported(tmp_path):
    """fit_cooccurrence ranks every (weight, decay) pair on validation; the model it leaves
    behind must score the validation split, through the evaluation protocol, exactly as reported."""
    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(3)
    dom, index = two_domain_index()
    rows = []
    for u in range(80):  # two taste groups per domain: items co-occur, so the term changes ranks
        g = u % 2
        hist = [int(x) for x in rng.choice(np.r_[1 + 6 * g: 7 + 6 * g, 13 + 4 * g: 18 + 4 * g], size=8)]
        ts = list(range(100 * u, 100 * u + 8))
        d = int(dom[hist[-1] - 1])
        for split, n in (("train", 7), ("valid", 7)):
            tgt = (None, None) if split == "train" else (hist[7], ts[7])
            rows.append((f"u{u}", split, "*" if split == "train" else ["books", "movies"][d], hist[:n],
                         [int(dom[i - 1]) for i in hist[:n]], ts[:n], *tgt, False, n))
    valid = valid_split(tmp_path, index, rows)
    model = untrained_model(dom, seed=0)
    report = fit_cooccurrence(model, valid, k=5, shrink=1.0)
    assert model.cooc_weight.tolist() == pytest.approx([report[d]["weight"] for d in valid.domains])
    assert model.cooc_decay.tolist() == pytest.approx([report[d]["decay"] for d in valid.domains])
    model.text_sim_weight.zero_()  # the pairs were ranked before the text and next-item terms were chosen on top
    model.trans_weight.zero_()
    for d, rep in report.items():  # every pair tried: the model with that weight and decay scores what was reported
        ndcg = {(t["weight"], t["decay"]): t["value"] for t in rep["valid_ndcg@10"]}
        assert (rep["weight"], rep["decay"]) == max(ndcg, key=lambda c: (ndcg[c], -c[0], c[1]))
        d_idx = valid.domains.index(d)
        for (w, r), value in ndcg.items():
            model.cooc_weight[d_idx], model.cooc_decay[d_idx] = w, r
            got = next(x["value"] for x in evaluate("m", transformer_score_fn(model, valid), valid, ks=(10,), domains=[d])
                       if x["metric"] == "ndcg" and x["segment"] == "all")
            assert got == pytest.approx(value, abs=1e-6), (d, w, r)
    assert any(rep["weight"] > 0 and rep["decay"] < 1 for rep in report.values()), "a decayed term was chosen somewhere"
    assert len({round(v["value"], 6) for rep in report.values() for v in rep["valid_ndcg@10"]}) > 2, \
        "the weights and decays rank differently here"


def test_popularity_feature_is_the_log_count_standardised_within_each_domain():
    from crossrec.model.cooccurrence import popularity_feature

    domain_items = [np.arange(1, 5), np.arange(5, 8)]
    item_domain = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    item = np.array([1, 1, 1, 2, 3, 3, 5, 6, 6])  # item 4 and 7 never occur
    data = InteractionData(user=np.arange(9), item=item, domain=item_domain[item], ts=np.arange(9), n_users=9,
                           n_items=7, n_domains=2, domain_items=domain_items)
    f = popularity_feature(data).numpy()
    assert f[0] == 0.0
    for items in domain_items:
        assert abs(f[items].mean()) < 1e-6 and abs(f[items].std() - 1.0) < 1e-5
    assert f[1] > f[3] > f[2] > f[4] and f[6] > f[5] > f[7]
    counts = np.bincount(item, minlength=8)
    np.testing.assert_allclose(np.argsort(f[1:5]), np.argsort(np.log1p(counts[1:5])))


def test_cold_user_popularity_weight_is_chosen_on_users_new_to_the_domain(tmp_path):
    """Users with book history only and a movie target that follows movie popularity: the fit must turn the
    popularity term on for movies, and the model it leaves behind must score those validation rows, through the
    evaluation protocol, as reported for every weight tried."""
    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(5)
    dom, index = two_domain_index()
    movie_p = 0.5 ** np.arange(9)
    movie_p /= movie_p.sum()  # item 13 the most popular movie, then 14, ...
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.integers(1, 13, size=4)]
        new = u < 100  # users new to movies: book history, a movie target drawn by popularity
        movies = [] if new else [int(x) for x in rng.choice(np.arange(13, 22), size=3, p=movie_p)]
        hist = books + movies
        ts = list(range(100 * u, 100 * u + len(hist)))
        target = int(rng.choice(np.arange(13, 22), p=movie_p)) if new else int(rng.integers(1, 13))
        rows.append((f"u{u}", "train", "*", hist, [int(dom[i - 1]) for i in hist], ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if new else "books", hist, [int(dom[i - 1]) for i in hist], ts, target,
                     ts[-1] + 1, new, len(hist)))
    valid = valid_split(tmp_path, index, rows)
    model = untrained_model(dom, seed=1)  # untrained: knows no popularity
    report = fit_cooccurrence(model, valid, k=5, shrink=1.0, cold_grid=(0.0, 0.3, 0.7),  # not exact in float32
                              cold_text_grid=(0.0,))
    cold = report["movies"]["cold_popularity"]
    assert cold["rows"] == 100 and cold["weight"] in (0.3, 0.7), cold
    books = report["books"]["cold_popularity"]  # none new to books: its 60 rows, scored from their movies only
    assert books["rows"] == 60 and books["simulated"] and len(books["valid_ndcg@10"]) == 3, books
    assert cold["simulated"] is False
    assert model.cooc_cold_weight.tolist() == pytest.approx([books["weight"], cold["weight"]])
    ndcg = {t["weight"]: t["value"] for t in cold["valid_ndcg@10"]}
    assert ndcg[cold["weight"]] > ndcg[0.0] + 0.05, ndcg
    for p, value in ndcg.items():  # the cold_start segment = the rows the weight was chosen on
        model.cooc_cold_weight[1] = p
        got = next(x["value"] for x in evaluate("m", transformer_score_fn(model, valid), valid, ks=(10,), domains=["movies"])
                   if x["metric"] == "ndcg" and x["segment"] == "cold_start")
        assert got == pytest.approx(value, abs=1e-6), p
    few = fit_cooccurrence(model, valid, k=5, shrink=1.0, min_cold_rows=101)["movies"]
    assert few["cold_text_similarity"] == {"weight": 0.0, "decay": 1.0, "valid_ndcg@10": []}
    assert model.cold_text_weight(1) == 0.0
    few = few["cold_popularity"]
    # under 101 new to movies, and under 101 simulated ones (the same 100 rows, their book events): off
    assert few == {"weight": 0.0, "rows": 100, "simulated": True, "valid_ndcg@10": []}
    assert model.cold_popularity_weight(1) == 0.0


def test_cold_user_popularity_weight_falls_back_to_users_active_in_the_domain_scored_from_the_others(tmp_path):
    """No validation row of a user new to movies (every user has movie history, as on a data set whose only
    new users are the test's cold-start sample), movie targets that follow popularity: the fit must choose the
    popularity weight on the movie rows scored from their book events only, and what it reports for every
    weight must be what the evaluation protocol gives for those rows read from books alone."""
    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(6)
    dom, index = two_domain_index()
    movie_p = 0.5 ** np.arange(9)
    movie_p /= movie_p.sum()
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.integers(1, 13, size=4)]
        movies = [int(x) for x in rng.choice(np.arange(13, 22), size=3, p=movie_p)]  # popularity's training events
        hist = books + movies if u % 2 else movies + books
        ts = list(range(100 * u, 100 * u + len(hist)))
        to_movies = u < 100
        target = int(rng.choice(np.arange(13, 22), p=movie_p)) if to_movies else int(rng.integers(1, 13))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if to_movies else "books", hist, doms, ts, target, ts[-1] + 1, False,
                     len(hist)))
    valid = valid_split(tmp_path, index, rows)
    model = untrained_model(dom, seed=2)
    grid = (0.0, 0.3, 0.7)
    cold = fit_cooccurrence(model, valid, k=5, shrink=1.0, cold_grid=grid, cold_text_grid=(0.0,))["movies"]["cold_popularity"]
    assert cold["simulated"] and cold["rows"] == 100 and cold["weight"] in (0.3, 0.7), cold
    ndcg = {t["weight"]: t["value"] for t in cold["valid_ndcg@10"]}
    assert sorted(ndcg) == list(grid) and ndcg[cold["weight"]] > ndcg[0.0] + 0.05, ndcg
    assert model.cold_popularity_weight(1) == pytest.approx(cold["weight"])
    for p, value in ndcg.items():
        model.cooc_cold_weight[1] = p
        got = next(x["value"] for x in evaluate("m", transformer_score_fn(model, valid, input_domains=["books"]), valid,
                                                ks=(10,), domains=["movies"])
                   if x["metric"] == "ndcg" and x["segment"] == "all")
        assert got == pytest.approx(value, abs=1e-6), p
    capped = fit_cooccurrence(model, valid, k=5, shrink=1.0, cold_grid=grid, simulated_cold_rows=70)
    assert capped["movies"]["cold_popularity"]["rows"] == 70


def test_text_similarity_weight_is_chosen_where_the_next_item_has_the_closest_text(tmp_path):
    """Validation targets that are the text's nearest neighbour of the user's latest item in the domain: the fit
    must turn the text-similarity term on, leave the model with the chosen weight and decay, and the model must
    score the validation split, through the evaluation protocol, as reported for every pair tried."""
    import torch
    import torch.nn.functional as F

    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(7)
    dom, index = two_domain_index()
    model = untrained_model(dom, seed=2)  # untrained: its own scores know nothing of the text's neighbours
    unit = F.normalize(model.item_encoder.text_emb, dim=1)
    cos = (unit @ unit.T).numpy()
    rows = []
    for u in range(120):
        d = u % 2
        own = np.flatnonzero(dom == d) + 1
        hist = [int(x) for x in rng.choice(own, size=3, replace=False)]
        hist += [int(x) for x in rng.choice(np.flatnonzero(dom != d) + 1, size=2, replace=False)]
        rng.shuffle(hist[:4])
        cand = [j for j in own if j not in hist]
        latest = [i for i in hist if dom[i - 1] == d][-1]
        target = int(max(cand, key=lambda j: cos[latest, j]))
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", ["books", "movies"][d], hist, doms, ts, target, ts[-1] + 1, False, len(hist)))
    valid = valid_split(tmp_path, index, rows)
    report = fit_cooccurrence(model, valid, k=5, shrink=1.0, grid=(0.0, 1.0), text_grid=(0.0, 1.0, 4.0), next_grid=(0.0,))
    assert model.has_text_similarity
    for d, rep in report.items():
        text = rep["text_similarity"]
        ndcg = {(t["weight"], t["decay"]): t["value"] for t in text["valid_ndcg@10"]}
        assert len(ndcg) == 1 + 2 * 4, "weight 0 once, every other weight with every decay"
        assert (text["weight"], text["decay"]) == max(ndcg, key=lambda c: (ndcg[c], -c[0], c[1]))
        assert text["weight"] > 0 and ndcg[(text["weight"], text["decay"])] > ndcg[(0.0, 1.0)] + 0.1, (d, ndcg)
        d_idx = valid.domains.index(d)
        assert model.text_similarity_weight(d_idx) == text["weight"]
        assert model.text_similarity_decay(d_idx) == pytest.approx(text["decay"])
        for (t, r), value in ndcg.items():  # the co-occurrence term stays at its chosen weight and decay
            model.text_sim_weight[d_idx], model.text_sim_decay[d_idx] = t, r
            got = next(x["value"] for x in evaluate("m", transformer_score_fn(model, valid), valid, ks=(10,), domains=[d])
                       if x["metric"] == "ndcg" and x["segment"] == "all")
            assert got == pytest.approx(value, abs=1e-6), (d, t, r)
    off = untrained_model(dom, seed=2)
    report = fit_cooccurrence(off, valid, k=5, shrink=1.0, grid=(0.0,), text_grid=(0.0,), next_grid=(0.0,),
                              cold_grid=(0.0,), cold_text_grid=(0.0,))
    assert all(r["text_similarity"] == {"weight": 0.0, "decay": 1.0, "valid_ndcg@10": []} for r in report.values())
    assert all(r["next_item"] == {"weight": 0.0, "valid_ndcg@10": []} for r in report.values())
    assert off.text_similarity_weight(0) == off.text_similarity_weight(1) == 0.0
    assert not off.has_score_terms(0) and not off.has_score_terms(1)


@pytest.mark.parametrize("new_users", [True, False], ids=["users-new-to-movies", "simulated-from-active-users"])
def test_cold_text_weight_is_chosen_where_a_new_users_target_has_the_closest_text_to_their_other_events(tmp_path, new_users):
    """Movie targets that are the text's nearest movie to the user's two oldest books, for users new to movies (or, when
    every user has movie history, for users read from their books only): the fit must turn the cross-domain text
    term on for movies, and the model it leaves must score those rows, through the evaluation protocol, as
    reported for every (weight, decay) tried, with the popularity weight it chose first."""
    import torch.nn.functional as F

    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(8)
    dom, index = two_domain_index()
    model = untrained_model(dom, seed=3)
    unit = F.normalize(model.item_encoder.text_emb, dim=1)
    cos = (unit @ unit.T).numpy()
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.choice(np.arange(1, 13), size=4, replace=False)]
        to_movies = u < 100
        movies = [] if (new_users and to_movies) else [int(x) for x in rng.choice(np.arange(13, 22), size=2, replace=False)]
        hist = movies + books  # the latest events are books; the target is closest to the two oldest
        target = (int(max((j for j in range(13, 22) if j not in hist), key=lambda j: cos[books[0], j] + cos[books[1], j])) if to_movies
                  else int(rng.choice([b for b in range(1, 13) if b not in hist])))
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if to_movies else "books", hist, doms, ts, target, ts[-1] + 1,
                     new_users and to_movies, len(hist)))
    valid = valid_split(tmp_path, index, rows)
    report = fit_cooccurrence(model, valid, k=5, shrink=1.0, grid=(0.0,), text_grid=(0.0,), next_grid=(0.0,),
                              cold_grid=(0.0, 0.5), cold_text_grid=(0.0, 1.0, 4.0), decays=(1.0, 0.5))
    cold, xtext = report["movies"]["cold_popularity"], report["movies"]["cold_text_similarity"]
    assert cold["rows"] == 100 and cold["simulated"] is (not new_users), cold
    ndcg = {(t["weight"], t["decay"]): t["value"] for t in xtext["valid_ndcg@10"]}
    assert sorted(ndcg) == [(0.0, 1.0), (1.0, 0.5), (1.0, 1.0), (4.0, 0.5), (4.0, 1.0)]
    best = (xtext["weight"], xtext["decay"])
    assert best == max(ndcg, key=lambda c: (ndcg[c], -c[0], c[1])) and best[0] > 0
    assert ndcg[best] > ndcg[(0.0, 1.0)] + 0.1, ndcg
    assert ndcg[(0.0, 1.0)] == pytest.approx(next(t["value"] for t in cold["valid_ndcg@10"] if t["weight"] == cold["weight"]))
    assert model.cold_text_weight(1) == best[0] and model.cold_text_decay(1) == pytest.approx(best[1])
    assert model.cold_popularity_weight(1) == pytest.approx(cold["weight"])
    score_fn = transformer_score_fn(model, valid, input_domains=None if new_users else ["books"])
    segment = "cold_start" if new_users else "all"
    for (x, r), value in ndcg.items():
        model.text_sim_cold_weight[1], model.text_sim_cold_decay[1] = x, r
        got = next(t["value"] for t in evaluate("m", score_fn, valid, ks=(10,), domains=["movies"])
                   if t["metric"] == "ndcg" and t["segment"] == segment)
        assert got == pytest.approx(value, abs=1e-6), (x, r)


def test_next_item_transitions_count_what_came_right_after_within_a_users_domain_events():
    from crossrec.model.cooccurrence import next_item_transitions

    domain_items = [np.arange(1, 5), np.arange(5, 8)]
    item_domain = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    # user 0: 1 5 2 6 3 (domain 0: 1 -> 2 -> 3, domain 1: 5 -> 6), listed out of time order;
    # user 1: 1 2 and 7 at one time as 5 (ties keep their order in the data: 7 -> 5); user 2: 2 alone
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    item = np.array([3, 1, 5, 2, 6, 1, 2, 7, 5, 2])
    ts = np.array([50, 10, 20, 30, 40, 10, 20, 30, 30, 10])
    data = InteractionData(user=user, item=item, domain=item_domain[item], ts=ts, n_users=3, n_items=7, n_domains=2,
                           domain_items=domain_items)
    indptr, indices, values = next_item_transitions(data)
    m = sp.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()), shape=(8, 8)).toarray()
    want = np.zeros((8, 8))
    want[1, 2] = 2  # users 0 and 1
    want[2, 3] = 1
    want[5, 6] = 1
    want[7, 5] = 1
    np.testing.assert_array_equal(m, want)


def test_next_item_weight_is_chosen_where_the_next_item_follows_the_latest_one(tmp_path):
    """Each book is followed by one fixed book in the training sequences, and the validation target is that book's
    follower: the fit must turn the next-item term on and the model must score the validation split, through the
    evaluation protocol, as reported for every weight tried."""
    from crossrec.evaluate.protocol import evaluate, transformer_score_fn
    from crossrec.model.cooccurrence import fit_cooccurrence

    rng = np.random.default_rng(11)
    dom, index = two_domain_index()
    nxt = {i: i % 12 + 1 for i in range(1, 13)}  # book i is followed by book i + 1 (12 by 1)
    rows = []
    for u in range(100):
        start = int(rng.integers(1, 13))
        books = [start]
        while len(books) < 4:
            books.append(nxt[books[-1]])
        hist = books[:3] + [int(rng.integers(13, 22))]
        target = books[3]
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "books", hist, doms, ts, target, ts[-1] + 1, False, len(hist)))
    valid = valid_split(tmp_path, index, rows)
    model = untrained_model(dom, seed=3)
    report = fit_cooccurrence(model, valid, k=5, shrink=1.0, grid=(0.0,), text_grid=(0.0,), next_grid=(0.0, 0.5, 3.0))
    rep = report["books"]["next_item"]
    ndcg = {t["weight"]: t["value"] for t in rep["valid_ndcg@10"]}
    assert set(ndcg) == {0.0, 0.5, 3.0} and rep["weight"] > 0 and ndcg[rep["weight"]] > ndcg[0.0] + 0.2, ndcg
    assert model.transition_weight(0) == rep["weight"]
    for m, value in ndcg.items():
        model.trans_weight[0] = m
        got = next(x["value"] for x in evaluate("m", transformer_score_fn(model, valid), valid, ks=(10,), domains=["books"])
                   if x["metric"] == "ndcg" and x["segment"] == "all")
        assert got == pytest.approx(value, abs=1e-6), m
