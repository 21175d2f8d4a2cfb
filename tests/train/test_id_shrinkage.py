"""Id shrinkage: the factors, the in-place scaling, and a choice on validation that scores what it reported."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.evaluate.protocol import evaluate, transformer_score_fn  # noqa: E402
from crossrec.train.id_shrinkage import choose_id_shrinkage, shrink_factors, shrink_id_embeddings  # noqa: E402


def test_factors_trust_an_id_as_its_events_accumulate():
    counts = np.array([0, 0, 1, 3, 10])
    assert shrink_factors(counts, 0).tolist() == [0, 0, 1, 1, 1]
    assert shrink_factors(counts, 1).tolist() == pytest.approx([0, 0, 0.5, 0.75, 10 / 11])
    assert shrink_factors(counts, 3).tolist() == pytest.approx([0, 0, 0.25, 0.5, 10 / 13])
    with pytest.raises(AssertionError, match="k must be >= 0"):
        shrink_factors(counts, -1)


def test_shrinking_scales_each_id_row_in_place_and_k_0_leaves_them(two_domains):
    model = two_domains.model(0)
    w0 = model.item_encoder.id_emb.weight.detach().clone()
    counts = np.arange(22)  # item i has i events (the padding id 0: none)
    shrink_id_embeddings(model, counts, 0)
    assert torch.equal(model.item_encoder.id_emb.weight, w0)
    shrink_id_embeddings(model, counts, 2)
    expected = w0 * torch.tensor([i / (i + 2) for i in range(22)], dtype=w0.dtype)[:, None]
    torch.testing.assert_close(model.item_encoder.id_emb.weight.detach(), expected)
    with pytest.raises(AssertionError, match="n_items \\+ 1 = 22 entries"):
        shrink_id_embeddings(model, counts[:5], 2)


def _rows(dom: np.ndarray, users: int = 90, seed: int = 4) -> list[tuple]:
    """Histories drawn with a skew (low ids often, high ids rarely), so items have from a few to many training
    events; each user's valid target is its last event."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 22) ** 0.7
    rows = []
    for u in range(users):
        hist = [int(x) for x in rng.choice(np.arange(1, 22), size=9, p=p / p.sum())]
        ts = list(range(100 * u, 100 * u + 9))
        for split, n in (("train", 8), ("valid", 8)):
            tgt = (None, None) if split == "train" else (hist[8], ts[8])
            rows.append((f"u{u}", split, "*" if split == "train" else ["books", "movies"][int(dom[hist[8] - 1])],
                         hist[:n], [int(dom[i - 1]) for i in hist[:n]], ts[:n], *tgt, False, n))
    return rows


def test_each_k_scores_on_validation_what_the_choice_reported_and_the_model_keeps_the_chosen_one(two_domains):
    valid = two_domains.valid(_rows(two_domains.dom))
    model = two_domains.model(7)
    with torch.no_grad():  # ids large beside the text: shrinking them changes the ranks
        model.item_encoder.id_emb.weight.mul_(100)
    before = copy.deepcopy(model)
    counts = np.bincount(valid.train.item, minlength=22)
    assert len(set(counts[1:].tolist())) > 5, "items with few and many events"
    report = choose_id_shrinkage(model, valid, grid=(0, 1, 3, 10), min_gain_se=1.0)
    assert [t["k"] for t in report["valid_ndcg@10"]] == [0, 1, 3, 10]
    assert report["rows"] == sum(len(t.rows) for t in valid.tests)

    def pooled(m) -> float:  # the evaluation protocol's NDCG@10 over every validation row of both domains
        recs = evaluate("m", transformer_score_fn(m, valid, None), valid, ks=(10,))
        by = {x["domain"]: x for x in recs if x["metric"] == "ndcg" and x["segment"] == "all"}
        return sum(x["value"] * x["n_users"] for x in by.values()) / sum(x["n_users"] for x in by.values())

    values = []
    for t in report["valid_ndcg@10"]:
        m = copy.deepcopy(before)
        shrink_id_embeddings(m, counts, t["k"])
        assert pooled(m) == pytest.approx(t["value"], abs=1e-6), t
        values.append(t["value"])
    assert len(set(np.round(values, 6))) > 1, "the ks rank differently: the choice means something"
    off = report["valid_ndcg@10"][0]
    counted = [t for t in report["valid_ndcg@10"]
               if t["k"] == 0 or t["value"] > off["value"] and t["value"] - off["value"] >= t["gain_se"]]
    top = max(counted, key=lambda t: (t["value"], -t["k"]))
    assert top["below_best"] == 0 and all(t["below_best"] == pytest.approx(top["value"] - t["value"], abs=1e-9)
                                         for t in report["valid_ndcg@10"])
    near = [t["k"] for t in counted if t["below_best"] <= t["below_best_se"]]
    assert report["k"] == min(near) == top["k"] == 3, "k=0 is more than one s.e. below k=3"
    best = max(report["valid_ndcg@10"], key=lambda t: t["value"])
    assert best["k"] == 10 and best not in counted, "the best value, inside one s.e. of k=0, does not count"
    expected = copy.deepcopy(before)
    shrink_id_embeddings(expected, counts, report["k"])
    assert torch.equal(model.item_encoder.id_emb.weight, expected.item_encoder.id_emb.weight)


def test_a_choice_needs_a_gain_of_min_gain_se_standard_errors(two_domains):
    valid = two_domains.valid(_rows(two_domains.dom))
    model = two_domains.model(1)
    with torch.no_grad():
        model.item_encoder.id_emb.weight.mul_(40)
    w0 = model.item_encoder.id_emb.weight.detach().clone()
    report = choose_id_shrinkage(model, valid, grid=(0, 1, 3, 10), min_gain_se=1e9)
    assert report["k"] == 0 and torch.equal(model.item_encoder.id_emb.weight, w0), "nothing beats k=0 by 1e9 s.e."
    assert choose_id_shrinkage(model, valid, grid=(0,))["skipped"] == "one k in the grid"


def test_of_the_ks_that_count_the_smallest_within_one_standard_error_of_the_best_wins(two_domains):
    valid = two_domains.valid(_rows(two_domains.dom))
    model = two_domains.model(6)
    with torch.no_grad():
        model.item_encoder.id_emb.weight.mul_(40)
    report = choose_id_shrinkage(model, valid, grid=(0, 1, 3, 10), min_gain_se=1.0)
    by_k = {t["k"]: t for t in report["valid_ndcg@10"]}
    assert max(by_k.values(), key=lambda t: t["value"])["k"] == 10 and by_k[10]["below_best"] == 0
    assert by_k[3]["value"] - by_k[0]["value"] >= by_k[3]["gain_se"] > 0, "k=3 counts"
    assert 0 < by_k[3]["below_best"] <= by_k[3]["below_best_se"], "and is within one s.e. of k=10"
    assert by_k[1]["value"] - by_k[0]["value"] < by_k[1]["gain_se"], "k=1 does not count"
    assert report["k"] == 3
