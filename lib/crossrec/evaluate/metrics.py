"""Full-ranking evaluation metrics: every item of the target domain is a candidate, no sampled negatives.

One evaluation row = one user, one held-out target item of one domain, and a score for every item of that
domain (column ``j`` = ``domain_item_idx`` ``j`` of ``gold.item_index``). The user's training items of that
domain are excluded (never ranked, never recommended), except the target itself.

Tie rule (``rank_of_target``): the rank of the target is its *expected* position when ties are broken
uniformly at random, rounded up::

    rank = 1 + #(non-excluded items scored strictly higher) + ceil(#(other non-excluded items scored equal) / 2)

So a tie costs half of the tied places (not zero, not all of them) and the rank stays an integer. A model
that scores everything equal gets rank ``1 + ceil((n - 1) / 2)``: AUC <= 0.5 (= 0.5 for odd ``n``),
exactly what a random ranking gets on average, never better; hit@k only when ``n <= 2k - 1``.

Top-k lists (``topk_items``) break ties by the lower column id, so they are deterministic.

Typical use, one domain at a time, without ever building a (users x items) matrix::

    res = evaluate_full_ranking(lambda u: model.full_sort_predict(u, d), users, target_col, seen, n_items=n_d)
    res.metrics["ndcg@10"], res.coverage
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20)
DEFAULT_CHUNK_USERS = 1024

ScoreFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------------
# Input checks and the exclusion mask.


def _as_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    assert scores.ndim == 2, f"scores must be (B, n_items), got shape {scores.shape}"
    assert np.issubdtype(scores.dtype, np.floating), f"scores must be floating point, got {scores.dtype}"
    return scores


def _as_cols(cols: np.ndarray, b: int, n_items: int, what: str = "target_col") -> np.ndarray:
    cols = np.asarray(cols)
    assert cols.shape == (b,), f"{what} must be ({b},), got shape {cols.shape}"
    assert np.issubdtype(cols.dtype, np.integer), f"{what} must be integer column ids, got {cols.dtype}"
    if b and (cols.min() < 0 or cols.max() >= n_items):
        raise ValueError(f"{what} out of range [0, {n_items}): min {cols.min()}, max {cols.max()}")
    return cols.astype(np.int64, copy=False)


def exclusion_mask(exclude: sp.spmatrix | None, shape: tuple[int, int],
                   keep_col: np.ndarray | None = None) -> np.ndarray | None:
    """Dense boolean (B, n_items) mask of the non-zero entries of ``exclude``; ``keep_col[b]`` is never masked.

    ``None`` means nothing is excluded. Explicitly stored zeros do not exclude.
    """
    if exclude is None:
        return None
    assert sp.issparse(exclude), f"exclude must be a scipy.sparse matrix, got {type(exclude).__name__}"
    if exclude.shape != shape:
        raise ValueError(f"exclude has shape {exclude.shape}, scores have {shape}")
    coo = exclude.tocoo()
    nz = coo.data != 0
    mask = np.zeros(shape, dtype=bool)
    mask[coo.row[nz], coo.col[nz]] = True
    if keep_col is not None:
        mask[np.arange(shape[0]), keep_col] = False
    return mask


def _check_no_nan(scores: np.ndarray, mask: np.ndarray | None) -> None:
    nan = np.isnan(scores)
    if mask is not None:
        nan &= ~mask
    if nan.any():
        rows = np.flatnonzero(nan.any(axis=1))
        raise ValueError(f"NaN scores on non-excluded items in {rows.size} row(s), first rows {rows[:5].tolist()}")


# ----------------------------------------------------------------------------------------------------
# Ranks.


def _rank_masked(scores: np.ndarray, target_col: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    b = scores.shape[0]
    t = scores[np.arange(b), target_col][:, None]  # (B, 1)
    if np.isnan(t).any():
        raise ValueError("the target's score is NaN")
    _check_no_nan(scores, mask)
    greater = scores > t  # (B, n)
    equal = scores == t  # (B, n), includes the target itself
    if mask is not None:
        greater &= ~mask
        equal &= ~mask
    n_greater = np.count_nonzero(greater, axis=1)
    n_ties = np.count_nonzero(equal, axis=1) - 1
    return 1 + n_greater + (n_ties + 1) // 2  # ceil(n_ties / 2)


def rank_of_target(scores: np.ndarray, target_col: np.ndarray,
                   exclude: sp.spmatrix | None = None) -> np.ndarray:
    """1-based rank of each row's target among the row's non-excluded items, int64 (B,).

    Args:
        scores: (B, n_items) float scores, higher is better. Excluded entries may hold anything (NaN too).
        target_col: (B,) column of each row's held-out item.
        exclude: (B, n_items) sparse, non-zero = the user's training items; the target is never excluded.

    Ties: ``rank = 1 + #greater + ceil(#ties / 2)`` (the expected rank under random tie-breaking, rounded
    up); see the module docstring. Raises ValueError on NaN scores of non-excluded items.
    """
    scores = _as_scores(scores)
    target_col = _as_cols(target_col, scores.shape[0], scores.shape[1])
    return _rank_masked(scores, target_col, exclusion_mask(exclude, scores.shape, target_col))


def candidate_counts(n_items: int, target_col: np.ndarray, exclude: sp.spmatrix | None = None) -> np.ndarray:
    """Number of candidates of each row, int64 (B,): the domain's items minus the excluded ones (target kept)."""
    target_col = _as_cols(target_col, len(target_col), n_items)
    mask = exclusion_mask(exclude, (len(target_col), n_items), target_col)
    return _candidates_masked(n_items, len(target_col), mask)


def _candidates_masked(n_items: int, b: int, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.full(b, n_items, dtype=np.int64)
    return n_items - np.count_nonzero(mask, axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Metrics from ranks.


def per_row_metrics(ranks: np.ndarray, n_candidates: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Each row's value of every metric of :func:`ranking_metrics` (``auc``: the rows with two or more
    candidates only), after checking the inputs."""
    ranks = np.asarray(ranks)
    n_candidates = np.asarray(n_candidates)
    assert ranks.ndim == 1 and ranks.shape == n_candidates.shape, \
        f"ranks {ranks.shape} and n_candidates {n_candidates.shape} must be equal 1-d shapes"
    if ranks.size == 0:
        raise ValueError("ranking_metrics needs at least one row")
    if (ranks < 1).any() or (ranks > n_candidates).any():
        raise ValueError("every rank must lie in [1, n_candidates]")
    ranks = ranks.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        assert int(k) == k and k >= 1, f"k must be a positive integer, got {k!r}"
        hit = (ranks <= k).astype(np.float64)
        out[f"recall@{k}"] = hit
        out[f"precision@{k}"] = hit / k
        out[f"f1@{k}"] = 2.0 * hit / (k + 1)
        out[f"ndcg@{k}"] = np.where(hit > 0, 1.0 / np.log2(ranks + 1.0), 0.0)
    out["mrr"] = 1.0 / ranks
    has_auc = n_candidates > 1
    out["auc"] = 1.0 - (ranks[has_auc] - 1.0) / (n_candidates[has_auc] - 1.0)
    return out


def ranking_metrics(ranks: np.ndarray, n_candidates: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Means over rows (one held-out target per row) of the usual top-k metrics.

    Keys: ``recall@k`` (= hit@k: the target is in the top k), ``precision@k`` (= hit/k), ``f1@k``
    (= 2 hit / (k + 1); the harmonic mean of the two, per row and equally of their means), ``ndcg@k``
    (``1 / log2(rank + 1)`` if rank <= k, else 0; the ideal DCG is 1), ``mrr`` (mean of 1/rank, no cut-off),
    ``auc`` (``1 - (rank - 1) / (n_candidates - 1)``: the share of the other candidates ranked below the
    target; rows with a single candidate have no AUC and are left out of its mean, NaN if all are) and
    ``n_rows``.
    """
    rows = per_row_metrics(ranks, n_candidates, ks)
    out: dict[str, float] = {"n_rows": float(np.asarray(ranks).size)}
    out |= {key: float(v.mean()) if v.size else math.nan for key, v in rows.items()}
    return out


def ranking_metric_errors(ranks: np.ndarray, n_candidates: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Standard errors of :func:`ranking_metrics`' means (same keys, without ``n_rows``): the rows' sample
    standard deviation over the square root of their number, NaN with fewer than two rows. Rows are
    independent users, so two models' means on one segment that differ by a few of these are within noise."""
    rows = per_row_metrics(ranks, n_candidates, ks)
    return {key: float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else math.nan for key, v in rows.items()}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-row differences ``a - b`` of two models' values on the same rows.

    Both models see the same users, so their values are correlated: the paired error is what decides whether one
    model beats the other (much smaller than the two means' errors combined when they agree on most rows)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-d shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("a paired difference needs at least one row")
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else math.nan


# ----------------------------------------------------------------------------------------------------
# Top-k lists.


def _topk_masked(scores: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    b, n = scores.shape
    out = np.full((b, k), -1, dtype=np.int64)
    k_eff = min(k, n)
    if b == 0 or k_eff == 0:
        return out
    _check_no_nan(scores, mask)
    s = scores.copy()
    if mask is not None:
        s[mask] = -np.inf
    part = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]  # (B, k_eff), unordered, ties arbitrary
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)  # score descending, then column ascending
    out[:, :k_eff] = np.take_along_axis(part, order, axis=1)
    # Rows where argpartition chose among items tied at the k-th score (or reached into the excluded
    # items at -inf) are redone exactly: lower column ids win ties, excluded items never appear.
    kth = vals.min(axis=1)  # (B,)
    tied_in_row = np.count_nonzero(s == kth[:, None], axis=1)
    tied_chosen = np.count_nonzero(vals == kth[:, None], axis=1)
    for r in np.flatnonzero((tied_in_row > tied_chosen) | np.isneginf(kth)):
        row = s[r]
        above = np.flatnonzero(row > kth[r])
        above = above[np.lexsort((above, -row[above]))]
        tied = np.flatnonzero(row == kth[r])
        if mask is not None:
            tied = tied[~mask[r, tied]]
        chosen = np.concatenate([above, tied[: k_eff - above.size]])
        out[r] = -1
        out[r, : chosen.size] = chosen
    return out


def topk_items(scores: np.ndarray, exclude: sp.spmatrix | None, k: int) -> np.ndarray:
    """Columns of the k best non-excluded items of each row, best first, int64 (B, k).

    Ties go to the lower column id. Rows with fewer than k non-excluded items are padded with -1.
    """
    assert int(k) == k and k >= 1, f"k must be a positive integer, got {k!r}"
    scores = _as_scores(scores)
    return _topk_masked(scores, exclusion_mask(exclude, scores.shape), int(k))


def catalog_coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the domain's ``n_items`` items that appear in at least one top-k list (-1 padding ignored)."""
    assert n_items >= 1, f"n_items must be >= 1, got {n_items}"
    topk = np.asarray(topk)
    seen = np.unique(topk[topk >= 0])
    if seen.size and seen.max() >= n_items:
        raise ValueError(f"top-k holds column {seen.max()} >= n_items {n_items}")
    return seen.size / n_items


# ----------------------------------------------------------------------------------------------------
# Chunked evaluation of a scoring callback.


@dataclass(frozen=True)
class FullRankingResult:
    """Per-row ranks (for slicing, e.g. cold-start rows only), their metrics, and the top-k lists."""

    ranks: np.ndarray  # (U,) int64
    n_candidates: np.ndarray  # (U,) int64
    topk: np.ndarray  # (U, k) int64 columns, -1 padded
    metrics: dict[str, float]
    coverage: float  # catalog coverage of topk
    errors: dict[str, float] = field(default_factory=dict)  # standard errors of the metrics (ranking_metric_errors)


def evaluate_full_ranking(score_fn: ScoreFn, users: np.ndarray, target_col: np.ndarray,
                          exclude: sp.spmatrix | None, n_items: int, *, ks: Sequence[int] = DEFAULT_KS,
                          k_top: int | None = None, chunk_users: int = DEFAULT_CHUNK_USERS,
                          log_every_s: float = 10.0) -> FullRankingResult:
    """Score, rank and take top-k for many users, ``chunk_users`` rows at a time.

    Args:
        score_fn: ``score_fn(user_rows) -> (b, n_items)`` float scores for one chunk of ``users``.
        users: (U,) the user ids passed to ``score_fn``; row ``i`` of everything else belongs to ``users[i]``.
        target_col: (U,) held-out item of each row, as a column of the domain.
        exclude: (U, n_items) sparse training items of each row (the target is never excluded), or None.
        n_items: number of items (columns) of the domain.
        ks: cut-offs of the metrics. k_top: length of the top-k lists (default ``max(ks)``).

    The top-k lists use the same candidates as the ranks (training items out, the target in even if it
    was also a training item), so ``rank <= k`` exactly when the target is in the row's top-k list, up
    to ties at the k-th place. Only one (chunk_users x n_items) score block lives at a time; progress
    (rows, rows/s, ETA) is logged every ``log_every_s`` seconds.
    """
    users = np.asarray(users)
    n_rows = users.shape[0]
    target_col = _as_cols(target_col, n_rows, n_items)
    k_top = int(k_top if k_top is not None else max(ks))
    assert chunk_users >= 1, f"chunk_users must be >= 1, got {chunk_users}"
    if exclude is not None:
        if exclude.shape != (n_rows, n_items):
            raise ValueError(f"exclude has shape {exclude.shape}, expected {(n_rows, n_items)}")
        exclude = sp.csr_matrix(exclude)
    ranks = np.empty(n_rows, dtype=np.int64)
    n_cand = np.empty(n_rows, dtype=np.int64)
    topk = np.empty((n_rows, k_top), dtype=np.int64)
    t0 = last = time.perf_counter()
    for lo in range(0, n_rows, chunk_users):
        hi = min(lo + chunk_users, n_rows)
        scores = _as_scores(score_fn(users[lo:hi]))
        if scores.shape != (hi - lo, n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(hi - lo, n_items)}")
        tc = target_col[lo:hi]
        ex = exclude[lo:hi] if exclude is not None else None
        mask = exclusion_mask(ex, scores.shape, tc)  # (b, n): training items, target kept
        ranks[lo:hi] = _rank_masked(scores, tc, mask)
        n_cand[lo:hi] = _candidates_masked(n_items, hi - lo, mask)
        topk[lo:hi] = _topk_masked(scores, mask, k_top)
        now = time.perf_counter()
        if now - last >= log_every_s or hi == n_rows:
            rate = hi / max(now - t0, 1e-9)
            log.info("scored %d/%d rows (%.0f rows/s, ETA %.0f s)", hi, n_rows, rate, (n_rows - hi) / rate)
            last = now
    metrics = ranking_metrics(ranks, n_cand, ks) if n_rows else {}
    errors = ranking_metric_errors(ranks, n_cand, ks) if n_rows else {}
    return FullRankingResult(ranks, n_cand, topk, metrics, catalog_coverage(topk, n_items), errors)
