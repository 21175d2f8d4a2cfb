"""The popularity term for users new to a domain."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.model.baselines import InteractionData  # noqa: E402
from crossrec.rerank.cold_popularity import ColdPopularityTerm, popularity_feature  # noqa: E402


def test_popularity_feature_is_the_log_count_standardised_within_each_domain():
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


def test_features_are_the_domains_popularity_for_every_row(tiny):
    pop = torch.linspace(-1.5, 1.5, 10)
    pop[0] = 0.0
    term = ColdPopularityTerm()
    term.load_state_dict({"popularity": pop}, tiny.catalog())
    f = term.features(tiny.batch([[1, 2], [3], []], T=2)["item_idx"], 1)
    torch.testing.assert_close(f, pop[tiny.model.domain_items(1)].expand(3, -1))
    with pytest.raises(AssertionError, match=r"popularity must be \(10,\)"):
        term.load_state_dict({"popularity": pop[:5]}, tiny.catalog())
