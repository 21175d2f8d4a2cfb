"""The co-occurrence term's similarity: item-KNN's, restricted to pairs within one domain."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("torch")

from crossrec.model.baselines import InteractionData, cosine_topk  # noqa: E402
from crossrec.model.cooccurrence import same_domain_similarity  # noqa: E402


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
