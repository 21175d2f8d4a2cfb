"""The text term for users new to a domain: cosines to all their recent events, in any domain."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from crossrec.rerank.cold_text import ColdTextTerm  # noqa: E402


def test_features_sum_the_recency_weighted_cosines_of_every_event(tiny):
    term = ColdTextTerm()
    term.fit(None, tiny.catalog())
    seqs = [[1, 2, 3, 2], [6, 7], [8, 1], []]
    x = term.features(tiny.batch(seqs, T=5)["item_idx"], 1, decay=0.5)
    items = tiny.model.domain_items(1)
    for b, s in enumerate(seqs):  # every event of the history (any domain), the latest weighted 1
        want = sum((0.5 ** (len(s) - 1 - p) * tiny.unit[i] @ tiny.unit[items].T for p, i in enumerate(s)),
                   torch.zeros(items.numel()))
        torch.testing.assert_close(x[b], want)
    assert float(x[0].abs().sum()) > 0 and ColdTextTerm.applies_to == "cold"
