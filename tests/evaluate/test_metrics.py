"""Tests of crossrec.evaluate.metrics: hand-checked examples, properties against brute-force references."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrec.evaluate.metrics import (
    candidate_counts,
    catalog_coverage,
    evaluate_full_ranking,
    paired_difference,
    rank_of_target,
    ranking_metric_errors,
    ranking_metrics,
    topk_items,
)

KS = (1, 3, 10)
PROPS = settings(deadline=None, max_examples=150)


# ----------------------------------------------------------------------------------------------------
# Brute-force references, written for clarity, one row at a time.


def ref_rank(row: np.ndarray, target: int, excluded: set[int]) -> int:
    """Expected 1-based position of the target under random tie-breaking, rounded up."""
    others = [j for j in range(len(row)) if j != target and j not in excluded]
    greater = sum(row[j] > row[target] for j in others)
    ties = sum(row[j] == row[target] for j in others)
    return 1 + greater + math.ceil(ties / 2)


def ref_topk(row: np.ndarray, excluded: set[int], k: int) -> list[int]:
    cand = sorted((j for j in range(len(row)) if j not in excluded), key=lambda j: (-row[j], j))[:k]
    return cand + [-1] * (k - len(cand))


# ----------------------------------------------------------------------------------------------------
# Strategies: small integer-valued scores, so ties are frequent and monotone transforms are exact.


@st.composite
def ranking_cases(draw, max_rows: int = 6, max_items: int = 12, exclude: bool = True):
    b = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_items))
    scores = np.array(draw(st.lists(st.integers(-4, 4), min_size=b * n, max_size=b * n)), dtype=np.float64).reshape(b, n)
    target = np.array(draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b)), dtype=np.int64)
    if exclude:
        mask = np.array(draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n)), dtype=bool).reshape(b, n)
    else:
        mask = np.zeros((b, n), dtype=bool)
    return scores, target, mask


def excluded_sets(mask: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(r).tolist()) for r in mask]


def metric_values(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k != "n_rows"}


# ----------------------------------------------------------------------------------------------------
# Hand-checked examples.


def test_rank_hand_examples():
    scores = np.array([[0.9, 0.5, 0.7, 0.1],   # target 2: only 0.9 above -> 2
                       [0.9, 0.5, 0.7, 0.1],   # target 2, item 0 excluded -> 1
                       [1.0, 1.0, 1.0, 1.0],   # target 0, 3 ties -> 1 + ceil(1.5) = 3
                       [1.0, 1.0, 1.0, 0.0],   # target 1, 2 ties -> 1 + 1 = 2
                       [0.2, 0.8, 0.2, 0.2]])  # target 3: 1 above, 2 ties -> 3
    target = np.array([2, 2, 0, 1, 3])
    exclude = sp.csr_matrix(np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(rank_of_target(scores, target, exclude), [2, 1, 3, 2, 3])
    np.testing.assert_array_equal(candidate_counts(4, target, exclude), [4, 3, 4, 4, 4])


def test_target_is_never_excluded_and_excluded_items_do_not_count():
    scores = np.array([[5.0, 9.0, 1.0, 9.0]])
    exclude = sp.csr_matrix(np.array([[1, 1, 1, 0]]))  # the target (col 0) is marked, and must be kept
    assert rank_of_target(scores, np.array([0]), exclude).tolist() == [2]  # only col 3 is above
    assert candidate_counts(4, np.array([0]), exclude).tolist() == [2]
    explicit_zero = sp.csr_matrix((np.array([0.0]), (np.array([0]), np.array([3]))), shape=(1, 4))
    assert rank_of_target(scores, np.array([0]), explicit_zero).tolist() == [3]  # a stored 0 excludes nothing


def test_ranking_metrics_hand_example():
    m = ranking_metrics(np.array([1, 3, 11]), np.array([10, 10, 20]), ks=(10,))
    assert m["n_rows"] == 3
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["precision@10"] == pytest.approx(2 / 30)
    assert m["f1@10"] == pytest.approx(2 * (2 / 30) * (2 / 3) / (2 / 30 + 2 / 3))
    assert m["ndcg@10"] == pytest.approx((1 + 0.5 + 0) / 3)  # 1/log2(3+1) = 0.5
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)
    assert m["auc"] == pytest.approx((1 + (1 - 2 / 9) + (1 - 10 / 19)) / 3)


def test_ranking_metrics_auc_skips_single_candidate_rows_and_rejects_bad_ranks():
    m = ranking_metrics(np.array([1, 2]), np.array([1, 3]))
    assert m["auc"] == pytest.approx(0.5)
    assert math.isnan(ranking_metrics(np.array([1]), np.array([1]))["auc"])
    with pytest.raises(ValueError):
        ranking_metrics(np.array([4]), np.array([3]))
    with pytest.raises(ValueError):
        ranking_metrics(np.array([0]), np.array([3]))
    with pytest.raises(ValueError):
        ranking_metrics(np.array([], dtype=int), np.array([], dtype=int))


def test_topk_hand_example():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.3],
                       [2.0, 2.0, 2.0, 2.0, 2.0]])
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]))
    np.testing.assert_array_equal(topk_items(scores, exclude, 3), [[3, 2, 4], [0, 1, 3]])
    np.testing.assert_array_equal(topk_items(scores, None, 3), [[1, 3, 2], [0, 1, 2]])
    # Fewer non-excluded items than k: padded with -1, never an excluded item.
    np.testing.assert_array_equal(topk_items(scores[:1], exclude[:1], 7), [[3, 2, 4, 0, -1, -1, -1]])


def test_topk_with_minus_inf_scores_never_returns_excluded():
    scores = np.array([[-np.inf, -np.inf, 1.0, -np.inf]])
    exclude = sp.csr_matrix(np.array([[1, 0, 0, 0]]))
    np.testing.assert_array_equal(topk_items(scores, exclude, 3), [[2, 1, 3]])


def test_catalog_coverage():
    assert catalog_coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)
    assert catalog_coverage(np.array([[0, -1], [-1, -1]]), 4) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        catalog_coverage(np.array([[5]]), 5)


def test_nan_scores_are_rejected_unless_excluded():
    scores = np.array([[1.0, np.nan, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(scores, np.array([0]), None)
    with pytest.raises(ValueError, match="NaN"):
        topk_items(scores, None, 2)
    ex = sp.csr_matrix(np.array([[0, 1, 0]]))
    assert rank_of_target(scores, np.array([0]), ex).tolist() == [1]
    np.testing.assert_array_equal(topk_items(scores, ex, 2), [[0, 2]])


def test_bad_arguments():
    with pytest.raises(ValueError):
        rank_of_target(np.zeros((1, 3)), np.array([3]), None)
    with pytest.raises(ValueError):
        rank_of_target(np.zeros((1, 3)), np.array([0]), sp.csr_matrix((1, 4)))
    with pytest.raises(AssertionError):
        rank_of_target(np.zeros((1, 3), dtype=np.int64), np.array([0]), None)


# ----------------------------------------------------------------------------------------------------
# Properties of the metrics.


@st.composite
def ranks_and_candidates(draw):
    n_cand = np.array(draw(st.lists(st.integers(1, 500), min_size=1, max_size=40)))
    ranks = np.array([draw(st.integers(1, int(c))) for c in n_cand])
    return ranks, n_cand


@PROPS
@given(ranks_and_candidates())
def test_metrics_lie_in_unit_interval_and_are_consistent(case):
    ranks, n_cand = case
    m = ranking_metrics(ranks, n_cand, KS)
    for key, v in metric_values(m).items():
        assert math.isnan(v) or 0.0 <= v <= 1.0, (key, v)
    for k in KS:
        r, p = m[f"recall@{k}"], m[f"precision@{k}"]
        assert p == pytest.approx(r / k)
        assert m[f"f1@{k}"] == pytest.approx(0.0 if r == 0 else 2 * p * r / (p + r))
        assert m[f"ndcg@{k}"] <= r + 1e-12  # each hit gains at most 1
        assert m[f"ndcg@{k}"] >= r / math.log2(k + 1) - 1e-12  # and at least the gain at place k
    for k_small, k_big in zip(KS, KS[1:]):
        assert m[f"recall@{k_small}"] <= m[f"recall@{k_big}"]
        assert m[f"ndcg@{k_small}"] <= m[f"ndcg@{k_big}"]
    assert m["mrr"] >= m["recall@1"]


def test_ranking_metric_errors_hand_example():
    e = ranking_metric_errors(np.array([1, 3, 11]), np.array([10, 10, 20]), ks=(10,))
    assert set(e) == set(ranking_metrics(np.array([1]), np.array([2]), ks=(10,))) - {"n_rows"}
    assert e["ndcg@10"] == pytest.approx(0.5 / math.sqrt(3))  # rows 1, .5, 0: sample sd .5
    assert e["recall@10"] == pytest.approx(1 / 3)  # rows 1, 1, 0: sample sd sqrt(1/3)
    assert e["precision@10"] == pytest.approx(1 / 30)
    assert e["mrr"] == pytest.approx(np.std([1, 1 / 3, 1 / 11], ddof=1) / math.sqrt(3))
    one = ranking_metric_errors(np.array([2]), np.array([5]))
    assert all(math.isnan(v) for v in one.values()), "one row has no standard error"
    assert math.isnan(ranking_metric_errors(np.array([1, 1]), np.array([1, 1]))["auc"]), "no row with an AUC"


@PROPS
@given(ranks_and_candidates())
def test_ranking_metric_errors_are_the_per_row_spread_over_root_n(case):
    ranks, n_cand = case
    e = ranking_metric_errors(ranks, n_cand, KS)
    m = ranking_metrics(ranks, n_cand, KS)
    n = len(ranks)
    for k in KS:  # rows one at a time, as the metric's definition reads
        hits = [1.0 if r <= k else 0.0 for r in ranks]
        gains = [1.0 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]
        for key, rows in ((f"recall@{k}", hits), (f"ndcg@{k}", gains)):
            assert np.mean(rows) == pytest.approx(m[key])
            if n < 2:
                assert math.isnan(e[key])
            else:
                assert e[key] == pytest.approx(math.sqrt(sum((x - np.mean(rows)) ** 2 for x in rows) / (n - 1) / n))
                assert e[key] >= 0.0 and (e[key] == 0.0) == (len(set(rows)) == 1)
    if n >= 2:  # the same rows four times over: the spread stays, the error shrinks by about 2
        e4 = ranking_metric_errors(np.tile(ranks, 4), np.tile(n_cand, 4), KS)
        assert e4["mrr"] == pytest.approx(e["mrr"] * math.sqrt((n - 1) / (4 * n - 1)), abs=1e-12)


@PROPS
@given(ranking_cases())
def test_perfect_ranking_scores_one(case):
    scores, target, mask = case
    scores = scores.copy()
    scores[np.arange(len(target)), target] = 100.0  # strictly above every other item
    ex = sp.csr_matrix(mask)
    ranks = rank_of_target(scores, target, ex)
    assert (ranks == 1).all()
    m = ranking_metrics(ranks, candidate_counts(scores.shape[1], target, ex), KS)
    for k in KS:
        assert m[f"ndcg@{k}"] == 1.0 and m[f"recall@{k}"] == 1.0
    assert m["mrr"] == 1.0
    assert math.isnan(m["auc"]) or m["auc"] == 1.0


@PROPS
@given(st.integers(2, 60), st.data())
def test_reversed_ranking_has_auc_zero(n, data):
    perm = np.array(data.draw(st.permutations(range(n))), dtype=np.float64)  # distinct scores, no ties
    target = np.array([int(np.argmin(perm))])
    ranks = rank_of_target(perm[None, :], target, None)
    assert ranks.tolist() == [n]
    m = ranking_metrics(ranks, np.array([n]))
    assert m["auc"] == 0.0
    # ...and the reversed scores rank the same target first.
    assert rank_of_target(-perm[None, :], target, None).tolist() == [1]


@PROPS
@given(st.integers(1, 300), st.integers(0, 299), st.floats(-1e6, 1e6, allow_nan=False))
def test_constant_scores_are_no_better_than_random(n, target, value):
    target = min(target, n - 1)
    scores = np.full((1, n), value)
    rank = rank_of_target(scores, np.array([target]), None)
    assert rank.tolist() == [1 + math.ceil((n - 1) / 2)]
    m = ranking_metrics(rank, np.array([n]), KS)
    if n > 1:
        # Random tie-breaking gives AUC 0.5 on average; the rounded-up rank gives at most that.
        assert 0.5 - 0.5 / (n - 1) - 1e-12 <= m["auc"] <= 0.5
    perfect = ranking_metrics(np.array([1]), np.array([n]), KS)
    for k in KS:
        assert m[f"ndcg@{k}"] <= perfect[f"ndcg@{k}"]
        # A hit only where random tie-breaking would hit at least half the time.
        assert m[f"recall@{k}"] <= (1.0 if min(k, n) / n >= 0.5 else 0.0)


@PROPS
@given(ranking_cases())
def test_rank_matches_brute_force_and_ignores_excluded_items(case):
    scores, target, mask = case
    ex = sp.csr_matrix(mask.astype(np.float32))
    ranks = rank_of_target(scores, target, ex)
    excl = excluded_sets(mask)
    expected = [ref_rank(scores[i], int(target[i]), excl[i] - {int(target[i])}) for i in range(len(target))]
    assert ranks.tolist() == expected
    n_cand = candidate_counts(scores.shape[1], target, ex)
    assert n_cand.tolist() == [scores.shape[1] - len(excl[i] - {int(target[i])}) for i in range(len(target))]
    assert (ranks >= 1).all() and (ranks <= n_cand).all()
    # Whatever the excluded items score, the ranks do not move.
    wild = scores.copy()
    wild[mask] = np.where(np.arange(mask.sum()) % 2, 1e9, np.nan)
    wild[np.arange(len(target)), target] = scores[np.arange(len(target)), target]
    np.testing.assert_array_equal(rank_of_target(wild, target, ex), ranks)


@PROPS
@given(ranking_cases(), st.integers(1, 14))
def test_topk_matches_brute_force_and_never_returns_excluded(case, k):
    scores, _, mask = case
    ex = sp.csr_matrix(mask)
    top = topk_items(scores, ex, k)
    assert top.shape == (scores.shape[0], k) and top.dtype == np.int64
    excl = excluded_sets(mask)
    for i in range(scores.shape[0]):
        assert top[i].tolist() == ref_topk(scores[i], excl[i], k)
        assert not set(top[i].tolist()) & excl[i]
        n_avail = scores.shape[1] - len(excl[i])
        assert (top[i] >= 0).sum() == min(k, n_avail)  # exactly k where k items exist


@PROPS
@given(ranking_cases(), st.integers(1, 6))
def test_ranks_and_topk_invariant_to_monotone_transform(case, k):
    scores, target, mask = case
    ex = sp.csr_matrix(mask)
    f = 3.0 * scores**3 + scores - 7.0  # strictly increasing, exact on small integers
    np.testing.assert_array_equal(rank_of_target(f, target, ex), rank_of_target(scores, target, ex))
    np.testing.assert_array_equal(topk_items(f, ex, k), topk_items(scores, ex, k))
    np.testing.assert_array_equal(rank_of_target(np.exp(scores), target, ex), rank_of_target(scores, target, ex))


@PROPS
@given(ranking_cases(), st.integers(1, 4))
def test_a_better_target_score_never_hurts(case, bump):
    scores, target, mask = case
    ex = sp.csr_matrix(mask)
    better = scores.copy()
    better[np.arange(len(target)), target] += bump
    assert (rank_of_target(better, target, ex) <= rank_of_target(scores, target, ex)).all()


# ----------------------------------------------------------------------------------------------------
# Chunked evaluation.


@PROPS
@given(ranking_cases(max_rows=9), st.integers(1, 4), st.integers(1, 5))
def test_chunked_evaluation_equals_whole_batch(case, chunk, k_top):
    scores, target, mask = case
    users = np.arange(scores.shape[0]) + 100  # ids passed to score_fn, not row numbers
    calls = []

    def score_fn(u):
        calls.append(len(u))
        return scores[u - 100]

    ex = sp.csr_matrix(mask)
    res = evaluate_full_ranking(score_fn, users, target, ex, scores.shape[1], ks=(1, 3), k_top=k_top,
                                chunk_users=chunk)
    assert max(calls) <= chunk and sum(calls) == len(users)
    np.testing.assert_array_equal(res.ranks, rank_of_target(scores, target, ex))
    np.testing.assert_array_equal(res.n_candidates, candidate_counts(scores.shape[1], target, ex))
    # Top-k over the same candidates as the ranks: training items out, the target in.
    rank_mask = mask.copy()
    rank_mask[np.arange(len(target)), target] = False
    np.testing.assert_array_equal(res.topk, topk_items(scores, sp.csr_matrix(rank_mask), k_top))
    expected = ranking_metrics(res.ranks, res.n_candidates, (1, 3))
    assert res.metrics.keys() == expected.keys()
    for key, v in expected.items():
        assert res.metrics[key] == v or (math.isnan(v) and math.isnan(res.metrics[key])), key
    assert res.coverage == catalog_coverage(res.topk, scores.shape[1])


def test_evaluation_logs_progress_and_checks_score_shape(caplog):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30)).astype(np.float32)
    target = rng.integers(0, 30, size=50)
    with caplog.at_level(logging.INFO, logger="crossrec.evaluate.metrics"):
        res = evaluate_full_ranking(lambda u: scores[u], np.arange(50), target, None, 30, chunk_users=16)
    assert any("rows/s" in r.getMessage() and "50/50" in r.getMessage() for r in caplog.records)
    assert res.topk.shape == (50, 20)
    assert 0.0 < res.metrics["auc"] < 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate_full_ranking(lambda u: scores[u, :29], np.arange(50), target, None, 30)


def test_random_scores_average_auc_near_half():
    rng = np.random.default_rng(1)
    scores = rng.random((4000, 200))
    target = rng.integers(0, 200, size=4000)
    res = evaluate_full_ranking(lambda u: scores[u], np.arange(4000), target, None, 200)
    assert res.metrics["auc"] == pytest.approx(0.5, abs=0.02)
    assert res.metrics["recall@10"] == pytest.approx(10 / 200, abs=0.015)


def test_paired_difference_hand_example():
    mean, se = paired_difference(np.array([1.0, 0.5, 0.0, 0.0]), np.array([0.0, 0.5, 0.0, 1.0]))
    # differences 1, 0, 0, -1: mean 0, sample std sqrt(2/3), over root 4
    assert mean == 0.0 and se == pytest.approx(math.sqrt(2 / 3) / 2)
    same = paired_difference(np.array([0.2, 0.3, 0.4]), np.array([0.1, 0.2, 0.3]))
    assert same[0] == pytest.approx(0.1) and same[1] == pytest.approx(0.0, abs=1e-12), "a constant gain has no spread"
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        paired_difference(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="at least one row"):
        paired_difference(np.zeros(0), np.zeros(0))
