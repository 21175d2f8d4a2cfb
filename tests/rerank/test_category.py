"""The category term: a user's category taste in the domain times the item's share of its category's training events."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.rerank.category import ALPHA, BETA, NO_CATEGORIES, CategoryTerm, category_statistics  # noqa: E402
from conftest import CATEGORIES  # noqa: E402

# training events of the tiny catalog's items (index = item id; 0 = padding)
EVENTS = [0, 5, 1, 2, 0, 4, 3, 0, 6, 2]


def fitted(catalog) -> CategoryTerm:
    term = CategoryTerm()
    term.fit(SimpleNamespace(item=np.repeat(np.arange(len(EVENTS)), EVENTS)), catalog)
    return term


def hand(domain_items: list[int], history: list[int], decay: float) -> list[float]:
    """``log P(c(j) | u) + log P(j | c(j))`` for each item of one domain, by the module docstring's formula (items
    without a category are one category of their own)."""
    cats = {j: CATEGORIES[j] for j in domain_items}
    n_c = {c: sum(EVENTS[j] for j in domain_items if cats[j] == c) for c in set(cats.values())}
    size = {c: sum(1 for j in domain_items if cats[j] == c) for c in n_c}
    pi = {c: (n_c[c] + 1) / (sum(n_c.values()) + len(n_c)) for c in n_c}
    in_d = [i for i in history if i in cats]
    w = [decay ** (len(in_d) - 1 - p) for p in range(len(in_d))]
    n_u = {c: sum(x for x, i in zip(w, in_d) if cats[i] == c) for c in n_c}
    return [math.log((n_u[cats[j]] + ALPHA * pi[cats[j]]) / (sum(w) + ALPHA))
            + math.log((EVENTS[j] + BETA) / (n_c[cats[j]] + BETA * size[cats[j]])) for j in domain_items]


def test_features_are_the_log_category_taste_plus_the_log_share_of_the_category(tiny):
    catalog = tiny.catalog()
    term = fitted(catalog)
    seqs = [[1, 6, 3, 2, 7, 4], [8, 9, 6], [5, 1], [6], []]  # row 0: an uncategorised event (4); rows 3, 4: none in 0
    batch = tiny.batch(seqs, T=8)
    for d, r in ((0, 0.5), (1, 1.0), (0, 1.0)):
        items = catalog.domain_items[d].tolist()
        got = term.features(batch["item_idx"], d, decay=r)
        assert got.shape == (len(seqs), len(items))
        for b, s in enumerate(seqs):
            torch.testing.assert_close(got[b], torch.tensor(hand(items, s, r)))
    row = term.features(batch["item_idx"], 0)[0]
    assert float(row[0]) > float(row[2]), "item 1 (category 1, 5 events) over item 3 (category 2): taste and share"


def test_statistics_per_item_and_a_domain_without_categories():
    attr = np.array([0, 1, 1, 2, 0, 0])
    log_in, prior = category_statistics(np.array([0, 3, 1, 4, 2, 0]), attr, [np.array([1, 2, 3]), np.array([4, 5])])
    np.testing.assert_allclose(np.exp(log_in[1:4]), [3.1 / 4.2, 1.1 / 4.2, 4.1 / 4.1], rtol=1e-6)
    np.testing.assert_allclose(prior[1:4], [5 / 10, 5 / 10, 5 / 10], rtol=1e-6)  # (4 + 1) / (8 + 2) each
    np.testing.assert_allclose(np.exp(log_in[4:]), [2.1 / 2.2, 0.1 / 2.2], rtol=1e-6)  # one category: "none"
    np.testing.assert_allclose(prior[4:], [1.0, 1.0])
    assert log_in[0] == 0 and prior[0] == 0, "padding"


def test_the_fitted_state_round_trips_and_a_model_without_categories_cannot_use_it(tiny):
    catalog = tiny.catalog()
    assert catalog.item_attr.tolist() == CATEGORIES, "the catalog reads the model's category ids"
    term = fitted(catalog)
    again = CategoryTerm()
    again.load_state_dict(term.state_dict(), catalog)
    batch = tiny.batch([[1, 6, 3, 2, 7, 4]], T=8)["item_idx"]
    torch.testing.assert_close(again.features(batch, 0, decay=0.8), term.features(batch, 0, decay=0.8), rtol=0, atol=0)
    none = dataclasses.replace(catalog, item_attr=None)  # as for a model without a category embedding
    assert NO_CATEGORIES in CategoryTerm().unusable(none)
    assert NO_CATEGORIES in CategoryTerm().unusable(dataclasses.replace(catalog, item_attr=torch.zeros(10, dtype=torch.long)))
    assert CategoryTerm().unusable(catalog) is None
    with pytest.raises(AssertionError, match="no category ids"):
        CategoryTerm().fit(SimpleNamespace(item=np.array([1])), none)
