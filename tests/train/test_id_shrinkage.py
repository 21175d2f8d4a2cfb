"""Id shrinkage: the factors, the in-place scaling, and a choice on validation that scores what it reported; the bias
of items without training events, chosen on validation per domain."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.evaluate.protocol import evaluate, transformer_score_fn  # noqa: E402
from crossrec.train.id_shrinkage import (  # noqa: E402
    choose_cold_bias,
    choose_id_shrinkage,
    shrink_factors,
    shrink_id_embeddings,
)


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


NEW = np.array([11, 12, 20, 21])  # items without training events: two books, two movies


def _rows_with_new_items(dom: np.ndarray, new_share: float, users: int = 120, seed: int = 5) -> list[tuple]:
    """Training histories of the other items only; each user's valid target is, with ``new_share``, one of the new
    items of its target domain (books for even users, movies for odd ones), else one of that domain's other items."""
    rng = np.random.default_rng(seed)
    old = np.setdiff1d(np.arange(1, 22), NEW)
    rows = []
    for u in range(users):
        d = u % 2
        hist = [int(x) for x in rng.choice(old, size=8)]
        pool = NEW[dom[NEW - 1] == d] if rng.random() < new_share else old[dom[old - 1] == d]
        target = int(rng.choice(pool))
        ts = list(range(100 * u, 100 * u + 9))
        rows.append((f"u{u}", "train", "*", hist, [int(dom[i - 1]) for i in hist], ts[:8], None, None, False, 8))
        rows.append((f"u{u}", "valid", ["books", "movies"][d], hist, [int(dom[i - 1]) for i in hist], ts[:8], target,
                     ts[8], False, 8))
    return rows


def _trained_like(two_domains, seed: int):
    model = two_domains.model(seed, item_bias=True)
    with torch.no_grad():  # biases as after training: spread, the new items' lowest
        model.item_bias.copy_(torch.randn(22, generator=torch.Generator().manual_seed(seed)))
        model.item_bias[torch.from_numpy(NEW)] -= 5
    model.clear_id_embeddings(torch.from_numpy(NEW))
    return model


@pytest.mark.parametrize("new_share,high", [(0.8, True), (0.0, False)])
def test_new_items_get_the_bias_quantile_that_validation_chooses_per_domain(two_domains, new_share, high):
    valid = two_domains.valid(_rows_with_new_items(two_domains.dom, new_share))
    model = _trained_like(two_domains, 3)
    before = copy.deepcopy(model)
    report = choose_cold_bias(model, valid, NEW)
    assert set(report["valid_ndcg@10"]) == {"books", "movies"} and report["rows"] == 120
    for d, name in enumerate(["books", "movies"]):
        tried = {t["quantile"]: t for t in report["valid_ndcg@10"][name]}
        q = report["quantile"][d]
        if high:  # the new items are most targets: the top of the grid wins, the median is far below
            assert q >= 0.75 and tried[1.0]["value"] > tried[0.5]["value"] + tried[1.0]["gain_se"], tried
        else:  # never a target: lifting them only costs
            assert q <= 0.5 and tried[1.0]["value"] < tried[0.5]["value"], tried
        items = two_domains.index.item_idx.values[two_domains.dom == d]
        others = torch.from_numpy(np.setdiff1d(items, NEW))
        mine = torch.from_numpy(np.intersect1d(items, NEW))
        assert (model.item_bias[mine] == before.item_bias[others].quantile(q)).all(), "the chosen quantile, applied"
        assert torch.equal(model.item_bias[others], before.item_bias[others]), "trained items untouched"
    m = copy.deepcopy(before)
    m.clear_id_embeddings(torch.from_numpy(NEW), bias_quantile=1.0)
    recs = evaluate("m", transformer_score_fn(m, valid, None), valid, ks=(10,))
    got = {x["domain"]: x["value"] for x in recs if x["metric"] == "ndcg" and x["segment"] == "all"}
    for name in ("books", "movies"):
        want = next(t["value"] for t in report["valid_ndcg@10"][name] if t["quantile"] == 1.0)
        assert got[name] == pytest.approx(want, abs=1e-6), "the report scores what the evaluation scores"


def test_the_cold_bias_choice_is_skipped_without_new_items_or_biases(two_domains):
    valid = two_domains.valid(_rows_with_new_items(two_domains.dom, 0.5))
    model = _trained_like(two_domains, 2)
    assert choose_cold_bias(model, valid, np.array([], dtype=np.int64))["skipped"] == "no item without training events"
    assert choose_cold_bias(two_domains.model(2), valid, NEW) == {"quantile": [0.5, 0.5], "rows": 0,
                                                                  "skipped": "no item biases"}, "off by default"
