"""The recommender interface and the non-neural baselines: per-domain popularity and cross-domain ItemKNN.

Every recommender (the Transformer too, through a wrapper) is fitted on an :class:`InteractionData` (the
training split as arrays) and scores all items of one domain for a batch of users with
``full_sort_predict(users, domain) -> (len(users), n_d) float32``, column ``j`` = the item with
``domain_item_idx == j``, i.e. ``data.domain_items[domain][j]``. That is what
:func:`crossrec.evaluate.metrics.evaluate_full_ranking` consumes::

    model = ItemKNN(k=200, shrink=10.0).fit(train)
    res = evaluate_full_ranking(lambda u: model.full_sort_predict(u, d), users, target_col,
                                train.seen_in_domain(users, d), n_items=len(train.domain_items[d]))

Ids follow ``gold.item_index``: global ``item_idx`` 1..N (0 is padding and never an item), ``domain_idx``
0..D-1, and ``domain_item_idx`` 0..n_d-1 inside each domain. User-by-item matrices here have N + 1
columns indexed by ``item_idx`` directly (column 0 stays empty), so no id is ever shifted.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crossrec import columns as C

log = logging.getLogger(__name__)

Weighting = Literal["binary", "log"]


# ----------------------------------------------------------------------------------------------------
# Data.


def domain_items_from_item_index(item_index: pd.DataFrame) -> list[np.ndarray]:
    """``InteractionData.domain_items`` from ``gold.item_index`` rows (``item_idx, domain_idx, domain_item_idx``)."""
    df = item_index[[C.ITEM_IDX, C.DOMAIN_IDX, C.DOMAIN_ITEM_IDX]]
    n_domains = int(df[C.DOMAIN_IDX].max()) + 1 if len(df) else 0
    out = []
    for d in range(n_domains):
        part = df[df[C.DOMAIN_IDX] == d].sort_values(C.DOMAIN_ITEM_IDX)
        cols = part[C.DOMAIN_ITEM_IDX].to_numpy()
        assert np.array_equal(cols, np.arange(len(part))), f"domain {d}: domain_item_idx is not 0..{len(part) - 1}"
        out.append(part[C.ITEM_IDX].to_numpy(dtype=np.int64))
    return out


@dataclass(frozen=True, eq=False)
class InteractionData:
    """The training split as parallel arrays, one entry per interaction.

    Attributes:
        user: int user row 0..n_users-1.
        item: global item_idx 1..n_items.
        domain: domain_idx of the item (checked against ``domain_items``).
        ts: event time, epoch seconds.
        n_users, n_items, n_domains: sizes; items are 1..n_items.
        domain_items: per domain, the global item_idx of its items in domain_item_idx order; together
            they hold every item 1..n_items exactly once.
    """

    user: np.ndarray
    item: np.ndarray
    domain: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int
    n_domains: int
    domain_items: list[np.ndarray]
    # Derived lookups, indexed by item_idx (entry 0 = padding = -1).
    item_domain: np.ndarray = field(init=False, repr=False)  # (n_items + 1,) domain_idx
    item_col: np.ndarray = field(init=False, repr=False)  # (n_items + 1,) domain_item_idx

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("user", "item", "domain", "ts"):
            a = np.asarray(getattr(self, name))
            assert a.shape == (n,), f"{name} must be 1-d of length {n}, got shape {a.shape}"
            assert np.issubdtype(a.dtype, np.integer), f"{name} must be integer, got {a.dtype}"
            object.__setattr__(self, name, a)
        assert len(self.domain_items) == self.n_domains, \
            f"domain_items has {len(self.domain_items)} domains, n_domains is {self.n_domains}"
        item_domain = np.full(self.n_items + 1, -1, dtype=np.int64)
        item_col = np.full(self.n_items + 1, -1, dtype=np.int64)
        for d, items in enumerate(self.domain_items):
            items = np.asarray(items, dtype=np.int64)
            if items.size and (items.min() < 1 or items.max() > self.n_items):
                raise ValueError(f"domain {d}: item_idx outside 1..{self.n_items}")
            if (item_domain[items] != -1).any() or np.unique(items).size != items.size:
                raise ValueError(f"domain {d}: an item_idx is listed twice in domain_items")
            item_domain[items] = d
            item_col[items] = np.arange(items.size)
        if (item_domain[1:] == -1).any():
            missing = np.flatnonzero(item_domain == -1)[1:6]
            raise ValueError(f"items missing from domain_items, e.g. {missing.tolist()}")
        if n:
            if self.user.min() < 0 or self.user.max() >= self.n_users:
                raise ValueError(f"user outside 0..{self.n_users - 1}")
            if self.item.min() < 1 or self.item.max() > self.n_items:
                raise ValueError(f"item outside 1..{self.n_items}")
            bad = item_domain[self.item] != self.domain
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{bad.sum()} interactions whose domain is not their item's, first: item "
                                 f"{self.item[i]} has domain {item_domain[self.item[i]]}, row says {self.domain[i]}")
        object.__setattr__(self, "item_domain", item_domain)
        object.__setattr__(self, "item_col", item_col)

    def __len__(self) -> int:
        return len(self.user)

    def domain_size(self, domain: int) -> int:
        return len(self.domain_items[domain])

    def user_item_matrix(self, weighting: Weighting = "binary") -> sp.csr_matrix:
        """(n_users, n_items + 1) float32 CSR over all domains; column = item_idx.

        ``binary``: 1 where the user has the item; ``log``: ``log1p(number of interactions)``.
        """
        ones = np.ones(len(self), dtype=np.float32)
        m = sp.csr_matrix((ones, (self.user, self.item)), shape=(self.n_users, self.n_items + 1))
        m.sum_duplicates()
        if weighting == "binary":
            m.data[:] = 1.0
        elif weighting == "log":
            m.data = np.log1p(m.data).astype(np.float32)
        else:
            raise ValueError(f"weighting must be 'binary' or 'log', got {weighting!r}")
        return m

    def seen_in_domain(self, users: np.ndarray, domain: int) -> sp.csr_matrix:
        """(len(users), n_d) binary CSR of the training items of ``users`` in ``domain`` (columns = domain_item_idx).

        The ``exclude`` argument of the evaluation functions.
        """
        users = np.asarray(users, dtype=np.int64)
        sel = self.domain == domain
        n_d = self.domain_size(domain)
        m = sp.csr_matrix((np.ones(int(sel.sum()), dtype=np.float32), (self.user[sel], self.item_col[self.item[sel]])),
                          shape=(self.n_users, n_d))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m[users]


# ----------------------------------------------------------------------------------------------------
# Interface.


class Recommender(abc.ABC):
    """Fit on the training split, then score every item of one domain for a batch of users."""

    name: str = "recommender"

    _n_users: int | None = None
    _domain_sizes: tuple[int, ...] = ()

    @abc.abstractmethod
    def fit(self, data: InteractionData) -> "Recommender":
        """Learn from ``data``; returns self."""

    @abc.abstractmethod
    def full_sort_predict(self, users: np.ndarray, domain: int) -> np.ndarray:
        """(len(users), n_d) float32 scores of every item of ``domain``; column j = ``domain_items[domain][j]``."""

    # Helpers for subclasses.
    def _remember_shape(self, data: InteractionData) -> None:
        self._n_users = data.n_users
        self._domain_sizes = tuple(data.domain_size(d) for d in range(data.n_domains))

    def _check_request(self, users: np.ndarray, domain: int) -> np.ndarray:
        if self._n_users is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        if not 0 <= domain < len(self._domain_sizes):
            raise ValueError(f"domain {domain} outside 0..{len(self._domain_sizes) - 1}")
        users = np.asarray(users)
        assert users.ndim == 1 and np.issubdtype(users.dtype, np.integer), "users must be a 1-d integer array"
        if users.size and (users.min() < 0 or users.max() >= self._n_users):
            raise ValueError(f"user rows outside 0..{self._n_users - 1}")
        return users.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------------------------------
# Popularity.


class Popularity(Recommender):
    """Every user gets the same scores: the item's number of training interactions (all users, that domain)."""

    name = "pop"

    def fit(self, data: InteractionData) -> "Popularity":
        counts = np.bincount(data.item, minlength=data.n_items + 1)  # (N + 1,)
        self.counts_ = [counts[items].astype(np.float32) for items in data.domain_items]  # per domain (n_d,)
        self._remember_shape(data)
        return self

    def __repr__(self) -> str:
        return "Popularity()"

    def full_sort_predict(self, users: np.ndarray, domain: int) -> np.ndarray:
        users = self._check_request(users, domain)
        return np.tile(self.counts_[domain], (users.size, 1))  # (B, n_d)


# ----------------------------------------------------------------------------------------------------
# ItemKNN.


def cosine_topk(x: sp.spmatrix, k: int = 200, shrink: float = 0.0, block_bytes: int = 64 << 20) -> sp.csc_matrix:
    """Item-item cosine similarity with shrinkage, top-k neighbours per item, as a sparse (n, n) matrix.

    ``sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrink)`` for the columns ``x_i`` of the (users x n) matrix
    ``x`` (non-negative). Column ``j`` of the result holds the (up to) ``k`` most similar items ``i != j``
    with positive similarity; ties at the k-th place are cut by ``np.argpartition`` (deterministic for the
    same input). Computed ``block`` target items at a time so that one dense (block x n) float32 block
    takes at most ``block_bytes``.
    """
    assert k >= 1, f"k must be >= 1, got {k}"
    assert shrink >= 0, f"shrink must be >= 0, got {shrink}"
    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[1]
    xt = x.T.tocsr()  # (n, U)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0), dtype=np.float32).ravel())  # (n,)
    block = max(1, int(block_bytes // (4 * max(n, 1))))
    k_eff = min(k, n - 1)
    rows, cols, vals = [], [], []
    t0 = time.perf_counter()
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        b = hi - lo
        g = (xt[lo:hi] @ x).toarray()  # (b, n): co-occurrence of target items lo..hi with every item
        denom = norms[lo:hi, None] * norms[None, :]  # (b, n)
        denom += np.float32(shrink)
        sim = np.divide(g, denom, out=np.zeros((b, n), dtype=np.float32), where=denom > 0)
        sim[np.arange(b), np.arange(lo, hi)] = 0.0  # an item is not its own neighbour
        if k_eff <= 0:
            continue
        if k_eff < n:
            nb = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff]  # (b, k)
        else:
            nb = np.broadcast_to(np.arange(n), (b, n))
        v = np.take_along_axis(sim, nb, axis=1)  # (b, k)
        keep = v > 0
        rows.append(nb[keep])  # neighbour i
        cols.append(np.broadcast_to(np.arange(lo, hi)[:, None], nb.shape)[keep])  # target item j
        vals.append(v[keep])
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0, dtype=np.float32)
    w = sp.csc_matrix((v.astype(np.float32), (r, c)), shape=(n, n))
    log.info("item similarity: %d items, %d neighbour pairs (k=%d, shrink=%g) in %.1f s",
             n, w.nnz, k, shrink, time.perf_counter() - t0)
    return w


class ItemKNN(Recommender):
    """Item-based collaborative filtering across domains.

    Similarities come from the user x item matrix of ALL domains, so a user's history in domain A scores
    the items of domain B through users active in both. ``score(u, j) = sum_i x_ui * sim(i, j)`` over the
    top-``k`` neighbours ``i`` of ``j`` (any domain), ``x_ui`` binary or ``log1p(count)``. Users without
    history score 0 everywhere (a pure tie; the evaluation's tie rule makes that no better than random).
    """

    name = "itemknn"

    def __init__(self, k: int = 200, shrink: float = 10.0, weighting: Weighting = "binary",
                 block_bytes: int = 64 << 20) -> None:
        assert weighting in ("binary", "log"), f"weighting must be 'binary' or 'log', got {weighting!r}"
        self.k = k
        self.shrink = shrink
        self.weighting = weighting
        self.block_bytes = block_bytes

    def __repr__(self) -> str:
        return f"ItemKNN(k={self.k}, shrink={self.shrink}, weighting={self.weighting!r})"

    def fit(self, data: InteractionData) -> "ItemKNN":
        self.history_ = data.user_item_matrix(self.weighting)  # (U, N + 1)
        self.similarity_ = cosine_topk(self.history_, self.k, self.shrink, self.block_bytes)  # (N + 1, N + 1)
        self._sim_by_domain = [self.similarity_[:, items].tocsr() for items in data.domain_items]  # (N + 1, n_d)
        self._remember_shape(data)
        return self

    def full_sort_predict(self, users: np.ndarray, domain: int) -> np.ndarray:
        users = self._check_request(users, domain)
        scores = self.history_[users] @ self._sim_by_domain[domain]  # (B, n_d) sparse
        return scores.toarray().astype(np.float32, copy=False)
