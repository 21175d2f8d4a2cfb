"""The entity terms: idf-weighted cosines between an item's attribute entities and those of the user's recent items,
of the item's domain (``entity``, warm) or of every domain (``cold_entity``, users new to the domain)."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.rerank.entity import ColdEntityTerm, SameDomainEntityTerm, entity_vectors  # noqa: E402
from crossrec.rerank.fit import fit_terms  # noqa: E402
from support import best_that_counts  # noqa: E402
from test_fit import ndcg, tried  # noqa: E402
from conftest import ENTITIES  # noqa: E402


def hand_vectors() -> torch.Tensor:
    """The tiny catalog's entity vectors by the formula: idf(e) = 1 + ln((1 + N) / (1 + df(e))), rows of unit length."""
    n_items = len(ENTITIES) - 1
    df = {e: sum(e in row for row in ENTITIES) for e in (1, 2, 3)}
    x = torch.zeros(len(ENTITIES), 4)
    for i, row in enumerate(ENTITIES):
        for e in set(row) - {0}:
            x[i, e] = 1 + math.log((1 + n_items) / (1 + df[e]))
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def test_entity_vectors_are_idf_weighted_unit_rows_and_an_item_without_entities_has_none():
    x = entity_vectors(torch.tensor(ENTITIES)).to_dense()
    torch.testing.assert_close(x, hand_vectors())
    assert x[0].abs().sum() == 0 and x[3].abs().sum() == 0
    doubled = entity_vectors(torch.tensor([[0, 0], [1, 1], [1, 2]])).to_dense()
    assert doubled[1, 1] == pytest.approx(1.0), "an entity listed twice on one item counts once"


@pytest.mark.parametrize("term_class", [SameDomainEntityTerm, ColdEntityTerm], ids=["warm", "cold"])
def test_features_sum_the_decayed_entity_cosines_over_their_row_maximum(tiny, term_class):
    term = term_class()
    term.fit(None, tiny.catalog())  # nothing to learn from events
    x, dom = hand_vectors(), tiny.dom.tolist()
    seqs = [[1, 2, 6, 3], [6, 7], [8], [4, 9, 2], []]
    batch = tiny.batch(seqs, T=5)
    for d in (0, 1):
        items = tiny.model.domain_items(d)
        got = term.features(batch["item_idx"], d, decay=0.5)
        assert got.shape == (len(seqs), items.numel())
        for b, s in enumerate(seqs):
            events = [i for i in s if dom[i] == d] if term_class.applies_to == "warm" else s
            c = sum((0.5 ** (len(events) - 1 - p) * x[i] @ x[items].T for p, i in enumerate(events)), torch.zeros(items.numel()))
            want = c / c.max() if c.max() > 0 else c
            torch.testing.assert_close(got[b], want)
    cold = ColdEntityTerm()
    cold.fit(None, tiny.catalog())
    books_only = tiny.batch([[1]], T=2)["item_idx"]  # item 1 has entity 1, as movie 6 has: the only link to movies
    assert cold.features(books_only, 1)[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_catalog_of_tens_of_thousands_of_items_is_scored_under_inference_mode():
    """Scoring runs under ``torch.inference_mode``, where torch's sparse ``index_select`` fails from a catalog of about
    20,000 items on; the terms cut their per-domain vectors at load, outside it."""
    from crossrec.rerank.base import Catalog

    n, half = 30_000, 15_000
    item_domain = torch.tensor([0] + [0] * half + [1] * (n - half))
    ids = torch.arange(n + 1)
    item_col = torch.cat([torch.tensor([-1]), torch.arange(half), torch.arange(n - half)])
    drawn = torch.randint(1, 500, (n, 2), generator=torch.Generator().manual_seed(0))
    entities = torch.cat([torch.zeros(1, 2, dtype=torch.long), drawn])
    catalog = Catalog(item_domain=item_domain, domain_items=[ids[1:half + 1], ids[half + 1:]], item_col=item_col,
                      text_units=None, item_entities=entities)
    history = torch.tensor([[1, 2, half + 1, 0]])
    for term_class in (SameDomainEntityTerm, ColdEntityTerm):
        term = term_class()
        term.fit(None, catalog)
        want = [term.features(history, d) for d in (0, 1)]
        term.fit(None, catalog)  # fresh state, first used under inference mode as the scorer uses it
        with torch.inference_mode():
            for d in (0, 1):
                torch.testing.assert_close(term.features(history, d), want[d])


def test_a_model_without_entities_cannot_use_them(two_domains):
    from crossrec.rerank.base import Catalog

    catalog = Catalog.from_model(two_domains.model(0))
    assert catalog.item_entities is None
    assert "no attribute entities" in ColdEntityTerm().unusable(catalog)
    with pytest.raises(AssertionError, match="no attribute entities"):
        SameDomainEntityTerm().fit(None, catalog)


def test_cold_entity_weight_is_chosen_where_new_users_keep_to_the_creator_of_their_other_domain(two_domains):
    """Every item has one of three creators, in both domains; users new to movies read books of one creator and
    their movie target is by that creator: the fit must turn the cold entity term on for movies, and the set must
    score those rows as reported for every setting tried."""
    rng = np.random.default_rng(9)
    creator = [i % 3 + 1 for i in range(1, 22)]  # items 1..21
    model = two_domains.model(4, entities=creator)
    rows = []
    for u in range(120):
        c = u % 3 + 1
        books = [int(x) for x in rng.choice([i for i in range(1, 13) if creator[i - 1] == c], size=3, replace=False)]
        target = int(rng.choice([j for j in range(13, 22) if creator[j - 1] == c]))
        ts = list(range(100 * u, 100 * u + 3))
        rows.append((f"u{u}", "train", "*", books, [0] * 3, ts, None, None, False, 3))
        rows.append((f"u{u}", "valid", "movies", books, [0] * 3, ts, target, ts[-1] + 1, True, 3))
    valid = two_domains.valid(rows)
    grids = {"cold_entity": {"weight": (0.0, 0.5, 4.0), "decay": (1.0, 0.5)}}
    terms, report = fit_terms(model, valid, ["cold_entity"], grids=grids, refit=False)
    fitted = report["terms"]["cold_entity"]["domains"]["movies"]
    assert fitted["rows"] == 120 and not fitted["simulated"]
    values = tried(fitted)
    best = (fitted["params"]["weight"], fitted["params"]["decay"])
    assert best == best_that_counts(fitted) and best[0] > 0
    assert values[best] > values[(0.0, 1.0)] + 0.1, values
    for (w, r), value in values.items():
        params = {"cold_entity": {1: {"weight": w, "decay": r}}}
        assert ndcg(model, valid, terms, params, "movies", "cold_start") == pytest.approx(value, abs=1e-6), (w, r)
