"""The category term: the user's taste over the categories of a domain times the item's popularity in its category.

The model reads an item's (domain, category) as one embedding added into its ``d_model`` representation and its
popularity only through its own id embedding, trained for the next item on average. In a sparse catalog most items
have a few training events, their id embeddings say little, and the scores blur both how firmly one user keeps to a
few categories and which items of a category most users pick. A category-conditioned popularity model states both::

    f(u, j) = log P(c(j) | u) + log P(j | c(j))
    P(c | u) = (n_u(c) + ALPHA * pi(c)) / (sum_c' n_u(c') + ALPHA)
    P(j | c) = (n(j) + BETA) / (n(c) + BETA * |c|)

with ``n_u(c) = sum_t r**a(t)`` over the user's history events ``t`` of the domain in category ``c`` (``a(t)`` the
events of the domain after ``t``), ``pi(c)`` the category's share of the domain's training events (plus one per
category), ``n(j)`` and ``n(c)`` training events of the item and of its category, ``|c|`` the category's items. Items
without a category form one category of their own. It needs the model's category ids (a model trained with
categories); its values come from training events (an item without any takes its stand-in's, see
:mod:`crossrec.rerank.base`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import Tensor

from crossrec.rerank.base import DECAY_GRID, Catalog, ScoreTerm
from crossrec.rerank.sparse import recency_weights

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

CATEGORY_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# Smoothing, in events: a user's category taste starts from ALPHA events at the domain's category shares, an item's
# share of its category from BETA events. Not searched by the fit: the ranking barely depends on them over an order
# of magnitude each way (docs/benchmarks.md).
ALPHA = 1.0
BETA = 0.1
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


class CategoryTerm(ScoreTerm):
    """Warm users: their category taste in the domain times the item's share of its category (see the module
    docstring)."""

    name = "category"
    applies_to = "warm"
    order = 15
    collaborative = True
    weights = CATEGORY_WEIGHT_GRID
    params = {"decay": DECAY_GRID}
    neutral = {"decay": 1.0}

    def unusable(self, catalog: Catalog) -> str | None:
        return None if catalog.item_attr is not None and bool((catalog.item_attr > 0).any()) else NO_CATEGORIES

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        assert catalog.item_attr is not None, f"{self.name}: {NO_CATEGORIES}"
        counts = np.bincount(events.item, minlength=catalog.n_items + 1)
        log_in_category, prior = category_statistics(counts, catalog.item_attr.cpu().numpy(),
                                                     [d.cpu().numpy() for d in catalog.domain_items])
        self.load_state_dict({"log_in_category": torch.from_numpy(log_in_category), "prior": torch.from_numpy(prior)},
                             catalog)

    def state_dict(self) -> dict[str, Tensor]:
        return {"log_in_category": self.log_in_category, "prior": self.prior}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        assert catalog.item_attr is not None, f"{self.name}: {NO_CATEGORIES}"
        for key in ("log_in_category", "prior"):
            shape = tuple(state[key].shape)
            assert shape == (catalog.n_items + 1,), f"{key} must be ({catalog.n_items + 1},), got {shape}"
        self.catalog = catalog
        self.log_in_category = state["log_in_category"].float().to(catalog.device)
        self.prior = state["prior"].float().to(catalog.device)
        self._local: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def _local_categories(self, domain: int) -> tuple[Tensor, Tensor, Tensor]:
        """``domain``'s categories numbered 0..C_d-1: (n_items+1,) for every item (0 outside the domain), (n_d,) for
        the domain's columns, and (C_d,) their ``pi(c)``. A (B, C_d) count per batch then stays within the scores'
        size."""
        d = int(domain)
        if d not in self._local:
            c = self.catalog
            items = c.domain_items[d]
            _, cols = torch.unique(c.item_attr[items], return_inverse=True)
            by_item = torch.zeros(c.n_items + 1, dtype=torch.long, device=c.device)
            by_item[items] = cols
            prior = torch.zeros(int(cols.max()) + 1 if cols.numel() else 1, device=c.device)
            prior[cols] = self.prior[items]
            self._local[d] = (by_item, cols, prior)
        return self._local[d]

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``log P(c(j) | u) + log P(j | c(j))``; a row without events of ``domain``
        gets the domain's category shares as its taste."""
        by_item, cols, prior = self._local_categories(domain)
        rows, items, w = recency_weights(item_idx, self.catalog.item_domain, domain, decay)
        counts = ALPHA * prior.expand(item_idx.shape[0], -1).clone()
        counts.index_put_((rows, by_item[items]), w.float(), accumulate=True)
        taste = (counts / counts.sum(1, keepdim=True)).log_()
        return taste[:, cols] + self.log_in_category[self.catalog.domain_items[int(domain)]][None, :]


__all__ = ["CategoryTerm", "category_statistics", "CATEGORY_WEIGHT_GRID", "ALPHA", "BETA"]
