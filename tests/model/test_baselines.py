"""Tests of crossrec.model.baselines: the data container, Popularity and cross-domain ItemKNN."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from crossrec.evaluate.metrics import evaluate_full_ranking
from crossrec.model.baselines import (
    InteractionData,
    ItemKNN,
    Popularity,
    Recommender,
    cosine_topk,
    domain_items_from_item_index,
)

# Handmade two-domain data. Domain A (0): items 1, 2, 3 -> columns 0, 1, 2. Domain B (1): items 4, 5, 6.
#   u0: 1 4    u1: 1 4    u2: 2 5    u3: 3 5 6    u4: 2 3    u5: 2 (domain A only)
# Items 1 and 4 are always consumed together; user 5 has no history in domain B.
HAND = [(0, 1), (0, 4), (1, 1), (1, 4), (2, 2), (2, 5), (3, 3), (3, 5), (3, 6), (4, 2), (4, 3), (5, 2)]
DOMAIN_ITEMS = [np.array([1, 2, 3]), np.array([4, 5, 6])]


def make_data(pairs, n_users, domain_items, n_items=None):
    user = np.array([u for u, _ in pairs], dtype=np.int64)
    item = np.array([i for _, i in pairs], dtype=np.int64)
    n_items = n_items or int(sum(len(d) for d in domain_items))
    item_domain = np.zeros(n_items + 1, dtype=np.int64)
    for d, items in enumerate(domain_items):
        item_domain[items] = d
    return InteractionData(user=user, item=item, domain=item_domain[item], ts=np.arange(len(user), dtype=np.int64),
                           n_users=n_users, n_items=n_items, n_domains=len(domain_items), domain_items=domain_items)


@pytest.fixture()
def hand() -> InteractionData:
    return make_data(HAND, 6, DOMAIN_ITEMS)


def planted(seed: int = 0, n_users: int = 5000, per_user: int = 10, n_domains: int = 3, per_domain: int = 600,
            topics: int = 6):
    """~50k interactions with a cross-domain signal: each user likes one topic in every domain; item topic =
    (item_idx - 1) % topics; 90% of events on the user's topic, popularity flat inside a topic. Users 0..999 never
    touch domain 1 in training (cold start there). Returns the data and each user's held-out domain-1 item."""
    assert per_domain % topics == 0
    rng = np.random.default_rng(seed)
    domain_items = [np.arange(1 + d * per_domain, 1 + (d + 1) * per_domain) for d in range(n_domains)]
    user_topic = rng.integers(0, topics, size=n_users)
    users, items = [], []
    for u in range(n_users):
        doms = [0, 2] if u < 1000 else list(range(n_domains))
        d = rng.choice(doms, size=per_user)
        on_topic = rng.random(per_user) < 0.9
        t = np.where(on_topic, user_topic[u], rng.integers(0, topics, size=per_user))
        j = rng.integers(0, per_domain // topics, size=per_user)
        items.append(1 + d * per_domain + t + topics * j)  # the j-th item of topic t in domain d
        users.append(np.full(per_user, u))
    user, item = np.concatenate(users), np.concatenate(items)
    item_domain = np.repeat(np.arange(n_domains), per_domain)
    data = InteractionData(user=user, item=item, domain=item_domain[item - 1], ts=np.zeros_like(user),
                           n_users=n_users, n_items=n_domains * per_domain, n_domains=n_domains,
                           domain_items=domain_items)
    # Held out: an on-topic domain-1 item per user (column of domain 1).
    target_item = 1 + per_domain + user_topic + topics * rng.integers(0, per_domain // topics, size=n_users)
    assert ((item - 1) % topics == np.repeat(user_topic, per_user)).mean() > 0.85  # the planted signal
    return data, data.item_col[target_item]


# ----------------------------------------------------------------------------------------------------
# InteractionData.


def test_interaction_data_lookups_and_matrices(hand):
    np.testing.assert_array_equal(hand.item_domain, [-1, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(hand.item_col, [-1, 0, 1, 2, 0, 1, 2])
    m = hand.user_item_matrix()
    assert m.shape == (6, 7) and m.dtype == np.float32 and m[:, 0].nnz == 0
    assert m[3].toarray().tolist() == [[0, 0, 0, 1, 0, 1, 1]]
    seen = hand.seen_in_domain(np.array([5, 3, 0]), 1)
    assert seen.shape == (3, 3)
    assert seen.toarray().tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_log_weighting_counts_repeats():
    data = make_data(HAND + [(0, 1), (0, 1)], 6, DOMAIN_ITEMS)
    assert data.user_item_matrix("binary")[0, 1] == 1.0
    assert data.user_item_matrix("log")[0, 1] == pytest.approx(math.log1p(3))
    assert data.user_item_matrix("log")[0, 4] == pytest.approx(math.log1p(1))


@pytest.mark.parametrize("change, match", [
    (dict(domain=np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0, 0])), "domain is not"),
    (dict(n_users=5), "user outside"),
    (dict(domain_items=[np.array([1, 2]), np.array([4, 5, 6])]), "missing"),
    (dict(domain_items=[np.array([1, 2, 3]), np.array([3, 5, 6])]), "twice"),
])
def test_interaction_data_rejects_inconsistent_input(hand, change, match):
    kw = dict(user=hand.user, item=hand.item, domain=hand.domain, ts=hand.ts, n_users=6, n_items=6, n_domains=2,
              domain_items=DOMAIN_ITEMS)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        InteractionData(**kw)


def test_domain_items_from_item_index():
    idx = pd.DataFrame({"item_idx": [4, 1, 5, 2, 3], "domain_idx": [1, 0, 1, 0, 0], "domain_item_idx": [0, 2, 1, 0, 1]})
    out = domain_items_from_item_index(idx)
    assert [a.tolist() for a in out] == [[2, 3, 1], [4, 5]]


# ----------------------------------------------------------------------------------------------------
# Popularity.


def test_popularity_ranks_by_training_count(hand):
    model = Popularity().fit(hand)
    assert isinstance(model, Recommender) and model.name == "pop"
    # Counts: item 1: 2, 2: 3, 3: 2 | 4: 2, 5: 2, 6: 1
    a = model.full_sort_predict(np.array([0, 5, 2]), 0)
    assert a.shape == (3, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, [[2, 3, 2]] * 3)
    np.testing.assert_array_equal(model.full_sort_predict(np.array([4]), 1), [[2, 2, 1]])
    assert model.full_sort_predict(np.array([], dtype=np.int64), 1).shape == (0, 3)


def test_predict_checks_its_arguments(hand):
    with pytest.raises(RuntimeError, match="not fitted"):
        Popularity().full_sort_predict(np.array([0]), 0)
    for model in (Popularity().fit(hand), ItemKNN().fit(hand)):
        with pytest.raises(ValueError, match="domain"):
            model.full_sort_predict(np.array([0]), 2)
        with pytest.raises(ValueError, match="user"):
            model.full_sort_predict(np.array([6]), 0)


# ----------------------------------------------------------------------------------------------------
# ItemKNN.


def test_itemknn_handmade_similarities(hand):
    model = ItemKNN(k=200, shrink=0.0).fit(hand)
    s = model.similarity_.toarray()  # (7, 7); column j = neighbours of j
    assert s.shape == (7, 7)
    np.testing.assert_allclose(s, s.T, atol=1e-7)  # all neighbours kept: cosine is symmetric
    assert np.all(np.diag(s) == 0)
    # 1 and 4 are always co-consumed: cosine 1, each the other's nearest neighbour.
    assert s[4, 1] == pytest.approx(1.0) and s[1, 4] == pytest.approx(1.0)
    assert np.argmax(s[:, 1]) == 4 and np.argmax(s[:, 4]) == 1
    # By hand: item 2 = {u2, u4, u5}, item 5 = {u2, u3}, item 3 = {u3, u4}, item 6 = {u3}.
    assert s[2, 5] == pytest.approx(1 / math.sqrt(6))
    assert s[3, 6] == pytest.approx(1 / math.sqrt(2))
    assert s[2, 4] == 0
    # Shrinkage: 2 / (sqrt(2) sqrt(2) + 1).
    shrunk = ItemKNN(shrink=1.0).fit(hand).similarity_
    assert shrunk[1, 4] == pytest.approx(2 / 3)


def test_itemknn_scores_a_domain_from_history_in_another(hand):
    model = ItemKNN(shrink=0.0).fit(hand)
    b = model.full_sort_predict(np.array([5, 0]), 1)  # domain B columns: items 4, 5, 6
    assert b.shape == (2, 3) and b.dtype == np.float32
    # User 5 has only item 2 (domain A); item 2 co-occurs with item 5 (user 2) and nothing else in B.
    np.testing.assert_allclose(b[0], [0, 1 / math.sqrt(6), 0], rtol=1e-6)
    # User 0 (items 1 and 4): item 4 via item 1 (the seen item 4 is not its own neighbour).
    np.testing.assert_allclose(b[1], [1, 0, 0], rtol=1e-6)
    a = model.full_sort_predict(np.array([0]), 0)
    np.testing.assert_allclose(a[0], [1, 0, 0], rtol=1e-6)  # item 1 via item 4, across domains


def test_itemknn_keeps_k_neighbours_per_item():
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((60, 25)) < 0.3).astype(np.float32))
    full = cosine_topk(x, k=1000, shrink=2.0).toarray()
    xd = x.toarray().astype(np.float64)
    norms = np.linalg.norm(xd, axis=0)
    ref = xd.T @ xd / (norms[:, None] * norms[None, :] + 2.0)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-7)
    top3 = cosine_topk(x, k=3, shrink=2.0)
    assert (np.diff(top3.indptr) <= 3).all()
    for j in range(25):
        kept = np.sort(top3[:, j].toarray().ravel())[::-1][:3]
        np.testing.assert_allclose(kept, np.sort(ref[:, j])[::-1][:3], rtol=1e-5)


def test_itemknn_blocks_and_refits_are_identical():
    data, _ = planted(seed=1, n_users=800, per_domain=120)
    one = ItemKNN(k=20).fit(data)
    blocked = ItemKNN(k=20, block_bytes=4 * (data.n_items + 1) * 7).fit(data)  # 7 items per block
    again = ItemKNN(k=20).fit(data)
    users = np.arange(0, 800, 3)
    for other in (blocked, again):
        assert (one.similarity_ != other.similarity_).nnz == 0
        np.testing.assert_array_equal(one.full_sort_predict(users, 1), other.full_sort_predict(users, 1))
    assert (np.diff(one.similarity_.indptr) <= 20).all()


def test_itemknn_user_without_history_scores_zero(hand):
    data = make_data(HAND, 7, DOMAIN_ITEMS)  # user 6 has no interactions
    out = ItemKNN().fit(data).full_sort_predict(np.array([6]), 0)
    np.testing.assert_array_equal(out, np.zeros((1, 3), dtype=np.float32))


# ----------------------------------------------------------------------------------------------------
# End to end on ~50k interactions: fit, score, evaluate.


def test_baselines_on_planted_cross_domain_signal():
    data, target_col = planted(seed=0)
    assert len(data) == 50_000
    users = np.arange(data.n_users)
    seen = data.seen_in_domain(users, 1)
    n_d = data.domain_size(1)
    results = {}
    for model in (Popularity(), ItemKNN(k=200, shrink=10.0), ItemKNN(k=50, weighting="log")):
        model.fit(data)
        out = model.full_sort_predict(users[:7], 1)
        assert out.shape == (7, n_d) and out.dtype == np.float32 and np.isfinite(out).all()
        res = evaluate_full_ranking(lambda u, m=model: m.full_sort_predict(u, 1), users, target_col, seen, n_d,
                                    chunk_users=1024)
        for i in range(data.n_users):  # no training item in any top-k list (the target may be one)
            assert not set(res.topk[i].tolist()) & (set(seen[i].indices.tolist()) - {int(target_col[i])})
        results[repr(model)] = res
    pop, knn = results["Popularity()"], results["ItemKNN(k=200, shrink=10.0, weighting='binary')"]
    assert results["ItemKNN(k=50, shrink=10.0, weighting='log')"].metrics["ndcg@10"] > 2 * pop.metrics["ndcg@10"]
    random_recall = 20 / n_d
    assert pop.metrics["recall@20"] < 3 * random_recall  # flat popularity inside topics: close to random
    assert knn.metrics["ndcg@10"] > 2 * pop.metrics["ndcg@10"]
    # Cold-start users (no domain-1 training history) are served through their other domains.
    assert (knn.ranks[:1000] <= 20).mean() > 3 * random_recall
    assert knn.coverage > pop.coverage
