"""The category term: the user's taste over the categories of a domain times the item's popularity in its category.

The model reads an item's (domain, category) as one embedding added into its ``d_model`` representation and its
popularity only through its own id embedding, trained for the next item on average. In a sparse catalog most items
have a few training events, their id embeddings say little, and the scores blur both how firmly one user keeps to a
few categories and which items of a category most users pick. A category-conditioned popularity model states both::

    f(u, j) = log P(c(j) | u) + log P(j | c(j))
    P(c | u) = (n_u(c) + ALPHA * pi(c) + transfer * m_u(c)) / (sum_c' of the numerator)
    P(j | c) = (n(j) + BETA) / (n(c) + BETA * |c|)

with ``n_u(c) = sum_t r**a(t)`` over the user's history events ``t`` of the domain in category ``c`` (``a(t)`` the
events of the domain after ``t``), ``pi(c)`` the category's share of the domain's training events (plus one per
category), ``n(j)`` and ``n(c)`` training events of the item and of its category, ``|c|`` the category's items.

``m_u(c) = sum_t r**a(t) T(c(t), c)`` carries the user's events in the *other* domains into this one (``a(t)`` counted
over every domain): ``T(s, .)`` is a distribution over the domain's categories, how the training users who had
category ``s`` elsewhere spread over this domain (:func:`category_transfer`), kept to its ``TRANSFER_K`` largest
entries so the table stays (categories x domains x TRANSFER_K) however many categories a catalog has. The warm term
chooses ``transfer`` on validation (0 = the domain's own events only); :mod:`crossrec.rerank.cold_category` is the
same taste for users new to the domain, where ``m_u`` is all there is.

Items without a category form one category of their own per domain. It needs the model's category ids (a model
trained with categories); its values come from training events (an item without any takes its stand-in's, see
:mod:`crossrec.rerank.base`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from crossrec.rerank.base import DECAY_GRID, Catalog, ScoreTerm
from crossrec.rerank.sparse import csr_entries, recency_weights

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

CATEGORY_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# Smoothing, in events: a user's category taste starts from ALPHA events at the domain's category shares, an item's
# share of its category from BETA events. Not searched by the fit: the ranking barely depends on them over an order
# of magnitude each way (docs/benchmarks.md).
ALPHA = 1.0
BETA = 0.1
TRANSFER_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # the warm term's weight of the other domains' events
TRANSFER_K = 50  # target categories kept per (source category, target domain): bounds the table, not the ranking
TRANSFER_CHUNK = 1 << 23  # cells of the dense (source categories x categories) block built at a time
NO_CATEGORIES = "the model has no category ids (no categories in gold.item_index, or --no-categories)"


def category_statistics(item_events: np.ndarray, item_attr: np.ndarray, domain_items: list[np.ndarray],
                        beta: float = BETA) -> tuple[np.ndarray, np.ndarray]:
    """(n_items+1,) training events per item, (n_items+1,) category ids (0 = none) and the domains' global item ids
    -> ``log P(j | c(j))`` and ``pi(c(j))`` per item (see the module docstring), float32; 0 for the padding id."""
    log_in_category = np.zeros(len(item_attr), dtype=np.float32)
    prior = np.zeros(len(item_attr), dtype=np.float32)
    for items in domain_items:
        if len(items) == 0:
            continue
        _, cat = np.unique(item_attr[items], return_inverse=True)
        events = item_events[items].astype(np.float64)
        cat_events = np.bincount(cat, weights=events)
        cat_items = np.bincount(cat)
        log_in_category[items] = np.log((events + beta) / (cat_events[cat] + beta * cat_items[cat]))
        prior[items] = ((cat_events + 1.0) / (cat_events.sum() + len(cat_events)))[cat]
    return log_in_category, prior


def item_groups(item_attr: np.ndarray, item_domain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_items+1,) category ids (0 = none) and domains -> (n_items+1,) each item's (domain, category) group, numbered
    by domain, then by category id (so a domain's groups are its categories in ``torch.unique`` order; the padding id
    gets group 0, never read), and (G,) each group's domain."""
    base = int(item_attr.max(initial=0)) + 1
    keys, group = np.unique(item_domain[1:].astype(np.int64) * base + item_attr[1:], return_inverse=True)
    out = np.zeros(len(item_attr), dtype=np.int64)
    out[1:] = group
    return out, keys // base


def category_transfer(user: np.ndarray, group: np.ndarray, n_users: int, group_domain: np.ndarray,
                      k: int = TRANSFER_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training events (user, group of the item) -> the CSR table ``T`` (G rows; indptr, indices = target groups,
    values): ``T(s, c)`` for every group ``c`` of a domain other than ``s``'s, the sum over users of (the user's
    share of their events in ``s``'s domain that are in ``s``) x (their share of their events in ``c``'s domain that
    are in ``c``), kept to the ``k`` largest per (``s``, target domain) and normalised to sum to 1 there."""
    n_groups = len(group_domain)
    counts = sp.csr_matrix((np.ones(len(user)), (user, group)), shape=(n_users, n_groups))
    counts.sum_duplicates()
    coo = counts.tocoo()
    per_domain = np.zeros((n_users, int(group_domain.max(initial=0)) + 1))
    np.add.at(per_domain, (coo.row, group_domain[coo.col]), coo.data)
    shares = sp.csr_matrix((coo.data / per_domain[coo.row, group_domain[coo.col]], (coo.row, coo.col)),
                           shape=counts.shape)
    by_group = shares.T.tocsr()
    domains = [np.flatnonzero(group_domain == d) for d in range(per_domain.shape[1])]
    indptr, indices, values, nnz = [0], [], [], 0
    step = max(1, TRANSFER_CHUNK // max(n_groups, 1))
    for s in range(0, n_groups, step):
        block = (by_group[s:s + step] @ shares).toarray()  # (chunk, G) co-user mass
        for r in range(block.shape[0]):
            for d, cols in enumerate(domains):
                if d == group_domain[s + r] or len(cols) == 0:
                    continue
                row = block[r, cols]
                top = np.flatnonzero(row > 0)
                if len(top) > k:
                    top = top[np.argpartition(-row[top], k - 1)[:k]]
                top = top[np.argsort(cols[top], kind="stable")]
                if len(top):
                    indices.append(cols[top])
                    values.append(row[top] / row[top].sum())
                    nnz += len(top)
            indptr.append(nnz)
    cat = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    val = np.concatenate(values) if values else np.zeros(0)
    return np.asarray(indptr, dtype=np.int64), cat.astype(np.int64), val.astype(np.float32)


class CategoryTerm(ScoreTerm):
    """Warm users: their category taste in the domain (with the other domains' events carried over at a chosen
    ``transfer``) times the item's share of its category (see the module docstring)."""

    name = "category"
    applies_to = "warm"
    order = 15
    collaborative = True
    weights = CATEGORY_WEIGHT_GRID
    params = {"decay": DECAY_GRID, "transfer": TRANSFER_GRID}
    neutral = {"decay": 1.0, "transfer": 0.0}

    def unusable(self, catalog: Catalog) -> str | None:
        return None if catalog.item_attr is not None and bool((catalog.item_attr > 0).any()) else NO_CATEGORIES

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        assert catalog.item_attr is not None, f"{self.name}: {NO_CATEGORIES}"
        counts = np.bincount(events.item, minlength=catalog.n_items + 1)
        attr = catalog.item_attr.cpu().numpy()
        log_in_category, prior = category_statistics(counts, attr, [d.cpu().numpy() for d in catalog.domain_items])
        group, group_domain = item_groups(attr, catalog.item_domain.cpu().numpy())
        indptr, indices, values = category_transfer(events.user, group[events.item], events.n_users, group_domain)
        self.load_state_dict({"log_in_category": torch.from_numpy(log_in_category), "prior": torch.from_numpy(prior),
                              "transfer_indptr": torch.from_numpy(indptr), "transfer_indices": torch.from_numpy(indices),
                              "transfer_values": torch.from_numpy(values)}, catalog)

    def state_dict(self) -> dict[str, Tensor]:
        return {"log_in_category": self.log_in_category, "prior": self.prior, "transfer_indptr": self.transfer_indptr,
                "transfer_indices": self.transfer_indices, "transfer_values": self.transfer_values}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        """Restore the state; one saved without the transfer table (before it existed) loads with an empty one."""
        assert catalog.item_attr is not None, f"{self.name}: {NO_CATEGORIES}"
        for key in ("log_in_category", "prior"):
            shape = tuple(state[key].shape)
            assert shape == (catalog.n_items + 1,), f"{key} must be ({catalog.n_items + 1},), got {shape}"
        self.catalog = catalog
        self.log_in_category = state["log_in_category"].float().to(catalog.device)
        self.prior = state["prior"].float().to(catalog.device)
        group, group_domain = item_groups(catalog.item_attr.cpu().numpy(), catalog.item_domain.cpu().numpy())
        n_groups = len(group_domain)
        indptr = state.get("transfer_indptr", torch.zeros(n_groups + 1, dtype=torch.long))
        indices = state.get("transfer_indices", torch.zeros(0, dtype=torch.long))
        values = state.get("transfer_values", torch.zeros(0))
        assert indptr.shape == (n_groups + 1,), f"transfer_indptr must be ({n_groups + 1},), got {tuple(indptr.shape)}"
        assert int(indptr[0]) == 0 and int(indptr[-1]) == indices.numel() == values.numel(), \
            "transfer_indptr must run from 0 to the entries of transfer_indices and transfer_values"
        assert indices.numel() == 0 or 0 <= int(indices.min()) and int(indices.max()) < n_groups, \
            f"transfer_indices must be category groups 0..{n_groups - 1}"
        self.transfer_indptr = indptr.long().to(catalog.device)
        self.transfer_indices = indices.long().to(catalog.device)
        self.transfer_values = values.float().to(catalog.device)
        self.item_group = torch.from_numpy(group).to(catalog.device)
        self.group_domain = torch.from_numpy(group_domain).to(catalog.device)
        first = np.searchsorted(group_domain, np.arange(len(catalog.domain_items)))  # the domains' first groups
        self.group_col = torch.from_numpy(np.arange(n_groups) - first[group_domain]).to(catalog.device)
        self._local: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def _local_categories(self, domain: int) -> tuple[Tensor, Tensor, Tensor]:
        """``domain``'s categories numbered 0..C_d-1: (n_items+1,) for every item (0 outside the domain), (n_d,) for
        the domain's columns, and (C_d,) their ``pi(c)``. A (B, C_d) count per batch then stays within the scores'
        size."""
        d = int(domain)
        if d not in self._local:
            c = self.catalog
            items = c.domain_items[d]
            cols = self.group_col[self.item_group[items]]
            by_item = torch.zeros(c.n_items + 1, dtype=torch.long, device=c.device)
            by_item[items] = cols
            prior = torch.zeros(int(cols.max()) + 1 if cols.numel() else 1, device=c.device)
            prior[cols] = self.prior[items]
            self._local[d] = (by_item, cols, prior)
        return self._local[d]

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0, transfer: float = 0.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``log P(c(j) | u) + log P(j | c(j))``; a row without events of ``domain``
        (or carried over from the others) gets the domain's category shares as its taste."""
        by_item, cols, prior = self._local_categories(domain)
        c = self.catalog
        rows, items, w = recency_weights(item_idx, c.item_domain, domain, decay)
        counts = ALPHA * prior.expand(item_idx.shape[0], -1).clone()
        counts.index_put_((rows, by_item[items]), w.float(), accumulate=True)
        if transfer > 0:
            cells, values = self.carried(item_idx, domain, decay, transfer)
            counts.index_put_(cells, values, accumulate=True)
        taste = (counts / counts.sum(1, keepdim=True)).log_()
        return taste[:, cols] + self.log_in_category[c.domain_items[int(domain)]][None, :]

    def carried(self, item_idx: Tensor, domain: int, decay: float, transfer: float) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """``transfer * m_u(c)`` (see the module docstring) as the ((rows, local category columns), values) of its
        non-zero cells in a (B, C_d) count."""
        c = self.catalog
        rows, items, w = recency_weights(item_idx, c.item_domain, None, decay)
        other = c.item_domain[items] != int(domain)
        rows, group, w = rows[other], self.item_group[items[other]], w[other]
        flat, lens = csr_entries(self.transfer_indptr, group)
        target = self.transfer_indices[flat]
        into = self.group_domain[target] == int(domain)
        values = (torch.repeat_interleave(w.float() * transfer, lens) * self.transfer_values[flat])[into]
        return (torch.repeat_interleave(rows, lens)[into], self.group_col[target[into]]), values


__all__ = ["CategoryTerm", "category_statistics", "category_transfer", "item_groups", "CATEGORY_WEIGHT_GRID",
           "TRANSFER_GRID", "TRANSFER_K", "ALPHA", "BETA"]
