"""The text-similarity term: recency-weighted cosines to the user's history in the domain."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import crossrec.rerank.text_similarity as text_module  # noqa: E402
from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.transformer import CrossDomainTransformer  # noqa: E402
from crossrec.rerank.base import Catalog  # noqa: E402
from crossrec.rerank.text_similarity import TextSimilarityTerm  # noqa: E402


def test_features_sum_the_recency_weighted_cosines_of_the_domain_history(tiny):
    term = TextSimilarityTerm()
    term.fit(None, tiny.catalog())  # nothing to learn from events
    dom = tiny.dom.tolist()
    seqs = [[1, 2, 6, 3, 2, 7, 4], [8, 9], [6], []]  # row 0: item 2 twice (each event counts); rows 2, 3: no domain-0 event
    batch = tiny.batch(seqs, T=8)
    for d, r in ((0, 0.5), (1, 1.0), (0, 1.0)):
        items = tiny.model.domain_items(d)
        got = term.features(batch["item_idx"], d, decay=r)
        assert got.shape == (len(seqs), items.numel())
        for b, s in enumerate(seqs):
            in_d = [i for i in s if dom[i] == d]
            want = sum((r ** (len(in_d) - 1 - p) * tiny.unit[i] @ tiny.unit[items].T for p, i in enumerate(in_d)),
                       torch.zeros(items.numel()))
            torch.testing.assert_close(got[b], want)
    assert float(term.features(batch["item_idx"], 0, decay=0.5)[0].abs().sum()) > 0, "the data exercise it"


@pytest.mark.parametrize("max_events", [24, 0], ids=["from-table", "table-too-slow"])
def test_the_cosine_table_gives_the_products_scores(tiny, monkeypatch, max_events):
    monkeypatch.setattr(text_module, "TEXT_TABLE_MAX_EVENTS", max_events)
    term = TextSimilarityTerm()
    term.fit(None, tiny.catalog())
    batch = tiny.batch([[1, 2, 6, 3, 2, 7, 1], [8, 9, 4, 9], [5], []], T=8)
    want = [term.features(batch["item_idx"], d, decay=0.3) for d in (0, 1)]
    for d in (0, 1):
        term.build_table(d)
        torch.testing.assert_close(term.features(batch["item_idx"], d, decay=0.3), want[d], rtol=1e-5, atol=1e-6)


def test_a_model_without_a_frozen_text_table_cannot_use_it(tiny):
    from crossrec.model.encoder import ItemFeatures

    ids = torch.arange(10)
    feats = ItemFeatures(None, tiny.dom, torch.zeros(10, dtype=torch.long), [ids[(tiny.dom == k) & (ids > 0)] for k in (0, 1)])
    no_text = CrossDomainTransformer(ModelConfig(n_items=9, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                                 use_text=False), feats)
    catalog = Catalog.from_model(no_text)
    assert catalog.text_units is None
    assert "no frozen text table" in TextSimilarityTerm().unusable(catalog)
    assert TextSimilarityTerm().unusable(tiny.catalog()) is None
    with pytest.raises(AssertionError, match="no frozen text table"):
        TextSimilarityTerm().fit(None, catalog)

