"""The co-occurrence term: item-KNN's similarity within one domain, summed over the distinct history items."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from crossrec.model.baselines import InteractionData, cosine_topk  # noqa: E402
from crossrec.rerank.cooccurrence import CooccurrenceTerm, same_domain_similarity  # noqa: E402


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


def term_with(tiny, seed=0) -> tuple[CooccurrenceTerm, torch.Tensor]:
    dense, state = tiny.pairs(seed)
    term = CooccurrenceTerm()
    term.load_state_dict(state, tiny.catalog())
    return term, dense


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_features_are_the_decayed_similarity_over_distinct_history_items_over_its_row_maximum(tiny, decay):
    term, dense = term_with(tiny)
    seqs = [[1, 2, 6, 3, 2, 7, 4], [3, 8, 9], [5], []]  # a repeated item counts once, at its last occurrence
    batch = tiny.batch(seqs, T=8)
    dom = tiny.dom.tolist()
    for d in (0, 1):
        items = tiny.model.domain_items(d)
        got = term.features(batch["item_idx"], d, decay=decay)
        assert got.shape == (len(seqs), items.numel())
        for b, s in enumerate(seqs):
            in_d = [i for i in s if dom[i] == d]
            age = {i: len(in_d) - 1 - max(p for p, x in enumerate(in_d) if x == i) for i in set(in_d)}
            c = sum((decay ** a * dense[i][items] for i, a in age.items()), torch.zeros(items.numel()))
            torch.testing.assert_close(got[b], c / c.max() if c.max() > 0 else c)
    assert float(term.features(batch["item_idx"], 0)[0].abs().sum()) > 0, "the data exercise the sum"
    assert max(len([i for i in s if dom[i] == 0]) for s in seqs) >= 3, "the data have items of age >= 2"


def test_the_dense_table_gives_the_sparse_sums(tiny):
    term, _ = term_with(tiny, seed=1)
    batch = tiny.batch([[1, 2, 6, 3, 2, 7, 1], [8, 9, 4, 9], [5], [6, 7, 6], []], T=8)
    want = [term.features(batch["item_idx"], d, decay=0.7) for d in (0, 1)]
    assert term.table_bytes(0) == 5 * 5 * 4
    for d in (0, 1):
        term.build_table(d)
        torch.testing.assert_close(term.features(batch["item_idx"], d, decay=0.7), want[d], rtol=1e-5, atol=1e-6)
    term.load_state_dict(term.state_dict(), tiny.catalog())
    assert term._tables == {}, "new state drops the tables built from the old one"


def test_state_round_trips_and_pairs_across_domains_are_rejected(tiny):
    term, _ = term_with(tiny)
    assert term.indices.dtype == torch.int32 and term.options() == {"k": 200, "shrink": 10.0}
    again = CooccurrenceTerm(**term.options())
    again.load_state_dict(term.state_dict(), tiny.catalog())
    batch = tiny.batch([[1, 2, 6], [8, 9]], T=3)
    torch.testing.assert_close(again.features(batch["item_idx"], 0, decay=0.6), term.features(batch["item_idx"], 0, decay=0.6))
    indptr = torch.zeros(11, dtype=torch.long)
    indptr[2:] = 1  # row 1 (domain 0) has one neighbour: item 6 (domain 1)
    with pytest.raises(AssertionError, match="within one domain"):
        CooccurrenceTerm().load_state_dict({"indptr": indptr, "indices": torch.tensor([6]), "values": torch.tensor([0.5])},
                                           tiny.catalog())
