"""The category term: a user's category taste in the domain times the item's share of its category's training events."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.rerank.category import (ALPHA, BETA, NO_CATEGORIES, CategoryTerm, category_statistics,  # noqa: E402
                                      category_transfer, item_groups)
from crossrec.rerank.cold_category import ColdCategoryTerm  # noqa: E402
from conftest import CATEGORIES  # noqa: E402

# training events of the tiny catalog's items (index = item id; 0 = padding), by users 0..2 in turn
EVENTS = [0, 5, 1, 2, 0, 4, 3, 0, 6, 2]
ITEMS = np.repeat(np.arange(len(EVENTS)), EVENTS)
USERS = np.arange(len(ITEMS)) % 3


def fitted(catalog, cls=CategoryTerm) -> CategoryTerm:
    term = cls()
    term.fit(SimpleNamespace(item=ITEMS, user=USERS, n_users=3), catalog)
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
        CategoryTerm().fit(SimpleNamespace(item=np.array([1]), user=np.array([0]), n_users=1), none)
    old = {k: v for k, v in term.state_dict().items() if not k.startswith("transfer_")}  # saved before the table
    again.load_state_dict(old, catalog)
    torch.testing.assert_close(again.features(batch, 1, transfer=1.0), term.features(batch, 1), rtol=0, atol=0)


def reference_transfer(users, groups, group_domain) -> dict[tuple[int, int], float]:
    """``T(s, c)`` by the docstring of :func:`category_transfer`, with no cut: per user, the share of their events of
    each domain in each group, cross-domain products summed, normalised per (source, target domain)."""
    mass: dict[tuple[int, int], float] = {}
    for u in set(users):
        mine = [g for x, g in zip(users, groups) if x == u]
        share = {g: mine.count(g) / sum(group_domain[h] == group_domain[g] for h in mine) for g in set(mine)}
        for s in share:
            for c in share:
                if group_domain[s] != group_domain[c]:
                    mass[s, c] = mass.get((s, c), 0.0) + share[s] * share[c]
    total: dict[tuple[int, int], float] = {}
    for (s, c), v in mass.items():
        total[s, group_domain[c]] = total.get((s, group_domain[c]), 0.0) + v
    return {(s, c): v / total[s, group_domain[c]] for (s, c), v in mass.items()}


def as_dict(indptr, indices, values) -> dict[tuple[int, int], float]:
    return {(s, int(indices[e])): float(values[e]) for s in range(len(indptr) - 1) for e in range(indptr[s], indptr[s + 1])}


def test_category_transfer_is_the_co_user_category_table_cut_to_k_per_target_domain():
    # groups 0..3 in domain 0, 4..6 in domain 1; user 0: groups 1, 1, 2 then 4; user 1: 2 then 5, 6; user 2: domain 0 only
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    groups = np.array([1, 1, 2, 4, 2, 5, 6, 3, 3])
    group_domain = np.array([0, 0, 0, 0, 1, 1, 1])
    full = as_dict(*category_transfer(users, groups, 3, group_domain, k=10))
    want = reference_transfer(users.tolist(), groups.tolist(), group_domain.tolist())
    assert full.keys() == want.keys() and all(full[k] == pytest.approx(v) for k, v in want.items())
    assert full[2, 4] == pytest.approx(0.25) and full[2, 5] == full[2, 6] == pytest.approx(0.375), "by hand"
    assert full[4, 1] == pytest.approx(2 / 3) and full[5, 2] == pytest.approx(1.0)
    assert not any(k[0] == 3 for k in full), "a group none of whose users is active elsewhere carries nothing"
    cut = as_dict(*category_transfer(users, groups, 3, group_domain, k=2))
    assert cut[2, 5] == cut[2, 6] == pytest.approx(0.5) and (2, 4) not in cut, "the 2 largest, renormalised"
    assert {k: v for k, v in cut.items() if k[0] != 2} == pytest.approx({k: v for k, v in full.items() if k[0] != 2})


def test_the_other_domains_events_are_carried_into_the_taste(tiny):
    catalog = tiny.catalog()
    term = fitted(catalog)
    group, group_domain = item_groups(np.array(CATEGORIES), catalog.item_domain.numpy())
    table = as_dict(*(x.numpy() for x in (term.transfer_indptr, term.transfer_indices, term.transfer_values)))
    want = reference_transfer(USERS.tolist(), group[ITEMS].tolist(), group_domain.tolist())
    assert table.keys() == want.keys() and all(table[k] == pytest.approx(v) for k, v in want.items())
    seqs = [[1, 6, 3, 2, 7, 4], [8, 9, 6], [2, 3]]  # row 2: new to domain 1
    batch = tiny.batch(seqs, T=8)["item_idx"]
    for d, r, x in ((1, 0.5, 2.0), (0, 1.0, 0.5), (1, 1.0, 1.0)):
        items = catalog.domain_items[d].tolist()
        cats = sorted({CATEGORIES[j] for j in items})
        pi = {CATEGORIES[j]: float(term.prior[j]) for j in items}
        got = term.features(batch, d, decay=r, transfer=x)
        for b, s in enumerate(seqs):
            own = [i for i in s if int(catalog.item_domain[i]) == d]
            counts = {c: ALPHA * pi[c] + sum(r ** (len(own) - 1 - p) for p, i in enumerate(own) if CATEGORIES[i] == c)
                      for c in cats}
            for p, i in enumerate(s):  # the other domains' events, their age counted over every event
                if int(catalog.item_domain[i]) != d:
                    for (src, g), v in table.items():
                        if src == group[i] and group_domain[g] == d:
                            c = next(CATEGORIES[j] for j in items if group[j] == g)
                            counts[c] += x * r ** (len(s) - 1 - p) * v
            total = sum(counts.values())
            want = [math.log(counts[CATEGORIES[j]] / total) + float(term.log_in_category[j]) for j in items]
            torch.testing.assert_close(got[b], torch.tensor(want), rtol=1e-5, atol=1e-5)
        assert not torch.equal(got, term.features(batch, d, decay=r)), "the carried events change the values"


def test_the_cold_term_reads_the_carried_events_only_and_ranks_by_them(tiny):
    catalog = tiny.catalog()
    cold = fitted(catalog, ColdCategoryTerm)
    assert cold.applies_to == "cold" and cold.off() == {"weight": 0.0, "decay": 1.0, "transfer": 4.0}
    warm = fitted(catalog)
    batch = tiny.batch([[2, 3], [5, 5, 1]], T=4)["item_idx"]  # domain-0 histories: both new to domain 1
    torch.testing.assert_close(cold.features(batch, 1, transfer=4.0), warm.features(batch, 1, transfer=4.0))
    prior_only = warm.features(batch, 1)
    assert torch.equal(prior_only[0], prior_only[1]), "without the carried events, the domain's shares for both"
    carried = cold.features(batch, 1, transfer=4.0)
    assert not torch.allclose(carried[0], carried[1]), "users with other categories elsewhere: other rankings"
