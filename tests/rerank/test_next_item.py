"""The next-item term: the followers of the user's latest item of the domain."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from crossrec.model.baselines import InteractionData  # noqa: E402
from crossrec.rerank.next_item import NextItemTerm, latest_domain_items, next_item_transitions  # noqa: E402


def test_transitions_count_what_came_right_after_within_a_users_domain_events():
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


def test_features_are_the_followers_of_the_latest_domain_item_over_their_maximum(tiny):
    dense, _ = tiny.pairs(seed=4)  # any same-domain matrix serves as transition counts
    dense = (dense * 10).round()
    csr = sp.csr_matrix(dense.numpy())
    term = NextItemTerm()
    term.load_state_dict({"indptr": torch.from_numpy(csr.indptr).long(), "indices": torch.from_numpy(csr.indices),
                          "values": torch.from_numpy(csr.data)}, tiny.catalog())
    seqs = [[1, 2, 6, 3, 7], [8, 9, 4], [5, 6], [6, 7]]  # domain 0's latest: 3, 4, 5, none
    batch = tiny.batch(seqs, T=6)
    items = tiny.model.domain_items(0)
    m = term.features(batch["item_idx"], 0)
    for b, latest in enumerate([3, 4, 5, None]):
        row = dense[latest][items] if latest else torch.zeros(items.numel())
        torch.testing.assert_close(m[b], row / row.max() if row.max() > 0 else row)
    assert int((m.amax(1) == 1.0).sum()) >= 2, "the data give several rows followers"
    torch.testing.assert_close(latest_domain_items(batch["item_idx"], tiny.dom, 1), torch.tensor([7, 9, 6, 7]))
    assert term.table_bytes(0) == (5 + 1) * 5 * 4, "row n_d: users without a latest item"
    term.build_table(0)
    torch.testing.assert_close(term.features(batch["item_idx"], 0), m)


def test_transitions_across_domains_are_rejected(tiny):
    indptr = torch.zeros(11, dtype=torch.long)
    indptr[2:] = 1  # row 1 (domain 0) followed by item 6 (domain 1)
    with pytest.raises(AssertionError, match="within one domain"):
        NextItemTerm().load_state_dict({"indptr": indptr, "indices": torch.tensor([6]), "values": torch.tensor([1.0])},
                                       tiny.catalog())
