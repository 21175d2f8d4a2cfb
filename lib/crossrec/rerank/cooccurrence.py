"""The co-occurrence term: item-KNN's item-item similarity within one domain, summed over the user's history.

The Transformer's score is a dot product of ``d_model`` dimensions: a low-rank model that ranks popular items well but
cannot hold the many item-to-item pairs that decide long-tail targets. This term adds them back::

    f(u, j) = c(u, j) / max_j' c(u, j')
    c(u, j) = sum over u's distinct history items i of j's domain with j among i's k nearest of  r**a(i) * sim(i, j)

with ``sim`` item-KNN's cosine over the binary user x item matrix (pairs within one domain only) and ``a(i)`` the
events of the domain after i's last occurrence: with a recency decay ``r < 1`` the latest items count most. Row ``i``
of the similarity holds ``i``'s own ``k`` nearest neighbours, so a history item adds at most ``k`` pairs to a user's
term (item-based top-N, Deshpande & Karypis 2004).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from crossrec.rerank.base import DECAY_GRID, Catalog, ScoreTerm
from crossrec.rerank.sparse import ItemPairs, csr_entries, decayed, distinct_history_items, sparse_rows_times

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

log = logging.getLogger(__name__)

WEIGHT_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def same_domain_similarity(data: "InteractionData", k: int = 200, shrink: float = 10.0) -> tuple[Tensor, Tensor, Tensor]:
    """Item-KNN's similarity (:func:`crossrec.model.baselines.cosine_topk` over the binary user x item matrix of every
    domain) with only the pairs whose items share a domain, as CSR tensors ``(indptr (n+2,), indices (nnz,) int32,
    values (nnz,))`` over item ids 0..n: row ``i`` = ``i``'s own ``k`` nearest neighbours ``j`` (those in ``i``'s
    domain). ``data``: the training events."""
    from crossrec.model.baselines import cosine_topk

    sim = cosine_topk(data.user_item_matrix("binary"), k=k, shrink=shrink).tocoo()  # (n+1, n+1): (j's neighbour, j)
    same = data.item_domain[sim.row] == data.item_domain[sim.col]
    csr = sp.csr_matrix((sim.data[same], (sim.col[same], sim.row[same])), shape=sim.shape)  # row j: j's neighbours
    csr.sort_indices()
    log.info("co-occurrence term: %d same-domain pairs of %d (k=%d, shrink=%g)", csr.nnz, sim.nnz, k, shrink)
    return (torch.from_numpy(csr.indptr.astype(np.int64)), torch.from_numpy(csr.indices.astype(np.int32)),
            torch.from_numpy(csr.data.astype(np.float32)))


class CooccurrenceTerm(ItemPairs, ScoreTerm):
    """Warm users: the normalised, recency-decayed item-KNN score of the domain (see the module docstring)."""

    pairs_name = "co-occurrence pairs"
    name = "cooccurrence"
    collaborative = True
    applies_to = "warm"
    order = 10
    weights = WEIGHT_GRID
    params = {"decay": DECAY_GRID}
    neutral = {"decay": 1.0}

    def __init__(self, k: int = 200, shrink: float = 10.0):
        assert k >= 1 and shrink >= 0, f"k must be >= 1 and shrink >= 0, got {k}, {shrink}"
        self.k, self.shrink = int(k), float(shrink)
        self._tables: dict[int, Tensor] = {}

    def options(self) -> dict:
        return {"k": self.k, "shrink": self.shrink}

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        self._set(*same_domain_similarity(events, self.k, self.shrink), catalog)

    def pairs(self, item_idx: Tensor, domain: int) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T) histories -> one entry per (distinct history item i of ``domain``, neighbour j) pair: flat cell
        positions ``row * n_d + column`` of the (B, n_d) values (repeated where several history items support the same
        j), ``sim(i, j)``, and i's age (events of the domain after i's last occurrence)."""
        c = self.catalog
        rows, items, age = distinct_history_items(item_idx, c.item_domain, domain)
        flat, lens = csr_entries(self.indptr, items)  # every neighbour of each history item
        cells = torch.repeat_interleave(rows, lens) * c.domain_size(domain) + c.item_col[self.indices[flat].long()]
        return cells, self.values[flat], torch.repeat_interleave(age, lens)

    def support(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d) ``c(u, j)``, before the normalisation by its row maximum."""
        B, n_d = item_idx.shape[0], self.catalog.domain_size(domain)
        table = self._tables.get(int(domain))
        if table is not None:  # c = (B, n_d) decayed history weights @ the (n_d, n_d) similarity table
            rows, items, age = distinct_history_items(item_idx, self.catalog.item_domain, domain)
            weights = decayed(torch.ones_like(age, dtype=torch.float), age, decay)  # decay**age
            return sparse_rows_times(rows, self.catalog.item_col[items], weights, B, table)
        cells, sims, age = self.pairs(item_idx, domain)
        return torch.zeros(B * n_d, device=item_idx.device).index_add_(0, cells, decayed(sims, age, decay)).view(B, n_d)

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``c(u, j) / max_j c(u, j)`` (0 for users without support in ``domain``)."""
        c = self.support(item_idx, domain, decay)
        return c / c.amax(1, keepdim=True).clamp(min=1e-12)  # c >= 0

    def add_to(self, out: Tensor, item_idx: Tensor, domain: int, scale: Tensor, decay: float = 1.0) -> None:
        """The row maxima folded into ``scale``: one multiply-add of ``c`` into ``out``."""
        c = self.support(item_idx, domain, decay)
        out.addcmul_(c, (scale / c.amax(1).clamp(min=1e-12))[:, None])

    def table_bytes(self, domain: int) -> int:
        return self.catalog.domain_size(domain) ** 2 * 4

    def build_table(self, domain: int) -> None:
        """(n_d, n_d) dense similarity of ``domain``: row = history item's column, column = neighbour's column."""
        c = self.catalog
        items, n_d = c.domain_items[int(domain)], c.domain_size(domain)
        flat, lens = csr_entries(self.indptr, items)
        rows = torch.repeat_interleave(torch.arange(n_d, device=items.device), lens)
        cols = c.item_col[self.indices[flat].long()]
        self._tables[int(domain)] = torch.zeros(n_d, n_d, device=items.device).index_put_((rows, cols), self.values[flat],
                                                                                             accumulate=True)


__all__ = ["CooccurrenceTerm", "same_domain_similarity", "WEIGHT_GRID"]
