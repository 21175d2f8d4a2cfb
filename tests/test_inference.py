"""The one inference path (crossrec.inference.Predictor): collate, model scores, terms, popularity for empty
histories, seen items excluded, top-K."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.inference import Predictor, score_covariance  # noqa: E402
from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.encoder import ItemFeatures  # noqa: E402
from crossrec.model.transformer import CrossDomainTransformer  # noqa: E402
from crossrec.rerank.base import Catalog, TermSet  # noqa: E402
from crossrec.rerank.cold_text import ColdTextTerm  # noqa: E402
from crossrec.rerank.text_similarity import TextSimilarityTerm  # noqa: E402

# items 1..5 domain 0, 6..8 domain 1; item ids not in domain order
DOM = [0, 1, 0, 0, 1, 0, 1, 0]
POP = np.array([0, 5, 1, 4, 2, 3, 9, 7, 6], dtype=float)


@pytest.fixture()
def model():
    torch.set_num_threads(1)
    n = len(DOM)
    local = np.zeros(n, dtype=np.int64)
    for d in (0, 1):
        local[np.array(DOM) == d] = np.arange(DOM.count(d))
    feats = ItemFeatures.from_item_index(np.arange(1, n + 1), DOM, local,
                                         text_emb=np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32))
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                               max_seq_len=3, item_bias=True), feats)
    with torch.no_grad():
        model.item_bias.normal_()  # as after training: the path must add them
    return model


def test_collate_keeps_the_newest_events_right_padded_and_only_the_kept_domains(model):
    p = Predictor(model)
    b = p.collate([np.array([1, 2, 3, 4]), np.array([], dtype=np.int64), np.array([5])],
                  [np.array([10, 20, 30, 40]), np.array([], dtype=np.int64), np.array([7])])
    assert b.inputs["item_idx"].tolist() == [[2, 3, 4], [0, 0, 0], [5, 0, 0]], "newest max_seq_len events, right-padded"
    assert b.inputs["event_ts"].tolist() == [[20, 30, 40], [0, 0, 0], [7, 0, 0]]
    assert b.inputs["domain_idx"].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert b.empty.tolist() == [False, True, False] and b.histories[0].tolist() == [1, 2, 3, 4]
    kept = p.collate([np.array([1, 2, 3, 4])], [np.array([10, 20, 30, 40])], keep_domains=np.array([1]))
    assert kept.inputs["item_idx"].tolist() == [[2]] and kept.histories[0].tolist() == [2], "domain 1's events only"
    assert p.collate([np.array([3])], [np.array([1])], keep_domains=np.array([1])).empty.tolist() == [True]


def test_scores_are_the_models_with_popularity_for_empty_histories_and_every_seen_item_excluded(model):
    p = Predictor(model, popularity=POP)
    assert not model.training, "the predictor scores in eval mode"
    hist = [np.array([1, 2, 3, 4]), np.array([], dtype=np.int64), np.array([2])]  # row 0: item 1 beyond the window
    batch = p.collate(hist, [np.arange(len(h)) for h in hist])
    with torch.no_grad():
        for d in (0, 1):
            got = p.scores(batch, d)
            want = model.full_sort_predict(batch.inputs, d)  # the full forward pass: same scores up to rounding
            items = model.domain_items(d).tolist()
            seen = [[items.index(i) for i in h if DOM[i - 1] == d] for h in hist]
            for b in (0, 2):
                keep = [j for j in range(len(items)) if j not in seen[b]]
                torch.testing.assert_close(got[b, keep], want[b, keep], rtol=1e-4, atol=1e-5)
                assert torch.isinf(got[b, seen[b]]).all() and (got[b, seen[b]] < 0).all()
            torch.testing.assert_close(got[1], torch.tensor(POP[items], dtype=torch.float32))
    assert sorted(model.domain_items(0)[torch.isinf(p.scores(batch, 0)[0])].tolist()) == [1, 3, 4], \
        "the whole history is excluded, not only the window"
    top, col = p.topk(batch, 1, k=5)
    assert top.shape == (3, 3), "k capped at the domain's items"
    assert torch.isinf(top[0, -1]) and torch.isfinite(top[0, :2]).all(), "one seen item: it comes last, at -inf"
    assert model.domain_items(1)[col[1]].tolist() == [7, 5, 2], "empty history: by popularity"


def test_terms_are_added_before_the_popularity_and_the_exclusion(model):
    catalog = Catalog.from_model(model)
    text, cold = TextSimilarityTerm(), ColdTextTerm()
    text.fit(None, catalog)
    cold.fit(None, catalog)
    terms = TermSet([text, cold], {"text_similarity": {0: {"weight": 2.0, "decay": 0.5}},
                                   "cold_text": {0: {"weight": 1.0, "decay": 1.0}}}, ["a", "b"])
    alone, with_terms = Predictor(model, popularity=POP), Predictor(model, terms, POP)
    hist = [np.array([1, 3]), np.array([2, 5]), np.array([], dtype=np.int64)]  # warm, new to domain 0, empty
    batch = alone.collate(hist, [np.arange(len(h)) for h in hist])
    raw, h = alone.model_scores(batch, 0)
    cov = score_covariance(alone.domain_reps(0), model.item_bias[model.domain_items(0)].detach())
    want = alone.finalize(batch, 0, terms.apply(raw, batch.inputs["item_idx"], 0, h, cov))
    got = with_terms.scores(batch, 0)
    torch.testing.assert_close(got, want)
    base = alone.scores(batch, 0)
    assert not torch.allclose(got[:2], base[:2]) and torch.equal(got[2], base[2]), "terms on rows 0 and 1; row 2: popularity"
    torch.testing.assert_close(with_terms.scores(batch, 1), alone.scores(batch, 1))  # no term in domain 1


def test_the_score_spread_counts_the_item_biases(model):
    p = Predictor(model)
    batch = p.collate([np.array([1, 3]), np.array([2, 5, 6])], [np.arange(2), np.arange(3)])
    from crossrec.rerank.base import score_std

    for d in (0, 1):
        raw, h = p.model_scores(batch, d)
        torch.testing.assert_close(score_std(h, p.covariance(d)), raw.std(1))
