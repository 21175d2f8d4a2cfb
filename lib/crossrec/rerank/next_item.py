"""The next-item term: what followed the user's latest item of the domain in the training sequences.

Item-KNN's similarity is symmetric and order-free; on next-item data what *follows* an item is sharper (a refill after
the starter kit, the next volume). A first-order Markov chain over each domain's events, as in FPMC::

    f(u, j) = n(i, j) / max_j' n(i, j'),   i = u's latest item of j's domain

with ``n(i, j)`` how often ``j`` came right after ``i`` among one user's events of that domain.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from crossrec.rerank.base import Catalog, ScoreTerm
from crossrec.rerank.sparse import ItemPairs, csr_entries, domain_events

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

log = logging.getLogger(__name__)

NEXT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


def next_item_transitions(data: "InteractionData") -> tuple[Tensor, Tensor, Tensor]:
    """How often item ``j`` came right after item ``i`` among one user's events of their domain, as CSR tensors
    ``(indptr (n+2,), indices (nnz,) int32, values (nnz,))`` over item ids 0..n (row ``i``: the items that followed
    ``i``). Each user's events are ordered by time (events of one time keep their order in ``data``); events of other
    domains in between do not break a transition. ``data``: the training events."""
    order = np.lexsort((data.ts, data.domain, data.user))  # per user and domain, by time; stable on ties
    user, item, dom = data.user[order], data.item[order], data.domain[order]
    follows = (user[1:] == user[:-1]) & (dom[1:] == dom[:-1])
    n = data.n_items + 1
    m = sp.csr_matrix((np.ones(int(follows.sum()), dtype=np.float32), (item[:-1][follows], item[1:][follows])), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    log.info("next-item term: %d transitions between %d item pairs", int(follows.sum()), m.nnz)
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data.astype(np.float32)))


def latest_domain_items(item_idx: Tensor, item_domain: Tensor, domain: int) -> Tensor:
    """(B, T) histories -> (B,) each row's latest item of ``domain``; 0 for rows without one."""
    in_d = domain_events(item_idx, item_domain, domain)  # (B, T)
    pos = torch.arange(item_idx.shape[1], device=item_idx.device)
    last = torch.where(in_d, pos, -1).amax(1)  # (B,)
    return torch.where(last >= 0, item_idx.gather(1, last.clamp(min=0)[:, None]).squeeze(1), 0)


class NextItemTerm(ItemPairs, ScoreTerm):
    """Warm users: the followers of their latest item of the domain (see the module docstring)."""

    pairs_name = "transitions"
    name = "next_item"
    collaborative = True
    applies_to = "warm"
    order = 30
    weights = NEXT_WEIGHT_GRID

    def __init__(self) -> None:
        self._tables: dict[int, Tensor] = {}

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        self._set(*next_item_transitions(events), catalog)

    def features(self, item_idx: Tensor, domain: int) -> Tensor:
        """(B, T) histories -> (B, n_d): ``n(i, j) / max_j' n(i, j')`` for ``i`` the row's latest item of ``domain``;
        0 for rows without one, or whose latest item was never followed."""
        c = self.catalog
        B, n_d = item_idx.shape[0], c.domain_size(domain)
        last = latest_domain_items(item_idx, c.item_domain, domain)  # (B,); 0 = none (row 0 of the matrix is empty)
        table = self._tables.get(int(domain))
        if table is not None:  # (n_d + 1, n_d): row n_d (no latest item) is 0
            return table[torch.where(last > 0, c.item_col[last], n_d)]
        flat, lens = csr_entries(self.indptr, last)
        rows = torch.repeat_interleave(torch.arange(B, device=item_idx.device), lens)
        values = self.values[flat]
        top = torch.zeros(B, device=item_idx.device).scatter_reduce(0, rows, values, "amax")
        out = torch.zeros(B, n_d, device=item_idx.device)
        out[rows, c.item_col[self.indices[flat].long()]] = values / top[rows].clamp(min=1e-12)
        return out

    def add_to(self, out: Tensor, item_idx: Tensor, domain: int, scale: Tensor) -> None:
        """With the domain's table: one scaled row of it per user, summed into ``out`` as a one-entry-per-row sparse
        product (no gathered (B, n_d) copy of the rows)."""
        c = self.catalog
        table = self._tables.get(int(domain))
        if table is None:
            return super().add_to(out, item_idx, domain, scale)
        B, n_d = item_idx.shape[0], c.domain_size(domain)
        last = latest_domain_items(item_idx, c.item_domain, domain)
        pick = torch.where(last > 0, c.item_col[last], n_d)  # (B,) row of the table (n_d: none, all 0)
        one = torch.sparse_csr_tensor(torch.arange(B + 1, device=out.device), pick, scale.float(), (B, n_d + 1),
                                      check_invariants=False)
        out.addmm_(one, table)

    def table_bytes(self, domain: int) -> int:
        n_d = self.catalog.domain_size(domain)
        return (n_d + 1) * n_d * 4

    def build_table(self, domain: int) -> None:
        """(n_d + 1, n_d): row = the latest item's column (row n_d: none), counts over their row's maximum."""
        c = self.catalog
        items, n_d = c.domain_items[int(domain)], c.domain_size(domain)
        flat, lens = csr_entries(self.indptr, items)
        rows = torch.repeat_interleave(torch.arange(n_d, device=items.device), lens)
        cols, vals = c.item_col[self.indices[flat].long()], self.values[flat]
        top = torch.zeros(n_d, device=items.device).scatter_reduce(0, rows, vals, "amax")
        self._tables[int(domain)] = torch.zeros(n_d + 1, n_d, device=items.device).index_put_(
            (rows, cols), vals / top[rows].clamp(min=1e-12), accumulate=True)


__all__ = ["NextItemTerm", "next_item_transitions", "latest_domain_items", "NEXT_WEIGHT_GRID"]
